//! Throwaway PostgreSQL clusters started from the installed server binaries: used by the test
//! suite, `meter-sync demo` and the benchmarks.
//!
//! A cluster lives in a temporary directory (data directory, unix socket, log), listens on a
//! free TCP port on 127.0.0.1 with trust authentication, and is stopped and removed when the
//! [`PgCluster`] is dropped. A watchdog process also stops it if this process dies without
//! unwinding (SIGKILL, `abort`, a test binary's shared cluster at exit), so no server leaks.
//! When running as root, `initdb` and `pg_ctl` run as the `postgres` system user.

use crate::config::Side;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Why a cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no PostgreSQL server binaries found (looked in {tried}); install them, e.g. `apt-get install postgresql`, or set PG_BIN to the directory holding initdb and pg_ctl")]
    NoBinaries { tried: String },
    #[error("running as root but there is no `postgres` system user to run the server as; install the postgresql package or create the user")]
    NoPostgresUser,
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Options for a new cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// A short label used in the temp directory name and messages.
    pub label: String,
    /// `fsync`: off is fine (and much faster) for tests; on for benchmarks that compare I/O.
    pub fsync: bool,
    /// Extra `postgresql.conf` settings, `(name, value)`, values written verbatim.
    pub settings: Vec<(String, String)>,
    /// Leave the server running and its directory in place when the handle is dropped or the
    /// process ends (for inspecting a failed test); the connection details are printed.
    pub keep: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            label: "meter-sync".into(),
            fsync: false,
            settings: Vec::new(),
            keep: false,
        }
    }
}

/// How to stop a cluster (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, disconnect clients, shut down cleanly.
    Fast,
    /// Kill the server without a checkpoint, like a crash or a power cut.
    Immediate,
}

/// A running throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    run_as: Option<String>,
    running: bool,
    keep: bool,
    watchdog: Option<Child>,
}

/// The superuser created by `initdb` in every throwaway cluster.
pub const SUPERUSER: &str = "postgres";

