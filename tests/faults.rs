//! Cut links and stalls between the service and the remote database, through the TCP fault
//! proxy of `support::proxy`: cuts at random moments of uploads and downloads, refused
//! reconnections, a stalled link ended by `RUN_TIMEOUT_SECONDS`, a server-side stall ended by
//! `DB_STATEMENT_TIMEOUT_MS`. Every test stops by itself. `FAULT_POINTS` sets the number of
//! random cut points (default 8), `FAULT_SEED` repeats a run's random choices.

use std::time::{Duration, Instant};

use meter_sync::data::runlock::{RunKind, Trigger};
use meter_sync::fixture::{insert_local_readings, FixtureSize, Layout};
use meter_sync::profile::Profile;
use meter_sync::service::Service;

use crate::support::proxy::{FaultProxy, Mode};
use crate::support::{
    block_remote_readings, clusters, config_from, count, download, download_with,
    load_remote_fixture, migrate_local, rows_text, run_now, start_ledger_epoch, table_checksum,
    upload, upload_env, upload_with, TestDb, TestEnv, UploadPath, READINGS_MULTISET,
};

/// A small deterministic generator (xorshift64*), seeded from `FAULT_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: FAULT_SEED={seed}");
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn fault_points() -> usize {
    std::env::var("FAULT_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Runs `work` while the proxy cuts every connection once `at` more bytes have passed; if the
/// cut lands (the work was still going), new connections are refused for a moment when
/// `refuse` is set. Returns the work's result and whether the cut landed mid-run.
async fn with_cut<T>(
    proxy: &FaultProxy,
    at: u64,
    refuse: bool,
    work: impl std::future::Future<Output = T>,
) -> (T, bool) {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        done = &mut work => (done, false),
        _ = proxy.cut_after_bytes(at, Duration::from_secs(60)) => {
            let (done, ()) = tokio::join!(work, async {
                if refuse {
                    proxy.set(Mode::Refuse);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    proxy.set(Mode::Pass);
                }
            });
            (done, true)
        }
    }
}

async fn upload_through_cut_links_loses_and_doubles_nothing(label: &str, path: UploadPath) {
    let proxy = FaultProxy::start(clusters().remote.port()).await;
    let port = proxy.port().to_string();
    let points = fault_points();
    let (env, _) = upload_env(
        label,
        &[
            ("POSTGRES_CLIENT_PORT", &port),
            ("BATCH_SIZE", "250"),
            ("MAX_BATCHES_PER_RUN", "8"),
            ("MAX_QUERY_RETRIES", "1"),
            ("MAX_CONNECTION_RETRIES", "1"),
        ],
    )
    .await;
    let remote = env.remote.client().await;
    let profile = path.prepare(&remote).await.profile;
    let local = env.local.client().await;
    if path == UploadPath::Recorded {
        start_ledger_epoch(&env.config, &profile, &local, &remote).await;
    }
    insert_local_readings(&local, points as i64 * 2000 + 700, 9, 0)
        .await
        .unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    let mut rng = Rng::seeded(&format!("upload cuts, {path:?}"));
    let (mut landed, mut failed) = (0, 0);
    for _ in 0..points {
        let at = rng.below(120_000);
        let refuse = rng.below(2) == 0;
        let (report, cut) = with_cut(&proxy, at, refuse, upload(&env, &profile)).await;
        landed += usize::from(cut);
        if let Some(error) = &report.error {
            failed += 1;
            assert!(
                error.contains("remote database"),
                "a cut link is reported as the remote database's failure: {error}"
            );
        }
    }
    eprintln!(
        "upload cuts: {points} runs, {landed} cut mid-run, {failed} ended with an error, {} bytes forwarded",
        proxy.bytes()
    );
    assert!(
        landed > 0,
        "no cut landed during a run; the test proved nothing"
    );
    // Link healthy again: one clean run (no batch limit) sends the rest.
    let clean = config_from(env.env(&[("POSTGRES_CLIENT_PORT", &port)]));
    let report = upload_with(&clean, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0, "queue drained");
    assert_eq!(
        rows_text(&remote, READINGS_MULTISET).await,
        expected,
        "every reading on the remote exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_through_cut_links_with_a_unique_index() {
    upload_through_cut_links_loses_and_doubles_nothing("fault_up_cut_idx", UploadPath::UniqueIndex)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_through_cut_links_with_the_ledger() {
    upload_through_cut_links_loses_and_doubles_nothing("fault_up_cut_ledger", UploadPath::Recorded)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_through_cut_links_with_every_batch_checked() {
    upload_through_cut_links_loses_and_doubles_nothing(
        "fault_up_cut_every",
        UploadPath::EveryBatch,
    )
    .await;
}

/// The checksums of the profile's local tables, in profile order.
async fn entity_checksums(
    client: &tokio_postgres::Client,
    profile: &Profile,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entity in &profile.entities {
        let table = entity.table.to_string();
        let sum = table_checksum(client, &table).await;
        out.push((table, sum));
    }
    out
}

/// Central configuration changes for round `r`: renames, a new meter, a removed association,
/// a changed tenant and register.
async fn change_remote(remote: &tokio_postgres::Client, r: u64) {
    remote
        .batch_execute(&format!(
            "update meter set name = 'Round {r} ' || id, updated_at = now() where tenant_id = 1 and id % 4 = {m};
             insert into meter (id, meter_element_id, tenant_id, device_id, name) values ({id}, 1, 1, {device}, 'Added in round {r}');
             delete from device_register where id in (select id from device_register where register_id % 9 = {m} order by id limit 3);
             update register set name = 'Register r{r} ' || id where tenant_id = 1 and id % 3 = {m3};
             update tenant set name = 'Tenant round {r}' where tenant_id = 1",
            m = r % 4,
            m3 = r % 3,
            id = 90_000 + r,
            device = 190_000 + r,
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_through_cut_links_applies_each_entity_whole_or_not_at_all() {
    let proxy = FaultProxy::start(clusters().remote.port()).await;
    let port = proxy.port().to_string();
    let points = fault_points();
    let env = TestEnv::with_settings(
        "fault_down_cut",
        &[
            ("POSTGRES_CLIENT_PORT", &port),
            ("MAX_CONNECTION_RETRIES", "1"),
        ],
    )
    .await;
    load_remote_fixture(
        &env.remote,
        Layout::Default,
        FixtureSize {
            tenants: 2,
            meters_per_tenant: 600,
            elements_per_meter: 1,
            registers_per_tenant: 60,
            registers_per_device: 3,
        },
    )
    .await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    // A second site database downloading straight from the remote: what a whole download
    // of each round looks like.
    let reference = TestDb::create(&clusters().local, "fault_down_ref").await;
    migrate_local(&reference, &profile).await;
    let direct = config_from(env.env(&[("POSTGRES_SYNC_DB", &reference.name)]));
    let local = env.local.client().await;
    let reference_client = reference.client().await;
    let remote = env.remote.client().await;
    let mut rng = Rng::seeded("download cuts");
    let (mut landed, mut failed) = (0, 0);
    for round in 0..points as u64 {
        if round > 0 {
            change_remote(&remote, round).await;
        }
        let report = download_with(&direct, &profile, Some("1"), &[]).await;
        assert!(report.success(), "{:?}", report.first_error());
        let whole = entity_checksums(&reference_client, &profile).await;
        let before = entity_checksums(&local, &profile).await;
        let at = rng.below(if round == 0 { 200_000 } else { 20_000 });
        let refuse = rng.below(2) == 0;
        let (report, cut) =
            with_cut(&proxy, at, refuse, download(&env, &profile, Some("1"), &[])).await;
        landed += usize::from(cut);
        let after = entity_checksums(&local, &profile).await;
        for ((table, now), ((_, old), (_, new))) in after.iter().zip(before.iter().zip(&whole)) {
            assert!(
                now == old || now == new,
                "round {round}: {table} is neither as before nor as the remote: half applied"
            );
        }
        if report.success() {
            assert_eq!(after, whole, "round {round}: a successful run applied all");
        } else {
            failed += 1;
            let error = report.first_error().unwrap();
            assert!(error.contains("remote database"), "{error}");
        }
    }
    eprintln!(
        "download cuts: {points} runs, {landed} cut mid-run, {failed} ended with an error, {} bytes forwarded",
        proxy.bytes()
    );
    assert!(
        landed > 0,
        "no cut landed during a run; the test proved nothing"
    );
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(
        entity_checksums(&local, &profile).await,
        entity_checksums(&reference_client, &profile).await,
        "the next run after recovery completes"
    );
}

/// Waits until traffic flows (a run is under way), then stalls the link.
async fn stall_once_flowing(proxy: &FaultProxy, after_bytes: u64) {
    let start = proxy.bytes();
    while proxy.bytes() < start + after_bytes {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.set(Mode::Stall);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_ends_the_run_at_run_timeout_and_the_next_run_completes() {
    let proxy = FaultProxy::start(clusters().remote.port()).await;
    let port = proxy.port().to_string();
    let (env, profile) = upload_env(
        "fault_stall",
        &[
            ("POSTGRES_CLIENT_PORT", &port),
            ("RUN_TIMEOUT_SECONDS", "3"),
            ("BATCH_SIZE", "100"),
            ("UPLOAD_WORKERS", "2"),
        ],
    )
    .await;
    let local = env.local.client().await;
    insert_local_readings(&local, 20_000, 9, 0).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    // The service keeps its pools across runs: the stalled connections must not hang the
    // next run either.
    let service = Service::new(env.config.clone(), profile.clone()).unwrap();
    let clock = Instant::now();
    let run = service
        .trigger(RunKind::Upload, Trigger::Api)
        .await
        .unwrap();
    let (result, ()) = tokio::join!(run.wait(), stall_once_flowing(&proxy, 30_000));
    let took = clock.elapsed();
    let result = result.unwrap();
    let report = result.upload.as_ref().unwrap();
    let error = report.error.as_deref().unwrap_or_default();
    assert!(error.contains("RUN_TIMEOUT_SECONDS (3s)"), "{report:#?}");
    assert!(
        took < Duration::from_secs(30),
        "a stalled link hung the run for {took:?}"
    );
    let left = count(&local, "meter_readings").await;
    assert!(left > 0, "the stall came before the queue drained");
    eprintln!("stall: run cut short after {took:?}, {left} readings still queued");
    // The status must not hang on the stalled link either.
    let status = tokio::time::timeout(Duration::from_secs(20), service.sync_status())
        .await
        .expect("status answers while the link is stalled");
    assert!(!status.remote_db_connected);

    proxy.set(Mode::Pass);
    let result = run_now(&service, RunKind::Upload, Trigger::Api).await;
    let report = result.upload.as_ref().unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, expected);
    let _ = service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_during_a_download_changes_nothing_locally() {
    let proxy = FaultProxy::start(clusters().remote.port()).await;
    let port = proxy.port().to_string();
    let env = TestEnv::with_settings(
        "fault_down_stall",
        &[
            ("POSTGRES_CLIENT_PORT", &port),
            ("RUN_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    load_remote_fixture(&env.remote, Layout::Default, FixtureSize::default()).await;
    let profile = Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    let local = env.local.client().await;
    let before = entity_checksums(&local, &profile).await;
    proxy.set(Mode::Stall);
    let clock = Instant::now();
    let report = download(&env, &profile, Some("1"), &[]).await;
    let took = clock.elapsed();
    assert!(!report.success());
    let error = report.first_error().unwrap();
    assert!(
        error.contains("RUN_TIMEOUT_SECONDS") || error.contains("remote database"),
        "{error}"
    );
    assert!(took < Duration::from_secs(30), "hung for {took:?}");
    assert_eq!(entity_checksums(&local, &profile).await, before);
    proxy.set(Mode::Pass);
    let report = download(&env, &profile, Some("1"), &[]).await;
    assert!(report.success(), "{:?}", report.first_error());
    assert_eq!(count(&local, "meter").await, 25);
}

#[tokio::test]
async fn a_statement_stuck_on_the_remote_ends_at_the_statement_timeout() {
    let (env, profile) = upload_env(
        "fault_stmt_timeout",
        &[
            ("DB_STATEMENT_TIMEOUT_MS", "300"),
            ("MAX_QUERY_RETRIES", "1"),
        ],
    )
    .await;
    let local = env.local.client().await;
    insert_local_readings(&local, 500, 5, 0).await.unwrap();
    let expected = rows_text(&local, READINGS_MULTISET).await;
    let blocker = block_remote_readings(&env).await;
    let clock = Instant::now();
    let report = upload(&env, &profile).await;
    let took = clock.elapsed();
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("statement timeout") && error.contains("57014"),
        "{report:#?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(count(&local, "meter_readings").await, 500, "nothing lost");
    blocker.batch_execute("rollback").await.unwrap();
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, expected);
}

#[tokio::test]
async fn a_refused_link_fails_the_run_clearly_and_a_later_run_catches_up() {
    let proxy = FaultProxy::start(clusters().remote.port()).await;
    let port = proxy.port().to_string();
    let (env, profile) = upload_env(
        "fault_refused",
        &[
            ("POSTGRES_CLIENT_PORT", &port),
            ("MAX_CONNECTION_RETRIES", "2"),
        ],
    )
    .await;
    let local = env.local.client().await;
    insert_local_readings(&local, 300, 3, 0).await.unwrap();
    proxy.set(Mode::Refuse);
    let report = upload(&env, &profile).await;
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("remote database") && error.contains(&port),
        "the error names the remote address: {error}"
    );
    assert!(proxy.accepted() >= 3, "connection retried");
    assert_eq!(count(&local, "meter_readings").await, 300);
    proxy.set(Mode::Pass);
    let report = upload(&env, &profile).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.uploaded, 300);
}
