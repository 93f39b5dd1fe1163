//! The upload engine against real clusters: examples, faults, crashes and concurrency.

use std::process::{Command, Stdio};
use std::time::Duration;

use meter_sync::fixture::insert_local_readings;
use meter_sync::pgcluster::{ClusterOptions, PgCluster, StopMode};
use meter_sync::profile::Profile;

use crate::support::{
    connect, count, rows_text, start_ledger_epoch, upload, upload_env, UploadPath,
    READINGS_MULTISET,
};

#[tokio::test]
async fn upload_moves_every_reading_once_and_empties_the_queue() {
    let (env, profile) = upload_env("up_basic", &[("BATCH_SIZE", "100")]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 250, 7, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        (
            report.uploaded,
            report.deduplicated,
            report.removed,
            report.batches
        ),
        (250, 0, 250, 3)
    );
    assert_eq!(report.queue_before.unwrap().size, 250);
    assert_eq!(report.queue_after.unwrap().size, 0);
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, original);
    assert_eq!(count(&local, "meter_readings").await, 0);
    let log = rows_text(
        &local,
        "select sync_type, success, inserted, deleted from sync_logs",
    )
    .await;
    assert_eq!(log, ["(upload,t,250,250)"]);
    // Nothing queued: a no-op run.
    let again = upload(&env, &profile).await;
    assert_eq!((again.uploaded, again.batches), (0, 0));
}

/// The same readings queued again (by the site, or left by an older process) are not sent
/// twice where a unique index or the anti-join of every batch dedupes.
async fn resend_is_a_noop(label: &str, path: UploadPath) {
    let (env, _) = upload_env(label, &[]).await;
    let remote = env.remote.client().await;
    let profile = path.prepare(&remote).await.profile;
    let local = env.local.client().await;
    insert_local_readings(&local, 120, 4, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    assert_eq!(upload(&env, &profile).await.uploaded, 120);
    // As if the process died after the remote commit, before the local delete: the same
    // readings are queued again, plus 30 new ones.
    insert_local_readings(&local, 150, 4, 0).await.unwrap();
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        (report.uploaded, report.deduplicated, report.removed),
        (30, 120, 150)
    );
    insert_local_readings(&local, 150, 4, 0).await.unwrap();
    let mut expected = rows_text(&local, READINGS_MULTISET).await;
    expected.sort();
    let mut on_remote = rows_text(&remote, READINGS_MULTISET).await;
    on_remote.sort();
    assert_eq!(on_remote, expected, "each reading exactly once");
    assert!(original.iter().all(|r| on_remote.contains(r)));
}

#[tokio::test]
async fn resend_is_a_noop_with_a_unique_index() {
    resend_is_a_noop("up_resend_idx", UploadPath::UniqueIndex).await;
}

#[tokio::test]
async fn resend_is_a_noop_with_an_anti_join() {
    resend_is_a_noop("up_resend_anti", UploadPath::EveryBatch).await;
}

