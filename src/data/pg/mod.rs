//! Database connections for both sides: driver configuration, TLS, pools, the retryable-error
//! rule and exponential backoff.

mod backoff;
mod raw;
mod settings;
mod tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use crate::config::{Config, DbConfig, PoolConfig, PoolMode, Side};
pub use backoff::Backoff;
pub use raw::{copy_row, RawValue};
use settings::{after_connect, timeouts};
pub use settings::{timeout_settings, transaction_mode_prelude};
pub use tls::TlsError;

/// The `application_name` the service connects with (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "meter-sync";

/// A database failure, naming the side and address.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{side} database {address}: cannot connect: {message}")]
    Connect {
        side: Side,
        address: String,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{side} database {address}: no connection within {timeout:?}")]
    ConnectTimeout {
        side: Side,
        address: String,
        timeout: Duration,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{side} database {address}: connection pool: {message}")]
    Pool {
        side: Side,
        address: String,
        message: String,
        retryable: bool,
    },
    #[error("{side} database: {context}: {message}")]
    Query {
        side: Side,
        context: String,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server answered with a value no PostgreSQL produces (never expected; named rather
    /// than trusted).
    #[error("{side} database: unexpected answer: {detail}")]
    Unexpected { side: Side, detail: String },
}

impl PgError {
    /// Wraps a statement failure with what was being done.
    pub fn query(side: Side, context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        PgError::Query {
            side,
            context: context.into(),
            message: describe(&source),
            source,
        }
    }

    /// Whether trying again later may succeed (connection trouble, serialization failure,
    /// resource shortage, operator intervention).
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => is_retryable(source),
            PgError::ConnectTimeout { .. } => true,
            PgError::Pool { retryable, .. } => *retryable,
            PgError::Tls(_) | PgError::Unexpected { .. } => false,
        }
    }

    /// Which database the error came from.
    pub fn side(&self) -> Side {
        match self {
            PgError::Connect { side, .. }
            | PgError::ConnectTimeout { side, .. }
            | PgError::Pool { side, .. }
            | PgError::Query { side, .. }
            | PgError::Unexpected { side, .. } => *side,
            PgError::Tls(e) => e.side(),
        }
    }

    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// A `map_err` adapter for a local statement: `.map_err(pg::on_local("claim readings"))`.
pub fn on_local(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query(Side::Local, context, e)
}

/// A `map_err` adapter for a remote statement.
pub fn on_remote(context: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::query(Side::Remote, context, e)
}

/// The retry rule: SQLSTATE classes 08 (connection; a protocol violation, 08P01, only when it
/// is a pooler's word for a server it cannot reach at the moment, see
/// [`POOLER_TRANSIENT`]: a refused startup parameter or a broken protocol is not cured by
/// retrying), 40 (transaction rollback: serialization,
/// deadlock), 53 (insufficient resources), 57 (operator intervention: shutdown, cancel), and
/// errors with no SQLSTATE that come from I/O or a closed connection. A TLS failure (a
/// certificate that does not verify) is not retried: it will not fix itself.
/// The messages PgBouncer sends with SQLSTATE 08P01 for a condition that passes: the server
/// behind it is down or restarting, or every server connection is busy.
pub const POOLER_TRANSIENT: &[&str] = &[
    "server login has been failing",
    "cannot connect to server",
    "server conn crashed",
    "server closed the connection unexpectedly",
    "query_wait_timeout",
    "pgbouncer is shutting down",
    "no more connections allowed",
];

pub fn is_retryable(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        if code == &SqlState::PROTOCOL_VIOLATION {
            let message = error.as_db_error().map(|db| db.message()).unwrap_or("");
            return POOLER_TRANSIENT.iter().any(|m| message.contains(m));
        }
        return matches!(&code.code()[..2], "08" | "40" | "53" | "57");
    }
    let mut io = error.is_closed();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let tls = e.is::<rustls::Error>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>());
        if tls {
            return false;
        }
        io |= e.is::<std::io::Error>();
        source = e.source();
    }
    io
}

