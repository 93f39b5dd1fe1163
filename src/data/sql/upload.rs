//! Statements of the upload engine. The local claim table holds the ids of the batch being
//! uploaded (locked with `FOR UPDATE SKIP LOCKED`); the remote stage holds the batch's rows on
//! the remote until they are inserted.

use crate::data::convert::Conversion;
use crate::profile::{quote_ident, Ident, ReadingsSpec, TenantId};

use super::column_list;

/// The condition of a reading waiting to be uploaded.
const QUEUED: &str = "not is_synchronized and quarantined_at is null";

/// The uploaded columns by their local names.
fn uploaded(readings: &ReadingsSpec) -> String {
    column_list(readings.columns.iter().map(|c| &c.name))
}

/// The uploaded columns by their remote names (`remote_name`).
fn uploaded_remote(readings: &ReadingsSpec) -> String {
    column_list(readings.columns.iter().map(|c| c.remote()))
}

/// How the claims read the uploaded columns for the remote: each through the type rule's
/// conversion, the tenant column (`tenant_column`) stamped with the site's tenant where it is
/// NULL; and which readings they may claim: never one of another tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Per uploaded column, in order (missing: as it is).
    pub conversions: Vec<Conversion>,
    /// The site's tenant, when the readings carry a tenant column.
    pub tenant: Option<TenantId>,
}

