//! The local `sync_logs` table: one row per upload run and per downloaded entity per run; the
//! `meter_sync_log` view shows the meter rows. Read back by status after a restart.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use crate::config::Side;
use crate::data::pg::PgError;

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

/// Appends entries, all with one timestamp: the entities of one download share it, which is
/// how [`history`] tells the runs apart.
pub async fn record(client: &impl GenericClient, entries: &[LogEntry]) -> Result<(), PgError> {
    let at = Utc::now();
    for e in entries {
        let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        client
            .execute(
                "insert into sync_logs (sync_type, entity, success, records_processed, inserted, updated, deleted, skipped,
                                        error_message, duration_ms, details, timestamp)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
                    &at,
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

/// The most rows one read returns (the API's and MCP's `limit`).
pub const MAX_LIMIT: i64 = 1000;

/// Why a read of the newest rows was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("limit={0} is out of range: give 1 to {MAX_LIMIT}")]
    Limit(i64),
    #[error("{name}={given:?} is not known: give upload or download")]
    SyncType { name: &'static str, given: String },
}

/// A checked request for the newest rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsQuery {
    pub limit: i64,
    pub sync_type: Option<SyncType>,
}

impl LogsQuery {
    /// Checks `limit` (1 to [`MAX_LIMIT`]) and the type (empty: any); `type_name` is what the
    /// caller calls the type parameter, for the message (`sync_type` in the API, `type` in MCP).
    pub fn new(
        limit: i64,
        sync_type: Option<&str>,
        type_name: &'static str,
    ) -> Result<Self, QueryError> {
        let limit = check_limit(limit)?;
        let sync_type = match sync_type.filter(|t| !t.is_empty()) {
            None => None,
            Some(given) => Some(SyncType::parse(given).ok_or_else(|| QueryError::SyncType {
                name: type_name,
                given: given.to_string(),
            })?),
        };
        Ok(Self { limit, sync_type })
    }
}

/// `limit` when it is 1 to [`MAX_LIMIT`].
pub fn check_limit(limit: i64) -> Result<i64, QueryError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(QueryError::Limit(limit))
    }
}

/// The columns of a [`LogRow`], in its order.
const ROW_COLUMNS: &str =
    "id, sync_type::text, entity::text, success, records_processed, inserted, \
     updated, deleted, skipped, error_message, duration_ms, details, timestamp";

/// [`ROW_COLUMNS`] with `details` left NULL: the status reads the latest rows every few
/// seconds and shows none of their details (up to hundreds of keys per entity).
const SUMMARY_COLUMNS: &str =
    "id, sync_type::text, entity::text, success, records_processed, inserted, \
     updated, deleted, skipped, error_message, duration_ms, null::jsonb, timestamp";

fn log_row(r: &tokio_postgres::Row) -> LogRow {
    LogRow {
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
    }
}

fn read_error(err: tokio_postgres::Error) -> PgError {
    PgError::query(Side::Local, "read sync_logs", err)
}

/// The newest rows the query asks for.
pub async fn recent(client: &impl GenericClient, query: LogsQuery) -> Result<Vec<LogRow>, PgError> {
    let LogsQuery { limit, sync_type } = query;
    let rows = client
        .query(
            &format!(
                "select {ROW_COLUMNS} from sync_logs where $1::text is null or sync_type = $1
                 order by timestamp desc, id desc limit $2"
            ),
            &[&sync_type.map(SyncType::as_str), &limit],
        )
        .await
        .map_err(read_error)?;
    Ok(rows.iter().map(log_row).collect())
}

/// The latest row of each part: the upload, and each entity ever downloaded (without details).
pub async fn latest_per_part(client: &impl GenericClient) -> Result<Vec<LogRow>, PgError> {
    let rows = client
        .query(
            &format!(
                "select distinct on (sync_type, entity) {SUMMARY_COLUMNS}
                 from sync_logs order by sync_type, entity, timestamp desc, id desc"
            ),
            &[],
        )
        .await
        .map_err(read_error)?;
    Ok(rows.iter().map(log_row).collect())
}

/// The latest download row of any of `entities` (without details).
pub async fn latest_download(
    client: &impl GenericClient,
    entities: &[String],
) -> Result<Option<LogRow>, PgError> {
    let row = client
        .query_opt(
            &format!(
                "select {SUMMARY_COLUMNS} from sync_logs where sync_type = 'download' and entity = any($1)
                 order by timestamp desc, id desc limit 1"
            ),
            &[&entities],
        )
        .await
        .map_err(read_error)?;
    Ok(row.as_ref().map(log_row))
}

