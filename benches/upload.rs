//! Upload benchmark: `cargo bench --bench upload`.
//!
//! Starts its own clusters and, for each way the readings reach the central (`BENCH_PATHS`,
//! default `unique,ledger,uuid`: `unique`, a unique index on the dedupe key; `ledger`, no
//! unique index (spec 004's own remote schema) with the upload ledger; `uuid`, readings keyed
//! by a uuid minted at the site and unique on the central; and on request `every_batch`, no
//! unique index and every batch compared, the behaviour before the ledger), queues `BENCH_ROWS` readings (default 1,000,000) locally and prints the drain time
//! and rows/s at BATCH_SIZE 10,000 and 100, the peak RSS of this process, and the central's CPU
//! seconds per million readings (its server processes' user + system time from `/proc`),
//! beside the baselines measured between the same clusters into the same table in the same
//! run: the raw binary `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe, and (`unique` only)
//! per-row `INSERT`s in 100-row transactions (the original system's approach;
//! `BENCH_BASELINE_ROWS`, default 20,000 rows). Every figure is the median of `BENCH_REPEAT`
//! (default 3) interleaved rounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::Duration;

use meter_sync::data::pg::Pools;
use meter_sync::fixture::{insert_local_readings, Layout};
use meter_sync::pgcluster::PgCluster;
use meter_sync::profile::Profile;
use support::*;

const COLUMNS: &str = "meter_id, timestamp, value, unit, metadata, created_at";

/// One way the readings reach the central: its site and central databases and profile.
struct Path {
    key: &'static str,
    what: &'static str,
    site: &'static str,
    central: &'static str,
    /// Run on the central after the default layout's schema.
    central_ddl: &'static str,
    profile: Profile,
    /// The uploaded columns (the raw pipe's).
    columns: &'static str,
}

/// The default profile with `from` replaced by `to` in its text, each pair in turn.
fn profile_with(edits: &[(&str, &str)]) -> Profile {
    let mut text = meter_sync::profile::DEFAULT_PROFILE_TOML.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "the default profile has no {from}");
        text = text.replacen(from, to, 1);
    }
    Profile::parse(&text, "benchmark profile").unwrap()
}

const NO_UNIQUE_INDEX: &str =
    "drop index meter_readings_dedupe_idx; create index on meter_readings (meter_id, timestamp)";

fn paths() -> Vec<Path> {
    let wanted = std::env::var("BENCH_PATHS").unwrap_or_else(|_| "unique,ledger,uuid".into());
    let all = vec![
        Path { key: "unique", what: "a unique index on the dedupe key (the default layout)", site: "site_unique", central: "central_unique", central_ddl: "", profile: Profile::builtin_default().unwrap(), columns: COLUMNS },
        Path { key: "ledger", what: "no unique index (spec 004's remote: a plain index on (meter_id, timestamp)), the upload ledger (resend_check uncertain, the default)", site: "site_ledger", central: "central_ledger", central_ddl: NO_UNIQUE_INDEX, profile: Profile::builtin_default().unwrap(), columns: COLUMNS },
        Path { key: "every_batch", what: "no unique index, every batch through the stage and the anti-join (resend_check every_batch)", site: "site_every", central: "central_every", central_ddl: NO_UNIQUE_INDEX, profile: profile_with(&[("after_upload = \"delete\"\n", "after_upload = \"delete\"\nresend_check = \"every_batch\"\n")]), columns: COLUMNS },
        Path {
            key: "uuid",
            what: "readings keyed by a uuid minted at the site, uploaded and unique on the central",
            site: "site_uuid",
            central: "central_uuid",
            central_ddl: "drop index meter_readings_dedupe_idx; alter table meter_readings add column uid uuid not null; create unique index on meter_readings (uid); create index on meter_readings (meter_id, timestamp)",
            profile: profile_with(&[
                ("id_column = \"id\"", "id_column = \"uid\""),
                ("order_by = [\"timestamp\", \"id\"]", "order_by = [\"timestamp\", \"uid\"]"),
                ("dedupe_key = [\"meter_id\", \"timestamp\", \"unit\"]", "dedupe_key = [\"uid\"]"),
                ("columns = [\n    { name = \"meter_id\"", "columns = [\n    { name = \"uid\", type = \"uuid\", nullable = false, default = \"gen_random_uuid()\" },\n    { name = \"meter_id\""),
            ]),
            columns: "uid, meter_id, timestamp, value, unit, metadata, created_at",
        },
    ];
    all.into_iter()
        .filter(|p| wanted.split(',').any(|w| w.trim() == p.key))
        .collect()
}

async fn refill(local: &PgCluster, db: &str, rows: i64) {
    let client = connect(local, db).await;
    client
        .batch_execute("truncate meter_readings, sync_logs")
        .await
        .unwrap();
    insert_local_readings(&client, rows, 1000, 0).await.unwrap();
    client
        .batch_execute("vacuum analyze meter_readings")
        .await
        .unwrap();
}

