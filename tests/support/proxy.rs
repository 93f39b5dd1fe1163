//! A TCP fault proxy for the fault tests: sits between the service and a database and can
//! pass traffic, cut every open connection, refuse new ones, or stall bytes in both directions
//! (the connection stays open, nothing arrives: a hung WAN link).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Close new connections at once (open ones keep working).
    Refuse,
    /// Hold every byte in both directions until the mode changes.
    Stall,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// Bumped by [`FaultProxy::cut`]: connections opened before the bump are closed.
    generation: watch::Sender<u64>,
    /// Bytes forwarded in both directions, for cutting "at a random moment" of a transfer.
    bytes: AtomicU64,
    accepted: AtomicU64,
}

/// A running proxy on 127.0.0.1; stops when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: watch::channel(Mode::Pass).0,
            generation: watch::channel(0).0,
            bytes: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept.accepted.fetch_add(1, Ordering::Relaxed);
                if *accept.mode.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let shared = accept.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    relay(client, server, shared).await;
                });
            }
        });
        Self { port, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Closes every open connection (both sides see the connection end).
    pub fn cut(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Bytes forwarded so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Waits until `more` bytes have been forwarded from now (or `limit` passes), then cuts
    /// every connection. True when the cut happened after that many bytes.
    pub async fn cut_after_bytes(&self, more: u64, limit: Duration) -> bool {
        let target = self.bytes() + more;
        let reached = tokio::time::timeout(limit, async {
            while self.bytes() < target {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
        .await
        .is_ok();
        self.cut();
        reached
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let born = *shared.generation.borrow();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, shared.clone());
    let down = pump(server_read, client_write, shared.clone());
    let mut generation = shared.generation.subscribe();
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = generation.wait_for(|g| *g != born) => {}
    }
    // Dropping both halves of both sockets closes the connections.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
) {
    let mut mode = shared.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A stall holds what was read until traffic is allowed again.
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}
