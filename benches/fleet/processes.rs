//! The fleet as separate processes, as sites run it: N `meter-sync once --json` processes
//! started at once, each with its own site database (made from one migrated template) and its
//! own tenant, against the central directly or through a PgBouncer in transaction mode started
//! for that fleet alone (so no pooler connection of another fleet is counted). While they run,
//! the central's client backends are counted from `pg_stat_activity` and every agent's
//! resident set from `/proc/<pid>/status`; afterwards each site is checked: its readings on the
//! central exactly once, its queue empty, its tenant's meters downloaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meter_sync::pgbouncer::{BouncerMode, PgBouncer};
use meter_sync::pgcluster::PgCluster;
use meter_sync::profile::Profile;

use super::support::{connect, create_db};
use super::{central_connections, queue, METERS};

/// What one process fleet measured.
pub struct Figures {
    pub agents: i64,
    /// `Some(default_pool_size)` through the pooler.
    pub pool: Option<u32>,
    /// From the first spawn to the last exit.
    pub wall: Duration,
    /// Each agent's readings / its upload's duration, sorted.
    pub rates: Vec<f64>,
    /// Each agent's whole process, spawn to exit, sorted.
    pub process_times: Vec<Duration>,
    /// The most client backends the central had open at once for database `central`.
    pub peak_connections: i64,
    /// The highest sampled sum of the agents' resident sets, MiB.
    pub rss_sum_mib: f64,
    /// The largest agent's peak resident set (`VmHWM`), MiB.
    pub rss_max_mib: f64,
    /// Readings missing on the central, summed over the sites.
    pub lost: i64,
    /// Readings on the central more than once, summed over the sites.
    pub duplicated: i64,
}

/// The site database every agent of a process fleet starts from: migrated, empty.
const TEMPLATE: &str = "fleet_template";

/// Creates the template database once.
pub async fn create_template(site: &PgCluster, profile: &Profile) {
    create_db(site, TEMPLATE).await;
    let mut client = connect(site, TEMPLATE).await;
    meter_sync::data::schema::migrate(&mut client, profile)
        .await
        .unwrap();
}

