//! Single flight across processes: a sync run (cycle, upload or download) holds a session
//! advisory lock on the local database for its whole duration, on a connection of its own
//! whose `application_name` says what runs since when. A second process (another `meter-sync
//! run`, or a CLI `upload` beside the service) reads that back and is refused with a clear
//! message instead of running concurrently (003 property 5, 004 property 6).

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{DbConfig, PoolConfig};
use crate::data::pg::{self, PgError};

/// The advisory lock key held for the duration of a run (`mtr-sync` in ASCII).
pub const RUN_LOCK: i64 = 0x6d74_722d_7379_6e63;
/// The advisory lock key that keeps two upload runs off one local database (`mtr-upld`),
/// held by the upload engine on a connection of its own for the run.
pub const UPLOAD_LOCK: i64 = 0x6d74_722d_7570_6c64;
/// The advisory lock key that serialises concurrent `migrate` runs (`meter-sy`), taken for
/// the migration's transaction.
pub const MIGRATE_LOCK: i64 = 0x6d65_7465_722d_7379;

/// Prefix of the `application_name` of the connection that holds [`RUN_LOCK`].
const NAME_PREFIX: &str = "meter-sync:";

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Upload, then download of every entity.
    Cycle,
    /// Upload only.
    Upload,
    /// Download of every entity only (the meter sync of spec 003).
    Download,
}

impl RunKind {
    fn tag(self) -> &'static str {
        match self {
            RunKind::Cycle => "cycle",
            RunKind::Upload => "upload",
            RunKind::Download => "download",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        [RunKind::Cycle, RunKind::Upload, RunKind::Download]
            .into_iter()
            .find(|k| k.tag() == tag)
    }

    /// Whether a run of this kind downloads (the 003 `is_syncing`).
    pub fn downloads(self) -> bool {
        matches!(self, RunKind::Cycle | RunKind::Download)
    }

    /// Whether a run of this kind uploads.
    pub fn uploads(self) -> bool {
        matches!(self, RunKind::Cycle | RunKind::Upload)
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunKind::Cycle => "a sync cycle",
            RunKind::Upload => "an upload",
            RunKind::Download => "a download",
        })
    }
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Startup,
    Schedule,
    Api,
    Mcp,
    Cli,
}

impl Trigger {
    fn tag(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
            Trigger::Mcp => "mcp",
            Trigger::Cli => "cli",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        [
            Trigger::Startup,
            Trigger::Schedule,
            Trigger::Api,
            Trigger::Mcp,
            Trigger::Cli,
        ]
        .into_iter()
        .find(|t| t.tag() == tag)
    }
}

/// A run in progress, here or in another process on the same local database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Running {
    pub kind: RunKind,
    pub since: DateTime<Utc>,
    pub trigger: Trigger,
    /// The backend pid holding the lock when the run belongs to another process.
    pub other_process: Option<i32>,
}

impl Running {
    /// A run starting now in this process.
    pub fn now(kind: RunKind, trigger: Trigger) -> Self {
        Self {
            kind,
            since: Utc::now(),
            trigger,
            other_process: None,
        }
    }

    fn application_name(&self) -> String {
        // At most 63 bytes: "meter-sync:download:2026-11-23T21:41:31Z:schedule" is 50.
        format!(
            "{NAME_PREFIX}{}:{}:{}",
            self.kind.tag(),
            self.since.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.trigger.tag()
        )
    }

    fn parse_application_name(name: &str, pid: i32) -> Option<Self> {
        let rest = name.strip_prefix(NAME_PREFIX)?;
        let (kind, rest) = rest.split_once(':')?;
        let (since, trigger) = rest.rsplit_once(':')?;
        Some(Self {
            kind: RunKind::from_tag(kind)?,
            since: DateTime::parse_from_rfc3339(since)
                .ok()?
                .with_timezone(&Utc),
            trigger: Trigger::from_tag(trigger)?,
            other_process: Some(pid),
        })
    }
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = (Utc::now() - self.since).num_seconds().max(0);
        write!(
            f,
            "{} is already running (started by {} at {}, {seconds} s ago",
            self.kind,
            self.trigger.tag(),
            self.since.to_rfc3339_opts(SecondsFormat::Secs, true)
        )?;
        if let Some(pid) = self.other_process {
            write!(
                f,
                ", in another meter-sync process: local backend pid {pid}"
            )?;
        }
        write!(f, "); try again when it has finished")
    }
}

/// Why a run could not take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0}")]
    Busy(Running),
    #[error(transparent)]
    Database(#[from] PgError),
}

