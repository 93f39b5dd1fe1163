//! One attempt at a download run: one read-only snapshot of the remote and one local
//! transaction; pass 1 runs every entity in dependency order under savepoints on both sides,
//! pass 2 removes the collected rows children first; then the local commit.

use std::time::Instant;

use tokio_postgres::{IsolationLevel, Transaction};

use super::{apply, entity, incremental, DownloadReport, DownloadRequest, EntityError, RunError};
use crate::config::Side;
use crate::data::pg::{on_local, PgError, Pools};
use crate::data::sql;
use crate::data::sql::Target;
use crate::data::tenant;
use crate::error::chain;
use crate::profile::{EntitySpec, OnMissing, Profile, RemoteSource, TenantId};

/// How an attempt at a run ended.
pub(super) enum Attempt {
    Committed,
    /// An entity failed in a way its savepoint could not undo (now marked failed); nothing of
    /// the attempt was committed.
    Again,
}

/// One attempt at the run, leaving out the entities whose report already holds an error (and
/// recording the errors of those that fail now).
pub(super) async fn attempt(
    pools: &Pools,
    request: DownloadRequest<'_>,
    selected: &[&EntitySpec],
    report: &mut DownloadReport,
) -> Result<Attempt, RunError> {
    let backoff = request.backoff;
    let mut local = pools.local_with_retry(backoff).await?;
    let tenant = tenant::resolve(&**local, request.tenant, request.profile).await?;
    report.tenant = Some(tenant.to_string());
    let mut remote = pools.remote_with_retry(backoff).await?;
    let rtx = begin_snapshot(&mut remote, pools).await?;
    let local_client: &mut tokio_postgres::Client = &mut local;
    let ltx = local_client
        .transaction()
        .await
        .map_err(|e| PgError::query(Side::Local, "begin the download transaction", e))?;
    refuse_unknown_tenant(&rtx, request.profile, &tenant).await?;
    // Both snapshots first: the local horizon must precede every local read of the run.
    let clocks = incremental::read_clocks(&ltx, &rtx).await?;
    ltx.batch_execute(&format!(
        "{}; {}",
        sql::STABLE_TEXT_SETTINGS,
        sql::LOCAL_WORK_MEM
    ))
    .await
    .map_err(|e| PgError::query(Side::Local, "set session settings", e))?;
    let record_hash = server_version(&rtx, Side::Remote).await? >= 140_000
        && server_version(&ltx, Side::Local).await? >= 140_000;
    let options = EntityOptions {
        record_hash,
        full: request.full,
        guard: request.guard,
    };
    // Every entity of the profile, as references see it: `deleting` once its removals are
    // collected.
    let mut targets: Vec<Target<'_>> = request
        .profile
        .entities
        .iter()
        .map(|spec| Target {
            spec,
            deleting: false,
        })
        .collect();

    // Pass 1, dependency order: check, stage, collect removals, update, insert.
    let mut removing = vec![false; selected.len()];
    for (i, (spec, entity_report)) in selected.iter().zip(report.entities.iter_mut()).enumerate() {
        if entity_report.error.is_some() {
            continue;
        }
        let clock = Instant::now();
        savepoints(&ltx, &rtx, "savepoint meter_sync_entity").await?;
        let outcome = entity::sync(
            &ltx,
            &rtx,
            spec,
            &tenant,
            &targets,
            options,
            &clocks,
            entity_report,
        )
        .await;
        entity_report.duration_ms = clock.elapsed().as_millis() as u64;
        match outcome {
            Ok(collected) => {
                savepoints(&ltx, &rtx, "release savepoint meter_sync_entity").await?;
                removing[i] = collected;
                if collected && spec.on_missing == OnMissing::Delete {
                    if let Some(target) = targets.iter_mut().find(|t| t.spec.name == spec.name) {
                        target.deleting = true;
                    }
                }
            }
            Err(e) => {
                let message = chain(&e);
                tracing::error!(entity = %spec.name, error = %message, "entity failed; its changes are rolled back");
                entity_report.fail(message);
                if let Err(broken) =
                    savepoints(&ltx, &rtx, "rollback to savepoint meter_sync_entity").await
                {
                    // The failure left a connection unusable. If it was the connection itself
                    // (the server went away), the run fails; otherwise redo without the entity.
                    if is_connection_fault(&e) {
                        return Err(broken.into());
                    }
                    tracing::warn!(entity = %spec.name, error = %chain(&broken), "the entity's failure broke a connection; the run starts again without it");
                    return Ok(Attempt::Again);
                }
            }
        }
    }

    // Pass 2, reverse dependency order: children's rows go before the rows they reference.
    for (i, (spec, entity_report)) in selected
        .iter()
        .zip(report.entities.iter_mut())
        .enumerate()
        .rev()
    {
        if !removing[i] {
            continue;
        }
        let clock = Instant::now();
        ltx.batch_execute("savepoint meter_sync_removal")
            .await
            .map_err(on_local("savepoint meter_sync_removal"))?;
        let removed = match apply::remove_gone(&ltx, spec, entity_report).await {
            Ok(()) => incremental::record_removal(&ltx, spec)
                .await
                .map_err(EntityError::from),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {
                ltx.batch_execute("release savepoint meter_sync_removal")
                    .await
                    .map_err(on_local("release savepoint meter_sync_removal"))?;
                entity_report.duration_ms += clock.elapsed().as_millis() as u64;
            }
            Err(e) => {
                // Its inserts and updates of pass 1 are already released: only a new attempt
                // without it keeps it whole.
                let message = chain(&e);
                tracing::error!(entity = %spec.name, error = %message, "entity failed removing rows; the run starts again without it");
                entity_report.fail(message);
                return Ok(Attempt::Again);
            }
        }
    }
    ltx.commit()
        .await
        .map_err(|e| PgError::query(Side::Local, "commit the download", e))?;
    // The snapshot was read-only; ending it cannot lose anything.
    let _ = rtx.rollback().await;
    for entity_report in report.entities.iter_mut().filter(|e| e.error.is_none()) {
        entity_report.success = true;
    }
    Ok(Attempt::Committed)
}

