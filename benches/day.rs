//! A site's day, in compressed time: 500 meters (the default profile), one reading per meter per
//! minute uploaded every minute, and a meter sync every hour with 0.1% of the configuration
//! rows changed on the central since the last one. Prints the bytes up and down between agent
//! and central (a byte-counting TCP proxy between them), the agent's CPU seconds, and the
//! day's minimal payload: the binary COPY size of its readings and of the changed rows.
//!
//! `DAY_MINUTES` (default 1440, a day) shortens the run; the figures are then extrapolated to a
//! day and labelled so. The agent runs on a thread of its own (its own runtime, its pools kept
//! between runs as the service keeps them), so its CPU time is that thread's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use meter_sync::data::pg::Pools;
use meter_sync::fixture::{self, insert_local_readings, FixtureSize, Layout};
use meter_sync::profile::Profile;
use support::*;

const METERS: i64 = 500;
const DAY: i64 = 24 * 60;

/// One job for the agent thread.
enum Job {
    Download,
    Upload,
}

/// What a job cost the agent and did.
struct Done {
    cpu: f64,
    rows: u64,
}

/// This thread's CPU time (user + system), seconds, from `/proc/thread-self/stat`.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), in USER_HZ (100 per second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The agent: a thread with its own runtime and pools, running jobs as the service would.
fn agent(
    config: meter_sync::config::Config,
    profile: Profile,
) -> (mpsc::Sender<Job>, mpsc::Receiver<Done>) {
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pools = Pools::new(&config).unwrap();
        let readings = profile.readings.as_ref().unwrap();
        let only: Vec<String> = Vec::new();
        while let Ok(job) = job_rx.recv() {
            let before = thread_cpu();
            let rows = rt.block_on(async {
                match job {
                    Job::Download => {
                        let request = meter_sync::service::cycle::download_request(
                            &config, &profile, &only, false,
                        );
                        let report = meter_sync::service::cycle::download(&pools, request).await;
                        assert!(report.success(), "{:?}", report.first_error());
                        report
                            .entities
                            .iter()
                            .map(|e| e.inserted + e.updated + e.deleted)
                            .sum()
                    }
                    Job::Upload => {
                        let request =
                            meter_sync::service::cycle::upload_request(&config, &profile, readings);
                        let report = meter_sync::service::cycle::upload(&pools, request).await;
                        assert!(report.success(), "{:?}", report.error);
                        report.uploaded
                    }
                }
            });
            done_tx
                .send(Done {
                    cpu: thread_cpu() - before,
                    rows,
                })
                .unwrap();
        }
    });
    (jobs, done)
}

/// Bytes and CPU of one kind of job over the day.
#[derive(Default)]
struct Tally {
    runs: u64,
    rows: u64,
    down: u64,
    up: u64,
    cpu: f64,
    wall: Duration,
}

