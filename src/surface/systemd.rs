//! systemd integration of `meter-sync run` as a `Type=notify` unit (`deploy/meter-sync.service`):
//! `READY=1` once the local schema is ready and the API listens, `WATCHDOG=1` every half
//! `WatchdogSec` while the service is healthy, `STOPPING=1` when a stop begins, and a `STATUS=`
//! line for `systemctl status`. Outside systemd (no `NOTIFY_SOCKET`) nothing is sent.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd one state change; a failure to reach it is logged, never fatal.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Start-up is complete: the service is ready.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A graceful stop has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog every half `interval` while `health` (given the time it may take) says
/// the service is healthy; never returns (the caller selects it against the stop signal). A
/// check that fails skips its ping, so systemd restarts a service that stays unhealthy for the
/// whole interval.
pub async fn keep_alive<F, Fut>(interval: Duration, mut health: F)
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<(), &'static str>>,
{
    let every = interval / 2;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match health(every).await {
            Ok(()) => notify(&[NotifyState::Watchdog]),
            Err(why) => {
                tracing::error!(
                    reason = why,
                    "unhealthy: the systemd watchdog is not pinged"
                )
            }
        }
    }
}
