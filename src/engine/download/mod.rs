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

//!
//! Rooms: `attempt` (one try at the run: the two transactions, both passes), `entity` (one
//! entity's first pass and the choice of strategy), `cold`, `diff` and `full` (the three
//! strategies), `apply` (the collected removals, updates and inserts, the mass-delete guard),
//! `incremental` (rows written since the last run, on either side), `rows` (streaming helpers
//! and key checks), `columns` (the type rule on an entity's columns),
//! `report`.

mod apply;
mod attempt;
mod cold;
mod columns;
mod diff;
mod dry_run;
mod entity;
mod full;
mod incremental;
mod report;
mod rows;

use std::time::Instant;

pub use dry_run::{dry_run, PartCheck};
pub use report::{ChangedRow, DownloadReport, EntityReport, NewRow, Strategy, DETAIL_LIMIT};

use crate::data::pg::{Backoff, PgError, Pools};
use crate::engine::{Deadline, TimedOut};
use crate::error::chain;
use crate::profile::{EntitySpec, Profile, TenantId};

/// Why one entity failed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    #[error("local table {table} does not exist; run `meter-sync migrate`")]
    LocalTableMissing { table: String },
    #[error("local table {table} lacks {columns}: run `meter-sync migrate`")]
    LocalColumnsMissing { table: String, columns: String },
    #[error("{table}: column types could change or refuse values on the way, so nothing of {table} was applied: {detail}. Align the tables or the profile")]
    TypeMismatch { table: String, detail: String },
    #[error("{table}: the remote row with key ({key})=({values}) has {column} = {value}, which the local {target} cannot hold (convert = \"checked\"), so nothing of {table} was applied. Correct the remote row or widen the local column")]
    DoesNotFit {
        table: String,
        key: String,
        values: String,
        column: String,
        value: String,
        target: String,
    },
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
pub(super) enum RunError {
    #[error(transparent)]
    Tenant(#[from] crate::data::tenant::TenantError),
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
        match attempt::attempt(pools, request, selected, report).await? {
            attempt::Attempt::Committed => return Ok(()),
            attempt::Attempt::Again => {
                for (spec, entity) in selected.iter().zip(&mut report.entities) {
                    if entity.error.is_none() {
                        *entity = EntityReport::new(spec);
                    }
                }
            }
        }
    }
}
