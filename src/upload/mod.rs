//! The upload engine: moves meter readings from the local queue to the remote, store-and-
//! forward, with nothing lost and nothing doubled whatever fails and whenever.
//!
//! Per batch: claim up to `BATCH_SIZE` queued readings, oldest first, with `FOR UPDATE SKIP
//! LOCKED` (local transaction open); binary-COPY them into a remote temporary stage and insert
//! those whose dedupe key the remote does not have yet (`ON CONFLICT DO NOTHING` on a unique
//! index within the key, else an anti-join); commit the remote; then delete (or mark) exactly
//! the claimed rows and commit locally. A fault between any two steps leaves the rows queued,
//! and the resend is a no-op on the remote: at-least-once transport, exactly-once effect.
//!
//! A batch the remote refuses for its data (SQLSTATE classes 22 and 23) is split until the
//! refused readings are found; the rest are uploaded, and each refused one counts an attempt and
//! is quarantined after `MAX_ROW_FAILURES`, so one bad reading never blocks the queue. A run
//! drains batch after batch up to `MAX_BATCHES_PER_RUN`; retryable faults retry the batch with
//! exponential backoff up to `MAX_QUERY_RETRIES`, then end the run.

mod quarantine;
mod report;

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Statement;

pub use quarantine::{
    list as list_quarantined, release as release_quarantined, QuarantinedReading,
};
pub use report::{QueueStats, RejectedReading, UploadReport};

use crate::convert::{self, Direction};
use crate::error::chain;
use crate::logging::Steps;
use crate::pg::{on_local, on_remote, Backoff, Deadline, PgError, Pools, RawValue, TimedOut};
use crate::profile::{AfterUpload, Ident, Profile, ReadingsSpec, TenantId};
use crate::sql;

/// The advisory lock key that keeps two upload runs off one local database (`mtr-upld`).
const UPLOAD_LOCK: i64 = 0x6d74_722d_7570_6c64;

/// Opens a batch's local transaction. Its commit only removes readings the remote has already
/// committed: if a crash of the local server lost it, those readings would be resent and the
/// dedupe would make that a no-op. So it need not wait for its WAL flush (one fsync per batch
/// instead of two); the remote commit, the durable record, always waits.
const BEGIN_LOCAL: &str = "begin; set local synchronous_commit = off";

