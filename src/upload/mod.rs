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
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Transaction;

pub use quarantine::{
    list as list_quarantined, release as release_quarantined, QuarantinedReading,
};
pub use report::{QueueStats, RejectedReading, UploadReport};

use crate::cli::chain;
use crate::pg::{Backoff, PgError, Pools};
use crate::profile::{AfterUpload, Ident, ReadingsSpec};
use crate::sql;
use crate::synclog::{self, LogEntry};

/// The advisory lock key that keeps two upload runs off one local database (`mtr-upld`).
const UPLOAD_LOCK: i64 = 0x6d74_722d_7570_6c64;

/// Rejected readings kept in a report.
const REJECTED_LIMIT: usize = 1000;

/// What to upload and how.
#[derive(Debug, Clone, Copy)]
pub struct UploadRequest<'a> {
    pub readings: &'a ReadingsSpec,
    pub batch_size: u32,
    pub max_batches: u32,
    /// Connection retries.
    pub connect: Backoff,
    /// Retries of a failed batch (retryable errors only).
    pub retry: Backoff,
    pub max_row_failures: u32,
    pub retention_days: u32,
}

/// Why a batch or the run stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("another upload is running on this local database")]
    AlreadyRunning,
    #[error("remote and local readings columns differ ({0}); align the tables or the profile")]
    TypeMismatch(String),
    #[error(transparent)]
    Database(#[from] PgError),
}

impl UploadError {
    fn is_retryable(&self) -> bool {
        matches!(self, UploadError::Database(e) if e.is_retryable())
    }
}

/// Outcome of one batch.
#[derive(Debug, Default)]
struct BatchOutcome {
    claimed: u64,
    inserted: u64,
    removed: u64,
    rejected: Vec<RejectedReading>,
}

/// Set-up shared by every batch of a run.
struct Plan {
    conflict_target: Option<Vec<Ident>>,
}

fn local_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query("local", context, e)
}

fn remote_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query("remote", context, e)
}

/// Runs one upload (draining the queue up to `max_batches`) and records it in `sync_logs`.
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
    if let Err(e) = run_batches(pools, request, &mut report).await {
        let message = chain(&e);
        tracing::error!(error = %message, uploaded = report.uploaded, "upload stopped; the remaining readings stay queued");
        report.error = Some(message);
    }
    if let Ok(client) = pools.local().await {
        report.queue_after = queue_stats(&**client, request.readings).await.ok();
    }
    report.duration_ms = clock.elapsed().as_millis() as u64;
    record(pools, &report).await;
    tracing::info!(
        uploaded = report.uploaded,
        deduplicated = report.deduplicated,
        removed = report.removed,
        rejected = report.rejected_count,
        quarantined = report.quarantined,
        batches = report.batches,
        queue_after = report.queue_after.map(|q| q.size),
        duration_ms = report.duration_ms,
        "upload finished"
    );
    report
}

async fn run_batches(
    pools: &Pools,
    request: UploadRequest<'_>,
    report: &mut UploadReport,
) -> Result<(), UploadError> {
    let readings = request.readings;
    // One run at a time per local database, held on a connection of its own for the run.
    let guard = request
        .connect
        .retry(
            "connect to the local database",
            PgError::is_retryable,
            || pools.local(),
        )
        .await?;
    let locked: bool = guard
        .query_one("select pg_try_advisory_lock($1)", &[&UPLOAD_LOCK])
        .await
        .map_err(local_err("take the upload lock"))?
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
            .map_err(local_err("purge synchronized readings"))?;
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
    let plan = plan(pools, request).await?;
    for _ in 0..request.max_batches {
        let clock = Instant::now();
        let outcome = request
            .retry
            .retry("upload a batch", UploadError::is_retryable, || {
                batch(pools, request, &plan)
            })
            .await?;
        let Some(outcome) = outcome else { break };
        report.batches += 1;
        report.uploaded += outcome.inserted;
        let accepted = outcome.claimed - outcome.rejected.len() as u64;
        report.deduplicated += accepted - outcome.inserted;
        report.removed += outcome.removed;
        report.rejected_count += outcome.rejected.len() as u64;
        for rejected in outcome.rejected {
            report.quarantined += u64::from(rejected.quarantined);
            tracing::warn!(id = rejected.id, quarantined = rejected.quarantined, error = %rejected.error, "the remote refused a reading");
            if report.rejected.len() < REJECTED_LIMIT {
                report.rejected.push(rejected);
            }
        }
        tracing::info!(
            batch = report.batches,
            claimed = outcome.claimed,
            uploaded = outcome.inserted,
            deduplicated = accepted - outcome.inserted,
            removed = outcome.removed,
            duration_ms = clock.elapsed().as_millis() as u64,
            "batch uploaded"
        );
        if outcome.claimed < u64::from(request.batch_size) {
            break;
        }
    }
    Ok(())
}

