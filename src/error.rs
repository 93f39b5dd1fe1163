//! Errors as a person reads them (one line, causes included), and the exit codes of the
//! command line, decided here once for every surface.

use std::process::ExitCode;

use crate::data::pg::PgError;

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything succeeded.
    Ok = 0,
    /// 1: a sync part or a database check failed.
    Failed = 1,
    /// 2: bad configuration or usage (a restart cannot fix it).
    Usage = 2,
}

impl Exit {
    /// `Ok` when `success`, else `Failed`.
    pub fn from_success(success: bool) -> Self {
        if success {
            Exit::Ok
        } else {
            Exit::Failed
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// An error and its causes on one line. A [`PgError`] already describes its driver cause, so
/// the walk stops there (also when a transparent wrapper hides it).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error;
    while !current.is::<PgError>() {
        let Some(next) = current.source() else { break };
        if next.is::<tokio_postgres::Error>() {
            break;
        }
        let cause = next.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        current = next;
    }
    text
}