impl Outgoing {
    /// The tenant column and the site's tenant, when both are set.
    fn tenant<'a>(&'a self, readings: &'a ReadingsSpec) -> Option<(&'a Ident, &'a TenantId)> {
        readings.tenant_column.as_ref().zip(self.tenant.as_ref())
    }

    /// The uploaded columns as the remote receives them, named as the columns.
    fn columns(&self, readings: &ReadingsSpec) -> String {
        let stamped = self.tenant(readings);
        super::read_columns(&readings.columns, &self.conversions, |c| match stamped {
            Some((column, tenant)) if *column == c.name => {
                format!("coalesce({}, {})", c.name.quoted(), tenant.literal())
            }
            _ => c.name.quoted(),
        })
    }

    /// The checked columns (`convert = "checked"`) with the test their values must pass.
    fn checks<'a>(
        &'a self,
        readings: &'a ReadingsSpec,
    ) -> impl Iterator<Item = (&'a Ident, &'a crate::data::convert::Fit)> {
        crate::data::convert::checks(&readings.columns, &self.conversions)
    }

    /// The condition of a reading the claims may take: queued, of this site's tenant (or
    /// none) when the readings carry one, and with every checked value fitting the remote.
    fn claimable(&self, readings: &ReadingsSpec) -> String {
        let mut condition = match self.tenant(readings) {
            Some((column, tenant)) => format!(
                "{QUEUED} and ({c} is null or {c} = {t})",
                c = column.quoted(),
                t = tenant.literal()
            ),
            None => QUEUED.to_string(),
        };
        for (name, fit) in self.checks(readings) {
            condition.push_str(" and ");
            condition.push_str(&fit.sql(&name.quoted()));
        }
        condition
    }

    /// Quarantines queued readings with a value a checked column's remote type cannot hold
    /// (they are never sent), with the reason, returning id and reason; `None` when no column
    /// is checked.
    pub fn quarantine_unfit(&self, readings: &ReadingsSpec) -> Option<String> {
        let checks: Vec<_> = self.checks(readings).collect();
        if checks.is_empty() {
            return None;
        }
        let reason = checks
            .iter()
            .map(|(name, fit)| {
                format!(
                    "when not {} then '{name} = ' || {q}::text || ' does not fit the remote {} (convert = \"checked\")'",
                    fit.sql(&name.quoted()),
                    fit.target,
                    q = name.quoted()
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let any = checks
            .iter()
            .map(|(name, fit)| format!("not {}", fit.sql(&name.quoted())))
            .collect::<Vec<_>>()
            .join(" or ");
        Some(format!(
            "update {table} set quarantined_at = now(), sync_attempts = sync_attempts + 1,
    sync_error = case {reason} end
where {QUEUED} and ({any})
returning {id}::text, sync_error",
            table = readings.table.quoted(),
            id = readings.id_column.quoted(),
        ))
    }
}

/// Quarantines queued readings of another tenant than `tenant` (they are never sent: a site
/// must not write another customer's readings), with the reason, returning id and reason.
pub fn quarantine_other_tenants(
    readings: &ReadingsSpec,
    column: &Ident,
    tenant: &TenantId,
) -> String {
    format!(
        "update {table} set quarantined_at = now(), sync_attempts = sync_attempts + 1,
    sync_error = 'reading of tenant ' || {c}::text || '; this site is tenant ' || {t}
where {QUEUED} and {c} is not null and {c} <> {t}
returning {id}::text, sync_error",
        table = readings.table.quoted(),
        c = column.quoted(),
        t = tenant.literal(),
        id = readings.id_column.quoted(),
    )
}

/// Claims one batch: up to `$1` queued readings, oldest first, locked (`FOR UPDATE SKIP
/// LOCKED`, so a concurrent uploader skips them) until the local transaction ends; the local
/// id, then the uploaded columns.
pub fn claim_batch(readings: &ReadingsSpec, outgoing: &Outgoing) -> String {
    claim_batch_from(readings, outgoing, None)
}

/// [`claim_batch`] of the readings whose ids are in `$2` (text, read as `id_type`, the id
/// column's type): a ledger record's.
pub fn claim_batch_ids(readings: &ReadingsSpec, outgoing: &Outgoing, id_type: &str) -> String {
    claim_batch_from(readings, outgoing, Some(id_type))
}

fn claim_batch_from(readings: &ReadingsSpec, outgoing: &Outgoing, ids: Option<&str>) -> String {
    let among = match ids {
        Some(id_type) => format!(
            " and {} = any($2::text[]::{id_type}[])",
            readings.id_column.quoted()
        ),
        None => String::new(),
    };
    format!(
        "select {id}, {cols} from {table} where {queued}{among} order by {order} limit $1 for update skip locked",
        id = readings.id_column.quoted(),
        cols = outgoing.columns(readings),
        queued = outgoing.claimable(readings),
        table = readings.table.quoted(),
        order = column_list(&readings.order_by),
    )
}

/// Claims one batch and removes it in the same statement (one write per row instead of a row
/// lock and then a delete): deletes, or with `mark` marks synchronized, up to `$1` queued
/// readings, oldest first, skipping rows another uploader holds, returning the local id and
/// the uploaded columns. It takes effect only when the local transaction commits, which
/// happens after the remote commit.
pub fn claim_and_remove(readings: &ReadingsSpec, outgoing: &Outgoing) -> String {
    claim_and_remove_from(readings, outgoing, Position::Head)
}

/// Where a claim takes its readings from.
enum Position<'a> {
    /// The head of the queue.
    Head,
    /// Past the key in `$2, $3, ...`.
    After,
    /// Among the ids in `$2` (text, read as this type, the id column's).
    Ids(&'a str),
}

/// [`claim_and_remove`] starting past a position in the queue: only readings whose `order_by`
/// key is greater than `$2, $3, ...` (the key of the worker's previous batch). The claim then
/// starts in the index where the previous one ended instead of stepping again over the entries
/// of every reading already removed this run (dead until vacuum), which made a long drain of
/// small batches slow down as it went.
pub fn claim_and_remove_after(readings: &ReadingsSpec, outgoing: &Outgoing) -> String {
    claim_and_remove_from(readings, outgoing, Position::After)
}

/// [`claim_and_remove`] of the readings whose ids are in `$2` (text, read as `id_type`, the
/// id column's type): the readings of a ledger record, whose earlier send is uncertain.
pub fn claim_and_remove_ids(readings: &ReadingsSpec, outgoing: &Outgoing, id_type: &str) -> String {
    claim_and_remove_from(readings, outgoing, Position::Ids(id_type))
}

/// The claims return the local id, the uploaded columns, then the `order_by` key, in key order.
fn claim_and_remove_from(readings: &ReadingsSpec, outgoing: &Outgoing, from: Position) -> String {
    let order = column_list(&readings.order_by);
    let position = match from {
        Position::Head => String::new(),
        Position::After => {
            let params: Vec<String> = (0..readings.order_by.len())
                .map(|i| format!("${}", i + 2))
                .collect();
            format!(" and ({order}) > ({})", params.join(", "))
        }
        Position::Ids(id_type) => format!(
            " and {} = any($2::text[]::{id_type}[])",
            readings.id_column.quoted()
        ),
    };
    let claim = format!(
        "select {id} from {table} where {queued}{position} order by {order} limit $1 for update skip locked",
        id = readings.id_column.quoted(),
        table = readings.table.quoted(),
        queued = outgoing.claimable(readings),
    );
    let action = match readings.after_upload {
        crate::profile::AfterUpload::Delete => format!("delete from {}", readings.table.quoted()),
        crate::profile::AfterUpload::Mark => format!(
            "update {} set is_synchronized = true, synced_at = now(), sync_error = null",
            readings.table.quoted()
        ),
    };
    // The rows come back in key order (by output position: names may repeat), so the last
    // one carries the batch's highest key.
    let first_key = 2 + readings.columns.len();
    let positions: Vec<String> = (0..readings.order_by.len())
        .map(|i| (first_key + i).to_string())
        .collect();
    format!(
        // `= any(array(...))`, not `in (...)`: the planner then looks the ids up through the
        // primary key instead of scanning the whole queue for every batch.
        "with claimed as ({action} where {id} = any(array({claim})) returning {id}, {cols}, {order})
         select * from claimed order by {}",
        positions.join(", "),
        id = readings.id_column.quoted(),
        cols = outgoing.columns(readings),
    )
}

/// The planner statistics of a table (`$1`, its quoted name): the rows it had when last
/// analyzed (-1 if never), the changes since (inserts, updates, deletes), and whether this role
/// may analyze it (owner or superuser; anyone else's `analyze` is skipped with a warning).
pub const SELECT_TABLE_STATISTICS: &str =
    "select c.reltuples::float8, coalesce(s.n_mod_since_analyze, 0)::int8,
    pg_has_role(c.relowner, 'USAGE') or (select rolsuper from pg_roles where rolname = current_user)
from pg_class c left join pg_stat_all_tables s on s.relid = c.oid
where c.oid = to_regclass($1)";

/// Refreshes the readings table's statistics; `skip_locked`: skipped at once, with a warning
/// instead of a wait, while autovacuum works on the table (which refreshes them itself).
pub fn analyze_readings(readings: &ReadingsSpec) -> String {
    format!("analyze (skip_locked) {}", readings.table.quoted())
}

/// After the remote commit: removes the uploaded readings (`$1`) except refused ones (`$2`),
/// both arrays of the id column's type (the server infers it).
pub fn delete_uploaded(readings: &ReadingsSpec) -> String {
    format!(
        "delete from {table} where {id} = any($1) and not ({id} = any($2))",
        table = readings.table.quoted(),
        id = readings.id_column.quoted(),
    )
}

/// After the remote commit (`after_upload = "mark"`): marks them synchronized instead.
pub fn mark_uploaded(readings: &ReadingsSpec) -> String {
    format!(
        "update {table} set is_synchronized = true, synced_at = now(), sync_error = null
where {id} = any($1) and not ({id} = any($2))",
        table = readings.table.quoted(),
        id = readings.id_column.quoted(),
    )
}

/// Records a rejected row: binds `$1` id (of the id column's type), `$2` error text, `$3`
/// MAX_ROW_FAILURES; returns whether the row is now quarantined, and its id as text.
pub fn record_failure(readings: &ReadingsSpec) -> String {
    format!(
        "update {table} set sync_attempts = sync_attempts + 1, sync_error = $2,
    quarantined_at = case when sync_attempts + 1 >= $3 then now() end
where {id} = $1 returning quarantined_at is not null, {id}::text",
        table = readings.table.quoted(),
        id = readings.id_column.quoted(),
    )
}

/// Queue size, quarantined count and the age in seconds of the oldest queued reading (by the
/// first `order_by` column, or NULL when that is the id).
pub fn queue_stats(readings: &ReadingsSpec) -> String {
    let first = readings
        .order_by
        .first()
        .filter(|c| **c != readings.id_column);
    let age = match first {
        Some(column) => format!(
            "extract(epoch from now() - min({}::timestamptz) filter (where {}))::float8",
            column.quoted(),
            QUEUED
        ),
        None => "null::float8".into(),
    };
    format!(
        "select count(*) filter (where {queued}), count(*) filter (where quarantined_at is not null), {age} from {table}",
        queued = QUEUED,
        table = readings.table.quoted(),
    )
}

/// Deletes readings marked synchronized more than `$1` days ago (`after_upload = "mark"`).
pub fn purge_synchronized(readings: &ReadingsSpec) -> String {
    format!(
        "delete from {} where is_synchronized and synced_at < now() - make_interval(days => $1)",
        readings.table.quoted()
    )
}

/// Quarantined readings for the operator: id, the uploaded columns as one text, attempts,
/// error, since when. Binds `$1` limit.
pub fn list_quarantined(readings: &ReadingsSpec) -> String {
    format!(
        "select {id}::text, row({cols})::text, sync_attempts, sync_error, quarantined_at
from {table} where quarantined_at is not null order by {id} limit $1",
        id = readings.id_column.quoted(),
        cols = uploaded(readings),
        table = readings.table.quoted(),
    )
}

/// Releases quarantined readings for another try: all of them, or the ids in `$1` (as text,
/// read into the id column's type through the table's row type, whatever that type is),
/// returning the released ids as text.
pub fn release_quarantined(readings: &ReadingsSpec, all: bool) -> String {
    let filter = if all {
        String::new()
    } else {
        format!(
            " and {id} = any(array(select (json_populate_record(null::{table}, json_build_object('{name}', x))).{id} from unnest($1::text[]) x))",
            id = readings.id_column.quoted(),
            table = readings.table.quoted(),
            name = readings.id_column.as_str(),
        )
    };
    format!(
        "update {table} set quarantined_at = null, sync_attempts = 0, sync_error = null
where quarantined_at is not null{filter} returning {id}::text",
        table = readings.table.quoted(),
        id = readings.id_column.quoted(),
    )
}

/// The local and remote `SELECT`s whose result types must match.
pub fn readings_select(readings: &ReadingsSpec, remote: bool) -> String {
    let table = if remote {
        &readings.remote_table
    } else {
        &readings.table
    };
    let columns = if remote {
        uploaded_remote(readings)
    } else {
        uploaded(readings)
    };
    format!("select {columns} from {}", table.quoted())
}

/// The remote stage's name for a readings table.
pub fn upload_stage_name(readings: &ReadingsSpec) -> String {
    quote_ident(&format!(
        "meter_sync_upload_{}",
        readings.remote_table.bare()
    ))
}

/// The remote stage: each reading's position in its batch (the local id stays local: it may be
/// of a type the remote lacks) plus the uploaded columns; created once per session and emptied
/// at every commit, or (`per_transaction`, behind a pooler in transaction mode, where nothing
/// may outlive a transaction) created in each batch's transaction and dropped at its end.
pub fn create_upload_stage(readings: &ReadingsSpec, per_transaction: bool) -> String {
    let (exists, lifetime) = match per_transaction {
        true => ("", "drop"),
        false => ("if not exists ", "delete rows"),
    };
    format!(
        "create temporary table {exists}{stage} on commit {lifetime} as
select null::bigint as meter_sync_position, {cols} from {remote} with no data",
        stage = upload_stage_name(readings),
        cols = uploaded_remote(readings),
        remote = readings.remote_table.quoted(),
    )
}

/// `COPY remote_stage FROM STDIN` in binary.
pub fn copy_into_upload_stage(readings: &ReadingsSpec) -> String {
    format!(
        "copy {} (meter_sync_position, {}) from stdin (format binary)",
        upload_stage_name(readings),
        uploaded_remote(readings)
    )
}

/// `COPY remote_readings FROM STDIN` in binary: the direct path, used when a unique index
/// guards the dedupe key (a resend then fails as a whole and goes through the stage).
pub fn copy_into_remote_readings(readings: &ReadingsSpec) -> String {
    format!(
        "copy {} ({}) from stdin (format binary)",
        readings.remote_table.quoted(),
        uploaded_remote(readings)
    )
}

/// The columns of a remote unique index that lies within the dedupe key, if any: binds `$1`
/// the quoted remote table, `$2` the dedupe key's remote column names. An index on a column
/// that may hold NULL only counts when it treats NULLs as equal (`NULLS NOT DISTINCT`,
/// PostgreSQL 15; read through `to_jsonb` so older servers answer too): otherwise two readings
/// with a NULL in the key are both "unique".
pub const SELECT_DEDUPE_INDEX: &str = "select array_agg(a.attname::text order by k.ord)
from pg_index i
cross join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
where i.indrelid = to_regclass($1) and i.indisunique and i.indpred is null and not (0 = any(i.indkey::int2[]))
group by i.indexrelid
having array_agg(a.attname::text) <@ $2::text[]
   and (bool_and(a.attnotnull) or bool_or(coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)))
limit 1";

/// How many of the dedupe key's columns a remote b-tree index can probe on: the longest
/// leading run of an index's key columns that are dedupe columns compared with `=` (binds `$1`
/// the quoted remote table, `$2` [`ReadingsSpec::equal_dedupe_key`]; a nullable one
/// compares with `is not distinct from`, which no index serves). 0 when none.
pub const SELECT_PROBE_INDEX: &str = "select coalesce(max(prefix), 0)::int4 from (
    select coalesce(min(k.ord) filter (where a.attname is null or not (a.attname::text = any($2::text[]))),
                    count(*) + 1) - 1 as prefix
    from pg_index i
    join pg_class c on c.oid = i.indexrelid
    join pg_am am on am.oid = c.relam and am.amname = 'btree'
    cross join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
    left join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = to_regclass($1) and i.indisvalid and i.indpred is null
      and k.ord <= i.indnkeyatts
    group by i.indexrelid
) p";