/// Checks the readings columns on both sides and looks for a unique index to dedupe on.
async fn plan(pools: &Pools, request: UploadRequest<'_>) -> Result<Plan, UploadError> {
    let readings = request.readings;
    let local = pools.local().await?;
    let remote = request
        .connect
        .retry(
            "connect to the remote database",
            PgError::is_retryable,
            || pools.remote(),
        )
        .await?;
    let local_stmt = local
        .prepare(&sql::readings_select(readings, false))
        .await
        .map_err(local_err("read the local readings columns"))?;
    let remote_stmt = remote
        .prepare(&sql::readings_select(readings, true))
        .await
        .map_err(remote_err("read the remote readings columns"))?;
    let mismatches: Vec<String> = remote_stmt
        .columns()
        .iter()
        .zip(local_stmt.columns())
        .filter(|(r, l)| r.type_() != l.type_())
        .map(|(r, l)| format!("{}: remote {}, local {}", l.name(), r.type_(), l.type_()))
        .collect();
    if !mismatches.is_empty() {
        return Err(UploadError::TypeMismatch(mismatches.join("; ")));
    }
    let dedupe: Vec<&str> = readings.dedupe_key.iter().map(Ident::as_str).collect();
    let target: Option<Vec<String>> = remote
        .query_opt(
            sql::SELECT_DEDUPE_INDEX,
            &[&readings.remote_table.quoted(), &dedupe],
        )
        .await
        .map_err(remote_err("look up the remote unique indexes"))?
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
    Ok(Plan { conflict_target })
}

/// Uploads one batch; `None` when the queue is empty.
async fn batch(
    pools: &Pools,
    request: UploadRequest<'_>,
    plan: &Plan,
) -> Result<Option<BatchOutcome>, UploadError> {
    let readings = request.readings;
    let mut local = pools.local().await?;
    let mut remote = pools.remote().await?;
    let local_client: &mut tokio_postgres::Client = &mut local;
    local_client
        .batch_execute(sql::CREATE_CLAIM)
        .await
        .map_err(local_err("create the claim table"))?;
    let ltx = local_client
        .transaction()
        .await
        .map_err(local_err("begin the batch"))?;
    let claimed = ltx
        .execute(&sql::claim(readings), &[&i64::from(request.batch_size)])
        .await
        .map_err(local_err("claim queued readings"))?;
    if claimed == 0 {
        ltx.commit().await.map_err(local_err("end the batch"))?;
        return Ok(None);
    }
    let ids: Vec<i64> = ltx
        .query(sql::SELECT_CLAIMED, &[])
        .await
        .map_err(local_err("read the claimed ids"))?
        .iter()
        .map(|r| r.get(0))
        .collect();

    let remote_client: &mut tokio_postgres::Client = &mut remote;
    remote_client
        .batch_execute(&sql::create_upload_stage(readings))
        .await
        .map_err(remote_err("create the upload stage"))?;
    let rtx = remote_client
        .transaction()
        .await
        .map_err(remote_err("begin the batch"))?;
    pipe(&ltx, &rtx, readings).await?;
    let insert = sql::insert_new_readings(readings, plan.conflict_target.as_deref());
    let (inserted, refused) = insert_or_bisect(&rtx, &insert, ids).await?;
    rtx.commit().await.map_err(remote_err("commit the batch"))?;

    // The remote has the readings now; a fault from here on only causes a harmless resend.
    let refused_ids: Vec<i64> = refused.iter().map(|(id, _)| *id).collect();
    let remove = match readings.after_upload {
        AfterUpload::Delete => sql::delete_claimed(readings),
        AfterUpload::Mark => sql::mark_claimed(readings),
    };
    let removed = ltx
        .execute(&remove, &[&refused_ids])
        .await
        .map_err(local_err("remove uploaded readings"))?;
    let mut rejected = Vec::with_capacity(refused.len());
    for (id, error) in refused {
        let quarantined: bool = ltx
            .query_one(
                &sql::record_failure(readings),
                &[&id, &error, &(request.max_row_failures as i32)],
            )
            .await
            .map_err(local_err("record a refused reading"))?
            .get(0);
        rejected.push(RejectedReading {
            id,
            error,
            quarantined,
        });
    }
    ltx.commit().await.map_err(local_err("commit the batch"))?;
    Ok(Some(BatchOutcome {
        claimed,
        inserted,
        removed,
        rejected,
    }))
}

