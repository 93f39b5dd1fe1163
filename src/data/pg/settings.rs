//! What a connection runs before the work: the timeouts, as session settings (direct: as
//! startup options instead, see `driver_config`; session mode: after connecting) or, behind a
//! pooler in transaction mode, at the start of every transaction.

use crate::config::{DbConfig, PoolConfig, PoolMode};

/// The statement timeout and the idle-in-transaction timeout in milliseconds, when set. One
/// side's transaction waits idle while the other side runs a statement (up to the statement
/// timeout), so the idle bound is twice that: otherwise a remote statement ending at its timeout
/// would also kill the local transaction, and with it every entity of the run.
pub(super) fn timeouts(pool: &PoolConfig) -> Option<(u128, u128)> {
    let ms = pool.statement_timeout.as_millis();
    (ms > 0).then(|| (ms, ms.saturating_mul(2)))
}

/// The timeouts as `set` statements (`set local` with `local`), empty when none are set.
pub fn timeout_settings(pool: &PoolConfig, local: bool) -> String {
    let scope = if local { "set local" } else { "set" };
    match timeouts(pool) {
        Some((ms, idle)) => format!(
            "{scope} statement_timeout = {ms}; {scope} idle_in_transaction_session_timeout = {idle}"
        ),
        None => String::new(),
    }
}

/// What opens every remote transaction behind a pooler in transaction mode: `deallocate all`,
/// then the timeouts as `set local`. A prepared statement is an object of the server session,
/// not of the transaction: the server connection the pooler lends for this transaction still
/// holds the statements whichever client used it before prepared and left (PgBouncer before
/// 1.21 does not track them), and the driver names statements `s1`, `s2`, ... counting from one
/// in every process, so another agent's leftover `s5` would refuse this one's
/// (`prepared statement "s5" already exists`). This process never runs a statement prepared
/// in an earlier transaction, so removing them all first costs nothing.
pub fn transaction_mode_prelude(pool: &PoolConfig) -> String {
    match timeout_settings(pool, true) {
        timeouts if timeouts.is_empty() => "deallocate all".to_string(),
        timeouts => format!("deallocate all; {timeouts}"),
    }
}

/// What a new connection runs first: the timeouts in session mode (a pooler's session mode
/// keeps one server connection per client connection, so a session setting stays with it).
pub(super) fn after_connect(db: &DbConfig, pool: &PoolConfig) -> Option<String> {
    let settings = timeout_settings(pool, false);
    (db.pool_mode == PoolMode::Session && !settings.is_empty()).then_some(settings)
}
