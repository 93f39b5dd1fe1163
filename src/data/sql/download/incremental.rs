//! The incremental path's statements: the remote rows written since the last run's snapshot,
//! the local rows written by anyone but this service since then, the key summaries that prove
//! nothing was deleted on either side, and the per-entity state kept between runs.
//!
//! Transaction ids are compared the way PostgreSQL compares them: modulo 2^32, an id "at or
//! after" a horizon when it lies less than 2^31 ahead of it. Horizons are 64-bit (`txid` functions, PostgreSQL 8.3+); row `xmin`s are 32-bit. A horizon
//! is only used while the server's counter is less than 2^31 past it (see [`within_reach`]),
//! so every id written after it compares as after; an id from long before it (a row frozen
//! more than 2^31 transactions ago) may compare as after too, which only costs a re-fetch.

use crate::data::convert::Conversion;
use crate::profile::{quote_ident, EntitySpec, TableName, TenantId};

use super::*;

/// Both servers' view of time for a run: the snapshot's oldest running transaction (the
/// horizon: everything older was committed or aborted before the snapshot) and its next one.
pub const SELECT_SNAPSHOT: &str =
    "select txid_snapshot_xmin(s), txid_snapshot_xmax(s) from txid_current_snapshot() s";

/// What the central is, as far as transaction ids go: its cluster (the system identifier,
/// where this role may read it), this database's oid and the WAL timeline. A restore into
/// another cluster, a point-in-time recovery and a failover each change it, and then the ids a
/// stored horizon speaks of may have been reused. NULL on a standby (its timeline cannot be read
/// without privileges); then no horizon is trusted.
pub const SELECT_REMOTE_IDENTITY: &str = concat!(
    "select case when pg_is_in_recovery() then null else ",
    crate::data::sql::ledger::database_identity!(),
    " end"
);

/// An entity's stored state: binds `$1` the entity name.
pub const SELECT_STATE: &str = "select source_select, local_identity, remote_identity,
       local_horizon, local_next, local_xids, remote_horizon, remote_next
from meter_sync_download_state where entity = $1";