/// The remote side of a run: one `REPEATABLE READ, READ ONLY` transaction (one consistent
/// snapshot, the server refuses writes) with text settings that make rows hash alike on both
/// servers, after the timeouts behind a pooler in transaction mode.
pub(super) async fn begin_snapshot<'a>(
    remote: &'a mut tokio_postgres::Client,
    pools: &Pools,
) -> Result<Transaction<'a>, PgError> {
    let settings = pools.remote_transaction_settings.as_str();
    if pools.remote_in_transaction_mode() {
        // Transaction mode: the driver's statements for looking up types were prepared on
        // whichever server connection an earlier transaction had; forget them.
        remote.clear_type_cache();
    }
    let rtx = remote
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| PgError::query(Side::Remote, "begin the read-only snapshot", e))?;
    let settings = match settings {
        "" => sql::STABLE_TEXT_SETTINGS.to_string(),
        timeouts => format!("{timeouts}; {}", sql::STABLE_TEXT_SETTINGS),
    };
    rtx.batch_execute(&settings)
        .await
        .map_err(|e| PgError::query(Side::Remote, "set text settings", e))?;
    Ok(rtx)
}

/// Whether an entity's error was the connection failing rather than the entity's data or
/// tables (then the run fails as a whole, as for any connection fault).
fn is_connection_fault(error: &EntityError) -> bool {
    matches!(error, EntityError::Database(e) if e.is_retryable())
}

/// A tenant the remote does not know would make every entity look emptied: refuse first. A
/// tenant table that cannot be read is left to fail as an entity of its own (under a
/// savepoint, so the snapshot stays usable for the others).
async fn refuse_unknown_tenant(
    rtx: &Transaction<'_>,
    profile: &Profile,
    tenant: &TenantId,
) -> Result<(), RunError> {
    let Some(entity) = profile.tenant_entity() else {
        return Ok(());
    };
    rtx.batch_execute("savepoint meter_sync_tenant_check")
        .await
        .map_err(|e| PgError::query(Side::Remote, "look up the tenant", e))?;
    match rtx
        .query_one(&sql::count_remote_rows(entity, tenant), &[])
        .await
    {
        Ok(row) if row.get::<_, i64>(0) == 0 => Err(RunError::UnknownTenant {
            tenant: tenant.to_string(),
            table: match &entity.remote {
                RemoteSource::Table(table) => format!("table {table}"),
                RemoteSource::Query(_) => format!("{} query", entity.name),
            },
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %crate::data::pg::describe(&e), "tenant lookup failed; the tenant entity will report it");
            rtx.batch_execute("rollback to savepoint meter_sync_tenant_check")
                .await
                .map_err(|e| PgError::query(Side::Remote, "look up the tenant", e))?;
            Ok(())
        }
    }
}

async fn server_version(tx: &Transaction<'_>, side: Side) -> Result<i32, PgError> {
    let row = tx
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| PgError::query(side, "read the server version", e))?;
    Ok(row.get(0))
}

async fn savepoints(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    statement: &str,
) -> Result<(), PgError> {
    ltx.batch_execute(statement)
        .await
        .map_err(|e| PgError::query(Side::Local, statement.to_string(), e))?;
    rtx.batch_execute(statement)
        .await
        .map_err(|e| PgError::query(Side::Remote, statement.to_string(), e))
}

/// Per-run choices that apply to every entity.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntityOptions {
    /// Both servers have `hash_record_extended` (14+).
    pub(super) record_hash: bool,
    /// Compare every row (`download --full`).
    pub(super) full: bool,
    pub(super) guard: crate::config::DeleteGuard,
}
