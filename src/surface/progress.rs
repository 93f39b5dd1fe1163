//! Progress of long one-shot `upload` and `download` runs: a bar (indicatif) when stderr is a
//! terminal, nothing extra otherwise (the log lines already say what happens).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::data::pg::Pools;
use crate::profile::ReadingsSpec;

/// A progress display; dropped or finished when the run ends.
pub struct Progress {
    bar: Option<ProgressBar>,
    poll: Option<JoinHandle<()>>,
}

impl Progress {
    fn none() -> Self {
        Self {
            bar: None,
            poll: None,
        }
    }

    /// An upload: the bar follows the queue as it drains (measured every 250 ms).
    pub async fn upload(pools: &Pools, readings: &ReadingsSpec) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::none();
        }
        let Ok(client) = pools.local().await else {
            return Self::none();
        };
        let Ok(start) = crate::engine::upload::queue_stats(&**client, readings).await else {
            return Self::none();
        };
        let total = start.size.max(0) as u64;
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{spinner} upload [{bar:40}] {pos}/{len} readings  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let watched = bar.clone();
        let readings = readings.clone();
        let poll = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Ok(now) = crate::engine::upload::queue_stats(&**client, &readings).await {
                    watched.set_position(total.saturating_sub(now.size.max(0) as u64));
                }
            }
        });
        Self {
            bar: Some(bar),
            poll: Some(poll),
        }
    }

    /// A download: a spinner with the elapsed time (the entity count is known, the rows not).
    pub fn download(entities: usize) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::none();
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg}  {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(format!("downloading {entities} configuration table(s)"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar: Some(bar),
            poll: None,
        }
    }

    /// Removes the display before the report is printed.
    pub fn finish(self) {
        if let Some(poll) = &self.poll {
            poll.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