/// Rejected readings kept in a report.
const REJECTED_LIMIT: usize = 1000;

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
    Tenant(#[from] crate::download::TenantError),
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

/// Outcome of one batch.
#[derive(Debug, Default)]
struct BatchOutcome {
    /// The highest `order_by` key of the batch, when the claim returned it: the next claim of
    /// this worker starts past it.
    last_key: Option<Key>,
    claimed: u64,
    inserted: u64,
    removed: u64,
    rejected: Vec<RejectedReading>,
}

/// An `order_by` key, as the claim returned it.
type Key = Vec<RawValue>;

/// Set-up shared by every batch of a run.
struct Plan {
    conflict_target: Option<Vec<Ident>>,
    /// How the claims read the readings for the remote.
    outgoing: sql::Outgoing,
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
    let locked: bool = guard
        .query_one("select pg_try_advisory_lock($1)", &[&UPLOAD_LOCK])
        .await
        .map_err(on_local("take the upload lock"))?
        .get(0);
    if !locked {
        return Err(UploadError::AlreadyRunning);
    }
    let result = drain(pools, request, report, &guard).await;
    let _ = guard
        .execute("select pg_advisory_unlock($1)", &[&UPLOAD_LOCK])
        .await;
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
    refresh_statistics(local, readings, before.size).await;
    let tenant = match &readings.tenant_column {
        Some(_) => {
            Some(crate::download::resolve_tenant(local, request.tenant, request.profile).await?)
        }
        None => None,
    };
    let foreign = match (&readings.tenant_column, &tenant) {
        (Some(column), Some(tenant)) => {
            quarantine_other_tenants(local, readings, column, tenant).await?
        }
        _ => Vec::new(),
    };
    let plan = plan(pools, request, tenant).await?;
    // Workers drain concurrently, each with its own connections; SKIP LOCKED keeps their
    // batches apart. They share the batch budget; each stops at its own short batch, all stop
    // at the first error.
    let shared = Shared {
        tickets: AtomicU32::new(request.max_batches),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
    };
    shared
        .tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .quarantined_up_front(foreign);
    let workers = (0..request.workers.max(1)).map(|_| worker(pools, request, &plan, &shared));
    let results = futures_util::future::join_all(workers).await;
    let tally = shared
        .tally
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    report.batches = tally.batches;
    report.uploaded = tally.uploaded;
    report.deduplicated = tally.deduplicated;
    report.removed = tally.removed;
    report.rejected_count = tally.rejected_count;
    report.quarantined = tally.quarantined;
    report.rejected = tally.rejected;
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}

/// What the workers of a run share.
struct Shared {
    /// Batches left in this run's budget (`MAX_BATCHES_PER_RUN`).
    tickets: AtomicU32,
    /// Set when a worker failed: the others stop after their current batch.
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

/// The run's running totals.
#[derive(Debug, Default)]
struct Tally {
    batches: u64,
    uploaded: u64,
    deduplicated: u64,
    removed: u64,
    rejected_count: u64,
    quarantined: u64,
    rejected: Vec<RejectedReading>,
}

impl Tally {
    /// Readings of another tenant, quarantined before any batch: reported like refused ones.
    fn quarantined_up_front(&mut self, readings: Vec<RejectedReading>) {
        for rejected in readings {
            tracing::warn!(id = rejected.id, error = %rejected.error, "a reading of another tenant was quarantined, not sent");
            self.rejected_count += 1;
            self.quarantined += 1;
            if self.rejected.len() < REJECTED_LIMIT {
                self.rejected.push(rejected);
            }
        }
    }

    fn add(&mut self, outcome: BatchOutcome, duration: std::time::Duration) {
        self.batches += 1;
        self.uploaded += outcome.inserted;
        let accepted = outcome.claimed - outcome.rejected.len() as u64;
        self.deduplicated += accepted - outcome.inserted;
        self.removed += outcome.removed;
        self.rejected_count += outcome.rejected.len() as u64;
        for rejected in outcome.rejected {
            self.quarantined += u64::from(rejected.quarantined);
            tracing::warn!(id = rejected.id, quarantined = rejected.quarantined, error = %rejected.error, "the remote refused a reading");
            if self.rejected.len() < REJECTED_LIMIT {
                self.rejected.push(rejected);
            }
        }
        tracing::info!(
            batch = self.batches,
            claimed = outcome.claimed,
            uploaded = outcome.inserted,
            deduplicated = accepted - outcome.inserted,
            removed = outcome.removed,
            duration_ms = duration.as_millis() as u64,
            "batch uploaded"
        );
    }
}

/// One worker: batch after batch until the queue is drained, the budget spent, or an error
/// that retries did not cure.
async fn worker(
    pools: &Pools,
    request: UploadRequest<'_>,
    plan: &Plan,
    shared: &Shared,
) -> Result<(), UploadError> {
    let mut session: Option<Session> = None;
    // Where this worker's next claim starts: past its previous batch. Readings behind it (a
    // failed batch rolled back, or late arrivals with older keys) are picked up because the
    // worker only stops after a claim from the head of the queue comes back short.
    let mut after: Option<Key> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared
            .tickets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
            .is_err()
        {
            break;
        }
        let clock = Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            match batch(pools, request, plan, &mut session, after.as_ref()).await {
                Ok(outcome) => break outcome,
                Err(e) if attempt < request.retry.max_retries && e.is_retryable() => {
                    let delay = request.retry.delay(attempt);
                    tracing::warn!(attempt = attempt + 1, max = request.retry.max_retries, delay_ms = delay.as_millis() as u64, error = %e, "batch failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    after = None;
                }
                Err(e) => {
                    shared.stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        };
        let from_head = after.is_none();
        let Some(mut outcome) = outcome else {
            if from_head {
                break;
            }
            // Nothing past the position: look from the head once more (the empty claim does
            // not count against the batch budget).
            shared.tickets.fetch_add(1, Ordering::SeqCst);
            after = None;
            continue;
        };
        let short = outcome.claimed < u64::from(request.batch_size);
        after = outcome.last_key.take();
        shared
            .tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .add(outcome, clock.elapsed());
        if short {
            if from_head {
                // The queue looked empty to this worker; the others finish on their own short
                // claim from the head, so readings a failing batch returns to the queue are
                // still picked up.
                break;
            }
            after = None;
        }
    }
    Ok(())
}

/// A backlog at least this large has its table's statistics refreshed when they are stale.
const ANALYZE_MIN_QUEUE: i64 = 1_000;

/// Analyzes the readings table before a drain of a backlog when its statistics are missing or
/// stale (at least [`ANALYZE_MIN_QUEUE`] changes and more than a tenth of the rows it had when
/// last analyzed: autovacuum's own rule, which it applies within a minute or, when it is off,
/// never). Without statistics the planner guesses a handful of queued rows and claims each batch
/// by reading and sorting the whole queue instead of walking the queue index: a backlog loaded
/// in one go (after an outage, an import) then costs O(queue) per batch, measured at 7 ms
/// instead of 0.4 ms per 100-reading batch on 25,000 queued readings. A failure only costs
/// that speed, so it is logged and the run goes on.
async fn refresh_statistics(local: &tokio_postgres::Client, readings: &ReadingsSpec, queued: i64) {
    if queued < ANALYZE_MIN_QUEUE {
        return;
    }
    let row = match local
        .query_opt(sql::SELECT_TABLE_STATISTICS, &[&readings.table.quoted()])
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(table = %readings.table, error = %chain(&e), "cannot read the readings table's statistics");
            return;
        }
    };
    let (rows, changes, allowed): (f64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    let stale = rows < 0.0 || (changes >= ANALYZE_MIN_QUEUE && changes as f64 > rows / 10.0);
    if !stale {
        return;
    }
    if !allowed {
        tracing::debug!(table = %readings.table, "the readings table's statistics are stale, but only its owner may analyze it");
        return;
    }
    let clock = Instant::now();
    match local.batch_execute(&sql::analyze_readings(readings)).await {
        Ok(()) => tracing::info!(
            table = %readings.table,
            queued,
            duration_ms = clock.elapsed().as_millis() as u64,
            "analyzed the readings table (its statistics were missing or stale)"
        ),
        Err(e) => {
            tracing::warn!(table = %readings.table, error = %chain(&e), "cannot analyze the readings table; batches may be claimed slowly")
        }
    }
}

/// Quarantines the queued readings of another tenant (never sent), with the reason.
async fn quarantine_other_tenants(
    local: &tokio_postgres::Client,
    readings: &ReadingsSpec,
    column: &Ident,
    tenant: &TenantId,
) -> Result<Vec<RejectedReading>, UploadError> {
    let rows = local
        .query(
            &sql::quarantine_other_tenants(readings, column, tenant),
            &[],
        )
        .await
        .map_err(on_local("quarantine readings of another tenant"))?;
    Ok(rows
        .iter()
        .map(|row| RejectedReading {
            id: row.get(0),
            error: row.get(1),
            quarantined: true,
        })
        .collect())
}

/// Checks the readings columns on both sides (the type rule: nothing may change or be refused
/// on the way) and looks for a unique index to dedupe on.
async fn plan(
    pools: &Pools,
    request: UploadRequest<'_>,
    tenant: Option<TenantId>,
) -> Result<Plan, UploadError> {
    let readings = request.readings;
    let local = pools.local().await?;
    let remote = pools.remote_with_retry(request.connect).await?;
    let local_stmt = local
        .prepare(&sql::readings_select(readings, false))
        .await
        .map_err(on_local("read the local readings columns"))?;
    let remote_stmt = remote
        .prepare(&sql::readings_select(readings, true))
        .await
        .map_err(on_remote("read the remote readings columns"))?;
    let conversions = convert::plan(
        &readings.columns,
        remote_stmt.columns(),
        local_stmt.columns(),
        Direction::Upload,
    )
    .map_err(|detail| UploadError::TypeMismatch {
        table: readings.table.to_string(),
        remote: readings.remote_table.to_string(),
        detail,
    })?;
    let dedupe: Vec<&str> = readings.dedupe_key.iter().map(Ident::as_str).collect();
    let target: Option<Vec<String>> = remote
        .query_opt(
            sql::SELECT_DEDUPE_INDEX,
            &[&readings.remote_table.quoted(), &dedupe],
        )
        .await
        .map_err(on_remote("look up the remote unique indexes"))?
        .map(|row| row.get(0));
    let conflict_target = target.map(|names| {
        readings
            .dedupe_key
            .iter()
            .filter(|k| names.iter().any(|n| n == k.as_str()))
            .cloned()
            .collect()
    });
    tracing::debug!(
        on_conflict = conflict_target.is_some(),
        "upload dedupe strategy"
    );
    Ok(Plan {
        conflict_target,
        outgoing: sql::Outgoing {
            conversions,
            tenant,
        },
    })
}

/// The two connections of a run and its prepared statements. After any error a connection may
/// be inside a transaction, so the session is discarded, never returned to the pool. The same
/// when the run is cut short mid-batch (`RUN_TIMEOUT_SECONDS`, shutdown): the batch future is
/// dropped with its transactions open, and closing the connections makes both servers roll
/// them back at once, releasing the claimed readings.
struct Session {
    local: Option<deadpool_postgres::Object>,
    remote: Option<deadpool_postgres::Object>,
    /// A batch is under way on these connections (set for its whole length).
    in_flight: bool,
    claim: Statement,
    claim_and_remove: Statement,
    claim_and_remove_after: Statement,
    remove: Statement,
    insert_all: Statement,
    /// Types of the claim's columns: the local id, then the uploaded columns (also the
    /// remote stage's layout).
    types: Vec<Type>,
}

impl Session {
    async fn open(
        pools: &Pools,
        request: UploadRequest<'_>,
        plan: &Plan,
    ) -> Result<Self, UploadError> {
        let readings = request.readings;
        let local = pools.local().await?;
        let remote = pools.remote().await?;
        remote
            .batch_execute(&sql::create_upload_stage(readings))
            .await
            .map_err(on_remote("create the upload stage"))?;
        let claim = local
            .prepare(&sql::claim_batch(readings, &plan.outgoing))
            .await
            .map_err(on_local("prepare the claim"))?;
        let claim_and_remove = local
            .prepare(&sql::claim_and_remove(readings, &plan.outgoing))
            .await
            .map_err(on_local("prepare the claim"))?;
        let claim_and_remove_after = local
            .prepare(&sql::claim_and_remove_after(readings, &plan.outgoing))
            .await
            .map_err(on_local("prepare the claim"))?;
        let remove = match readings.after_upload {
            AfterUpload::Delete => sql::delete_uploaded(readings),
            AfterUpload::Mark => sql::mark_uploaded(readings),
        };
        let remove = local
            .prepare(&remove)
            .await
            .map_err(on_local("prepare the removal"))?;
        let insert_all = remote
            .prepare(&sql::insert_new_readings(
                readings,
                plan.conflict_target.as_deref(),
                false,
            ))
            .await
            .map_err(on_remote("prepare the insert"))?;
        let types = claim.columns().iter().map(|c| c.type_().clone()).collect();
        Ok(Self {
            local: Some(local),
            remote: Some(remote),
            in_flight: false,
            claim,
            claim_and_remove,
            claim_and_remove_after,
            remove,
            insert_all,
            types,
        })
    }

    fn discard(&mut self) {
        for object in [self.local.take(), self.remote.take()]
            .into_iter()
            .flatten()
        {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.in_flight {
            self.discard();
        }
    }
}

/// Uploads one batch with a fresh or reused session; a failed batch discards the session.
async fn batch(
    pools: &Pools,
    request: UploadRequest<'_>,
    plan: &Plan,
    session: &mut Option<Session>,
    after: Option<&Key>,
) -> Result<Option<BatchOutcome>, UploadError> {
    if session
        .as_ref()
        .is_none_or(|s| s.local.is_none() || s.remote.is_none())
    {
        *session = Some(Session::open(pools, request, plan).await?);
    }
    let Some(open) = session.as_mut() else {
        return Ok(None);
    };
    open.in_flight = true;
    let result = match (&open.local, &open.remote) {
        (Some(local), Some(remote)) => batch_on(local, remote, open, request, plan, after).await,
        _ => Ok(None),
    };
    open.in_flight = false;
    if result.is_err() {
        open.discard();
    }
    result
}

/// One batch on open connections: the direct path when a unique index guards the dedupe key,
/// the staged path otherwise or when the direct copy was refused. Either way the local removal
/// only takes effect with the local commit, never sent before the remote commit succeeded.
async fn batch_on(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    after: Option<&Key>,
) -> Result<Option<BatchOutcome>, UploadError> {
    if plan.conflict_target.is_some() {
        match direct_batch(local, remote, session, request, after).await? {
            Direct::Done(outcome) => return Ok(outcome),
            Direct::Refused => {}
        }
    }
    staged_batch(local, remote, session, request, plan, after).await
}

/// Outcome of the direct path.
enum Direct {
    Done(Option<BatchOutcome>),
    /// The remote refused the batch (a reading it already has, or bad data); both sides were
    /// rolled back.
    Refused,
}

/// Direct path, when a unique index guards the dedupe key: COPY the batch straight into the
/// remote readings table, which inserts many rows at a time, as one autocommitted statement
/// (its completion is the remote commit: one round trip fewer than begin ... commit). A batch holding a reading the
/// remote already has (a resend after a fault) violates the index and fails whole; it then
/// goes through the stage, where `ON CONFLICT DO NOTHING` skips those readings.
async fn direct_batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    after: Option<&Key>,
) -> Result<Direct, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let (begin, rows) = tokio::join!(
        local.batch_execute(BEGIN_LOCAL),
        claim_and_remove(local, session, request, after)
    );
    begin.map_err(on_local("begin the batch"))?;
    let rows = rows.map_err(on_local("claim queued readings"))?;
    let sent = send(remote, session, rows, request.readings, Destination::Table).await;
    steps.done("claim and copy");
    match sent {
        Ok((ids, _)) if ids.is_empty() => {
            local
                .batch_execute("commit")
                .await
                .map_err(on_local("end the batch"))?;
            Ok(Direct::Done(None))
        }
        Ok((ids, last_key)) => {
            // The COPY ran as a statement of its own: its completion was the remote commit.
            // The remote has the readings now; a fault from here on only causes a resend.
            local
                .batch_execute("commit")
                .await
                .map_err(on_local("commit the batch"))?;
            steps.done("local commit");
            let n = ids.len() as u64;
            Ok(Direct::Done(Some(BatchOutcome {
                last_key,
                claimed: n,
                inserted: n,
                removed: n,
                rejected: Vec::new(),
            })))
        }
        Err(e)
            if e.side() == "remote"
                && e.code()
                    .is_some_and(|c| c.code().starts_with("23") || c.code().starts_with("22")) =>
        {
            // The failed COPY rolled itself back on the remote.
            local
                .batch_execute("rollback")
                .await
                .map_err(on_local("roll back the batch"))?;
            tracing::debug!(error = %e, "direct copy refused; going through the stage");
            Ok(Direct::Refused)
        }
        Err(e) => Err(e.into()),
    }
}

/// The staged path: claim and remove the readings in one local statement, stream them into the
/// remote stage, insert what the remote lacks and commit the remote, then commit locally. If the
/// remote refuses the batch's data, the local transaction is rolled back and the batch goes the
/// careful way.
async fn staged_batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    after: Option<&Key>,
) -> Result<Option<BatchOutcome>, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let (begin, rows) = tokio::join!(
        local.batch_execute(BEGIN_LOCAL),
        claim_and_remove(local, session, request, after)
    );
    begin.map_err(on_local("begin the batch"))?;
    let rows = rows.map_err(on_local("claim queued readings"))?;
    let (ids, last_key) = send(remote, session, rows, request.readings, Destination::Stage).await?;
    steps.done("claim and send");
    if ids.is_empty() {
        let (l, r) = tokio::join!(
            local.batch_execute("commit"),
            remote.batch_execute("commit")
        );
        l.map_err(on_local("end the batch"))?;
        r.map_err(on_remote("end the batch"))?;
        return Ok(None);
    }
    let (inserted, commit) = tokio::join!(
        remote.execute(&session.insert_all, &[]),
        remote.batch_execute("commit")
    );
    match inserted {
        Ok(inserted) => {
            commit.map_err(on_remote("commit the batch"))?;
            steps.done("remote insert and commit");
            // The remote has the readings now; a fault from here on only causes a resend.
            local
                .batch_execute("commit")
                .await
                .map_err(on_local("commit the batch"))?;
            steps.done("local commit");
            Ok(Some(BatchOutcome {
                last_key,
                claimed: ids.len() as u64,
                inserted,
                removed: ids.len() as u64,
                rejected: Vec::new(),
            }))
        }
        // The pipelined commit rolled the remote back; undo the local removal too.
        Err(e) if is_data_error(&e) => {
            local
                .batch_execute("rollback")
                .await
                .map_err(on_local("roll back the refused batch"))?;
            careful_batch(local, remote, session, request, plan).await
        }
        Err(e) => Err(PgError::query("remote", "insert the readings", e).into()),
    }
}

