//! The run-level time limit (`RUN_TIMEOUT_SECONDS`) both engines work within.

use std::future::Future;
use std::time::Duration;

use crate::config::Config;

/// The run-level time limit (`RUN_TIMEOUT_SECONDS`): work past it is cut short. Dropping the
/// work rolls back its open transactions (an unfinished COPY is aborted), so nothing is half
/// applied; unsent readings stay queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

/// A run cut short by its [`Deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the run did not finish within RUN_TIMEOUT_SECONDS ({}s) and was cut short; its open transactions were rolled back and unsent readings stay queued", .limit.as_secs())]
pub struct TimedOut {
    pub limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    /// The deadline of `RUN_TIMEOUT_SECONDS` from now, if one is configured.
    pub fn from_config(config: &Config) -> Option<Self> {
        config.run_timeout.map(Self::after)
    }

    /// Runs fallible `work` until `deadline`, if there is one; past it, the work is dropped and
    /// the result is the [`TimedOut`] error.
    pub async fn within<T, E: From<TimedOut>>(
        deadline: Option<Self>,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match deadline {
            Some(deadline) => deadline.bound(work).await.unwrap_or_else(|e| Err(e.into())),
            None => work.await,
        }
    }

    /// Runs `work` until the deadline.
    pub async fn bound<T>(self, work: impl Future<Output = T>) -> Result<T, TimedOut> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| TimedOut { limit: self.limit })
    }
}
