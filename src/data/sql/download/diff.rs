//! The diff path: remote (key, version or hash) pairs compared with the local ones, then only
//! new and changed rows fetched by key.

use crate::data::convert::Conversion;
use crate::profile::{quote_ident, EntitySpec, Ident, TenantId};

use super::*;

/// Memory for the local download transaction's joins and index builds (per operation, on the
/// server): enough to keep a million-row hash join in one batch instead of spilling to disk.
/// `random_page_cost` 1.1 (the usual setting for SSDs and cached data) lets the planner look up
/// a small stage through the primary key instead of scanning a large table.
pub const LOCAL_WORK_MEM: &str =
    "set local work_mem to '64MB'; set local maintenance_work_mem to '128MB'; set local random_page_cost to 1.1";

/// Session settings that make a row's text form the same on both servers, so equal rows hash
/// equally. (A difference would only cost a re-fetch: updates compare values, not hashes.)
pub const STABLE_TEXT_SETTINGS: &str = "set local timezone to 'UTC'; set local datestyle to 'ISO, YMD'; \
set local intervalstyle to 'postgres'; set local extra_float_digits to 1; set local bytea_output to 'hex'";

/// The hash stage: every remote key of the entity with the md5 of its row.
pub fn hash_stage_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_hash_{}", entity.name))
}

/// The diff: keys whose rows are new or changed (`gone` false, to fetch) or gone remotely
/// (`gone` true).
pub fn diff_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_diff_{}", entity.name))
}

/// How the diff path tells changed rows from unchanged ones. A false "changed" only costs a
/// re-fetch, because updates compare values; a false "unchanged" would miss an update, which
/// none of these allows short of a 64-bit collision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeCheck {
    /// The remote row version (`xmin`), stored locally in [`VERSION_COLUMN`]: every update of
    /// a remote row gives it a new version, and comparing versions hashes nothing. Local edits
    /// to a mirrored row go unnoticed until the remote row changes (`download --full` checks
    /// every value).
    Version,
    /// `hash_record_extended(row(...), 0)` (PostgreSQL 14+): each type's own binary hash, the
    /// one hash partitioning relies on, so stable across versions and platforms. 64 bits.
    Record,
    /// `md5(row(...)::text)::uuid`: for older servers and types without a hash function
    /// (json, xml, geometric types); needs [`STABLE_TEXT_SETTINGS`] on both sides. 128 bits.
    Text,
}

impl ChangeCheck {
    /// The check for an entity: versions when the remote source is a table (`versioned`),
    /// else a row hash, `Record` when both servers are 14 or newer and every type hashes.
    pub fn for_entity(entity: &EntitySpec, versioned: bool, servers_support_record: bool) -> Self {
        let unhashable = |t: &str| {
            matches!(
                t.trim_end_matches("[]"),
                "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
            )
        };
        if versioned {
            ChangeCheck::Version
        } else if servers_support_record
            && !entity
                .columns
                .iter()
                .any(|c| unhashable(c.sql_type.as_str()))
        {
            ChangeCheck::Record
        } else {
            ChangeCheck::Text
        }
    }

    fn sql_type(self) -> &'static str {
        match self {
            ChangeCheck::Version | ChangeCheck::Record => "bigint",
            ChangeCheck::Text => "uuid",
        }
    }
}