/// Readings uploaded, summed over the upload rows kept.
pub async fn total_uploaded(client: &impl GenericClient) -> Result<i64, PgError> {
    let row = client
        .query_one(
            "select coalesce(sum(inserted), 0)::bigint from sync_logs where sync_type = 'upload'",
            &[],
        )
        .await
        .map_err(|e| PgError::query(Side::Local, "sum uploads in sync_logs", e))?;
    Ok(row.get(0))
}

/// One upload run on the history chart.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UploadPoint {
    pub at: DateTime<Utc>,
    pub success: bool,
    /// Readings newly inserted on the central.
    pub uploaded: i64,
    /// Readings queued when the run started and when it ended (null where it could not be
    /// counted, or the run was recorded before these were kept).
    pub queue_before: Option<i64>,
    pub queue_after: Option<i64>,
    /// Readings uploaded per minute over the time since the previous upload run (null for the
    /// first run of the window).
    pub rate_per_minute: Option<f64>,
}

/// One meter sync (download) run on the history chart: its entities' rows summed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DownloadPoint {
    pub at: DateTime<Utc>,
    /// Every entity succeeded.
    pub success: bool,
    /// Rows inserted, updated and deleted locally, over all entities.
    pub changes: i64,
    pub entities: i64,
}

/// The runs of the last hours, oldest first, for the page's chart.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct History {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub uploads: Vec<UploadPoint>,
    pub downloads: Vec<DownloadPoint>,
}

/// The longest window [`history`] reads, in hours.
pub const MAX_HISTORY_HOURS: i64 = 168;
/// The most runs of each kind [`history`] returns: the newest ones (a day of one upload a
/// minute fits twice).
pub const MAX_HISTORY_POINTS: i64 = 2880;

/// The runs of the last `hours` (1 to [`MAX_HISTORY_HOURS`]).
pub async fn history(client: &impl GenericClient, hours: i64) -> Result<History, PgError> {
    let hours = i32::try_from(hours.clamp(1, MAX_HISTORY_HOURS)).unwrap_or(24);
    let window = client
        .query_one(
            "select now() - make_interval(hours => $1), now()",
            &[&hours],
        )
        .await
        .map_err(read_error)?;
    let (since, until): (DateTime<Utc>, DateTime<Utc>) = (window.get(0), window.get(1));
    // The rate looks one run further back than the window, so the first point has one too.
    let uploads = client
        .query(
            "select at, success, uploaded, queue_before, queue_after, rate from (
                 select timestamp as at, success, inserted::int8 as uploaded,
                        (details->'queue_before'->>'size')::int8 as queue_before,
                        (details->'queue_after'->>'size')::int8 as queue_after,
                        (inserted * 60.0 / nullif(extract(epoch from timestamp - lag(timestamp) over (order by timestamp, id)), 0))::float8 as rate
                 from sync_logs
                 where sync_type = 'upload' and timestamp > $1::timestamptz - interval '1 day'
                 order by timestamp desc, id desc
                 limit $2::int8 + 1
             ) runs
             where at > $1
             order by at",
            &[&since, &MAX_HISTORY_POINTS],
        )
        .await
        .map_err(read_error)?
        .iter()
        .map(|r| UploadPoint {
            at: r.get(0),
            success: r.get(1),
            uploaded: r.get(2),
            queue_before: r.get(3),
            queue_after: r.get(4),
            rate_per_minute: r.get(5),
        })
        .collect();
    let downloads = client
        .query(
            "select at, success, changes, entities from (
                 select timestamp as at, bool_and(success) as success,
                        sum(inserted + updated + deleted)::int8 as changes, count(*) as entities
                 from sync_logs
                 where sync_type = 'download' and timestamp > $1
                 group by timestamp
                 order by timestamp desc
                 limit $2
             ) runs
             order by at",
            &[&since, &MAX_HISTORY_POINTS],
        )
        .await
        .map_err(read_error)?
        .iter()
        .map(|r| DownloadPoint {
            at: r.get(0),
            success: r.get(1),
            changes: r.get(2),
            entities: r.get(3),
        })
        .collect();
    Ok(History {
        since,
        until,
        uploads,
        downloads,
    })
}