/// The careful way for a batch the remote refused in part: claim with row locks, send, find the
/// refused readings by splitting the batch under savepoints, commit the good ones remotely, then
/// remove them locally and record an attempt on each refused one (quarantined after
/// `MAX_ROW_FAILURES`).
async fn careful_batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
) -> Result<Option<BatchOutcome>, UploadError> {
    let readings = request.readings;
    let limit = i64::from(request.batch_size);
    let (begin, rows) = tokio::join!(
        local.batch_execute(BEGIN_LOCAL),
        local.query_raw(&session.claim, [&limit as &(dyn ToSql + Sync)])
    );
    begin.map_err(on_local("begin the batch"))?;
    let rows = rows.map_err(on_local("claim queued readings"))?;
    let (ids, _) = send(remote, session, rows, readings, Destination::Stage).await?;
    let insert = sql::insert_new_readings(readings, plan.conflict_target.as_deref(), true);
    let (inserted, refused) = bisect(remote, &insert, ids.clone()).await?;
    remote
        .batch_execute("commit")
        .await
        .map_err(on_remote("commit the batch"))?;

    // The remote has the readings now; a fault from here on only causes a harmless resend.
    let refused_ids: Vec<i64> = refused.iter().map(|(id, _)| *id).collect();
    let mut rejected = Vec::with_capacity(refused.len());
    for (id, error) in refused {
        let quarantined: bool = local
            .query_one(
                &sql::record_failure(readings),
                &[&id, &error, &(request.max_row_failures as i32)],
            )
            .await
            .map_err(on_local("record a refused reading"))?
            .get(0);
        rejected.push(RejectedReading {
            id,
            error,
            quarantined,
        });
    }
    let params: [&(dyn ToSql + Sync); 2] = [&ids, &refused_ids];
    let (removed, commit) = tokio::join!(
        local.execute(&session.remove, &params),
        local.batch_execute("commit")
    );
    let removed = removed.map_err(on_local("remove uploaded readings"))?;
    commit.map_err(on_local("commit the batch"))?;
    Ok(Some(BatchOutcome {
        last_key: None,
        claimed: ids.len() as u64,
        inserted,
        removed,
        rejected,
    }))
}

