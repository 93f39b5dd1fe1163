//! The table of configuration keys, each defined once: name, default, whether it is secret or
//! required, what values it accepts (the range the parser enforces and the text its errors
//! show) and what it means. The parser, `check`, `.env.example` and the README's configuration
//! table all follow this list (tests check the last two).

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
    /// The values accepted.
    pub accepts: Accepts,
}

/// What values a key accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accepts {
    /// A whole number in this range (`_` separators allowed).
    Int { min: u64, max: u64 },
    /// A number of seconds from 0 to `max`, fractions allowed.
    Seconds { max: f64 },
    /// What the key's own parser accepts, as its error says it.
    Text(&'static str),
}

impl Accepts {
    /// What a configuration error says is expected.
    pub fn describe(&self) -> String {
        match self {
            Accepts::Int { min, max } => format!("a whole number from {min} to {max}"),
            Accepts::Seconds { max } => {
                format!("a number of seconds from 0 to {max} (fractions allowed)")
            }
            Accepts::Text(text) => (*text).to_string(),
        }
    }
}

impl KeySpec {
    const fn int(self, min: u64, max: u64) -> Self {
        Self {
            accepts: Accepts::Int { min, max },
            ..self
        }
    }

    const fn seconds(self, max: f64) -> Self {
        Self {
            accepts: Accepts::Seconds { max },
            ..self
        }
    }

    const fn text(self, text: &'static str) -> Self {
        Self {
            accepts: Accepts::Text(text),
            ..self
        }
    }
}

const fn key(name: &'static str, default: Option<&'static str>, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default,
        secret: false,
        required: false,
        help,
        accepts: Accepts::Text("any text"),
    }
}

const fn required(name: &'static str, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default: None,
        secret: false,
        required: true,
        help,
        accepts: Accepts::Text("any text"),
    }
}

const fn secret(name: &'static str, help: &'static str) -> KeySpec {
    KeySpec {
        name,
        default: None,
        secret: true,
        required: false,
        help,
        accepts: Accepts::Text("any text"),
    }
}

