//! Profiles: which tables are synced and how. A profile is TOML (see `profiles/default.toml`);
//! [`Profile::parse`] turns it into specs that are valid by construction: identifiers are plain,
//! keys are columns, references resolve, dependencies have no cycle, and entities come out in
//! dependency order. The `sql` module builds statements from these specs only.

mod ident;
mod raw;
mod validate;

use std::path::Path;

pub use ident::{
    quote_ident, unquote_ident, Ident, IdentError, SqlType, TableName, TenantId, TenantIdError,
    TimeZone,
};

/// The built-in default profile (spec documents 000/003 for configuration tables, 004 for
/// readings), embedded in the binary.
pub const DEFAULT_PROFILE_TOML: &str = include_str!("../../profiles/default.toml");

/// The layout of spec document 004 (`meters` with varchar `meter_id`, varchar `tenant_id`).
pub const DB_SYNC_PROCESS_PROFILE_TOML: &str = include_str!("../../profiles/db-sync-process.toml");

/// The local bookkeeping column of every entity table: the remote row version it was copied
/// from (see the download engine).
pub const VERSION_COLUMN: &str = "meter_sync_version";

/// Tables the service owns locally; a profile may not use these names.
pub const RESERVED_TABLES: &[&str] = &[
    "sync_logs",
    "meter_sync_log",
    "meter_sync_schema_migrations",
];

/// A column's default value in the local table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    /// `now()`.
    Now,
}

/// A synced column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: Ident,
    pub sql_type: SqlType,
    pub nullable: bool,
    pub default: Option<DefaultValue>,
    /// The zone of the naive side when this column is a `timestamp` on one side and a
    /// `timestamptz` on the other (`time_zone`); values are converted through it.
    pub time_zone: Option<TimeZone>,
}

/// A remote `SELECT` given by the profile. `$tenant_id` in it stands for the site's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteQuery {
    text: String,
}

impl RemoteQuery {
    /// The marker in a query that stands for the tenant id.
    pub const TENANT_PLACEHOLDER: &'static str = "$tenant_id";

    /// The query as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the query filters by tenant.
    pub fn uses_tenant(&self) -> bool {
        self.text.contains(Self::TENANT_PLACEHOLDER)
    }

    /// The query with `$tenant_id` replaced by the tenant's literal (see [`TenantId::literal`]).
    pub fn render(&self, tenant: &TenantId) -> String {
        self.text
            .replace(Self::TENANT_PLACEHOLDER, &tenant.literal())
    }
}

/// Where an entity's remote rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSource {
    /// A table, filtered by `tenant_column` when the entity has one.
    Table(TableName),
    /// A query, which does its own filtering.
    Query(RemoteQuery),
}

/// What happens to a local row whose key is no longer present remotely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnMissing {
    Delete,
    /// Set this boolean column to false.
    Deactivate {
        column: Ident,
    },
    Keep,
}

impl OnMissing {
    /// What is done, without the column: as reports and logs name it.
    pub fn kind(&self) -> OnMissingKind {
        match self {
            OnMissing::Delete => OnMissingKind::Delete,
            OnMissing::Deactivate { .. } => OnMissingKind::Deactivate,
            OnMissing::Keep => OnMissingKind::Keep,
        }
    }
}

/// [`OnMissing`] without its column, serialised as the profile writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingKind {
    Delete,
    Deactivate,
    Keep,
}

impl OnMissingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMissingKind::Delete => "delete",
            OnMissingKind::Deactivate => "deactivate",
            OnMissingKind::Keep => "keep",
        }
    }
}

impl std::fmt::Display for OnMissingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Local rows of another entity that must exist before a row of this one is inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub columns: Vec<Ident>,
    pub entity: Ident,
    pub entity_columns: Vec<Ident>,
}

