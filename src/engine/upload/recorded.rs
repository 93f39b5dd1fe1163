//! The recorded path, taken where no unique index guards the dedupe key and the upload ledger
//! is on (`resend_check = "uncertain"`): no reading of the batch can be on the remote yet, so
//! it goes straight into the remote table, as the raw pipe would, with no stage and no
//! anti-join. The COPY runs in a remote transaction; the batch's ids are recorded in the
//! ledger and committed locally; then the remote commits, and the local transaction removes
//! the readings and the record together.

use std::sync::atomic::{AtomicBool, Ordering};

use super::claim::{begin_claim, end_local, send, Claim, Destination, Session};
use super::ledger::Ledger;
use super::workers::{BatchOutcome, Key};
use super::{refused, UploadError, UploadRequest};
use crate::config::Side;
use crate::data::pg::on_remote;
use crate::logging::Steps;

/// Outcome of the recorded path.
pub(super) enum Recorded {
    Done(Option<BatchOutcome>),
    /// The remote refused the batch's data; both sides were rolled back.
    Refused,
    /// Another batch of the run failed after its record, so these readings may include some the
    /// remote has already; both sides were rolled back and the batch goes through the stage.
    Uncertain,
}

pub(super) async fn batch(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
    session: &Session,
    request: UploadRequest<'_>,
    ledger: &Ledger,
    uncertain: &AtomicBool,
    after: Option<&Key>,
) -> Result<Recorded, UploadError> {
    let mut steps = Steps::new("upload", request.readings.table.bare());
    let rows = begin_claim(local, session, request, Claim::Next(after)).await?;
    let sent = send(
        remote,
        session,
        rows,
        request.readings,
        Destination::TableInTransaction,
    )
    .await;
    steps.done("claim and copy");
    match sent {
        Ok((ids, _)) if ids.is_empty() => {
            roll_back(local, remote).await?;
            Ok(Recorded::Done(None))
        }
        Ok((ids, last_key)) => {
            // Looked at after the claim: a failing batch raises the flag before its readings
            // go back to the queue, so a claim that took them sees it here.
            if uncertain.load(Ordering::SeqCst) {
                roll_back(local, remote).await?;
                return Ok(Recorded::Uncertain);
            }
            let record = ledger.record(&ids).await?;
            steps.done("ledger record");
            remote
                .batch_execute("commit")
                .await
                .map_err(on_remote("commit the batch"))?;
            steps.done("remote commit");
            // The remote has the readings now; a fault from here on leaves them under their
            // record, to be settled through the anti-join.
            session.commit_local(local, Some(record)).await?;
            steps.done("local commit");
            Ok(Recorded::Done(Some(BatchOutcome::copied(
                ids.len(),
                last_key,
            ))))
        }
        Err(e) if e.side() == Side::Remote && refused::is_refusal(e.code()) => {
            roll_back(local, remote).await?;
            tracing::debug!(error = %e, "copy refused; going through the stage");
            Ok(Recorded::Refused)
        }
        Err(e) => Err(e.into()),
    }
}

/// Rolls back both transactions of the batch.
async fn roll_back(
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
) -> Result<(), UploadError> {
    let (l, r) = tokio::join!(
        end_local(local, "rollback", "roll back the batch"),
        remote.batch_execute("rollback")
    );
    l?;
    r.map_err(on_remote("roll back the batch"))?;
    Ok(())
}
