//! The download engine: mirrors the profile's configuration tables from the remote (source of
//! truth, never modified) into the local database, for one tenant.
//!
//! One run reads every entity from one `REPEATABLE READ, READ ONLY` remote transaction (one
//! consistent snapshot; the server itself refuses writes) and applies them in one local
//! transaction. First, per entity in dependency order, under a savepoint on both sides: its
//! columns are checked (the local table has them, and no value can change type on the way), the
//! remote rows stream through binary `COPY` into a local temporary stage (never held in
//! memory), rows whose references are missing are skipped, the keys of rows gone remotely are
//! collected, changed rows are updated and new ones inserted. Then, in reverse dependency order
//! (children first, so local foreign keys hold), the collected rows are deleted or deactivated.
//! Counts come from those statements' own rows.
//!
//! An entity that fails rolls back alone: in the first pass its savepoint is rolled back; when
//! its removal fails, or its failure left a connection unusable, the run starts again from a
//! fresh transaction without it, so no entity is ever half applied and the others are applied
//! exactly as they would be without it.

mod columns;
mod report;
mod tenant;

use std::pin::pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row, Transaction};

pub use report::{ChangedRow, DownloadReport, EntityReport, NewRow, DETAIL_LIMIT};
pub use tenant::{resolve as resolve_tenant, TenantError};

use crate::error::chain;
use crate::logging::Steps;
use crate::pg::{on_local, on_remote, Backoff, Deadline, PgError, Pools, RawValue, TimedOut};
use crate::profile::{EntitySpec, Ident, OnMissing, Profile, RemoteSource, TenantId};
use crate::sql;
use crate::sql::Target;

/// Why one entity failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    #[error("local table {table} does not exist; run `meter-sync migrate`")]
    LocalTableMissing { table: String },
    #[error("local table {table} lacks {columns}: run `meter-sync migrate`")]
    LocalColumnsMissing { table: String, columns: String },
    #[error("{table}: column types could change or refuse values on the way, so nothing of {table} was applied: {detail}. Align the tables or the profile")]
    TypeMismatch { table: String, detail: String },
    #[error("cannot remove the rows of {table} gone remotely: local table {referencing} still references them (constraint {constraint}); nothing of {table} was changed. Remove or re-point those rows, or add {referencing} to the profile so its rows go first")]
    StillReferenced {
        table: String,
        referencing: String,
        constraint: String,
    },
    #[error("Key ({columns})=({values}) is duplicated among the remote rows")]
    DuplicateKey { columns: String, values: String },
    #[error("{count} remote row(s) have NULL in key column(s) {key}")]
    NullKey { count: i64, key: String },
    #[error("refusing to {verb} {removed} of the {before} local rows of {table} ({percent:.0}%, more than MAX_DELETE_FRACTION={max_fraction} and more than 10 rows): the remote may have been emptied by mistake. Nothing of {table} was changed. If this is intended, run `meter-sync download --allow-mass-delete` or set ALLOW_MASS_DELETE=true for one run")]
    MassDelete {
        verb: &'static str,
        removed: u64,
        before: u64,
        percent: f64,
        max_fraction: f64,
        table: String,
    },
    #[error(transparent)]
    Database(#[from] PgError),
}

/// Why a whole run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("tenant {tenant} is unknown to the remote database (no row in its {table}); check TENANT_ID. Nothing was changed")]
    UnknownTenant { tenant: String, table: String },
    #[error(transparent)]
    Database(#[from] PgError),
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
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
    /// Compare every row's values instead of row versions or hashes: also repairs local edits
    /// to mirrored rows, at the cost of transferring every row.
    pub full: bool,
    /// The mass-delete guard.
    pub guard: crate::config::DeleteGuard,
    /// When the run is cut short (`RUN_TIMEOUT_SECONDS`); `None`: no limit.
    pub deadline: Option<Deadline>,
}

/// Runs one download. Never panics on bad data: every failure ends up in the report, per entity
/// where it belongs. Recording the report is the caller's job (`record`).
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
    let outcome = Deadline::within(
        request.deadline,
        run_entities(pools, request, &selected, &mut report),
    )
    .await;
    if let Err(e) = outcome {
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
    report
}

