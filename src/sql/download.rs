//! Statements of the download engine. `stage` is the local temporary table that holds the
//! remote rows of one entity for the run; `t` is the local table, `s` the stage.

use crate::convert::Conversion;
use crate::profile::{quote_ident, EntitySpec, Ident, OnMissing, RemoteSource, TenantId};

use super::{column_list, converted_columns};

/// The stage's name for an entity (temporary, dropped at commit).
pub fn stage_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_stage_{}", entity.name))
}

/// The local bookkeeping column holding the remote row version (`xmin`) a row was copied
/// from; NULL when the entity has no row version (a `remote_query`, a view).
pub use crate::profile::VERSION_COLUMN;

/// The profile's columns and the version column: what moves from remote to local.
fn moved_columns(entity: &EntitySpec) -> String {
    format!(
        "{}, {}",
        column_list(entity.columns.iter().map(|c| &c.name)),
        quote_ident(VERSION_COLUMN)
    )
}

/// The remote `SELECT` of an entity's columns in profile order, then the row version,
/// restricted to the tenant. `versioned`: the remote source is a table, whose `xmin` changes
/// with every update of a row. A profile query is wrapped so its output columns must carry the
/// profile's names. Each column is read through its `conversions` entry (the type rule's, so
/// the rows arrive in the local types; empty: as they are).
pub fn remote_select(
    entity: &EntitySpec,
    tenant: &TenantId,
    versioned: bool,
    conversions: &[Conversion],
) -> String {
    let columns = converted_columns(&entity.columns, conversions);
    let version = if versioned {
        format!("xmin::text::bigint as {}", quote_ident(VERSION_COLUMN))
    } else {
        format!("null::bigint as {}", quote_ident(VERSION_COLUMN))
    };
    match &entity.remote {
        RemoteSource::Table(table) => match &entity.tenant_column {
            Some(tenant_column) => format!(
                "select {columns}, {version} from {} where {} = {}",
                table.quoted(),
                tenant_column.quoted(),
                tenant.literal()
            ),
            None => format!("select {columns}, {version} from {}", table.quoted()),
        },
        RemoteSource::Query(query) => {
            format!(
                "select {columns}, {version} from (\n{}\n) as remote_rows",
                query.render(tenant)
            )
        }
    }
}

/// Whether the remote table has a primary key whose columns are all among the given key
/// columns: then its rows can neither repeat nor lack a key. Binds `$1` the quoted table
/// name, `$2` the key column names (`text[]`).
pub const SELECT_KEY_IS_PRIMARY: &str = "select exists (
  select 1 from pg_index i
  where i.indrelid = to_regclass($1) and i.indisprimary and not (0 = any(i.indkey::int2[]))
    and (select array_agg(a.attname::text) from pg_attribute a
         where a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[])) <@ $2::text[])";

/// The relation kind of the remote table (`r` table, `p` partitioned, `v` view, ...), or
/// NULL: binds `$1`, the quoted table name.
pub const SELECT_RELKIND: &str = "select relkind::text from pg_class where oid = to_regclass($1)";

/// The local `SELECT` whose result types the remote one must match.
pub fn local_select(entity: &EntitySpec) -> String {
    format!(
        "select {} from {}",
        column_list(entity.columns.iter().map(|c| &c.name)),
        entity.table.quoted()
    )
}

/// `COPY (select) TO STDOUT` in binary: the remote side of the pipe.
pub fn copy_out(select: &str) -> String {
    format!("copy ({select}) to stdout (format binary)")
}

/// An empty temporary copy of the entity's columns and version, without constraints.
pub fn create_stage(entity: &EntitySpec) -> String {
    format!(
        "create temporary table {} on commit drop as select {} from {} with no data",
        stage_name(entity),
        moved_columns(entity),
        entity.table.quoted()
    )
}

/// `COPY stage FROM STDIN` in binary: the local side of the pipe.
pub fn copy_into_stage(entity: &EntitySpec) -> String {
    format!(
        "copy {} ({}) from stdin (format binary)",
        stage_name(entity),
        moved_columns(entity)
    )
}

