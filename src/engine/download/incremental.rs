//! The incremental strategy, for entities read from a remote table: only the rows the central
//! wrote since the last run's snapshot travel, and only the local rows someone else wrote
//! since the last run are compared with the central's.
//!
//! Each run stores, per entity and inside the entity's savepoint, both servers' snapshot
//! horizons (every transaction older than the horizon had finished before the snapshot) and the
//! ids of the service's own local (sub)transactions. The next run then asks the central for the
//! rows whose `xmin` is at or after the remote horizon (every insert and update writes a row
//! version with its writer's id), and collects as suspects the local rows whose `xmin` is at or
//! after the local horizon but is none of the service's own: edited or inserted at the site.
//! Suspects are fetched by key and compared like changed rows, so a local edit is repaired by
//! the next ordinary run. Deletions leave no row version behind: the count and sum of key hashes
//! of the central's rows is compared with the same summary of the local mirrored rows as they
//! will be after the run; when they differ (a row deleted on either side, a key that cannot be
//! inserted), the entity falls back to comparing every row version, in the same snapshot.
//!
//! Nothing is trusted that cannot be checked: a missing state, a changed profile or column
//! conversion, another database behind either connection (system identifier, database oid,
//! WAL timeline), a server that went back in time, or a horizon more than 2^31 transactions
//! old each make the run compare every row's content (or, where only the remote horizon is out
//! of reach, every row version), and the state is written afresh.

use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use super::apply::Removal;
use super::diff::{self, Compare};
use super::entity::Source;
use super::rows::check_remote_keys;
use super::{EntityError, EntityReport, Strategy};
use crate::config::Side;
use crate::data::pg::{on_local, on_remote, PgError};
use crate::data::sql;
use crate::data::sql::Target;
use crate::logging::Steps;
use crate::profile::{EntitySpec, RemoteSource};

/// At most this many of the service's own local transaction ids are kept per entity (each run
/// adds one or two; older ones fall behind the horizon and are dropped). Dropping one early
/// only makes its rows suspects once.
const OWN_XIDS_KEPT: usize = 1000;

/// One server's snapshot: its horizon (oldest transaction still running) and next id, 64-bit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Snapshot {
    horizon: i64,
    next: i64,
}

/// Both servers' snapshots and identities, read once per attempt, before any entity.
#[derive(Debug, Clone)]
pub(super) struct Clocks {
    local: Snapshot,
    remote: Snapshot,
    local_identity: String,
    /// `None` where the central cannot say (a standby): then no remote horizon is trusted.
    remote_identity: Option<String>,
}

/// How a versioned entity's rows are compared this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// Rows written since the remote horizon, then the suspects.
    Incremental { since: i64, suspects: Suspects },
    /// Every row version compared, then the suspects.
    Versions { suspects: Suspects },
    /// Every row's content compared: nothing about the local rows can be trusted.
    Contents,
}

/// Which local rows someone other than the service wrote since the last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Suspects {
    since: i64,
    own: Vec<i64>,
}

impl Plan {
    /// The service's own local ids the stored state vouches for (none when it is not trusted).
    fn own(&self) -> &[i64] {
        match self {
            Plan::Incremental { suspects, .. } | Plan::Versions { suspects } => &suspects.own,
            Plan::Contents => &[],
        }
    }
}

/// Reads both snapshots and identities. An identity that cannot be read (a privilege, a
/// standby) is left unknown, under a savepoint so the transactions stay usable.
pub(super) async fn read_clocks(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
) -> Result<Clocks, PgError> {
    let local = snapshot(ltx, Side::Local).await?;
    let remote = snapshot(rtx, Side::Remote).await?;
    let local_identity = optional(ltx, Side::Local, sql::ledger::SELECT_DATABASE_IDENTITY)
        .await?
        .unwrap_or_default();
    let remote_identity = optional(rtx, Side::Remote, sql::SELECT_REMOTE_IDENTITY).await?;
    Ok(Clocks {
        local,
        remote,
        local_identity,
        remote_identity,
    })
}

async fn snapshot(tx: &Transaction<'_>, side: Side) -> Result<Snapshot, PgError> {
    let row = tx
        .query_one(sql::SELECT_SNAPSHOT, &[])
        .await
        .map_err(|e| PgError::query(side, "read the snapshot's transaction ids", e))?;
    Ok(Snapshot {
        horizon: row.get(0),
        next: row.get(1),
    })
}

/// A text the role may be unable to read: `None` then, with the transaction intact.
async fn optional(
    tx: &Transaction<'_>,
    side: Side,
    query: &str,
) -> Result<Option<String>, PgError> {
    let q = |e| PgError::query(side, "read the database identity", e);
    tx.batch_execute("savepoint meter_sync_identity")
        .await
        .map_err(q)?;
    match tx.query_one(query, &[]).await {
        Ok(row) => {
            tx.batch_execute("release savepoint meter_sync_identity")
                .await
                .map_err(q)?;
            Ok(row.get(0))
        }
        Err(e) => {
            tracing::debug!(?side, error = %crate::data::pg::describe(&e), "database identity unreadable; every row version is compared");
            tx.batch_execute("rollback to savepoint meter_sync_identity")
                .await
                .map_err(q)?;
            Ok(None)
        }
    }
}

