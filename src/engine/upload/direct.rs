//! The direct path, taken when a unique index on the remote guards the dedupe key.

use super::claim::{begin_claim, end_local, send, Claim, Destination, Session};
use super::workers::{BatchOutcome, Key};
use super::{refused, UploadError, UploadRequest};
use crate::config::Side;
use crate::logging::Steps;

/// Outcome of the direct path.
pub(super) enum Direct {
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
pub(super) async fn batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    after: Option<&Key>,
) -> Result<Direct, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let rows = begin_claim(local, session, request, Claim::Next(after)).await?;
    let sent = send(remote, session, rows, request.readings, Destination::Table).await;
    steps.done("claim and copy");
    // Behind a pooler in transaction mode the COPY ran in a transaction of its own.
    let in_transaction = session.begin_table.is_some();
    match sent {
        Ok((ids, _)) if ids.is_empty() => {
            if in_transaction {
                end_remote(remote, "commit").await?;
            }
            end_local(local, "commit", "end the batch").await?;
            Ok(Direct::Done(None))
        }
        Ok((ids, last_key)) => {
            // The COPY ran as a statement of its own: its completion was the remote commit
            // (or, in transaction mode, this commit is). The remote has the readings now; a
            // fault from here on only causes a resend.
            if in_transaction {
                end_remote(remote, "commit").await?;
            }
            end_local(local, "commit", "commit the batch").await?;
            steps.done("local commit");
            Ok(Direct::Done(Some(BatchOutcome::copied(
                ids.len(),
                last_key,
            ))))
        }
        Err(e) if e.side() == Side::Remote && refused::is_refusal(e.code()) => {
            // The failed COPY rolled itself back on the remote (its transaction, in
            // transaction mode, is ended here).
            if in_transaction {
                end_remote(remote, "rollback").await?;
            }
            end_local(local, "rollback", "roll back the batch").await?;
            tracing::debug!(error = %e, "direct copy refused; going through the stage");
            Ok(Direct::Refused)
        }
        Err(e) => Err(e.into()),
    }
}

/// Ends the remote transaction of a direct COPY behind a pooler in transaction mode.
async fn end_remote(
    remote: &tokio_postgres::Client,
    statement: &'static str,
) -> Result<(), UploadError> {
    remote
        .batch_execute(statement)
        .await
        .map_err(crate::data::pg::on_remote("end the batch"))?;
    Ok(())
}
