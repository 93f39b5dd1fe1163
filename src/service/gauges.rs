//! The measurements behind the storage and process gauges of `/metrics`: the local database's
//! and readings table's size, the free space of the filesystems the site depends on, and the
//! process's start time. Each is `None` when it cannot be measured, never an invented 0.

use std::path::{Path, PathBuf};

use crate::config::{Config, Side};
use crate::data::pg::{PgError, Pools};
use crate::profile::Profile;

/// Sizes read from the local database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalStorage {
    /// `pg_database_size` of the local database.
    pub database_bytes: Option<i64>,
    /// `pg_total_relation_size` of the readings table (heap, indexes, TOAST).
    pub readings_bytes: Option<i64>,
    /// The server's `data_directory`, when this role may read it and the server runs on this
    /// machine (a loopback or Unix-socket address).
    pub data_directory: Option<PathBuf>,
}

/// Reads [`LocalStorage`]; an unreachable database or a refused query leaves its field `None`.
pub async fn local_storage(pools: &Pools, config: &Config, profile: &Profile) -> LocalStorage {
    let Ok(client) = pools.local().await else {
        return LocalStorage::default();
    };
    let mut storage = LocalStorage::default();
    match client
        .query_one("select pg_database_size(current_database())", &[])
        .await
    {
        Ok(row) => storage.database_bytes = Some(row.get(0)),
        Err(e) => {
            tracing::debug!(error = %PgError::query(Side::Local, "pg_database_size", e), "database size not measured")
        }
    }
    if let Some(readings) = &profile.readings {
        match client
            .query_one(
                "select pg_total_relation_size(to_regclass($1))",
                &[&readings.table.quoted()],
            )
            .await
        {
            Ok(row) => storage.readings_bytes = row.get(0),
            Err(e) => {
                tracing::debug!(error = %PgError::query(Side::Local, "pg_total_relation_size", e), "readings table size not measured")
            }
        }
    }
    if is_this_machine(&config.local.host) {
        // Superusers and members of pg_read_all_settings only; others get an error.
        if let Ok(row) = client
            .query_one("select current_setting('data_directory')", &[])
            .await
        {
            storage.data_directory = Some(PathBuf::from(row.get::<_, String>(0)));
        }
    }
    storage
}

/// A Unix-socket directory or a loopback address.
fn is_this_machine(host: &str) -> bool {
    host.starts_with('/')
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The free and total bytes of the filesystem holding `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub path: String,
    /// `local_database`, `working_directory` or `log_directory`.
    pub purpose: &'static str,
    /// Bytes available to unprivileged users.
    pub avail_bytes: u64,
    pub size_bytes: u64,
}

/// The filesystems the site depends on that can be measured from here: the local database's
/// data directory (see [`LocalStorage::data_directory`]), the working directory and the
/// directory of `LOG_FILE`.
pub fn filesystems(config: &Config, data_directory: Option<&Path>) -> Vec<Filesystem> {
    let working = std::env::current_dir().ok();
    let log = config.log_file.as_deref().map(|f| match f.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    [
        ("local_database", data_directory.map(Path::to_path_buf)),
        ("working_directory", working),
        ("log_directory", log),
    ]
    .into_iter()
    .filter_map(|(purpose, path)| {
        let path = path?;
        match nix::sys::statvfs::statvfs(&path) {
            Ok(fs) => {
                let fragment = fs.fragment_size();
                Some(Filesystem {
                    path: path.display().to_string(),
                    purpose,
                    avail_bytes: fs.blocks_available() * fragment,
                    size_bytes: fs.blocks() * fragment,
                })
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "filesystem not measured");
                None
            }
        }
    })
    .collect()
}

/// The Unix time this process started, from `/proc` (its start in clock ticks after boot, and
/// the boot time); `None` where `/proc` does not tell.
pub fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // Field 22 of proc(5), the 20th after the name and state.
    let ticks: f64 = fields.get(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hertz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(boot + ticks / hertz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_started_in_the_last_hour_and_not_in_the_future() {
        let started = process_start_time().unwrap_or(f64::NAN);
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn loopback_and_socket_hosts_are_this_machine_others_are_not() {
        for host in ["/var/run/postgresql", "localhost", "127.0.0.1", "::1"] {
            assert!(is_this_machine(host), "{host}");
        }
        for host in ["db.example", "10.0.0.5", ""] {
            assert!(!is_this_machine(host), "{host}");
        }
    }
}