/// Decides from the stored state how the entity is compared.
pub(super) async fn plan(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    source_select: &str,
    clocks: &Clocks,
) -> Result<Plan, PgError> {
    let Some(row) = ltx
        .query_opt(sql::SELECT_STATE, &[&entity.name.as_str()])
        .await
        .map_err(on_local("read the download state"))?
    else {
        return Ok(Plan::Contents);
    };
    let stored_select: String = row.get(0);
    let local_identity: String = row.get(1);
    let remote_identity: Option<String> = row.get(2);
    let (local_horizon, local_next): (i64, i64) = (row.get(3), row.get(4));
    let own: Vec<i64> = row.get(5);
    let (remote_horizon, remote_next): (i64, i64) = (row.get(6), row.get(7));
    if local_identity != clocks.local_identity
        || !sql::within_reach(local_horizon, clocks.local.next, local_next)
        || stored_select != source_select
        || remote_identity != clocks.remote_identity
        || clocks.remote.next < remote_next
    {
        return Ok(Plan::Contents);
    }
    let suspects = Suspects {
        since: local_horizon,
        own,
    };
    Ok(match &clocks.remote_identity {
        Some(_) if sql::within_reach(remote_horizon, clocks.remote.next, remote_next) => {
            Plan::Incremental {
                since: remote_horizon,
                suspects,
            }
        }
        _ => Plan::Versions { suspects },
    })
}

/// Stages what differs under the plan and says which local rows are gone remotely.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stage(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
    keyed: bool,
    record_hash: bool,
    targets: &[Target<'_>],
    plan: &Plan,
    report: &mut EntityReport,
    steps: &mut Steps<'_>,
) -> Result<Removal, EntityError> {
    let entity = source.entity;
    let suspects = match plan {
        Plan::Contents => None,
        Plan::Versions { suspects } => Some(suspects),
        Plan::Incremental { since, suspects } => {
            if let RemoteSource::Table(table) = &entity.remote {
                let written = Written {
                    table,
                    since: *since,
                    suspects,
                };
                if let Some(removal) =
                    changed_since(ltx, rtx, source, keyed, targets, written, report, steps).await?
                {
                    return Ok(removal);
                }
            }
            Some(suspects)
        }
    };
    // Every row version compared (the suspects too), or every row's content.
    if let Some(suspects) = suspects {
        collect_suspects(ltx, entity, suspects).await?;
    }
    let compare = Compare {
        record_hash,
        content: suspects.is_none(),
        suspects: suspects.is_some(),
    };
    let fetched = report.fetched;
    let removal = diff::stage(ltx, rtx, source, keyed, targets, compare, report, steps).await?;
    report.fetched += fetched;
    Ok(removal)
}

/// What the incremental strategy reads: the remote table's rows written since `since`, and
/// the local suspects.
struct Written<'a> {
    table: &'a crate::profile::TableName,
    since: i64,
    suspects: &'a Suspects,
}