/// A one-line description: the server's message (with the offending key and where it
/// points), or the I/O cause. Never row values: a detail is kept only when it names a key
/// (`Key (id)=(5) already exists`), not `Failing row contains (...)`.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail().filter(|d| d.starts_with("Key (")) {
            text.push_str(&format!("; {detail}"));
        }
        for (what, value) in [
            ("table", db.table()),
            ("column", db.column()),
            ("constraint", db.constraint()),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("; {what} {value}"));
            }
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Why a connection failed, with what to change when the server is a pooler that refuses
/// what this pool mode sends.
fn connect_message(db: &DbConfig, error: &tokio_postgres::Error) -> String {
    let text = describe(error);
    if !text.contains("unsupported startup parameter") {
        return text;
    }
    match db.side {
        Side::Remote => format!(
            "{text}; the remote is a connection pooler (PgBouncer) that refuses startup options: set POSTGRES_CLIENT_POOL_MODE to its pool_mode, session or transaction (now {})",
            db.pool_mode
        ),
        Side::Local => format!(
            "{text}; the local database is a connection pooler that refuses startup options: connect to the server itself"
        ),
    }
}

/// Keepalive probes sent after the idle time before the peer is given up.
const KEEPALIVE_PROBES: u32 = 4;

/// How long a silent peer is tolerated: the keepalive idle time plus every probe. Also the TCP
/// user timeout, so data left unacknowledged that long (a cut link mid-write) ends the
/// connection too.
pub fn keepalive_give_up(pool: &PoolConfig) -> Duration {
    let interval = (pool.keepalives_idle / 3).max(Duration::from_secs(1));
    pool.keepalives_idle + interval * KEEPALIVE_PROBES
}

/// The driver configuration for one side.
pub fn driver_config(db: &DbConfig, pool: &PoolConfig) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&db.host)
        .port(db.port)
        .dbname(&db.dbname)
        .user(&db.user)
        .application_name(APPLICATION_NAME)
        .connect_timeout(pool.connection_timeout)
        .keepalives(true)
        .keepalives_idle(pool.keepalives_idle)
        .keepalives_interval((pool.keepalives_idle / 3).max(Duration::from_secs(1)))
        .keepalives_retries(KEEPALIVE_PROBES)
        .tcp_user_timeout(keepalive_give_up(pool))
        .ssl_mode(tls::driver_mode(db.sslmode));
    // Server-side bounds: a statement stuck on a lock or a slow plan, and a session left idle
    // inside a transaction by a client that stalled, are ended by the server. As startup
    // options when talking to the server itself; a pooler refuses those (PgBouncer:
    // `unsupported startup parameter: options`), so behind one they are set after connecting
    // (session mode) or in each transaction (transaction mode): see [`timeouts`].
    if let (Some((ms, idle)), PoolMode::Direct) = (timeouts(pool), db.pool_mode) {
        config.options(format!(
            "-c statement_timeout={ms} -c idle_in_transaction_session_timeout={idle}"
        ));
    }
    if !db.password.is_empty() {
        config.password(db.password.expose());
    }
    config
}

/// Connects once and reads the server's version (what `check` reports per side).
pub async fn server_version(db: &DbConfig, pool: &PoolConfig) -> Result<String, PgError> {
    let client = connect(db, pool).await?;
    // The simple protocol: one message, safe behind a pooler in transaction mode.
    let rows = client
        .simple_query("show server_version")
        .await
        .map_err(|e| PgError::query(db.side, "read the server version", e))?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

/// Opens one connection (not pooled), bounded by the connection timeout; the connection task
/// is spawned and ends when the client is dropped.
pub async fn connect(db: &DbConfig, pool: &PoolConfig) -> Result<tokio_postgres::Client, PgError> {
    let config = driver_config(db, pool);
    let tls = tls::connector(db)?;
    let attempt = tokio::time::timeout(pool.connection_timeout, config.connect(tls)).await;
    match attempt {
        Err(_) => Err(PgError::ConnectTimeout {
            side: db.side,
            address: db.address(),
            timeout: pool.connection_timeout,
        }),
        Ok(Err(source)) => Err(PgError::Connect {
            side: db.side,
            address: db.address(),
            message: connect_message(db, &source),
            source,
        }),
        Ok(Ok((client, connection))) => {
            let side = db.side;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(side = %side, error = %describe(&e), "database connection ended");
                }
            });
            if let Some(settings) = after_connect(db, pool) {
                client
                    .batch_execute(&settings)
                    .await
                    .map_err(|e| PgError::query(db.side, "set the session timeouts", e))?;
            }
            Ok(client)
        }
    }
}

