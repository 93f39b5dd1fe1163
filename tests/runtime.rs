//! The scheduler on paused time, and real `meter-sync run` / `once` processes: graceful
//! shutdown during a run, the remote down at start, the local database down at start, the
//! bind rule.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meter_sync::cron::CronSchedule;
use meter_sync::fixture::insert_local_readings;
use meter_sync::pgcluster::{free_port, ClusterOptions, PgCluster, StopMode};
use meter_sync::service::scheduler::{run_schedule, Clock, Fired, Job, Schedule};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{connect, count, spawn, upload_env, wait_exit, Proc, READINGS_MULTISET};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Runs the scheduler for `hours` of paused time; `outcome` decides what each fired job
/// reports. Returns each job with the wall time it fired at.
async fn schedule_for(
    hours: u64,
    outcome: impl Fn(Job, DateTime<Utc>) -> Fired + Send + Sync + 'static,
) -> Vec<(Job, DateTime<Utc>)> {
    let clock = Clock::Tokio {
        wall: at("2026-01-01T00:59:30Z"),
        at: tokio::time::Instant::now(),
    };
    let schedule = Schedule {
        upload_every: Duration::from_secs(60),
        download_cron: CronSchedule::parse("0 * * * *").unwrap(),
        prune_every: Duration::from_secs(24 * 3600),
        retry_busy: Duration::from_secs(1),
    };
    let fired = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let log = fired.clone();
    let task = tokio::spawn(async move {
        run_schedule(&schedule, clock, stopped, |job| {
            let now = clock.now();
            log.lock().unwrap().push((job, now));
            let fired = outcome(job, now);
            async move {
                if job != Job::PruneLogs {
                    // A run takes five seconds.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                fired
            }
        })
        .await
    });
    // Stop 10 s short of the hour, so no job is due at the very instant of the stop.
    tokio::time::sleep(Duration::from_secs(hours * 3600 - 10)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let fired = fired.lock().unwrap().clone();
    fired
}

#[tokio::test(start_paused = true)]
async fn the_schedule_fires_the_interval_and_the_cron_as_configured() {
    let fired = schedule_for(2, |_, _| Fired::Done).await;
    // Start-up: the full cycle and the log pruning.
    assert_eq!(fired[0], (Job::Startup, at("2026-01-01T00:59:30Z")));
    assert_eq!(fired[1], (Job::PruneLogs, at("2026-01-01T00:59:35Z")));
    let downloads: Vec<DateTime<Utc>> = fired
        .iter()
        .filter(|(j, _)| matches!(j, Job::Download | Job::Cycle))
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        downloads,
        vec![at("2026-01-01T01:00:00Z"), at("2026-01-01T02:00:00Z")]
    );
    let uploads: Vec<DateTime<Utc>> = fired
        .iter()
        .filter(|(j, _)| *j == Job::Upload)
        .map(|(_, t)| *t)
        .collect();
    // Every 60 s from the start, for two hours: 00:59:30 + k minutes.
    assert_eq!(uploads.len(), 119);
    for (k, t) in uploads.iter().enumerate() {
        assert_eq!(
            *t,
            at("2026-01-01T00:59:30Z") + chrono::Duration::minutes(k as i64 + 1)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_download_deferred_by_a_run_is_retried_and_a_failed_one_joins_the_next_upload() {
    // The 01:00 download finds another run twice; the 02:00 one fails.
    let busy_left = Arc::new(Mutex::new(2));
    let outcome = move |job: Job, now: DateTime<Utc>| match job {
        Job::Download if now < at("2026-01-01T01:30:00Z") => {
            let mut left = busy_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                Fired::Busy
            } else {
                Fired::Done
            }
        }
        Job::Download | Job::Cycle
            if now >= at("2026-01-01T02:00:00Z") && now < at("2026-01-01T02:00:05Z") =>
        {
            Fired::Failed
        }
        _ => Fired::Done,
    };
    let fired = schedule_for(3, outcome).await;
    let downloads: Vec<(Job, DateTime<Utc>)> = fired
        .iter()
        .filter(|(j, _)| matches!(j, Job::Download | Job::Cycle))
        .cloned()
        .collect();
    assert_eq!(
        downloads,
        vec![
            // Busy at 01:00:00, retried 1 s after each refusal (each refusal took 5 s here).
            (Job::Download, at("2026-01-01T01:00:00Z")),
            (Job::Download, at("2026-01-01T01:00:06Z")),
            (Job::Download, at("2026-01-01T01:00:12Z")),
            // Failed at 02:00:00: retried with the next upload tick, as a cycle.
            (Job::Download, at("2026-01-01T02:00:00Z")),
            (Job::Cycle, at("2026-01-01T02:00:30Z")),
            (Job::Download, at("2026-01-01T03:00:00Z")),
        ]
    );
}

async fn status(http: &reqwest::Client, base: &str) -> Option<Value> {
    let response = http
        .get(format!("{base}/api/local/sync-status"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// Polls the service's status until `done` holds, at most `limit`.
async fn wait_status(base: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        if let Some(s) = status(&http, base).await {
            if done(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never reached the expected state; last: {last:?}");
}

#[tokio::test]
async fn sigterm_during_a_run_lets_it_finish_and_exits_zero() {
    let (env, _profile) = upload_env("rt_sigterm", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 2000, 5, 0).await.unwrap();
    let original = crate::support::rows_text(&local, READINGS_MULTISET).await;
    let blocker = crate::support::block_remote_readings(&env).await;
    let port = free_port().unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("SYNC_INTERVAL_SECONDS", "3600"),
    ]);
    let child = spawn(&["run"], &vars);
    let base = format!("http://127.0.0.1:{port}");
    let running = wait_status(&base, Duration::from_secs(30), |s| s["is_running"] == true).await;
    assert_eq!(running["running"]["trigger"], "startup");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // The run waits for the remote; the process waits for the run.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut child = child;
    assert!(child.try_wait().is_none(), "exited before its run finished");
    blocker.batch_execute("commit").await.unwrap();
    let (code, stderr) = wait_exit(child, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert_eq!(count(&local, "meter_readings").await, 0);
    let remote = env.remote.client().await;
    assert_eq!(
        crate::support::rows_text(&remote, READINGS_MULTISET).await,
        original
    );
    // The whole cycle ran: the download too.
    let downloads: i64 = local
        .query_one(
            "select count(*) from sync_logs where sync_type = 'download' and success",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(downloads >= 3, "{downloads}");
}

#[tokio::test]
async fn past_the_grace_period_the_run_is_cut_short_and_nothing_is_lost() {
    let (env, profile) = upload_env("rt_grace", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 500, 5, 0).await.unwrap();
    let original = crate::support::rows_text(&local, READINGS_MULTISET).await;
    let blocker = crate::support::block_remote_readings(&env).await;
    let port = free_port().unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ]);
    let child = spawn(&["run"], &vars);
    let base = format!("http://127.0.0.1:{port}");
    wait_status(&base, Duration::from_secs(30), |s| s["is_running"] == true).await;
    let started = std::time::Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (code, stderr) = wait_exit(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        stderr.contains("did not finish within SHUTDOWN_GRACE_SECONDS"),
        "{stderr}"
    );
    blocker.batch_execute("commit").await.unwrap();
    // Nothing went anywhere; the next run sends everything once.
    assert_eq!(count(&local, "meter_readings").await, 500);
    let report = crate::support::upload(&env, &profile).await;
    assert!(report.success(), "{report:?}");
    let remote = env.remote.client().await;
    assert_eq!(
        crate::support::rows_text(&remote, READINGS_MULTISET).await,
        original
    );
}

#[tokio::test]
async fn the_remote_down_at_start_is_reported_and_caught_up_without_a_restart() {
    let mut central = tokio::task::spawn_blocking(|| {
        PgCluster::start(&ClusterOptions {
            label: "test-late-remote".into(),
            ..ClusterOptions::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let (env, _profile) = upload_env("rt_late_remote", &[]).await;
    {
        let admin = connect(&central, "postgres").await;
        admin
            .batch_execute("create database central")
            .await
            .unwrap();
        let client = connect(&central, "central").await;
        meter_sync::fixture::load_remote(
            &client,
            meter_sync::fixture::Layout::Default,
            meter_sync::fixture::FixtureSize::default(),
        )
        .await
        .unwrap();
    }
    central.stop(StopMode::Fast).unwrap();
    let local = env.local.client().await;
    insert_local_readings(&local, 700, 7, 0).await.unwrap();
    let original = crate::support::rows_text(&local, READINGS_MULTISET).await;
    let port = free_port().unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("SYNC_INTERVAL_SECONDS", "1"),
        ("POSTGRES_CLIENT_PORT", &central.port().to_string()),
        ("POSTGRES_CLIENT_DB", "central"),
        ("DB_CONNECTION_TIMEOUT_MS", "500"),
        ("MAX_CONNECTION_RETRIES", "0"),
    ]);
    let child = spawn(&["run"], &vars);
    let base = format!("http://127.0.0.1:{port}");
    let down = wait_status(&base, Duration::from_secs(30), |s| {
        s["last_sync_success"] == false && s["last_upload"]["success"] == false
    })
    .await;
    assert_eq!(down["remote_db_connected"], false);
    assert_eq!(down["local_db_connected"], true);
    assert_eq!(down["queue_size"], 700);
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["message"], "remote database unreachable");

    // Kept until the end of the test: dropping it stops the cluster.
    let central = tokio::task::spawn_blocking(move || {
        central.restart().unwrap();
        central
    })
    .await
    .unwrap();
    // Caught up by the next ticks: the readings up, and the meters down (the failed start-up
    // download is retried with the next upload rather than at the next cron time).
    let caught_up = wait_status(&base, Duration::from_secs(60), |s| {
        s["queue_size"] == 0 && s["local_meter_count"] == 25 && s["last_sync_success"] == true
    })
    .await;
    assert_eq!(caught_up["remote_db_connected"], true);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (code, stderr) = wait_exit(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let remote = connect(&central, "central").await;
    assert_eq!(
        crate::support::rows_text(&remote, READINGS_MULTISET).await,
        original
    );
}

#[tokio::test]
async fn the_local_database_down_at_start_exits_with_a_clear_error_after_retries() {
    let (env, _profile) = upload_env("rt_no_local", &[]).await;
    let closed = free_port().unwrap().to_string();
    let vars = env.env(&[
        ("POSTGRES_SYNC_PORT", &closed),
        ("MAX_CONNECTION_RETRIES", "2"),
        ("API_PORT", &free_port().unwrap().to_string()),
    ]);
    let (code, stderr) = wait_exit(spawn(&["run"], &vars), Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the local database is unreachable after 2 retries")
            && stderr.contains(&format!("127.0.0.1:{closed}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn binding_beyond_loopback_without_a_token_is_refused() {
    let (env, _profile) = upload_env("rt_bind", &[]).await;
    let vars = env.env(&[("API_HOST", "0.0.0.0")]);
    let (code, stderr) = wait_exit(spawn(&["run"], &vars), Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("API_HOST=0.0.0.0") && stderr.contains("API_TOKEN"),
        "{stderr}"
    );
}

#[tokio::test]
async fn once_runs_one_cycle_and_says_whether_every_part_succeeded() {
    let (env, _profile) = upload_env("rt_once", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 120, 2, 0).await.unwrap();
    let vars = env.env(&[("TENANT_ID", "1")]);
    let child = spawn(&["once", "--json"], &vars);
    let output = tokio::task::spawn_blocking(move || child.take().wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["success"], true);
    assert_eq!(result["upload"]["uploaded"], 120);
    assert_eq!(result["tenant_download"]["inserted"], 1);
    // A broken part: exit 1, and the other part still ran.
    let remote = env.remote.client().await;
    remote
        .batch_execute("alter table register rename to register_gone")
        .await
        .unwrap();
    insert_local_readings(&local, 10, 2, 500).await.unwrap();
    let child = spawn(&["once"], &vars);
    let output = tokio::task::spawn_blocking(move || child.take().wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("upload: ok") && stdout.contains("cycle: FAILED"),
        "{stdout}"
    );
    assert_eq!(count(&local, "meter_readings").await, 0);
    // The status command reads the results back.
    let child = spawn(&["status", "--json"], &vars);
    let output = tokio::task::spawn_blocking(move || child.take().wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["last_sync_success"], false);
    assert!(status["last_sync_error"]
        .as_str()
        .unwrap()
        .contains("register"));
    assert_eq!(status["queue_size"], 0);
    assert_eq!(status["total_records_synced"], 130);
    assert_eq!(status["meter_sync"]["meter_count"], 1);
}

#[test]
fn the_systemd_unit_runs_the_service_with_its_environment_file_and_enough_stop_time() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/meter-sync.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .to_string()
    };
    assert!(value("ExecStart").ends_with("meter-sync run"));
    // READY=1 and the watchdog pings of `surface::systemd` (tests/operations.rs).
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("NotifyAccess"), "main");
    assert!(value("WatchdogSec").parse::<u64>().unwrap() >= 10);
    assert!(value("EnvironmentFile").starts_with('/'));
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("RestartPreventExitStatus"), "2");
    assert_eq!(value("KillSignal"), "SIGTERM");
    // Longer than the default SHUTDOWN_GRACE_SECONDS, so systemd never kills a finishing run.
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    let grace: u64 = meter_sync::config::KEYS
        .iter()
        .find(|k| k.name == "SHUTDOWN_GRACE_SECONDS")
        .and_then(|k| k.default)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stop > grace,
        "TimeoutStopSec={stop}, SHUTDOWN_GRACE_SECONDS default {grace}"
    );
}

/// Runs `meter-sync <args>` under a pseudo-terminal (util-linux `script`); its output.
fn on_a_terminal(args: &str, vars: &[(String, String)]) -> Option<String> {
    let script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .ok()?;
    if !script.status.success() {
        return None;
    }
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_meter-sync"));
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn a_terminal_gets_a_progress_bar_and_a_pipe_plain_lines() {
    let (env, _profile) = upload_env("rt_progress", &[]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 20_000, 10, 0).await.unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("BATCH_SIZE", "200"),
        ("UPLOAD_WORKERS", "1"),
    ]);
    let moved = vars.clone();
    let Some(terminal) = tokio::task::spawn_blocking(move || on_a_terminal("upload", &moved))
        .await
        .unwrap()
    else {
        panic!("util-linux `script` is needed for this test");
    };
    assert!(terminal.contains("upload ["), "{terminal}");
    assert!(terminal.contains("/20000 readings"), "{terminal}");
    assert!(terminal.contains("upload: ok"), "{terminal}");
    insert_local_readings(&local, 1000, 10, 5000).await.unwrap();
    let (code, stderr) = wait_exit(spawn(&["upload"], &vars), Duration::from_secs(60)).await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("upload ["), "{stderr}");
    assert!(stderr.contains("upload finished"), "{stderr}");
}

#[tokio::test]
async fn the_demo_runs_the_whole_service_on_its_own_clusters_and_cleans_up() {
    let port = free_port().unwrap();
    let vars = vec![("LOG_LEVEL".to_string(), "warn".to_string())];
    let mut demo = Proc(Some(
        Command::new(env!("CARGO_BIN_EXE_meter-sync"))
            .args([
                "demo",
                "--port",
                &port.to_string(),
                "--rate",
                "50",
                "--upload-every",
                "1",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let base = format!("http://127.0.0.1:{port}");
    let status = wait_status(&base, Duration::from_secs(90), |s| {
        s["total_records_synced"].as_i64().unwrap_or(0) > 50 && s["local_meter_count"] == 25
    })
    .await;
    assert_eq!(status["tenant_id"], "1");
    assert_eq!(status["remote_db_connected"], true);
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sync Status"));
    kill(Pid::from_raw(demo.id() as i32), Signal::SIGINT).unwrap();
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(status) = demo.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit.code(), Some(0));
    let mut out = String::new();
    use std::io::Read;
    demo.take()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains(&format!("{base}/mcp")), "{out}");
    assert!(out.contains("Three things to try"), "{out}");
    // Its clusters are gone: their ports no longer answer.
    let ports: Vec<u16> = out
        .split("port ")
        .skip(1)
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert_eq!(ports.len(), 2, "{out}");
    for p in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still open"
        );
    }
}
