//! Statements of the download engine. `stage` is the local temporary table that holds the
//! remote rows of one entity for the run; `t` is the local table, `s` the stage.

use crate::data::convert::Conversion;
use crate::profile::{quote_ident, EntitySpec, Ident, RemoteSource, TenantId};

use super::{column_list, converted_columns};

mod apply;
mod cold;
mod diff;
mod incremental;

pub use apply::*;
pub use cold::*;
pub use diff::*;
pub use incremental::*;

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
        RemoteSource::Table(table) => table_select(entity, tenant, table, &columns, &version, None),
        RemoteSource::Query(query) => {
            format!(
                "select {columns}, {version} from (\n{}\n) as remote_rows",
                query.render(tenant)
            )
        }
    }
}

/// `select {columns}, {tail} from table` restricted to the tenant and, if given, `condition`
/// (on the table's own columns).
fn table_select(
    entity: &EntitySpec,
    tenant: &TenantId,
    table: &crate::profile::TableName,
    columns: &str,
    tail: &str,
    condition: Option<&str>,
) -> String {
    let conditions: Vec<String> = entity
        .tenant_column
        .iter()
        .map(|c| format!("{} = {}", c.quoted(), tenant.literal()))
        .chain(condition.map(str::to_string))
        .collect();
    let filter = match conditions.is_empty() {
        true => String::new(),
        false => format!(" where {}", conditions.join(" and ")),
    };
    format!("select {columns}, {tail} from {}{filter}", table.quoted())
}

/// The first remote row (of the tenant) with a value that a checked column's target cannot
/// hold, as its key as text, then the column's name, then the value as text; `None` when no
/// column is checked. Values are read as the remote has them (unconverted).
pub fn find_unfit(
    entity: &EntitySpec,
    tenant: &TenantId,
    versioned: bool,
    conversions: &[Conversion],
) -> Option<String> {
    let checks: Vec<(&Ident, &crate::data::convert::Fit)> =
        crate::data::convert::checks(&entity.columns, conversions).collect();
    if checks.is_empty() {
        return None;
    }
    let unfit = |(name, fit): &(&Ident, &crate::data::convert::Fit)| {
        format!("not {}", fit.sql(&format!("r.{}", name.quoted())))
    };
    let which = checks
        .iter()
        .map(|check| format!("when {} then '{}'", unfit(check), check.0))
        .collect::<Vec<_>>()
        .join(" ");
    let value = checks
        .iter()
        .map(|check| format!("when {} then r.{}::text", unfit(check), check.0.quoted()))
        .collect::<Vec<_>>()
        .join(" ");
    let any = checks.iter().map(unfit).collect::<Vec<_>>().join(" or ");
    Some(format!(
        "select {}, case {which} end, case {value} end from ({}) r where {any} limit 1",
        key_text(entity, "r"),
        remote_select(entity, tenant, versioned, &[])
    ))
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
mod tests;