/// The anti-join's plan when a remote index serves its probes (see [`SELECT_PROBE_INDEX`]):
/// one index probe per staged reading, whatever the planner believes of the central's table.
/// Planned while the table looks empty (a central's first batches), it would otherwise scan the
/// table for every staged reading while another worker fills it (measured: one 10,000-reading
/// batch 155 s); left to its estimates as the table grows, it reads the whole table per batch
/// for a hash or merge anti-join. Within the batch's transaction. The stage's own scan then
/// carries the planner's penalty for a disabled plan, which would set the cost far above the
/// threshold for JIT compilation: 345 ms compiling a 100-reading batch, so JIT is off too.
pub const ANTI_JOIN_PROBES: &str =
    "set local enable_hashjoin to off; set local enable_mergejoin to off; \
set local enable_seqscan to off; set local jit to off";

/// The anti-join's plan without such an index: a hash (or merge) anti-join, one pass over the
/// central's table per batch, never a nested loop that scans it for every staged reading.
pub const ANTI_JOIN_SCANS: &str = "set local enable_nestloop to off";

/// Inserts the staged rows (in batch order) whose positions are in `$1` that are not on the remote yet, returning
/// nothing; the row count is what was inserted. With `conflict_target` (a unique index within
/// the dedupe key) the server skips duplicates; otherwise an anti-join on the dedupe key does,
/// keeping one row per key within the batch.
///
/// `by_ids`: only the staged rows whose batch position is in `$1` (isolating refused readings);
/// otherwise the whole stage, without parameters.
pub fn insert_new_readings(
    readings: &ReadingsSpec,
    conflict_target: Option<&[Ident]>,
    by_ids: bool,
) -> String {
    let filter = if by_ids {
        "s.meter_sync_position = any($1::bigint[])"
    } else {
        "true"
    };
    let cols = uploaded_remote(readings);
    let stage = upload_stage_name(readings);
    let remote = readings.remote_table.quoted();
    let scols = readings
        .columns
        .iter()
        .map(|c| format!("s.{}", c.remote().quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    match conflict_target {
        Some(target) => format!(
            "insert into {remote} ({cols})
select {scols} from {stage} s where {filter}
order by s.meter_sync_position
on conflict ({}) do nothing",
            column_list(target)
        ),
        None => {
            let dedupe = readings
                .remote_names(&readings.dedupe_key)
                .map(|k| format!("s.{}", k.quoted()))
                .collect::<Vec<_>>()
                .join(", ");
            // A nullable key column compares NULL-safely: a resend of a reading with a NULL
            // there is the same reading.
            let join = readings
                .dedupe_key
                .iter()
                .filter_map(|k| readings.column(k))
                .map(|c| {
                    let q = c.remote().quoted();
                    if c.nullable {
                        format!("r.{q} is not distinct from s.{q}")
                    } else {
                        format!("r.{q} = s.{q}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" and ");
            format!(
                "insert into {remote} ({cols})
select {cols} from (
    select distinct on ({dedupe}) {scols} from {stage} s
    where {filter}
      and not exists (select 1 from {remote} r where {join})
    order by {dedupe}, s.meter_sync_position
) as new_rows"
            )
        }
    }
}
