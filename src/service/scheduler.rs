//! When runs are due: the start-up cycle, then uploads every `SYNC_INTERVAL_SECONDS` and
//! downloads on `METER_SYNC_CRON` (one cycle when both are due), and the daily `sync_logs`
//! pruning. [`Scheduler::next`] is the step function (what to do at an instant: fire a job or
//! sleep until a time) and [`run_schedule`] the thin loop that sleeps and fires.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::cron::CronSchedule;

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

/// What the scheduler asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run this job now (to its end), then report it with [`Scheduler::fired`].
    Fire(Job),
    /// Nothing is due: sleep until this instant (or a stop), then ask again.
    Sleep(Instant),
}

/// The scheduler's state: when each job is next due, and whether a download is owed.
#[derive(Debug)]
pub struct Scheduler<'a> {
    schedule: &'a Schedule,
    clock: Clock,
    next_upload: Instant,
    next_download: Option<Instant>,
    next_prune: Instant,
    /// A due download was deferred by another run: it is tried again after `retry_busy`.
    download_pending: bool,
    /// The last download failed: it is retried with the next upload, as a cycle.
    download_failed: bool,
    started: bool,
    /// Set after a sleep: the next step looks at what became due.
    awake: bool,
}

impl<'a> Scheduler<'a> {
    /// A scheduler starting at `start` (the start-up cycle first, the pruning right after).
    pub fn new(schedule: &'a Schedule, clock: Clock, start: Instant) -> Self {
        let mut scheduler = Self {
            schedule,
            clock,
            next_upload: start + schedule.upload_every,
            next_download: None,
            next_prune: start,
            download_pending: false,
            download_failed: false,
            started: false,
            awake: false,
        };
        scheduler.next_download = scheduler.next_cron();
        scheduler
    }

    fn next_cron(&self) -> Option<Instant> {
        self.schedule
            .download_cron
            .next_after(self.clock.now())
            .map(|when| self.clock.instant_of(when))
    }

    /// When the next job can be due, seen from `now`.
    fn wake(&self, now: Instant) -> Instant {
        let mut wake = self.next_upload.min(self.next_prune);
        if let Some(at) = self.next_download {
            wake = wake.min(at);
        }
        if self.download_pending {
            wake = wake.min(now + self.schedule.retry_busy);
        }
        wake
    }

    /// The step function: what to do at `now`.
    pub fn next(&mut self, now: Instant) -> Step {
        if !self.started {
            self.started = true;
            return Step::Fire(Job::Startup);
        }
        if !self.awake {
            self.awake = true;
            return Step::Sleep(self.wake(now));
        }
        if now >= self.next_prune {
            self.next_prune = now + self.schedule.prune_every;
            return Step::Fire(Job::PruneLogs);
        }
        self.awake = false;
        if self.next_download.is_some_and(|at| now >= at) {
            self.download_pending = true;
            // The next occurrence strictly after this one.
            self.next_download = self
                .next_cron()
                .map(|at| at.max(now + Duration::from_millis(1)));
        }
        let upload_due = now >= self.next_upload;
        if upload_due {
            self.next_upload += self.schedule.upload_every;
            if self.next_upload <= now {
                self.next_upload = now + self.schedule.upload_every;
            }
        }
        let download_due = self.download_pending || (upload_due && self.download_failed);
        match (upload_due, download_due) {
            (true, true) => Step::Fire(Job::Cycle),
            (true, false) => Step::Fire(Job::Upload),
            (false, true) => Step::Fire(Job::Download),
            (false, false) => self.next(now),
        }
    }

    /// What a fired job did: a download deferred by another run is owed, a failed one is
    /// joined to the next upload.
    pub fn fired(&mut self, job: Job, fired: Fired) {
        if matches!(job, Job::Startup | Job::Cycle | Job::Download) {
            self.download_pending = fired == Fired::Busy;
            self.download_failed = fired == Fired::Failed;
        }
    }
}

/// The loop: asks the [`Scheduler`] what to do, sleeps or fires, until `stop` turns true.
/// `fire` runs a job to its end (or reports it busy).
pub async fn run_schedule<F, Fut>(
    schedule: &Schedule,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    mut fire: F,
) where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Fired>,
{
    let mut scheduler = Scheduler::new(schedule, clock, Instant::now());
    loop {
        if *stop.borrow() {
            return;
        }
        match scheduler.next(Instant::now()) {
            Step::Sleep(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = stop.changed() => return,
                }
            }
            Step::Fire(job) => {
                let fired = tokio::select! {
                    fired = fire(job) => fired,
                    _ = stop.changed() => return,
                };
                scheduler.fired(job, fired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            upload_every: Duration::from_secs(60),
            download_cron: CronSchedule::parse("0 * * * *").unwrap(),
            prune_every: Duration::from_secs(24 * 3600),
            retry_busy: Duration::from_secs(1),
        }
    }

    fn clock(start: Instant) -> Clock {
        let wall = DateTime::parse_from_rfc3339("2026-01-01T00:59:30Z")
            .unwrap()
            .with_timezone(&Utc);
        Clock::Tokio { wall, at: start }
    }

    /// Moves paused time to `at` and returns it.
    async fn at(at: Instant) -> Instant {
        tokio::time::advance(at - Instant::now()).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_says_what_is_due_at_that_instant() {
        let schedule = schedule();
        let start = Instant::now();
        let mut s = Scheduler::new(&schedule, clock(start), start);
        assert_eq!(s.next(start), Step::Fire(Job::Startup));
        s.fired(Job::Startup, Fired::Done);
        // The pruning is due at once; then the cron hour comes 30 s in, before the first upload.
        assert_eq!(s.next(start), Step::Sleep(start));
        assert_eq!(s.next(start), Step::Fire(Job::PruneLogs));
        let hour = start + Duration::from_secs(30);
        assert_eq!(s.next(start), Step::Sleep(hour));
        let now = at(hour).await;
        assert_eq!(s.next(now), Step::Fire(Job::Download));
        // Deferred by another run: retried a second later, not at the next hour.
        s.fired(Job::Download, Fired::Busy);
        let retry = hour + Duration::from_secs(1);
        assert_eq!(s.next(now), Step::Sleep(retry));
        let now = at(retry).await;
        assert_eq!(s.next(now), Step::Fire(Job::Download));
        // Failed: joined to the next upload as a cycle.
        s.fired(Job::Download, Fired::Failed);
        let upload = start + Duration::from_secs(60);
        assert_eq!(s.next(now), Step::Sleep(upload));
        let now = at(upload).await;
        assert_eq!(s.next(now), Step::Fire(Job::Cycle));
        s.fired(Job::Cycle, Fired::Done);
        let next = upload + Duration::from_secs(60);
        assert_eq!(s.next(now), Step::Sleep(next));
        let now = at(next).await;
        assert_eq!(s.next(now), Step::Fire(Job::Upload));
        // Nothing more until the following upload.
        assert_eq!(s.next(now), Step::Sleep(next + Duration::from_secs(60)));
    }
}
