//! What one upload run did.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A reading's local id (`id_column`), whatever its type: an integer id is a JSON number, any
/// other (a uuid, text) its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ReadingId {
    Int(i64),
    Text(String),
}

impl ReadingId {
    /// From the id's text form (`id::text`): an integer when it reads as one.
    pub fn from_text(text: String) -> Self {
        match text.parse() {
            Ok(n) => ReadingId::Int(n),
            Err(_) => ReadingId::Text(text),
        }
    }

    /// The id's text form, as SQL reads it back into the id column's type.
    pub fn text(&self) -> String {
        match self {
            ReadingId::Int(n) => n.to_string(),
            ReadingId::Text(t) => t.clone(),
        }
    }
}

impl std::fmt::Display for ReadingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadingId::Int(n) => write!(f, "{n}"),
            ReadingId::Text(t) => f.write_str(t),
        }
    }
}

/// A reading the remote refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedReading {
    /// The local id.
    pub id: ReadingId,
    pub error: String,
    /// Whether it reached `MAX_ROW_FAILURES` and is now quarantined.
    pub quarantined: bool,
}

/// The queue of readings waiting to be uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueueStats {
    /// Readings not yet uploaded (and not quarantined).
    pub size: i64,
    pub quarantined: i64,
    /// Age in seconds of the oldest queued reading, by its timestamp.
    pub oldest_age_seconds: Option<f64>,
}

/// One upload run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadReport {
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Readings newly inserted on the remote.
    pub uploaded: u64,
    /// Readings the remote already had (a resend after a fault): not inserted twice.
    pub deduplicated: u64,
    /// Local readings deleted (or marked, with `after_upload = "mark"`) after the remote commit.
    pub removed: u64,
    pub batches: u64,
    /// Readings the remote refused this run (first 1000), and how many there were.
    pub rejected: Vec<RejectedReading>,
    pub rejected_count: u64,
    /// Readings quarantined this run.
    pub quarantined: u64,
    /// Synchronized readings purged after `READING_RETENTION_DAYS` (`after_upload = "mark"`).
    pub purged: u64,
    pub queue_before: Option<QueueStats>,
    pub queue_after: Option<QueueStats>,
    /// Why the run stopped early; readings not uploaded stay queued.
    pub error: Option<String>,
}

impl UploadReport {
    /// True when the run ended without error (rejected readings are reported, not errors).
    pub fn success(&self) -> bool {
        self.error.is_none()
    }
}
