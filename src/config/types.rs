//! The value types of the configuration: database connection settings and their side, pool,
//! retry and log settings, the mass-delete guard.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::Secret;

/// TLS mode for a database connection, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verification; plain otherwise.
    Prefer,
    /// TLS always, without certificate verification.
    Require,
    /// TLS, certificate chain verified against the CA, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What sits between the agent and a database server (`POSTGRES_CLIENT_POOL_MODE`): the server
/// itself, or a connection pooler such as PgBouncer in session or transaction mode. It decides
/// how session settings are applied and what may outlive a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// The server: timeouts as startup options.
    #[default]
    Direct,
    /// A pooler that gives each client connection one server connection for its whole life:
    /// no startup options (PgBouncer refuses them); timeouts set after connecting.
    Session,
    /// A pooler that lends a server connection for one transaction only: no startup options,
    /// no session settings, nothing that outlives a transaction; timeouts `set local` in each.
    Transaction,
}

impl FromStr for PoolMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "direct" => PoolMode::Direct,
            "session" => PoolMode::Session,
            "transaction" => PoolMode::Transaction,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Direct => "direct",
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        })
    }
}

/// Connection settings of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Which database this is; used in messages.
    pub side: Side,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// Whether a pooler stands in front of the server (always `Direct` for the local one).
    pub pool_mode: PoolMode,
}

impl DbConfig {
    /// `host:port/db` for messages (no secret in it).
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Connection pool settings, shared by both pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub max_size: usize,
    pub idle_timeout: Duration,
    pub connection_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS`; zero is none.
    pub statement_timeout: Duration,
    /// `DB_KEEPALIVES_IDLE_SECONDS`.
    pub keepalives_idle: Duration,
}

/// The API's HTTPS identity (`API_TLS_CERT`, `API_TLS_KEY`): PEM files read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Retry policy: attempt `n` (0-based) waits a random time up to `base * 2^n` before the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub max_connection_retries: u32,
    pub max_query_retries: u32,
    pub base: Duration,
}

/// Which of the two databases: the site's own (`local`, `POSTGRES_SYNC_*`) or the central one
/// (`remote`, `POSTGRES_CLIENT_*`). Shown and serialised as `local` / `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refuses a download that would delete or deactivate more than `max_fraction` of an
/// entity's local rows and more than [`DeleteGuard::MIN_ROWS`] rows, unless `allowed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    pub max_fraction: f64,
    pub allowed: bool,
}

impl DeleteGuard {
    /// Removals of at most this many rows are never refused.
    pub const MIN_ROWS: u64 = 10;

    /// Whether removing `removed` of `before` rows is refused.
    pub fn refuses(&self, removed: u64, before: u64) -> bool {
        !self.allowed
            && removed > Self::MIN_ROWS
            && (removed as f64) > self.max_fraction * before as f64
    }
}
