//! What the service reports about the local database: counts that the API, MCP, page and CLI
//! show. (The runtime status of runs is added by the service runtime.)

use chrono::{DateTime, Utc};
use serde::Serialize;
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

/// The latest `sync_logs` row of each kind of run (the upload, each downloaded entity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRun {
    pub sync_type: String,
    pub entity: Option<String>,
    pub success: bool,
    pub timestamp: DateTime<Utc>,
    pub duration_ms: Option<i32>,
    pub error_message: Option<String>,
}

/// The latest run of each kind, read back from `sync_logs` (so it survives restarts).
pub async fn last_runs(client: &impl GenericClient) -> Result<Vec<LastRun>, PgError> {
    let rows = client
        .query(
            "select distinct on (sync_type, entity) sync_type::text, entity::text, success, timestamp, duration_ms, error_message
             from sync_logs order by sync_type, entity, timestamp desc, id desc",
            &[],
        )
        .await
        .map_err(|e| PgError::query("local", "read sync_logs", e))?;
    Ok(rows
        .iter()
        .map(|r| LastRun {
            sync_type: r.get(0),
            entity: r.get(1),
            success: r.get(2),
            timestamp: r.get(3),
            duration_ms: r.get(4),
            error_message: r.get(5),
        })
        .collect())
}
