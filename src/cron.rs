//! The download schedule: a standard 5-field cron expression (`minute hour day month weekday`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A validated 5-field cron schedule, evaluated in UTC.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

/// Why a cron expression was rejected.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a 5-field cron expression (minute hour day-of-month month day-of-week)")]
pub struct CronError {
    text: String,
    #[source]
    source: Option<croner::errors::CronError>,
}

impl CronSchedule {
    /// Parses exactly five fields; seconds and years are refused so that `0 * * * *` means
    /// what it means to cron.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let text = text.trim();
        let fail = |source| CronError {
            text: text.to_string(),
            source,
        };
        if text.split_whitespace().count() != 5 {
            return Err(fail(None));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| fail(Some(e)))?;
        Ok(Self {
            text: text.to_string(),
            cron,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `after`, or `None` if the schedule never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, CronError> {
        Self::parse(s)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.text)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn hourly_schedule_fires_at_minute_zero() {
        let cron = CronSchedule::parse("0 * * * *").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 10, 15, 0).unwrap();
        assert_eq!(
            cron.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap())
        );
        let on_the_hour = Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap();
        assert_eq!(
            cron.next_after(on_the_hour),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap())
        );
    }

    #[test]
    fn wrong_field_counts_and_garbage_are_rejected() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "0 0 * * * * 2026",
            "61 * * * *",
            "every hour",
            "* * * * mon-funday",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["*/5 * * * *", "0 2 * * 1-5", "30 6 1 * *"] {
            assert!(CronSchedule::parse(good).is_ok(), "{good:?} rejected");
        }
    }
}
