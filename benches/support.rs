//! Shared plumbing of the benchmark programs: clusters, connections, timing, peak RSS.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use meter_sync::config::{Config, Sources};
use meter_sync::pgcluster::{ClusterOptions, PgCluster};

/// Starts the benchmark's "local" and "remote" clusters (fsync off, as in the tests: the
/// figures compare the engine with a baseline on the same clusters).
pub fn clusters() -> (PgCluster, PgCluster) {
    let start = |label: &str| {
        PgCluster::start(&ClusterOptions {
            label: format!("bench-{label}"),
            ..ClusterOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the {label} cluster: {e}"))
    };
    std::thread::scope(|s| {
        let local = s.spawn(|| start("local"));
        let remote = s.spawn(|| start("remote"));
        (local.join().unwrap(), remote.join().unwrap())
    })
}

/// A connection to a database of a cluster.
pub async fn connect(cluster: &PgCluster, db: &str) -> tokio_postgres::Client {
    let (client, conn) = cluster
        .connect_config(db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Creates a database.
pub async fn create_db(cluster: &PgCluster, name: &str) {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
}

/// The service configuration for a local and a remote database.
pub fn config(
    local: &PgCluster,
    local_db: &str,
    remote: &PgCluster,
    remote_db: &str,
    extra: &[(&str, &str)],
) -> Config {
    let mut env: Vec<(String, String)> = vec![
        ("POSTGRES_SYNC_HOST".into(), "127.0.0.1".into()),
        ("POSTGRES_SYNC_PORT".into(), local.port().to_string()),
        ("POSTGRES_SYNC_DB".into(), local_db.into()),
        ("POSTGRES_SYNC_SSLMODE".into(), "disable".into()),
        ("POSTGRES_CLIENT_HOST".into(), "127.0.0.1".into()),
        ("POSTGRES_CLIENT_PORT".into(), remote.port().to_string()),
        ("POSTGRES_CLIENT_DB".into(), remote_db.into()),
        ("POSTGRES_CLIENT_SSLMODE".into(), "disable".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(&Sources {
        env,
        ..Sources::default()
    })
    .unwrap()
}

/// Times an async block.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let value = f.await;
    (value, start.elapsed())
}

/// Resets this process's peak resident set size (Linux `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set size since the last reset, in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A row count from an environment variable, or the default.
pub fn env_rows(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// `12.34 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Rows per second.
pub fn rate(rows: i64, d: Duration) -> String {
    format!("{:.0} rows/s", rows as f64 / d.as_secs_f64())
}

/// The raw pipe baseline: `copy_out` on `from` streamed chunk by chunk into `copy_in` on `to`;
/// returns the rows copied and the time taken.
pub async fn copy_pipe(
    from: &tokio_postgres::Client,
    copy_out: &str,
    to: &tokio_postgres::Client,
    copy_in: &str,
) -> (u64, Duration) {
    timed(async {
        let stream = from.copy_out(copy_out).await.unwrap();
        let sink = to.copy_in::<_, Bytes>(copy_in).await.unwrap();
        let mut stream = pin!(stream);
        let mut sink = pin!(sink);
        while let Some(chunk) = stream.next().await {
            sink.as_mut().feed(chunk.unwrap()).await.unwrap();
        }
        sink.as_mut().finish().await.unwrap()
    })
    .await
}

/// The median of the measurements (the upper one of an even count).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `/proc/<pid>/stat` fields after the command name: (ppid, utime + stime, cutime + cstime) in
/// clock ticks.
fn proc_stat(pid: i32) -> Option<(i32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Some((
        fields.get(1)?.parse().ok()?,
        number(11)? + number(12)?,
        number(13)? + number(14)?,
    ))
}

/// The CPU seconds the server processes of the cluster `client` is connected to have used so
/// far: the postmaster's own and those of its children that ended (reaped into its `cutime`
/// and `cstime`), plus its live children's. Linux reports them in USER_HZ ticks (100 per
/// second). Sample after the measured work's connections have closed, so each ended backend
/// is counted once.
pub async fn server_cpu_seconds(client: &tokio_postgres::Client) -> f64 {
    let backend: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (postmaster, _, _) = proc_stat(backend).expect("the server runs on this machine");
    let (_, own, reaped) = proc_stat(postmaster).unwrap();
    let mut ticks = own + reaped;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((parent, used, _)) = proc_stat(pid) {
            if parent == postmaster {
                ticks += used;
            }
        }
    }
    ticks as f64 / 100.0
}

/// A TCP proxy on 127.0.0.1 in front of a server that counts the bytes it forwards in each
/// direction, for the figures of bytes on the wire; stops when dropped.
pub struct ByteCounter {
    port: u16,
    /// Bytes from the server to the client (down) and from the client to the server (up).
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ByteCounter {
    /// Listens on a free port and forwards every connection to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, u) = (down.clone(), up.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (d, u) = (d.clone(), u.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(forward(cr, sw, u), forward(sr, cw, d));
                });
            }
        });
        Self {
            port,
            down,
            up,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (down, up) bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.down.load(Ordering::Relaxed),
            self.up.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ByteCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, counting the bytes, until either side closes.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