/// The version or hash of the row aliased `alias`.
fn row_hash(entity: &EntitySpec, alias: &str, kind: ChangeCheck) -> String {
    let cols = entity
        .columns
        .iter()
        .map(|c| format!("{alias}.{}", c.name.quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    match kind {
        ChangeCheck::Version => format!("{alias}.{}", quote_ident(VERSION_COLUMN)),
        ChangeCheck::Record => format!("hash_record_extended(row({cols}), 0)"),
        ChangeCheck::Text => format!("md5(row({cols})::text)::uuid"),
    }
}

/// The remote side of the diff: each row's key and hash, tenant-filtered like the rows.
pub fn remote_hash_select(
    entity: &EntitySpec,
    tenant: &TenantId,
    kind: ChangeCheck,
    conversions: &[Conversion],
) -> String {
    let keys = entity
        .key
        .iter()
        .map(|k| format!("r.{}", k.quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "select {keys}, {} from ({}) r",
        row_hash(entity, "r", kind),
        remote_select(entity, tenant, kind == ChangeCheck::Version, conversions)
    )
}

/// The empty hash stage, typed like the local key columns.
pub fn create_hash_stage(entity: &EntitySpec, kind: ChangeCheck) -> String {
    format!(
        "create temporary table {} on commit drop as select {}, null::{} as meter_sync_hash from {} with no data",
        hash_stage_name(entity),
        column_list(&entity.key),
        kind.sql_type(),
        entity.table.quoted()
    )
}

/// `COPY hash_stage FROM STDIN` in binary.
pub fn copy_into_hash_stage(entity: &EntitySpec) -> String {
    format!(
        "copy {} ({}, meter_sync_hash) from stdin (format binary)",
        hash_stage_name(entity),
        column_list(&entity.key)
    )
}

/// Rows of `relation` with a NULL key column.
pub fn count_null_keys_in(entity: &EntitySpec, relation: &str) -> String {
    let any_null = entity
        .key
        .iter()
        .map(|k| format!("{} is null", k.quoted()))
        .collect::<Vec<_>>()
        .join(" or ");
    format!("select count(*) from {relation} where {any_null}")
}

/// A unique index on a relation's key columns, then statistics for the planner.
pub fn index_keys(entity: &EntitySpec, relation: &str) -> String {
    format!(
        "create unique index on {relation} ({}); analyze {relation}",
        column_list(&entity.key)
    )
}

/// One full join of the remote keys (with version or hash) and the local ones: the keys that
/// are new, changed or gone. The local side is projected to (key, version or hash) behind
/// `offset 0` so the join's hash table holds narrow rows.
pub fn create_diff(entity: &EntitySpec, kind: ChangeCheck) -> String {
    let first = entity.key.first().map(Ident::quoted).unwrap_or_default();
    format!(
        "create temporary table {diff} on commit drop as
select {keys}, h.{first} is null as gone
from {hstage} h full join (select {tkeys}, {hash} as meter_sync_hash from {table} t offset 0) t on {join}
where h.{first} is null or t.{first} is null or h.meter_sync_hash is distinct from t.meter_sync_hash",
        diff = diff_name(entity),
        keys = entity
            .key
            .iter()
            .map(|k| format!("coalesce(h.{q}, t.{q}) as {q}", q = k.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
        hstage = hash_stage_name(entity),
        tkeys = entity.key.iter().map(|k| format!("t.{}", k.quoted())).collect::<Vec<_>>().join(", "),
        hash = row_hash(entity, "t", kind),
        table = entity.table.quoted(),
        join = key_join(entity, "h", "t"),
    )
}

/// How many keys must be fetched (new or changed).
pub fn count_need(entity: &EntitySpec) -> String {
    format!("select count(*) from {} where not gone", diff_name(entity))
}

/// Takes up to `limit` keys to fetch off the diff, as text: a queue consumed batch by batch.
pub fn take_need_batch(entity: &EntitySpec, limit: usize) -> String {
    format!(
        "delete from {diff} n where ctid in (select ctid from {diff} where not gone limit {limit}) returning {keys}",
        diff = diff_name(entity),
        keys = key_text(entity, "n")
    )
}

/// One key that the remote rows repeat, as text, if any.
pub fn find_duplicate_key(entity: &EntitySpec, relation: &str) -> String {
    let keys = column_list(&entity.key);
    format!(
        "select {} from {relation} r group by {keys} having count(*) > 1 limit 1",
        key_text(entity, "r")
    )
}

/// Drops the diff path's temporary tables.
pub fn drop_diff_tables(entity: &EntitySpec) -> String {
    format!(
        "drop table if exists {}; drop table if exists {}",
        hash_stage_name(entity),
        diff_name(entity)
    )
}

/// The remote rows with the given keys: binds one `text[]` per key column, each element cast
/// to the key column's remote type (`key_types`, catalog type names).
pub fn remote_select_by_keys(
    entity: &EntitySpec,
    tenant: &TenantId,
    versioned: bool,
    conversions: &[Conversion],
    key_types: &[&str],
) -> String {
    let tuple = entity
        .key
        .iter()
        .map(|k| format!("r.{}", k.quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    let arrays = key_types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("(${}::text[])::{}[]", i + 1, quote_ident(ty)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "select r.* from ({}) r where ({tuple}) in (select * from unnest({arrays}))",
        remote_select(entity, tenant, versioned, conversions)
    )
}

/// Diff path, fetched rows: removes stage rows whose references are missing and marks their
/// keys gone (an existing local row is then handled as missing); returns keys.
pub fn skip_unreferenced_fetched(entity: &EntitySpec, targets: &[Target<'_>]) -> Option<String> {
    let exists = references_exist(entity, targets, "s")?;
    Some(format!(
        "with skipped as (delete from {stage} s where not ({exists}) returning {skeys})
insert into {diff} as d ({keys}, gone) select {skeys2}, true from skipped s returning {text}",
        stage = stage_name(entity),
        skeys = entity
            .key
            .iter()
            .map(|k| format!("s.{}", k.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
        skeys2 = entity
            .key
            .iter()
            .map(|k| format!("s.{}", k.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
        diff = diff_name(entity),
        keys = column_list(&entity.key),
        text = key_text(entity, "d"),
    ))
}

/// Diff path, unchanged rows: a row equal on both sides whose reference is now missing locally
/// is skipped too (marked gone); returns keys.
pub fn skip_unreferenced_unchanged(entity: &EntitySpec, targets: &[Target<'_>]) -> Option<String> {
    let exists = references_exist(entity, targets, "t")?;
    Some(format!(
        "insert into {diff} as d ({keys}, gone)
select {tkeys}, true from {table} t
where not ({exists})
  and not exists (select 1 from {diff} e where {djoin})
  and not exists (select 1 from {stage} s where {sjoin})
returning {text}",
        diff = diff_name(entity),
        keys = column_list(&entity.key),
        tkeys = entity
            .key
            .iter()
            .map(|k| format!("t.{}", k.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
        table = entity.table.quoted(),
        djoin = key_join(entity, "e", "t"),
        stage = stage_name(entity),
        sjoin = key_join(entity, "s", "t"),
        text = key_text(entity, "d"),
    ))
}
