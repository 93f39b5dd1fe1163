//! The upload engine: moves meter readings from the local queue to the remote, store-and-
//! forward, with nothing lost and nothing doubled whatever fails and whenever.
//!
//! Per batch: claim up to `BATCH_SIZE` queued readings, oldest first, with `FOR UPDATE SKIP
//! LOCKED` (local transaction open); binary-COPY them to the remote; commit the remote; then
//! delete (or mark) exactly the claimed rows and commit locally. A fault between any two steps
//! leaves the rows queued, and the resend is a no-op on the remote: at-least-once transport,
//! exactly-once effect. What makes the resend a no-op: a unique index on the remote within the
//! dedupe key (the COPY goes straight into the table; a resend conflicts and goes through a
//! stage with `ON CONFLICT DO NOTHING`); else the upload ledger (`ledger`: each batch recorded
//! locally before its remote commit, so only a recorded batch's readings can be on the remote
//! already, and only those go through the stage and an anti-join on the dedupe key); or, with
//! `resend_check = "every_batch"`, the stage and the anti-join for every batch.
//!
//! A batch the remote refuses for its data (SQLSTATE classes 22 and 23) is split until the
//! refused readings are found; the rest are uploaded, and each refused one counts an attempt and
//! is quarantined after `MAX_ROW_FAILURES`, so one bad reading never blocks the queue. A run
//! drains batch after batch up to `MAX_BATCHES_PER_RUN`; retryable faults retry the batch with
//! exponential backoff up to `MAX_QUERY_RETRIES`, then end the run.

//!
//! Rooms: `plan` (the checks and choices made once per run), `workers` (the batch loop of each
//! worker and the run's tally), `claim` (a worker's connections, prepared claims and the stream
//! of claimed rows to the remote), `direct`, `recorded` and `staged` (the three ways a batch
//! reaches the remote), `ledger` (the record of batches whose send may be uncertain),
//! `refused` (finding and recording readings the remote refuses), `quarantine` (listing and
//! releasing them), `report`.

mod claim;
mod direct;
mod dry_run;
mod ledger;
mod plan;
mod quarantine;
mod recorded;
mod refused;
mod report;
mod staged;
mod workers;

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Mutex;
use std::time::Instant;

pub use dry_run::dry_run;
pub use plan::queue_stats;
pub use quarantine::{
    list as list_quarantined, release as release_quarantined, QuarantinedReading,
};
pub use report::{QueueStats, ReadingId, RejectedReading, UploadReport};

use crate::data::pg::{on_local, Backoff, PgError, Pools};
use crate::data::runlock;
use crate::data::sql;
use crate::engine::{Deadline, TimedOut};
use crate::error::chain;
use crate::profile::{AfterUpload, Profile, ReadingsSpec, ResendCheck, TenantId};

/// What to upload and how.
#[derive(Debug, Clone, Copy)]
pub struct UploadRequest<'a> {
    pub readings: &'a ReadingsSpec,
    /// `TENANT_ID`, if configured; else, when the readings carry a `tenant_column`, the
    /// profile's local tenant table says (as for the download).
    pub tenant: Option<&'a TenantId>,
    pub profile: &'a Profile,
    pub batch_size: u32,
    pub max_batches: u32,
    /// Batches in flight at once (`UPLOAD_WORKERS`), each on its own pair of connections.
    pub workers: u32,
    /// Connection retries.
    pub connect: Backoff,
    /// Retries of a failed batch (retryable errors only).
    pub retry: Backoff,
    pub max_row_failures: u32,
    pub retention_days: u32,
    /// When the run is cut short (`RUN_TIMEOUT_SECONDS`); `None`: no limit.
    pub deadline: Option<Deadline>,
}

