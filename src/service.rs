//! The running service: single-flight runs (one at a time in this process, and across
//! processes through the run lock), triggers from the scheduler, API, MCP and CLI, the status
//! and metrics they report, and graceful shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::config::Config;
use crate::cron::CronSchedule;
use crate::cycle::{self, RunRequest, SyncCycleResult};
use crate::metrics::Metrics;
use crate::pg::{PgError, Pools};
use crate::profile::Profile;
use crate::runlock::{LockError, RunKind, RunLock, Running, Trigger};
use crate::status::{self, MeterSyncStatus, SyncStatus};

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

impl RunHandle {
    /// Waits for the run to finish. Dropping the wait does not stop the run. `None` when the
    /// run was cut short by a shutdown past `SHUTDOWN_GRACE_SECONDS`.
    pub async fn wait(self) -> Option<Arc<SyncCycleResult>> {
        self.task.await.ok()
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

    /// The Prometheus text, with the database gauges measured now.
    pub async fn metrics_text(&self) -> String {
        let status = self.sync_status().await;
        self.inner.metrics.render(&status)
    }

    /// Deletes `sync_logs` rows older than `SYNC_LOG_RETENTION_DAYS`.
    pub async fn prune_logs(&self) -> Result<u64, PgError> {
        let client = self.inner.pools.local().await?;
        let days = self.inner.config.sync_log_retention_days;
        let deleted = crate::synclog::prune(&**client, days).await?;
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
                Some(result) if result.download.as_ref().is_none_or(|d| d.success()) => Fired::Done,
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
        run_schedule(&schedule, Clock::System, stop, |job| {
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

/// A scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The full cycle at start-up.
    Startup,
    /// Upload and download due together.
    Cycle,
    Upload,
    Download,
    /// Delete `sync_logs` rows past their retention.
    PruneLogs,
}

/// What happened to a fired job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    Done,
    /// The run's download failed: it is retried with the next upload
    /// (as a cycle) instead of waiting for the next cron time.
    Failed,
    /// Another run was in progress: a due download is retried shortly, a due upload waits for
    /// its next tick.
    Busy,
}

/// When jobs are due.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub upload_every: Duration,
    pub download_cron: CronSchedule,
    pub prune_every: Duration,
    /// How soon a download deferred by another run is tried again.
    pub retry_busy: Duration,
}

impl Schedule {
    pub fn from_config(config: &Config) -> Self {
        Self {
            upload_every: config.sync_interval,
            download_cron: config.meter_sync_cron.clone(),
            prune_every: Duration::from_secs(24 * 3600),
            retry_busy: Duration::from_secs(1),
        }
    }
}

/// Wall-clock time for the cron schedule.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Wall time that follows tokio's clock from a starting point (for tests with paused time).
    Tokio {
        wall: DateTime<Utc>,
        at: Instant,
    },
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, at } => {
                *wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
            }
        }
    }

    /// The tokio instant of a wall time (now, if it is past).
    fn instant_of(&self, when: DateTime<Utc>) -> Instant {
        Instant::now() + (when - self.now()).to_std().unwrap_or_default()
    }
}

/// The scheduler: the start-up cycle, then uploads every `upload_every` and downloads on the
/// cron schedule (together as one cycle when both are due), and the daily log pruning, until
/// `stop` turns true. `fire` runs a job to its end (or reports it busy). A download deferred by
/// another run is retried every `retry_busy`; a failed one (the remote down, say) is retried
/// with the next upload, as a cycle.
pub async fn run_schedule<F, Fut>(
    schedule: &Schedule,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    mut fire: F,
) where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Fired>,
{
    let next_cron = |clock: &Clock| {
        schedule
            .download_cron
            .next_after(clock.now())
            .map(|when| clock.instant_of(when))
    };
    let start = Instant::now();
    let mut next_upload = start + schedule.upload_every;
    let mut next_download = next_cron(&clock);
    let mut next_prune = start;
    let mut download_pending = false;
    let mut download_failed = false;
    let mut first = Some(Job::Startup);
    loop {
        if *stop.borrow() {
            return;
        }
        let job = if let Some(job) = first.take() {
            Some(job)
        } else {
            let mut wake = next_upload.min(next_prune);
            if let Some(at) = next_download {
                wake = wake.min(at);
            }
            if download_pending {
                wake = wake.min(Instant::now() + schedule.retry_busy);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => return,
            }
            let now = Instant::now();
            if now >= next_prune {
                next_prune = now + schedule.prune_every;
                tokio::select! {
                    _ = fire(Job::PruneLogs) => {}
                    _ = stop.changed() => return,
                }
            }
            if next_download.is_some_and(|at| now >= at) {
                download_pending = true;
                // The next occurrence strictly after this one.
                next_download = next_cron(&clock).map(|at| at.max(now + Duration::from_millis(1)));
            }
            let upload_due = now >= next_upload;
            if upload_due {
                next_upload += schedule.upload_every;
                if next_upload <= now {
                    next_upload = now + schedule.upload_every;
                }
            }
            match (
                upload_due,
                download_pending || (upload_due && download_failed),
            ) {
                (true, true) => Some(Job::Cycle),
                (true, false) => Some(Job::Upload),
                (false, true) => Some(Job::Download),
                (false, false) => None,
            }
        };
        let Some(job) = job else { continue };
        let fired = tokio::select! {
            fired = fire(job) => fired,
            _ = stop.changed() => return,
        };
        if matches!(job, Job::Startup | Job::Cycle | Job::Download) {
            download_pending = fired == Fired::Busy;
            download_failed = fired == Fired::Failed;
        }
    }
}
