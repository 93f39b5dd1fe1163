//! Statements of the download engine. `stage` is the local temporary table that holds the
//! remote rows of one entity for the run; `t` is the local table, `s` the stage.

use crate::profile::{quote_ident, EntitySpec, Ident, OnMissing, RemoteSource, TenantId};

use super::column_list;

/// The stage's name for an entity (temporary, dropped at commit).
pub fn stage_name(entity: &EntitySpec) -> String {
    quote_ident(&format!("meter_sync_stage_{}", entity.name))
}

/// The remote `SELECT` of an entity's columns, in profile order, restricted to the tenant.
/// A profile query is wrapped so its output columns must carry the profile's names.
pub fn remote_select(entity: &EntitySpec, tenant: &TenantId) -> String {
    let columns = column_list(entity.columns.iter().map(|c| &c.name));
    match &entity.remote {
        RemoteSource::Table(table) => match &entity.tenant_column {
            Some(tenant_column) => format!(
                "select {columns} from {} where {} = {}",
                table.quoted(),
                tenant_column.quoted(),
                tenant.literal()
            ),
            None => format!("select {columns} from {}", table.quoted()),
        },
        RemoteSource::Query(query) => {
            format!(
                "select {columns} from (\n{}\n) as remote_rows",
                query.render(tenant)
            )
        }
    }
}

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

/// An empty temporary copy of the entity's columns, without constraints.
pub fn create_stage(entity: &EntitySpec) -> String {
    format!(
        "create temporary table {} on commit drop as {} with no data",
        stage_name(entity),
        local_select(entity)
    )
}

/// `COPY stage FROM STDIN` in binary: the local side of the pipe.
pub fn copy_into_stage(entity: &EntitySpec) -> String {
    format!(
        "copy {} ({}) from stdin (format binary)",
        stage_name(entity),
        column_list(entity.columns.iter().map(|c| &c.name))
    )
}

/// A unique index on the stage's key: refuses duplicate remote keys (the error names the key)
/// and serves the joins below.
pub fn index_stage(entity: &EntitySpec) -> String {
    format!(
        "create unique index on {} ({}); analyze {}",
        stage_name(entity),
        column_list(&entity.key),
        stage_name(entity)
    )
}

/// Stage rows whose key has a NULL: binds nothing; returns the count.
pub fn count_null_keys(entity: &EntitySpec) -> String {
    let any_null = entity
        .key
        .iter()
        .map(|k| format!("{} is null", k.quoted()))
        .collect::<Vec<_>>()
        .join(" or ");
    format!(
        "select count(*) from {} where {any_null}",
        stage_name(entity)
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

/// The condition that every reference of a stage row exists locally.
fn references_exist(entity: &EntitySpec, targets: &[(&Ident, &EntitySpec)]) -> Option<String> {
    if entity.references.is_empty() {
        return None;
    }
    let parts: Vec<String> = entity
        .references
        .iter()
        .filter_map(|r| {
            let target = targets.iter().find(|(name, _)| **name == r.entity)?.1;
            let on = r
                .columns
                .iter()
                .zip(&r.entity_columns)
                .map(|(mine, theirs)| format!("r.{} = s.{}", theirs.quoted(), mine.quoted()))
                .collect::<Vec<_>>()
                .join(" and ");
            Some(format!(
                "exists (select 1 from {} r where {on})",
                target.table.quoted()
            ))
        })
        .collect();
    Some(parts.join(" and "))
}

/// Removes stage rows whose references are missing locally, returning their keys: they are
/// skipped (never inserted; an existing local row with a dangling reference is then handled
/// as missing). `None` when the entity has no references.
pub fn skip_unreferenced(entity: &EntitySpec, targets: &[(&Ident, &EntitySpec)]) -> Option<String> {
    let exists = references_exist(entity, targets)?;
    Some(format!(
        "delete from {} s where not ({exists}) returning {}",
        stage_name(entity),
        key_text(entity, "s")
    ))
}

/// Local rows whose key is not in the stage: deleted or deactivated per `on_missing`,
/// returning their keys. `None` for `keep`.
pub fn apply_missing(entity: &EntitySpec) -> Option<String> {
    let absent = format!(
        "not exists (select 1 from {} s where {})",
        stage_name(entity),
        key_join(entity, "s", "t")
    );
    match &entity.on_missing {
        OnMissing::Keep => None,
        OnMissing::Delete => Some(format!(
            "delete from {} t where {absent} returning {}",
            entity.table.quoted(),
            key_text(entity, "t")
        )),
        OnMissing::Deactivate { column } => Some(format!(
            "update {} t set {c} = false where t.{c} is distinct from false and {absent} returning {}",
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
update {table} t set {set} from c where {join_c}
returning {keys}, c.meter_sync_changed",
        stage = stage_name(entity),
        table = entity.table.quoted(),
        join = key_join(entity, "t", "s"),
        join_c = key_join(entity, "t", "c"),
        keys = key_text(entity, "t"),
    ))
}

/// Inserts stage rows whose key is new locally, returning key and name.
pub fn insert_new(entity: &EntitySpec) -> String {
    let columns = column_list(entity.columns.iter().map(|c| &c.name));
    format!(
        "insert into {table} as t ({columns})
select {scols} from {stage} s
where not exists (select 1 from {table} e where {join})
returning {keys}, {name}",
        table = entity.table.quoted(),
        scols = entity
            .columns
            .iter()
            .map(|c| format!("s.{}", c.name.quoted()))
            .collect::<Vec<_>>()
            .join(", "),
        stage = stage_name(entity),
        join = key_join(entity, "e", "s"),
        keys = key_text(entity, "t"),
        name = name_text(entity, "t"),
    )
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
        let sql = remote_select(&default_entity("register"), &tenant);
        assert_eq!(
            sql,
            "select \"id\", \"name\", \"register\", \"unit\", \"field_name\" from \"register\" where \"tenant_id\" = '42'"
        );
        let dr = remote_select(&default_entity("device_register"), &tenant);
        assert!(dr.starts_with("select \"id\", \"device_id\", \"register_id\", \"created_at\", \"updated_at\" from (\n"), "{dr}");
        assert!(dr.contains("where r.tenant_id = '42'"), "{dr}");
    }

    #[test]
    fn missing_rows_follow_on_missing() {
        let meter = apply_missing(&default_entity("meter")).unwrap();
        assert!(meter.starts_with("update \"meter\" t set \"active\" = false where t.\"active\" is distinct from false"), "{meter}");
        let register = apply_missing(&default_entity("register")).unwrap();
        assert!(
            register.starts_with("delete from \"register\" t where not exists"),
            "{register}"
        );
        assert_eq!(apply_missing(&default_entity("tenant")), None);
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
        let targets: Vec<(&Ident, &EntitySpec)> =
            profile.entities.iter().map(|e| (&e.name, e)).collect();
        let sql = skip_unreferenced(dr, &targets).unwrap();
        assert!(
            sql.contains(
                "exists (select 1 from \"meter\" r where r.\"device_id\" = s.\"device_id\")"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "exists (select 1 from \"register\" r where r.\"id\" = s.\"register_id\")"
            ),
            "{sql}"
        );
    }
}
