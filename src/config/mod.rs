//! The service configuration: raw settings from every source (see [`source`]) turned into a
//! validated [`Config`]. Every error names the key, the value given (masked for secrets), where
//! it came from and what is accepted; all errors are reported at once.

mod keys;
mod secret;
mod source;
mod web;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use keys::{KeySpec, ALL as KEYS};
pub use secret::Secret;
pub use source::{RawSettings, RawValue, Source, Sources};
pub use web::{parse_authority, AllowedHost, HostName, Origin};

use crate::cron::CronSchedule;
use crate::profile::TenantId;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config file {path}: key `{key}` must be a string, number or boolean, not a {found}")]
    FileValueType {
        path: PathBuf,
        key: String,
        found: &'static str,
    },
    #[error("cannot read env file {path}")]
    DotEnv {
        path: PathBuf,
        #[source]
        source: dotenvy::Error,
    },
    #[error("unknown configuration key `{key}` (from {source_name}){}", suggestion.map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    UnknownKey {
        key: String,
        source_name: String,
        suggestion: Option<&'static str>,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

/// One key whose value is missing or not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: &'static str,
    /// The value as given; the mask for secrets; `None` when the key is missing.
    pub value: Option<String>,
    pub source: Option<Source>,
    /// What is accepted.
    pub expected: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.value, &self.source) {
            (Some(value), Some(source)) => write!(
                f,
                "{}={value:?} (from {source}): expected {}",
                self.key, self.expected
            ),
            _ => write!(f, "{} is required: {}", self.key, self.expected),
        }
    }
}

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

/// Retry policy: attempt `n` (0-based) waits `base * 2^n` before the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub max_connection_retries: u32,
    pub max_query_retries: u32,
    pub base: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub local: DbConfig,
    pub remote: DbConfig,
    pub tenant_id: Option<TenantId>,
    pub sync_profile: Option<PathBuf>,
    pub sync_interval: Duration,
    /// The download schedule.
    pub meter_sync_cron: CronSchedule,
    pub batch_size: u32,
    pub max_batches_per_run: u32,
    /// `UPLOAD_WORKERS`; `None` is `auto` (see [`Config::upload_workers`]).
    pub upload_workers: Option<u32>,
    pub retry: RetryConfig,
    pub max_row_failures: u32,
    pub reading_retention_days: u32,
    pub shutdown_grace: Duration,
    /// `RUN_TIMEOUT_SECONDS`; `None` is no limit.
    pub run_timeout: Option<Duration>,
    pub pool: PoolConfig,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub api_host: IpAddr,
    pub api_port: u16,
    pub api_token: Option<Secret>,
    /// `API_ALLOWED_HOSTS`: `Host` names the API answers to besides loopback and `API_HOST`.
    pub api_allowed_hosts: Vec<AllowedHost>,
    /// `API_ALLOWED_ORIGINS`: origins a browser may send changes from besides the service's own.
    pub api_allowed_origins: Vec<Origin>,
    pub sync_log_retention_days: u32,
    /// The mass-delete guard of downloads (`MAX_DELETE_FRACTION`, `ALLOW_MASS_DELETE`).
    pub delete_guard: DeleteGuard,
    /// `UPLOAD_ENABLED`: false makes a download-only site.
    pub upload_enabled: bool,
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

/// A boolean setting: true/false, 1/0, yes/no, on/off.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
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

