//! The command line: argument parsing and one adapter per subcommand (`runs`: the sync runs,
//! through the service; `inspect`: check, migrate, status, quarantine; `print`: the tables).
//! Each adapter calls the library and formats the result; exit codes are 0 success, 1 a sync part (or a database
//! check) failed, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod inspect;
pub mod manual;
mod print;
mod runs;

pub use print::{print_download, print_upload};

use crate::config::{Config, RawSettings, Sources};
use crate::error::{chain, Exit};
use crate::profile::Profile;

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
    /// Print the shell completion script (e.g. `meter-sync completions bash >
    /// /etc/bash_completion.d/meter-sync`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (meter-sync.1 and one per subcommand) into DIR.
    Manpages {
        /// The directory to write them into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
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
        /// Release this reading, by its local id (repeatable; any id type: 42, a uuid, ...).
        #[arg(long = "id", value_name = "ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Print the released ids as JSON (`{"released": N, "ids": [...]}`).
        #[arg(long)]
        json: bool,
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

pub(crate) fn usage_error(error: impl std::error::Error + 'static) -> ExitCode {
    eprintln!("meter-sync: {}", chain(&error));
    Exit::Usage.into()
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
        let options = crate::surface::demo::DemoOptions {
            port,
            rate,
            upload_every,
            change_every,
        };
        return crate::surface::demo::run(options).await;
    }
    // The manuals and completions describe the command line: no configuration either.
    match &cli.command {
        Command::Completions { shell } => {
            return match manual::completions(*shell, &mut std::io::stdout()) {
                Ok(()) => Exit::Ok.into(),
                Err(e) => {
                    eprintln!("meter-sync: cannot write the completion script: {e}");
                    Exit::Failed.into()
                }
            };
        }
        Command::Manpages { dir } => {
            return match manual::write_manual_pages(dir) {
                Ok(written) => {
                    println!(
                        "wrote {} manual pages into {}",
                        written.len(),
                        dir.display()
                    );
                    Exit::Ok.into()
                }
                Err(e) => {
                    eprintln!(
                        "meter-sync: cannot write the manual pages into {}: {e}",
                        dir.display()
                    );
                    Exit::Failed.into()
                }
            };
        }
        _ => {}
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
        Command::Run => crate::surface::app::run(&raw, config, profile).await,
        Command::Once { json } => runs::once(config, profile, json).await,
        Command::Mcp => runs::mcp(config, profile).await,
        // Handled before the configuration is loaded.
        Command::Demo { .. } | Command::Completions { .. } | Command::Manpages { .. } => {
            Exit::Usage.into()
        }
        Command::Check { json } => inspect::check(&raw, &config, &profile, json).await,
        Command::Migrate { json } => inspect::migrate(&config, &profile, json).await,
        Command::Download {
            entities,
            full,
            allow_mass_delete,
            json,
        } => runs::download(config, profile, entities, full, allow_mass_delete, json).await,
        Command::Upload { json } => runs::upload(config, profile, json).await,
        Command::Status { json } => inspect::status(&config, &profile, json).await,
        Command::Quarantine { action } => inspect::quarantine(&config, &profile, action).await,
    }
}
