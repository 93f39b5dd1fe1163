//! Behind PgBouncer (Debian's binary, started by the test in front of the remote cluster):
//! a direct-mode agent is refused once with the setting to change, and in session and
//! transaction mode every part works, readings exactly once, even when the agent is killed
//! at random moments and its connections share a small pool.

use std::time::Duration;

use meter_sync::fixture::{insert_local_readings, FixtureSize, Layout};
use meter_sync::pgbouncer::{BouncerMode, PgBouncer};

use crate::support::{
    clusters, config_from, count, download_with, rows_text, upload_env, upload_with, TestEnv,
    READINGS_MULTISET,
};

/// A PgBouncer in front of the shared remote cluster.
async fn bouncer(mode: BouncerMode, pool_size: u32) -> PgBouncer {
    let port = clusters().remote.port();
    tokio::task::spawn_blocking(move || PgBouncer::start(port, mode, pool_size).unwrap())
        .await
        .unwrap()
}

/// The environment of `env` with the remote reached through `bouncer` in `mode`.
fn through(
    env: &TestEnv,
    bouncer: &PgBouncer,
    mode: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let port = bouncer.port().to_string();
    let mut vars = vec![
        ("POSTGRES_CLIENT_PORT", port.as_str()),
        ("POSTGRES_CLIENT_POOL_MODE", mode),
    ];
    vars.extend_from_slice(extra);
    env.env(&vars)
}

#[tokio::test]
async fn a_direct_mode_agent_is_refused_once_and_told_which_setting_to_change() {
    let (env, profile) = upload_env("pool_direct", &[]).await;
    let bouncer = bouncer(BouncerMode::Transaction, 5).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 10, 2, 0).await.unwrap();
    let config = config_from(through(
        &env,
        &bouncer,
        "direct",
        &[
            ("MAX_CONNECTION_RETRIES", "5"),
            ("RETRY_BASE_SECONDS", "0.2"),
        ],
    ));
    let report = upload_with(&config, &profile).await;
    let error = report.error.unwrap();
    assert!(
        error.contains("unsupported startup parameter: options (08P01)")
            && error.contains("set POSTGRES_CLIENT_POOL_MODE to its pool_mode, session or transaction (now direct)"),
        "{error}"
    );
    // A protocol violation is not retried: PgBouncer saw one refused login, not six.
    let refusals = bouncer
        .log_tail(200)
        .matches("closing because: unsupported startup parameter")
        .count();
    assert_eq!(refusals, 1, "{}", bouncer.log_tail(40));
    assert_eq!(count(&local, "meter_readings").await, 10, "nothing lost");
}

