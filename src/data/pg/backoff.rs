//! Exponential backoff with full jitter for retryable database failures.
//!
//! Spec 004 (property 5) asks for exponentially increasing waits of 2^n seconds. A fleet of
//! sites that all lost the same central at the same moment would, with exact waits, all retry
//! at the same moments too, and hit the central in lockstep when it comes back. So retry `n`
//! (0-based) waits a random time in `[0, base * 2^n]` ("full jitter"): the spec's 2^n is the
//! bound of each wait, and the bounds double from retry to retry. The schedule of bounds is
//! `backon`'s exponential one; the retry loop is `backon`'s too.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use crate::config::RetryConfig;

/// The longest any single wait may be, whatever the base and attempt.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Exponential backoff with full jitter: retry `n` (0-based) waits a random time in
/// `[0, base * 2^n]` (the bound capped at one hour), at most `max_retries` times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub max_retries: u32,
    pub base: Duration,
}

/// A uniformly random duration in `[0, bound]`.
fn jitter(bound: Duration) -> Duration {
    bound.mul_f64(fastrand::f64())
}

impl Backoff {
    /// The connection policy of a configuration.
    pub fn connection(retry: &RetryConfig) -> Self {
        Self {
            max_retries: retry.max_connection_retries,
            base: retry.base,
        }
    }

    /// The query policy of a configuration.
    pub fn query(retry: &RetryConfig) -> Self {
        Self {
            max_retries: retry.max_query_retries,
            base: retry.base,
        }
    }

    /// The bounds: `base`, doubling, capped at [`LONGEST_WAIT`], without end.
    fn exponential(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.base.min(LONGEST_WAIT))
            .with_factor(2.0)
            .with_max_delay(LONGEST_WAIT)
            .without_max_times()
    }

    /// The longest wait before retry `n` (0-based): `base * 2^n` (doubled in `f32`, so exact
    /// for whole seconds), capped at one hour.
    pub fn bound(&self, n: u32) -> Duration {
        self.exponential()
            .build()
            .nth(n as usize)
            .unwrap_or(LONGEST_WAIT)
    }

    /// The wait before retry `n` (0-based): random in `[0, self.bound(n)]`.
    pub fn delay(&self, n: u32) -> Duration {
        jitter(self.bound(n))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the retries are spent.
    /// Each retry is logged with the attempt, the wait and the error.
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // `backon`'s schedule of bounds, each wait drawn below its bound.
        let schedule = self
            .exponential()
            .with_max_times(self.max_retries as usize)
            .build()
            .map(jitter as fn(Duration) -> Duration);
        let mut attempt = 0;
        op.retry(schedule)
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(|e: &E, delay: Duration| {
                attempt += 1;
                tracing::warn!(what, attempt, max = self.max_retries, delay_ms = delay.as_millis() as u64, error = %e, "retrying after a retryable error");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;

    #[test]
    fn the_bounds_double_from_the_base_up_to_an_hour() {
        let b = Backoff {
            max_retries: 5,
            base: Duration::from_secs(2),
        };
        let bounds: Vec<u64> = (0..5).map(|n| b.bound(n).as_secs()).collect();
        assert_eq!(bounds, [2, 4, 8, 16, 32], "spec 004: 2s, 4s, 8s, 16s, 32s");
        assert_eq!(b.bound(40), Duration::from_secs(3600));
    }

    // Spec 004, Property 5 (the waits): every wait is within its retry's 2^n bound, the
    // bounds grow exponentially, and the waits are spread over the whole window, so a fleet
    // that failed together does not retry together.
    proptest! {
        #[test]
        fn prop_004_5_waits_are_full_jitter_within_the_doubling_bounds(
            base_ms in 1u64..5_000,
            n in 0u32..12,
        ) {
            let b = Backoff { max_retries: 12, base: Duration::from_millis(base_ms) };
            let bound = b.bound(n);
            // backon doubles in f32: exact for whole seconds, within a millionth otherwise.
            let exact = Duration::from_millis(base_ms * 2u64.pow(n)).min(LONGEST_WAIT);
            prop_assert!(bound.abs_diff(exact) <= exact / 1_000_000, "{bound:?} vs {exact:?}");
            let waits: Vec<Duration> = (0..200).map(|_| b.delay(n)).collect();
            prop_assert!(waits.iter().all(|w| *w <= bound), "{waits:?} over {bound:?}");
            // Uniform on [0, bound]: 200 draws all in one half of the window has odds 2^-199.
            let half = bound / 2;
            prop_assert!(waits.iter().any(|w| *w < half) && waits.iter().any(|w| *w > half));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_within_the_bounds_and_stops_at_the_limit() {
        let b = Backoff {
            max_retries: 3,
            base: Duration::from_secs(2),
        };
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), String> = b
            .retry(
                "test",
                |_| true,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down".to_string())
                },
            )
            .await;
        assert_eq!(result, Err("down".to_string()));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one try plus three retries"
        );
        assert!(start.elapsed() <= Duration::from_secs(2 + 4 + 8));
    }

    #[test]
    fn a_fleet_that_failed_together_retries_apart() {
        // Ten agents, the same policy: their first retries do not all fall at one moment.
        let b = Backoff {
            max_retries: 1,
            base: Duration::from_secs(60),
        };
        let firsts: std::collections::BTreeSet<Duration> = (0..10).map(|_| b.delay(0)).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_are_not_retried() {
        let b = Backoff {
            max_retries: 3,
            base: Duration::from_secs(1),
        };
        let calls = AtomicU32::new(0);
        let result: Result<(), String> = b
            .retry(
                "test",
                |_| false,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("bad data".to_string())
                },
            )
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_retries_is_returned() {
        let b = Backoff {
            max_retries: 3,
            base: Duration::from_millis(10),
        };
        let calls = AtomicU32::new(0);
        let result: Result<u32, String> = b
            .retry(
                "test",
                |_| true,
                || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    if n < 2 {
                        Err(format!("down {n}"))
                    } else {
                        Ok(n)
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(2));
    }
}
