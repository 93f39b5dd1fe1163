//! Fleet load: one central cluster, site databases (distinct tenants, distinct meters) on one
//! site cluster, and agents running full cycles (upload, then every entity's download) at once.
//!
//! Two parts. **Threads** (`FLEET_AGENTS`, 20): the agents run in this process, each with its
//! own pools, three times per round: every agent with `UPLOAD_WORKERS=1` (the setting for sites
//! sharing a central), with the default `auto`, and with `UPLOAD_WORKERS=1` through a PgBouncer
//! in transaction mode in front of the central (`POSTGRES_CLIENT_POOL_MODE = transaction`);
//! beside them the single agent doing the whole fleet's work alone, in the same round.
//! **Processes** (`FLEET_PROCESSES`, "20,200"): for each N, N `meter-sync once --json`
//! processes direct and then N through a PgBouncer in transaction mode (`default_pool_size`
//! `FLEET_POOL_SIZE`), in the same run. Each fleet prints its aggregate readings/s, per-agent
//! min/median/max, the most central server connections open at once (sampled from
//! `pg_stat_activity`), the agents' peak resident memory, and lost/duplicated readings checked
//! per site on the central.
//!
//! `cargo bench --bench fleet`; FLEET_PARTS ("threads,processes"), FLEET_AGENTS (20),
//! FLEET_READINGS per agent of the threads part (25,000), FLEET_PROCESSES ("20,200"),
//! FLEET_PROCESS_READINGS per agent process (5,000), FLEET_BATCH_SIZE (the service default,
//! 100), FLEET_POOL_SIZE (10), BENCH_REPEAT (3, medians; the threads part).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

#[path = "fleet/processes.rs"]
mod processes;

use std::time::Duration;

use meter_sync::config::PoolMode;
use meter_sync::data::pg::Pools;
use meter_sync::data::runlock::RunKind;
use meter_sync::fixture::{FixtureSize, Layout};
use meter_sync::pgbouncer::{BouncerMode, PgBouncer};
use meter_sync::pgcluster::{ClusterOptions, PgCluster};
use meter_sync::profile::Profile;
use meter_sync::service::cycle::SyncCycleResult;

use support::{
    config, connect, create_db, env_rows, median, peak_rss_mib, rate, reset_peak_rss, secs, timed,
};

/// Meters per tenant in the central fixture (each site downloads its own).
pub(crate) const METERS: i64 = 50;

