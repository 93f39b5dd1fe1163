//! What an upload run decides once before its batches: the type rule on the readings columns
//! (nothing may change or be refused on the way), the dedupe strategy (a unique index on the
//! remote, or the anti-join), readings of another tenant quarantined up front, and fresh
//! planner statistics for a backlog.

use std::time::Instant;

use super::{QueueStats, RejectedReading, UploadError, UploadRequest};
use crate::data::convert::{self, Direction};
use crate::data::pg::{on_local, on_remote, PgError, Pools};
use crate::data::sql;
use crate::error::chain;
use crate::profile::{Ident, ReadingsSpec, TenantId};

/// Set-up shared by every batch of a run.
pub(super) struct Plan {
    /// The remote names of the unique index's columns the insert skips conflicts on.
    pub(super) conflict_target: Option<Vec<Ident>>,
    /// Without a conflict target: how the anti-join is planned.
    pub(super) anti_join: Option<AntiJoin>,
    /// How the claims read the readings for the remote.
    pub(super) outgoing: sql::Outgoing,
    /// The upload ledger, when batches are recorded instead of each compared with the
    /// remote's readings (no unique index, `resend_check = "uncertain"`); set after the plan.
    pub(super) ledger: Option<super::ledger::Ledger>,
}

/// Checks the readings columns on both sides (the type rule: nothing may change or be refused
/// on the way) and looks for a unique index to dedupe on.
pub(super) async fn plan(
    pools: &Pools,
    request: UploadRequest<'_>,
    tenant: Option<TenantId>,
) -> Result<Plan, UploadError> {
    let readings = request.readings;
    let local = pools.local().await?;
    let mut remote = pools.remote_with_retry(request.connect).await?;
    // One read-only transaction: behind a pooler in transaction mode a statement is prepared
    // and run on the same server connection only within one.
    let remote_client: &mut tokio_postgres::Client = &mut remote;
    if pools.remote_in_transaction_mode() {
        // The driver's type lookups were prepared on another server connection.
        remote_client.clear_type_cache();
    }
    let rtx = remote_client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(on_remote("begin reading the remote readings table"))?;
    if !pools.remote_transaction_settings.is_empty() {
        rtx.batch_execute(&pools.remote_transaction_settings)
            .await
            .map_err(on_remote("set the timeouts"))?;
    }
    let local_stmt = local
        .prepare(&sql::readings_select(readings, false))
        .await
        .map_err(on_local("read the local readings columns"))?;
    let remote_stmt = rtx
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
    let dedupe: Vec<&str> = readings
        .remote_names(&readings.dedupe_key)
        .map(Ident::as_str)
        .collect();
    let target: Option<Vec<String>> = rtx
        .query_opt(
            sql::SELECT_DEDUPE_INDEX,
            &[&readings.remote_table.quoted(), &dedupe],
        )
        .await
        .map_err(on_remote("look up the remote unique indexes"))?
        .map(|row| row.get(0));
    let anti_join = match &target {
        Some(_) => None,
        None => {
            let equal: Vec<&str> = readings.equal_dedupe_key().map(Ident::as_str).collect();
            let prefix: i32 = rtx
                .query_one(
                    sql::SELECT_PROBE_INDEX,
                    &[&readings.remote_table.quoted(), &equal],
                )
                .await
                .map_err(on_remote("look up the remote indexes"))?
                .get(0);
            Some(match probes(prefix, dedupe.len()) {
                true => AntiJoin::Probe,
                false => AntiJoin::Scan,
            })
        }
    };
    rtx.commit()
        .await
        .map_err(on_remote("end reading the remote readings table"))?;
    let conflict_target = target.map(|names| {
        readings
            .remote_names(&readings.dedupe_key)
            .filter(|k| names.iter().any(|n| n == k.as_str()))
            .cloned()
            .collect()
    });
    tracing::debug!(
        on_conflict = conflict_target.is_some(),
        anti_join = ?anti_join,
        "upload dedupe strategy"
    );
    Ok(Plan {
        conflict_target,
        anti_join,
        outgoing: sql::Outgoing {
            conversions,
            tenant,
        },
        ledger: None,
    })
}

/// How the anti-join of a batch's stage with the central's readings is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AntiJoin {
    /// Through a remote index, one probe per staged reading ([`sql::ANTI_JOIN_PROBES`]).
    Probe,
    /// One pass over the central's table ([`sql::ANTI_JOIN_SCANS`]).
    Scan,
}

impl AntiJoin {
    /// The settings for a batch's remote transaction.
    pub(super) fn settings(self) -> &'static str {
        match self {
            AntiJoin::Probe => sql::ANTI_JOIN_PROBES,
            AntiJoin::Scan => sql::ANTI_JOIN_SCANS,
        }
    }
}

/// Whether the anti-join should probe an index whose leading `prefix` columns are dedupe
/// columns, for a dedupe key of `dedupe` columns: when the index leaves out at most one of them
/// (spec 004's central indexes `(meter_id, timestamp)` of `(meter_id, timestamp, unit)`), each
/// probe finds a reading or two and a batch costs its own size in probes. An index on fewer
/// would return many readings per probe: one pass over the table then.
fn probes(prefix: i32, dedupe: usize) -> bool {
    let prefix = usize::try_from(prefix).unwrap_or(0);
    prefix >= 1 && prefix + 1 >= dedupe
}

/// Quarantines the queued readings of another tenant (never sent), with the reason.
pub(super) async fn quarantine_other_tenants(
    local: &tokio_postgres::Client,
    readings: &ReadingsSpec,
    column: &Ident,
    tenant: &TenantId,
) -> Result<Vec<RejectedReading>, UploadError> {
    let statement = sql::quarantine_other_tenants(readings, column, tenant);
    quarantine_up_front(local, &statement, "quarantine readings of another tenant").await
}

/// Runs a statement that quarantines queued readings before any batch, returning (id as text,
/// reason) per reading.
async fn quarantine_up_front(
    local: &tokio_postgres::Client,
    statement: &str,
    context: &'static str,
) -> Result<Vec<RejectedReading>, UploadError> {
    let rows = local
        .query(statement, &[])
        .await
        .map_err(on_local(context))?;
    Ok(rows
        .iter()
        .map(|row| RejectedReading {
            id: super::ReadingId::from_text(row.get(0)),
            error: row.get(1),
            quarantined: true,
        })
        .collect())
}

/// Quarantines the queued readings with a value a checked column's remote type cannot hold
/// (never sent), with the reason.
pub(super) async fn quarantine_unfit(
    local: &tokio_postgres::Client,
    readings: &ReadingsSpec,
    plan: &Plan,
) -> Result<Vec<RejectedReading>, UploadError> {
    let Some(statement) = plan.outgoing.quarantine_unfit(readings) else {
        return Ok(Vec::new());
    };
    quarantine_up_front(
        local,
        &statement,
        "quarantine readings that do not fit the remote",
    )
    .await
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
pub(super) async fn refresh_statistics(
    local: &tokio_postgres::Client,
    readings: &ReadingsSpec,
    queued: i64,
) {
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
