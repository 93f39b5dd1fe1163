//! The service configuration: raw settings from every source (see [`source`]) turned into a
//! validated [`Config`]. Every error names the key, the value given (masked for secrets), where
//! it came from and what is accepted; all errors are reported at once.

mod keys;
mod parser;
mod secret;
mod source;
mod types;
mod web;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use keys::{Accepts, KeySpec, ALL as KEYS};
pub use secret::Secret;
pub use source::{RawSettings, RawValue, Source, Sources};
pub use types::{
    ApiTls, DbConfig, DeleteGuard, LogFormat, PoolConfig, PoolMode, RetryConfig, Side, SslMode,
};
pub use web::{parse_authority, AllowedHost, HostName, Origin};

use parser::{parse_bool, Parser, LOCAL_KEYS, REMOTE_KEYS};

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
    /// `API_TLS_CERT` and `API_TLS_KEY`: the API serves HTTPS only when set.
    pub api_tls: Option<ApiTls>,
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
        let tenant_id = p.optional("TENANT_ID", |v| TenantId::parse(v).ok());
        let sync_profile = p.optional("SYNC_PROFILE", |v| {
            let path = PathBuf::from(v);
            path.is_file().then_some(path)
        });
        let sync_interval = Duration::from_secs(p.int("SYNC_INTERVAL_SECONDS"));
        let meter_sync_cron = p.value("METER_SYNC_CRON", |v| CronSchedule::parse(v).ok());
        let batch_size = p.int("BATCH_SIZE") as u32;
        let max_batches_per_run = p.int("MAX_BATCHES_PER_RUN") as u32;
        let upload_workers = p
            .value("UPLOAD_WORKERS", |v| {
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
            max_connection_retries: p.int("MAX_CONNECTION_RETRIES") as u32,
            max_query_retries: p.int("MAX_QUERY_RETRIES") as u32,
            base: p.seconds("RETRY_BASE_SECONDS"),
        };
        let max_row_failures = p.int("MAX_ROW_FAILURES") as u32;
        let reading_retention_days = p.int("READING_RETENTION_DAYS") as u32;
        let shutdown_grace = Duration::from_secs(p.int("SHUTDOWN_GRACE_SECONDS"));
        let pool = PoolConfig {
            max_size: p.int("DB_POOL_MAX") as usize,
            idle_timeout: Duration::from_millis(p.int("DB_POOL_IDLE_TIMEOUT_MS")),
            connection_timeout: Duration::from_millis(p.int("DB_CONNECTION_TIMEOUT_MS")),
            statement_timeout: Duration::from_millis(p.int("DB_STATEMENT_TIMEOUT_MS")),
            keepalives_idle: Duration::from_secs(p.int("DB_KEEPALIVES_IDLE_SECONDS")),
        };
        let run_timeout = match p.int("RUN_TIMEOUT_SECONDS") {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let log_level = p.value("LOG_LEVEL", |v| {
            tracing_subscriber::EnvFilter::try_new(v)
                .ok()
                .map(|_| v.to_string())
        });
        let log_file = p.optional("LOG_FILE", |v| Some(PathBuf::from(v)));
        let log_format = p.value("LOG_FORMAT", |v| match v.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        });
        let api_host = p.value("API_HOST", |v| {
            if v.eq_ignore_ascii_case("localhost") {
                Some(IpAddr::from([127, 0, 0, 1]))
            } else {
                v.parse().ok()
            }
        });
        let api_port = p.int("API_PORT") as u16;
        let api_token = p.optional("API_TOKEN", |v| {
            (v.chars().count() >= 16).then(|| Secret::new(v))
        });
        let api_tls_cert = p.optional("API_TLS_CERT", |v| Some(PathBuf::from(v)));
        let api_tls_key = p.optional("API_TLS_KEY", |v| Some(PathBuf::from(v)));
        let api_tls = match (api_tls_cert, api_tls_key) {
            (Some(cert), Some(key)) => Some(ApiTls { cert, key }),
            (Some(_), None) => {
                p.fail("API_TLS_KEY");
                None
            }
            (None, Some(_)) => {
                p.fail("API_TLS_CERT");
                None
            }
            (None, None) => None,
        };
        let api_allowed_hosts = p
            .optional("API_ALLOWED_HOSTS", |v| {
                web::parse_list(v, web::parse_allowed_host)
            })
            .unwrap_or_default();
        let api_allowed_origins = p
            .optional("API_ALLOWED_ORIGINS", |v| web::parse_list(v, Origin::parse))
            .unwrap_or_default();
        let sync_log_retention_days = p.int("SYNC_LOG_RETENTION_DAYS") as u32;
        let max_delete_fraction = p
            .value("MAX_DELETE_FRACTION", |v| {
                v.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f))
            })
            .unwrap_or(0.5);
        let allow_mass_delete = p.value("ALLOW_MASS_DELETE", parse_bool).unwrap_or(false);
        let upload_enabled = p.value("UPLOAD_ENABLED", parse_bool).unwrap_or(true);

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
            api_tls,
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

#[cfg(test)]
mod tests;
