//! The command line: argument parsing and one adapter per subcommand. Each adapter calls the
//! library and formats the result; exit codes are 0 success, 1 a sync part (or a database
//! check) failed, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, RawSettings, Side, Sources};
use crate::cycle::{RunRequest, SyncCycleResult};
use crate::download::DownloadReport;
use crate::error::{chain, Exit};
use crate::pg::{self, Backoff, Pools};
use crate::profile::{OnMissingKind, Profile};
use crate::runlock::{RunKind, Trigger};
use crate::schema;
use crate::upload;

/// Keeps a metering site's PostgreSQL in step with the central PostgreSQL.
///
/// Configuration comes from environment variables (see `.env.example`), a `.env` file in the
/// working directory, `--config FILE` (the same keys in lower case, TOML) and `--set KEY=VALUE`,
/// in that order of rising precedence: command line > environment > .env > file > defaults.
#[derive(Debug, Parser)]
#[command(name = "meter-sync", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file with the same keys as the environment, in lower case.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub overrides: Vec<(String, String)>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and profile, print them (secrets masked) and connect to both
    /// databases; says which side failed and why.
    Check {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the service: the start-up cycle, uploads every SYNC_INTERVAL_SECONDS, downloads on
    /// METER_SYNC_CRON, the HTTP API on API_HOST:API_PORT; stops gracefully on SIGTERM/SIGINT.
    Run,
    /// Try the whole service on throwaway clusters with live data: starts a local and a
    /// central PostgreSQL cluster (from the installed server binaries), loads sample
    /// configuration, generates readings, and runs the service with its page on 127.0.0.1.
    Demo {
        /// Port of the page, API and /mcp.
        #[arg(long, default_value_t = 3002)]
        port: u16,
        /// Readings generated per second.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        rate: u32,
        /// Seconds between scheduled uploads.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        upload_every: u32,
        /// Seconds between changes of the central configuration (0: never).
        #[arg(long, default_value_t = 45)]
        change_every: u32,
    },
    /// Serve the MCP tools over stdio (for an MCP client that starts the server itself):
    /// nothing but protocol on stdout; logs go to stderr (or LOG_FILE).
    Mcp,
    /// Run one full cycle (upload, then every download) and exit: 0 when every part
    /// succeeded, 1 otherwise.
    Once {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mirror the configuration tables from the remote now (all entities, or those named),
    /// print a per-entity table (or JSON). Exit 0 when every entity succeeded, 1 otherwise.
    Download {
        /// Sync only this entity (repeatable); dependencies are not added implicitly.
        #[arg(long = "entity", value_name = "NAME")]
        entities: Vec<String>,
        /// Compare every row's values rather than row versions: also repairs local edits to
        /// mirrored rows, at the cost of transferring every row.
        #[arg(long)]
        full: bool,
        /// Apply even when an entity would lose more than MAX_DELETE_FRACTION of its rows (a
        /// remote table emptied on purpose); same as ALLOW_MASS_DELETE=true for this run.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload queued meter readings to the remote now, draining the queue batch by batch.
    /// Exit 0 when the run ended without error (refused readings are reported), 1 otherwise.
    Upload {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the upload queue (size, oldest unsent reading, quarantined) and the last runs.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List quarantined readings (refused by the remote MAX_ROW_FAILURES times) or release them.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Create or complete the local schema of the active profile (tables, readings queue
    /// index, sync_logs, meter_sync_log view). Idempotent; never touches the remote.
    Migrate {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `meter-sync quarantine ...`.
#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// List quarantined readings with their error.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put quarantined readings back in the queue (attempts reset).
    Release {
        /// Release every quarantined reading.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Release this reading (repeatable).
        #[arg(long = "id", value_name = "ID", required_unless_present = "all")]
        ids: Vec<i64>,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// Loads configuration and profile, or says what is wrong (exit 2).
fn load(cli: &Cli) -> Result<(RawSettings, Config, Profile), ExitCode> {
    let sources = Sources::from_process(cli.config.clone(), cli.overrides.clone());
    let raw = RawSettings::load(&sources).map_err(usage_error)?;
    let config = Config::from_raw(&raw).map_err(usage_error)?;
    let profile = Profile::load(config.sync_profile.as_deref()).map_err(usage_error)?;
    Ok((raw, config, profile))
}

fn usage_error(error: impl std::error::Error + 'static) -> ExitCode {
    eprintln!("meter-sync: {}", chain(&error));
    Exit::Usage.into()
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    // The demo brings its own databases: it needs no configuration.
    if let Command::Demo {
        port,
        rate,
        upload_every,
        change_every,
    } = cli.command
    {
        let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
        let _log = match crate::logging::init(&level, crate::config::LogFormat::Text, None) {
            Ok(guard) => guard,
            Err(e) => return usage_error(e),
        };
        let options = crate::demo::DemoOptions {
            port,
            rate,
            upload_every,
            change_every,
        };
        return crate::demo::run(options).await;
    }
    let (raw, config, profile) = match load(&cli) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let _log = match crate::logging::init(
        &config.log_level,
        config.log_format,
        config.log_file.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Run => crate::app::run(&raw, config, profile).await,
        Command::Once { json } => once(config, profile, json).await,
        Command::Mcp => mcp(config, profile).await,
        // Handled before the configuration is loaded.
        Command::Demo { .. } => Exit::Usage.into(),
        Command::Check { json } => check(&raw, &config, &profile, json).await,
        Command::Migrate { json } => migrate(&config, &profile, json).await,
        Command::Download {
            entities,
            full,
            allow_mass_delete,
            json,
        } => download(config, profile, entities, full, allow_mass_delete, json).await,
        Command::Upload { json } => upload(config, profile, json).await,
        Command::Status { json } => status(&config, &profile, json).await,
        Command::Quarantine { action } => quarantine(&config, &profile, action).await,
    }
}

/// The outcome of connecting to one side.
#[derive(Debug, Serialize)]
struct SideCheck {
    side: Side,
    address: String,
    ok: bool,
    server_version: Option<String>,
    error: Option<String>,
}

async fn check_side(db: &crate::config::DbConfig, config: &Config) -> SideCheck {
    let result = async {
        let client = pg::connect(db, &config.pool).await?;
        let row = client
            .query_one("show server_version", &[])
            .await
            .map_err(|e| pg::PgError::query(db.side, "read the server version", e))?;
        Ok::<String, pg::PgError>(row.get(0))
    }
    .await;
    SideCheck {
        side: db.side,
        address: db.address(),
        ok: result.is_ok(),
        server_version: result.as_ref().ok().cloned(),
        error: result.err().map(|e| chain(&e)),
    }
}

async fn check(raw: &RawSettings, config: &Config, profile: &Profile, json: bool) -> ExitCode {
    let (local, remote) = tokio::join!(
        check_side(&config.local, config),
        check_side(&config.remote, config)
    );
    let ok = local.ok && remote.ok;
    if json {
        let out = serde_json::json!({
            "ok": ok,
            "configuration": Config::redacted_summary(raw),
            "profile": { "origin": profile.origin, "entities": profile.entities.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
                         "readings": profile.readings.as_ref().map(|r| r.table.to_string()) },
            "databases": [local, remote],
        });
        println!("{out:#}");
    } else {
        println!("configuration (secrets masked):");
        for line in Config::redacted_summary(raw) {
            println!("  {line}");
        }
        let entities: Vec<String> = profile
            .entities
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        println!(
            "profile: {} (entities in order: {})",
            profile.origin,
            entities.join(", ")
        );
        if let Some(readings) = &profile.readings {
            println!(
                "  readings: {} -> remote {}",
                readings.table, readings.remote_table
            );
        }
        for side in [&local, &remote] {
            match (&side.server_version, &side.error) {
                (Some(version), _) => println!(
                    "{} database {}: ok (PostgreSQL {version})",
                    side.side, side.address
                ),
                (_, Some(error)) => {
                    println!("{} database {}: FAILED: {error}", side.side, side.address)
                }
                _ => {}
            }
        }
    }
    Exit::from_success(ok).into()
}

async fn migrate(config: &Config, profile: &Profile, json: bool) -> ExitCode {
    let result = async {
        let mut client = Backoff::connection(&config.retry)
            .retry(
                "connect to the local database",
                pg::PgError::is_retryable,
                || pg::connect(&config.local, &config.pool),
            )
            .await?;
        schema::migrate(&mut client, profile).await
    }
    .await;
    match result {
        Ok(report) => {
            if json {
                println!(
                    "{:#}",
                    serde_json::json!({ "ok": true, "changes": report.changes, "warnings": report.warnings })
                );
            } else if report.changes.is_empty() {
                println!("local schema is up to date ({})", config.local.address());
            } else {
                for change in &report.changes {
                    println!("{change}");
                }
            }
            if !json {
                for warning in &report.warnings {
                    println!("warning: {warning}");
                }
            }
            Exit::Ok.into()
        }
        Err(e) => {
            if json {
                println!(
                    "{:#}",
                    serde_json::json!({ "ok": false, "error": chain(&e) })
                );
            }
            eprintln!("meter-sync: migrate failed: {}", chain(&e));
            Exit::Failed.into()
        }
    }
}

async fn download(
    config: Config,
    profile: Profile,
    entities: Vec<String>,
    full: bool,
    allow_mass_delete: bool,
    json: bool,
) -> ExitCode {
    if let Some(unknown) = entities.iter().find(|n| profile.entity(n).is_none()) {
        let known: Vec<String> = profile
            .entities
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        eprintln!(
            "meter-sync: unknown entity `{unknown}`; the profile has: {}",
            known.join(", ")
        );
        return Exit::Usage.into();
    }
    let count = if entities.is_empty() {
        profile.entities.len()
    } else {
        entities.len()
    };
    let run = RunRequest {
        kind: RunKind::Download,
        only: entities,
        full,
        allow_mass_delete,
    };
    let progress = crate::progress::Progress::download(count);
    let result = run_once(config, profile, run).await;
    progress.finish();
    let report = match result.map(|r| r.download.clone()) {
        Ok(Some(report)) => report,
        Ok(None) => return Exit::Failed.into(),
        Err(code) => return code,
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["success"] = report.success().into();
        value["sync_result"] = report.sync_result();
        println!("{value:#}");
    } else {
        print_download(&report);
    }
    Exit::from_success(report.success()).into()
}

/// Runs `run` through the service, as the API and the scheduler do (single flight, run lock,
/// deadline, recording), then closes its pools. The exit code (with the reason printed) when
/// it could not start or was cut short.
async fn run_once(
    config: Config,
    profile: Profile,
    run: RunRequest,
) -> Result<std::sync::Arc<SyncCycleResult>, ExitCode> {
    let service = crate::service::Service::new(config, profile).map_err(usage_error)?;
    let result = match service.start(run, Trigger::Cli).await {
        Ok(handle) => handle.wait().await,
        Err(e) => {
            eprintln!("meter-sync: {e}");
            return Err(Exit::Failed.into());
        }
    };
    service.shutdown(std::time::Duration::ZERO).await;
    result.map_err(|cut| {
        eprintln!("meter-sync: {cut}");
        Exit::Failed.into()
    })
}

/// The human-readable download table.
pub fn print_download(report: &DownloadReport) {
    let tenant = report.tenant.as_deref().unwrap_or("?");
    let verdict = if report.success() { "ok" } else { "FAILED" };
    println!(
        "download for tenant {tenant}: {verdict} in {} ms",
        report.duration_ms
    );
    if let Some(error) = &report.error {
        println!("error: {error}");
    }
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  result",
        "entity", "fetched", "inserted", "updated", "deleted", "skipped", "duration"
    );
    for e in &report.entities {
        let result = match &e.error {
            None => "ok".to_string(),
            Some(error) => format!("FAILED: {error}"),
        };
        let deleted = match e.on_missing {
            OnMissingKind::Deactivate => format!("{}*", e.deleted),
            _ => e.deleted.to_string(),
        };
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} ms  {result}",
            e.entity, e.fetched, e.inserted, e.updated, deleted, e.skipped, e.duration_ms
        );
    }
    if report
        .entities
        .iter()
        .any(|e| e.on_missing == OnMissingKind::Deactivate)
    {
        println!("* deactivated (active = false) rather than deleted");
    }
}

/// The readings spec, or a usage error when the profile has none.
fn readings(profile: &Profile) -> Result<&crate::profile::ReadingsSpec, ExitCode> {
    profile.readings.as_ref().ok_or_else(|| {
        eprintln!(
            "meter-sync: profile {} has no [readings] table to upload",
            profile.origin
        );
        Exit::Usage.into()
    })
}

async fn upload(config: Config, profile: Profile, json: bool) -> ExitCode {
    if !config.upload_enabled {
        eprintln!("meter-sync: uploads are disabled on this site (UPLOAD_ENABLED=false)");
        return Exit::Usage.into();
    }
    let readings = match readings(&profile) {
        Ok(r) => r.clone(),
        Err(code) => return code,
    };
    let progress = match Pools::new(&config) {
        Ok(pools) => crate::progress::Progress::upload(&pools, &readings).await,
        Err(e) => return usage_error(e),
    };
    let result = run_once(config, profile, RunRequest::of(RunKind::Upload)).await;
    progress.finish();
    let report = match result.map(|r| r.upload.clone()) {
        Ok(Some(report)) => report,
        Ok(None) => return Exit::Failed.into(),
        Err(code) => return code,
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["success"] = report.success().into();
        println!("{value:#}");
    } else {
        print_upload(&report);
    }
    Exit::from_success(report.success()).into()
}

async fn status(config: &Config, profile: &Profile, json: bool) -> ExitCode {
    let pools = match Pools::new(config) {
        Ok(pools) => pools,
        Err(e) => return usage_error(e),
    };
    let status = crate::status::sync_status(&pools, config, profile, None).await;
    let meter = crate::status::meter_sync_status(&pools, profile, None)
        .await
        .ok();
    if json {
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        value["meter_sync"] = serde_json::to_value(&meter).unwrap_or_default();
        println!("{value:#}");
    } else {
        print_status(&status);
    }
    Exit::from_success(status.local_db_connected).into()
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human-readable status.
fn print_status(s: &crate::status::SyncStatus) {
    println!("tenant: {}", or_dash(s.tenant_id.as_deref()));
    for (side, up, error) in [
        (Side::Local, s.local_db_connected, &s.local_db_error),
        (Side::Remote, s.remote_db_connected, &s.remote_db_error),
    ] {
        match (up, error) {
            (true, None) => println!("{side} database: connected"),
            (true, Some(e)) => println!("{side} database: connected ({e})"),
            (false, e) => println!("{side} database: UNREACHABLE: {}", or_dash(e.as_deref())),
        }
    }
    match &s.running {
        Some(running) => println!(
            "running: {} since {}",
            running.kind,
            running.since.to_rfc3339()
        ),
        None => println!("running: no"),
    }
    println!(
        "upload queue: {} readings, oldest {}, {} quarantined; {} uploaded in the kept sync_logs",
        or_dash(s.queue_size),
        s.oldest_unsent_age_seconds
            .map_or("-".to_string(), |a| format!("{a:.0} s old")),
        or_dash(s.quarantined_count),
        or_dash(s.total_records_synced)
    );
    println!(
        "meters: {} active locally, {} on the remote; tenants: {} locally, {} on the remote",
        or_dash(s.local_meter_count),
        or_dash(s.remote_meter_count),
        or_dash(s.local_tenant_count),
        or_dash(s.remote_tenant_count)
    );
    match (s.last_sync_time, s.last_sync_success) {
        (Some(at), Some(ok)) => println!(
            "last sync: {} at {}{}",
            if ok { "ok" } else { "FAILED" },
            at.to_rfc3339(),
            s.last_sync_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        _ => println!("last sync: never"),
    }
    for run in s.last_upload.iter().chain(&s.last_download) {
        println!(
            "  {:<22} {:<6} at {} ({} ms) +{} ~{} -{}{}",
            match &run.entity {
                Some(e) => format!("download {e}"),
                None => "upload".to_string(),
            },
            if run.success { "ok" } else { "FAILED" },
            run.timestamp.to_rfc3339(),
            run.duration_ms.unwrap_or(0),
            run.inserted,
            run.updated,
            run.deleted,
            run.error_message
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

async fn mcp(config: Config, profile: Profile) -> ExitCode {
    let service = match crate::service::Service::new(config, profile) {
        Ok(service) => service,
        Err(e) => return usage_error(e),
    };
    match crate::mcp::serve_stdio(service).await {
        Ok(()) => Exit::Ok.into(),
        Err(message) => {
            tracing::error!("{message}");
            Exit::Failed.into()
        }
    }
}

async fn once(config: Config, profile: Profile, json: bool) -> ExitCode {
    let result = match run_once(config, profile, RunRequest::of(RunKind::Cycle)).await {
        Ok(result) => result,
        Err(code) => return code,
    };
    if json {
        println!("{:#}", serde_json::to_value(&*result).unwrap_or_default());
    } else {
        if let Some(upload) = &result.upload {
            print_upload(upload);
        }
        if let Some(download) = &result.download {
            print_download(download);
        }
        println!(
            "cycle: {} in {} ms",
            if result.success { "ok" } else { "FAILED" },
            result.total_duration_ms
        );
    }
    Exit::from_success(result.success).into()
}

async fn quarantine(config: &Config, profile: &Profile, action: QuarantineAction) -> ExitCode {
    let readings = match readings(profile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = match pg::connect(&config.local, &config.pool).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            return Exit::Failed.into();
        }
    };
    let outcome = match action {
        QuarantineAction::List { limit, json } => {
            upload::list_quarantined(&client, readings, limit.clamp(1, 100_000))
                .await
                .map(|list| {
                    if json {
                        println!("{:#}", serde_json::to_value(&list).unwrap_or_default());
                    } else if list.is_empty() {
                        println!("no quarantined readings");
                    } else {
                        for q in &list {
                            println!(
                                "{}\t{}\t{} attempts\tsince {}\t{}",
                                q.id,
                                q.row,
                                q.attempts,
                                q.quarantined_at.to_rfc3339(),
                                q.error.as_deref().unwrap_or("")
                            );
                        }
                    }
                })
        }
        QuarantineAction::Release { all, ids } => {
            let chosen = if all { None } else { Some(ids.as_slice()) };
            upload::release_quarantined(&client, readings, chosen)
                .await
                .map(|released| {
                    println!("released {} reading(s) for another upload", released.len())
                })
        }
    };
    match outcome {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            Exit::Failed.into()
        }
    }
}

/// The human-readable upload report.
pub fn print_upload(report: &upload::UploadReport) {
    let verdict = if report.success() { "ok" } else { "FAILED" };
    println!(
        "upload: {verdict} in {} ms: {} uploaded, {} already on the remote, {} removed locally, {} refused ({} quarantined), {} batches",
        report.duration_ms, report.uploaded, report.deduplicated, report.removed, report.rejected_count, report.quarantined, report.batches
    );
    if let (Some(before), Some(after)) = (report.queue_before, report.queue_after) {
        println!(
            "queue: {} before, {} after; {} quarantined",
            before.size, after.size, after.quarantined
        );
    }
    for r in &report.rejected {
        println!(
            "refused reading {}: {}{}",
            r.id,
            r.error,
            if r.quarantined { " (quarantined)" } else { "" }
        );
    }
    if let Some(error) = &report.error {
        println!("error: {error}");
    }
}
