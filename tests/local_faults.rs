//! Faults of the site's own database: stopped during an upload or a download, read-only
//! (`default_transaction_read_only`), and out of disk space (a tablespace on a small tmpfs).
//! Each run fails cleanly with an error naming the local database, nothing is lost, and the
//! next run after the fault is repaired completes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meter_sync::config::Config;
use meter_sync::fixture::{insert_local_readings, FixtureSize, Layout};
use meter_sync::pgcluster::{ClusterOptions, PgCluster, StopMode};
use meter_sync::profile::Profile;

use crate::support::{
    block_remote_readings, config_from, connect, count, default_env, download, download_with,
    load_remote_fixture, rows_text, upload, upload_with, TestEnv, READINGS_MULTISET,
};

/// A site cluster of the test's own (it is stopped and restarted) with a migrated `site`
/// database, a fresh remote database with the default fixture, and a configuration joining
/// them.
struct Site {
    cluster: PgCluster,
    env: TestEnv,
    config: Config,
    profile: Profile,
}

impl Site {
    async fn start(label: &str, extra: &[(&str, &str)]) -> Self {
        let cluster = PgCluster::start(&ClusterOptions {
            label: format!("test-{label}"),
            ..ClusterOptions::default()
        })
        .unwrap();
        connect(&cluster, "postgres")
            .await
            .batch_execute("create database site")
            .await
            .unwrap();
        let profile = Profile::builtin_default().unwrap();
        let mut local = connect(&cluster, "site").await;
        meter_sync::data::schema::migrate(&mut local, &profile)
            .await
            .unwrap();
        let env = TestEnv::new(label).await;
        load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default()).await;
        let port = cluster.port().to_string();
        let mut pairs = vec![
            ("POSTGRES_SYNC_PORT", port.as_str()),
            ("POSTGRES_SYNC_DB", "site"),
            ("MAX_CONNECTION_RETRIES", "1"),
            ("MAX_QUERY_RETRIES", "1"),
        ];
        pairs.extend_from_slice(extra);
        let config = config_from(env.env(&pairs));
        Self {
            cluster,
            env,
            config,
            profile,
        }
    }

    async fn local(&self) -> tokio_postgres::Client {
        connect(&self.cluster, "site").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_database_stopped_during_an_upload_loses_nothing() {
    let mut site = Site::start("lf_up_stop", &[]).await;
    let local = site.local().await;
    insert_local_readings(&local, 2000, 8, 0).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    // The first batch blocks on the remote; the local server dies meanwhile.
    let blocker = block_remote_readings(&site.env).await;
    let (config, profile) = (site.config.clone(), site.profile.clone());
    let run = tokio::spawn(async move { upload_with(&config, &profile).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    site.cluster.stop(StopMode::Immediate).unwrap();
    blocker.batch_execute("rollback").await.unwrap();
    let report = run.await.unwrap();
    let error = report.error.as_deref().unwrap_or_default();
    assert!(error.contains("local database"), "{report:#?}");

    site.cluster.restart().unwrap();
    let local = site.local().await;
    assert_eq!(
        rows_text(&local, READINGS_MULTISET).await,
        expected,
        "every reading still queued after the crash"
    );
    let report = upload_with(&site.config, &site.profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let remote = site.env.remote.client().await;
    assert_eq!(
        rows_text(&remote, READINGS_MULTISET).await,
        expected,
        "each reading once, although the first batch may have reached the remote before the local crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_database_stopped_during_a_download_changes_nothing() {
    let mut site = Site::start("lf_down_stop", &[]).await;
    // The download applies the tenant, then waits on the remote meter table.
    let remote = site.env.remote.client().await;
    remote
        .batch_execute("begin; lock table meter in access exclusive mode")
        .await
        .unwrap();
    let (config, profile) = (site.config.clone(), site.profile.clone());
    let run = tokio::spawn(async move { download_with(&config, &profile, Some("1"), &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    site.cluster.stop(StopMode::Immediate).unwrap();
    remote.batch_execute("rollback").await.unwrap();
    let report = run.await.unwrap();
    assert!(!report.success());
    let error = report.first_error().unwrap();
    assert!(error.contains("local database"), "{error}");

    site.cluster.restart().unwrap();
    let local = site.local().await;
    for table in ["tenant", "meter", "register", "device_register"] {
        assert_eq!(
            count(&local, table).await,
            0,
            "{table}: nothing half applied"
        );
    }
    let report = download_with(&site.config, &site.profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(count(&local, "meter").await, 25);
}

#[tokio::test]
async fn read_only_local_database_fails_clearly_and_loses_nothing() {
    let (env, profile) = default_env("lf_read_only").await;
    let local = env.local.client().await;
    insert_local_readings(&local, 300, 3, 0).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    local
        .batch_execute(&format!(
            "alter database {} set default_transaction_read_only = on",
            env.local.name
        ))
        .await
        .unwrap();
    let report = upload(&env, &profile).await;
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("local database") && error.contains("read-only transaction"),
        "{report:#?}"
    );
    let report = download(&env, &profile, Some("1"), &[]).await;
    let error = report.first_error().unwrap_or_default();
    assert!(
        error.contains("local database") && error.contains("read-only transaction"),
        "{error}"
    );
    let remote = env.remote.client().await;
    assert_eq!(count(&remote, "meter_readings").await, 0);
    assert_eq!(rows_text(&local, READINGS_MULTISET).await, expected);

    local
        .batch_execute(&format!(
            "alter database {} reset default_transaction_read_only",
            env.local.name
        ))
        .await
        .unwrap();
    assert!(upload(&env, &profile).await.success());
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, expected);
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(count(&local, "meter").await, 25);
}

/// A small tmpfs, owned by the server's user, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meter-sync-small-disk-")
            .tempdir()
            .unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the disk-full test mounts a small tmpfs and needs root: `mount -t tmpfs` failed"
        );
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the tablespace `small` until the server reports it full.
async fn fill(client: &tokio_postgres::Client) -> u64 {
    client
        .batch_execute("create table filler (b text) tablespace small")
        .await
        .unwrap();
    let mut rows = 0;
    loop {
        // Random text of ~1 kB per row: neither compressed nor moved to TOAST.
        let result = client
            .execute(
                "insert into filler select (select string_agg(md5(random()::text || i || g), '') from generate_series(1, 30) g) from generate_series(1, 500) i",
                &[],
            )
            .await;
        match result {
            Ok(n) => rows += n,
            Err(e) => {
                let db = e.as_db_error().map(|d| d.code().code().to_string());
                assert_eq!(db.as_deref(), Some("53100"), "expected disk full: {e}");
                return rows;
            }
        }
        assert!(rows < 1_000_000, "the small disk never filled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_local_disk_fails_the_entity_clearly_and_the_queue_still_drains() {
    // Dropped last: the cluster stops before the disk is unmounted.
    let disk = SmallDisk::mount("8m");
    let site = Site::start("lf_disk_full", &[]).await;
    let local = site.local().await;
    insert_local_readings(&local, 1000, 5, 0).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    local
        .batch_execute(&format!(
            "create tablespace small location '{}'",
            disk.path().display()
        ))
        .await
        .unwrap();
    local
        .batch_execute(
            "alter table meter set tablespace small; alter table meter_readings set tablespace small",
        )
        .await
        .unwrap();
    let rows = fill(&local).await;
    eprintln!("disk full after {rows} filler rows");

    let report = download_with(&site.config, &site.profile, Some("1"), &[]).await;
    let meter = report.entity("meter").unwrap();
    let error = meter.error.as_deref().unwrap_or_default();
    assert!(
        !meter.success && error.contains("local database") && error.contains("53100"),
        "{report:#?}"
    );
    assert_eq!(count(&local, "meter").await, 0, "nothing half applied");
    // The queue drains on a full disk: removing uploaded readings needs no space.
    let report = upload_with(&site.config, &site.profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let remote = site.env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, expected);

    local.batch_execute("drop table filler").await.unwrap();
    let report = download_with(&site.config, &site.profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(count(&local, "meter").await, 25);
    drop(local);
    drop(site);
    drop(disk);
}
