//! The Sync Status page in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/page.mjs`) against a real `meter-sync run` on throwaway clusters. The script
//! asks for remote changes and the outage; this test makes them.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules` (`npm ci --prefix
//! tests/browser`); `.ci/run` installs them and sets `METER_SYNC_BROWSER_TEST=1`, which turns a
//! missing piece into a failure instead of a skip.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use meter_sync::fixture::insert_local_readings;
use meter_sync::pgcluster::{free_port, StopMode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{migrate_local, own_central, TestEnv};

const ADDED_METERS: i64 = 3;

fn missing_pieces(dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (apt-get install chromium)".to_string());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        missing.push("playwright-core (npm ci --prefix tests/browser)".to_string());
    }
    missing
}

async fn wait_for_status(base: &str, done: impl Fn(&Value) -> bool) {
    for _ in 0..300 {
        if let Ok(response) = reqwest::get(format!("{base}/api/local/sync-status")).await {
            if let Ok(status) = response.json::<Value>().await {
                if done(&status) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service never reached the expected state");
}

#[tokio::test]
async fn the_status_page_shows_the_real_state_and_its_buttons_work() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing = missing_pieces(&dir);
    if !missing.is_empty() {
        assert!(
            std::env::var_os("METER_SYNC_BROWSER_TEST").is_none(),
            "METER_SYNC_BROWSER_TEST is set but these are missing: {}",
            missing.join(", ")
        );
        eprintln!("browser test skipped; missing: {}", missing.join(", "));
        return;
    }
    // The central cluster is this test's own: it stops it.
    let (mut central, remote) = own_central("test-browser").await;
    let env = TestEnv::new("browser").await;
    let profile = meter_sync::profile::Profile::builtin_default().unwrap();
    migrate_local(&env.local, &profile).await;
    let port = free_port().unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("POSTGRES_CLIENT_PORT", &central.port().to_string()),
        ("POSTGRES_CLIENT_DB", "central"),
        ("SYNC_INTERVAL_SECONDS", "3600"),
        ("METER_SYNC_CRON", "0 0 1 1 *"),
        ("MAX_CONNECTION_RETRIES", "1"),
        ("DB_CONNECTION_TIMEOUT_MS", "1000"),
    ]);
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .arg("run")
        .env_clear()
        .envs(vars)
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // The start-up cycle has run: 25 meters; then readings arrive for the page to show.
    wait_for_status(&base, |s| {
        s["last_sync_success"] == true && s["local_meter_count"] == 25 && s["is_running"] == false
    })
    .await;
    let local = env.local.client().await;
    insert_local_readings(&local, 300, 6, 0).await.unwrap();

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output/browser");
    let mut script = tokio::process::Command::new("node")
        .arg(dir.join("page.mjs"))
        .env("BASE_URL", &base)
        .env("OUT_DIR", &out)
        .env("EXPECT_QUEUE", "300")
        .env("EXPECT_METERS", "25")
        .env("ADDED_METERS", ADDED_METERS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = script.stdin.take().unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut verdict = None;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            match line.trim() {
                "STEP remote-change" => {
                    remote
                        .execute(
                            "insert into meter (id, meter_element_id, tenant_id, name, active)
                             select 9000 + n, 1, 1, 'Browser meter ' || n, true from generate_series(1, $1::bigint) n",
                            &[&ADDED_METERS],
                        )
                        .await
                        .unwrap();
                    stdin.write_all(b"OK\n").await.unwrap();
                }
                "STEP remote-down" => {
                    central.stop(StopMode::Immediate).unwrap();
                    stdin.write_all(b"OK\n").await.unwrap();
                }
                other => {
                    eprintln!("page.mjs: {other}");
                    if other == "PASS" || other.starts_with("FAIL") {
                        verdict = Some(other.to_string());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script did not finish within 180 s");
    let status = script.wait().await.unwrap();
    assert_eq!(
        verdict.as_deref(),
        Some("PASS"),
        "screenshots in {}",
        out.display()
    );
    assert!(status.success());
    for shot in [
        "1-queue",
        "2-uploaded",
        "3-meters-synced",
        "4-remote-down",
        "5-phone",
    ] {
        assert!(
            out.join(format!("{shot}.png")).exists(),
            "{shot}.png missing"
        );
    }
    let _ = service.start_kill();
}