impl Config {
    /// Upload batches in flight for a batch size: `UPLOAD_WORKERS`, or with `auto` as many as
    /// the machine has cores for batches of 1,000 and more (they keep the CPUs busy: more
    /// workers only contend) and twice that for smaller ones (each batch then waits mostly on
    /// round trips and commits, which more workers overlap). Measured on 2 cores at 1,000,000
    /// readings: BATCH_SIZE 10,000 ran at 0.93x the raw pipe with 2 workers and 0.77x with 4;
    /// BATCH_SIZE 100 at 0.33x with 2 and 0.48x with 4.
    pub fn upload_workers_for(&self, batch_size: u32) -> u32 {
        self.upload_workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
            let workers = if batch_size >= 1000 { cores } else { 2 * cores };
            workers.clamp(1, 32)
        })
    }

    /// Loads and validates the configuration from the given sources.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::from_raw(&RawSettings::load(sources)?)
    }

    /// Validates merged raw settings, collecting every problem.
    pub fn from_raw(raw: &RawSettings) -> Result<Self, ConfigError> {
        let mut p = Parser {
            raw,
            errors: Vec::new(),
        };
        let local = p.db(&LOCAL_KEYS);
        let remote = p.db(&REMOTE_KEYS);
        let tenant_id = p.optional(
            "TENANT_ID",
            "a tenant id of 1-255 letters, digits, `_`, `-`, `.` or `:`",
            |v| TenantId::parse(v).ok(),
        );
        let sync_profile = p.optional(
            "SYNC_PROFILE",
            "a path to an existing profile TOML file",
            |v| {
                let path = PathBuf::from(v);
                path.is_file().then_some(path)
            },
        );
        let sync_interval = Duration::from_secs(p.int("SYNC_INTERVAL_SECONDS", 1, 86_400));
        let meter_sync_cron = p.value(
            "METER_SYNC_CRON",
            "a 5-field cron expression such as `0 * * * *`",
            |v| CronSchedule::parse(v).ok(),
        );
        let batch_size = p.int("BATCH_SIZE", 1, 1_000_000) as u32;
        let max_batches_per_run = p.int("MAX_BATCHES_PER_RUN", 1, 100_000_000) as u32;
        let upload_workers = p
            .value("UPLOAD_WORKERS", "auto or a number from 1 to 32", |v| {
                if v.eq_ignore_ascii_case("auto") {
                    Some(None)
                } else {
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .map(Some)
                }
            })
            .flatten();
        let retry = RetryConfig {
            max_connection_retries: p.int("MAX_CONNECTION_RETRIES", 0, 100) as u32,
            max_query_retries: p.int("MAX_QUERY_RETRIES", 0, 100) as u32,
            base: p.seconds("RETRY_BASE_SECONDS", 3600.0),
        };
        let max_row_failures = p.int("MAX_ROW_FAILURES", 1, 1000) as u32;
        let reading_retention_days = p.int("READING_RETENTION_DAYS", 0, 36_500) as u32;
        let shutdown_grace = Duration::from_secs(p.int("SHUTDOWN_GRACE_SECONDS", 0, 3600));
        let pool = PoolConfig {
            max_size: p.int("DB_POOL_MAX", 1, 1000) as usize,
            idle_timeout: Duration::from_millis(p.int("DB_POOL_IDLE_TIMEOUT_MS", 0, 86_400_000)),
            connection_timeout: Duration::from_millis(p.int(
                "DB_CONNECTION_TIMEOUT_MS",
                1,
                600_000,
            )),
            statement_timeout: Duration::from_millis(p.int(
                "DB_STATEMENT_TIMEOUT_MS",
                0,
                86_400_000,
            )),
            keepalives_idle: Duration::from_secs(p.int("DB_KEEPALIVES_IDLE_SECONDS", 1, 7200)),
        };
        let run_timeout = match p.int("RUN_TIMEOUT_SECONDS", 0, 604_800) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let log_level = p.value(
            "LOG_LEVEL",
            "trace, debug, info, warn, error, or a tracing filter directive such as `meter_sync=debug,info`",
            |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .ok()
                    .map(|_| v.to_string())
            },
        );
        let log_file = p.optional("LOG_FILE", "a file path", |v| Some(PathBuf::from(v)));
        let log_format = p.value("LOG_FORMAT", "text or json", |v| {
            match v.to_ascii_lowercase().as_str() {
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                _ => None,
            }
        });
        let api_host = p.value(
            "API_HOST",
            "an IP address such as 127.0.0.1, ::1 or 0.0.0.0, or localhost",
            |v| {
                if v.eq_ignore_ascii_case("localhost") {
                    Some(IpAddr::from([127, 0, 0, 1]))
                } else {
                    v.parse().ok()
                }
            },
        );
        let api_port = p.int("API_PORT", 0, 65_535) as u16;
        let api_token = p.optional("API_TOKEN", "at least 16 characters", |v| {
            (v.chars().count() >= 16).then(|| Secret::new(v))
        });
        let api_allowed_hosts = p
            .optional(
                "API_ALLOWED_HOSTS",
                "comma-separated host names, each optionally with :port, such as meter.site.lan,proxy.lan:8443",
                |v| web::parse_list(v, web::parse_allowed_host),
            )
            .unwrap_or_default();
        let api_allowed_origins = p
            .optional(
                "API_ALLOWED_ORIGINS",
                "comma-separated origins such as https://meter.site.lan (scheme, host, optional port; no path)",
                |v| web::parse_list(v, Origin::parse),
            )
            .unwrap_or_default();
        let sync_log_retention_days = p.int("SYNC_LOG_RETENTION_DAYS", 1, 36_500) as u32;
        let max_delete_fraction = p
            .value(
                "MAX_DELETE_FRACTION",
                "a fraction from 0 to 1, such as 0.5",
                |v| v.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f)),
            )
            .unwrap_or(0.5);
        let allow_mass_delete = p
            .value("ALLOW_MASS_DELETE", "true or false", parse_bool)
            .unwrap_or(false);
        let upload_enabled = p
            .value("UPLOAD_ENABLED", "true or false", parse_bool)
            .unwrap_or(true);

        let (
            Some(local),
            Some(remote),
            Some(meter_sync_cron),
            Some(log_level),
            Some(log_format),
            Some(api_host),
        ) = (
            local,
            remote,
            meter_sync_cron,
            log_level,
            log_format,
            api_host,
        )
        else {
            return Err(ConfigError::Invalid(p.errors));
        };
        if !p.errors.is_empty() {
            return Err(ConfigError::Invalid(p.errors));
        }
        Ok(Config {
            local,
            remote,
            tenant_id,
            sync_profile,
            sync_interval,
            meter_sync_cron,
            batch_size,
            max_batches_per_run,
            upload_workers,
            retry,
            max_row_failures,
            reading_retention_days,
            shutdown_grace,
            run_timeout,
            pool,
            log_level,
            log_file,
            log_format,
            api_host,
            api_port,
            api_token,
            api_allowed_hosts,
            api_allowed_origins,
            sync_log_retention_days,
            delete_guard: DeleteGuard {
                max_fraction: max_delete_fraction,
                allowed: allow_mass_delete,
            },
            upload_enabled,
        })
    }

    /// The effective configuration as `KEY=value` lines, secrets masked: what `check` prints.
    pub fn redacted_summary(raw: &RawSettings) -> Vec<String> {
        KEYS.iter()
            .map(|spec| match raw.get(spec.name) {
                Some(v) if spec.secret => format!("{}={} ({})", spec.name, Secret::MASK, v.source),
                Some(v) => format!("{}={} ({})", spec.name, v.value, v.source),
                None => format!("{}= (unset)", spec.name),
            })
            .collect()
    }
}