/// Where `send` writes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// The remote temporary stage (local id and columns).
    Stage,
    /// The remote readings table itself (columns only).
    Table,
}

/// Streams the claimed rows to the remote as they arrive (into the stage inside a new remote
/// transaction, or straight into the table as one autocommitted COPY), values passed through
/// in binary; returns their local ids and the last row's `order_by` key.
async fn send(
    remote: &tokio_postgres::Client,
    session: &Session,
    rows: tokio_postgres::RowStream,
    readings: &ReadingsSpec,
    destination: Destination,
) -> Result<(Vec<i64>, Option<Key>), PgError> {
    let (stage, skip) = match destination {
        Destination::Stage => (sql::copy_into_upload_stage(readings), 0),
        Destination::Table => (sql::copy_into_remote_readings(readings), 1),
    };
    let sink = match destination {
        // The stage lives in a transaction, committed with the insert that follows.
        Destination::Stage => {
            let (begin, sink) = tokio::join!(
                remote.batch_execute("begin"),
                remote.copy_in::<_, Bytes>(&stage)
            );
            begin.map_err(on_remote("begin the batch"))?;
            sink
        }
        // Straight into the table: the COPY commits by itself.
        Destination::Table => remote.copy_in::<_, Bytes>(&stage).await,
    };
    let sink = sink.map_err(on_remote("send the readings"))?;
    let writer = BinaryCopyInWriter::new(sink, &session.types[skip..]);
    let mut writer = pin!(writer);
    let mut rows = pin!(rows);
    let mut ids = Vec::new();
    let mut last = None;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(on_local("claim queued readings"))?
    {
        ids.push(row.get::<_, i64>(0));
        let values: Vec<RawValue> = (skip..session.types.len()).map(|i| row.get(i)).collect();
        // The claims that remove return the `order_by` key after the uploaded columns.
        if row.len() > session.types.len() {
            last = Some(row);
        }
        let refs: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        writer
            .as_mut()
            .write(&refs)
            .await
            .map_err(on_remote("send the readings"))?;
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(on_remote("send the readings"))?;
    let key = last.map(|row| {
        (session.types.len()..row.len())
            .map(|i| row.get::<_, RawValue>(i))
            .collect()
    });
    Ok((ids, key))
}

/// Claims and removes one batch, from the head of the queue or past `after`.
async fn claim_and_remove(
    local: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    after: Option<&Key>,
) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
    let limit = i64::from(request.batch_size);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    match after {
        Some(key) => {
            params.extend(key.iter().map(|v| v as &(dyn ToSql + Sync)));
            local
                .query_raw(&session.claim_and_remove_after, params)
                .await
        }
        None => local.query_raw(&session.claim_and_remove, params).await,
    }
}