async fn run_entities(
    pools: &Pools,
    request: DownloadRequest<'_>,
    selected: &[&EntitySpec],
    report: &mut DownloadReport,
) -> Result<(), RunError> {
    // An entity whose failure cannot be rolled back alone fails the attempt; the next attempt
    // leaves it out (its report keeps the error) and redoes the others from scratch. Each
    // attempt leaves out one more, so there are at most as many as entities, plus one.
    loop {
        match attempt(pools, request, selected, report).await? {
            Attempt::Committed => return Ok(()),
            Attempt::Again => {
                for (spec, entity) in selected.iter().zip(&mut report.entities) {
                    if entity.error.is_none() {
                        *entity = EntityReport::new(spec);
                    }
                }
            }
        }
    }
}

/// How an attempt at a run ended.
enum Attempt {
    Committed,
    /// An entity failed in a way its savepoint could not undo (now marked failed); nothing of
    /// the attempt was committed.
    Again,
}

/// One attempt at the run, leaving out the entities whose report already holds an error (and
/// recording the errors of those that fail now).
async fn attempt(
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
    rtx.batch_execute(sql::STABLE_TEXT_SETTINGS)
        .await
        .map_err(|e| PgError::query("remote", "set text settings", e))?;
    refuse_unknown_tenant(&rtx, request.profile, &tenant).await?;
    ltx.batch_execute(&format!(
        "{}; {}",
        sql::STABLE_TEXT_SETTINGS,
        sql::LOCAL_WORK_MEM
    ))
    .await
    .map_err(|e| PgError::query("local", "set session settings", e))?;
    let record_hash = server_version(&rtx, "remote").await? >= 140_000
        && server_version(&ltx, "local").await? >= 140_000;
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
        let outcome =
            sync_entity(&ltx, &rtx, spec, &tenant, &targets, options, entity_report).await;
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
        match remove_gone(&ltx, spec, entity_report).await {
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
        .map_err(|e| PgError::query("local", "commit the download", e))?;
    // The snapshot was read-only; ending it cannot lose anything.
    let _ = rtx.rollback().await;
    for entity_report in report.entities.iter_mut().filter(|e| e.error.is_none()) {
        entity_report.success = true;
    }
    Ok(Attempt::Committed)
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
    let Some(entity) = crate::cycle::tenant_entity(profile) else {
        return Ok(());
    };
    rtx.batch_execute("savepoint meter_sync_tenant_check")
        .await
        .map_err(|e| PgError::query("remote", "look up the tenant", e))?;
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
            tracing::debug!(error = %crate::pg::describe(&e), "tenant lookup failed; the tenant entity will report it");
            rtx.batch_execute("rollback to savepoint meter_sync_tenant_check")
                .await
                .map_err(|e| PgError::query("remote", "look up the tenant", e))?;
            Ok(())
        }
    }
}

async fn server_version(tx: &Transaction<'_>, side: &'static str) -> Result<i32, PgError> {
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
        .map_err(|e| PgError::query("local", statement.to_string(), e))?;
    rtx.batch_execute(statement)
        .await
        .map_err(|e| PgError::query("remote", statement.to_string(), e))
}

/// Above this fraction of new or changed rows the diff path stages every row instead.
const FULL_STAGE_FRACTION: f64 = 0.25;

/// Keys fetched per remote query on the diff path.
const FETCH_BATCH: usize = 10_000;

