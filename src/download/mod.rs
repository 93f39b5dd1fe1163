//! The download engine: mirrors the profile's configuration tables from the remote (source of
//! truth, never modified) into the local database, for one tenant.
//!
//! One run reads every entity from one `REPEATABLE READ, READ ONLY` remote transaction (one
//! consistent snapshot; the server itself refuses writes) and applies them in one local
//! transaction, with a savepoint per entity on both sides so a failing entity rolls back alone
//! and the next still runs. Per entity, in dependency order: the remote rows stream through
//! binary `COPY` into a local temporary stage (never held in memory), then set-based statements
//! skip rows whose references are missing, delete or deactivate rows gone remotely, update rows
//! whose values differ and insert new ones. Counts come from those statements' own rows.

mod report;
mod tenant;

use std::pin::pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row, Transaction};

pub use report::{ChangedRow, DownloadReport, EntityReport, NewRow, DETAIL_LIMIT};
pub use tenant::{resolve as resolve_tenant, TenantError};

use crate::cli::chain;
use crate::pg::{Backoff, PgError, Pools};
use crate::profile::{EntitySpec, Ident, Profile, TenantId};
use crate::sql;
use crate::synclog::{self, LogEntry};

/// How many new, changed, removed or skipped rows are logged one by one per entity.
const LOGGED_ROWS: usize = 100;

/// Why one entity failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    #[error("local table {table} does not exist; run `meter-sync migrate`")]
    LocalTableMissing { table: String },
    #[error("remote and local column types differ ({0}); align the tables or the profile")]
    TypeMismatch(String),
    #[error("{count} remote row(s) have NULL in key column(s) {key}")]
    NullKey { count: i64, key: String },
    #[error(transparent)]
    Database(#[from] PgError),
}

/// Why a whole run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Database(#[from] PgError),
}

/// What to download.
#[derive(Debug, Clone, Copy)]
pub struct DownloadRequest<'a> {
    pub profile: &'a Profile,
    /// `TENANT_ID`, if configured.
    pub tenant: Option<&'a TenantId>,
    /// Entity names to sync; empty: all of them.
    pub only: &'a [String],
    /// Connection retry policy.
    pub backoff: Backoff,
}

/// Runs one download and records it in `sync_logs`. Never panics on bad data: every failure
/// ends up in the report, per entity where it belongs.
pub async fn run(pools: &Pools, request: DownloadRequest<'_>) -> DownloadReport {
    let clock = Instant::now();
    let selected: Vec<&EntitySpec> = request
        .profile
        .entities
        .iter()
        .filter(|e| request.only.is_empty() || request.only.iter().any(|o| o == e.name.as_str()))
        .collect();
    let mut report = DownloadReport {
        tenant: request.tenant.map(ToString::to_string),
        started_at: chrono::Utc::now(),
        duration_ms: 0,
        entities: selected.iter().map(|e| EntityReport::new(e)).collect(),
        error: None,
    };
    tracing::info!(entities = selected.len(), "download started");
    if let Err(e) = run_entities(pools, request, &selected, &mut report).await {
        let message = chain(&e);
        tracing::error!(error = %message, "download failed");
        for entity in &mut report.entities {
            if entity.error.is_none() {
                entity.fail(format!("run failed: {message}"));
            }
        }
        report.error = Some(message);
    }
    report.duration_ms = clock.elapsed().as_millis() as u64;
    record(pools, &report).await;
    tracing::info!(
        success = report.success(),
        duration_ms = report.duration_ms,
        "download finished"
    );
    report
}

