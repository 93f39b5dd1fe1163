//! The running service, the one way into a run for every surface: single-flight runs (one at a
//! time in this process, and across processes through the run lock), triggers from the
//! scheduler, API, MCP and CLI, the status and metrics they report, and graceful shutdown.

pub mod cycle;
pub mod gauges;
pub mod metrics;
pub mod record;
pub mod scheduler;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::config::Config;
use crate::data::pg::{PgError, Pools};
use crate::data::runlock::{LockError, RunKind, RunLock, Running, Trigger};
use crate::data::synclog::{self, LogRow, LogsQuery};
use crate::profile::Profile;
use cycle::{RunRequest, SyncCycleResult};
use metrics::Metrics;
use scheduler::{Clock, Fired, Job, Schedule};
use status::{MeterSyncStatus, SyncStatus};

/// Why a trigger was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TriggerError {
    /// Another run is in progress (here or in another process).
    #[error("{0}")]
    Busy(Running),
    #[error("the service is shutting down; no new runs are started")]
    ShuttingDown,
}

#[derive(Debug, Default)]
struct RunState {
    running: Option<Running>,
    stopping: bool,
}

struct Inner {
    config: Config,
    profile: Profile,
    pools: Pools,
    metrics: Metrics,
    state: watch::Sender<RunState>,
    current: Mutex<Option<AbortHandle>>,
    last: Mutex<Option<Arc<SyncCycleResult>>>,
}

/// The service: cheap to clone, shared by the scheduler, HTTP and MCP.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// A started run.
pub struct RunHandle {
    task: JoinHandle<Arc<SyncCycleResult>>,
}

/// A run was cut short by a shutdown past `SHUTDOWN_GRACE_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the run was cut short by a shutdown; unsent readings stay queued")]
pub struct CutShort;

impl RunHandle {
    /// Waits for the run to finish. Dropping the wait does not stop the run.
    pub async fn wait(self) -> Result<Arc<SyncCycleResult>, CutShort> {
        self.task.await.map_err(|_| CutShort)
    }
}

/// Clears the running state when a run ends, however it ends (also when it is aborted).
struct ClearOnDrop(Arc<Inner>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| s.running = None);
    }
}

impl Service {
    /// Builds the service; connections are made lazily.
    pub fn new(config: Config, profile: Profile) -> Result<Self, PgError> {
        let pools = Pools::new(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                profile,
                pools,
                metrics: Metrics::new(),
                state: watch::Sender::new(RunState::default()),
                current: Mutex::new(None),
                last: Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn profile(&self) -> &Profile {
        &self.inner.profile
    }

    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// The run of this process in progress, if any.
    pub fn running(&self) -> Option<Running> {
        self.inner.state.borrow().running.clone()
    }

    /// The last run this process finished.
    pub fn last_result(&self) -> Option<Arc<SyncCycleResult>> {
        guard(&self.inner.last).clone()
    }

    /// Starts a run of `kind` unless one is in progress (here or in another process on the
    /// same local database) or the service is stopping.
    pub async fn trigger(
        &self,
        kind: RunKind,
        trigger: Trigger,
    ) -> Result<RunHandle, TriggerError> {
        self.start(RunRequest::of(kind), trigger).await
    }

    /// [`Service::trigger`] with the download's options (entities, `--full`, the guard).
    pub async fn start(
        &self,
        run: RunRequest,
        trigger: Trigger,
    ) -> Result<RunHandle, TriggerError> {
        let kind = run.kind;
        let running = Running::now(kind, trigger);
        let mut refused = None;
        self.inner.state.send_if_modified(|s| {
            if s.stopping {
                refused = Some(TriggerError::ShuttingDown);
                false
            } else if let Some(current) = &s.running {
                refused = Some(TriggerError::Busy(current.clone()));
                false
            } else {
                s.running = Some(running.clone());
                true
            }
        });
        if let Some(refused) = refused {
            return Err(refused);
        }
        let clear = ClearOnDrop(self.inner.clone());
        let config = &self.inner.config;
        let lock = match RunLock::acquire(&config.local, &config.pool, &running).await {
            Ok(lock) => Some(lock),
            Err(LockError::Busy(other)) => return Err(TriggerError::Busy(other)),
            Err(LockError::Database(e)) => {
                // The run itself reports the unreachable database; nothing can run beside it.
                tracing::debug!(error = %e, "run lock not taken");
                None
            }
        };
        tracing::info!(kind = ?kind, trigger = ?trigger, "run starting");
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _clear = clear;
            let result = cycle::run(&inner.pools, &inner.config, &inner.profile, &run).await;
            inner.metrics.observe(&result);
            if let Some(lock) = lock {
                lock.release().await;
            }
            let result = Arc::new(result);
            *guard(&inner.last) = Some(result.clone());
            result
        });
        *guard(&self.inner.current) = Some(task.abort_handle());
        Ok(RunHandle { task })
    }