/// Mirrors one entity inside the open transactions, all but the removal of rows gone remotely:
/// returns whether those were collected (then [`remove_gone`] applies them).
async fn sync_entity(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    tenant: &TenantId,
    targets: &[Target<'_>],
    options: EntityOptions,
    report: &mut EntityReport,
) -> Result<bool, EntityError> {
    let (versioned, keyed) = match &entity.remote {
        RemoteSource::Table(table) => {
            let kind: Option<String> = rtx
                .query_opt(sql::SELECT_RELKIND, &[&table.quoted()])
                .await
                .map_err(on_remote("look up the remote table"))?
                .and_then(|row| row.get(0));
            let key: Vec<&str> = entity.key.iter().map(Ident::as_str).collect();
            let keyed: bool = rtx
                .query_one(sql::SELECT_KEY_IS_PRIMARY, &[&table.quoted(), &key])
                .await
                .map_err(on_remote("look up the remote primary key"))?
                .get(0);
            (matches!(kind.as_deref(), Some("r" | "p" | "m")), keyed)
        }
        RemoteSource::Query(_) => (false, false),
    };
    let columns = columns::check(ltx, rtx, entity, tenant, versioned).await?;
    let conversions = &columns.conversions;
    let remote_select = sql::remote_select(entity, tenant, versioned, conversions);
    let mut types = columns.local_types;
    types.push(Type::INT8);
    let empty: bool = ltx
        .query_one(&sql::local_is_empty(entity), &[])
        .await
        .map_err(on_local("look at the local table"))?
        .get(0);
    if empty {
        report.strategy = "cold";
        sync_cold(ltx, rtx, entity, &remote_select, targets, report).await?;
        return Ok(false);
    }

    let mut steps = Steps::new("download", entity.name.as_str());
    ltx.batch_execute(&sql::create_stage(entity))
        .await
        .map_err(on_local("create the stage table"))?;
    if options.full {
        let present = stage_every_row(ltx, rtx, entity, &remote_select, targets, report).await?;
        steps.done("stage every row");
        let collected = apply(
            ltx,
            entity,
            Removal::NotIn(present),
            options.guard,
            report,
            &mut steps,
        )
        .await?;
        drop_stages(ltx, entity).await?;
        return Ok(collected);
    }

    // Diff: compare row versions or hashes, then fetch only what is new or changed.
    report.strategy = "diff";
    let kind = sql::ChangeCheck::for_entity(entity, versioned, options.record_hash);
    let hash_stage = sql::hash_stage_name(entity);
    ltx.batch_execute(&sql::create_hash_stage(entity, kind))
        .await
        .map_err(on_local("create the hash stage"))?;
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(&sql::remote_hash_select(entity, tenant, kind, conversions)),
        &sql::copy_into_hash_stage(entity),
        "write the hash stage",
    )
    .await?;
    steps.done("copy remote hashes");
    if !keyed {
        check_remote_keys(ltx, entity, &hash_stage).await?;
        steps.done("check keys");
    }
    ltx.batch_execute(&sql::create_diff(entity, kind))
        .await
        .map_err(on_local("compare row versions"))?;
    steps.done("compare");
    let need: i64 = ltx
        .query_one(&sql::count_need(entity), &[])
        .await
        .map_err(on_local("count new and changed rows"))?
        .get(0);
    let stage = sql::stage_name(entity);
    let removal = if need as f64 > report.fetched as f64 * FULL_STAGE_FRACTION {
        Removal::NotIn(stage_every_row(ltx, rtx, entity, &remote_select, targets, report).await?)
    } else {
        fetch_by_keys(ltx, rtx, entity, tenant, versioned, conversions, &types).await?;
        ltx.batch_execute(&sql::index_keys(entity, &stage))
            .await
            .map_err(on_local("index the fetched rows"))?;
        for statement in [
            sql::skip_unreferenced_fetched(entity, targets),
            sql::skip_unreferenced_unchanged(entity, targets),
        ]
        .into_iter()
        .flatten()
        {
            report.skipped += skip(ltx, &statement, entity, report).await?;
        }
        Removal::Gone
    };
    steps.done(if report.strategy == "full" {
        "stage every row"
    } else {
        "fetch new and changed rows"
    });
    let collected = apply(ltx, entity, removal, options.guard, report, &mut steps).await?;
    drop_stages(ltx, entity).await?;
    Ok(collected)
}

/// Per-run choices that apply to every entity.
#[derive(Debug, Clone, Copy)]
struct EntityOptions {
    /// Both servers have `hash_record_extended` (14+).
    record_hash: bool,
    /// Compare every row (`download --full`).
    full: bool,
    guard: crate::config::DeleteGuard,
}

/// Full strategy: every remote row into the stage; returns the stage as the present set.
async fn stage_every_row(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    remote_select: &str,
    targets: &[Target<'_>],
    report: &mut EntityReport,
) -> Result<String, EntityError> {
    report.strategy = "full";
    let stage = sql::stage_name(entity);
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(remote_select),
        &sql::copy_into_stage(entity),
        "write the stage table",
    )
    .await?;
    check_keys(ltx, entity, &stage).await?;
    if let Some(statement) = sql::skip_unreferenced(entity, targets) {
        report.skipped += skip(ltx, &statement, entity, report).await?;
    }
    Ok(stage)
}