/// One mirrored configuration table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySpec {
    pub name: Ident,
    /// The local table.
    pub table: TableName,
    pub remote: RemoteSource,
    /// The columns identifying a row (non-empty, all in `columns`).
    pub key: Vec<Ident>,
    pub columns: Vec<ColumnSpec>,
    /// The remote column holding the tenant; `None`: not filtered by `tenant_column`.
    pub tenant_column: Option<Ident>,
    pub on_missing: OnMissing,
    /// Entities synced before this one (explicit plus those named by `references`).
    pub depends_on: Vec<Ident>,
    pub references: Vec<Reference>,
}

impl EntitySpec {
    /// Whether the remote rows are restricted to the site's tenant.
    pub fn is_tenant_scoped(&self) -> bool {
        match &self.remote {
            RemoteSource::Table(_) => self.tenant_column.is_some(),
            RemoteSource::Query(q) => q.uses_tenant(),
        }
    }

    /// The column, if the entity has it.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name.as_str() == name)
    }

    /// Columns that are not part of the key.
    pub fn value_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| !self.key.contains(&c.name))
    }
}

/// What happens to local readings once the remote has committed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUpload {
    Delete,
    /// Set `is_synchronized` and purge after `READING_RETENTION_DAYS`.
    Mark,
}

/// The readings table uploaded to the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsSpec {
    pub table: TableName,
    pub remote_table: TableName,
    /// The local surrogate key (`bigserial`), never uploaded.
    pub id_column: Ident,
    /// The uploaded columns.
    pub columns: Vec<ColumnSpec>,
    /// Upload order, oldest first; may name `id_column`.
    pub order_by: Vec<Ident>,
    /// Columns that identify a reading on the remote: a resend with the same key is a no-op.
    pub dedupe_key: Vec<Ident>,
    pub after_upload: AfterUpload,
    /// The readings column holding the tenant (`tenant_column`): NULLs are stamped with the
    /// site's tenant on the way up, readings of another tenant are quarantined, never sent.
    pub tenant_column: Option<Ident>,
}

impl ReadingsSpec {
    /// Local bookkeeping columns the service adds to the readings table.
    pub const LOCAL_COLUMNS: &'static [&'static str] = &[
        "is_synchronized",
        "sync_attempts",
        "sync_error",
        "quarantined_at",
    ];
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Where it came from (`built-in default` or a path), for messages.
    pub origin: String,
    /// Entities in dependency order.
    pub entities: Vec<EntitySpec>,
    pub readings: Option<ReadingsSpec>,
}

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {origin} is not valid: {message}")]
    Syntax { origin: String, message: String },
    #[error("profile {origin} is not valid:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<validate::Problem>,
    },
}

pub use validate::Problem;

impl Profile {
    /// The built-in default profile.
    pub fn builtin_default() -> Result<Self, ProfileError> {
        Self::parse(DEFAULT_PROFILE_TOML, "built-in default")
    }

    /// The file named by `SYNC_PROFILE`, or the built-in default.
    pub fn load(path: Option<&Path>) -> Result<Self, ProfileError> {
        match path {
            None => Self::builtin_default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates profile TOML.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let raw: raw::RawProfile = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            origin: origin.to_string(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at line {})", text[..s.start].lines().count().max(1)))
                    .unwrap_or_default(),
        })?;
        validate::validate(raw, origin).map_err(|problems| ProfileError::Invalid {
            origin: origin.to_string(),
            problems,
        })
    }

    /// The entity with this name.
    pub fn entity(&self, name: &str) -> Option<&EntitySpec> {
        self.entities.iter().find(|e| e.name.as_str() == name)
    }

    /// The meter entity (`meter`, or `meters` in the 004 layout), if any.
    pub fn meter_entity(&self) -> Option<&EntitySpec> {
        METER_ENTITIES.iter().find_map(|n| self.entity(n))
    }

    /// The tenant entity (`tenant`, or `tenants`), if any.
    pub fn tenant_entity(&self) -> Option<&EntitySpec> {
        TENANT_ENTITIES.iter().find_map(|n| self.entity(n))
    }
}

/// The entity names of the meter and tenant tables in the two shipped layouts.
pub const METER_ENTITIES: [&str; 2] = ["meter", "meters"];
pub const TENANT_ENTITIES: [&str; 2] = ["tenant", "tenants"];

#[cfg(test)]
mod tests;
