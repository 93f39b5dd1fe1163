//! The table of configuration keys: name, default, whether it is a secret, and what it means.
//! `.env.example`, the README table and `check` all follow this list.

/// One configuration key.
#[derive(Debug)]
pub struct KeySpec {
    /// The environment variable name; the config file uses it in lower case.
    pub name: &'static str,
    /// The default as text, `None` for keys that are required or optional without a default.
    pub default: Option<&'static str>,
    /// Whether the value must never be printed.
    pub secret: bool,
    /// Whether a value must be given.
    pub required: bool,
    /// One line for `check` and the docs.
    pub help: &'static str,
}

const fn key(name: &'static str, default: Option<&'static str>, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default,
        secret: false,
        required: false,
        help,
    }
}

const fn required(name: &'static str, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default: None,
        secret: false,
        required: true,
        help,
    }
}

const fn secret(name: &'static str, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default: None,
        secret: true,
        required: false,
        help,
    }
}

/// Every key the service reads, in documentation order.
pub static ALL: &[KeySpec] = &[
    key(
        "POSTGRES_SYNC_HOST",
        Some("localhost"),
        "local (Sync) database host or unix socket directory",
    ),
    key("POSTGRES_SYNC_PORT", Some("5432"), "local database port"),
    required("POSTGRES_SYNC_DB", "local database name"),
    key(
        "POSTGRES_SYNC_USER",
        Some("postgres"),
        "local database user",
    ),
    secret("POSTGRES_SYNC_PASSWORD", "local database password"),
    key(
        "POSTGRES_SYNC_SSLMODE",
        Some("prefer"),
        "disable | prefer | require | verify-ca | verify-full",
    ),
    key(
        "POSTGRES_SYNC_SSLROOTCERT",
        None,
        "PEM file of the CA that signed the local server's certificate",
    ),
    required(
        "POSTGRES_CLIENT_HOST",
        "remote (Client System) database host",
    ),
    key("POSTGRES_CLIENT_PORT", Some("5432"), "remote database port"),
    required("POSTGRES_CLIENT_DB", "remote database name"),
    key(
        "POSTGRES_CLIENT_USER",
        Some("postgres"),
        "remote database user",
    ),
    secret("POSTGRES_CLIENT_PASSWORD", "remote database password"),
    key(
        "POSTGRES_CLIENT_SSLMODE",
        Some("prefer"),
        "disable | prefer | require | verify-ca | verify-full",
    ),
    key(
        "POSTGRES_CLIENT_SSLROOTCERT",
        None,
        "PEM file of the CA that signed the remote server's certificate (system roots otherwise)",
    ),
    key(
        "TENANT_ID",
        None,
        "the site's tenant; unset: the single row of the local tenant table",
    ),
    key(
        "SYNC_PROFILE",
        None,
        "profile TOML file describing the synced tables; unset: the built-in default profile",
    ),
    key(
        "SYNC_INTERVAL_SECONDS",
        Some("60"),
        "seconds between upload runs",
    ),
    key(
        "METER_SYNC_CRON",
        Some("0 * * * *"),
        "5-field cron schedule of the download (configuration) sync",
    ),
    key("BATCH_SIZE", Some("100"), "readings per upload batch"),
    key(
        "UPLOAD_WORKERS",
        Some("auto"),
        "upload batches in flight at once, each on its own pair of connections (1-32); auto: the core count for BATCH_SIZE >= 1000, twice it below",
    ),
    key(
        "MAX_BATCHES_PER_RUN",
        Some("10000"),
        "upper bound on batches one upload run drains",
    ),
    key(
        "MAX_CONNECTION_RETRIES",
        Some("5"),
        "connection attempts retried before a run gives up",
    ),
    key(
        "MAX_QUERY_RETRIES",
        Some("3"),
        "retries of a failed batch or query (retryable errors only)",
    ),
    key(
        "RETRY_BASE_SECONDS",
        Some("2"),
        "backoff base: retry n waits RETRY_BASE_SECONDS * 2^n",
    ),
    key(
        "MAX_ROW_FAILURES",
        Some("3"),
        "attempts before a reading the remote rejects is quarantined",
    ),
    key(
        "READING_RETENTION_DAYS",
        Some("30"),
        "days synchronized readings are kept (after_upload = \"mark\")",
    ),
    key(
        "SHUTDOWN_GRACE_SECONDS",
        Some("60"),
        "how long shutdown waits for the current run",
    ),
    key("DB_POOL_MAX", Some("10"), "connections per database pool"),
    key(
        "DB_POOL_IDLE_TIMEOUT_MS",
        Some("30000"),
        "idle connections are closed after this",
    ),
    key(
        "DB_CONNECTION_TIMEOUT_MS",
        Some("5000"),
        "connection attempt timeout",
    ),
    key(
        "DB_STATEMENT_TIMEOUT_MS",
        Some("600000"),
        "statement_timeout (and twice it as idle_in_transaction_session_timeout) on both databases; must exceed the longest single statement, such as the largest table's COPY over the link (0: none)",
    ),
    key(
        "DB_KEEPALIVES_IDLE_SECONDS",
        Some("60"),
        "TCP keepalives: first probe after this idle time, then every third of it; a peer silent for idle + 4 probes is given up (also the TCP user timeout)",
    ),
    key(
        "RUN_TIMEOUT_SECONDS",
        Some("3600"),
        "a run (upload, download or cycle) still going after this is cut short: its transactions roll back, unsent readings stay queued (0: none)",
    ),
    key(
        "LOG_LEVEL",
        Some("info"),
        "trace | debug | info | warn | error, or a tracing filter directive",
    ),
    key(
        "LOG_FILE",
        None,
        "also write logs to this file (rotated daily)",
    ),
    key("LOG_FORMAT", Some("text"), "text | json"),
    key(
        "API_HOST",
        Some("127.0.0.1"),
        "address the HTTP API binds; non-loopback requires API_TOKEN",
    ),
    key("API_PORT", Some("3002"), "HTTP API port (0: any free port)"),
    secret("API_TOKEN", "bearer token required on every POST when set"),
    key(
        "API_ALLOWED_HOSTS",
        None,
        "Host names the API answers to besides localhost, 127.0.0.1, [::1] and API_HOST (comma-separated, each optionally name:port)",
    ),
    key(
        "API_ALLOWED_ORIGINS",
        None,
        "origins a browser may send changes and /mcp requests from besides http://<Host>, e.g. https://meter.site behind a TLS proxy (comma-separated)",
    ),
    key(
        "SYNC_LOG_RETENTION_DAYS",
        Some("90"),
        "sync_logs rows older than this are deleted daily",
    ),
    key(
        "UPLOAD_ENABLED",
        Some("true"),
        "false: never upload (a download-only site, e.g. with a read-only central role)",
    ),
    key(
        "MAX_DELETE_FRACTION",
        Some("0.5"),
        "a download that would delete or deactivate more than this fraction of an entity's local rows (and more than 10) is refused for that entity (0-1)",
    ),
    key(
        "ALLOW_MASS_DELETE",
        Some("false"),
        "true: lift the MAX_DELETE_FRACTION guard (set it for one run, like `download --allow-mass-delete`)",
    ),
];