async fn drop_stages(ltx: &Transaction<'_>, entity: &EntitySpec) -> Result<(), EntityError> {
    ltx.batch_execute(&format!(
        "{}; {}",
        sql::drop_stage(entity),
        sql::drop_diff_tables(entity)
    ))
    .await
    .map_err(on_local("drop the stage tables"))?;
    Ok(())
}

/// Cold path: the local table is empty, so every remote row is new: copy straight into it
/// (its primary key refuses duplicates), then drop rows whose references are missing.
async fn sync_cold(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    remote_select: &str,
    targets: &[Target<'_>],
    report: &mut EntityReport,
) -> Result<(), EntityError> {
    // Load first, build the primary key after (PostgreSQL's advice for bulk loads: far cheaper
    // than maintaining it row by row), unless a foreign key depends on it. The savepoint
    // restores it if anything fails; duplicate or NULL remote keys fail the rebuild.
    let table = entity.table.quoted();
    let key = ltx
        .query_opt(sql::SELECT_PRIMARY_KEY, &[&table])
        .await
        .map_err(on_local("look up the local primary key"))?
        .filter(|row| !row.get::<_, bool>(2))
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
    if let Some((name, _)) = &key {
        ltx.batch_execute(&sql::drop_constraint(&entity.table, name))
            .await
            .map_err(on_local("set the primary key aside for the load"))?;
    }
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(remote_select),
        &sql::copy_into_table(entity),
        "write the local table",
    )
    .await?;
    if let Some((name, definition)) = &key {
        ltx.batch_execute(&sql::add_constraint(&entity.table, name, definition))
            .await
            .map_err(on_local(
                "build the primary key (duplicate or NULL remote keys?)",
            ))?;
    }
    if let Some(statement) = sql::delete_unreferenced(entity, targets) {
        report.skipped = skip(ltx, &statement, entity, report).await?;
    }
    report.inserted = report.fetched - report.skipped;
    let key_len = entity.key.len();
    let sample = ltx
        .query(&sql::sample_rows(entity, DETAIL_LIMIT), &[])
        .await
        .map_err(on_local("list the new rows"))?;
    report.new_rows = sample
        .iter()
        .map(|row| NewRow {
            key: key_of(row, key_len),
            name: row.get(key_len),
        })
        .collect();
    Ok(())
}

/// Refuses remote rows with a NULL in a key column.
async fn refuse_null_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    let null_keys: i64 = ltx
        .query_one(&sql::count_null_keys_in(entity, relation), &[])
        .await
        .map_err(on_local("check keys"))?
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
    Ok(())
}

/// Refuses NULL or duplicate keys among the remote rows (the unique index names a duplicate
/// key), and gives the planner statistics.
async fn check_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    refuse_null_keys(ltx, entity, relation).await?;
    ltx.batch_execute(&sql::index_keys(entity, relation))
        .await
        .map_err(on_local(
            "index the remote rows by key (duplicate remote keys?)",
        ))?;
    Ok(())
}

/// Refuses NULL or repeated keys among the remote keys of the diff path (no index needed).
async fn check_remote_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    refuse_null_keys(ltx, entity, relation).await?;
    let duplicate = ltx
        .query_opt(&sql::find_duplicate_key(entity, relation), &[])
        .await
        .map_err(on_local("check keys"))?;
    match duplicate {
        Some(row) => Err(EntityError::DuplicateKey {
            columns: entity
                .key
                .iter()
                .map(Ident::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            values: key_of(&row, entity.key.len()).join(", "),
        }),
        None => Ok(()),
    }
}

/// Runs a skip statement, recording the skipped keys; returns how many.
async fn skip(
    ltx: &Transaction<'_>,
    statement: &str,
    entity: &EntitySpec,
    report: &mut EntityReport,
) -> Result<u64, PgError> {
    let key_len = entity.key.len();
    for_each_row(ltx, statement, "skip rows with missing references", |row| {
        keep(&mut report.skipped_keys, key_of(&row, key_len));
    })
    .await
}