impl PgCluster {
    /// Finds the server binaries: `PG_BIN`, then `pg_config --bindir`, then `PATH`, then the
    /// highest `/usr/lib/postgresql/*/bin`.
    pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
        let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        let mut tried = Vec::new();
        if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
            if has_server(&dir) {
                return Ok(dir);
            }
            tried.push(format!("PG_BIN={}", dir.display()));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_server(&dir) {
                return Ok(dir);
            }
            tried.push(format!("pg_config --bindir ({})", dir.display()));
        }
        if let Some(path) = std::env::var_os("PATH") {
            if let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d)) {
                return Ok(dir);
            }
            tried.push("PATH".into());
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                has_server(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(dir);
        }
        tried.push("/usr/lib/postgresql/*/bin".into());
        Err(ClusterError::NoBinaries {
            tried: tried.join(", "),
        })
    }

    /// Creates and starts a cluster.
    pub fn start(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let bin_dir = Self::find_bin_dir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(SUPERUSER)
                .ok()
                .flatten()
                .ok_or(ClusterError::NoPostgresUser)?;
            Some((user.name, user.uid, user.gid))
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix(&format!("{}-pg-", options.label))
            .tempdir()
            .map_err(io("cannot create a temporary directory for the cluster"))?;
        if let Some((_, uid, gid)) = &run_as {
            nix::unistd::chown(root.path(), Some(*uid), Some(*gid)).map_err(|e| {
                ClusterError::Io {
                    what: format!("cannot hand {} to the postgres user", root.path().display()),
                    source: e.into(),
                }
            })?;
        }
        let mut cluster = Self {
            bin_dir,
            root,
            port: 0,
            run_as: run_as.map(|(name, _, _)| name),
            running: false,
            keep: options.keep,
            watchdog: None,
        };
        cluster.initdb(options)?;
        cluster.start_on_free_port()?;
        if cluster.keep {
            cluster.root.disable_cleanup(true);
            eprintln!(
                "meter-sync: keeping cluster {} on 127.0.0.1:{} (data in {})",
                options.label,
                cluster.port,
                cluster.root.path().display()
            );
        } else {
            cluster.spawn_watchdog();
        }
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A driver configuration for a database of this cluster, as the superuser.
    pub fn connect_config(&self, dbname: &str) -> tokio_postgres::Config {
        self.connect_config_via(dbname, self.port)
    }

    /// [`connect_config`](Self::connect_config) through `port` on the same host (a proxy's
    /// or a pooler's in front of the cluster).
    pub fn connect_config_via(&self, dbname: &str, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .port(port)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("meter-sync-harness");
        config
    }

    /// The service's connection settings for a database of this cluster.
    pub fn db_config(&self, side: Side, dbname: &str) -> crate::config::DbConfig {
        crate::config::DbConfig {
            side,
            host: self.host().to_string(),
            port: self.port,
            dbname: dbname.to_string(),
            user: SUPERUSER.to_string(),
            password: crate::config::Secret::default(),
            sslmode: crate::config::SslMode::Disable,
            sslrootcert: None,
            pool_mode: crate::config::PoolMode::Direct,
        }
    }

    /// Makes `role` log in over TCP with its password (SCRAM); every other role stays on trust.
    /// The line goes ahead of the trust lines of `pg_hba.conf` and the server reloads it, which
    /// takes effect asynchronously: callers that need it wait until a wrong password is refused.
    pub fn require_password(&self, role: &str) -> Result<(), ClusterError> {
        let path = self.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&path).map_err(io("cannot read pg_hba.conf"))?;
        let line = format!("host all {role} 127.0.0.1/32 scram-sha-256\n");
        if !text.contains(&line) {
            std::fs::write(&path, format!("{line}{text}"))
                .map_err(io("cannot write pg_hba.conf"))?;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-s").arg("-D").arg(self.data_dir());
        self.run(cmd).map(|_| ())
    }

    /// The last lines of the server log (for error messages and failing tests).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A command for a server binary, run as the postgres user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        };
        // The postgres user may not be able to read our working directory.
        cmd.current_dir(self.root.path()).stdin(Stdio::null());
        cmd
    }

    fn run(&self, mut cmd: Command) -> Result<Output, ClusterError> {
        let text = format!("{cmd:?}");
        let out = cmd.output().map_err(io(format!("cannot run {text}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ClusterError::Command {
                command: text,
                status: out.status.to_string(),
                output: format!(
                    "{}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail(20)
                ),
            })
        }
    }

    fn initdb(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        self.run(cmd)?;
        let mut conf =
            String::from("\n# meter-sync throwaway cluster\nlisten_addresses = '127.0.0.1'\n");
        let _ = writeln!(
            conf,
            "unix_socket_directories = '{}'",
            self.socket_dir().display()
        );
        let _ = writeln!(conf, "fsync = {}", if options.fsync { "on" } else { "off" });
        if !options.fsync {
            // Not synchronous_commit = off: an immediate stop would then lose acknowledged
            // commits, and outage tests would see loss that a real server never causes.
            conf.push_str("full_page_writes = off\n");
        }
        conf.push_str("max_connections = 300\nshared_buffers = 128MB\nmax_wal_size = 2GB\nlog_min_messages = warning\n");
        for (name, value) in &options.settings {
            let _ = writeln!(conf, "{name} = {value}");
        }
        let path = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).map_err(io("cannot read postgresql.conf"))?;
        text.push_str(&conf);
        std::fs::write(&path, text).map_err(io("cannot write postgresql.conf"))
    }

    /// Picks a free port and starts; another process may grab the port between the check and
    /// the server's bind, so a failed start is retried on a new port.
    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::Io {
            what: "cannot start the cluster".into(),
            source: std::io::Error::other("no attempt made"),
        }))
    }

    fn pg_ctl_start(&mut self) -> Result<(), ClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .stdout(Stdio::null());
        self.run(cmd)?;
        self.running = true;
        Ok(())
    }

    /// Starts a stopped cluster again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            self.pg_ctl_start()?;
        }
        Ok(())
    }

    /// Stops the server (the data stays until the handle is dropped).
    pub fn stop(&mut self, mode: StopMode) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-m"])
            .arg(match mode {
                StopMode::Fast => "fast",
                StopMode::Immediate => "immediate",
            })
            .arg("stop")
            .stdout(Stdio::null());
        self.run(cmd)?;
        self.running = false;
        Ok(())
    }

    /// Starts a shell that waits for this process to end, then stops the server and removes
    /// the directory. Detached into its own process group so a Ctrl-C to ours lets it finish.
    fn spawn_watchdog(&mut self) {
        use std::os::unix::process::CommandExt;
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- '{}'", pg_ctl.display()),
            None => format!("'{}'", pg_ctl.display()),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            data = self.data_dir().display(),
            root = self.root.path().display(),
        );
        self.watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.running {
            if let Err(e) = self.stop(StopMode::Fast) {
                let _ = self.stop(StopMode::Immediate);
                eprintln!(
                    "meter-sync: stopping throwaway cluster on port {}: {e}",
                    self.port
                );
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // The TempDir removes the directory after this.
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("cannot find a free TCP port"))?;
    let port = listener
        .local_addr()
        .map_err(io("cannot read the free port"))?
        .port();
    Ok(port)
}
