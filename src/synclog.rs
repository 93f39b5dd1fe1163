//! The local `sync_logs` table: one row per upload run and per downloaded entity per run; the
//! `meter_sync_log` view shows the meter rows. Read back by status after a restart.

use tokio_postgres::GenericClient;

use crate::pg::PgError;

/// One `sync_logs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// `download` or `upload`.
    pub sync_type: &'static str,
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
                    &e.sync_type,
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
            .map_err(|err| PgError::query("local", "record sync_logs", err))?;
    }
    Ok(())
}