async fn run_entities(
    pools: &Pools,
    request: DownloadRequest<'_>,
    selected: &[&EntitySpec],
    report: &mut DownloadReport,
) -> Result<(), RunError> {
    let backoff = request.backoff;
    let mut local = backoff
        .retry(
            "connect to the local database",
            PgError::is_retryable,
            || pools.local(),
        )
        .await?;
    let tenant = tenant::resolve(&**local, request.tenant, request.profile).await?;
    report.tenant = Some(tenant.to_string());
    let mut remote = backoff
        .retry(
            "connect to the remote database",
            PgError::is_retryable,
            || pools.remote(),
        )
        .await?;
    let remote_client: &mut tokio_postgres::Client = &mut remote;
    let rtx = remote_client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| PgError::query("remote", "begin the read-only snapshot", e))?;
    let local_client: &mut tokio_postgres::Client = &mut local;
    let ltx = local_client
        .transaction()
        .await
        .map_err(|e| PgError::query("local", "begin the download transaction", e))?;
    let targets: Vec<(&Ident, &EntitySpec)> = request
        .profile
        .entities
        .iter()
        .map(|e| (&e.name, e))
        .collect();

    for (spec, entity_report) in selected.iter().zip(report.entities.iter_mut()) {
        let clock = Instant::now();
        savepoints(&ltx, &rtx, "savepoint meter_sync_entity").await?;
        let outcome = sync_entity(&ltx, &rtx, spec, &tenant, &targets, entity_report).await;
        entity_report.duration_ms = clock.elapsed().as_millis() as u64;
        match outcome {
            Ok(()) => {
                savepoints(&ltx, &rtx, "release savepoint meter_sync_entity").await?;
                entity_report.success = true;
                log_entity(entity_report);
            }
            Err(e) => {
                let message = chain(&e);
                tracing::error!(entity = %spec.name, error = %message, "entity failed; its changes are rolled back");
                entity_report.fail(message);
                // A broken connection cannot roll back; that surfaces as a run error below.
                savepoints(&ltx, &rtx, "rollback to savepoint meter_sync_entity").await?;
            }
        }
    }
    ltx.commit()
        .await
        .map_err(|e| PgError::query("local", "commit the download", e))?;
    // The snapshot was read-only; ending it cannot lose anything.
    let _ = rtx.rollback().await;
    Ok(())
}

async fn savepoints(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    statement: &str,
) -> Result<(), PgError> {
    ltx.batch_execute(statement)
        .await
        .map_err(|e| PgError::query("local", statement.to_string(), e))?;
    rtx.batch_execute(statement)
        .await
        .map_err(|e| PgError::query("remote", statement.to_string(), e))
}

fn local_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query("local", context, e)
}

fn remote_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query("remote", context, e)
}

