//! The upload half of `meter-sync check`: the readings columns checked on both sides by the type
//! rule, the dedupe strategy chosen, and every statement of a batch prepared (the claims, the
//! removal, the remote stage and insert, the bookkeeping, the upload ledger's), without
//! claiming or sending a reading. The connections used are closed afterwards, taking the remote stage with them.

use super::claim::Session;
use super::{plan, UploadError, UploadRequest};
use crate::data::pg::{on_local, Pools};
use crate::data::sql;

/// Checks the readings part of the profile without moving anything.
pub async fn dry_run(pools: &Pools, request: UploadRequest<'_>) -> Result<(), UploadError> {
    let readings = request.readings;
    let local = pools.local_with_retry(request.connect).await?;
    let tenant = match &readings.tenant_column {
        Some(_) => {
            Some(crate::data::tenant::resolve(&**local, request.tenant, request.profile).await?)
        }
        None => None,
    };
    let plan = plan::plan(pools, request, tenant).await?;
    let mut statements = vec![
        sql::record_failure(readings),
        sql::queue_stats(readings),
        sql::list_quarantined(readings),
        sql::release_quarantined(readings, false),
    ];
    statements.extend(plan.outgoing.quarantine_unfit(readings));
    if let (Some(column), Some(tenant)) = (&readings.tenant_column, &plan.outgoing.tenant) {
        statements.push(sql::quarantine_other_tenants(readings, column, tenant));
    }
    for statement in &statements {
        local
            .prepare(statement)
            .await
            .map_err(on_local("prepare the readings bookkeeping"))?;
    }
    let recorded = plan.conflict_target.is_none()
        && readings.resend_check == crate::profile::ResendCheck::Uncertain;
    super::ledger::dry_run(&local, readings, &plan.outgoing, recorded).await?;
    let mut session = Session::open(pools, request, &plan).await?;
    session.discard();
    Ok(())
}