#[tokio::test]
async fn every_part_works_through_pgbouncer_in_session_and_transaction_mode() {
    // Session mode holds a server connection per client connection for its whole life, so its
    // pool must hold every connection of the agent's pools.
    for (label, mode, bouncer_mode, pool_size) in [
        ("pool_session", "session", BouncerMode::Session, 20),
        ("pool_txn", "transaction", BouncerMode::Transaction, 2),
    ] {
        let env = TestEnv::new(label).await;
        crate::support::load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default())
            .await;
        let profile = meter_sync::profile::Profile::builtin_default().unwrap();
        crate::support::migrate_local(&env.local, &profile).await;
        // In transaction mode fewer server connections than the agent's (4 upload workers, each
        // on its own remote connection): they take turns on two, so anything that outlived a
        // transaction (a session stage, a statement prepared in another transaction) breaks.
        let bouncer = bouncer(bouncer_mode, pool_size).await;
        let config = config_from(through(
            &env,
            &bouncer,
            mode,
            &[
                ("TENANT_ID", "1"),
                ("BATCH_SIZE", "100"),
                ("UPLOAD_WORKERS", "4"),
                ("MAX_ROW_FAILURES", "1"),
            ],
        ));
        let local = env.local.client().await;
        let remote = env.remote.client().await;
        let download = download_with(&config, &profile, Some("1"), &[]).await;
        assert!(download.success(), "{mode}: {download:#?}");
        assert_eq!(count(&local, "meter").await, 25, "{mode}");
        // Again: the diff path (hash stage, fetch by keys) through the pooler.
        remote
            .batch_execute("update meter set notes = 'changed' where id = 3")
            .await
            .unwrap();
        let download = download_with(&config, &profile, Some("1"), &[]).await;
        assert!(download.success(), "{mode}: {download:#?}");
        assert_eq!(download.entity("meter").unwrap().updated, 1, "{mode}");

        insert_local_readings(&local, 2_000, 20, 0).await.unwrap();
        let original = rows_text(&local, READINGS_MULTISET).await;
        let report = upload_with(&config, &profile).await;
        assert!(report.success(), "{mode}: {report:#?}");
        assert_eq!(report.uploaded, 2_000, "{mode}");
        // A resend (the same readings queued again) is a no-op through the stage.
        insert_local_readings(&local, 500, 20, 0).await.unwrap();
        let report = upload_with(&config, &profile).await;
        assert!(report.success(), "{mode}: {report:#?}");
        assert_eq!((report.uploaded, report.deduplicated), (0, 500), "{mode}");
        // The anti-join path (no unique index) and a refused reading found by splitting.
        remote
            .batch_execute(
                "drop index meter_readings_dedupe_idx; create index on meter_readings (meter_id, timestamp);
                 alter table meter_readings add constraint small check (value < 1000000)",
            )
            .await
            .unwrap();
        insert_local_readings(&local, 300, 20, 5_000).await.unwrap();
        local
            .batch_execute("update meter_readings set value = 5000000 where id = (select min(id) + 3 from meter_readings)")
            .await
            .unwrap();
        let report = upload_with(&config, &profile).await;
        assert!(report.success(), "{mode}: {report:#?}");
        assert_eq!((report.uploaded, report.quarantined), (299, 1), "{mode}");
        assert_eq!(count(&remote, "meter_readings").await, 2_299, "{mode}");
        let sent = rows_text(
            &remote,
            "select meter_id, timestamp, value, unit, metadata from meter_readings where timestamp < timestamp '2026-01-01' + interval '5000 minutes' order by meter_id, timestamp, unit, value::text, metadata::text",
        )
        .await;
        assert_eq!(sent.len(), original.len(), "{mode}");
        // Check through the pooler: the dry run prepares every statement.
        let vars = through(&env, &bouncer, mode, &[("TENANT_ID", "1")]);
        let check_vars = vars.clone();
        let (code, out, err) =
            tokio::task::spawn_blocking(move || crate::check::meter_sync(&check_vars, &["check"]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{mode}: {out}{err}");
        // A full cycle of the binary: both parts, the new readings once.
        insert_local_readings(&local, 400, 20, 9_000).await.unwrap();
        let (code, out, err) =
            tokio::task::spawn_blocking(move || crate::check::meter_sync(&vars, &["once"]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert_eq!(
            count(&local, "meter_readings").await,
            1,
            "{mode}: the quarantined one"
        );
        assert_eq!(count(&remote, "meter_readings").await, 2_699, "{mode}");
    }
}

#[tokio::test]
async fn killing_the_uploader_through_pgbouncer_in_transaction_mode_loses_and_doubles_nothing() {
    let (env, profile) = upload_env("pool_crash", &[]).await;
    let bouncer = bouncer(BouncerMode::Transaction, 2).await;
    let remote = env.remote.client().await;
    let local = env.local.client().await;
    insert_local_readings(&local, 10_000, 50, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let vars = through(&env, &bouncer, "transaction", &[("BATCH_SIZE", "250")]);
    let points: u64 = std::env::var("CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..points {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 400);
        let vars = vars.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = crate::upload::meter_sync_upload(&vars);
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        })
        .await
        .unwrap();
    }
    let config = config_from(vars);
    let last = upload_with(&config, &profile).await;
    assert!(last.success(), "{last:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    assert_eq!(
        rows_text(&remote, READINGS_MULTISET).await,
        original,
        "exactly the original readings, none twice"
    );
}

#[tokio::test]
async fn a_remote_outage_behind_pgbouncer_loses_nothing_and_the_next_run_completes() {
    use meter_sync::pgcluster::{ClusterOptions, PgCluster, StopMode};
    // A remote cluster of its own behind a PgBouncer of its own: this test stops it.
    let mut remote_cluster = tokio::task::spawn_blocking(|| {
        PgCluster::start(&ClusterOptions {
            label: "test-pool-outage".into(),
            ..ClusterOptions::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let (env, profile) = upload_env("pool_outage", &[]).await;
    let admin = crate::support::connect(&remote_cluster, "postgres").await;
    admin
        .batch_execute("create database central")
        .await
        .unwrap();
    let central = crate::support::connect(&remote_cluster, "central").await;
    central
        .batch_execute(Layout::Default.remote_schema())
        .await
        .unwrap();
    let port = remote_cluster.port();
    let bouncer = tokio::task::spawn_blocking(move || {
        PgBouncer::start(port, BouncerMode::Transaction, 2).unwrap()
    })
    .await
    .unwrap();
    let mut config = config_from(through(
        &env,
        &bouncer,
        "transaction",
        &[("BATCH_SIZE", "200"), ("MAX_QUERY_RETRIES", "1")],
    ));
    config.remote.dbname = "central".into();
    let local = env.local.client().await;
    insert_local_readings(&local, 30_000, 20, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let run = {
        let profile = profile.clone();
        let config = config.clone();
        tokio::spawn(async move { upload_with(&config, &profile).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut remote_cluster = tokio::task::spawn_blocking(move || {
        remote_cluster.stop(StopMode::Immediate).unwrap();
        remote_cluster
    })
    .await
    .unwrap();
    let interrupted = run.await.unwrap();
    assert!(
        !interrupted.success(),
        "the run saw the outage: {interrupted:#?}"
    );
    // While the server is down the pooler still accepts the agent: the run fails, nothing is
    // lost, and the error says the server is unreachable.
    let down = upload_with(&config, &profile).await;
    let error = down.error.clone().unwrap_or_default();
    assert!(!down.success(), "{down:#?}");
    assert!(
        error.contains("remote database") && error.contains("(08P01)"),
        "{error}"
    );
    let remote_cluster = tokio::task::spawn_blocking(move || {
        remote_cluster.restart().unwrap();
        remote_cluster
    })
    .await
    .unwrap();
    // PgBouncer tries the server's login again after `server_login_retry` (1 s here).
    for _ in 0..100 {
        let answered = match tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=central",
                bouncer.port()
            ),
            tokio_postgres::NoTls,
        )
        .await
        {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client.simple_query("select 1").await.is_ok()
            }
            Err(_) => false,
        };
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let next = upload_with(&config, &profile).await;
    assert!(next.success(), "{next:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let central = crate::support::connect(&remote_cluster, "central").await;
    assert_eq!(rows_text(&central, READINGS_MULTISET).await, original);
    drop(central);
    drop(bouncer);
    tokio::task::spawn_blocking(move || drop(remote_cluster))
        .await
        .unwrap();
}

/// `meter-sync upload` as a process of its own with `vars`, its log in `log`; its exit code.
fn upload_process(vars: &[(String, String)], log: &std::path::Path) -> Option<i32> {
    std::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .arg("upload")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .status()
        .unwrap()
        .code()
}

#[tokio::test]
async fn agent_processes_in_turn_on_one_server_connection_in_transaction_mode() {
    // Every process names its prepared statements s0, s1, ... from zero; on the server
    // connection the pooler lends it, the statements another client left there must not refuse
    // its own ("prepared statement \"s5\" already exists", seen with 200 agent processes).
    let (env, _profile) = upload_env("pool_procs", &[]).await;
    let bouncer = bouncer(BouncerMode::Transaction, 1).await;
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    // Another client leaves s0..s999 on the pool's one server connection.
    let (other, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(bouncer.port())
        .user("postgres")
        .dbname(&env.remote.name)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let leftovers: String = (0..1000)
        .map(|i| format!("prepare s{i} as select {i};"))
        .collect();
    other.simple_query(&leftovers).await.unwrap();
    drop(other);
    let _ = task.await;
    let vars = through(&env, &bouncer, "transaction", &[("BATCH_SIZE", "50")]);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        insert_local_readings(&local, 120, 3, round * 1_000)
            .await
            .unwrap();
        let (vars, log) = (vars.clone(), dir.path().join(format!("upload-{round}.log")));
        let code = tokio::task::spawn_blocking(move || (upload_process(&vars, &log), log))
            .await
            .unwrap();
        assert_eq!(
            code.0,
            Some(0),
            "round {round}: {}",
            std::fs::read_to_string(&code.1).unwrap_or_default()
        );
    }
    assert_eq!(count(&local, "meter_readings").await, 0);
    let row = remote
        .query_one(
            "select count(*), count(distinct (meter_id, timestamp, unit)) from meter_readings",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (360, 360));
}