/// Every key the service reads, in documentation order.
pub static ALL: &[KeySpec] = &[
    key(
        "POSTGRES_SYNC_HOST",
        Some("localhost"),
        "local (Sync) database host or unix socket directory",
    ).text("a host name, IP address or unix socket directory"),
    key("POSTGRES_SYNC_PORT", Some("5432"), "local database port").int(1, 65_535),
    required("POSTGRES_SYNC_DB", "local database name").text("a database name"),
    key(
        "POSTGRES_SYNC_USER",
        Some("postgres"),
        "local database user",
    ).text("a database user name"),
    secret("POSTGRES_SYNC_PASSWORD", "local database password").text("any text"),
    key(
        "POSTGRES_SYNC_SSLMODE",
        Some("prefer"),
        "disable | prefer | require | verify-ca | verify-full",
    ).text("disable, prefer, require, verify-ca or verify-full"),
    key(
        "POSTGRES_SYNC_SSLROOTCERT",
        None,
        "PEM file of the CA that signed the local server's certificate",
    ).text("a path to an existing PEM file"),
    required(
        "POSTGRES_CLIENT_HOST",
        "remote (Client System) database host",
    ).text("a host name, IP address or unix socket directory"),
    key("POSTGRES_CLIENT_PORT", Some("5432"), "remote database port").int(1, 65_535),
    required("POSTGRES_CLIENT_DB", "remote database name").text("a database name"),
    key(
        "POSTGRES_CLIENT_USER",
        Some("postgres"),
        "remote database user",
    ).text("a database user name"),
    secret("POSTGRES_CLIENT_PASSWORD", "remote database password").text("any text"),
    key(
        "POSTGRES_CLIENT_SSLMODE",
        Some("prefer"),
        "disable | prefer | require | verify-ca | verify-full",
    ).text("disable, prefer, require, verify-ca or verify-full"),
    key(
        "POSTGRES_CLIENT_POOL_MODE",
        Some("direct"),
        "direct | session | transaction: what is in front of the remote server (a PgBouncer's pool_mode)",
    ).text("direct, session or transaction"),
    key(
        "POSTGRES_CLIENT_SSLROOTCERT",
        None,
        "PEM file of the CA that signed the remote server's certificate (system roots otherwise)",
    ).text("a path to an existing PEM file"),
    key(
        "TENANT_ID",
        None,
        "the site's tenant; unset: the single row of the local tenant table",
    ).text("a tenant id of 1-255 letters, digits, `_`, `-`, `.` or `:`"),
    key(
        "SYNC_PROFILE",
        None,
        "profile TOML file describing the synced tables; unset: the built-in default profile",
    ).text("a path to an existing profile TOML file"),
    key(
        "SYNC_INTERVAL_SECONDS",
        Some("60"),
        "seconds between upload runs",
    ).int(1, 86_400),
    key(
        "METER_SYNC_CRON",
        Some("0 * * * *"),
        "5-field cron schedule of the download (configuration) sync",
    ).text("a 5-field cron expression such as `0 * * * *`"),
    key("BATCH_SIZE", Some("100"), "readings per upload batch").int(1, 1_000_000),
    key(
        "UPLOAD_WORKERS",
        Some("auto"),
        "upload batches in flight at once, each on its own pair of connections (1-32); auto: the core count for BATCH_SIZE >= 1000, twice it below",
    ).text("auto or a number from 1 to 32"),
    key(
        "MAX_BATCHES_PER_RUN",
        Some("10000"),
        "upper bound on batches one upload run drains",
    ).int(1, 100_000_000),
    key(
        "MAX_CONNECTION_RETRIES",
        Some("5"),
        "connection attempts retried before a run gives up",
    ).int(0, 100),
    key(
        "MAX_QUERY_RETRIES",
        Some("3"),
        "retries of a failed batch or query (retryable errors only)",
    ).int(0, 100),
    key(
        "RETRY_BASE_SECONDS",
        Some("2"),
        "backoff base: retry n waits a random time up to RETRY_BASE_SECONDS * 2^n (full jitter)",
    ).seconds(3600.0),
    key(
        "MAX_ROW_FAILURES",
        Some("3"),
        "attempts before a reading the remote rejects is quarantined",
    ).int(1, 1000),
    key(
        "READING_RETENTION_DAYS",
        Some("30"),
        "days synchronized readings are kept (after_upload = \"mark\")",
    ).int(0, 36_500),
    key(
        "SHUTDOWN_GRACE_SECONDS",
        Some("60"),
        "how long shutdown waits for the current run",
    ).int(0, 3600),
    key("DB_POOL_MAX", Some("10"), "connections per database pool").int(1, 1000),
    key(
        "DB_POOL_IDLE_TIMEOUT_MS",
        Some("30000"),
        "idle connections are closed after this",
    ).int(0, 86_400_000),
    key(
        "DB_CONNECTION_TIMEOUT_MS",
        Some("5000"),
        "connection attempt timeout",
    ).int(1, 600_000),
    key(
        "DB_STATEMENT_TIMEOUT_MS",
        Some("600000"),
        "statement_timeout (and twice it as idle_in_transaction_session_timeout) on both databases; must exceed the longest single statement, such as the largest table's COPY over the link (0: none)",
    ).int(0, 86_400_000),
    key(
        "DB_KEEPALIVES_IDLE_SECONDS",
        Some("60"),
        "TCP keepalives: first probe after this idle time, then every third of it; a peer silent for idle + 4 probes is given up (also the TCP user timeout)",
    ).int(1, 7200),
    key(
        "RUN_TIMEOUT_SECONDS",
        Some("3600"),
        "a run (upload, download or cycle) still going after this is cut short: its transactions roll back, unsent readings stay queued (0: none)",
    ).int(0, 604_800),
    key(
        "LOG_LEVEL",
        Some("info"),
        "trace | debug | info | warn | error, or a tracing filter directive",
    ).text("trace, debug, info, warn, error, or a tracing filter directive such as `meter_sync=debug,info`"),
    key(
        "LOG_FILE",
        None,
        "also write logs to this file (rotated daily and at 100 MB, gzipped, 30 days kept)",
    ).text("a file path"),
    key("LOG_FORMAT", Some("text"), "text | json").text("text or json"),
    key(
        "API_HOST",
        Some("127.0.0.1"),
        "address the HTTP API binds; non-loopback requires API_TOKEN and API_TLS_CERT/API_TLS_KEY",
    ).text("an IP address such as 127.0.0.1, ::1 or 0.0.0.0, or localhost"),
    key("API_PORT", Some("3002"), "HTTP API port (0: any free port)").int(0, 65_535),
    secret("API_TOKEN", "bearer token required on every POST when set").text("at least 16 characters"),
    key(
        "API_TLS_CERT",
        None,
        "PEM certificate chain: the API serves HTTPS only (with API_TLS_KEY); required when API_HOST is not loopback, so the token never travels in the clear",
    ).text("a PEM file path (the server certificate first, then its intermediates), set together with API_TLS_KEY"),
    key(
        "API_TLS_KEY",
        None,
        "PEM private key of API_TLS_CERT (readable by the service user only)",
    ).text("a PEM file path (a PKCS#8, PKCS#1 or SEC1 private key), set together with API_TLS_CERT"),
    key(
        "API_ALLOWED_HOSTS",
        None,
        "Host names the API answers to besides localhost, 127.0.0.1, [::1] and API_HOST (comma-separated, each optionally name:port)",
    ).text("comma-separated host names, each optionally with :port, such as meter.site.lan,proxy.lan:8443"),
    key(
        "API_ALLOWED_ORIGINS",
        None,
        "origins a browser may send changes and /mcp requests from besides http://<Host>, e.g. https://meter.site behind a TLS proxy (comma-separated)",
    ).text("comma-separated origins such as https://meter.site.lan (scheme, host, optional port; no path)"),
    key(
        "SYNC_LOG_RETENTION_DAYS",
        Some("90"),
        "sync_logs rows older than this are deleted daily",
    ).int(1, 36_500),
    key(
        "UPLOAD_ENABLED",
        Some("true"),
        "false: never upload (a download-only site, e.g. with a read-only central role)",
    ).text("true or false"),
    key(
        "MAX_DELETE_FRACTION",
        Some("0.5"),
        "a download that would delete or deactivate more than this fraction of an entity's local rows (and more than 10) is refused for that entity (0-1)",
    ).text("a fraction from 0 to 1, such as 0.5"),
    key(
        "ALLOW_MASS_DELETE",
        Some("false"),
        "true: lift the MAX_DELETE_FRACTION guard (set it for one run, like `download --allow-mass-delete`)",
    ).text("true or false"),
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
    fn env_example_is_written_from_the_definitions() {
        // Help wrapped over several comment lines for width is one line here.
        let mut example = String::new();
        let mut in_help = false;
        for line in include_str!("../../.env.example").lines() {
            let assignment = line.trim_start_matches("# ").contains('=');
            match line.strip_prefix("# ") {
                Some(more) if in_help && !assignment => {
                    example.pop();
                    example.push(' ');
                    example.push_str(more);
                }
                _ => example.push_str(line),
            }
            example.push('\n');
            in_help = line.starts_with("# ") && !assignment;
        }
        for key in ALL {
            let note = if key.secret {
                " (secret)"
            } else if key.required {
                " (required)"
            } else {
                ""
            };
            let help = format!("# {}{note}\n", key.help);
            let line = match (key.default, key.required) {
                // A value with spaces is quoted, as dotenv reads it.
                (Some(default), _) if default.contains(' ') => {
                    format!("{help}{}=\"{default}\"\n", key.name)
                }
                (Some(default), _) => format!("{help}{}={default}\n", key.name),
                (None, true) => format!("{help}{}=", key.name),
                (None, false) => format!("{help}# {}=\n", key.name),
            };
            assert!(
                example.contains(&line),
                ".env.example does not have\n{line}\nfor {} (write it from src/config/keys.rs)",
                key.name
            );
        }
    }

    /// The README's configuration table: per key named in a row's first cell (`_SUFFIX` for
    /// the first name's prefix plus the suffix), the default in the same position of the second.
    fn readme_defaults() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let section = &readme[readme
            .find("## Configuration")
            .expect("a Configuration section")..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let mut found = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let names: Vec<&str> = cells[0]
                .trim_start_matches("| ")
                .split(['/', ','])
                .map(|n| n.trim().trim_matches('`'))
                .collect();
            let defaults: Vec<&str> = if names.len() == 1 {
                vec![cells[1]]
            } else {
                cells[1].split([',', '/']).map(str::trim).collect()
            };
            assert_eq!(names.len(), defaults.len(), "README row: {row}");
            let prefix = names[0].rsplit_once('_').map_or("", |(p, _)| p);
            for (name, default) in names.iter().zip(defaults) {
                let name = match name.strip_prefix('_') {
                    Some(suffix) => format!("{prefix}_{suffix}"),
                    None => (*name).to_string(),
                };
                found.push((name, default.trim().to_string()));
            }
        }
        found
    }

    #[test]
    fn the_readme_table_shows_every_key_with_its_default() {
        let table = readme_defaults();
        for key in ALL {
            let Some((_, shown)) = table.iter().find(|(n, _)| n == key.name) else {
                panic!(
                    "{} is missing from the README's configuration table",
                    key.name
                );
            };
            let shown = shown.trim_matches('`');
            let matches = match (key.default, key.required) {
                (_, true) => shown == "**required**",
                (Some(default), false) => shown == default,
                (None, false) => shown.starts_with('—') || shown == "built-in default",
            };
            assert!(
                matches,
                "README shows {} with default {shown:?}; src/config/keys.rs says {:?}",
                key.name, key.default
            );
        }
        for (name, _) in &table {
            assert!(
                lookup_exact(name).is_some(),
                "the README's table names an unknown key {name}"
            );
        }
    }

    #[test]
    fn misspelt_key_gets_a_suggestion() {
        assert_eq!(suggest("batch_sise"), Some("BATCH_SIZE"));
        assert_eq!(suggest("completely_unrelated"), None);
    }
}