/// Records an entity's state at the end of its pass, returning the `xmin` of the written row:
/// the id of the transaction (or subtransaction) that wrote the entity's rows. Binds `$1` entity,
/// `$2` source select, `$3` local identity, `$4` remote identity, `$5` local horizon, `$6`
/// local next id, `$7` the service's own ids (`bigint[]`), `$8` remote horizon, `$9` remote next.
pub const UPSERT_STATE: &str = "insert into meter_sync_download_state as s
    (entity, source_select, local_identity, remote_identity, local_horizon, local_next, local_xids,
     remote_horizon, remote_next, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
on conflict (entity) do update set source_select = excluded.source_select,
    local_identity = excluded.local_identity, remote_identity = excluded.remote_identity,
    local_horizon = excluded.local_horizon, local_next = excluded.local_next,
    local_xids = excluded.local_xids, remote_horizon = excluded.remote_horizon,
    remote_next = excluded.remote_next, updated_at = excluded.updated_at
returning xmin::text::bigint";

/// Touches the entity's state in the current subtransaction, returning that subtransaction's
/// id (`$1` entity): the removals of pass 2 write rows under it.
pub const TOUCH_STATE: &str = "update meter_sync_download_state set updated_at = now()
where entity = $1 returning xmin::text::bigint";

/// Adds `$2` to the entity's own ids (`$1` entity).
pub const ADD_OWN_XID: &str = "update meter_sync_download_state
set local_xids = array_append(local_xids, $2::bigint) where entity = $1";

/// The same comparison in Rust, for the stored ids.
pub fn xid_at_or_after(xid: i64, horizon: i64) -> bool {
    (xid - horizon).rem_euclid(1 << 32) < (1 << 31)
}

/// Whether a horizon can still be compared with 32-bit ids: the server's next id is at or after
/// it (the server did not go back in time) and less than 2^31 past it.
pub fn within_reach(horizon: i64, next: i64, stored_next: i64) -> bool {
    next >= stored_next && next >= horizon && next - horizon < (1 << 31)
}

/// Whether the 32-bit id `xmin` (an expression) is at or after the 64-bit `horizon`, modulo
/// 2^32 as PostgreSQL compares ids. Plain arithmetic, so the scan may run in parallel (`age`
/// may not).
fn written_since(xmin: &str, horizon: i64) -> String {
    format!(
        "(({xmin}::text::bigint - {h}) % 4294967296 + 4294967296) % 4294967296 < 2147483648",
        h = horizon.rem_euclid(1 << 32)
    )
}

/// A key's 64-bit hash: of its text form, so both servers agree whatever their versions (both
/// run [`STABLE_TEXT_SETTINGS`]).
fn key_hash(entity: &EntitySpec, alias: &str) -> String {
    format!(
        "hashtextextended(row({})::text, 0)",
        prefixed_keys(entity, alias)
    )
}

/// One scan of the tenant's remote rows: their count, their sum of key hashes (as text), and
/// how many were written at or after `horizon`.
pub fn remote_changes(
    entity: &EntitySpec,
    table: &TableName,
    tenant: &TenantId,
    conversions: &[Conversion],
    horizon: i64,
) -> String {
    let tail = format!("{} as meter_sync_changed", written_since("xmin", horizon));
    let scan = converted_select(entity, table, tenant, conversions, &tail, None);
    format!(
        "select count(*), coalesce(sum({hash}), 0)::text, count(*) filter (where r.meter_sync_changed)
from ({scan}) r",
        hash = key_hash(entity, "r"),
    )
}

/// The remote rows written at or after `horizon`, in the stage's layout.
pub fn remote_select_changed(
    entity: &EntitySpec,
    table: &TableName,
    tenant: &TenantId,
    conversions: &[Conversion],
    horizon: i64,
) -> String {
    let version = format!("xmin::text::bigint as {}", quote_ident(VERSION_COLUMN));
    let since = written_since("xmin", horizon);
    converted_select(entity, table, tenant, conversions, &version, Some(&since))
}

/// The tenant's rows of the remote table, every column through its conversion, then `tail`.
fn converted_select(
    entity: &EntitySpec,
    table: &TableName,
    tenant: &TenantId,
    conversions: &[Conversion],
    tail: &str,
    condition: Option<&str>,
) -> String {
    let columns = converted_columns(&entity.columns, conversions);
    table_select(entity, tenant, table, &columns, tail, condition)
}

/// Whether the local row `t` is a suspect: written at or after `horizon` by a transaction that
/// is none of the service's own (`own`).
fn suspect(horizon: i64, own: &[i64]) -> String {
    let own = own.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    format!(
        "{} and not (t.xmin = any('{{{own}}}'::xid[]))",
        written_since("t.xmin", horizon)
    )
}

/// One scan of the local table: the count and sum of key hashes of its mirrored rows (those
/// holding a remote version) and how many rows are suspects (see [`suspect`]).
pub fn local_scan(entity: &EntitySpec, horizon: i64, own: &[i64]) -> String {
    format!(
        "select count(*) filter (where t.mirrored), coalesce(sum(t.h) filter (where t.mirrored), 0)::text,
       count(*) filter (where t.suspect)
from (select t.{v} is not null as mirrored, {hash} as h, {suspect} as suspect from {table} t) t",
        v = quote_ident(VERSION_COLUMN),
        hash = key_hash(entity, "t"),
        suspect = suspect(horizon, own),
        table = entity.table.quoted(),
    )
}

/// What applying the stage changes in the local summary: minus the mirrored rows about to be
/// replaced (staged) or removed (gone), plus the staged rows. Driven from the (small) stage and
/// diff into the table through its key. Returns (count, sum as text).
pub fn local_summary_delta(entity: &EntitySpec) -> String {
    format!(
        "select coalesce(sum(x.n), 0)::bigint, coalesce(sum(x.h), 0)::text from (
    select -1 as n, -({thash})::numeric as h
    from (select {skeys} from {stage} s union select {dkeys} from {diff} d where d.gone) k
    join {table} t on {join}
    where t.{v} is not null
    union all
    select 1, ({shash})::numeric from {stage} s
) x",
        thash = key_hash(entity, "t"),
        shash = key_hash(entity, "s"),
        skeys = prefixed_keys(entity, "s"),
        dkeys = prefixed_keys(entity, "d"),
        stage = stage_name(entity),
        diff = diff_name(entity),
        table = entity.table.quoted(),
        join = key_join(entity, "k", "t"),
        v = quote_ident(VERSION_COLUMN),
    )
}

/// While an incremental run applies its (small) stage, every join with the local table goes
/// through the table's key: the planner would otherwise often scan the whole table for a hash
/// join, costing more than the rest of the run. Undone by [`KEYED_JOINS_OFF`].
pub const KEYED_JOINS_ON: &str =
    "set local enable_hashjoin to off; set local enable_mergejoin to off";

