//! The cold path: an empty local table loaded straight from the remote.

use crate::profile::{quote_ident, EntitySpec};

use super::*;

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

/// Whether the local table has a foreign key of its own (binds `$1`, the quoted table name):
/// then rows cannot be copied straight in before those with a missing reference are skipped,
/// because the constraint refuses them at once.
pub const SELECT_HAS_FOREIGN_KEYS: &str =
    "select exists (select 1 from pg_constraint where conrelid = to_regclass($1) and contype = 'f')";

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