/// Streams the claimed rows from the local database into the remote stage.
async fn pipe(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    readings: &ReadingsSpec,
) -> Result<u64, PgError> {
    let stream = ltx
        .copy_out(&sql::copy_claimed_out(readings))
        .await
        .map_err(local_err("read the claimed readings"))?;
    let sink = rtx
        .copy_in::<_, Bytes>(&sql::copy_into_upload_stage(readings))
        .await
        .map_err(remote_err("send the readings"))?;
    let mut stream = pin!(stream);
    let mut sink = pin!(sink);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(local_err("read the claimed readings"))?;
        sink.as_mut()
            .feed(chunk)
            .await
            .map_err(remote_err("send the readings"))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(remote_err("send the readings"))
}

/// Whether the remote refused the data itself (classes 22 data exception, 23 integrity
/// constraint violation), as opposed to the connection or the server.
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23"))
}

/// Inserts the staged rows; if the remote refuses the data, splits the ids until the refused
/// readings are isolated. Every attempt runs under a savepoint, so the good rows commit.
/// Returns the inserted count and the refused ids with the server's message.
async fn insert_or_bisect(
    rtx: &Transaction<'_>,
    insert: &str,
    ids: Vec<i64>,
) -> Result<(u64, Vec<(i64, String)>), PgError> {
    let mut inserted = 0;
    let mut refused = Vec::new();
    let mut pending = vec![ids];
    while let Some(part) = pending.pop() {
        rtx.batch_execute("savepoint meter_sync_part")
            .await
            .map_err(remote_err("savepoint"))?;
        match rtx.execute(insert, &[&part]).await {
            Ok(n) => {
                inserted += n;
                rtx.batch_execute("release savepoint meter_sync_part")
                    .await
                    .map_err(remote_err("release savepoint"))?;
            }
            Err(e) if is_data_error(&e) => {
                rtx.batch_execute("rollback to savepoint meter_sync_part")
                    .await
                    .map_err(remote_err("roll back a refused part"))?;
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
        .map_err(local_err("measure the upload queue"))?;
    Ok(QueueStats {
        size: row.get(0),
        quarantined: row.get(1),
        oldest_age_seconds: row.get(2),
    })
}

/// One `sync_logs` row per run; a failure to record is logged, not fatal.
async fn record(pools: &Pools, report: &UploadReport) {
    let entry = LogEntry {
        sync_type: "upload",
        entity: None,
        success: report.success(),
        records_processed: (report.uploaded + report.deduplicated + report.rejected_count) as i64,
        inserted: report.uploaded as i64,
        updated: 0,
        deleted: report.removed as i64,
        skipped: report.rejected_count as i64,
        error_message: report.error.clone(),
        duration_ms: report.duration_ms as i64,
        details: Some(serde_json::json!({
            "deduplicated": report.deduplicated,
            "quarantined": report.quarantined,
            "batches": report.batches,
            "purged": report.purged,
            "queue_before": report.queue_before,
            "queue_after": report.queue_after,
            "rejected": report.rejected.iter().take(100).collect::<Vec<_>>(),
        })),
    };
    let result = async {
        let client = pools.local().await?;
        synclog::record(&**client, &[entry]).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the upload in sync_logs");
    }
}
