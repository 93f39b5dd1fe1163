//! Readings the remote keeps refusing: listed for the operator and released for another try.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::config::Side;
use crate::data::pg::PgError;
use crate::data::sql;
use crate::profile::ReadingsSpec;

/// A quarantined reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantinedReading {
    pub id: super::ReadingId,
    /// The uploaded columns as one row text, for the operator.
    pub row: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub quarantined_at: DateTime<Utc>,
}

/// Up to `limit` quarantined readings, by id.
pub async fn list(
    client: &impl GenericClient,
    readings: &ReadingsSpec,
    limit: i64,
) -> Result<Vec<QuarantinedReading>, PgError> {
    let rows = client
        .query(&sql::list_quarantined(readings), &[&limit])
        .await
        .map_err(|e| PgError::query(Side::Local, "list quarantined readings", e))?;
    Ok(rows
        .iter()
        .map(|r| QuarantinedReading {
            id: super::ReadingId::from_text(r.get(0)),
            row: r.get(1),
            attempts: r.get(2),
            error: r.get(3),
            quarantined_at: r.get(4),
        })
        .collect())
}

/// Puts quarantined readings (all, or the given ids) back in the queue with their attempt count
/// reset; returns the released ids.
pub async fn release(
    client: &impl GenericClient,
    readings: &ReadingsSpec,
    ids: Option<&[super::ReadingId]>,
) -> Result<Vec<super::ReadingId>, PgError> {
    let rows = match ids {
        None => {
            client
                .query(&sql::release_quarantined(readings, true), &[])
                .await
        }
        Some(ids) => {
            let ids: Vec<String> = ids.iter().map(super::ReadingId::text).collect();
            client
                .query(&sql::release_quarantined(readings, false), &[&ids])
                .await
        }
    }
    .map_err(|e| PgError::query(Side::Local, "release quarantined readings", e))?;
    Ok(rows
        .iter()
        .map(|r| super::ReadingId::from_text(r.get(0)))
        .collect())
}
