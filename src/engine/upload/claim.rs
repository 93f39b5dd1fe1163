//! A worker's connections and prepared claims, and the stream of claimed rows to the remote:
//! a batch's local transaction opens with its claim (one round trip), and the claimed rows are
//! written to the remote as they arrive, never held whole in memory.

use std::pin::pin;

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, RowStream, Statement};

use super::plan::Plan;
use super::workers::Key;
use super::{UploadError, UploadRequest};
use crate::data::pg::{on_local, on_remote, PgError, Pools, RawValue};
use crate::data::sql;
use crate::profile::{AfterUpload, ReadingsSpec};

/// Opens a batch's local transaction. Its commit only removes readings the remote has already
/// committed: if a crash of the local server lost it, those readings would be resent and the
/// dedupe would make that a no-op. So it need not wait for its WAL flush (one fsync per batch
/// instead of two); the remote commit, the durable record, always waits.
const BEGIN_LOCAL: &str = "begin; set local synchronous_commit = off";

/// The two connections of a run and its prepared statements. After any error a connection may
/// be inside a transaction, so the session is discarded, never returned to the pool. The same
/// when the run is cut short mid-batch (`RUN_TIMEOUT_SECONDS`, shutdown): the batch future is
/// dropped with its transactions open, and closing the connections makes both servers roll
/// them back at once, releasing the claimed readings.
pub(super) struct Session {
    pub(super) local: Option<deadpool_postgres::Object>,
    pub(super) remote: Option<deadpool_postgres::Object>,
    /// A batch is under way on these connections (set for its whole length).
    pub(super) in_flight: bool,
    pub(super) claim: Statement,
    pub(super) claim_and_remove: Statement,
    pub(super) claim_and_remove_after: Statement,
    pub(super) remove: Statement,
    /// The insert of a whole stage, prepared once per session; `None` behind a pooler in
    /// transaction mode, where a statement must be prepared in the transaction that runs it, and
    /// for the anti-join, which must be planned for the remote table as it is at each batch
    /// (`insert_sql`).
    pub(super) insert_all: Option<Statement>,
    pub(super) insert_sql: String,
    /// What opens a batch's remote transaction for the stage: `begin`, or in transaction mode
    /// `begin`, the timeouts and the stage's creation.
    pub(super) begin_stage: String,
    /// In transaction mode, what opens the transaction of a COPY straight into the table
    /// (elsewhere that COPY commits by itself).
    pub(super) begin_table: Option<String>,
    /// What opens a remote transaction (the recorded path's COPY commits only after its
    /// ledger record).
    pub(super) begin_remote: String,
    /// With the upload ledger: the claims of a record's readings (locked, and removing) and
    /// the removal of a record.
    pub(super) by_ids: Option<ByIds>,
    /// Types of the claim's columns: the local id, then the uploaded columns (also the
    /// remote stage's layout).
    pub(super) types: Vec<Type>,
}

/// A session's statements for the readings of a ledger record.
pub(super) struct ByIds {
    pub(super) claim: Statement,
    pub(super) claim_and_remove: Statement,
    pub(super) forget: Statement,
}