fn start(label: &str) -> PgCluster {
    PgCluster::start(&ClusterOptions {
        label: format!("bench-fleet-{label}"),
        // Two hundred agent processes, each with its pools.
        settings: vec![("max_connections".into(), "1500".into())],
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("cannot start the {label} cluster: {e}"))
}

/// Queues `rows` readings at site database `db` for meters `{prefix}-M0..19` (no other site
/// shares the meter ids, so no reading deduplicates against another site's).
pub(crate) async fn queue(site: &PgCluster, db: &str, prefix: &str, rows: i64) {
    let client = connect(site, db).await;
    client
        .execute(
            "insert into meter_readings (meter_id, timestamp, value, unit, metadata)
             select $1 || '-M' || (i % 20), timestamp '2026-01-01' + (i / 20) * interval '1 minute',
                    round((random() * 1000)::numeric, 3), 'kWh', jsonb_build_object('seq', i)
             from generate_series(0, $2::bigint - 1) i",
            &[&prefix, &rows],
        )
        .await
        .unwrap();
}

/// One agent's cycle with its own pools, as a separate service process would run it; through
/// the pooler on `pooler` (transaction mode) when given.
#[allow(clippy::too_many_arguments)]
async fn agent(
    site: &PgCluster,
    db: &str,
    central: &PgCluster,
    pooler: Option<u16>,
    tenant: i64,
    batch: &str,
    workers: &str,
    profile: &Profile,
) -> SyncCycleResult {
    let tenant = tenant.to_string();
    let mut config = config(
        site,
        db,
        central,
        "central",
        &[
            ("TENANT_ID", &tenant),
            ("BATCH_SIZE", batch),
            ("MAX_BATCHES_PER_RUN", "100000000"),
            ("UPLOAD_WORKERS", workers),
        ],
    );
    if let Some(port) = pooler {
        config.remote.port = port;
        config.remote.pool_mode = PoolMode::Transaction;
    }
    let pools = Pools::new(&config).unwrap();
    let result = meter_sync::service::cycle::run(
        &pools,
        &config,
        profile,
        &meter_sync::service::cycle::RunRequest::of(RunKind::Cycle),
    )
    .await;
    pools.local.close();
    pools.remote.close();
    result
}

fn uploaded(result: &SyncCycleResult) -> (u64, Duration) {
    let upload = result.upload.as_ref().unwrap();
    assert!(result.success, "{:?}", result.first_error());
    (
        upload.uploaded,
        Duration::from_millis(upload.duration_ms.max(1)),
    )
}

/// Per prefix: readings on the central and distinct dedupe keys among them.
async fn central_counts(central: &PgCluster) -> Vec<(String, i64, i64)> {
    connect(central, "central")
        .await
        .query(
            "select split_part(meter_id, '-', 1), count(*), count(distinct (meter_id, timestamp, unit))
             from meter_readings group by 1 order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Drops and recreates the site databases `sites` (migrated, empty) and empties the central
/// readings table.
async fn fresh_sites(
    site: &PgCluster,
    central: &tokio_postgres::Client,
    sites: std::ops::RangeInclusive<i64>,
    profile: &Profile,
) {
    central
        .batch_execute("truncate meter_readings")
        .await
        .unwrap();
    let admin = connect(site, "postgres").await;
    for a in sites {
        let db = format!("site_{a}");
        admin
            .batch_execute(&format!("drop database if exists {db}"))
            .await
            .unwrap();
        create_db(site, &db).await;
        let mut client = connect(site, &db).await;
        meter_sync::data::schema::migrate(&mut client, profile)
            .await
            .unwrap();
    }
}

/// Nothing lost, nothing doubled: the site's readings are on the central exactly once, its
/// queue is empty and its meters arrived.
async fn check(
    site: &PgCluster,
    counts: &[(String, i64, i64)],
    prefix: &str,
    want: i64,
    sites: std::ops::RangeInclusive<i64>,
) {
    let found = counts
        .iter()
        .find(|(p, _, _)| p == prefix)
        .map(|(_, rows, distinct)| (*rows, *distinct));
    assert_eq!(
        found,
        Some((want, want)),
        "site {prefix}: lost or duplicated readings"
    );
    for a in sites {
        let client = connect(site, &format!("site_{a}")).await;
        let left: i64 = client
            .query_one("select count(*) from meter_readings", &[])
            .await
            .unwrap()
            .get(0);
        let meters: i64 = client
            .query_one("select count(*) from meter", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            (left, meters),
            (0, METERS),
            "site_{a}: queue left or meters missing"
        );
    }
}

/// The client backends on the central's database `central` now, but the asking connection's
/// and the benchmark's own (backend `own`).
pub(crate) async fn central_connections(sampler: &tokio_postgres::Client, own: i32) -> i64 {
    sampler
        .query_one(
            "select count(*) from pg_stat_activity where datname = 'central' and backend_type = 'client backend' and pid <> pg_backend_pid() and pid <> $1",
            &[&own],
        )
        .await
        .unwrap()
        .get(0)
}

/// Samples the central's client backends on database `central` every 20 ms until `done`,
/// returning the most seen at once (the sampler's own connection and the benchmark's, backend
/// `own`, not counted).
async fn peak_server_connections(
    central: &PgCluster,
    own: i32,
    done: &std::sync::atomic::AtomicBool,
) -> i64 {
    let client = connect(central, "postgres").await;
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        peak = peak.max(central_connections(&client, own).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak
}

/// The sorted sample's value at quantile `q`.
fn pick<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The threads part: `agents` agents in this process, the single agent beside them.
async fn threads_part(
    site: &PgCluster,
    central: &PgCluster,
    agents: i64,
    pool_size: u32,
    batch: &str,
    repeat: usize,
    profile: &Profile,
) {
    let per_agent = env_rows("FLEET_READINGS", 25_000).max(1);
    let total = agents * per_agent;
    let central_client = &connect(central, "central").await;
    let own: i32 = central_client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "fleet benchmark, threads: {agents} agents in one process x {per_agent} readings (+ each downloads its tenant: {METERS} meters, 10 registers, {} associations), BATCH_SIZE {batch}, one central and one site cluster and every agent on one {cores}-core machine, fsync off",
        METERS * 3
    );
    // (upload workers, through the pooler)
    let fleets = [("1", false), ("auto", false), ("1", true)];
    let mut single_times = Vec::new();
    let mut fleet_times: Vec<Vec<Duration>> = vec![Vec::new(); fleets.len()];
    let mut details: Vec<(Vec<f64>, Duration, f64, i64)> =
        vec![(Vec::new(), Duration::ZERO, 0.0, 0); fleets.len()];
    for round in 0..repeat {
        // The single agent: the fleet's whole work alone, with the default (peak) workers.
        fresh_sites(site, central_client, 0..=0, profile).await;
        queue(site, "site_0", "B", total).await;
        let (result, took) = timed(agent(
            site,
            "site_0",
            central,
            None,
            agents + 1,
            batch,
            "auto",
            profile,
        ))
        .await;
        let (done, _) = uploaded(&result);
        assert_eq!(done as i64, total);
        single_times.push(took);
        check(site, &central_counts(central).await, "B", total, 0..=0).await;

        for (f, (workers, pooled)) in fleets.iter().enumerate() {
            // A pooler of this fleet's own: its server connections close with it.
            let bouncer = pooled.then(|| {
                PgBouncer::start(central.port(), BouncerMode::Transaction, pool_size)
                    .unwrap_or_else(|e| {
                        panic!("cannot start pgbouncer (apt-get install pgbouncer): {e}")
                    })
            });
            let pooler = bouncer.as_ref().map(PgBouncer::port);
            fresh_sites(site, central_client, 1..=agents, profile).await;
            for a in 1..=agents {
                queue(site, &format!("site_{a}"), &format!("S{a}"), per_agent).await;
            }
            reset_peak_rss();
            let done = std::sync::atomic::AtomicBool::new(false);
            let ((results, took), peak) = tokio::join!(
                async {
                    let run = timed(async {
                        let tasks: Vec<_> = (1..=agents)
                            .map(|a| async move {
                                agent(
                                    site,
                                    &format!("site_{a}"),
                                    central,
                                    pooler,
                                    a,
                                    batch,
                                    workers,
                                    profile,
                                )
                                .await
                            })
                            .collect();
                        futures_util::future::join_all(tasks).await
                    })
                    .await;
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    run
                },
                peak_server_connections(central, own, &done)
            );
            drop(bouncer);
            fleet_times[f].push(took);
            let (rates, slowest, rss, connections) = &mut details[f];
            *connections = (*connections).max(peak);
            *rss = rss.max(peak_rss_mib());
            rates.clear();
            for result in &results {
                let (done, upload_took) = uploaded(result);
                assert_eq!(done as i64, per_agent);
                rates.push(done as f64 / upload_took.as_secs_f64());
                let download = result.download.as_ref().unwrap();
                *slowest = (*slowest).max(Duration::from_millis(download.duration_ms));
            }
            let counts = central_counts(central).await;
            for a in 1..=agents {
                check(site, &counts, &format!("S{a}"), per_agent, a..=a).await;
            }
        }
        eprintln!("threads: round {} of {repeat} done", round + 1);
    }
    let single = median(single_times);
    let single_rate = total as f64 / single.as_secs_f64();
    println!("single agent (UPLOAD_WORKERS auto), {total} readings + download: {} ({}), median of {repeat}", secs(single), rate(total, single));
    let mut direct_rate = None;
    for (f, (workers, pooled)) in fleets.iter().enumerate() {
        let fleet = median(std::mem::take(&mut fleet_times[f]));
        let fleet_rate = total as f64 / fleet.as_secs_f64();
        let (rates, slowest, rss, connections) = &mut details[f];
        rates.sort_by(f64::total_cmp);
        let route = if *pooled {
            format!("through PgBouncer, transaction mode, default_pool_size {pool_size}")
        } else {
            "direct".to_string()
        };
        println!(
            "fleet of {agents} agents (UPLOAD_WORKERS {workers}, {route}), {per_agent} readings each + download: {} ({} aggregate), {:.2}x the single agent [goal >= 0.7x], median of {repeat}",
            secs(fleet),
            rate(total, fleet),
            fleet_rate / single_rate
        );
        println!(
            "  per-agent upload rows/s (last round): min {:.0}, median {:.0}, max {:.0}; slowest download {}; peak RSS of the {agents} agents {rss:.1} MiB; most central server connections at once {connections}",
            pick(rates, 0.0),
            pick(rates, 0.5),
            pick(rates, 1.0),
            secs(*slowest)
        );
        match (pooled, direct_rate) {
            (false, None) if *workers == "1" => direct_rate = Some(fleet_rate),
            (true, Some(direct)) => println!(
                "  through the pooler: {:.2}x the direct fleet with the same workers [goal >= 0.7x], {connections} server connections [goal <= {pool_size}]",
                fleet_rate / direct
            ),
            _ => {}
        }
    }
    println!("lost 0, duplicated 0 (checked per site on the central after every run); every local queue empty, every site has its {METERS} meters");
}

/// Prints one process fleet's figures.
fn print_processes(f: &processes::Figures, per_agent: i64) {
    let total = f.agents * per_agent;
    let route = match f.pool {
        Some(size) => format!("through PgBouncer, transaction mode, default_pool_size {size}"),
        None => "direct".into(),
    };
    println!(
        "{} agent processes ({route}), {per_agent} readings each + download: {} ({} aggregate)",
        f.agents,
        secs(f.wall),
        rate(total, f.wall)
    );
    println!(
        "  per-agent upload rows/s: min {:.0}, median {:.0}, max {:.0}; per-agent process spawn to exit: min {}, median {}, max {}",
        pick(&f.rates, 0.0),
        pick(&f.rates, 0.5),
        pick(&f.rates, 1.0),
        secs(pick(&f.process_times, 0.0)),
        secs(pick(&f.process_times, 0.5)),
        secs(pick(&f.process_times, 1.0)),
    );
    println!(
        "  most central server connections at once {}{}; agents' resident memory: {:.0} MiB all together at the peak (sampled every 50 ms), {:.1} MiB the largest agent; lost {}, duplicated {} (checked per site)",
        f.peak_connections,
        f.pool.map_or(String::new(), |size| format!(" [goal <= {size}]")),
        f.rss_sum_mib,
        f.rss_max_mib,
        f.lost,
        f.duplicated,
    );
}

/// The processes part: for each N, N agent processes direct, then through the pooler.
async fn processes_part(
    site: &PgCluster,
    central: &PgCluster,
    sizes: &[i64],
    pool_size: u32,
    batch: &str,
    profile: &Profile,
) {
    let per_agent = env_rows("FLEET_PROCESS_READINGS", 5_000).max(1);
    println!(
        "fleet benchmark, processes: N `meter-sync once` processes at once, {per_agent} readings each (+ each downloads its tenant), UPLOAD_WORKERS 1, BATCH_SIZE {batch}, on the same machine and clusters"
    );
    processes::create_template(site, profile).await;
    let mut failures = 0;
    for &n in sizes {
        let direct = processes::run(site, central, n, per_agent, batch, None).await;
        print_processes(&direct, per_agent);
        let pooled = processes::run(site, central, n, per_agent, batch, Some(pool_size)).await;
        print_processes(&pooled, per_agent);
        let ratio = direct.wall.as_secs_f64() / pooled.wall.as_secs_f64();
        println!(
            "  N = {n}: through the pooler {ratio:.2}x the direct fleet's aggregate [goal >= 0.7x], {} server connections against {} direct",
            pooled.peak_connections, direct.peak_connections
        );
        failures += direct.lost + direct.duplicated + pooled.lost + pooled.duplicated;
    }
    assert_eq!(
        failures, 0,
        "readings lost or duplicated (see the figures above)"
    );
}

fn main() {
    let parts = std::env::var("FLEET_PARTS").unwrap_or_else(|_| "threads,processes".into());
    let (threads, processes) = (parts.contains("threads"), parts.contains("processes"));
    let agents = env_rows("FLEET_AGENTS", 20).max(1);
    let sizes: Vec<i64> = std::env::var("FLEET_PROCESSES")
        .unwrap_or_else(|_| "20,200".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse::<i64>()
                .expect("FLEET_PROCESSES: agent counts separated by commas")
                .max(1)
        })
        .collect();
    let pool_size = env_rows("FLEET_POOL_SIZE", 10).max(1) as u32;
    let batch = env_rows("FLEET_BATCH_SIZE", 100).to_string();
    let repeat = env_rows("BENCH_REPEAT", 3).max(1) as usize;
    let (site, central) = std::thread::scope(|s| {
        let site = s.spawn(|| start("sites"));
        let central = s.spawn(|| start("central"));
        (site.join().unwrap(), central.join().unwrap())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        create_db(&central, "central").await;
        let central_client = connect(&central, "central").await;
        // Tenants 1..=N are the fleets', agents + 1 the single agent's.
        let tenants = (agents + 1).max(sizes.iter().copied().max().unwrap_or(0));
        let size = FixtureSize {
            tenants,
            meters_per_tenant: METERS,
            elements_per_meter: 1,
            registers_per_tenant: 10,
            registers_per_device: 3,
        };
        meter_sync::fixture::load_remote(&central_client, Layout::Default, size)
            .await
            .unwrap();
        // Closed before the fleets run: their samples count every other connection.
        drop(central_client);
        let profile = Profile::builtin_default().unwrap();
        if threads {
            threads_part(&site, &central, agents, pool_size, &batch, repeat, &profile).await;
        }
        if processes {
            processes_part(&site, &central, &sizes, pool_size, &batch, &profile).await;
        }
    });
}