/// `VmRSS` and `VmHWM` of a live process, in kB.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One agent process.
struct Agent {
    child: Child,
    started: Instant,
    exited: Option<Duration>,
    hwm_kb: u64,
    stdout: PathBuf,
    stderr: PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    dir: &Path,
    a: i64,
    site: &PgCluster,
    central_port: u16,
    pooled: bool,
    batch: &str,
) -> Agent {
    let stdout = dir.join(format!("agent-{a}.json"));
    let stderr = dir.join(format!("agent-{a}.log"));
    let vars = [
        ("POSTGRES_SYNC_HOST", "127.0.0.1".to_string()),
        ("POSTGRES_SYNC_PORT", site.port().to_string()),
        ("POSTGRES_SYNC_DB", format!("fleet_{a}")),
        ("POSTGRES_SYNC_SSLMODE", "disable".into()),
        ("POSTGRES_CLIENT_HOST", "127.0.0.1".into()),
        ("POSTGRES_CLIENT_PORT", central_port.to_string()),
        ("POSTGRES_CLIENT_DB", "central".into()),
        ("POSTGRES_CLIENT_SSLMODE", "disable".into()),
        (
            "POSTGRES_CLIENT_POOL_MODE",
            if pooled { "transaction" } else { "direct" }.into(),
        ),
        ("TENANT_ID", a.to_string()),
        ("BATCH_SIZE", batch.into()),
        ("MAX_BATCHES_PER_RUN", "100000000".into()),
        ("UPLOAD_WORKERS", "1".into()),
        ("LOG_LEVEL", "warn".into()),
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .args(["once", "--json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Agent {
        child,
        started: Instant::now(),
        exited: None,
        hwm_kb: 0,
        stdout,
        stderr,
    }
}

/// Runs `agents` processes with `per_agent` queued readings each, through a PgBouncer in
/// transaction mode with `default_pool_size` `pool` when given.
pub async fn run(
    site: &PgCluster,
    central: &PgCluster,
    agents: i64,
    per_agent: i64,
    batch: &str,
    pool: Option<u32>,
) -> Figures {
    let admin = connect(site, "postgres").await;
    let central_client = connect(central, "central").await;
    central_client
        .batch_execute("truncate meter_readings")
        .await
        .unwrap();
    for a in 1..=agents {
        for statement in [
            format!("drop database if exists fleet_{a}"),
            format!("create database fleet_{a} template {TEMPLATE}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        queue(site, &format!("fleet_{a}"), &format!("S{a}"), per_agent).await;
    }
    let bouncer = pool.map(|size| {
        PgBouncer::start_with(central.port(), BouncerMode::Transaction, size, 120)
            .unwrap_or_else(|e| panic!("cannot start pgbouncer (apt-get install pgbouncer): {e}"))
    });
    let port = bouncer.as_ref().map_or(central.port(), PgBouncer::port);
    let dir = tempfile::tempdir().unwrap();
    let sampler = connect(central, "postgres").await;
    let own: i32 = central_client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let started = Instant::now();
    let mut fleet: Vec<Agent> = (1..=agents)
        .map(|a| spawn(dir.path(), a, site, port, pool.is_some(), batch))
        .collect();
    let (mut peak_connections, mut rss_sum_kb) = (0i64, 0u64);
    while fleet.iter().any(|agent| agent.exited.is_none()) {
        peak_connections = peak_connections.max(central_connections(&sampler, own).await);
        let mut sum = 0;
        for agent in fleet.iter_mut().filter(|agent| agent.exited.is_none()) {
            if let Some((rss, hwm)) = memory_kb(agent.child.id()) {
                sum += rss;
                agent.hwm_kb = agent.hwm_kb.max(hwm);
            }
            if agent.child.try_wait().unwrap().is_some() {
                agent.exited = Some(agent.started.elapsed());
            }
        }
        rss_sum_kb = rss_sum_kb.max(sum);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    drop(bouncer);

    let mut rates = Vec::new();
    let mut process_times = Vec::new();
    for (a, agent) in (1..=agents).zip(&fleet) {
        let output = std::fs::read_to_string(&agent.stdout).unwrap_or_default();
        let result: serde_json::Value = serde_json::from_str(&output).unwrap_or_else(|_| {
            panic!(
                "agent {a} printed no result; its log:\n{}",
                std::fs::read_to_string(&agent.stderr).unwrap_or_default()
            )
        });
        assert_eq!(
            result["success"],
            true,
            "agent {a} failed: {result:#}\n{}",
            std::fs::read_to_string(&agent.stderr).unwrap_or_default()
        );
        let uploaded = result["upload"]["uploaded"].as_i64().unwrap();
        assert_eq!(uploaded, per_agent, "agent {a} uploaded");
        let took = result["upload"]["duration_ms"].as_u64().unwrap().max(1);
        rates.push(uploaded as f64 / (took as f64 / 1000.0));
        process_times.push(agent.exited.unwrap());
    }
    rates.sort_by(f64::total_cmp);
    process_times.sort();
    let rss_max_kb = fleet.iter().map(|agent| agent.hwm_kb).max().unwrap_or(0);

    let (lost, duplicated) = check_sites(site, &central_client, agents, per_agent).await;
    for a in 1..=agents {
        admin
            .batch_execute(&format!("drop database fleet_{a}"))
            .await
            .unwrap();
    }
    Figures {
        agents,
        pool,
        wall,
        rates,
        process_times,
        peak_connections,
        rss_sum_mib: rss_sum_kb as f64 / 1024.0,
        rss_max_mib: rss_max_kb as f64 / 1024.0,
        lost,
        duplicated,
    }
}

/// Per site: the readings missing from the central and those on it more than once (summed);
/// panics when a site's queue is not empty or its meters did not arrive.
async fn check_sites(
    site: &PgCluster,
    central: &tokio_postgres::Client,
    agents: i64,
    per_agent: i64,
) -> (i64, i64) {
    let counts: HashMap<String, (i64, i64)> = central
        .query(
            "select split_part(meter_id, '-', 1), count(*), count(distinct (meter_id, timestamp, unit))
             from meter_readings group by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let (mut lost, mut duplicated) = (0, 0);
    for a in 1..=agents {
        let (rows, distinct) = counts.get(&format!("S{a}")).copied().unwrap_or((0, 0));
        lost += (per_agent - distinct).max(0);
        duplicated += rows - distinct;
        let client = connect(site, &format!("fleet_{a}")).await;
        let row = client
            .query_one(
                "select (select count(*) from meter_readings), (select count(*) from meter)",
                &[],
            )
            .await
            .unwrap();
        let (left, meters): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (left, meters),
            (0, METERS),
            "fleet_{a}: queue left or meters missing"
        );
    }
    (lost, duplicated)
}