/// The ledger's records: (readings table, number of ids) per record.
async fn ledger_records(local: &tokio_postgres::Client) -> Vec<(String, i64)> {
    local
        .query(
            "select readings_table, cardinality(ids)::int8 from meter_sync_upload_ledger order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn the_ledger_adopts_a_queue_an_older_process_may_have_sent_and_settles_uncertain_batches() {
    let (env, _) = upload_env("up_ledger", &[("BATCH_SIZE", "40")]).await;
    let remote = env.remote.client().await;
    let profile = UploadPath::Recorded.prepare(&remote).await.profile;
    let local = env.local.client().await;
    // An older process sent 50 readings and left them queued; 20 more came since.
    insert_local_readings(&local, 50, 5, 0).await.unwrap();
    insert_local_readings(&remote, 50, 5, 0).await.unwrap();
    insert_local_readings(&local, 20, 5, 500).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    let first = upload(&env, &profile).await;
    assert!(first.success(), "{first:#?}");
    // The first run adopted the whole queue (2 records of at most 40) and compared it.
    assert_eq!(
        (
            first.uploaded,
            first.deduplicated,
            first.removed,
            first.batches
        ),
        (20, 50, 70, 2)
    );
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, expected);
    assert!(ledger_records(&local).await.is_empty());
    let epoch: i64 = local
        .query_one("select count(*) from meter_sync_upload_epoch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, 1);

    // From now on batches go straight in: 100 new readings, no comparison.
    insert_local_readings(&local, 100, 5, 1_000).await.unwrap();
    let recorded = upload(&env, &profile).await;
    assert!(recorded.success(), "{recorded:#?}");
    assert_eq!(
        (recorded.uploaded, recorded.deduplicated, recorded.batches),
        (100, 0, 3)
    );
    assert!(ledger_records(&local).await.is_empty());

    // As if the local removal of 30 of them had been lost after their remote commit: they
    // are queued again under their batch's record. The next run settles the record first
    // (nothing sent twice), then sends 10 new readings straight in.
    insert_local_readings(&local, 30, 5, 1_000).await.unwrap();
    local
        .batch_execute(
            "insert into meter_sync_upload_ledger (readings_table, ids)
             select '\"meter_readings\"', array_agg(id::text) from meter_readings",
        )
        .await
        .unwrap();
    insert_local_readings(&local, 10, 5, 2_000).await.unwrap();
    let settled = upload(&env, &profile).await;
    assert!(settled.success(), "{settled:#?}");
    assert_eq!(
        (settled.uploaded, settled.deduplicated, settled.removed),
        (10, 30, 40)
    );
    assert!(ledger_records(&local).await.is_empty());
    let row = remote
        .query_one(
            "select count(*), count(distinct (meter_id, timestamp, unit)) from meter_readings",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (180, 180));

    // What the ledger cannot know (README): the site queueing a reading it already sent, under
    // no record, goes straight in again. `resend_check = "every_batch"` or a unique index
    // catches that; here it shows these batches took the recorded path.
    insert_local_readings(&local, 3, 5, 2_000).await.unwrap();
    let again = upload(&env, &profile).await;
    assert_eq!((again.uploaded, again.deduplicated), (3, 0));
    remote
        .batch_execute("delete from meter_readings a using meter_readings b where (a.meter_id, a.timestamp, a.unit) = (b.meter_id, b.timestamp, b.unit) and a.id > b.id")
        .await
        .unwrap();

    // A unique index on the remote ends the epoch: a later return to the ledger adopts again.
    remote
        .batch_execute("create unique index meter_readings_dedupe_idx on meter_readings (meter_id, timestamp, unit)")
        .await
        .unwrap();
    insert_local_readings(&local, 5, 5, 3_000).await.unwrap();
    assert_eq!(upload(&env, &profile).await.uploaded, 5);
    let epoch: i64 = local
        .query_one("select count(*) from meter_sync_upload_epoch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, 0);
}

#[tokio::test]
async fn a_restored_site_database_is_adopted_again() {
    let (env, _) = upload_env("up_restored", &[]).await;
    let remote = env.remote.client().await;
    let profile = UploadPath::Recorded.prepare(&remote).await.profile;
    let local = env.local.client().await;
    start_ledger_epoch(&env.config, &profile, &local, &remote).await;
    insert_local_readings(&local, 60, 3, 0).await.unwrap();
    assert_eq!(upload(&env, &profile).await.uploaded, 60);
    // A backup from before that upload restored: the 60 readings queued again, with the
    // epoch of the database the backup was taken on (another identity).
    insert_local_readings(&local, 60, 3, 0).await.unwrap();
    local
        .batch_execute(
            "update meter_sync_upload_epoch set database_identity = 'another/16384/00000001'",
        )
        .await
        .unwrap();
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!((report.uploaded, report.deduplicated), (0, 60));
    assert_eq!(count(&remote, "meter_readings").await, 60);
}

#[tokio::test]
async fn a_poison_reading_is_quarantined_and_never_blocks_the_queue() {
    let (env, profile) = upload_env(
        "up_poison",
        &[
            ("BATCH_SIZE", "50"),
            ("MAX_ROW_FAILURES", "2"),
            ("UPLOAD_WORKERS", "1"),
        ],
    )
    .await;
    let remote = env.remote.client().await;
    remote
        .batch_execute(
            "alter table meter_readings add constraint value_in_range check (value < 1000000)",
        )
        .await
        .unwrap();
    let local = env.local.client().await;
    insert_local_readings(&local, 120, 5, 0).await.unwrap();
    let poison: i64 = local
        .query_one("update meter_readings set value = 5000000 where id = (select min(id) + 7 from meter_readings) returning id", &[])
        .await
        .unwrap()
        .get(0);
    let poison = meter_sync::engine::upload::ReadingId::Int(poison);
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.uploaded, 119);
    assert_eq!(report.quarantined, 1);
    assert_eq!(report.rejected[0].id, poison);
    assert!(
        report.rejected[0].error.contains("value_in_range"),
        "{:?}",
        report.rejected[0]
    );
    assert_eq!(report.queue_after.unwrap().size, 0);
    assert_eq!(report.queue_after.unwrap().quarantined, 1);
    // Kept locally, never deleted; listed with its error.
    let list = meter_sync::engine::upload::list_quarantined(
        &local,
        profile.readings.as_ref().unwrap(),
        10,
    )
    .await
    .unwrap();
    assert_eq!((list.len(), &list[0].id, list[0].attempts), (1, &poison, 2));
    // More readings flow past it.
    insert_local_readings(&local, 10, 5, 1000).await.unwrap();
    assert_eq!(upload(&env, &profile).await.uploaded, 10);
    // Fixed remotely and released: it arrives.
    remote
        .batch_execute("alter table meter_readings drop constraint value_in_range")
        .await
        .unwrap();
    let released = meter_sync::engine::upload::release_quarantined(
        &local,
        profile.readings.as_ref().unwrap(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(released, [poison]);
    assert_eq!(upload(&env, &profile).await.uploaded, 1);
    assert_eq!(count(&local, "meter_readings").await, 0);
    assert_eq!(count(&remote, "meter_readings").await, 130);
}

#[tokio::test]
async fn mark_mode_keeps_readings_marked_and_purges_after_retention() {
    let (env, _) = upload_env("up_mark", &[("READING_RETENTION_DAYS", "0")]).await;
    let text = meter_sync::profile::DEFAULT_PROFILE_TOML
        .replace("after_upload = \"delete\"", "after_upload = \"mark\"");
    let profile = Profile::parse(&text, "mark").unwrap();
    let local = env.local.client().await;
    insert_local_readings(&local, 40, 2, 0).await.unwrap();
    let report = upload(&env, &profile).await;
    assert_eq!(
        (report.uploaded, report.removed, report.purged),
        (40, 40, 40),
        "{report:#?}"
    );
    let (env2, _) = upload_env("up_mark_keep", &[]).await;
    let local2 = env2.local.client().await;
    insert_local_readings(&local2, 40, 2, 0).await.unwrap();
    let report = upload(&env2, &profile).await;
    assert_eq!(
        (report.uploaded, report.removed, report.purged),
        (40, 40, 0)
    );
    assert_eq!(
        rows_text(
            &local2,
            "select count(*) from meter_readings where is_synchronized and synced_at is not null"
        )
        .await,
        ["(40)"]
    );
    assert_eq!(
        upload(&env2, &profile).await.uploaded,
        0,
        "marked readings are not sent again"
    );
}

#[tokio::test]
async fn a_type_mismatch_stops_the_run_with_the_column_named() {
    let (env, profile) = upload_env("up_types", &[]).await;
    env.remote
        .client()
        .await
        .batch_execute("alter table meter_readings alter column value type double precision")
        .await
        .unwrap();
    let local = env.local.client().await;
    insert_local_readings(&local, 5, 1, 0).await.unwrap();
    let report = upload(&env, &profile).await;
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("value: remote float8, local numeric"),
        "{report:#?}"
    );
    assert_eq!(count(&local, "meter_readings").await, 5);
}

pub(crate) fn meter_sync_upload(env: &[(String, String)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .arg("upload")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn two_upload_processes_on_one_database_never_double_a_reading() {
    let (env, profile) = upload_env("up_concurrent", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 5000, 13, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let vars = env.env(&[("BATCH_SIZE", "100")]);
    let codes = tokio::task::spawn_blocking(move || {
        let mut a = meter_sync_upload(&vars);
        let mut b = meter_sync_upload(&vars);
        (a.wait().unwrap().code(), b.wait().unwrap().code())
    })
    .await
    .unwrap();
    assert!(codes.0 == Some(0) || codes.1 == Some(0), "{codes:?}");
    // Whatever one of them left (it may have found the other running), a last run finishes.
    let last = upload(&env, &profile).await;
    assert!(last.success());
    assert_eq!(count(&local, "meter_readings").await, 0);
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, original);
}

async fn killing_the_uploader_at_random_moments_loses_and_doubles_nothing(
    label: &str,
    path: UploadPath,
) {
    let (env, _) = upload_env(label, &[]).await;
    let remote = env.remote.client().await;
    let path_profile = path.prepare(&remote).await;
    let profile = path_profile.profile.clone();
    let local = env.local.client().await;
    if path == UploadPath::Recorded {
        start_ledger_epoch(&env.config, &profile, &local, &remote).await;
    }
    insert_local_readings(&local, 20_000, 50, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let points: u64 = std::env::var("CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let vars = env.env(&[("BATCH_SIZE", "250"), path_profile.var()]);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..points {
        // A deterministic spread of kill moments between 0 and 400 ms.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 400);
        let vars = vars.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = meter_sync_upload(&vars);
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
    let remaining = count(&local, "meter_readings").await;
    assert!(remaining < 20_000, "the killed runs made progress");
    let last = upload(&env, &profile).await;
    assert!(last.success(), "{last:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    assert_eq!(
        rows_text(&remote, READINGS_MULTISET).await,
        original,
        "exactly the original readings, none twice"
    );
}

#[tokio::test]
async fn killing_the_uploader_loses_and_doubles_nothing_with_a_unique_index() {
    killing_the_uploader_at_random_moments_loses_and_doubles_nothing(
        "up_crash_idx",
        UploadPath::UniqueIndex,
    )
    .await;
}

#[tokio::test]
async fn killing_the_uploader_loses_and_doubles_nothing_with_the_ledger() {
    killing_the_uploader_at_random_moments_loses_and_doubles_nothing(
        "up_crash_ledger",
        UploadPath::Recorded,
    )
    .await;
}

#[tokio::test]
async fn killing_the_uploader_loses_and_doubles_nothing_with_every_batch_checked() {
    killing_the_uploader_at_random_moments_loses_and_doubles_nothing(
        "up_crash_every",
        UploadPath::EveryBatch,
    )
    .await;
}

async fn a_remote_outage_mid_run_loses_nothing_and_the_next_run_completes(
    label: &str,
    path: UploadPath,
) {
    // A remote cluster of its own: this test stops it.
    let mut remote_cluster = tokio::task::spawn_blocking(|| {
        PgCluster::start(&ClusterOptions {
            label: "test-outage".into(),
            ..ClusterOptions::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let (mut env, _) =
        upload_env(label, &[("BATCH_SIZE", "200"), ("MAX_QUERY_RETRIES", "1")]).await;
    let admin = connect(&remote_cluster, "postgres").await;
    admin
        .batch_execute("create database central")
        .await
        .unwrap();
    let central = connect(&remote_cluster, "central").await;
    central
        .batch_execute(meter_sync::fixture::Layout::Default.remote_schema())
        .await
        .unwrap();
    env.config.remote.port = remote_cluster.port();
    env.config.remote.dbname = "central".into();
    let profile = path.prepare(&central).await.profile;
    let local = env.local.client().await;
    if path == UploadPath::Recorded {
        start_ledger_epoch(&env.config, &profile, &local, &central).await;
    }
    insert_local_readings(&local, 30_000, 20, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let run = {
        let pools = crate::support::pools(&env);
        let profile = profile.clone();
        let config = env.config.clone();
        tokio::spawn(async move {
            let readings = profile.readings.as_ref().unwrap();
            meter_sync::service::cycle::upload(
                &pools,
                meter_sync::service::cycle::upload_request(&config, &profile, readings),
            )
            .await
        })
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
    let remote_cluster = tokio::task::spawn_blocking(move || {
        remote_cluster.restart().unwrap();
        remote_cluster
    })
    .await
    .unwrap();
    let next = upload(&env, &profile).await;
    assert!(next.success(), "{next:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let central = connect(&remote_cluster, "central").await;
    assert_eq!(rows_text(&central, READINGS_MULTISET).await, original);
    drop(central);
    tokio::task::spawn_blocking(move || drop(remote_cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_remote_outage_loses_nothing_with_a_unique_index() {
    a_remote_outage_mid_run_loses_nothing_and_the_next_run_completes(
        "up_outage_idx",
        UploadPath::UniqueIndex,
    )
    .await;
}

#[tokio::test]
async fn a_remote_outage_loses_nothing_with_the_ledger() {
    a_remote_outage_mid_run_loses_nothing_and_the_next_run_completes(
        "up_outage_ledger",
        UploadPath::Recorded,
    )
    .await;
}

#[tokio::test]
async fn a_remote_outage_loses_nothing_with_every_batch_checked() {
    a_remote_outage_mid_run_loses_nothing_and_the_next_run_completes(
        "up_outage_every",
        UploadPath::EveryBatch,
    )
    .await;
}

#[tokio::test]
async fn upload_status_and_quarantine_commands_work_end_to_end() {
    let (env, _) = upload_env("up_cli", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 30, 3, 0).await.unwrap();
    let vars = env.env(&[]);
    let run = |args: &'static [&'static str]| {
        let vars = vars.clone();
        move || {
            let out = Command::new(env!("CARGO_BIN_EXE_meter-sync"))
                .args(args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (code, out) = tokio::task::spawn_blocking(run(&["status"])).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains("upload queue: 30 readings"), "{out}");
    let (code, out) = tokio::task::spawn_blocking(run(&["upload", "--json"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["uploaded"], 30);
    let (_, out) = tokio::task::spawn_blocking(run(&["status", "--json"]))
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["queue_size"], 0);
    assert_eq!(status["last_upload"]["sync_type"], "upload");
    assert_eq!(status["last_upload"]["inserted"], 30);
    let (code, out) = tokio::task::spawn_blocking(run(&["quarantine", "list"]))
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (Some(0), "no quarantined readings"));
    let (code, out) = tokio::task::spawn_blocking(run(&["quarantine", "release", "--all"]))
        .await
        .unwrap();
    assert_eq!(
        (code, out.trim()),
        (Some(0), "released 0 reading(s) for another upload")
    );
}

/// The plan of the claim that continues a drain (`claim_and_remove_after`), as the agent
/// prepares it, for a batch of 100 after the first reading.
async fn claim_plan(client: &tokio_postgres::Client, profile: &Profile) -> String {
    let readings = profile.readings.as_ref().unwrap();
    let claim = meter_sync::data::sql::claim_and_remove_after(readings, &Default::default());
    client
        .batch_execute(&format!("prepare claim_plan as {claim}"))
        .await
        .unwrap();
    let plan: serde_json::Value = client
        .query_one(
            "explain (format json) execute claim_plan(100, '2026-01-01', 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("deallocate claim_plan").await.unwrap();
    plan.to_string()
}

/// Times the readings table was analyzed (by anyone; autovacuum is off for it in the test).
async fn analyze_count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "select analyze_count from pg_stat_user_tables where relname = 'meter_readings'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A backlog loaded in one go into a table analyzed while empty: the planner, without
/// statistics for it, would claim every batch by scanning and sorting the whole queue. The
/// upload refreshes the statistics first (a backlog of 1,000 readings or more, more than a tenth
/// changed), so the claims walk the queue index; a small queue or fresh statistics are left alone.
#[tokio::test]
async fn a_backlog_gets_fresh_statistics_before_the_drain() {
    let (env, profile) = upload_env("up_stats", &[("MAX_BATCHES_PER_RUN", "1")]).await;
    let local = env.local.client().await;
    local
        .batch_execute(
            "alter table meter_readings set (autovacuum_enabled = false); analyze meter_readings",
        )
        .await
        .unwrap();
    let queue = |rows: i64, start: i64| {
        let local = &local;
        async move {
            insert_local_readings(local, rows, 10, start).await.unwrap();
            // Counted changes reach the statistics views at once, not up to a second later.
            local
                .batch_execute("select pg_stat_force_next_flush()")
                .await
                .unwrap();
        }
    };
    queue(500, 0).await;
    assert!(upload(&env, &profile).await.success());
    assert_eq!(
        analyze_count(&local).await,
        1,
        "a small queue is not analyzed"
    );

    queue(6_000, 1_000).await;
    let before = claim_plan(&local, &profile).await;
    assert!(
        before.contains("Seq Scan"),
        "without statistics the claim scans the queue: {before}"
    );
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(analyze_count(&local).await, 2, "a backlog is analyzed");
    let after = claim_plan(&local, &profile).await;
    assert!(
        !after.contains("Seq Scan") && after.contains("meter_readings_sync_queue_idx"),
        "with statistics the claim walks the queue index: {after}"
    );
    assert!(upload(&env, &profile).await.success());
    assert_eq!(
        analyze_count(&local).await,
        2,
        "statistics still fresh: not analyzed again"
    );
}

/// The anti-join probes the central's index on the dedupe key for each staged reading instead
/// of reading the whole table per batch: an index that leaves out at most one of the key's
/// columns serves (spec 004's `(meter_id, timestamp)`), one on fewer, a hash index, a partial
/// index or included columns do not; and the insert's plan is then a nested loop through that
/// index, whatever the planner believes of the central's table.
#[tokio::test]
async fn the_anti_join_probes_the_central_index_on_the_dedupe_key() {
    let (env, _) = upload_env("up_probe", &[("BATCH_SIZE", "10000")]).await;
    let remote = env.remote.client().await;
    let path = UploadPath::EveryBatch.prepare(&remote).await;
    let readings = path.profile.readings.as_ref().unwrap();
    let equal: Vec<&str> = readings
        .equal_dedupe_key()
        .map(meter_sync::profile::Ident::as_str)
        .collect();
    assert_eq!(equal, ["meter_id", "timestamp", "unit"]);
    let table = readings.remote_table.quoted();
    let prefix = |indexes: &'static str| {
        let (remote, table, equal) = (&remote, &table, &equal);
        async move {
            remote
                .batch_execute(&format!(
                    "do $$ declare i record; begin
                       for i in select indexrelid::regclass as name from pg_index
                                where indrelid = 'meter_readings'::regclass and not indisprimary loop
                         execute 'drop index ' || i.name;
                       end loop;
                     end $$; {indexes}"
                ))
                .await
                .unwrap();
            remote
                .query_one(meter_sync::data::sql::SELECT_PROBE_INDEX, &[table, equal])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };
    assert_eq!(
        prefix("").await,
        0,
        "the primary key is not on the dedupe key"
    );
    assert_eq!(
        prefix("create index on meter_readings (meter_id, timestamp)").await,
        2
    );
    assert_eq!(
        prefix("create index on meter_readings (timestamp, meter_id, unit)").await,
        3
    );
    assert_eq!(
        prefix("create index on meter_readings (meter_id, value, timestamp)").await,
        1
    );
    assert_eq!(
        prefix("create index on meter_readings using hash (meter_id)").await,
        0
    );
    assert_eq!(
        prefix("create index on meter_readings (meter_id, timestamp, unit) where value > 0").await,
        0
    );
    assert_eq!(
        prefix("create index on meter_readings (meter_id) include (timestamp, unit)").await,
        1
    );
    assert_eq!(
        prefix("create index on meter_readings (lower(meter_id), timestamp)").await,
        0,
        "an expression is no column"
    );

    // spec 004's index and a stage of 10,000 readings: one probe per staged reading into a
    // central that is empty when the insert is planned (the planner would scan the table for
    // every staged reading while another worker fills it), and into one of 50,000 readings the
    // planner has no statistics for (it would read the whole table for a hash anti-join).
    prefix("create index on meter_readings (meter_id, timestamp); analyze meter_readings").await;
    remote
        .batch_execute(&meter_sync::data::sql::create_upload_stage(readings, false))
        .await
        .unwrap();
    // (JIT compiling each batch's insert would cost more than the insert.)
    let probes = |plan: &serde_json::Value| {
        let nodes = plan_nodes(&plan[0]["Plan"]);
        plan[0].get("JIT").is_none()
            && nodes
                .iter()
                .any(|n| n["Node Type"] == "Nested Loop" && n["Join Type"] == "Anti")
            && nodes
                .iter()
                .filter(|n| n["Relation Name"] == "meter_readings")
                .all(|n| {
                    n["Index Name"] == "meter_readings_meter_id_timestamp_idx"
                        || n["Node Type"] == "ModifyTable"
                })
    };
    let plan = anti_join_plan(&remote, readings, meter_sync::data::sql::ANTI_JOIN_PROBES).await;
    assert!(probes(&plan), "into an empty central: {plan}");
    remote
        .batch_execute("alter table meter_readings set (autovacuum_enabled = false)")
        .await
        .unwrap();
    insert_local_readings(&remote, 50_000, 50, 0).await.unwrap();
    let plan = anti_join_plan(&remote, readings, meter_sync::data::sql::ANTI_JOIN_PROBES).await;
    assert!(probes(&plan), "into 50,000 readings: {plan}");
    // Without the index: one pass over the table, never a nested loop.
    remote
        .batch_execute("drop index meter_readings_meter_id_timestamp_idx; truncate meter_readings; analyze meter_readings")
        .await
        .unwrap();
    let plan = anti_join_plan(&remote, readings, meter_sync::data::sql::ANTI_JOIN_SCANS).await;
    let nodes = plan_nodes(&plan[0]["Plan"]);
    assert!(
        nodes.iter().any(|n| n["Join Type"] == "Anti")
            && !nodes.iter().any(|n| n["Node Type"] == "Nested Loop"),
        "without an index, into an empty central: {plan}"
    );
    remote
        .batch_execute("create index on meter_readings (meter_id, timestamp)")
        .await
        .unwrap();
    insert_local_readings(&remote, 50_000, 50, 0).await.unwrap();

    // And so does an upload's: 10,000 readings checked every batch, no sequential scan of the
    // central's readings.
    drop(remote);
    let local = env.local.client().await;
    insert_local_readings(&local, 10_000, 50, 100_000)
        .await
        .unwrap();
    let before = central_scans(&env).await;
    let report = upload(&env, &path.profile).await;
    assert!(report.success() && report.uploaded == 10_000, "{report:#?}");
    let after = central_scans(&env).await;
    assert_eq!(
        after.0, before.0,
        "no sequential scan of the central's readings"
    );
    assert!(
        after.1 >= before.1 + 10_000,
        "one probe per reading: {before:?} -> {after:?}"
    );
}

/// The sequential and index scans of the central's readings table so far, once the agent's
/// connections have ended (a backend reports its counts at the latest when it exits).
async fn central_scans(env: &crate::support::TestEnv) -> (i64, i64) {
    for _ in 0..100 {
        let remote = env.remote.client().await;
        let others: i64 = remote
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if others == 0 {
            let row = remote
                .query_one(
                    "select seq_scan, coalesce(idx_scan, 0) from pg_stat_user_tables where relname = 'meter_readings'",
                    &[],
                )
                .await
                .unwrap();
            return (row.get(0), row.get(1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent's connections to the central did not end");
}

/// The plan of the upload's anti-join insert under `settings`, for a stage of 10,000 readings.
async fn anti_join_plan(
    remote: &tokio_postgres::Client,
    readings: &meter_sync::profile::ReadingsSpec,
    settings: &str,
) -> serde_json::Value {
    let insert = meter_sync::data::sql::insert_new_readings(readings, None, false);
    remote
        .batch_execute(&format!(
            "begin; {settings}; insert into meter_sync_upload_meter_readings (meter_sync_position, meter_id, timestamp, value, unit)
             select i, 'M-' || (i % 50), timestamp '2026-01-01' + i * interval '1 minute', i, 'kWh'
             from generate_series(1, 10000) i"
        ))
        .await
        .unwrap();
    let plan = remote
        .query_one(&format!("explain (format json) {insert}"), &[])
        .await
        .unwrap()
        .get(0);
    remote.batch_execute("rollback").await.unwrap();
    plan
}

/// A plan's nodes, depth first.
fn plan_nodes(node: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut nodes = vec![node];
    for child in node["Plans"].as_array().into_iter().flatten() {
        nodes.extend(plan_nodes(child));
    }
    nodes
}