async fn empty_remote(remote: &PgCluster, db: &str) {
    let client = connect(remote, db).await;
    client
        .batch_execute("truncate meter_readings")
        .await
        .unwrap();
    client
        .batch_execute("vacuum analyze meter_readings")
        .await
        .unwrap();
}

/// The raw pipe: every queued reading copied into the remote readings table.
async fn raw_pipe(local: &PgCluster, remote: &PgCluster, path: &Path) -> (u64, Duration) {
    let l = connect(local, path.site).await;
    let r = connect(remote, path.central).await;
    copy_pipe(
        &l,
        &format!(
            "copy (select {} from meter_readings) to stdout (format binary)",
            path.columns
        ),
        &r,
        &format!(
            "copy meter_readings ({}) from stdin (format binary)",
            path.columns
        ),
    )
    .await
}

/// The original system's way: read 100 readings, INSERT them one by one in one remote
/// transaction, commit, delete them locally.
async fn per_row(local: &PgCluster, remote: &PgCluster, path: &Path) -> (u64, Duration) {
    let l = connect(local, path.site).await;
    let mut r = connect(remote, path.central).await;
    let insert = r
        .prepare(&format!(
            "insert into meter_readings ({COLUMNS}) values ($1, $2, $3::text::numeric, $4, $5, $6)"
        ))
        .await
        .unwrap();
    timed(async {
        let mut total = 0;
        loop {
            let rows = l
                .query(
                    "select id, meter_id, timestamp, value::text, unit, metadata, created_at from meter_readings
                     where not is_synchronized order by timestamp, id limit 100",
                    &[],
                )
                .await
                .unwrap();
            if rows.is_empty() {
                return total;
            }
            let tx = r.transaction().await.unwrap();
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                ids.push(row.get::<_, i64>(0));
                let meter: String = row.get(1);
                let ts: chrono::NaiveDateTime = row.get(2);
                let value: String = row.get(3);
                let unit: String = row.get(4);
                let metadata: Option<serde_json::Value> = row.get(5);
                let created: Option<chrono::NaiveDateTime> = row.get(6);
                tx.execute(&insert, &[&meter, &ts, &value, &unit, &metadata, &created]).await.unwrap();
            }
            tx.commit().await.unwrap();
            l.execute("delete from meter_readings where id = any($1)", &[&ids]).await.unwrap();
            total += rows.len() as u64;
        }
    })
    .await
}