/// The incremental strategy proper: stages the rows written since the last run on either side;
/// `None` when the key summaries differ (the stage is then cleared for the diff).
#[allow(clippy::too_many_arguments)]
async fn changed_since(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
    keyed: bool,
    targets: &[Target<'_>],
    written: Written<'_>,
    report: &mut EntityReport,
    steps: &mut Steps<'_>,
) -> Result<Option<Removal>, EntityError> {
    let entity = source.entity;
    let Written {
        table,
        since,
        suspects,
    } = written;
    report.strategy = Strategy::Incremental;
    let stage = sql::stage_name(entity);
    // One scan on each server, at once: the remote rows' key summary and how many were written
    // since the last run; the local mirrored rows' key summary and how many are suspects. The
    // rows themselves are read only when there are some.
    let remote_scan = sql::remote_changes(entity, table, source.tenant, source.conversions, since);
    let local_scan = sql::local_scan(entity, suspects.since, &suspects.own);
    let (remote, local) = tokio::try_join!(
        async {
            rtx.query_one(&remote_scan, &[])
                .await
                .map_err(on_remote("summarise the remote rows"))
        },
        async {
            ltx.query_one(&local_scan, &[])
                .await
                .map_err(on_local("summarise the local rows"))
        },
    )?;
    let remote_summary = Summary::read(remote.get(0), remote.get(1), Side::Remote)?;
    let changed: i64 = remote.get(2);
    let mirrored = Summary::read(local.get(0), local.get(1), Side::Local)?;
    let suspected: i64 = local.get(2);
    steps.done("summarise both sides");
    if changed > 0 {
        let select =
            sql::remote_select_changed(entity, table, source.tenant, source.conversions, since);
        // A query rather than `COPY (query)`: the central may scan in parallel for it.
        let rows = rtx
            .query_raw(&select, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await
            .map_err(on_remote("read the rows written since the last run"))?;
        report.fetched = diff::into_stage(ltx, entity, &source.types, rows).await?;
        steps.done("copy rows written since the last run");
    }
    if !keyed {
        check_remote_keys(ltx, entity, &stage).await?;
    }
    let collect = match suspected {
        0 => sql::create_no_suspects(entity),
        _ => sql::create_suspects(entity, suspects.since, &suspects.own),
    };
    ltx.batch_execute(&format!(
        "{collect}; {}; {}",
        sql::create_empty_diff(entity),
        sql::need_suspects(entity)
    ))
    .await
    .map_err(on_local("queue the local rows written by others"))?;
    if suspected > 0 {
        report.fetched += diff::fetch_by_keys(ltx, rtx, source).await?;
    }
    ltx.batch_execute(&format!(
        "{}; {}",
        sql::gone_suspects(entity),
        sql::index_keys(entity, &stage)
    ))
    .await
    .map_err(on_local("index the fetched rows"))?;
    steps.done("fetch local rows written by others");
    diff::skip_unreferenced(ltx, entity, targets, report).await?;
    ltx.batch_execute(sql::KEYED_JOINS_ON)
        .await
        .map_err(on_local("plan joins through the key"))?;
    let delta = ltx
        .query_one(&sql::local_summary_delta(entity), &[])
        .await
        .map_err(on_local("summarise the staged rows"))?;
    let delta = Summary::read(delta.get(0), delta.get(1), Side::Local)?;
    steps.done("compare key summaries");
    if remote_summary == mirrored.plus(delta) {
        return Ok(Some(Removal::Gone));
    }
    // A row left one side (or a key cannot be mirrored): compare every row version instead,
    // in the same snapshot, the suspects included.
    tracing::debug!(entity = %entity.name, remote_rows = remote_summary.rows, local_rows = mirrored.plus(delta).rows, "key summaries differ; comparing every row version");
    ltx.batch_execute(&format!(
        "{}; {}; {}; {}",
        sql::KEYED_JOINS_OFF,
        sql::drop_incremental_tables(entity),
        sql::drop_stage(entity),
        sql::create_stage(entity)
    ))
    .await
    .map_err(on_local("clear the stage"))?;
    report.skipped = 0;
    report.skipped_keys.clear();
    Ok(None)
}

/// Rows counted and their key hashes summed (exactly: a million 64-bit hashes fit in 128 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    rows: i64,
    hashes: i128,
}

impl Summary {
    fn read(rows: i64, hashes: String, side: Side) -> Result<Self, PgError> {
        let hashes = hashes.parse().map_err(|_| PgError::Unexpected {
            side,
            detail: format!("a sum of key hashes is not an integer: {hashes}"),
        })?;
        Ok(Self { rows, hashes })
    }

    fn plus(self, other: Self) -> Self {
        Self {
            rows: self.rows + other.rows,
            hashes: self.hashes + other.hashes,
        }
    }
}

async fn collect_suspects(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    suspects: &Suspects,
) -> Result<(), PgError> {
    ltx.batch_execute(&sql::create_suspects(entity, suspects.since, &suspects.own))
        .await
        .map_err(on_local("find the local rows written by others"))
}

/// Records the entity's state at the end of its first pass (inside its savepoint, so it rolls
/// back with the entity): the snapshots the run read and the id its rows were written under.
pub(super) async fn record(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    source_select: &str,
    clocks: &Clocks,
    plan: &Plan,
) -> Result<(), PgError> {
    let mut own: Vec<i64> = plan
        .own()
        .iter()
        .copied()
        .filter(|&xid| sql::xid_at_or_after(xid, clocks.local.horizon))
        .collect();
    if own.len() >= OWN_XIDS_KEPT {
        own.drain(..own.len() + 1 - OWN_XIDS_KEPT);
    }
    let row = ltx
        .query_one(
            sql::UPSERT_STATE,
            &[
                &entity.name.as_str(),
                &source_select,
                &clocks.local_identity,
                &clocks.remote_identity,
                &clocks.local.horizon,
                &clocks.local.next,
                &own,
                &clocks.remote.horizon,
                &clocks.remote.next,
            ],
        )
        .await
        .map_err(on_local("record the download state"))?;
    let xid: i64 = row.get(0);
    ltx.execute(sql::ADD_OWN_XID, &[&entity.name.as_str(), &xid])
        .await
        .map_err(on_local("record the download state"))?;
    Ok(())
}

/// After pass 2 removed or deactivated rows (under a subtransaction of its own): records that
/// subtransaction's id as the service's own, so those rows are not suspects next run.
pub(super) async fn record_removal(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
) -> Result<(), PgError> {
    let name = entity.name.as_str();
    if let Some(row) = ltx
        .query_opt(sql::TOUCH_STATE, &[&name])
        .await
        .map_err(on_local("record the download state"))?
    {
        let xid: i64 = row.get(0);
        ltx.execute(sql::ADD_OWN_XID, &[&name, &xid])
            .await
            .map_err(on_local("record the download state"))?;
    }
    Ok(())
}
