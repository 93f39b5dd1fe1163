//! What one download run did, per entity, with exact counts and bounded detail.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::profile::OnMissingKind;

/// At most this many keys are kept per list in a report (counts stay exact).
pub const DETAIL_LIMIT: usize = 1000;

/// How an entity's rows were compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Not run (yet).
    #[default]
    #[serde(rename = "")]
    None,
    /// The local table was empty: every remote row copied straight in.
    Cold,
    /// Row versions or hashes compared, only new and changed rows fetched.
    Diff,
    /// Every remote row staged and compared.
    Full,
    /// Only the remote rows written since the last run, and the local rows written by others
    /// since then, fetched and compared (row versions and snapshots of a remote table).
    Incremental,
}

/// A row that was inserted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewRow {
    /// Key column values as text, in key order.
    pub key: Vec<String>,
    /// The row's `name` column, when the entity has one.
    pub name: Option<String>,
}

/// A row that was updated, with the columns whose values changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedRow {
    pub key: Vec<String>,
    pub columns: Vec<String>,
}

/// One entity's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityReport {
    pub entity: String,
    pub table: String,
    pub success: bool,
    /// How the rows were compared.
    pub strategy: Strategy,
    /// Rows (or, on the diff path, row hashes) received from the remote.
    pub fetched: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Rows deleted or deactivated because they are gone remotely (see `on_missing`).
    pub deleted: u64,
    /// What `deleted` counts.
    pub on_missing: OnMissingKind,
    /// Remote rows not applied because a referenced local row is missing.
    pub skipped: u64,
    pub new_rows: Vec<NewRow>,
    pub changed_rows: Vec<ChangedRow>,
    pub removed_keys: Vec<Vec<String>>,
    pub skipped_keys: Vec<Vec<String>>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

impl EntityReport {
    /// An empty report for an entity about to run.
    pub fn new(entity: &crate::profile::EntitySpec) -> Self {
        Self {
            entity: entity.name.to_string(),
            table: entity.table.to_string(),
            success: false,
            strategy: Strategy::None,
            fetched: 0,
            inserted: 0,
            updated: 0,
            deleted: 0,
            on_missing: entity.on_missing.kind(),
            skipped: 0,
            new_rows: Vec::new(),
            changed_rows: Vec::new(),
            removed_keys: Vec::new(),
            skipped_keys: Vec::new(),
            duration_ms: 0,
            error: None,
        }
    }

    /// Marks the entity failed; its changes were rolled back, so the counts are zeroed.
    pub fn fail(&mut self, error: String) {
        self.success = false;
        self.error = Some(error);
        self.inserted = 0;
        self.updated = 0;
        self.deleted = 0;
        self.skipped = 0;
        self.new_rows.clear();
        self.changed_rows.clear();
        self.removed_keys.clear();
        self.skipped_keys.clear();
    }
}

/// One download run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadReport {
    /// The tenant the run was filtered to (absent when it could not be resolved).
    pub tenant: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Entities in the order they ran.
    pub entities: Vec<EntityReport>,
    /// A failure of the whole run (tenant unresolved, a database unreachable, commit failed).
    pub error: Option<String>,
}

impl DownloadReport {
    /// True when the run and every entity succeeded.
    pub fn success(&self) -> bool {
        self.error.is_none() && self.entities.iter().all(|e| e.success)
    }

    /// The entity's report, if it ran.
    pub fn entity(&self, name: &str) -> Option<&EntityReport> {
        self.entities.iter().find(|e| e.entity == name)
    }

    /// The first error, of the run or of an entity (`entity: message`).
    pub fn first_error(&self) -> Option<String> {
        self.error.clone().or_else(|| {
            self.entities
                .iter()
                .find_map(|e| e.error.as_ref().map(|m| format!("{}: {m}", e.entity)))
        })
    }

    /// The `SyncResult` shape of spec document 000 (counts of meter, register and
    /// device_register), derived from this report.
    pub fn sync_result(&self) -> serde_json::Value {
        let counts = |name: &str| {
            let e = self.entity(name);
            serde_json::json!({
                "inserted": e.map_or(0, |e| e.inserted),
                "updated": e.map_or(0, |e| e.updated),
                "deleted": e.map_or(0, |e| e.deleted),
            })
        };
        serde_json::json!({
            "success": self.success(),
            "meters": counts("meter"),
            "registers": counts("register"),
            "deviceRegisters": counts("device_register"),
            "error": self.first_error(),
            "timestamp": self.started_at,
        })
    }
}