/// The key with this name, case-insensitively (config file and `--set`).
pub fn lookup(name: &str) -> Option<&'static KeySpec> {
    ALL.iter()
        .find(|k| k.name.eq_ignore_ascii_case(name.trim()))
}

/// The key with exactly this name (the environment, where case matters).
pub fn lookup_exact(name: &str) -> Option<&'static KeySpec> {
    ALL.iter().find(|k| k.name == name)
}

/// The closest known key to a misspelt one, if any is close.
pub fn suggest(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    ALL.iter()
        .map(|k| (edit_distance(&upper, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_unique_and_upper_case() {
        let mut names: Vec<_> = ALL.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.iter().all(|k| k.name == k.name.to_ascii_uppercase()));
    }

    #[test]
    fn env_example_documents_every_key() {
        let example = include_str!("../../.env.example");
        for key in ALL {
            assert!(
                example.lines().any(|l| l
                    .trim_start_matches("# ")
                    .starts_with(&format!("{}=", key.name))),
                "{} is missing from .env.example",
                key.name
            );
        }
    }

    #[test]
    fn misspelt_key_gets_a_suggestion() {
        assert_eq!(suggest("batch_sise"), Some("BATCH_SIZE"));
        assert_eq!(suggest("completely_unrelated"), None);
    }
}