/// Whether the remote refused the data itself (classes 22 data exception, 23 integrity
/// constraint violation), as opposed to the connection or the server.
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23"))
}

/// Splits the batch's ids until the refused readings are isolated, each part under a
/// savepoint so the good rows commit. Returns the inserted count and the refused ids with the
/// server's message.
async fn bisect(
    remote: &tokio_postgres::Client,
    insert: &str,
    ids: Vec<i64>,
) -> Result<(u64, Vec<(i64, String)>), PgError> {
    let mut inserted = 0;
    let mut refused = Vec::new();
    let mut pending = vec![ids];
    while let Some(part) = pending.pop() {
        remote
            .batch_execute("savepoint meter_sync_part")
            .await
            .map_err(on_remote("savepoint"))?;
        match remote.execute(insert, &[&part]).await {
            Ok(n) => {
                inserted += n;
                remote
                    .batch_execute("release savepoint meter_sync_part")
                    .await
                    .map_err(on_remote("release savepoint"))?;
            }
            Err(e) if is_data_error(&e) => {
                remote
                    .batch_execute("rollback to savepoint meter_sync_part")
                    .await
                    .map_err(on_remote("roll back a refused part"))?;
                if part.len() == 1 {
                    refused.push((part[0], crate::pg::describe(&e)));
                } else {
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right.to_vec());
                    pending.push(left.to_vec());
                }
            }
            Err(e) => return Err(PgError::query("remote", "insert the readings", e)),
        }
    }
    Ok((inserted, refused))
}

/// The queue of a local readings table.
pub async fn queue_stats(
    client: &impl tokio_postgres::GenericClient,
    readings: &ReadingsSpec,
) -> Result<QueueStats, PgError> {
    let row = client
        .query_one(&sql::queue_stats(readings), &[])
        .await
        .map_err(on_local("measure the upload queue"))?;
    Ok(QueueStats {
        size: row.get(0),
        quarantined: row.get(1),
        oldest_age_seconds: row.get(2),
    })
}