/// Which readings a batch claims.
#[derive(Debug, Clone, Copy)]
pub(super) enum Claim<'a> {
    /// From the head of the queue, or past the worker's previous batch.
    Next(Option<&'a Key>),
    /// A ledger record's (their earlier send is uncertain): the record, the readings' ids.
    Record { id: i64, ids: &'a [String] },
}

impl Session {
    pub(super) async fn open(
        pools: &Pools,
        request: UploadRequest<'_>,
        plan: &Plan,
    ) -> Result<Self, UploadError> {
        let readings = request.readings;
        let local = pools.local().await?;
        let remote = pools.remote().await?;
        let insert_sql = sql::insert_new_readings(readings, plan.conflict_target.as_deref(), false);
        let per_transaction = pools.remote_in_transaction_mode();
        // How the anti-join is planned, set for each batch's transaction.
        let joins = match plan.anti_join {
            Some(anti_join) => format!("; {}", anti_join.settings()),
            None => String::new(),
        };
        let (insert_all, begin_stage, begin_table) = if per_transaction {
            // The driver's type lookups were prepared on another server connection.
            remote.clear_type_cache();
            // Checked now, inside a transaction rolled back at once: the stage and the insert
            // exist only within each batch's transaction.
            let begin_stage = format!(
                "{}; {}{joins}",
                pools.remote_begin(),
                sql::create_upload_stage(readings, true)
            );
            remote
                .batch_execute(&begin_stage)
                .await
                .map_err(on_remote("create the upload stage"))?;
            let prepared = remote.prepare(&insert_sql).await;
            remote
                .batch_execute("rollback")
                .await
                .map_err(on_remote("end the check of the upload statements"))?;
            prepared.map_err(on_remote("prepare the insert"))?;
            (None, begin_stage, Some(pools.remote_begin()))
        } else {
            remote
                .batch_execute(&sql::create_upload_stage(readings, false))
                .await
                .map_err(on_remote("create the upload stage"))?;
            // The anti-join's insert takes no parameters, so PostgreSQL would plan it once, for
            // the table as it was then, and keep that plan for the session: into a central that
            // started empty, a nested loop scanning the whole table for every staged reading
            // (measured 0.01x the pipe). It is prepared per batch instead, planned for the table
            // as it is. The conflict target's insert is planned the same whatever the size.
            let insert_all = match plan.conflict_target {
                Some(_) => Some(
                    remote
                        .prepare(&insert_sql)
                        .await
                        .map_err(on_remote("prepare the insert"))?,
                ),
                None => None,
            };
            (insert_all, format!("begin{joins}"), None)
        };
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
        let types = claim.columns().iter().map(|c| c.type_().clone()).collect();
        let by_ids = match &plan.ledger {
            Some(ledger) => Some(ByIds {
                claim: local
                    .prepare(&sql::claim_batch_ids(
                        readings,
                        &plan.outgoing,
                        &ledger.id_type,
                    ))
                    .await
                    .map_err(on_local("prepare the claim of a ledger record"))?,
                claim_and_remove: local
                    .prepare(&sql::claim_and_remove_ids(
                        readings,
                        &plan.outgoing,
                        &ledger.id_type,
                    ))
                    .await
                    .map_err(on_local("prepare the claim of a ledger record"))?,
                forget: local
                    .prepare(sql::ledger::FORGET)
                    .await
                    .map_err(on_local("prepare the removal of a ledger record"))?,
            }),
            None => None,
        };
        Ok(Self {
            local: Some(local),
            remote: Some(remote),
            in_flight: false,
            claim,
            claim_and_remove,
            claim_and_remove_after,
            remove,
            insert_all,
            insert_sql,
            begin_stage,
            begin_table,
            begin_remote: pools.remote_begin(),
            by_ids,
            types,
        })
    }

    pub(super) fn discard(&mut self) {
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

/// Opens the batch's local transaction and starts the claim (which removes what it claims,
/// effective only with the local commit), from the head of the queue or past `after`:
/// pipelined, one round trip.
pub(super) async fn begin_claim(
    local: &Client,
    session: &Session,
    request: UploadRequest<'_>,
    claim: Claim<'_>,
) -> Result<RowStream, PgError> {
    let (begin, rows) = tokio::join!(
        local.batch_execute(BEGIN_LOCAL),
        claim_and_remove(local, session, request, claim)
    );
    begin.map_err(on_local("begin the batch"))?;
    rows.map_err(on_local("claim queued readings"))
}

/// Opens the batch's local transaction and claims with row locks, removing nothing yet (the
/// careful way: the refused readings are only known after the send).
pub(super) async fn begin_claim_locked(
    local: &Client,
    session: &Session,
    request: UploadRequest<'_>,
    claim: Claim<'_>,
) -> Result<RowStream, PgError> {
    let limit = i64::from(request.batch_size);
    let claimed = async {
        match (claim, &session.by_ids) {
            (Claim::Record { ids, .. }, Some(by_ids)) => {
                let limit = ids.len() as i64;
                let params: [&(dyn ToSql + Sync); 2] = [&limit, &ids];
                local.query_raw(&by_ids.claim, params).await
            }
            _ => {
                local
                    .query_raw(&session.claim, [&limit as &(dyn ToSql + Sync)])
                    .await
            }
        }
    };
    let (begin, rows) = tokio::join!(local.batch_execute(BEGIN_LOCAL), claimed);
    begin.map_err(on_local("begin the batch"))?;
    rows.map_err(on_local("claim queued readings"))
}

/// Ends the batch's local transaction: `commit` or `rollback`; `what` names it in errors.
pub(super) async fn end_local(
    local: &Client,
    statement: &'static str,
    what: &'static str,
) -> Result<(), PgError> {
    local.batch_execute(statement).await.map_err(on_local(what))
}

/// Where `send` writes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination {
    /// The remote temporary stage (local id and columns).
    Stage,
    /// The remote readings table itself (columns only), committed by the COPY itself.
    Table,
    /// The remote readings table inside a remote transaction left open for the caller to
    /// commit.
    TableInTransaction,
}

/// Streams the claimed rows to the remote as they arrive (into the stage inside a new remote
/// transaction, each with its position in the batch, or straight into the table as one
/// autocommitted COPY), values passed through in binary; returns their local ids (in batch
/// order, so position `i` is `ids[i]`) and the last row's `order_by` key.
pub(super) async fn send(
    remote: &tokio_postgres::Client,
    session: &Session,
    rows: tokio_postgres::RowStream,
    readings: &ReadingsSpec,
    destination: Destination,
) -> Result<(Vec<RawValue>, Option<Key>), PgError> {
    let (stage, positioned) = match destination {
        Destination::Stage => (sql::copy_into_upload_stage(readings), true),
        Destination::Table | Destination::TableInTransaction => {
            (sql::copy_into_remote_readings(readings), false)
        }
    };
    let begin = match destination {
        // The stage lives in a transaction, committed with the insert that follows.
        Destination::Stage => Some(session.begin_stage.as_str()),
        // Straight into the table: the COPY commits by itself, except behind a pooler in
        // transaction mode, where its prepare and its run must share one transaction.
        Destination::Table => session.begin_table.as_deref(),
        Destination::TableInTransaction => Some(session.begin_remote.as_str()),
    };
    let sink = match begin {
        Some(begin) => {
            let (begun, sink) = tokio::join!(
                remote.batch_execute(begin),
                remote.copy_in::<_, Bytes>(&stage)
            );
            begun.map_err(on_remote("begin the batch"))?;
            sink
        }
        None => remote.copy_in::<_, Bytes>(&stage).await,
    };
    let sink = sink.map_err(on_remote("send the readings"))?;
    let uploaded = &session.types[1..];
    let types: Vec<Type> = match positioned {
        true => std::iter::once(Type::INT8)
            .chain(uploaded.iter().cloned())
            .collect(),
        false => uploaded.to_vec(),
    };
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = pin!(writer);
    let mut rows = pin!(rows);
    let mut ids = Vec::new();
    let mut last = None;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(on_local("claim queued readings"))?
    {
        let position = ids.len() as i64;
        ids.push(row.get::<_, RawValue>(0));
        let mut values: Vec<RawValue> = Vec::with_capacity(types.len());
        if positioned {
            values.push(RawValue(Some(position.to_be_bytes().to_vec())));
        }
        values.extend((1..session.types.len()).map(|i| row.get::<_, RawValue>(i)));
        let refs: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        writer
            .as_mut()
            .write(&refs)
            .await
            .map_err(on_remote("send the readings"))?;
        // The claims that remove return the `order_by` key after the uploaded columns.
        if row.len() > session.types.len() {
            last = Some(row);
        }
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

/// Claims and removes one batch, from the head of the queue, past `after`, or a ledger
/// record's readings.
async fn claim_and_remove(
    local: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    claim: Claim<'_>,
) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
    let limit = i64::from(request.batch_size);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    let after = match (claim, &session.by_ids) {
        (Claim::Record { ids, .. }, Some(by_ids)) => {
            let limit = ids.len() as i64;
            let params: [&(dyn ToSql + Sync); 2] = [&limit, &ids];
            return local.query_raw(&by_ids.claim_and_remove, params).await;
        }
        (Claim::Next(after), _) => after,
        // No ledger in this run: nothing is claimed by record.
        (Claim::Record { .. }, None) => None,
    };
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

impl Session {
    /// Commits the batch's local transaction, removing the batch's ledger record (if any) with
    /// its readings: pipelined, one round trip.
    pub(super) async fn commit_local(
        &self,
        local: &Client,
        record: Option<i64>,
    ) -> Result<(), PgError> {
        match (record, &self.by_ids) {
            (Some(id), Some(by_ids)) => {
                let params: [&(dyn ToSql + Sync); 1] = [&id];
                let (forgot, commit) = tokio::join!(
                    local.execute(&by_ids.forget, &params),
                    local.batch_execute("commit")
                );
                forgot.map_err(on_local("remove the batch's ledger record"))?;
                commit.map_err(on_local("commit the batch"))
            }
            _ => end_local(local, "commit", "commit the batch").await,
        }
    }
}
