//! The test harness: one "local" and one "remote" throwaway cluster per test process, started
//! on first use; every test gets a fresh database on each, dropped when the test passes and
//! kept (its name printed) when it fails. Set `METER_SYNC_KEEP_CLUSTERS=1` to keep the
//! clusters too, for inspecting a failure with psql.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod proxy;

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use meter_sync::config::{Config, Sources};
use meter_sync::fixture::{self, FixtureSize, Layout};
use meter_sync::pgcluster::{ClusterOptions, PgCluster};
use meter_sync::profile::Profile;

/// The two shared clusters.
pub struct Clusters {
    pub local: PgCluster,
    pub remote: PgCluster,
}

static CLUSTERS: OnceLock<Clusters> = OnceLock::new();

/// The shared clusters, started on first use.
pub fn clusters() -> &'static Clusters {
    CLUSTERS.get_or_init(|| {
        let keep = std::env::var_os("METER_SYNC_KEEP_CLUSTERS").is_some();
        let start = |label: &str| {
            PgCluster::start(&ClusterOptions {
                label: format!("test-{label}"),
                keep,
                ..ClusterOptions::default()
            })
            .unwrap_or_else(|e| panic!("cannot start the {label} test cluster: {e}"))
        };
        let (local, remote) = std::thread::scope(|s| {
            let local = s.spawn(|| start("local"));
            let remote = s.spawn(|| start("remote"));
            (local.join().unwrap(), remote.join().unwrap())
        });
        Clusters { local, remote }
    })
}