/// The planner's own choice of joins again.
pub const KEYED_JOINS_OFF: &str =
    "set local enable_hashjoin to default; set local enable_mergejoin to default";

/// The suspects: local rows written by others since the last run (edited, inserted or
/// re-keyed at the site), those the stage does not hold already.
fn suspects_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_suspect_{}", entity.name))
}

/// Collects the suspects the stage does not hold already (see [`suspect`]).
pub fn create_suspects(entity: &EntitySpec, horizon: i64, own: &[i64]) -> String {
    format!(
        "create temporary table {suspects} on commit drop as
select {tkeys} from {table} t
where {condition} and not exists (select 1 from {stage} s where {sjoin})",
        suspects = suspects_name(entity),
        tkeys = prefixed_keys(entity, "t"),
        table = entity.table.quoted(),
        condition = suspect(horizon, own),
        stage = stage_name(entity),
        sjoin = key_join(entity, "s", "t"),
    )
}

/// The suspects table, empty (the scan found none).
pub fn create_no_suspects(entity: &EntitySpec) -> String {
    format!(
        "create temporary table {} on commit drop as select {} from {} with no data",
        suspects_name(entity),
        column_list(&entity.key),
        entity.table.quoted()
    )
}

/// The incremental path's diff table, empty: keys to fetch (`gone` false) or to remove.
pub fn create_empty_diff(entity: &EntitySpec) -> String {
    format!(
        "create temporary table {} on commit drop as select {}, false as gone from {} with no data",
        diff_name(entity),
        column_list(&entity.key),
        entity.table.quoted()
    )
}

/// Queues the suspects for fetching by key (those the diff does not list yet).
pub fn need_suspects(entity: &EntitySpec) -> String {
    format!(
        "insert into {diff} ({keys}, gone) select {skeys}, false from {suspects} s
where not exists (select 1 from {diff} d where {djoin})",
        diff = diff_name(entity),
        keys = column_list(&entity.key),
        skeys = prefixed_keys(entity, "s"),
        suspects = suspects_name(entity),
        djoin = key_join(entity, "d", "s"),
    )
}

/// Suspects the remote no longer has (none was fetched): gone, like any row the remote lacks.
pub fn gone_suspects(entity: &EntitySpec) -> String {
    format!(
        "insert into {diff} ({keys}, gone) select {skeys}, true from {suspects} s
where not exists (select 1 from {stage} t where {tjoin})
  and not exists (select 1 from {diff} d where {djoin})",
        diff = diff_name(entity),
        keys = column_list(&entity.key),
        skeys = prefixed_keys(entity, "s"),
        suspects = suspects_name(entity),
        stage = stage_name(entity),
        tjoin = key_join(entity, "t", "s"),
        djoin = key_join(entity, "d", "s"),
    )
}

/// Drops the incremental path's tables (the stage is the caller's).
pub fn drop_incremental_tables(entity: &EntitySpec) -> String {
    format!(
        "drop table if exists {}; drop table if exists {}",
        suspects_name(entity),
        diff_name(entity)
    )
}

/// Rows that stay local after leaving the remote (`keep`, `deactivate`) no longer mirror a
/// remote row: their version is cleared, so the key summaries count mirrored rows only.
/// `None` for `delete`, whose rows go. `present`: every remote row was staged there; else the
/// diff marks the gone keys.
pub fn forget_versions(entity: &EntitySpec, present: Option<&str>) -> Option<String> {
    if entity.on_missing == crate::profile::OnMissing::Delete {
        return None;
    }
    let v = quote_ident(VERSION_COLUMN);
    let table = entity.table.quoted();
    Some(match present {
        Some(present) => format!(
            "update {table} t set {v} = null where t.{v} is not null
and not exists (select 1 from {present} s where {})",
            key_join(entity, "s", "t")
        ),
        None => format!(
            "update {table} t set {v} = null from {diff} d where d.gone and {join} and t.{v} is not null",
            diff = diff_name(entity),
            join = key_join(entity, "d", "t")
        ),
    })
}

/// `a."k1", a."k2"`.
fn prefixed_keys(entity: &EntitySpec, alias: &str) -> String {
    entity
        .key
        .iter()
        .map(|k| format!("{alias}.{}", k.quoted()))
        .collect::<Vec<_>>()
        .join(", ")
}