/// Why a batch or the run stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("another upload is running on this local database")]
    AlreadyRunning,
    #[error("readings {table} -> remote {remote}: column types could change or refuse values on the way, so nothing was sent: {detail}. Align the tables or the profile")]
    TypeMismatch {
        table: String,
        remote: String,
        detail: String,
    },
    #[error(transparent)]
    Tenant(#[from] crate::data::tenant::TenantError),
    #[error(transparent)]
    Database(#[from] PgError),
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
}

impl UploadError {
    fn is_retryable(&self) -> bool {
        matches!(self, UploadError::Database(e) if e.is_retryable())
    }
}

/// Runs one upload (draining the queue up to `max_batches`). Recording the report is the
/// caller's job (`record`).
pub async fn run(pools: &Pools, request: UploadRequest<'_>) -> UploadReport {
    let clock = Instant::now();
    let mut report = UploadReport {
        started_at: chrono::Utc::now(),
        duration_ms: 0,
        uploaded: 0,
        deduplicated: 0,
        removed: 0,
        batches: 0,
        rejected: Vec::new(),
        rejected_count: 0,
        quarantined: 0,
        purged: 0,
        queue_before: None,
        queue_after: None,
        error: None,
    };
    let outcome =
        Deadline::within(request.deadline, run_batches(pools, request, &mut report)).await;
    if let Err(e) = outcome {
        let message = chain(&e);
        tracing::error!(error = %message, uploaded = report.uploaded, "upload stopped; the remaining readings stay queued");
        report.error = Some(message);
    }
    if let Ok(client) = pools.local().await {
        report.queue_after = queue_stats(&**client, request.readings).await.ok();
    }
    report.duration_ms = clock.elapsed().as_millis() as u64;
    report
}

async fn run_batches(
    pools: &Pools,
    request: UploadRequest<'_>,
    report: &mut UploadReport,
) -> Result<(), UploadError> {
    let readings = request.readings;
    // One run at a time per local database, held on a connection of its own for the run,
    // taken out of the pool: if the run is cut short (RUN_TIMEOUT_SECONDS, shutdown), the
    // connection closes with it and the session lock is released, instead of going back to
    // the pool still holding the lock.
    let guard = deadpool_postgres::Object::take(pools.local_with_retry(request.connect).await?);
    if !runlock::try_upload_lock(&*guard).await? {
        return Err(UploadError::AlreadyRunning);
    }
    let result = drain(pools, request, report, &guard).await;
    let _ = runlock::unlock_upload(&*guard).await;
    if readings.after_upload == AfterUpload::Mark && result.is_ok() {
        report.purged = guard
            .execute(
                &sql::purge_synchronized(readings),
                &[&(request.retention_days as i32)],
            )
            .await
            .map_err(on_local("purge synchronized readings"))?;
    }
    result
}

async fn drain(
    pools: &Pools,
    request: UploadRequest<'_>,
    report: &mut UploadReport,
    local: &tokio_postgres::Client,
) -> Result<(), UploadError> {
    let readings = request.readings;
    let before = queue_stats(local, readings).await?;
    report.queue_before = Some(before);
    tracing::info!(
        queue_size = before.size,
        quarantined = before.quarantined,
        oldest_age_seconds = before.oldest_age_seconds,
        "upload started"
    );
    if before.size == 0 {
        return Ok(());
    }
    plan::refresh_statistics(local, readings, before.size).await;
    let tenant = match &readings.tenant_column {
        Some(_) => {
            Some(crate::data::tenant::resolve(local, request.tenant, request.profile).await?)
        }
        None => None,
    };
    let foreign = match (&readings.tenant_column, &tenant) {
        (Some(column), Some(tenant)) => {
            plan::quarantine_other_tenants(local, readings, column, tenant).await?
        }
        _ => Vec::new(),
    };
    let mut plan = plan::plan(pools, request, tenant).await?;
    let recorded =
        plan.conflict_target.is_none() && readings.resend_check == ResendCheck::Uncertain;
    plan.ledger =
        ledger::Ledger::open(pools, local, readings, recorded, request.batch_size).await?;
    let unfit = plan::quarantine_unfit(local, readings, &plan).await?;
    // Workers drain concurrently, each with its own connections; SKIP LOCKED keeps their
    // batches apart. They share the batch budget; each stops at its own short batch, all stop
    // at the first error.
    let shared = workers::Shared {
        tickets: AtomicU32::new(request.max_batches),
        stop: AtomicBool::new(false),
        uncertain: AtomicBool::new(false),
        tally: Mutex::new(workers::Tally::default()),
    };
    shared
        .tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .quarantined_up_front(foreign.into_iter().chain(unfit).collect());
    // The batches whose earlier send is uncertain first: until they are settled, another
    // claim could take their readings.
    let results = match workers::settle_records(pools, request, &plan, &shared).await {
        Ok(true) => {
            let workers = (0..request.workers.max(1))
                .map(|_| workers::worker(pools, request, &plan, &shared));
            futures_util::future::join_all(workers).await
        }
        Ok(false) => Vec::new(),
        Err(e) => vec![Err(e)],
    };
    let tally = shared
        .tally
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tally.fill(report);
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}
