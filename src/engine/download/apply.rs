//! Applying an entity's stage: the rows gone remotely are collected (and checked by the
//! mass-delete guard), changed rows updated, new rows inserted; in pass 2 the collected rows are
//! deleted or deactivated, children first.

use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::rows::{for_each_row, keep, key_of};
use super::{ChangedRow, EntityError, EntityReport, NewRow};
use crate::data::pg::{on_local, PgError};
use crate::data::sql;
use crate::logging::Steps;
use crate::profile::{EntitySpec, OnMissing};

/// Which local rows are gone remotely.
pub(super) enum Removal {
    /// Those whose key is not in this relation (every remote row was staged).
    NotIn(String),
    /// Those the diff marks gone.
    Gone,
}

/// Applies the stage: collects the rows gone remotely (checked by the mass-delete guard), then
/// updates changed rows and inserts new ones. Returns whether removals were collected.
pub(super) async fn apply(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    removal: Removal,
    guard: crate::config::DeleteGuard,
    report: &mut EntityReport,
    steps: &mut Steps<'_>,
) -> Result<bool, EntityError> {
    let key_len = entity.key.len();
    let (collect, present) = match &removal {
        Removal::NotIn(present) => (
            sql::collect_missing(entity, present),
            Some(present.as_str()),
        ),
        Removal::Gone => (sql::collect_gone(entity), None),
    };
    if let Some(statement) = &collect {
        ltx.batch_execute(statement)
            .await
            .map_err(on_local("collect rows gone remotely"))?;
        check_mass_delete(ltx, entity, guard).await?;
        steps.done("collect rows gone remotely");
    }
    if let Some(statement) = sql::forget_versions(entity, present) {
        ltx.batch_execute(&statement)
            .await
            .map_err(on_local("mark rows gone remotely as no longer mirrored"))?;
    }
    if let Some(statement) = sql::update_changed(entity) {
        report.updated = for_each_row(ltx, &statement, "update changed rows", |row| {
            let changed = ChangedRow {
                key: key_of(&row, key_len),
                columns: row.get(key_len),
            };
            keep(&mut report.changed_rows, changed);
        })
        .await?;
        steps.done("update changed rows");
    }
    ltx.batch_execute(&sql::sync_versions(entity))
        .await
        .map_err(on_local("record row versions"))?;
    report.inserted = for_each_row(ltx, &sql::insert_new(entity), "insert new rows", |row| {
        let new = NewRow {
            key: key_of(&row, key_len),
            name: row.get(key_len),
        };
        keep(&mut report.new_rows, new);
    })
    .await?;
    steps.done("insert new rows");
    Ok(collect.is_some())
}

/// Deletes or deactivates the rows [`apply`] collected, once every entity's inserts and
/// updates are done and every entity that depends on this one has removed its own.
pub(super) async fn remove_gone(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    report: &mut EntityReport,
) -> Result<(), EntityError> {
    let Some(statement) = sql::remove_gone(entity) else {
        return Ok(());
    };
    let key_len = entity.key.len();
    let removed = for_each_row(ltx, &statement, "remove rows gone remotely", |row| {
        keep(&mut report.removed_keys, key_of(&row, key_len));
    })
    .await
    .map_err(|e| {
        let referenced = match &e {
            PgError::Query { source, .. } => source
                .as_db_error()
                .filter(|db| db.code() == &SqlState::FOREIGN_KEY_VIOLATION),
            _ => None,
        };
        match referenced {
            Some(db) => EntityError::StillReferenced {
                table: entity.table.to_string(),
                referencing: db.table().unwrap_or("?").to_string(),
                constraint: db.constraint().unwrap_or("?").to_string(),
            },
            None => e.into(),
        }
    })?;
    report.deleted = removed;
    ltx.batch_execute(&format!("drop table {}", sql::gone_name(entity)))
        .await
        .map_err(on_local("drop the removal list"))?;
    Ok(())
}

/// The mass-delete guard, on the collected removals before anything changes (inside the
/// entity's savepoint, which the refusal rolls back).
async fn check_mass_delete(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    guard: crate::config::DeleteGuard,
) -> Result<(), EntityError> {
    if guard.allowed {
        return Ok(());
    }
    let removed: i64 = ltx
        .query_one(&sql::count_gone(entity), &[])
        .await
        .map_err(on_local("count the rows gone remotely"))?
        .get(0);
    let removed = removed.max(0) as u64;
    if removed <= crate::config::DeleteGuard::MIN_ROWS {
        return Ok(());
    }
    let verb = match &entity.on_missing {
        OnMissing::Deactivate { .. } => "deactivate",
        _ => "delete",
    };
    let left: i64 = ltx
        .query_one(&sql::count_staying(entity), &[])
        .await
        .map_err(on_local("count the rows left"))?
        .get(0);
    let before = left.max(0) as u64 + removed;
    if guard.refuses(removed, before) {
        return Err(EntityError::MassDelete {
            verb,
            removed,
            before,
            percent: 100.0 * removed as f64 / before as f64,
            max_fraction: guard.max_fraction,
            table: entity.table.to_string(),
        });
    }
    Ok(())
}