    /// 004's `SyncStatus`, measured now.
    pub async fn sync_status(&self) -> SyncStatus {
        status::sync_status(
            &self.inner.pools,
            &self.inner.config,
            &self.inner.profile,
            self.running(),
        )
        .await
    }

    /// 003's meter sync status, measured now.
    pub async fn meter_sync_status(&self) -> Result<MeterSyncStatus, PgError> {
        status::meter_sync_status(&self.inner.pools, &self.inner.profile, self.running()).await
    }

    /// The newest `sync_logs` rows.
    pub async fn sync_logs(&self, query: LogsQuery) -> Result<Vec<LogRow>, PgError> {
        let client = self.inner.pools.local().await?;
        synclog::recent(&**client, query).await
    }

    /// The upload and meter sync runs of the last `hours`, for the page's chart.
    pub async fn history(&self, hours: i64) -> Result<synclog::History, PgError> {
        let client = self.inner.pools.local().await?;
        synclog::history(&**client, hours).await
    }

    /// The local meters, in key order, optionally only active or inactive ones.
    pub async fn list_meters(
        &self,
        active: Option<bool>,
        limit: i64,
    ) -> Result<Vec<serde_json::Value>, status::MetersError> {
        status::list_meters(&self.inner.pools, &self.inner.profile, active, limit).await
    }

    /// The Prometheus text, with the database gauges measured now.
    pub async fn metrics_text(&self) -> String {
        let inner = &self.inner;
        let (status, storage) = tokio::join!(
            self.sync_status(),
            gauges::local_storage(&inner.pools, &inner.config, &inner.profile)
        );
        let filesystems = gauges::filesystems(&inner.config, storage.data_directory.as_deref());
        inner.metrics.render(&metrics::Measured {
            status,
            storage,
            filesystems,
        })
    }

    /// Deletes `sync_logs` rows older than `SYNC_LOG_RETENTION_DAYS`.
    pub async fn prune_logs(&self) -> Result<u64, PgError> {
        let client = self.inner.pools.local().await?;
        let days = self.inner.config.sync_log_retention_days;
        let deleted = synclog::prune(&**client, days).await?;
        if deleted > 0 {
            tracing::info!(deleted, days, "old sync_logs rows deleted");
        }
        Ok(deleted)
    }

    /// What the scheduler does for a job.
    async fn scheduled(&self, job: Job) -> Fired {
        let (kind, trigger) = match job {
            Job::PruneLogs => {
                if let Err(e) = self.prune_logs().await {
                    tracing::warn!(error = %e, "cannot prune sync_logs; retrying tomorrow");
                }
                return Fired::Done;
            }
            Job::Startup => (RunKind::Cycle, Trigger::Startup),
            Job::Cycle => (RunKind::Cycle, Trigger::Schedule),
            Job::Upload => (RunKind::Upload, Trigger::Schedule),
            Job::Download => (RunKind::Download, Trigger::Schedule),
        };
        match self.trigger(kind, trigger).await {
            Ok(handle) => match handle.wait().await {
                Ok(result) if result.download.as_ref().is_none_or(|d| d.success()) => Fired::Done,
                _ => Fired::Failed,
            },
            Err(TriggerError::Busy(running)) => {
                tracing::info!(job = ?job, "scheduled run deferred: {running}");
                Fired::Busy
            }
            Err(TriggerError::ShuttingDown) => Fired::Done,
        }
    }

    /// Runs the schedule of the configuration until `stop` turns true.
    pub async fn run_schedule(&self, stop: watch::Receiver<bool>) {
        let schedule = Schedule::from_config(&self.inner.config);
        scheduler::run_schedule(&schedule, Clock::System, stop, |job| {
            let service = self.clone();
            async move { service.scheduled(job).await }
        })
        .await;
    }

    /// Stops starting runs, waits up to `grace` for the current one to finish, then cuts it
    /// short (its open transactions roll back: nothing is lost, the next start resends) and
    /// closes the pools. True when the current run (if any) finished within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.state.send_modify(|s| s.stopping = true);
        let mut state = self.inner.state.subscribe();
        if let Some(running) = self.running() {
            tracing::info!(
                grace_s = grace.as_secs(),
                "shutdown: waiting for the current run to finish ({running})"
            );
        }
        let finished = tokio::time::timeout(grace, state.wait_for(|s| s.running.is_none()))
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "shutdown: the run did not finish within SHUTDOWN_GRACE_SECONDS; cutting it short (its transactions roll back, unsent readings stay queued)"
            );
            if let Some(abort) = guard(&self.inner.current).take() {
                abort.abort();
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                state.wait_for(|s| s.running.is_none()),
            )
            .await;
        }
        self.inner.pools.local.close();
        self.inner.pools.remote.close();
        finished
    }
}

fn guard<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
