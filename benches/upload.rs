//! Upload benchmark: `cargo bench --bench upload`.
//!
//! Starts its own clusters, queues `BENCH_ROWS` readings (default 1,000,000) locally and
//! prints the drain time and rows/s at BATCH_SIZE 10,000 and 100, the peak RSS of this process,
//! and two baselines measured between the same clusters in the same run: the raw binary
//! `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe, and per-row `INSERT`s in 100-row
//! transactions (the original system's approach; `BENCH_BASELINE_ROWS`, default 20,000 rows).
//! Every figure is the median of `BENCH_REPEAT` (default 3) interleaved rounds.

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

async fn refill(local: &PgCluster, rows: i64) {
    let client = connect(local, "site").await;
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

async fn empty_remote(remote: &PgCluster) {
    let client = connect(remote, "central").await;
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
async fn raw_pipe(local: &PgCluster, remote: &PgCluster) -> (u64, Duration) {
    let l = connect(local, "site").await;
    let r = connect(remote, "central").await;
    copy_pipe(
        &l,
        &format!("copy (select {COLUMNS} from meter_readings) to stdout (format binary)"),
        &r,
        &format!("copy meter_readings ({COLUMNS}) from stdin (format binary)"),
    )
    .await
}

/// The original system's way: read 100 readings, INSERT them one by one in one remote
/// transaction, commit, delete them locally.
async fn per_row(local: &PgCluster, remote: &PgCluster) -> (u64, Duration) {
    let l = connect(local, "site").await;
    let mut r = connect(remote, "central").await;
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
    let (local, remote) = clusters();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        create_db(&local, "site").await;
        create_db(&remote, "central").await;
        connect(&remote, "central").await.batch_execute(Layout::Default.remote_schema()).await.unwrap();
        let profile = Profile::builtin_default().unwrap();
        let mut site = connect(&local, "site").await;
        meter_sync::data::schema::migrate(&mut site, &profile).await.unwrap();
        let readings = profile.readings.as_ref().unwrap();
        let version: String = site.query_one("show server_version", &[]).await.unwrap().get(0);
        println!("upload benchmark: {rows} readings queued, PostgreSQL {version}, fsync off, remote dedupe by unique index, both clusters and the agent on one 2-core machine");

        // Rounds interleave every measurement, so a slow moment of the machine touches them all;
        // the figures are the medians.
        let mut pipe_times = Vec::new();
        let mut per_row_times = Vec::new();
        let mut upload_times: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
        let mut details: Vec<(u32, u64, f64)> = vec![(0, 0, 0.0); 2];
        let batches = [(10_000u32, 0.8), (100, 0.3)];
        for round in 0..repeat {
            refill(&local, rows).await;
            empty_remote(&remote).await;
            let (piped, pipe_time) = raw_pipe(&local, &remote).await;
            assert_eq!(piped as i64, rows);
            pipe_times.push(pipe_time);

            refill(&local, baseline_rows).await;
            empty_remote(&remote).await;
            let (done, per_row_time) = per_row(&local, &remote).await;
            assert_eq!(done as i64, baseline_rows);
            per_row_times.push(per_row_time);

            for (i, (batch, _)) in batches.iter().enumerate() {
                refill(&local, rows).await;
                empty_remote(&remote).await;
                let config = config(
                    &local,
                    "site",
                    &remote,
                    "central",
                    &[("BATCH_SIZE", &batch.to_string()), ("MAX_BATCHES_PER_RUN", "100000000"), ("UPLOAD_WORKERS", &workers)],
                );
                let pools = Pools::new(&config).unwrap();
                reset_peak_rss();
                let (report, took) = timed(meter_sync::engine::upload::run(&pools, meter_sync::service::cycle::upload_request(&config, &profile, readings))).await;
                let rss = peak_rss_mib();
                assert!(report.success(), "{:?}", report.error);
                assert_eq!(report.uploaded as i64, rows);
                upload_times[i].push(took);
                details[i] = (config.upload_workers_for(*batch), report.batches, details[i].2.max(rss));
            }
            eprintln!("round {} of {repeat} done", round + 1);
        }
        let pipe_time = median(pipe_times);
        let pipe_rate = rows as f64 / pipe_time.as_secs_f64();
        println!("raw pipe (COPY TO STDOUT | COPY FROM STDIN, binary): {} ({}), median of {repeat}", secs(pipe_time), rate(rows, pipe_time));
        let per_row_time = median(per_row_times);
        let per_row_rate = baseline_rows as f64 / per_row_time.as_secs_f64();
        println!(
            "per-row INSERTs in 100-row transactions ({baseline_rows} readings): {} ({}), median of {repeat}",
            secs(per_row_time),
            rate(baseline_rows, per_row_time)
        );
        for (i, (batch, target)) in batches.iter().enumerate() {
            let took = median(std::mem::take(&mut upload_times[i]));
            let (workers, batches, rss) = details[i];
            let upload_rate = rows as f64 / took.as_secs_f64();
            println!(
                "upload at BATCH_SIZE {batch}, {workers} workers: {} ({}), {:.2}x the raw pipe [target >= {target}x], {:.1}x the per-row baseline [target >= 10x], {batches} batches, peak RSS {rss:.1} MiB [target <= 64 MiB], median of {repeat}",
                secs(took),
                rate(rows, took),
                upload_rate / pipe_rate,
                upload_rate / per_row_rate,
            );
        }
    });
}