/// The key names of one database side.
struct DbKeys {
    side: Side,
    host: &'static str,
    port: &'static str,
    db: &'static str,
    user: &'static str,
    password: &'static str,
    sslmode: &'static str,
    sslrootcert: &'static str,
}

const LOCAL_KEYS: DbKeys = DbKeys {
    side: Side::Local,
    host: "POSTGRES_SYNC_HOST",
    port: "POSTGRES_SYNC_PORT",
    db: "POSTGRES_SYNC_DB",
    user: "POSTGRES_SYNC_USER",
    password: "POSTGRES_SYNC_PASSWORD",
    sslmode: "POSTGRES_SYNC_SSLMODE",
    sslrootcert: "POSTGRES_SYNC_SSLROOTCERT",
};

const REMOTE_KEYS: DbKeys = DbKeys {
    side: Side::Remote,
    host: "POSTGRES_CLIENT_HOST",
    port: "POSTGRES_CLIENT_PORT",
    db: "POSTGRES_CLIENT_DB",
    user: "POSTGRES_CLIENT_USER",
    password: "POSTGRES_CLIENT_PASSWORD",
    sslmode: "POSTGRES_CLIENT_SSLMODE",
    sslrootcert: "POSTGRES_CLIENT_SSLROOTCERT",
};

