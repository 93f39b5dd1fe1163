//! Applying a staged entity: the rows gone remotely collected and removed, changed rows
//! updated, new rows inserted.

use crate::profile::{quote_ident, EntitySpec, OnMissing};

use super::*;

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
