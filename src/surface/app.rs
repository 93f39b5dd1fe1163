//! `meter-sync run`: start-up (configuration summary, local database with retries, schema),
//! then the HTTP server and the scheduler until SIGTERM or SIGINT, then a graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, RawSettings};
use crate::data::pg::{self, Backoff};
use crate::error::{chain, Exit};
use crate::profile::Profile;
use crate::service::Service;
use crate::surface::http::tls::Serving;

/// How long the HTTP server may take to finish its requests after the last run ended.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// A started service: HTTP on `addr` and (optionally) the scheduler.
pub struct App {
    pub service: Service,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    scheduler: Option<JoinHandle<()>>,
}

impl App {
    /// Serves the API on `listener` and, when `schedule` is set, runs the scheduler.
    pub fn start(service: Service, listener: TcpListener, schedule: bool) -> std::io::Result<Self> {
        Self::start_with(service, listener, schedule, None)
    }

    /// [`App::start`], serving HTTPS only when `tls` is given (`API_TLS_CERT`, `API_TLS_KEY`).
    pub fn start_with(
        service: Service,
        listener: TcpListener,
        schedule: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let mut http_stop = stopped.clone();
        let router = crate::surface::http::router(service.clone(), addr.port());
        let server = match tls {
            None => tokio::spawn(async move {
                let shutdown = async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }),
            Some(tls) => {
                // The TLS handshakes run per connection, off the accept loop.
                let handle = axum_server::Handle::new();
                let server = axum_server::from_tcp_rustls(
                    listener.into_std()?,
                    axum_server::tls_rustls::RustlsConfig::from_config(tls),
                )?
                .handle(handle.clone());
                tokio::spawn(async move {
                    tokio::spawn(async move {
                        let _ = http_stop.wait_for(|s| *s).await;
                        handle.graceful_shutdown(Some(HTTP_DRAIN));
                    });
                    if let Err(e) = server.serve(router.into_make_service()).await {
                        tracing::error!(error = %e, "HTTPS server failed");
                    }
                })
            }
        };
        let scheduler = schedule.then(|| {
            let service = service.clone();
            tokio::spawn(async move { service.run_schedule(stopped).await })
        });
        Ok(Self {
            service,
            addr,
            stop,
            server,
            scheduler,
        })
    }

    /// Whether the service is healthy, for the systemd watchdog: the scheduler and the HTTP
    /// server still run and the status is answered within `within` (the local database being
    /// down is reported by the status, not a reason to restart the process).
    pub async fn health(&self, within: Duration) -> Result<(), &'static str> {
        if self.scheduler.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err("the scheduler has stopped");
        }
        if self.server.is_finished() {
            return Err("the HTTP server has stopped");
        }
        tokio::time::timeout(within, self.service.sync_status())
            .await
            .map(|_| ())
            .map_err(|_| "the status was not answered in time")
    }

    /// Graceful stop: no new runs, the current run finishes (bounded by
    /// `SHUTDOWN_GRACE_SECONDS`), then the scheduler and HTTP server stop and the pools close.
    /// True when the run (if any) finished within the grace period.
    pub async fn stop(self) -> bool {
        let grace = self.service.config().shutdown_grace;
        // The scheduler stops first so it starts nothing; HTTP stays up while the run ends, so
        // status and waiting triggers are still answered.
        if let Some(scheduler) = self.scheduler {
            scheduler.abort();
            let _ = scheduler.await;
        }
        let finished = self.service.shutdown(grace).await;
        let _ = self.stop.send(true);
        let mut server = self.server;
        if tokio::time::timeout(HTTP_DRAIN, &mut server).await.is_err() {
            server.abort();
        }
        finished
    }
}

/// Connects to the local database with `MAX_CONNECTION_RETRIES` retries and applies the schema.
async fn prepare_local(config: &Config, profile: &Profile) -> Result<(), String> {
    let backoff = Backoff::connection(&config.retry);
    let mut client = backoff
        .retry(
            "connect to the local database",
            pg::PgError::is_retryable,
            || pg::connect(&config.local, &config.pool),
        )
        .await
        .map_err(|e| {
            format!(
                "the local database is unreachable after {} retries: {}",
                backoff.max_retries,
                chain(&e)
            )
        })?;
    let types = crate::data::schema::TypeSource {
        remote: &config.remote,
        pool: &config.pool,
    };
    let report = crate::data::schema::migrate_with(&mut client, profile, Some(types))
        .await
        .map_err(|e| format!("cannot prepare the local schema: {}", chain(&e)))?;
    for change in &report.changes {
        tracing::info!("schema: {change}");
    }
    for warning in &report.warnings {
        tracing::warn!("schema: {warning}");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: stopping"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `meter-sync run`.
pub async fn run(raw: &RawSettings, config: Config, profile: Profile) -> ExitCode {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "meter-sync starting");
    for line in Config::redacted_summary(raw) {
        tracing::info!("config: {line}");
    }
    tracing::info!(
        profile = %profile.origin,
        entities = ?profile.entities.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
        "profile loaded"
    );
    let serving = match Serving::from_config(&config) {
        Ok(serving) => serving,
        Err(message) => {
            eprintln!("meter-sync: {message}");
            return Exit::Usage.into();
        }
    };
    if let Err(message) = prepare_local(&config, &profile).await {
        tracing::error!("{message}");
        eprintln!("meter-sync: {message}");
        return Exit::Failed.into();
    }
    let address = SocketAddr::new(config.api_host, config.api_port);
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("meter-sync: cannot listen on {address} (API_HOST, API_PORT): {e}");
            return Exit::Failed.into();
        }
    };
    let service = match Service::new(config, profile) {
        Ok(service) => service,
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            return Exit::Usage.into();
        }
    };
    let app = match App::start_with(service, listener, true, serving.tls.clone()) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("meter-sync: cannot start the HTTP server: {e}");
            return Exit::Failed.into();
        }
    };
    let url = serving.url(app.addr);
    tracing::info!(
        "listening on {url} (status /api/local/sync-status, API docs /docs, metrics /metrics)"
    );
    crate::surface::systemd::ready(&format!("listening on {url}"));
    match crate::surface::systemd::watchdog_interval() {
        Some(interval) => {
            tracing::info!(
                interval_ms = interval.as_millis() as u64,
                "systemd watchdog enabled"
            );
            tokio::select! {
                () = stop_signal() => {}
                () = crate::surface::systemd::keep_alive(interval, |within| app.health(within)) => {}
            }
        }
        None => stop_signal().await,
    }
    crate::surface::systemd::stopping();
    let finished = app.stop().await;
    tracing::info!(run_completed = finished, "meter-sync stopped");
    Exit::Ok.into()
}
