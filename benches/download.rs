//! Download benchmark: `cargo bench --bench download`.
//!
//! Starts its own clusters, fills a remote `meter` table with `BENCH_ROWS` rows (default
//! 1,000,000) for the site's tenant (plus as many for another tenant), and prints: the raw
//! `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe time between the same clusters, the cold
//! mirror, a no-change resync and a 1%-changed resync, with rows/s and ratios, the bytes each
//! moves between the agent and the central in both directions (counted by a TCP proxy between
//! them, which the raw pipe goes through too), and the peak RSS of this process at 100,000
//! rows and at `BENCH_ROWS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::Duration;

use meter_sync::data::pg::{Backoff, Pools};
use meter_sync::engine::download::{self, DownloadRequest};
use meter_sync::fixture::{self, FixtureSize, Layout};
use meter_sync::pgcluster::PgCluster;
use meter_sync::profile::{Profile, TenantId};
use support::*;

const METER_COLUMNS: &str = "id, meter_element_id, device_id, name, type, serial_number, installation_date, location_id, ip, port, protocol, status, register_map, element, notes, active, created_at, updated_at";

struct Sites<'a> {
    local: &'a PgCluster,
    remote: &'a PgCluster,
    profile: Profile,
}

/// One remote and one local database holding `rows` meters for tenant 1 (and as many for 2);
/// the agent reaches the remote on `remote_port` (the cluster's, or a proxy's in front of it).
async fn prepare(sites: &Sites<'_>, name: &str, rows: i64, remote_port: Option<u16>) -> Pools {
    create_db(sites.remote, name).await;
    create_db(sites.local, name).await;
    let remote = connect(sites.remote, name).await;
    let size = FixtureSize {
        tenants: 2,
        meters_per_tenant: rows,
        elements_per_meter: 1,
        registers_per_tenant: 10,
        registers_per_device: 0,
    };
    fixture::load_remote(&remote, Layout::Default, size)
        .await
        .unwrap();
    remote.batch_execute("vacuum analyze").await.unwrap();
    let mut local = connect(sites.local, name).await;
    meter_sync::data::schema::migrate(&mut local, &sites.profile)
        .await
        .unwrap();
    let mut config = config(sites.local, name, sites.remote, name, &[]);
    if let Some(port) = remote_port {
        config.remote.port = port;
    }
    Pools::new(&config).unwrap()
}

async fn mirror(pools: &Pools, profile: &Profile) -> (download::DownloadReport, Duration) {
    let tenant = TenantId::parse("1").unwrap();
    let only = ["tenant".to_string(), "meter".to_string()];
    let (report, took) = timed(download::run(
        pools,
        DownloadRequest {
            profile,
            tenant: Some(&tenant),
            only: &only,
            backoff: Backoff {
                max_retries: 0,
                base: Duration::ZERO,
            },
            full: false,
            guard: meter_sync::config::DeleteGuard {
                max_fraction: 1.0,
                allowed: true,
            },
            deadline: None,
        },
    ))
    .await;
    assert!(report.success(), "{:?}", report.first_error());
    (report, took)
}

/// The baseline: the same rows piped with COPY into an unindexed table of the same columns.
async fn raw_pipe(sites: &Sites<'_>, name: &str, remote_port: u16) -> (u64, Duration) {
    let (remote, connection) = sites
        .remote
        .connect_config_via(name, remote_port)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let local = connect(sites.local, name).await;
    local
        .batch_execute(&format!(
            "drop table if exists pipe_target; create table pipe_target as select {METER_COLUMNS} from meter with no data"
        ))
        .await
        .unwrap();
    copy_pipe(
        &remote,
        &format!("copy (select {METER_COLUMNS} from meter where tenant_id = '1') to stdout (format binary)"),
        &local,
        &format!("copy pipe_target ({METER_COLUMNS}) from stdin (format binary)"),
    )
    .await
}

/// Empties the local mirror so the next download is a cold one.
async fn empty_local(sites: &Sites<'_>, name: &str) {
    let client = connect(sites.local, name).await;
    client
        .batch_execute("truncate meter, tenant, sync_logs")
        .await
        .unwrap();
    client.batch_execute("vacuum analyze meter").await.unwrap();
}

