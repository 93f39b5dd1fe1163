//! A throwaway PgBouncer in front of a throwaway cluster, for tests and benchmarks: Debian's
//! `pgbouncer` binary on a free loopback port, trust authentication, one pool per database
//! (`* = host=127.0.0.1 port=<cluster>`), in the pool mode asked for. Stopped (SIGTERM, then
//! SIGKILL) and its directory removed when the handle is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pgcluster::{free_port, ClusterError};

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BouncerMode {
    Session,
    Transaction,
}

impl BouncerMode {
    fn as_str(self) -> &'static str {
        match self {
            BouncerMode::Session => "session",
            BouncerMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

/// Where Debian installs the binary.
const BINARY: &str = "/usr/sbin/pgbouncer";

impl PgBouncer {
    /// Whether the binary is installed (`apt-get install pgbouncer`).
    pub fn available() -> bool {
        std::path::Path::new(BINARY).is_file()
    }

    /// Starts PgBouncer in `mode` in front of the server on `upstream_port`, with
    /// `default_pool_size` server connections per (database, user) pair and a
    /// `query_wait_timeout` of 10 s (a test fails fast when no server connection comes).
    pub fn start(
        upstream_port: u16,
        mode: BouncerMode,
        default_pool_size: u32,
    ) -> Result<Self, ClusterError> {
        Self::start_with(upstream_port, mode, default_pool_size, 10)
    }

    /// [`PgBouncer::start`] with PgBouncer's `query_wait_timeout` in seconds (its own default
    /// is 120: a large fleet on a small pool queues for longer than a test would wait).
    pub fn start_with(
        upstream_port: u16,
        mode: BouncerMode,
        default_pool_size: u32,
        query_wait_timeout: u32,
    ) -> Result<Self, ClusterError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| ClusterError::Io { what, source }
        };
        let root = tempfile::Builder::new()
            .prefix("meter-sync-pgbouncer-")
            .tempdir()
            .map_err(io("cannot create a directory for pgbouncer"))?;
        let port = free_port()?;
        let ini = root.path().join("pgbouncer.ini");
        let users = root.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").map_err(io("cannot write users.txt"))?;
        std::fs::write(
            &ini,
            format!(
                "[databases]
* = host=127.0.0.1 port={upstream_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = {mode}
default_pool_size = {default_pool_size}
max_client_conn = 2000
server_reset_query = DISCARD ALL
server_check_delay = 0
server_login_retry = 1
query_wait_timeout = {query_wait_timeout}
logfile = {log}
pidfile = {pid}
",
                users = users.display(),
                mode = mode.as_str(),
                log = root.path().join("pgbouncer.log").display(),
                pid = root.path().join("pgbouncer.pid").display(),
            ),
        )
        .map_err(io("cannot write pgbouncer.ini"))?;
        // PgBouncer refuses to run as root.
        let mut command = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(ClusterError::NoPostgresUser)?;
            nix::unistd::chown(root.path(), Some(user.uid), Some(user.gid)).map_err(|e| {
                ClusterError::Io {
                    what: "cannot hand the pgbouncer directory to postgres".into(),
                    source: e.into(),
                }
            })?;
            for file in [&ini, &users] {
                let _ = nix::unistd::chown(file, Some(user.uid), Some(user.gid));
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", BINARY]);
            c
        } else {
            Command::new(BINARY)
        };
        let child = command
            .arg(&ini)
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("cannot start pgbouncer"))?;
        let bouncer = Self { child, port, root };
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    fn wait_listening(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::Command {
            command: format!("{BINARY} (port {})", self.port),
            status: "not listening after 20 s".into(),
            output: self.log_tail(20),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The end of PgBouncer's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("pgbouncer.log")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser forwards SIGTERM to pgbouncer, which then exits at once.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