/// Diff path: fetches the remote rows of the needed keys, batch by batch, into the stage.
/// Values pass through as raw binary (the types were checked equal).
async fn fetch_by_keys(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    tenant: &TenantId,
    versioned: bool,
    conversions: &[crate::convert::Conversion],
    types: &[Type],
) -> Result<u64, PgError> {
    let key_types: Vec<&str> = entity
        .key
        .iter()
        .filter_map(|k| entity.columns.iter().position(|c| c.name == *k))
        .map(|i| types[i].name())
        .collect();
    let query = rtx
        .prepare(&sql::remote_select_by_keys(
            entity,
            tenant,
            versioned,
            conversions,
            &key_types,
        ))
        .await
        .map_err(on_remote("prepare the fetch of changed rows"))?;
    let take = sql::take_need_batch(entity, FETCH_BATCH);
    let mut fetched = 0;
    loop {
        let batch = ltx
            .query(&take, &[])
            .await
            .map_err(on_local("take needed keys"))?;
        if batch.is_empty() {
            return Ok(fetched);
        }
        let columns: Vec<Vec<String>> = (0..entity.key.len())
            .map(|i| batch.iter().map(|row| row.get::<_, String>(i)).collect())
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let rows = rtx
            .query_raw(&query, params)
            .await
            .map_err(on_remote("fetch changed rows"))?;
        let sink = ltx
            .copy_in::<_, Bytes>(&sql::copy_into_stage(entity))
            .await
            .map_err(on_local("write the stage table"))?;
        let writer = BinaryCopyInWriter::new(sink, types);
        let mut writer = pin!(writer);
        let mut rows = pin!(rows);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(on_remote("fetch changed rows"))?
        {
            let values: Vec<RawValue> = (0..types.len()).map(|i| row.get(i)).collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            writer
                .as_mut()
                .write(&refs)
                .await
                .map_err(on_local("write the stage table"))?;
            fetched += 1;
        }
        writer
            .as_mut()
            .finish()
            .await
            .map_err(on_local("write the stage table"))?;
    }
}

/// Which local rows are gone remotely.
enum Removal {
    /// Those whose key is not in this relation (every remote row was staged).
    NotIn(String),
    /// Those the diff marks gone.
    Gone,
}

/// Applies the stage: collects the rows gone remotely (checked by the mass-delete guard), then
/// updates changed rows and inserts new ones. Returns whether removals were collected.
async fn apply(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    removal: Removal,
    guard: crate::config::DeleteGuard,
    report: &mut EntityReport,
    steps: &mut Steps<'_>,
) -> Result<bool, EntityError> {
    let key_len = entity.key.len();
    let collect = match &removal {
        Removal::NotIn(present) => sql::collect_missing(entity, present),
        Removal::Gone => sql::collect_gone(entity),
    };
    if let Some(statement) = &collect {
        ltx.batch_execute(statement)
            .await
            .map_err(on_local("collect rows gone remotely"))?;
        check_mass_delete(ltx, entity, guard).await?;
        steps.done("collect rows gone remotely");
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
async fn remove_gone(
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

/// Streams binary COPY data from the remote query into a local table, chunk by chunk;
/// `target` names that table in errors.
async fn pipe(
    rtx: &Transaction<'_>,
    ltx: &Transaction<'_>,
    copy_out: &str,
    copy_in: &str,
    target: &'static str,
) -> Result<u64, PgError> {
    let stream = rtx
        .copy_out(copy_out)
        .await
        .map_err(on_remote("read the remote rows"))?;
    let sink = ltx
        .copy_in::<_, Bytes>(copy_in)
        .await
        .map_err(on_local(target))?;
    let mut stream = pin!(stream);
    let mut sink = pin!(sink);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(on_remote("read the remote rows"))?;
        sink.as_mut().feed(chunk).await.map_err(on_local(target))?;
    }
    sink.as_mut().finish().await.map_err(on_local(target))
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
        .map_err(on_local(context))?;
    let mut rows = pin!(rows);
    let mut count = 0;
    while let Some(row) = rows.try_next().await.map_err(on_local(context))? {
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
