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
