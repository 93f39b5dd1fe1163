//! The staged path, taken when no unique index guards the dedupe key on the remote and every
//! batch is checked (`resend_check = "every_batch"`), for the readings of a ledger record (their
//! earlier send is uncertain), once a batch of the run failed after its record, or when the
//! direct copy was refused: the batch goes into a remote temporary stage and only readings the
//! remote lacks are inserted from it.

use super::claim::{begin_claim, end_local, send, Claim, Destination, Session};
use super::ledger::Entry;
use super::plan::Plan;
use super::workers::BatchOutcome;
use super::{refused, UploadError, UploadRequest};
use crate::config::Side;
use crate::data::pg::{on_remote, PgError};
use crate::logging::Steps;

/// The staged path: claim and remove the readings in one local statement, stream them into the
/// remote stage, insert what the remote lacks (recording the batch in the ledger first, for
/// `Entry::New`) and commit the remote, then commit locally, removing the batch's ledger record
/// with its readings. If the remote refuses the batch's data, the local transaction is rolled
/// back and the batch goes the careful way.
pub(super) async fn batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    claim: Claim<'_>,
    entry: Entry,
) -> Result<Option<BatchOutcome>, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let rows = begin_claim(local, session, request, claim).await?;
    let (ids, last_key) = send(remote, session, rows, request.readings, Destination::Stage).await?;
    steps.done("claim and send");
    if ids.is_empty() {
        let (l, r) = tokio::join!(
            // A record none of whose readings is claimable any more is done with.
            session.commit_local(local, entry.existing()),
            remote.batch_execute("commit")
        );
        l?;
        r.map_err(on_remote("end the batch"))?;
        return Ok(None);
    }
    // Behind a pooler in transaction mode, or for the anti-join, the insert is prepared (and
    // planned) in this transaction.
    let insert = match &session.insert_all {
        Some(insert) => insert.clone(),
        None => remote
            .prepare(&session.insert_sql)
            .await
            .map_err(on_remote("prepare the insert"))?,
    };
    let (inserted, record) = match (entry, &plan.ledger) {
        (Entry::New, Some(ledger)) => match remote.execute(&insert, &[]).await {
            Ok(inserted) => {
                let record = ledger.record(&ids).await?;
                remote
                    .batch_execute("commit")
                    .await
                    .map_err(on_remote("commit the batch"))?;
                (Ok(inserted), Some(record))
            }
            Err(e) => (Err(e), None),
        },
        _ => {
            let (inserted, commit) =
                tokio::join!(remote.execute(&insert, &[]), remote.batch_execute("commit"));
            if inserted.is_ok() {
                commit.map_err(on_remote("commit the batch"))?;
            }
            (inserted, entry.existing())
        }
    };
    match inserted {
        Ok(inserted) => {
            steps.done("remote insert and commit");
            // The remote has the readings now; a fault from here on only causes a resend.
            session.commit_local(local, record).await?;
            steps.done("local commit");
            Ok(Some(BatchOutcome {
                last_key,
                claimed: ids.len() as u64,
                inserted,
                removed: ids.len() as u64,
                rejected: Vec::new(),
            }))
        }
        // The remote transaction is aborted (the pipelined commit rolled it back, or it waits
        // for one); undo the local removal too.
        Err(e) if refused::is_refusal(e.code()) => {
            let _ = remote.batch_execute("rollback").await;
            end_local(local, "rollback", "roll back the refused batch").await?;
            refused::batch(local, remote, session, request, plan, claim, entry).await
        }
        Err(e) => Err(PgError::query(Side::Remote, "insert the readings", e).into()),
    }
}