/// Collects parse errors while reading keys.
struct Parser<'a> {
    raw: &'a RawSettings,
    errors: Vec<KeyError>,
}

impl Parser<'_> {
    fn fail(&mut self, key: &'static str, expected: &str) {
        let spec = keys::lookup_exact(key);
        let raw = self.raw.get(key);
        self.errors.push(KeyError {
            key,
            value: raw.map(|r| {
                if spec.is_some_and(|s| s.secret) {
                    Secret::MASK.to_string()
                } else {
                    r.value.clone()
                }
            }),
            source: raw.map(|r| r.source.clone()),
            expected: expected.to_string(),
        });
    }

    /// A key that has a value (given or default); parse failures and absence are recorded.
    fn value<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        match self.raw.get(key) {
            Some(raw) => {
                let parsed = parse(&raw.value);
                if parsed.is_none() {
                    self.fail(key, expected);
                }
                parsed
            }
            None => {
                self.fail(key, expected);
                None
            }
        }
    }

    /// A key that may be unset.
    fn optional<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        self.raw.get(key)?;
        self.value(key, expected, parse)
    }

    fn int(&mut self, key: &'static str, min: u64, max: u64) -> u64 {
        let expected = format!("a whole number from {min} to {max}");
        self.value(key, &expected, |v| {
            v.replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
        })
        .unwrap_or(min)
    }

    fn seconds(&mut self, key: &'static str, max: f64) -> Duration {
        let expected = format!("a number of seconds from 0 to {max} (fractions allowed)");
        self.value(key, &expected, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=max).contains(s))
                .map(Duration::from_secs_f64)
        })
        .unwrap_or_default()
    }

    fn db(&mut self, keys: &DbKeys) -> Option<DbConfig> {
        let host = self.value(
            keys.host,
            "a host name, IP address or unix socket directory",
            |v| Some(v.to_string()),
        );
        let port = self.int(keys.port, 1, 65_535) as u16;
        let dbname = self.value(keys.db, "a database name", |v| Some(v.to_string()));
        let user = self.value(keys.user, "a database user name", |v| Some(v.to_string()));
        let password = self
            .raw
            .get(keys.password)
            .map(|v| Secret::new(v.value.clone()))
            .unwrap_or_default();
        let sslmode = self.value(
            keys.sslmode,
            "disable, prefer, require, verify-ca or verify-full",
            |v| v.parse().ok(),
        );
        let sslrootcert = self.optional(keys.sslrootcert, "a path to an existing PEM file", |v| {
            let path = PathBuf::from(v);
            path.is_file().then_some(path)
        });
        Some(DbConfig {
            side: keys.side,
            host: host?,
            port,
            dbname: dbname?,
            user: user?,
            password,
            sslmode: sslmode?,
            sslrootcert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Sources::default()
        }
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("POSTGRES_SYNC_DB", "sync"),
        ("POSTGRES_CLIENT_HOST", "central.example"),
        ("POSTGRES_CLIENT_DB", "client"),
    ];

    fn errors_of(result: Result<Config, ConfigError>) -> Vec<KeyError> {
        match result {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_required_keys_are_set() {
        let config = Config::load(&env(MINIMAL)).unwrap();
        assert_eq!(config.local.host, "localhost");
        assert_eq!(config.local.port, 5432);
        assert_eq!(config.local.user, "postgres");
        assert_eq!(config.remote.sslmode, SslMode::Prefer);
        assert_eq!(config.sync_interval, Duration::from_secs(60));
        assert_eq!(config.meter_sync_cron.as_str(), "0 * * * *");
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.max_batches_per_run, 10_000);
        assert_eq!(config.upload_workers, None);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        assert_eq!(config.upload_workers_for(100), (2 * cores).min(32));
        assert_eq!(config.upload_workers_for(10_000), cores.min(32));
        assert_eq!(config.retry.max_connection_retries, 5);
        assert_eq!(config.retry.max_query_retries, 3);
        assert_eq!(config.retry.base, Duration::from_secs(2));
        assert_eq!(config.max_row_failures, 3);
        assert_eq!(config.reading_retention_days, 30);
        assert_eq!(config.shutdown_grace, Duration::from_secs(60));
        assert_eq!(config.pool.max_size, 10);
        assert_eq!(config.pool.idle_timeout, Duration::from_millis(30_000));
        assert_eq!(config.pool.connection_timeout, Duration::from_millis(5000));
        assert_eq!(config.pool.statement_timeout, Duration::from_secs(600));
        assert_eq!(config.pool.keepalives_idle, Duration::from_secs(60));
        assert_eq!(config.run_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(config.log_level, "info");
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_file, None);
        assert_eq!(config.api_host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.api_port, 3002);
        assert_eq!(config.api_token, None);
        assert_eq!(config.tenant_id, None);
        assert_eq!(config.sync_log_retention_days, 90);
    }

    #[test]
    fn every_variable_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let profile = dir.path().join("p.toml");
        std::fs::write(&profile, "").unwrap();
        let ca = ca.to_str().unwrap();
        let profile = profile.to_str().unwrap();
        let config = Config::load(&env(&[
            ("POSTGRES_SYNC_HOST", "/var/run/postgresql"),
            ("POSTGRES_SYNC_PORT", "5433"),
            ("POSTGRES_SYNC_DB", "sync"),
            ("POSTGRES_SYNC_USER", "site"),
            ("POSTGRES_SYNC_PASSWORD", "s3cret-local"),
            ("POSTGRES_SYNC_SSLMODE", "disable"),
            ("POSTGRES_SYNC_SSLROOTCERT", ca),
            ("POSTGRES_CLIENT_HOST", "central"),
            ("POSTGRES_CLIENT_PORT", "6432"),
            ("POSTGRES_CLIENT_DB", "client"),
            ("POSTGRES_CLIENT_USER", "agent"),
            ("POSTGRES_CLIENT_PASSWORD", "s3cret-remote"),
            ("POSTGRES_CLIENT_SSLMODE", "verify-full"),
            ("POSTGRES_CLIENT_SSLROOTCERT", ca),
            ("TENANT_ID", "42"),
            ("SYNC_PROFILE", profile),
            ("SYNC_INTERVAL_SECONDS", "15"),
            ("METER_SYNC_CRON", "*/5 * * * *"),
            ("BATCH_SIZE", "10_000"),
            ("MAX_BATCHES_PER_RUN", "7"),
            ("UPLOAD_WORKERS", "3"),
            ("MAX_CONNECTION_RETRIES", "1"),
            ("MAX_QUERY_RETRIES", "0"),
            ("RETRY_BASE_SECONDS", "0.25"),
            ("MAX_ROW_FAILURES", "5"),
            ("READING_RETENTION_DAYS", "7"),
            ("SHUTDOWN_GRACE_SECONDS", "10"),
            ("DB_POOL_MAX", "4"),
            ("DB_POOL_IDLE_TIMEOUT_MS", "1000"),
            ("DB_CONNECTION_TIMEOUT_MS", "250"),
            ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ("DB_KEEPALIVES_IDLE_SECONDS", "15"),
            ("RUN_TIMEOUT_SECONDS", "0"),
            ("LOG_LEVEL", "meter_sync=debug,warn"),
            ("LOG_FILE", "/tmp/meter-sync.log"),
            ("LOG_FORMAT", "JSON"),
            ("API_HOST", "::1"),
            ("API_PORT", "0"),
            ("API_TOKEN", "0123456789abcdef-token"),
            ("SYNC_LOG_RETENTION_DAYS", "14"),
        ]))
        .unwrap();
        assert_eq!(config.local.host, "/var/run/postgresql");
        assert_eq!(config.local.port, 5433);
        assert_eq!(config.local.user, "site");
        assert_eq!(config.local.password.expose(), "s3cret-local");
        assert_eq!(config.local.sslmode, SslMode::Disable);
        assert_eq!(
            config.local.sslrootcert.as_deref(),
            Some(std::path::Path::new(ca))
        );
        assert_eq!(config.remote.address(), "central:6432/client");
        assert_eq!(config.remote.user, "agent");
        assert_eq!(config.remote.password.expose(), "s3cret-remote");
        assert_eq!(config.remote.sslmode, SslMode::VerifyFull);
        assert_eq!(config.tenant_id.as_ref().map(|t| t.as_str()), Some("42"));
        assert_eq!(
            config.sync_profile.as_deref(),
            Some(std::path::Path::new(profile))
        );
        assert_eq!(config.sync_interval, Duration::from_secs(15));
        assert_eq!(config.meter_sync_cron.as_str(), "*/5 * * * *");
        assert_eq!(config.batch_size, 10_000);
        assert_eq!(config.max_batches_per_run, 7);
        assert_eq!(config.upload_workers, Some(3));
        assert_eq!(config.upload_workers_for(100), 3);
        assert_eq!(config.pool.statement_timeout, Duration::ZERO);
        assert_eq!(config.pool.keepalives_idle, Duration::from_secs(15));
        assert_eq!(config.run_timeout, None);
        assert_eq!(config.retry.max_connection_retries, 1);
        assert_eq!(config.retry.max_query_retries, 0);
        assert_eq!(config.retry.base, Duration::from_millis(250));
        assert_eq!(config.max_row_failures, 5);
        assert_eq!(config.reading_retention_days, 7);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.pool.max_size, 4);
        assert_eq!(config.pool.idle_timeout, Duration::from_secs(1));
        assert_eq!(config.pool.connection_timeout, Duration::from_millis(250));
        assert_eq!(config.log_level, "meter_sync=debug,warn");
        assert_eq!(
            config.log_file.as_deref(),
            Some(std::path::Path::new("/tmp/meter-sync.log"))
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.api_host, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(config.api_port, 0);
        assert_eq!(
            config.api_token.as_ref().map(Secret::expose),
            Some("0123456789abcdef-token")
        );
        assert_eq!(config.sync_log_retention_days, 14);
    }

    #[test]
    fn bad_values_name_their_key_value_source_and_range() {
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("BATCH_SIZE", "0"),
            ("POSTGRES_CLIENT_PORT", "70000"),
            ("METER_SYNC_CRON", "every hour"),
            ("LOG_FORMAT", "xml"),
            ("POSTGRES_CLIENT_SSLMODE", "sometimes"),
            ("TENANT_ID", "1; drop table tenant"),
            ("RETRY_BASE_SECONDS", "NaN"),
        ]);
        let errors = errors_of(Config::load(&env(&pairs)));
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let find = |key: &str| {
            text.iter()
                .find(|t| t.starts_with(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no error for {key} in {text:#?}"))
                .clone()
        };
        assert_eq!(
            find("BATCH_SIZE"),
            "BATCH_SIZE=\"0\" (from environment): expected a whole number from 1 to 1000000"
        );
        assert!(find("POSTGRES_CLIENT_PORT").contains("from 1 to 65535"));
        assert!(find("METER_SYNC_CRON").contains("5-field cron"));
        assert!(find("LOG_FORMAT").contains("text or json"));
        assert!(find("POSTGRES_CLIENT_SSLMODE").contains("verify-full"));
        assert!(find("TENANT_ID").contains("tenant id"));
        assert!(find("RETRY_BASE_SECONDS").contains("seconds"));
        assert_eq!(errors.len(), 7, "{text:#?}");
    }

    #[test]
    fn missing_required_keys_are_all_reported() {
        let errors = errors_of(Config::load(&Sources::default()));
        let keys: Vec<&str> = errors.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "POSTGRES_SYNC_DB",
                "POSTGRES_CLIENT_HOST",
                "POSTGRES_CLIENT_DB"
            ]
        );
        assert!(errors[0]
            .to_string()
            .starts_with("POSTGRES_SYNC_DB is required"));
    }

    #[test]
    fn secrets_never_appear_in_debug_display_or_errors() {
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("POSTGRES_SYNC_PASSWORD", "local-pw-123"),
            ("POSTGRES_CLIENT_PASSWORD", "remote-pw-456"),
            ("API_TOKEN", "token-789-abcdefghijkl"),
        ]);
        let config = Config::load(&env(&pairs)).unwrap();
        for text in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{}", config.remote.password),
        ] {
            for secret in ["local-pw-123", "remote-pw-456", "token-789-abcdefghijkl"] {
                assert!(!text.contains(secret), "{secret} leaked in {text}");
            }
        }
        let raw = RawSettings::load(&env(&pairs)).unwrap();
        let summary = Config::redacted_summary(&raw).join("\n");
        assert!(
            !summary.contains("pw-") && !summary.contains("token-789"),
            "{summary}"
        );
        assert!(summary.contains("API_TOKEN=********"));

        // A secret that fails validation is masked in the error too.
        pairs.push(("API_TOKEN", "short-secret"));
        let errors = errors_of(Config::load(&env(&pairs)));
        let text = format!("{errors:?} {}", ConfigError::Invalid(errors.clone()));
        assert!(!text.contains("short-secret"), "{text}");
        assert!(text.contains("API_TOKEN=\"********\""), "{text}");
    }

    #[test]
    fn cli_beats_env_beats_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meter-sync.toml");
        std::fs::write(
            &file,
            "postgres_sync_db = \"from_file\"\npostgres_client_host = \"file-host\"\npostgres_client_db = \"client\"\nbatch_size = 500\nsync_interval_seconds = 30\napi_port = 4000\n",
        )
        .unwrap();
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, "BATCH_SIZE=600\nAPI_PORT=4100\nLOG_LEVEL=debug\n").unwrap();
        let sources = Sources {
            file: Some(file),
            dotenv: Some(dotenv),
            env: vec![
                ("BATCH_SIZE".into(), "700".into()),
                ("API_PORT".into(), "4200".into()),
            ],
            cli: vec![("batch_size".into(), "800".into())],
        };
        let config = Config::load(&sources).unwrap();
        assert_eq!(config.batch_size, 800, "cli wins");
        assert_eq!(config.api_port, 4200, "env beats .env and file");
        assert_eq!(config.log_level, "debug", ".env beats default");
        assert_eq!(
            config.sync_interval,
            Duration::from_secs(30),
            "file beats default"
        );
        assert_eq!(config.local.dbname, "from_file");
        assert_eq!(config.max_row_failures, 3, "default");
    }

    #[test]
    fn unknown_file_key_is_named_with_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "batch_sise = 5\n").unwrap();
        let err = Config::load(&Sources {
            file: Some(file),
            ..Sources::default()
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown configuration key `batch_sise`"),
            "{text}"
        );
        assert!(text.contains("did you mean BATCH_SIZE?"), "{text}");
    }

    #[test]
    fn empty_value_falls_back_to_default() {
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([("BATCH_SIZE", ""), ("TENANT_ID", "  ")]);
        let config = Config::load(&env(&pairs)).unwrap();
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.tenant_id, None);
    }
}