/// Mirrors one entity inside the open transactions.
async fn sync_entity(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    tenant: &TenantId,
    targets: &[(&Ident, &EntitySpec)],
    report: &mut EntityReport,
) -> Result<(), EntityError> {
    let remote_select = sql::remote_select(entity, tenant);
    check_types(ltx, rtx, entity, &remote_select).await?;
    ltx.batch_execute(&sql::create_stage(entity))
        .await
        .map_err(local_err("create the stage table"))?;
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(&remote_select),
        &sql::copy_into_stage(entity),
    )
    .await?;

    let null_keys: i64 = ltx
        .query_one(&sql::count_null_keys(entity), &[])
        .await
        .map_err(local_err("check keys"))?
        .get(0);
    if null_keys > 0 {
        return Err(EntityError::NullKey {
            count: null_keys,
            key: entity
                .key
                .iter()
                .map(Ident::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    ltx.batch_execute(&sql::index_stage(entity))
        .await
        .map_err(local_err(
            "index the remote rows by key (duplicate remote keys?)",
        ))?;

    let key_len = entity.key.len();
    if let Some(statement) = sql::skip_unreferenced(entity, targets) {
        report.skipped = for_each_row(
            ltx,
            &statement,
            "skip rows with missing references",
            |row| {
                keep(&mut report.skipped_keys, key_of(&row, key_len));
            },
        )
        .await?;
    }
    if let Some(statement) = sql::apply_missing(entity) {
        report.deleted = for_each_row(ltx, &statement, "remove rows gone remotely", |row| {
            keep(&mut report.removed_keys, key_of(&row, key_len));
        })
        .await?;
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
    }
    report.inserted = for_each_row(ltx, &sql::insert_new(entity), "insert new rows", |row| {
        let new = NewRow {
            key: key_of(&row, key_len),
            name: row.get(key_len),
        };
        keep(&mut report.new_rows, new);
    })
    .await?;
    ltx.batch_execute(&sql::drop_stage(entity))
        .await
        .map_err(local_err("drop the stage table"))?;
    Ok(())
}

/// Refuses to copy when a remote column's type differs from the local column's: binary COPY
/// would fail with a far less helpful message.
async fn check_types(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    remote_select: &str,
) -> Result<(), EntityError> {
    let local = ltx.prepare(&sql::local_select(entity)).await.map_err(|e| {
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            EntityError::LocalTableMissing {
                table: entity.table.to_string(),
            }
        } else {
            PgError::query("local", format!("read the columns of {}", entity.table), e).into()
        }
    })?;
    let remote = rtx
        .prepare(remote_select)
        .await
        .map_err(remote_err("prepare the remote query"))?;
    let mismatches: Vec<String> = remote
        .columns()
        .iter()
        .zip(local.columns())
        .filter(|(r, l)| r.type_() != l.type_())
        .map(|(r, l)| format!("{}: remote {}, local {}", l.name(), r.type_(), l.type_()))
        .collect();
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(EntityError::TypeMismatch(mismatches.join("; ")))
    }
}

/// Streams binary COPY data from the remote query into the local stage, chunk by chunk.
async fn pipe(
    rtx: &Transaction<'_>,
    ltx: &Transaction<'_>,
    copy_out: &str,
    copy_in: &str,
) -> Result<u64, PgError> {
    let stream = rtx
        .copy_out(copy_out)
        .await
        .map_err(remote_err("read the remote rows"))?;
    let sink = ltx
        .copy_in::<_, Bytes>(copy_in)
        .await
        .map_err(local_err("write the stage table"))?;
    let mut stream = pin!(stream);
    let mut sink = pin!(sink);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(remote_err("read the remote rows"))?;
        sink.as_mut()
            .feed(chunk)
            .await
            .map_err(local_err("write the stage table"))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(local_err("write the stage table"))
}

/// Runs a statement with `RETURNING`, streaming its rows to `f`; returns how many there were.
async fn for_each_row(
    tx: &Transaction<'_>,
    statement: &str,
    context: &'static str,
    mut f: impl FnMut(Row),
) -> Result<u64, PgError> {
    let rows = tx
        .query_raw(statement, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await
        .map_err(local_err(context))?;
    let mut rows = pin!(rows);
    let mut count = 0;
    while let Some(row) = rows.try_next().await.map_err(local_err(context))? {
        count += 1;
        f(row);
    }
    Ok(count)
}

fn key_of(row: &Row, len: usize) -> Vec<String> {
    (0..len)
        .map(|i| {
            row.get::<_, Option<String>>(i)
                .unwrap_or_else(|| "NULL".into())
        })
        .collect()
}

fn keep<T>(list: &mut Vec<T>, item: T) {
    if list.len() < DETAIL_LIMIT {
        list.push(item);
    }
}

/// Log lines of spec 004 properties 9, 11 and 14: counts, new rows with key and name, changed
/// rows with the changed columns, skipped rows with their keys. Row values are never logged.
fn log_entity(e: &EntityReport) {
    tracing::info!(
        entity = %e.entity, fetched = e.fetched, inserted = e.inserted, updated = e.updated,
        deleted = e.deleted, on_missing = e.on_missing, skipped = e.skipped, duration_ms = e.duration_ms,
        "entity synced"
    );
    for row in e.new_rows.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?row.key, name = row.name.as_deref().unwrap_or(""), "new row");
    }
    for row in e.changed_rows.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?row.key, changed = ?row.columns, "row updated");
    }
    for key in e.removed_keys.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?key, on_missing = e.on_missing, "row gone remotely");
    }
    let listed = e.new_rows.len().min(LOGGED_ROWS) + e.changed_rows.len().min(LOGGED_ROWS);
    let total = (e.inserted + e.updated) as usize;
    if total > listed {
        tracing::info!(entity = %e.entity, not_listed = total - listed, "more new or updated rows than logged one by one");
    }
    if e.skipped > 0 {
        let keys: Vec<&Vec<String>> = e.skipped_keys.iter().take(20).collect();
        tracing::warn!(entity = %e.entity, count = e.skipped, keys = ?keys, "rows skipped: a referenced row is missing locally");
    }
}

/// One `sync_logs` row per entity; a failure to record is logged, not fatal.
async fn record(pools: &Pools, report: &DownloadReport) {
    let entries: Vec<LogEntry> = report
        .entities
        .iter()
        .map(|e| LogEntry {
            sync_type: "download",
            entity: Some(e.entity.clone()),
            success: e.success,
            records_processed: e.fetched as i64,
            inserted: e.inserted as i64,
            updated: e.updated as i64,
            deleted: e.deleted as i64,
            skipped: e.skipped as i64,
            error_message: e.error.clone(),
            duration_ms: e.duration_ms as i64,
            details: Some(serde_json::json!({
                "tenant": report.tenant,
                "on_missing": e.on_missing,
                "new_rows": e.new_rows.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "changed_rows": e.changed_rows.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "removed_keys": e.removed_keys.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "skipped_keys": e.skipped_keys.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
            })),
        })
        .collect();
    let result = async {
        let client = pools.local().await?;
        synclog::record(&**client, &entries).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the download in sync_logs");
    }
}