fn main() {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rows = env_rows("BENCH_ROWS", 1_000_000);
    let baseline_rows = env_rows("BENCH_BASELINE_ROWS", 20_000).min(rows);
    // UPLOAD_WORKERS for the measured runs (the service default unless BENCH_WORKERS says).
    let workers = std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "auto".into());
    let repeat = env_rows("BENCH_REPEAT", 3).max(1) as usize;
    let paths = paths();
    let (local, remote) = clusters();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for path in &paths {
            create_db(&local, path.site).await;
            create_db(&remote, path.central).await;
            let central = connect(&remote, path.central).await;
            central.batch_execute(Layout::Default.remote_schema()).await.unwrap();
            central.batch_execute(path.central_ddl).await.unwrap();
            let mut site = connect(&local, path.site).await;
            meter_sync::data::schema::migrate(&mut site, &path.profile).await.unwrap();
            // The ledger's first run adopts the whole queue (its readings might have been sent
            // by an older process); a site's runs after that go straight in. Started here with
            // one reading, as the service's first run would.
            if path.key == "ledger" {
                refill(&local, path.site, 1).await;
                let config = config(&local, path.site, &remote, path.central, &[]);
                let report = meter_sync::engine::upload::run(&Pools::new(&config).unwrap(), meter_sync::service::cycle::upload_request(&config, &path.profile, path.profile.readings.as_ref().unwrap())).await;
                assert!(report.success() && report.uploaded == 1, "{:?}", report.error);
            }
        }
        let version: String = connect(&local, "postgres").await.query_one("show server_version", &[]).await.unwrap().get(0);
        println!("upload benchmark: {rows} readings queued, PostgreSQL {version}, fsync off, both clusters and the agent on one 2-core machine");

        // Rounds interleave every measurement, so a slow moment of the machine touches them all;
        // the figures are the medians.
        let batches = [10_000u32, 100];
        // Per path: pipe times and CPU, per batch size the upload times, CPU and details.
        let mut pipe: Vec<(Vec<Duration>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); paths.len()];
        let mut uploads: Vec<Vec<(Vec<Duration>, Vec<f64>)>> = vec![vec![(Vec::new(), Vec::new()); batches.len()]; paths.len()];
        let mut details: Vec<Vec<(u32, u64, f64)>> = vec![vec![(0, 0, 0.0); batches.len()]; paths.len()];
        let mut per_row_times = Vec::new();
        for round in 0..repeat {
            for (p, path) in paths.iter().enumerate() {
                refill(&local, path.site, rows).await;
                empty_remote(&remote, path.central).await;
                let before = cpu(&remote, path.central).await;
                let (piped, pipe_time) = raw_pipe(&local, &remote, path).await;
                let used = cpu(&remote, path.central).await - before;
                assert_eq!(piped as i64, rows);
                pipe[p].0.push(pipe_time);
                pipe[p].1.push(used);

                if path.key == "unique" {
                    refill(&local, path.site, baseline_rows).await;
                    empty_remote(&remote, path.central).await;
                    let (done, per_row_time) = per_row(&local, &remote, path).await;
                    assert_eq!(done as i64, baseline_rows);
                    per_row_times.push(per_row_time);
                }

                let readings = path.profile.readings.as_ref().unwrap();
                for (i, batch) in batches.iter().enumerate() {
                    refill(&local, path.site, rows).await;
                    empty_remote(&remote, path.central).await;
                    let config = config(
                        &local,
                        path.site,
                        &remote,
                        path.central,
                        &[("BATCH_SIZE", &batch.to_string()), ("MAX_BATCHES_PER_RUN", "100000000"), ("UPLOAD_WORKERS", &workers)],
                    );
                    let pools = Pools::new(&config).unwrap();
                    reset_peak_rss();
                    let before = cpu(&remote, path.central).await;
                    let (report, took) = timed(meter_sync::engine::upload::run(&pools, meter_sync::service::cycle::upload_request(&config, &path.profile, readings))).await;
                    pools.local.close();
                    pools.remote.close();
                    let used = cpu(&remote, path.central).await - before;
                    let rss = peak_rss_mib();
                    assert!(report.success(), "{}: {:?}", path.key, report.error);
                    assert_eq!(report.uploaded as i64, rows, "{}", path.key);
                    assert_eq!(report.deduplicated, 0, "{}", path.key);
                    uploads[p][i].0.push(took);
                    uploads[p][i].1.push(used);
                    let (_, _, peak) = details[p][i];
                    details[p][i] = (config.upload_workers_for(*batch), report.batches, peak.max(rss));
                }
            }
            eprintln!("round {} of {repeat} done", round + 1);
        }
        let per_million = |cpu: f64| cpu * 1_000_000.0 / rows as f64;
        for (p, path) in paths.iter().enumerate() {
            let pipe_time = median(std::mem::take(&mut pipe[p].0));
            let pipe_cpu = median_f64(std::mem::take(&mut pipe[p].1));
            let pipe_rate = rows as f64 / pipe_time.as_secs_f64();
            println!("{}: {}", path.key, path.what);
            println!(
                "  raw pipe (COPY TO STDOUT | COPY FROM STDIN, binary): {} ({}), central CPU {:.2} s per million readings, median of {repeat}",
                secs(pipe_time),
                rate(rows, pipe_time),
                per_million(pipe_cpu)
            );
            let per_row_rate = (path.key == "unique").then(|| {
                let per_row_time = median(std::mem::take(&mut per_row_times));
                println!(
                    "  per-row INSERTs in 100-row transactions ({baseline_rows} readings): {} ({}), median of {repeat}",
                    secs(per_row_time),
                    rate(baseline_rows, per_row_time)
                );
                baseline_rows as f64 / per_row_time.as_secs_f64()
            });
            for (i, batch) in batches.iter().enumerate() {
                let took = median(std::mem::take(&mut uploads[p][i].0));
                let used = median_f64(std::mem::take(&mut uploads[p][i].1));
                let (workers, batches_run, rss) = details[p][i];
                let upload_rate = rows as f64 / took.as_secs_f64();
                let goal = if *batch >= 10_000 { 0.8 } else { 0.4 };
                let baseline = per_row_rate.map_or(String::new(), |r| format!(", {:.1}x the per-row baseline [target >= 10x]", upload_rate / r));
                println!(
                    "  upload at BATCH_SIZE {batch}, {workers} workers: {} ({}), {:.2}x the raw pipe [goal >= {goal}x]{baseline}; central CPU {:.2} s per million readings, {:.2}x the raw pipe's [goal <= 1.3x]; {batches_run} batches, peak RSS {rss:.1} MiB [target <= 64 MiB], median of {repeat}",
                    secs(took),
                    rate(rows, took),
                    upload_rate / pipe_rate,
                    per_million(used),
                    used / pipe_cpu,
                );
            }
        }
    });
}

/// The central's server CPU seconds so far (see `support::server_cpu_seconds`), a moment after
/// the measured connections closed.
async fn cpu(remote: &PgCluster, db: &str) -> f64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    server_cpu_seconds(&connect(remote, db).await).await
}

/// The median of the measurements (the upper one of an even count).
fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
