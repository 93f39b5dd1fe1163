//! The full strategy: every remote row into the stage (`download --full`, or the diff when
//! most rows differ): compares every value, so it also repairs local edits of mirrored rows.

use tokio_postgres::Transaction;

use super::entity::Source;
use super::rows::{check_keys, pipe, skip};
use super::{EntityError, EntityReport, Strategy};
use crate::data::sql;
use crate::data::sql::Target;

/// Full strategy: every remote row into the stage; returns the stage as the present set.
pub(super) async fn stage(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
    targets: &[Target<'_>],
    report: &mut EntityReport,
) -> Result<String, EntityError> {
    let entity = source.entity;
    report.strategy = Strategy::Full;
    let stage = sql::stage_name(entity);
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(&source.remote_select),
        &sql::copy_into_stage(entity),
        "write the stage table",
    )
    .await?;
    check_keys(ltx, entity, &stage).await?;
    if let Some(statement) = sql::skip_unreferenced(entity, targets) {
        report.skipped += skip(ltx, &statement, entity, report).await?;
    }
    Ok(stage)
}
