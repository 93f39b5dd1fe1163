//! The staged path, taken when no unique index guards the dedupe key on the remote, or when the
//! direct copy was refused: the batch goes into a remote temporary stage and only readings the
//! remote lacks are inserted from it.

use super::claim::{begin_claim, end_local, send, Destination, Session};
use super::plan::Plan;
use super::workers::{BatchOutcome, Key};
use super::{refused, UploadError, UploadRequest};
use crate::config::Side;
use crate::data::pg::{on_local, on_remote, PgError};
use crate::logging::Steps;

/// The staged path: claim and remove the readings in one local statement, stream them into the
/// remote stage, insert what the remote lacks and commit the remote, then commit locally. If the
/// remote refuses the batch's data, the local transaction is rolled back and the batch goes the
/// careful way.
pub(super) async fn batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    plan: &Plan,
    after: Option<&Key>,
) -> Result<Option<BatchOutcome>, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let rows = begin_claim(local, session, request, after).await?;
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
    // Behind a pooler in transaction mode the insert is prepared in this transaction.
    let insert = match &session.insert_all {
        Some(insert) => insert.clone(),
        None => remote
            .prepare(&session.insert_sql)
            .await
            .map_err(on_remote("prepare the insert"))?,
    };
    let (inserted, commit) =
        tokio::join!(remote.execute(&insert, &[]), remote.batch_execute("commit"));
    match inserted {
        Ok(inserted) => {
            commit.map_err(on_remote("commit the batch"))?;
            steps.done("remote insert and commit");
            // The remote has the readings now; a fault from here on only causes a resend.
            end_local(local, "commit", "commit the batch").await?;
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
        Err(e) if refused::is_refusal(e.code()) => {
            end_local(local, "rollback", "roll back the refused batch").await?;
            refused::batch(local, remote, session, request, plan).await
        }
        Err(e) => Err(PgError::query(Side::Remote, "insert the readings", e).into()),
    }
}
