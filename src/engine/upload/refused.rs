//! Readings the remote refuses for their data: a refused batch is claimed again with row locks,
//! sent, and split under savepoints until the refused readings are found; the rest commit, and
//! each refused one counts an attempt (quarantined after `MAX_ROW_FAILURES`), so one bad reading
//! never blocks the queue.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::claim::{begin_claim_locked, send, Claim, Destination, Session};
use super::ledger::Entry;
use super::plan::Plan;
use super::workers::BatchOutcome;
use super::{ReadingId, RejectedReading, UploadError, UploadRequest};
use crate::config::Side;
use crate::data::pg::{on_local, on_remote, PgError, RawValue};
use crate::data::sql;

/// Whether the remote refused the data itself (classes 22 data exception, 23 integrity
/// constraint violation), as opposed to the connection or the server: the one test of every
/// upload path.
pub(super) fn is_refusal(code: Option<&SqlState>) -> bool {
    code.is_some_and(|c| matches!(&c.code()[..2], "22" | "23"))
}

/// The careful way for a batch the remote refused in part: claim with row locks, send, find the
/// refused readings by splitting the batch under savepoints, commit the good ones remotely, then
/// remove them locally and record an attempt on each refused one (quarantined after
/// `MAX_ROW_FAILURES`).
pub(super) async fn batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    claim: Claim<'_>,
    entry: Entry,
) -> Result<Option<BatchOutcome>, UploadError> {
    let readings = request.readings;
    let rows = begin_claim_locked(local, session, request, claim).await?;
    let (ids, _) = send(remote, session, rows, readings, Destination::Stage).await?;
    let insert = sql::insert_new_readings(readings, plan.conflict_target.as_deref(), true);
    let positions: Vec<i64> = (0..ids.len() as i64).collect();
    let (inserted, refused) = bisect(remote, &insert, positions).await?;
    let record = match (entry, &plan.ledger) {
        (Entry::New, Some(ledger)) if !ids.is_empty() => Some(ledger.record(&ids).await?),
        _ => entry.existing(),
    };
    remote
        .batch_execute("commit")
        .await
        .map_err(on_remote("commit the batch"))?;

    // The remote has the readings now; a fault from here on only causes a harmless resend.
    let refused_ids: Vec<RawValue> = refused
        .iter()
        .map(|(position, _)| ids[*position as usize].clone())
        .collect();
    let mut rejected = Vec::with_capacity(refused.len());
    for (id, (_, error)) in refused_ids.iter().zip(refused) {
        let row = local
            .query_one(
                &sql::record_failure(readings),
                &[id, &error, &(request.max_row_failures as i32)],
            )
            .await
            .map_err(on_local("record a refused reading"))?;
        rejected.push(RejectedReading {
            id: ReadingId::from_text(row.get(1)),
            error,
            quarantined: row.get(0),
        });
    }
    let params: [&(dyn ToSql + Sync); 2] = [&ids, &refused_ids];
    let (removed, commit) = tokio::join!(
        local.execute(&session.remove, &params),
        session.commit_local(local, record)
    );
    let removed = removed.map_err(on_local("remove uploaded readings"))?;
    commit?;
    Ok(Some(BatchOutcome {
        last_key: None,
        claimed: ids.len() as u64,
        inserted,
        removed,
        rejected,
    }))
}

/// Splits the batch's positions until the refused readings are isolated, each part under a
/// savepoint so the good rows commit. Returns the inserted count and the refused positions
/// with the server's message.
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
            Err(e) if is_refusal(e.code()) => {
                remote
                    .batch_execute("rollback to savepoint meter_sync_part")
                    .await
                    .map_err(on_remote("roll back a refused part"))?;
                if part.len() == 1 {
                    refused.push((part[0], crate::data::pg::describe(&e)));
                } else {
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right.to_vec());
                    pending.push(left.to_vec());
                }
            }
            Err(e) => return Err(PgError::query(Side::Remote, "insert the readings", e)),
        }
    }
    Ok((inserted, refused))
}
