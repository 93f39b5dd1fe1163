//! Profiles: which tables are synced and how. A profile is TOML (see `profiles/default.toml`);
//! [`Profile::parse`] turns it into specs that are valid by construction: identifiers are plain,
//! keys are columns, references resolve, dependencies have no cycle, and entities come out in
//! dependency order. The `sql` module builds statements from these specs only.

mod ident;
mod problem;
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

/// The tenant-scoped variant of the spec 004 profile: its `meters` filtered by a central
/// `meters.tenant_id` (the commented `tenant_column` line of the file, in effect).
pub fn db_sync_process_tenant_scoped_toml() -> String {
    DB_SYNC_PROCESS_PROFILE_TOML.replace(
        "\n# tenant_column = \"tenant_id\"\n",
        "\ntenant_column = \"tenant_id\"\n",
    )
}

/// The local bookkeeping column of every entity table: the remote row version it was copied
/// from (see the download engine).
pub const VERSION_COLUMN: &str = "meter_sync_version";

/// Tables the service owns locally; a profile may not use these names.
pub const RESERVED_TABLES: &[&str] = &[
    "sync_logs",
    "meter_sync_log",
    "meter_sync_schema_migrations",
];

/// A column's default value in the local table: a literal or one of a few known functions,
/// never arbitrary SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    /// A numeric literal, as validated digits (`-12.5`, `0.000`, `1e3`).
    Numeric(String),
    /// A string literal (written as an escaped SQL string).
    Text(String),
    /// A function without arguments: `now()`, `current_timestamp`, `clock_timestamp()`,
    /// `gen_random_uuid()`, ...
    Function(DefaultFunction),
    /// `nextval` of a named sequence (created by `migrate` when it is missing).
    NextVal(TableName),
}

/// The functions a default may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultFunction {
    Now,
    CurrentTimestamp,
    CurrentDate,
    ClockTimestamp,
    StatementTimestamp,
    TransactionTimestamp,
    LocalTimestamp,
    GenRandomUuid,
}

impl DefaultFunction {
    /// Every function with its SQL text, as a profile writes it.
    pub const ALL: [(DefaultFunction, &'static str); 8] = [
        (DefaultFunction::Now, "now()"),
        (DefaultFunction::CurrentTimestamp, "current_timestamp"),
        (DefaultFunction::CurrentDate, "current_date"),
        (DefaultFunction::ClockTimestamp, "clock_timestamp()"),
        (DefaultFunction::StatementTimestamp, "statement_timestamp()"),
        (
            DefaultFunction::TransactionTimestamp,
            "transaction_timestamp()",
        ),
        (DefaultFunction::LocalTimestamp, "localtimestamp"),
        (DefaultFunction::GenRandomUuid, "gen_random_uuid()"),
    ];

    /// The SQL text.
    pub fn sql(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, text)| *text)
            .unwrap_or("now()")
    }
}

impl DefaultValue {
    /// The default as SQL text (literals escaped, functions from the fixed list).
    pub fn sql(&self) -> String {
        match self {
            DefaultValue::Bool(b) => b.to_string(),
            DefaultValue::Int(i) => i.to_string(),
            DefaultValue::Numeric(n) => n.clone(),
            DefaultValue::Text(t) => {
                format!("E'{}'", t.replace('\\', "\\\\").replace('\'', "''"))
            }
            DefaultValue::Function(f) => f.sql().to_string(),
            DefaultValue::NextVal(sequence) => format!("nextval('{sequence}'::regclass)"),
        }
    }
}

/// How strictly a column's values must fit the other side's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Convert {
    /// Only pairs where no value can change or be refused (the default).
    #[default]
    Exact,
    /// Also narrowing pairs that PostgreSQL can only refuse per value, never alter (`int8` ->
    /// `int4`, `text` -> `varchar(n)`): a value that does not fit fails its entity (download)
    /// or quarantines its reading (upload), naming key and column.
    Checked,
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
    /// The column's name on the remote when it differs (`remote_name`).
    pub remote_name: Option<Ident>,
    pub convert: Convert,
}

impl ColumnSpec {
    /// A column with the given name and type and nothing else set.
    pub fn new(name: Ident, sql_type: SqlType) -> Self {
        Self {
            name,
            sql_type,
            nullable: true,
            default: None,
            time_zone: None,
            remote_name: None,
            convert: Convert::Exact,
        }
    }

    /// The column's name on the remote.
    pub fn remote(&self) -> &Ident {
        self.remote_name.as_ref().unwrap_or(&self.name)
    }
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

    /// The remote names of the key columns.
    pub fn remote_key(&self) -> Vec<&Ident> {
        self.key
            .iter()
            .map(|k| self.column(k.as_str()).map(ColumnSpec::remote).unwrap_or(k))
            .collect()
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

/// When an upload batch compares its readings with the remote's before inserting them
/// (`resend_check`), where no unique index on the remote guards the dedupe key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResendCheck {
    /// Only readings whose earlier send is uncertain: each batch is recorded locally before its
    /// remote commit and the record removed with the readings, so a reading still queued under
    /// a record may be on the remote already, any other cannot.
    #[default]
    Uncertain,
    /// Every batch, as if any queued reading might be on the remote already: for a queue that
    /// some other process may also have sent from, or that may hold the same reading twice.
    EveryBatch,
}

/// The readings table uploaded to the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsSpec {
    pub table: TableName,
    pub remote_table: TableName,
    /// The local key of a reading, of any type with equality (`bigserial` when `migrate`
    /// creates it). Uploaded only when it is also one of `columns` (a uuid minted at the site,
    /// say, then usually the dedupe key).
    pub id_column: Ident,
    /// The uploaded columns.
    pub columns: Vec<ColumnSpec>,
    /// Upload order, oldest first; may name `id_column`.
    pub order_by: Vec<Ident>,
    /// Columns that identify a reading on the remote: a resend with the same key is a no-op.
    pub dedupe_key: Vec<Ident>,
    pub after_upload: AfterUpload,
    pub resend_check: ResendCheck,
    /// The readings column holding the tenant (`tenant_column`): NULLs are stamped with the
    /// site's tenant on the way up, readings of another tenant are quarantined, never sent.
    pub tenant_column: Option<Ident>,
}

impl ReadingsSpec {
    /// The column of `columns` with this name.
    pub fn column(&self, name: &Ident) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| &c.name == name)
    }

    /// Whether the local key is uploaded (listed in `columns`).
    pub fn id_is_uploaded(&self) -> bool {
        self.column(&self.id_column).is_some()
    }

    /// The remote names of the given columns (of `columns`).
    pub fn remote_names<'a>(&'a self, names: &'a [Ident]) -> impl Iterator<Item = &'a Ident> {
        names
            .iter()
            .map(|n| self.column(n).map(ColumnSpec::remote).unwrap_or(n))
    }

    /// The remote names of the dedupe key's columns that compare with `=` (a nullable one
    /// compares with `is not distinct from`, which no index serves).
    pub fn equal_dedupe_key(&self) -> impl Iterator<Item = &Ident> {
        self.dedupe_key
            .iter()
            .filter_map(|k| self.column(k))
            .filter(|c| !c.nullable)
            .map(ColumnSpec::remote)
    }

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
