//! The local `sync_logs` table: one row per upload run and per downloaded entity per run; the
//! `meter_sync_log` view shows the meter rows. Read back by status after a restart.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use crate::config::Side;
use crate::pg::PgError;

/// What a `sync_logs` row records: an upload run or one entity of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncType {
    Upload,
    Download,
}

impl SyncType {
    /// The value of the `sync_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncType::Upload => "upload",
            SyncType::Download => "download",
        }
    }

    /// The type named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        [SyncType::Upload, SyncType::Download]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

impl fmt::Display for SyncType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `sync_logs` row to append.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub sync_type: SyncType,
    /// The entity name for downloads.
    pub entity: Option<String>,
    pub success: bool,
    pub records_processed: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub error_message: Option<String>,
    pub duration_ms: i64,
    /// Structured extras (new keys, changed columns, ...), bounded in size by the caller.
    pub details: Option<serde_json::Value>,
}

/// Appends entries in one statement.
pub async fn record(client: &impl GenericClient, entries: &[LogEntry]) -> Result<(), PgError> {
    for e in entries {
        let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        client
            .execute(
                "insert into sync_logs (sync_type, entity, success, records_processed, inserted, updated, deleted, skipped,
                                        error_message, duration_ms, details)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &e.sync_type.as_str(),
                    &e.entity,
                    &e.success,
                    &clamp(e.records_processed),
                    &clamp(e.inserted),
                    &clamp(e.updated),
                    &clamp(e.deleted),
                    &clamp(e.skipped),
                    &e.error_message,
                    &clamp(e.duration_ms),
                    &e.details,
                ],
            )
            .await
            .map_err(|err| PgError::query(Side::Local, "record sync_logs", err))?;
    }
    Ok(())
}

/// Deletes rows older than `days`; returns how many.
pub async fn prune(client: &impl GenericClient, days: u32) -> Result<u64, PgError> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    client
        .execute(
            "delete from sync_logs where timestamp < now() - make_interval(days => $1)",
            &[&days],
        )
        .await
        .map_err(|err| PgError::query(Side::Local, "prune sync_logs", err))
}

/// A `sync_logs` row as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogRow {
    pub id: i64,
    pub sync_type: String,
    pub entity: Option<String>,
    pub success: bool,
    pub records_processed: i32,
    pub inserted: i32,
    pub updated: i32,
    pub deleted: i32,
    pub skipped: i32,
    pub error_message: Option<String>,
    pub duration_ms: Option<i32>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    pub timestamp: DateTime<Utc>,
}

/// The newest `limit` rows, of one `sync_type` or all.
pub async fn recent(
    client: &impl GenericClient,
    sync_type: Option<&str>,
    limit: i64,
) -> Result<Vec<LogRow>, PgError> {
    let rows = client
        .query(
            "select id, sync_type::text, entity::text, success, records_processed, inserted, updated, deleted,
                    skipped, error_message, duration_ms, details, timestamp
             from sync_logs where $1::text is null or sync_type = $1
             order by timestamp desc, id desc limit $2",
            &[&sync_type, &limit],
        )
        .await
        .map_err(|err| PgError::query(Side::Local, "read sync_logs", err))?;
    Ok(rows
        .iter()
        .map(|r| LogRow {
            id: r.get(0),
            sync_type: r.get(1),
            entity: r.get(2),
            success: r.get(3),
            records_processed: r.get(4),
            inserted: r.get(5),
            updated: r.get(6),
            deleted: r.get(7),
            skipped: r.get(8),
            error_message: r.get(9),
            duration_ms: r.get(10),
            details: r.get(11),
            timestamp: r.get(12),
        })
        .collect())
}
