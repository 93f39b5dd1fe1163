//! The batch loop: each worker claims batch after batch on its own pair of connections until the
//! queue is drained, the run's batch budget is spent, or an error retries did not cure; the
//! run's totals are tallied as batches end.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::claim::{Claim, Session};
use super::direct::{self, Direct};
use super::ledger::Entry;
use super::plan::Plan;
use super::recorded::{self, Recorded};
use super::{staged, RejectedReading, UploadError, UploadReport, UploadRequest};
use crate::data::pg::{Pools, RawValue};

/// Rejected readings kept in a report.
const REJECTED_LIMIT: usize = 1000;

/// Outcome of one batch.
#[derive(Debug, Default)]
pub(super) struct BatchOutcome {
    /// The highest `order_by` key of the batch, when the claim returned it: the next claim of
    /// this worker starts past it.
    pub(super) last_key: Option<Key>,
    pub(super) claimed: u64,
    pub(super) inserted: u64,
    pub(super) removed: u64,
    pub(super) rejected: Vec<RejectedReading>,
}

impl BatchOutcome {
    /// A batch COPYed straight into the remote table: every claimed reading inserted and
    /// removed.
    pub(super) fn copied(readings: usize, last_key: Option<Key>) -> Self {
        let n = readings as u64;
        Self {
            last_key,
            claimed: n,
            inserted: n,
            removed: n,
            rejected: Vec::new(),
        }
    }
}

/// An `order_by` key, as the claim returned it.
pub(super) type Key = Vec<RawValue>;

/// What the workers of a run share.
pub(super) struct Shared {
    /// Batches left in this run's budget (`MAX_BATCHES_PER_RUN`).
    pub(super) tickets: AtomicU32,
    /// Set when a worker failed: the others stop after their current batch.
    pub(super) stop: AtomicBool,
    /// Set when a batch failed with the ledger on: its readings may be on the remote and back
    /// in the queue, so the run's further batches go through the anti-join.
    pub(super) uncertain: AtomicBool,
    pub(super) tally: Mutex<Tally>,
}

/// The run's running totals.
#[derive(Debug, Default)]
pub(super) struct Tally {
    batches: u64,
    uploaded: u64,
    deduplicated: u64,
    removed: u64,
    rejected_count: u64,
    quarantined: u64,
    rejected: Vec<RejectedReading>,
}

impl Tally {
    /// The run's totals into its report.
    pub(super) fn fill(self, report: &mut UploadReport) {
        report.batches = self.batches;
        report.uploaded = self.uploaded;
        report.deduplicated = self.deduplicated;
        report.removed = self.removed;
        report.rejected_count = self.rejected_count;
        report.quarantined = self.quarantined;
        report.rejected = self.rejected;
    }

    /// Readings of another tenant, quarantined before any batch: reported like refused ones.
    pub(super) fn quarantined_up_front(&mut self, readings: Vec<RejectedReading>) {
        for rejected in readings {
            tracing::warn!(id = %rejected.id, error = %rejected.error, "a reading was quarantined before the upload, not sent");
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
            tracing::warn!(id = %rejected.id, quarantined = rejected.quarantined, error = %rejected.error, "the remote refused a reading");
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
pub(super) async fn worker(
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
            match batch(
                pools,
                request,
                plan,
                shared,
                &mut session,
                Claim::Next(after.as_ref()),
            )
            .await
            {
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

/// Uploads one batch with a fresh or reused session; a failed batch discards the session.
pub(super) async fn batch(
    pools: &Pools,
    request: UploadRequest<'_>,
    plan: &Plan,
    shared: &Shared,
    session: &mut Option<Session>,
    claim: Claim<'_>,
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
        (Some(local), Some(remote)) => {
            batch_on(local, remote, open, request, plan, shared, claim).await
        }
        _ => Ok(None),
    };
    open.in_flight = false;
    if result.is_err() {
        // Before the connections close and the claimed readings go back to the queue.
        if plan.ledger.is_some() {
            shared.uncertain.store(true, Ordering::SeqCst);
        }
        open.discard();
    }
    result
}

/// One batch on open connections: the direct path when a unique index guards the dedupe key,
/// the recorded path with the upload ledger, the staged path otherwise, for a ledger record's
/// readings, or when the others were refused. Either way the local removal only takes effect
/// with the local commit, never sent before the remote commit succeeded.
async fn batch_on(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    shared: &Shared,
    claim: Claim<'_>,
) -> Result<Option<BatchOutcome>, UploadError> {
    let after = match claim {
        Claim::Record { id, .. } => {
            return staged::batch(
                local,
                remote,
                session,
                request,
                plan,
                claim,
                Entry::Existing(id),
            )
            .await
        }
        Claim::Next(after) => after,
    };
    if plan.conflict_target.is_some() {
        match direct::batch(local, remote, session, request, after).await? {
            Direct::Done(outcome) => return Ok(outcome),
            Direct::Refused => {}
        }
    }
    let entry = match &plan.ledger {
        Some(ledger) => {
            if !shared.uncertain.load(Ordering::SeqCst) {
                match recorded::batch(
                    local,
                    remote,
                    session,
                    request,
                    ledger,
                    &shared.uncertain,
                    after,
                )
                .await?
                {
                    Recorded::Done(outcome) => return Ok(outcome),
                    Recorded::Refused | Recorded::Uncertain => {}
                }
            }
            Entry::New
        }
        None => Entry::Unrecorded,
    };
    staged::batch(local, remote, session, request, plan, claim, entry).await
}

/// Settles the ledger's records left by earlier faults, oldest first, each as one batch through
/// the stage and the anti-join. Returns whether all were settled: when the batch budget runs
/// out first, the run's workers must not start (their claims could take a record's readings).
pub(super) async fn settle_records(
    pools: &Pools,
    request: UploadRequest<'_>,
    plan: &Plan,
    shared: &Shared,
) -> Result<bool, UploadError> {
    let Some(ledger) = &plan.ledger else {
        return Ok(true);
    };
    let records = ledger.records().await?;
    if records.is_empty() {
        return Ok(true);
    }
    tracing::info!(
        records = records.len(),
        "settling the batches whose earlier send is uncertain through the anti-join"
    );
    let mut session: Option<Session> = None;
    for (id, ids) in &records {
        if shared
            .tickets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
            .is_err()
        {
            return Ok(false);
        }
        let clock = Instant::now();
        let claim = Claim::Record { id: *id, ids };
        let mut attempt = 0;
        let outcome = loop {
            match batch(pools, request, plan, shared, &mut session, claim).await {
                Ok(outcome) => break outcome,
                Err(e) if attempt < request.retry.max_retries && e.is_retryable() => {
                    let delay = request.retry.delay(attempt);
                    tracing::warn!(attempt = attempt + 1, max = request.retry.max_retries, delay_ms = delay.as_millis() as u64, error = %e, "settling a ledger record failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(outcome) = outcome {
            shared
                .tally
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .add(outcome, clock.elapsed());
        }
    }
    Ok(true)
}