fn main() {
    let minutes = env_rows("DAY_MINUTES", DAY).clamp(60, DAY);
    let (local, remote) = clusters();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        create_db(&remote, "day").await;
        create_db(&local, "day").await;
        let central = connect(&remote, "day").await;
        let size = FixtureSize {
            tenants: 2,
            meters_per_tenant: METERS,
            elements_per_meter: 1,
            registers_per_tenant: 50,
            registers_per_device: 3,
        };
        fixture::load_remote(&central, Layout::Default, size).await.unwrap();
        central.batch_execute("vacuum analyze").await.unwrap();
        let profile = Profile::builtin_default().unwrap();
        let mut site = connect(&local, "day").await;
        meter_sync::data::schema::migrate(&mut site, &profile).await.unwrap();
        let configuration_rows: i64 = central
            .query_one(
                "select (select count(*) from meter where tenant_id = 1) + (select count(*) from register where tenant_id = 1)
                      + (select count(*) from device_register dr join register r on r.id = dr.register_id where r.tenant_id = 1)
                      + (select count(*) from tenant where tenant_id = 1)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // 0.1% of the configuration rows change each hour (at least one).
        let per_hour = ((configuration_rows as f64) * 0.001).round().max(1.0) as i64;

        let counter = ByteCounter::start(remote.port()).await;
        let mut config = config(&local, "day", &remote, "day", &[("TENANT_ID", "1")]);
        config.remote.port = counter.port();
        let (jobs, done) = agent(config, profile);
        let run = |job: Job, tally: &mut Tally| {
            let before = counter.bytes();
            let clock = Instant::now();
            jobs.send(job).unwrap();
            let result = done.recv().unwrap();
            let after = counter.bytes();
            tally.runs += 1;
            tally.rows += result.rows;
            tally.down += after.0 - before.0;
            tally.up += after.1 - before.1;
            tally.cpu += result.cpu;
            tally.wall += clock.elapsed();
        };

        let mut first = Tally::default();
        run(Job::Download, &mut first);
        println!(
            "site's day benchmark: {METERS} meters, {configuration_rows} configuration rows for the site's tenant (default profile), {per_hour} changed on the central per hour, one reading per meter per minute uploaded every minute; PostgreSQL, fsync off, both clusters and the agent on one 2-core machine"
        );
        println!(
            "first mirror (before the day): {:.2} MB down, {:.2} MB up, agent CPU {:.2} s",
            mb(first.down),
            mb(first.up),
            first.cpu
        );

        let (mut uploads, mut downloads) = (Tally::default(), Tally::default());
        let mut changed_keys: Vec<(i64, i64)> = Vec::new();
        let clock = Instant::now();
        for minute in 0..minutes {
            insert_local_readings(&site, METERS, METERS, minute).await.unwrap();
            if minute % 60 == 59 {
                let hour = minute / 60;
                for k in 0..per_hour {
                    // Meters and registers in turn, a different row each time.
                    let n = hour * per_hour + k;
                    if n % 2 == 0 {
                        let id = 1 + (n * 37) % METERS;
                        central
                            .execute("update meter set notes = 'changed in hour ' || $1::bigint::text, updated_at = now() where id = $2", &[&hour, &id])
                            .await
                            .unwrap();
                        changed_keys.push((0, id));
                    } else {
                        let id = 1 + (n * 7) % 50;
                        central
                            .execute("update register set unit = 'unit ' || $1::bigint::text where id = $2", &[&hour, &id])
                            .await
                            .unwrap();
                        changed_keys.push((1, id));
                    }
                }
                run(Job::Download, &mut downloads);
            }
            run(Job::Upload, &mut uploads);
        }
        let took = clock.elapsed();

        // Everything arrived once.
        let (arrived, distinct): (i64, i64) = central
            .query_one("select count(*), count(distinct (meter_id, timestamp)) from meter_readings", &[])
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!((arrived, distinct), (minutes * METERS, minutes * METERS), "every reading arrives exactly once");
        assert_eq!(uploads.rows as i64, minutes * METERS);
        // The minimal payload: the day's readings and changed rows as binary COPY.
        let readings_bytes = copy_size(&central, "copy (select meter_id, timestamp, value, unit, metadata from meter_readings) to stdout (format binary)").await;
        let meter_ids: Vec<i64> = changed_keys.iter().filter(|(t, _)| *t == 0).map(|(_, id)| *id).collect();
        let register_ids: Vec<i64> = changed_keys.iter().filter(|(t, _)| *t == 1).map(|(_, id)| *id).collect();
        let changed_bytes = copy_size(&central, &format!("copy (select * from meter where id = any('{{{}}}'::bigint[])) to stdout (format binary)", join(&meter_ids))).await
            + copy_size(&central, &format!("copy (select * from register where id = any('{{{}}}'::bigint[])) to stdout (format binary)", join(&register_ids))).await;

        let scale = DAY as f64 / minutes as f64;
        let label = if minutes == DAY {
            "a day".to_string()
        } else {
            format!("a day, extrapolated from {minutes} minutes (x{scale:.1})")
        };
        println!("simulated {minutes} minutes in {} ({} uploads, {} meter syncs)", secs(took), uploads.runs, downloads.runs);
        let line = |what: &str, t: &Tally| {
            println!(
                "  {what}: {:.2} MB up, {:.2} MB down, agent CPU {:.2} s ({:.1} ms per run), {:.0} ms wall per run",
                mb(t.up) * scale,
                mb(t.down) * scale,
                t.cpu * scale,
                t.cpu * 1000.0 / t.runs.max(1) as f64,
                t.wall.as_secs_f64() * 1000.0 / t.runs.max(1) as f64
            )
        };
        println!("{label}:");
        line("uploads (every minute)", &uploads);
        line("meter syncs (every hour)", &downloads);
        let up = (uploads.up + downloads.up) as f64 * scale;
        let down = (uploads.down + downloads.down) as f64 * scale;
        println!(
            "  the day on the wire: {:.2} MB up, {:.2} MB down; agent CPU {:.2} s",
            up / 1e6,
            down / 1e6,
            (uploads.cpu + downloads.cpu) * scale
        );
        println!(
            "  minimal payload: readings {:.2} MB (binary COPY of the day's {} readings): sent {:.2}x that up; changed configuration rows {:.3} MB ({} rows): received {:.1}x that down",
            readings_bytes as f64 * scale / 1e6,
            (minutes * METERS) as f64 * scale,
            up / (readings_bytes as f64 * scale),
            changed_bytes as f64 * scale / 1e6,
            (changed_keys.len() as f64 * scale) as i64,
            downloads.down as f64 / changed_bytes.max(1) as f64,
        );
    });
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn join(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// The size of a `COPY ... TO STDOUT`.
async fn copy_size(client: &tokio_postgres::Client, copy: &str) -> u64 {
    use futures_util::StreamExt;
    let stream = client.copy_out(copy).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut size = 0;
    while let Some(chunk) = stream.next().await {
        size += chunk.unwrap().len() as u64;
    }
    size
}
