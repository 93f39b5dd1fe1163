//! What the service reports about the local database: counts that the API, MCP, page and CLI
//! show. (The runtime status of runs is added by the service runtime.)

use tokio_postgres::GenericClient;

use crate::pg::PgError;
use crate::profile::{OnMissing, Profile};

/// The local meter count of spec 003 (property 7): active rows of the profile's meter entity
/// (`meter`, or `meters` in the 004 layout); all rows when the entity is never deactivated.
/// `None` when the profile has no meter entity.
pub async fn meter_count(
    client: &impl GenericClient,
    profile: &Profile,
) -> Result<Option<i64>, PgError> {
    let Some(entity) = profile.entity("meter").or_else(|| profile.entity("meters")) else {
        return Ok(None);
    };
    let active = match &entity.on_missing {
        OnMissing::Deactivate { column } => Some(column),
        _ => None,
    };
    let row = client
        .query_one(&crate::sql::count_active(&entity.table, active), &[])
        .await
        .map_err(|e| PgError::query("local", format!("count {}", entity.table), e))?;
    Ok(Some(row.get(0)))
}