/// A third cluster, a central no other test writes to or holds a transaction open on, taken
/// in turn: an incremental download fetches the rows written since the oldest transaction
/// running at its last snapshot (cluster-wide), so only here do tests count those rows exactly.
static QUIET: OnceLock<PgCluster> = OnceLock::new();
static QUIET_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's turn on the quiet central: hold it for the whole test.
pub struct QuietTurn(#[allow(dead_code)] tokio::sync::MutexGuard<'static, ()>);

/// [`TestEnv::with_settings`] whose remote is the quiet central (see [`QUIET`]), with the
/// default fixture and a migrated local database, for this test alone while the turn is held.
pub async fn quiet_default_env(
    label: &str,
    extra: &[(&str, &str)],
) -> (TestEnv, Profile, QuietTurn) {
    let turn = QuietTurn(QUIET_TURN.lock().await);
    let cluster = QUIET.get_or_init(|| {
        PgCluster::start(&ClusterOptions {
            label: "test-quiet-remote".into(),
            keep: std::env::var_os("METER_SYNC_KEEP_CLUSTERS").is_some(),
            ..ClusterOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the quiet test cluster: {e}"))
    });
    let env = TestEnv::on(label, cluster, extra).await;
    load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default()).await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    (env, profile, turn)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database created for one test.
pub struct TestDb {
    pub cluster: &'static PgCluster,
    pub name: String,
}

impl TestDb {
    /// Creates a uniquely named database on `cluster`.
    pub async fn create(cluster: &'static PgCluster, label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t_{clean}_{}_{n}", std::process::id());
        let admin = connect(cluster, "postgres").await;
        admin
            .batch_execute(&format!("create database \"{name}\""))
            .await
            .unwrap();
        Self { cluster, name }
    }

    /// A new connection to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.cluster, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: keeping database {} on 127.0.0.1:{} (METER_SYNC_KEEP_CLUSTERS=1 keeps the cluster too)",
                self.name,
                self.cluster.port()
            );
            return;
        }
        let config = self.cluster.connect_config("postgres");
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which must not block; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) = config.connect(tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("drop database if exists \"{name}\" with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Connects to a database of a cluster as the superuser.
pub async fn connect(cluster: &PgCluster, dbname: &str) -> tokio_postgres::Client {
    let (client, conn) = cluster
        .connect_config(dbname)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {dbname} on port {}: {e}", cluster.port()));
    tokio::spawn(conn);
    client
}

/// A fresh local and remote database and a configuration pointing at them.
pub struct TestEnv {
    pub local: TestDb,
    pub remote: TestDb,
    pub config: Config,
}

impl TestEnv {
    /// Fresh databases; the configuration uses fast retries so failure tests stay quick.
    pub async fn new(label: &str) -> Self {
        Self::with_settings(label, &[]).await
    }

    /// Fresh databases with extra configuration keys.
    pub async fn with_settings(label: &str, extra: &[(&str, &str)]) -> Self {
        Self::on(label, &clusters().remote, extra).await
    }

    /// Fresh databases, the remote one on `remote`.
    pub async fn on(label: &str, remote: &'static PgCluster, extra: &[(&str, &str)]) -> Self {
        let local = TestDb::create(&clusters().local, &format!("{label}_l")).await;
        let remote = TestDb::create(remote, &format!("{label}_r")).await;
        let config = Config::load(&Sources {
            env: env_for(&local, &remote, extra),
            ..Sources::default()
        })
        .unwrap();
        Self {
            local,
            remote,
            config,
        }
    }

    /// The environment a child `meter-sync` process needs to reach these databases.
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        env_for(&self.local, &self.remote, extra)
    }
}

fn env_for(local: &TestDb, remote: &TestDb, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("POSTGRES_SYNC_HOST".into(), "127.0.0.1".into()),
        (
            "POSTGRES_SYNC_PORT".into(),
            local.cluster.port().to_string(),
        ),
        ("POSTGRES_SYNC_DB".into(), local.name.clone()),
        ("POSTGRES_SYNC_SSLMODE".into(), "disable".into()),
        ("POSTGRES_CLIENT_HOST".into(), "127.0.0.1".into()),
        (
            "POSTGRES_CLIENT_PORT".into(),
            remote.cluster.port().to_string(),
        ),
        ("POSTGRES_CLIENT_DB".into(), remote.name.clone()),
        ("POSTGRES_CLIENT_SSLMODE".into(), "disable".into()),
        ("RETRY_BASE_SECONDS".into(), "0.01".into()),
        ("DB_CONNECTION_TIMEOUT_MS".into(), "2000".into()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Creates the remote schema of `layout` and fills it.
pub async fn load_remote_fixture(remote: &TestDb, layout: Layout, size: FixtureSize) {
    let client = remote.client().await;
    fixture::load_remote(&client, layout, size).await.unwrap();
}

/// Migrates the local database for `profile`.
pub async fn migrate_local(
    local: &TestDb,
    profile: &Profile,
) -> meter_sync::data::schema::MigrateReport {
    let mut client = local.client().await;
    meter_sync::data::schema::migrate(&mut client, profile)
        .await
        .unwrap()
}

/// A checksum of a table's whole content, independent of physical row order.
pub async fn table_checksum(client: &tokio_postgres::Client, table: &str) -> String {
    let quoted = meter_sync::profile::quote_ident(table);
    client
        .query_one(
            &format!("select coalesce(md5(string_agg(x::text, E'\\n' order by x::text)), 'empty') from {quoted} x"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Checksums of every user table of a database, by name: a snapshot that proves a database
/// unchanged.
pub async fn database_checksum(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    let tables: Vec<String> = client
        .query(
            "select tablename::text from pg_tables where schemaname = 'public' order by 1",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for table in tables {
        let sum = table_checksum(client, &table).await;
        out.push((table, sum));
    }
    out
}

/// A row count.
pub async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    let quoted = meter_sync::profile::quote_ident(table);
    client
        .query_one(&format!("select count(*) from {quoted}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Pools for the service pointing at a test environment.
pub fn pools(env: &TestEnv) -> meter_sync::data::pg::Pools {
    meter_sync::data::pg::Pools::new(&env.config).unwrap()
}

/// Runs one download of all entities (or `only`) with the environment's configuration.
pub async fn download(
    env: &TestEnv,
    profile: &Profile,
    tenant: Option<&str>,
    only: &[&str],
) -> meter_sync::engine::download::DownloadReport {
    download_with(&env.config, profile, tenant, only).await
}

/// [`download`] with any configuration.
pub async fn download_with(
    config: &Config,
    profile: &Profile,
    tenant: Option<&str>,
    only: &[&str],
) -> meter_sync::engine::download::DownloadReport {
    let tenant = tenant.map(|t| meter_sync::profile::TenantId::parse(t).unwrap());
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    meter_sync::service::cycle::download(
        &meter_sync::data::pg::Pools::new(config).unwrap(),
        meter_sync::engine::download::DownloadRequest {
            profile,
            tenant: tenant.as_ref(),
            only: &only,
            backoff: meter_sync::data::pg::Backoff::connection(&config.retry),
            full: false,
            guard: config.delete_guard,
            deadline: meter_sync::engine::Deadline::from_config(config),
        },
    )
    .await
}

/// A child process, killed if the test ends (or fails) before it exits.
pub struct Proc(pub Option<std::process::Child>);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().unwrap().try_wait().unwrap()
    }

    pub fn take(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `meter-sync` child process with exactly these variables (and `PATH`), its output piped
/// (stderr to `METER_SYNC_TEST_CHILD_LOG` when set).
pub fn spawn(args: &[&str], vars: &[(String, String)]) -> Proc {
    Proc(Some(
        agent(args, vars)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("METER_SYNC_TEST_CHILD_LOG") {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::piped(),
            })
            .spawn()
            .unwrap(),
    ))
}

/// Waits for the child to exit, at most `limit`; kills it and fails otherwise.
pub async fn wait_exit(mut child: Proc, limit: Duration) -> (Option<i32>, String) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.take().stderr.take() {
                use std::io::Read;
                pipe.read_to_string(&mut stderr).unwrap();
            }
            return (status.code(), stderr);
        }
        if started.elapsed() > limit {
            let mut child = child.take();
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "meter-sync did not exit within {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A central cluster of the test's own (it may stop and restart it), with a database
/// `central` holding the default fixture; returns the cluster and a client of that database.
pub async fn own_central(label: &str) -> (PgCluster, tokio_postgres::Client) {
    let label = label.to_string();
    let central = tokio::task::spawn_blocking(move || {
        PgCluster::start(&ClusterOptions {
            label,
            ..ClusterOptions::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    connect(&central, "postgres")
        .await
        .batch_execute("create database central")
        .await
        .unwrap();
    let client = connect(&central, "central").await;
    meter_sync::fixture::load_remote(&client, Layout::Default, FixtureSize::default())
        .await
        .unwrap();
    (central, client)
}

/// `meter-sync <args>` with exactly `vars` in its environment (nothing inherited), run in the
/// temp directory; the caller sets its stdio and spawns it.
pub fn agent(args: &[&str], vars: &[(String, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"));
    command
        .args(args)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir());
    command
}

/// Loads a configuration from environment pairs (as a child process would get them).
pub fn config_from(env: Vec<(String, String)>) -> Config {
    Config::load(&Sources {
        env,
        ..Sources::default()
    })
    .unwrap()
}

/// Rows of a query as their text form, in the query's order.
pub async fn rows_text(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    client
        .query(&format!("select x::text from ({query}) x"), &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A test environment with the default remote fixture and a migrated local database.
pub async fn default_env(label: &str) -> (TestEnv, Profile) {
    default_env_with(label, &[]).await
}

/// [`default_env`] with extra configuration keys.
pub async fn default_env_with(label: &str, extra: &[(&str, &str)]) -> (TestEnv, Profile) {
    let env = TestEnv::with_settings(label, extra).await;
    load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default()).await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    (env, profile)
}

/// Test case count for property tests against the databases: `PROPTEST_CASES` or `default`.
pub fn proptest_config(default: u32) -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default;
    }
    config.failure_persistence = None;
    config
}

/// A test environment whose remote has the default schema (no configuration rows needed) and a
/// migrated local database.
pub async fn upload_env(label: &str, extra: &[(&str, &str)]) -> (TestEnv, Profile) {
    let env = TestEnv::with_settings(label, extra).await;
    load_remote_fixture(
        &env.remote,
        Layout::Default,
        FixtureSize {
            tenants: 1,
            meters_per_tenant: 1,
            elements_per_meter: 1,
            registers_per_tenant: 1,
            registers_per_device: 1,
        },
    )
    .await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    (env, profile)
}

/// Runs one upload with the environment's configuration.
pub async fn upload(env: &TestEnv, profile: &Profile) -> meter_sync::engine::upload::UploadReport {
    upload_with(&env.config, profile).await
}

/// [`upload`] with any configuration.
pub async fn upload_with(
    config: &Config,
    profile: &Profile,
) -> meter_sync::engine::upload::UploadReport {
    let readings = profile.readings.as_ref().unwrap();
    meter_sync::service::cycle::upload(
        &meter_sync::data::pg::Pools::new(config).unwrap(),
        meter_sync::service::cycle::upload_request(config, profile, readings),
    )
    .await
}

/// Readings as comparable text rows (every uploaded column), sorted: a multiset.
pub const READINGS_MULTISET: &str =
    "select meter_id, timestamp, value, unit, metadata from meter_readings order by meter_id, timestamp, unit, value::text, metadata::text";

/// Runs a property against the databases: `case` gets each generated value; a panic fails the
/// case and proptest shrinks it. Case count from [`proptest_config`] (default 10).
pub fn check_cases<T: std::fmt::Debug>(
    strategy: impl proptest::strategy::Strategy<Value = T>,
    case: impl Fn(T),
) {
    check_cases_with(10, strategy, case);
}

/// [`check_cases`] with another default case count.
pub fn check_cases_with<T: std::fmt::Debug>(
    default_cases: u32,
    strategy: impl proptest::strategy::Strategy<Value = T>,
    case: impl Fn(T),
) {
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config(default_cases));
    if let Err(e) = runner.run(&strategy, |value| {
        case(value);
        Ok(())
    }) {
        panic!("{e}");
    }
}

/// Holds an exclusive lock on the remote readings table, so an upload blocks until released.
pub async fn block_remote_readings(env: &TestEnv) -> tokio_postgres::Client {
    let blocker = env.remote.client().await;
    blocker
        .batch_execute("begin; lock table meter_readings in access exclusive mode")
        .await
        .unwrap();
    blocker
}

/// Starts a run on the service now and waits for its result.
pub async fn run_now(
    service: &meter_sync::service::Service,
    kind: meter_sync::data::runlock::RunKind,
    trigger: meter_sync::data::runlock::Trigger,
) -> std::sync::Arc<meter_sync::service::cycle::SyncCycleResult> {
    service
        .trigger(kind, trigger)
        .await
        .expect("the run starts")
        .wait()
        .await
        .expect("the run ends with a result")
}

/// The three ways an upload batch reaches the remote; the tests of faults run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPath {
    /// A unique index on the remote within the dedupe key: COPY into the table, a resend
    /// conflicts and goes through the stage.
    UniqueIndex,
    /// No unique index, `resend_check = "uncertain"`: COPY into the table under a ledger
    /// record; recorded batches settled through the anti-join.
    Recorded,
    /// No unique index, `resend_check = "every_batch"`: every batch through the anti-join.
    EveryBatch,
}

/// A path's profile, also as a file for `SYNC_PROFILE` of a child process.
pub struct PathProfile {
    pub profile: Profile,
    pub file: tempfile::NamedTempFile,
}

impl PathProfile {
    /// `SYNC_PROFILE=<file>`.
    pub fn var(&self) -> (&'static str, &str) {
        ("SYNC_PROFILE", self.file.path().to_str().unwrap())
    }
}

impl UploadPath {
    pub const ALL: [UploadPath; 3] = [
        UploadPath::UniqueIndex,
        UploadPath::Recorded,
        UploadPath::EveryBatch,
    ];

    /// Gives the remote readings table (default layout) the path's indexes and returns the
    /// path's profile (the default one, with `resend_check` set).
    pub async fn prepare(self, remote: &tokio_postgres::Client) -> PathProfile {
        if self != UploadPath::UniqueIndex {
            remote
                .batch_execute("drop index meter_readings_dedupe_idx; create index on meter_readings (meter_id, timestamp)")
                .await
                .unwrap();
        }
        let check = match self {
            UploadPath::EveryBatch => "every_batch",
            _ => "uncertain",
        };
        let text = meter_sync::profile::DEFAULT_PROFILE_TOML.replace(
            "after_upload = \"delete\"\n",
            &format!("after_upload = \"delete\"\nresend_check = \"{check}\"\n"),
        );
        assert!(text.contains("resend_check"), "the default profile changed");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let profile = meter_sync::profile::Profile::parse(&text, "test profile").unwrap();
        PathProfile { profile, file }
    }
}

/// Starts the upload ledger's epoch (a first run adopts the whole queue, sending it through
/// the anti-join): one reading uploaded and then removed from the remote, so the readings
/// queued next take the recorded path.
pub async fn start_ledger_epoch(
    config: &Config,
    profile: &Profile,
    local: &tokio_postgres::Client,
    remote: &tokio_postgres::Client,
) {
    local
        .execute(
            "insert into meter_readings (meter_id, timestamp, value, unit) values ('epoch', '2000-01-01', 0, 'kWh')",
            &[],
        )
        .await
        .unwrap();
    let report = upload_with(config, profile).await;
    assert!(report.success() && report.uploaded == 1, "{report:#?}");
    remote
        .execute("delete from meter_readings where meter_id = 'epoch'", &[])
        .await
        .unwrap();
}
