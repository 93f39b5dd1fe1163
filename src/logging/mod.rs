//! Log output: `tracing` to stderr (text or JSON), and to `LOG_FILE` when set, rotated daily
//! and at 100 MB, gzipped, 30 days kept ([`rotation`]). stdout is left to command output and
//! the MCP protocol.

pub mod rotation;

use std::path::Path;
use std::time::Instant;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("LOG_FILE={path}: cannot open the log file")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("LOG_LEVEL={0}: not a valid filter")]
    Filter(String),
}

/// Keeps the file writer flushing; drop it last (at exit).
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber. `level` is a level or filter directive; `file` adds a
/// daily-rotated file. Safe to call once per process; a second call is ignored.
pub fn init(level: &str, format: LogFormat, file: Option<&Path>) -> Result<LogGuard, LoggingError> {
    // Server NOTICEs ("table ... does not exist, skipping") are the driver's info lines: noise
    // for an operator, kept unless LOG_LEVEL names the driver itself.
    let directives = if level.contains("tokio_postgres") {
        level.to_string()
    } else {
        format!("{level},tokio_postgres=warn")
    };
    let filter =
        || EnvFilter::try_new(&directives).map_err(|_| LoggingError::Filter(level.to_string()));
    let stderr = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter()?);
    let (file_layer, guard) = match file {
        Some(path) => {
            let appender =
                rotation::RotatingFile::open(path).map_err(|source| LoggingError::File {
                    path: path.display().to_string(),
                    source,
                })?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = match format {
                LogFormat::Text => fmt::layer().with_writer(writer).with_ansi(false).boxed(),
                LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
            }
            .with_filter(filter()?);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init();
    Ok(LogGuard { _file: guard })
}

/// Logs how long each step of an operation took, at debug level, for tuning and diagnosis
/// (`LOG_LEVEL=meter_sync=debug`).
pub struct Steps<'a> {
    operation: &'static str,
    subject: &'a str,
    last: Instant,
}

impl<'a> Steps<'a> {
    /// Starts timing `operation` (`download`, `upload`) of `subject` (an entity, a table).
    pub fn new(operation: &'static str, subject: &'a str) -> Self {
        Self {
            operation,
            subject,
            last: Instant::now(),
        }
    }

    /// Logs the time since the previous step (or the start) under the name `step`.
    pub fn done(&mut self, step: &str) {
        let now = Instant::now();
        tracing::debug!(
            operation = self.operation,
            subject = self.subject,
            step,
            ms = (now - self.last).as_secs_f64() * 1000.0,
            "step done"
        );
        self.last = now;
    }
}