/// Takes the session lock `key` on `client` if it is free; the connection should be one of the
/// run's own, so that it closes (releasing the lock) if the run is cut short.
async fn try_session_lock(
    client: &impl tokio_postgres::GenericClient,
    key: i64,
    what: &'static str,
) -> Result<bool, PgError> {
    let row = client
        .query_one("select pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(pg::on_local(what))?;
    Ok(row.get(0))
}

/// Releases the session lock `key`; a failure only leaves it to the connection's end.
async fn unlock_session(
    client: &impl tokio_postgres::GenericClient,
    key: i64,
) -> Result<(), PgError> {
    client
        .execute("select pg_advisory_unlock($1)", &[&key])
        .await
        .map(|_| ())
        .map_err(pg::on_local("release an advisory lock"))
}

/// The upload engine's lock ([`UPLOAD_LOCK`]): true when taken.
pub async fn try_upload_lock(client: &impl tokio_postgres::GenericClient) -> Result<bool, PgError> {
    try_session_lock(client, UPLOAD_LOCK, "take the upload lock").await
}

/// Releases [`UPLOAD_LOCK`].
pub async fn unlock_upload(client: &impl tokio_postgres::GenericClient) -> Result<(), PgError> {
    unlock_session(client, UPLOAD_LOCK).await
}

/// Waits for other `migrate` runs ([`MIGRATE_LOCK`]), held until `tx` ends.
pub async fn lock_migrations(tx: &tokio_postgres::Transaction<'_>) -> Result<(), PgError> {
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map(|_| ())
        .map_err(pg::on_local("wait for other migrate runs"))
}

/// The held run lock; released by [`RunLock::release`] or, if the run is cut short, by the
/// connection closing when this value is dropped.
pub struct RunLock {
    client: tokio_postgres::Client,
}

impl RunLock {
    /// Takes the lock for `running`, or says who holds it.
    pub async fn acquire(
        db: &DbConfig,
        pool: &PoolConfig,
        running: &Running,
    ) -> Result<Self, LockError> {
        let client = pg::connect(db, pool).await?;
        if !try_session_lock(&client, RUN_LOCK, "take the run lock").await? {
            let holder = holder(&client).await?.unwrap_or(Running {
                // The holder left between the two statements, or its name is unreadable.
                kind: RunKind::Cycle,
                since: Utc::now(),
                trigger: Trigger::Cli,
                other_process: Some(0),
            });
            return Err(LockError::Busy(holder));
        }
        client
            .execute(
                "select set_config('application_name', $1, false)",
                &[&running.application_name()],
            )
            .await
            .map_err(pg::on_local("name the run lock"))?;
        Ok(Self { client })
    }

    /// Releases the lock and closes its connection.
    pub async fn release(self) {
        if let Err(e) = unlock_session(&self.client, RUN_LOCK).await {
            // Closing the connection below releases it anyway.
            tracing::debug!(error = %e, "run lock release");
        }
    }
}

/// The run holding [`RUN_LOCK`] on this local database, if any.
pub async fn holder(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<Running>, PgError> {
    let classid = (RUN_LOCK >> 32) as u32;
    let objid = (RUN_LOCK & 0xffff_ffff) as u32;
    let row = client
        .query_opt(
            "select a.pid, coalesce(a.application_name, '')
             from pg_locks l join pg_stat_activity a on a.pid = l.pid
             where l.locktype = 'advisory' and l.granted and l.objsubid = 1
               and l.classid = $1 and l.objid = $2
               and l.database = (select oid from pg_database where datname = current_database())
             limit 1",
            &[&classid, &objid],
        )
        .await
        .map_err(pg::on_local("read the run lock"))?;
    Ok(row.map(|row| {
        let pid: i32 = row.get(0);
        let name: String = row.get(1);
        Running::parse_application_name(&name, pid).unwrap_or(Running {
            kind: RunKind::Cycle,
            since: Utc::now(),
            trigger: Trigger::Cli,
            other_process: Some(pid),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_round_trips_and_fits() {
        for kind in [RunKind::Cycle, RunKind::Upload, RunKind::Download] {
            for trigger in [
                Trigger::Startup,
                Trigger::Schedule,
                Trigger::Api,
                Trigger::Mcp,
                Trigger::Cli,
            ] {
                let running = Running {
                    kind,
                    since: DateTime::parse_from_rfc3339("2026-11-23T21:41:31Z")
                        .unwrap()
                        .with_timezone(&Utc),
                    trigger,
                    other_process: None,
                };
                let name = running.application_name();
                assert!(name.len() <= 63, "{name}");
                let back = Running::parse_application_name(&name, 7).unwrap();
                assert_eq!(back.kind, kind);
                assert_eq!(back.trigger, trigger);
                assert_eq!(back.since, running.since);
                assert_eq!(back.other_process, Some(7));
            }
        }
        assert_eq!(Running::parse_application_name("psql", 1), None);
    }

    #[test]
    fn busy_message_says_what_since_when() {
        let running = Running::now(RunKind::Upload, Trigger::Schedule);
        let text = running.to_string();
        assert!(text.starts_with("an upload is already running (started by schedule at "));
        assert!(text.ends_with("try again when it has finished"));
    }
}