fn main() {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rows = env_rows("BENCH_ROWS", 1_000_000);
    let small = env_rows("BENCH_SMALL_ROWS", 100_000).min(rows);
    let repeat = env_rows("BENCH_REPEAT", 3).max(1) as usize;
    let (local, remote) = clusters();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sites = Sites {
            local: &local,
            remote: &remote,
            profile: Profile::builtin_default().unwrap(),
        };
        let version: String = connect(&local, "postgres").await.query_one("show server_version", &[]).await.unwrap().get(0);
        println!("download benchmark: meter table, {rows} rows for the site's tenant (+{rows} for another tenant), PostgreSQL {version}, fsync off, both clusters and the agent on one 2-core machine; median of {repeat} runs each");

        // Peak RSS at the small size (the counter is reset before each measured phase).
        let pools = prepare(&sites, "small", small, None).await;
        reset_peak_rss();
        let (report, took) = mirror(&pools, &sites.profile).await;
        let rss_small = peak_rss_mib();
        println!("cold mirror at {small} rows: {} ({}), peak RSS {rss_small:.1} MiB", secs(took), rate(report.entity("meter").unwrap().inserted as i64, took));

        // Everything between the agent (or the pipe) and the central passes the byte counter.
        let counter = ByteCounter::start(remote.port()).await;
        let pools = prepare(&sites, "large", rows, Some(counter.port())).await;
        let mut pipes = Vec::new();
        let mut pipe_bytes = (0, 0);
        for _ in 0..repeat {
            let before = counter.bytes();
            let (piped, took) = raw_pipe(&sites, "large", counter.port()).await;
            pipe_bytes = delta(before, counter.bytes());
            assert_eq!(piped as i64, rows);
            pipes.push(took);
        }
        let pipe_time = median(pipes);
        println!("raw pipe (COPY TO STDOUT | COPY FROM STDIN, binary, into an unindexed table): {} ({}), {}", secs(pipe_time), rate(rows, pipe_time), wire(pipe_bytes, None));

        let mut colds = Vec::new();
        let mut rss_large: f64 = 0.0;
        let mut cold_bytes = (0, 0);
        for _ in 0..repeat {
            empty_local(&sites, "large").await;
            reset_peak_rss();
            let before = counter.bytes();
            let (report, took) = mirror(&pools, &sites.profile).await;
            cold_bytes = delta(before, counter.bytes());
            rss_large = rss_large.max(peak_rss_mib());
            let meter = report.entity("meter").unwrap();
            assert_eq!((meter.strategy, meter.inserted as i64), (download::Strategy::Cold, rows));
            colds.push(took);
        }
        let cold = median(colds);
        println!(
            "cold mirror: {} ({}), {:.2}x the raw pipe [target <= 1.5x], peak RSS {rss_large:.1} MiB, {}",
            secs(cold),
            rate(rows, cold),
            cold.as_secs_f64() / pipe_time.as_secs_f64(),
            wire(cold_bytes, None)
        );

        let mut sames = Vec::new();
        let mut same_bytes = (0, 0);
        for _ in 0..repeat {
            let before = counter.bytes();
            let (report, took) = mirror(&pools, &sites.profile).await;
            same_bytes = delta(before, counter.bytes());
            let meter = report.entity("meter").unwrap();
            assert_eq!((meter.strategy, meter.fetched, meter.inserted, meter.updated, meter.deleted), (download::Strategy::Incremental, 0, 0, 0, 0));
            sames.push(took);
        }
        let same = median(sames);
        println!(
            "no-change resync: {} ({}), {:.2}x the cold mirror [goal <= 0.15x], {} [goal <= 1%]",
            secs(same),
            rate(rows, same),
            same.as_secs_f64() / cold.as_secs_f64(),
            wire(same_bytes, Some(cold_bytes))
        );

        let remote_client = connect(&remote, "large").await;
        let mut ones = Vec::new();
        let mut changed = 0;
        let mut one_bytes = (0, 0);
        for r in 0..repeat {
            changed = remote_client
                .execute(
                    "update meter set name = name || ' (renamed)', updated_at = updated_at + interval '1 day' where tenant_id = 1 and id % 100 = $1",
                    &[&(r as i64)],
                )
                .await
                .unwrap();
            let before = counter.bytes();
            let (report, took) = mirror(&pools, &sites.profile).await;
            one_bytes = delta(before, counter.bytes());
            let meter = report.entity("meter").unwrap();
            assert_eq!((meter.strategy, meter.updated), (download::Strategy::Incremental, changed));
            ones.push(took);
        }
        let one_pct = median(ones);
        println!(
            "1%-changed resync ({changed} rows updated): {} ({}), {:.2}x the cold mirror [goal <= 0.3x], {} [goal <= 3%]",
            secs(one_pct),
            rate(rows, one_pct),
            one_pct.as_secs_f64() / cold.as_secs_f64(),
            wire(one_bytes, Some(cold_bytes))
        );

        // Once after an upgrade (no state kept yet) or when the state cannot be trusted, every
        // row's content is compared: the cost the incremental runs avoid.
        let local_client = connect(&local, "large").await;
        local_client.batch_execute("delete from meter_sync_download_state").await.unwrap();
        let before = counter.bytes();
        let (report, took) = mirror(&pools, &sites.profile).await;
        let content_bytes = delta(before, counter.bytes());
        let meter = report.entity("meter").unwrap();
        assert_eq!((meter.strategy, meter.updated), (download::Strategy::Diff, 0));
        println!(
            "no-change resync without a kept state (every row's content compared, once): {}, {:.2}x the cold mirror, {}",
            secs(took),
            took.as_secs_f64() / cold.as_secs_f64(),
            wire(content_bytes, Some(cold_bytes))
        );
        println!(
            "peak RSS: {rss_small:.1} MiB at {small} rows, {rss_large:.1} MiB at {rows} rows ({:+.0}%) [target <= 64 MiB, within 20%]",
            (rss_large / rss_small - 1.0) * 100.0
        );
    });
}

/// Bytes moved since `before`: (down, up).
fn delta(before: (u64, u64), after: (u64, u64)) -> (u64, u64) {
    (after.0 - before.0, after.1 - before.1)
}

/// `12.3 MB down, 0.1 MB up` (the last run's), with the share of the cold mirror's total.
fn wire((down, up): (u64, u64), cold: Option<(u64, u64)>) -> String {
    let amount = |b: u64| match b {
        0..=999_999 => format!("{:.1} kB", b as f64 / 1_000.0),
        _ => format!("{:.2} MB", b as f64 / 1_000_000.0),
    };
    let share = cold.map_or(String::new(), |(cd, cu)| {
        format!(
            ", {:.3}% of the cold mirror's bytes",
            (down + up) as f64 * 100.0 / (cd + cu) as f64
        )
    });
    format!(
        "on the wire {} down, {} up{share}",
        amount(down),
        amount(up)
    )
}