/// A connection pool for one side. Connections are made lazily, so building never fails on an
/// unreachable server.
pub fn pool(db: &DbConfig, settings: &PoolConfig) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        driver_config(db, settings),
        tls::connector(db)?,
        ManagerConfig {
            // A connection handed back by a run that was cut short (run timeout, shutdown)
            // may sit on a stalled link: check it with a round trip, bounded by the recycle
            // timeout, before reuse, so a dead one is replaced instead of hanging the next run.
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let mut builder = Pool::builder(manager);
    if let Some(statements) = after_connect(db, settings) {
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let statements = statements.clone();
            Box::pin(async move {
                client
                    .batch_execute(&statements)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    builder
        .max_size(settings.max_size)
        .create_timeout(Some(settings.connection_timeout))
        .wait_timeout(Some(
            settings.connection_timeout.max(Duration::from_secs(30)),
        ))
        .recycle_timeout(Some(settings.connection_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Pool {
            side: db.side,
            address: db.address(),
            message: e.to_string(),
            retryable: false,
        })
}

/// Takes a connection from a pool, turning pool errors into [`PgError`].
pub async fn get(pool: &Pool, db: &DbConfig) -> Result<deadpool_postgres::Object, PgError> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(source) => PgError::Connect {
            side: db.side,
            address: db.address(),
            message: connect_message(db, &source),
            source,
        },
        PoolError::Timeout(_) => PgError::ConnectTimeout {
            side: db.side,
            address: db.address(),
            timeout: pool.timeouts().create.unwrap_or_default(),
        },
        other => PgError::Pool {
            side: db.side,
            address: db.address(),
            message: other.to_string(),
            retryable: !matches!(other, PoolError::Closed),
        },
    })
}

/// Both pools of the service.
#[derive(Clone)]
pub struct Pools {
    pub local: Pool,
    pub remote: Pool,
    pub local_db: DbConfig,
    pub remote_db: DbConfig,
    /// What every remote transaction runs first behind a pooler in transaction mode
    /// ([`transaction_mode_prelude`]; empty otherwise: the session has the timeouts).
    pub remote_transaction_settings: String,
}

impl Pools {
    /// Builds both pools from the configuration.
    pub fn new(config: &Config) -> Result<Self, PgError> {
        let remote_transaction_settings = match config.remote.pool_mode {
            PoolMode::Transaction => transaction_mode_prelude(&config.pool),
            _ => String::new(),
        };
        Ok(Self {
            local: pool(&config.local, &config.pool)?,
            remote: pool(&config.remote, &config.pool)?,
            local_db: config.local.clone(),
            remote_db: config.remote.clone(),
            remote_transaction_settings,
        })
    }

    /// Whether the remote is reached through a pooler in transaction mode: then nothing may
    /// outlive a remote transaction (no session temp table, no statement prepared in one
    /// transaction and run in another, no statement outside a transaction but the simple ones).
    pub fn remote_in_transaction_mode(&self) -> bool {
        self.remote_db.pool_mode == PoolMode::Transaction
    }

    /// `begin`, with the timeouts in transaction mode.
    pub fn remote_begin(&self) -> String {
        match self.remote_transaction_settings.as_str() {
            "" => "begin".to_string(),
            settings => format!("begin; {settings}"),
        }
    }

    /// A local connection, retried with `backoff` while the failure is retryable.
    pub async fn local_with_retry(
        &self,
        backoff: Backoff,
    ) -> Result<deadpool_postgres::Object, PgError> {
        backoff
            .retry(
                "connect to the local database",
                PgError::is_retryable,
                || self.local(),
            )
            .await
    }

    /// A remote connection, retried with `backoff` while the failure is retryable.
    pub async fn remote_with_retry(
        &self,
        backoff: Backoff,
    ) -> Result<deadpool_postgres::Object, PgError> {
        backoff
            .retry(
                "connect to the remote database",
                PgError::is_retryable,
                || self.remote(),
            )
            .await
    }

    /// A local connection.
    pub async fn local(&self) -> Result<deadpool_postgres::Object, PgError> {
        get(&self.local, &self.local_db).await
    }

    /// A remote connection.
    pub async fn remote(&self) -> Result<deadpool_postgres::Object, PgError> {
        get(&self.remote, &self.remote_db).await
    }
}
