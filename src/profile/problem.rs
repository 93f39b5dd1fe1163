//! The mistakes a profile can hold, each naming where it is.

use super::IdentError;

/// One mistake in a profile, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{at}: `{value}` is not a plain SQL identifier: {reason}")]
    BadIdent {
        at: String,
        value: String,
        reason: IdentError,
    },
    #[error("{at}: `{value}` is not a column type (expected e.g. bigint, text, varchar(255), numeric(12, 3), timestamptz)")]
    BadType { at: String, value: String },
    #[error("{at}: default {value} is not supported: {reason}")]
    BadDefault {
        at: String,
        value: String,
        reason: String,
    },
    #[error("{at}: convert `{value}` is not exact or checked")]
    BadConvert { at: String, value: String },
    #[error("{at}: has no columns")]
    NoColumns { at: String },
    #[error("{at}: time_zone {reason}")]
    BadTimeZone { at: String, reason: String },
    #[error("{at}: time_zone applies to timestamp and timestamptz columns only, not {sql_type}")]
    TimeZoneType { at: String, sql_type: String },
    #[error("{at}: column `{column}` is listed twice")]
    DuplicateColumn { at: String, column: String },
    #[error("{at}: key is empty")]
    EmptyKey { at: String },
    #[error("{at}: {what} column `{column}` is not in columns")]
    NotAColumn {
        at: String,
        what: &'static str,
        column: String,
    },
    #[error("entity `{entity}`: give exactly one of remote_table and remote_query")]
    RemoteSource { entity: String },
    #[error("entity `{entity}`: remote_query must be a single SELECT (or WITH ... SELECT) statement without `;`")]
    BadQuery { entity: String },
    #[error("entity `{entity}`: remote_query of a tenant-scoped entity (tenant_column is set) must contain $tenant_id")]
    QueryWithoutTenant { entity: String },
    #[error("entity `{entity}`: on_missing `{value}` is not delete, deactivate or keep")]
    BadOnMissing { entity: String, value: String },
    #[error("entity `{entity}`: on_missing = \"deactivate\" needs a boolean column `{column}` (set active_column)")]
    DeactivateColumn { entity: String, column: String },
    #[error("entity name `{name}` is used twice")]
    DuplicateEntity { name: String },
    #[error("table `{table}` is used by two entities")]
    DuplicateTable { table: String },
    #[error("{at}: table name `{table}` is reserved for the service's own tables")]
    ReservedTable { at: String, table: String },
    #[error("entity `{entity}`: depends on unknown entity `{dependency}`")]
    UnknownEntity { entity: String, dependency: String },
    #[error("entity `{entity}`: reference to `{target}` has {left} column(s) but {right} entity_column(s)")]
    ReferenceArity {
        entity: String,
        target: String,
        left: usize,
        right: usize,
    },
    #[error("entity `{entity}`: entity_columns `{column}` is not a column of entity `{target}`")]
    ReferenceColumn {
        entity: String,
        target: String,
        column: String,
    },
    #[error("dependency cycle: {path}")]
    Cycle { path: String },
    #[error("readings: after_upload `{value}` is not delete or mark")]
    BadAfterUpload { value: String },
    #[error("readings: resend_check `{value}` is not uncertain or every_batch")]
    BadResendCheck { value: String },
    #[error("entity `{entity}`: column `{column}` is reserved for the service's bookkeeping")]
    ReservedEntityColumn { entity: String, column: String },
    #[error("readings: column `{column}` is reserved for the service's bookkeeping")]
    ReservedColumn { column: String },
    #[error("the profile describes no entity and no readings table")]
    Empty,
}