/// `t."a" = s."a" and t."b" = s."b"` over the key.
fn key_join(entity: &EntitySpec, left: &str, right: &str) -> String {
    entity
        .key
        .iter()
        .map(|k| format!("{left}.{q} = {right}.{q}", q = k.quoted()))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The key columns of alias `alias` as text, for reports: `t."id"::text, ...`.
fn key_text(entity: &EntitySpec, alias: &str) -> String {
    entity
        .key
        .iter()
        .map(|k| format!("{alias}.{}::text", k.quoted()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `name` column as text when the entity has one, else NULL (for new-row reports).
fn name_text(entity: &EntitySpec, alias: &str) -> String {
    match entity.column("name") {
        Some(c) => format!("{alias}.{}::text", c.name.quoted()),
        None => "null::text".to_string(),
    }
}

/// An entity that others may reference, as the run sees it: its spec, and whether it has rows
/// to delete that are collected but not removed yet (removals run children first, after every
/// insert and update, so a row that is about to go no longer counts as present).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub spec: &'a EntitySpec,
    pub deleting: bool,
}

/// The condition that every reference of the row aliased `alias` exists locally and is not
/// about to be deleted.
fn references_exist(entity: &EntitySpec, targets: &[Target<'_>], alias: &str) -> Option<String> {
    if entity.references.is_empty() {
        return None;
    }
    let parts: Vec<String> = entity
        .references
        .iter()
        .filter_map(|r| {
            let target = targets.iter().find(|t| t.spec.name == r.entity)?;
            let on = r
                .columns
                .iter()
                .zip(&r.entity_columns)
                .map(|(mine, theirs)| format!("r.{} = {alias}.{}", theirs.quoted(), mine.quoted()))
                .collect::<Vec<_>>()
                .join(" and ");
            let staying = if target.deleting {
                format!(
                    " and not exists (select 1 from {} g where {})",
                    gone_name(target.spec),
                    key_join(target.spec, "g", "r")
                )
            } else {
                String::new()
            };
            Some(format!(
                "exists (select 1 from {} r where {on}{staying})",
                target.spec.table.quoted()
            ))
        })
        .collect();
    Some(parts.join(" and "))
}

/// Removes stage rows whose references are missing locally, returning their keys: they are
/// skipped (never inserted; an existing local row with a dangling reference is then handled
/// as missing). `None` when the entity has no references.
pub fn skip_unreferenced(entity: &EntitySpec, targets: &[Target<'_>]) -> Option<String> {
    let exists = references_exist(entity, targets, "s")?;
    Some(format!(
        "delete from {} s where not ({exists}) returning {}",
        stage_name(entity),
        key_text(entity, "s")
    ))
}

/// The local table of keys to remove for an entity: collected before any change of the run,
/// removed after every insert and update (children first).
pub fn gone_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_gone_{}", entity.name))
}

/// Collects the keys of local rows (alias `t`, reached through `from`) matching `condition`
/// that `on_missing` removes: all of them to delete, the active ones to deactivate. `None` for
/// `keep`.
fn collect(entity: &EntitySpec, from: &str, condition: &str) -> Option<String> {
    let active = match &entity.on_missing {
        OnMissing::Keep => return None,
        OnMissing::Delete => String::new(),
        OnMissing::Deactivate { column } => {
            format!(" and t.{} is distinct from false", column.quoted())
        }
    };
    Some(format!(
        "create temporary table {} on commit drop as select {} from {from} where {condition}{active}",
        gone_name(entity),
        entity
            .key
            .iter()
            .map(|k| format!("t.{}", k.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// Collects the local rows whose key is not in `present` (every remote row was staged there).
pub fn collect_missing(entity: &EntitySpec, present: &str) -> Option<String> {
    collect(
        entity,
        &format!("{} t", entity.table.quoted()),
        &format!(
            "not exists (select 1 from {present} s where {})",
            key_join(entity, "s", "t")
        ),
    )
}

/// Collects the local rows the diff marks gone, driven from the diff (small) into the table
/// through its key, never scanning the whole table.
pub fn collect_gone(entity: &EntitySpec) -> Option<String> {
    collect(
        entity,
        &format!(
            "{} d join {} t on {}",
            diff_name(entity),
            entity.table.quoted(),
            key_join(entity, "d", "t")
        ),
        "d.gone",
    )
}

/// How many rows the entity's collected removals touch.
pub fn count_gone(entity: &EntitySpec) -> String {
    format!("select count(*) from {}", gone_name(entity))
}

/// How many local rows stay (active ones, for `deactivate`) once the collected ones go.
pub fn count_staying(entity: &EntitySpec) -> String {
    let active = match &entity.on_missing {
        OnMissing::Deactivate { column } => format!("t.{} and ", column.quoted()),
        _ => String::new(),
    };
    format!(
        "select count(*) from {} t where {active}not exists (select 1 from {} g where {})",
        entity.table.quoted(),
        gone_name(entity),
        key_join(entity, "g", "t")
    )
}

/// Deletes or deactivates the collected rows, returning their keys.
pub fn remove_gone(entity: &EntitySpec) -> Option<String> {
    let gone = gone_name(entity);
    let join = key_join(entity, "t", "g");
    match &entity.on_missing {
        OnMissing::Keep => None,
        OnMissing::Delete => Some(format!(
            "delete from {} t using {gone} g where {join} returning {}",
            entity.table.quoted(),
            key_text(entity, "t")
        )),
        OnMissing::Deactivate { column } => Some(format!(
            "update {} t set {c} = false from {gone} g where {join} and t.{c} is distinct from false returning {}",
            entity.table.quoted(),
            key_text(entity, "t"),
            c = column.quoted()
        )),
    }
}

/// A NULL-safe "differs" test for one column; types without an equality operator (json, xml)
/// compare as text.
fn differs(column: &crate::profile::ColumnSpec, left: &str, right: &str) -> String {
    let q = column.name.quoted();
    let base = column.sql_type.as_str().trim_end_matches("[]");
    if matches!(
        base,
        "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
    ) {
        format!("{left}.{q}::text is distinct from {right}.{q}::text")
    } else {
        format!("{left}.{q} is distinct from {right}.{q}")
    }
}

/// Updates local rows whose values differ from the stage, returning each key with the names
/// of the columns that changed. `None` when every column is part of the key.
pub fn update_changed(entity: &EntitySpec) -> Option<String> {
    let values: Vec<&crate::profile::ColumnSpec> = entity.value_columns().collect();
    if values.is_empty() {
        return None;
    }
    let changed_names = values
        .iter()
        .map(|c| format!("case when {} then '{}' end", differs(c, "t", "s"), c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let any_differs = values
        .iter()
        .map(|c| differs(c, "t", "s"))
        .collect::<Vec<_>>()
        .join(" or ");
    let set = values
        .iter()
        .map(|c| format!("{q} = c.{q}", q = c.name.quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "with c as (
    select s.*, array_remove(array[{changed_names}], null) as meter_sync_changed
    from {stage} s join {table} t on {join}
    where {any_differs}
)
update {table} t set {set}, {version} = c.{version} from c where {join_c}
returning {keys}, c.meter_sync_changed",
        stage = stage_name(entity),
        table = entity.table.quoted(),
        join = key_join(entity, "t", "s"),
        join_c = key_join(entity, "t", "c"),
        keys = key_text(entity, "t"),
        version = quote_ident(VERSION_COLUMN),
    ))
}

/// Records the remote version of rows whose values were already equal (bookkeeping, not an
/// update in the report).
pub fn sync_versions(entity: &EntitySpec) -> String {
    format!(
        "update {table} t set {v} = s.{v} from {stage} s where {join} and t.{v} is distinct from s.{v}",
        table = entity.table.quoted(),
        stage = stage_name(entity),
        join = key_join(entity, "t", "s"),
        v = quote_ident(VERSION_COLUMN),
    )
}

/// Inserts stage rows whose key is new locally, returning key and name.
pub fn insert_new(entity: &EntitySpec) -> String {
    let columns = moved_columns(entity);
    format!(
        "insert into {table} as t ({columns})
select {scols} from {stage} s
where not exists (select 1 from {table} e where {join})
returning {keys}, {name}",
        table = entity.table.quoted(),
        scols = entity
            .columns
            .iter()
            .map(|c| c.name.quoted())
            .chain([quote_ident(VERSION_COLUMN)])
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        stage = stage_name(entity),
        join = key_join(entity, "e", "s"),
        keys = key_text(entity, "t"),
        name = name_text(entity, "t"),
    )
}

// ---------------------------------------------------------------- cold path

/// Whether the local table has no row (the cold path copies straight into it).
pub fn local_is_empty(entity: &EntitySpec) -> String {
    format!(
        "select not exists (select 1 from {})",
        entity.table.quoted()
    )
}

/// `COPY local_table FROM STDIN` in binary: the cold path's sink.
pub fn copy_into_table(entity: &EntitySpec) -> String {
    format!(
        "copy {} ({}) from stdin (format binary)",
        entity.table.quoted(),
        moved_columns(entity)
    )
}

/// The local table's primary key: name, definition, and whether a foreign key references the
/// table (then the key must stay). Binds `$1`, the quoted table name.
pub const SELECT_PRIMARY_KEY: &str = "select c.conname::text, pg_get_constraintdef(c.oid),
       exists (select 1 from pg_constraint f where f.confrelid = c.conrelid and f.contype = 'f')
from pg_constraint c where c.conrelid = to_regclass($1) and c.contype = 'p'";

/// Drops a constraint (the cold path's primary key, rebuilt after the load).
pub fn drop_constraint(table: &crate::profile::TableName, name: &str) -> String {
    format!(
        "alter table {} drop constraint {}",
        table.quoted(),
        quote_ident(name)
    )
}

/// Restores a constraint from its catalog definition (`pg_get_constraintdef`).
pub fn add_constraint(table: &crate::profile::TableName, name: &str, definition: &str) -> String {
    format!(
        "alter table {} add constraint {} {definition}",
        table.quoted(),
        quote_ident(name)
    )
}

/// Cold path: removes just-copied rows whose references are missing, returning their keys.
pub fn delete_unreferenced(entity: &EntitySpec, targets: &[Target<'_>]) -> Option<String> {
    let exists = references_exist(entity, targets, "t")?;
    Some(format!(
        "delete from {} t where not ({exists}) returning {}",
        entity.table.quoted(),
        key_text(entity, "t")
    ))
}

/// Cold path: a bounded sample of the rows just inserted (all are new), key and name.
pub fn sample_rows(entity: &EntitySpec, limit: usize) -> String {
    format!(
        "select {}, {} from {} t limit {limit}",
        key_text(entity, "t"),
        name_text(entity, "t"),
        entity.table.quoted()
    )
}

// ---------------------------------------------------------------- diff path

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

/// Up to three tenant ids from the local tenant table (its single key column), as text.
pub fn select_tenant_ids(tenant: &EntitySpec) -> String {
    let key = tenant.key.first().map(Ident::quoted).unwrap_or_default();
    format!(
        "select {key}::text from {} order by 1 limit 3",
        tenant.table.quoted()
    )
}

/// `select count(*)` of a table.
pub fn count_rows(table: &crate::profile::TableName) -> String {
    format!("select count(*) from {}", table.quoted())
}

/// `select count(*)` of a table's rows whose `active` column is true (all rows without one).
pub fn count_active(table: &crate::profile::TableName, active: Option<&Ident>) -> String {
    match active {
        Some(column) => format!(
            "select count(*) from {} where {}",
            table.quoted(),
            column.quoted()
        ),
        None => count_rows(table),
    }
}

/// Drops the stage (it would be dropped at commit anyway; this frees it for the next entity).
pub fn drop_stage(entity: &EntitySpec) -> String {
    format!("drop table if exists {}", stage_name(entity))
}

/// Local rows of an entity as JSON objects in key order, `$1` an optional filter on the
/// `active` column (NULL: all rows), `$2` the row limit.
pub fn list_rows(entity: &EntitySpec, active: Option<&Ident>) -> String {
    let filter = match active {
        Some(column) => format!("where $1::boolean is null or {} = $1", column.quoted()),
        None => "where $1::boolean is null".to_string(),
    };
    format!(
        "select to_jsonb(t) from {} as t {filter} order by {} limit $2",
        entity.table.quoted(),
        super::column_list(entity.key.iter())
    )
}

/// The remote rows of an entity for the tenant, counted without naming any other column (so a
/// renamed column elsewhere in the table does not break the count).
pub fn count_remote_rows(entity: &EntitySpec, tenant: &TenantId) -> String {
    match &entity.remote {
        RemoteSource::Table(table) => match &entity.tenant_column {
            Some(column) => format!(
                "select count(*) from {} where {} = {}",
                table.quoted(),
                column.quoted(),
                tenant.literal()
            ),
            None => format!("select count(*) from {}", table.quoted()),
        },
        RemoteSource::Query(query) => format!(
            "select count(*) from (\n{}\n) as remote_rows",
            query.render(tenant)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn default_entity(name: &str) -> EntitySpec {
        Profile::builtin_default()
            .unwrap()
            .entity(name)
            .unwrap()
            .clone()
    }

    #[test]
    fn remote_select_filters_by_tenant_literal() {
        let tenant = TenantId::parse("42").unwrap();
        let sql = remote_select(&default_entity("register"), &tenant, true, &[]);
        assert_eq!(
            sql,
            "select \"id\", \"name\", \"register\", \"unit\", \"field_name\", xmin::text::bigint as \"meter_sync_version\" from \"register\" where \"tenant_id\" = '42'"
        );
        let dr = remote_select(&default_entity("device_register"), &tenant, false, &[]);
        assert!(dr.starts_with("select \"id\", \"device_id\", \"register_id\", \"created_at\", \"updated_at\", null::bigint as \"meter_sync_version\" from (\n"), "{dr}");
        assert!(dr.contains("where r.tenant_id = '42'"), "{dr}");
    }

    #[test]
    fn missing_rows_follow_on_missing() {
        let meter = collect_missing(&default_entity("meter"), "\"stage\"").unwrap();
        assert_eq!(
            meter,
            "create temporary table \"meter_sync_gone_meter\" on commit drop as select t.\"id\", t.\"meter_element_id\" from \"meter\" t where not exists (select 1 from \"stage\" s where s.\"id\" = t.\"id\" and s.\"meter_element_id\" = t.\"meter_element_id\") and t.\"active\" is distinct from false"
        );
        assert_eq!(
            collect_gone(&default_entity("register")).unwrap(),
            "create temporary table \"meter_sync_gone_register\" on commit drop as select t.\"id\" from \"meter_sync_diff_register\" d join \"register\" t on d.\"id\" = t.\"id\" where d.gone"
        );
        let meter = remove_gone(&default_entity("meter")).unwrap();
        assert!(
            meter.starts_with(
                "update \"meter\" t set \"active\" = false from \"meter_sync_gone_meter\" g"
            ),
            "{meter}"
        );
        let register = collect_missing(&default_entity("register"), "\"stage\"").unwrap();
        assert!(
            register.contains("from \"register\" t where not exists"),
            "{register}"
        );
        let register = remove_gone(&default_entity("register")).unwrap();
        assert!(
            register.starts_with("delete from \"register\" t using \"meter_sync_gone_register\" g"),
            "{register}"
        );
        assert_eq!(
            collect_missing(&default_entity("tenant"), "\"stage\""),
            None
        );
        assert_eq!(remove_gone(&default_entity("tenant")), None);
    }

    #[test]
    fn update_compares_null_safely_and_reports_changed_columns() {
        let sql = update_changed(&default_entity("register")).unwrap();
        assert!(
            sql.contains("case when t.\"name\" is distinct from s.\"name\" then 'name' end"),
            "{sql}"
        );
        assert!(
            sql.contains("returning t.\"id\"::text, c.meter_sync_changed"),
            "{sql}"
        );
        assert!(
            !sql.contains("t.\"id\" is distinct"),
            "keys are not compared: {sql}"
        );
    }

    #[test]
    fn references_become_exists_checks_on_local_tables() {
        let profile = Profile::builtin_default().unwrap();
        let dr = profile.entity("device_register").unwrap();
        let targets: Vec<Target<'_>> = profile
            .entities
            .iter()
            .map(|spec| Target {
                spec,
                deleting: spec.name.as_str() == "register",
            })
            .collect();
        let sql = skip_unreferenced(dr, &targets).unwrap();
        assert!(
            sql.contains(
                "exists (select 1 from \"meter\" r where r.\"device_id\" = s.\"device_id\")"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "exists (select 1 from \"register\" r where r.\"id\" = s.\"register_id\" and not exists (select 1 from \"meter_sync_gone_register\" g where g.\"id\" = r.\"id\"))"
            ),
            "{sql}"
        );
    }
}
