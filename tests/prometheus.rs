//! The alert rules in a real Prometheus: Debian's `prometheus` scrapes a real `meter-sync run`
//! (throwaway clusters, the central one this test's own), the central is stopped, and the
//! remote-down alert of `deploy/prometheus/meter-sync-rules.yml` goes from pending to firing in
//! Prometheus's HTTP API; the central starts again and the alert resolves.
//!
//! Needs `/usr/bin/prometheus` (`apt-get install prometheus`); `.ci/run` installs it and sets
//! `METER_SYNC_PROMETHEUS_TEST=1`, which turns a missing binary into a failure, not a skip.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use meter_sync::pgcluster::{free_port, StopMode};
use serde_json::Value;

use crate::support::{migrate_local, own_central, TestEnv};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERT: &str = "MeterSyncRemoteDatabaseDown";

/// The shipped rules with the remote-down alert's `for: 5m` shortened to `for: 5s`, so the
/// test sees it fire in seconds; every other rule and expression as shipped.
fn rules_for_the_test() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/meter-sync-rules.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find(&format!("alert: {ALERT}")).unwrap();
    let (head, tail) = text.split_at(at);
    assert!(
        tail.contains("for: 5m"),
        "the {ALERT} rule has no `for: 5m`"
    );
    format!("{head}{}", tail.replacen("for: 5m", "for: 5s", 1))
}

/// The alert as Prometheus's `/api/v1/alerts` lists it: its state, or None when it is not
/// active (resolved or never pending).
async fn alert_state(prometheus: &str) -> Option<String> {
    let body: Value = reqwest::get(format!("{prometheus}/api/v1/alerts"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT)
        .map(|a| a["state"].as_str().unwrap_or_default().to_string())
}

/// Polls the alert's state until `done` holds or `limit` passes; returns every distinct state
/// seen, in order (None: not active).
async fn watch_alert(
    prometheus: &str,
    limit: Duration,
    done: impl Fn(&Option<String>) -> bool,
) -> Vec<Option<String>> {
    let started = Instant::now();
    let mut seen: Vec<Option<String>> = Vec::new();
    loop {
        let state = alert_state(prometheus).await;
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if done(&state) {
            return seen;
        }
        assert!(
            started.elapsed() < limit,
            "the alert's states in {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One instant query's result vector (empty while Prometheus is not answering yet).
async fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(response) = reqwest::get(format!("{prometheus}/api/v1/query?query={encoded}")).await
    else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn the_remote_down_alert_goes_pending_then_firing_then_resolves_in_prometheus() {
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            std::env::var_os("METER_SYNC_PROMETHEUS_TEST").is_none(),
            "METER_SYNC_PROMETHEUS_TEST is set but {PROMETHEUS} is missing (apt-get install prometheus)"
        );
        eprintln!("Prometheus test skipped: {PROMETHEUS} is missing");
        return;
    }
    let (mut central, _) = own_central("test-prometheus").await;
    let env = TestEnv::new("prometheus").await;
    migrate_local(
        &env.local,
        &meter_sync::profile::Profile::builtin_default().unwrap(),
    )
    .await;
    let port = free_port().unwrap();
    let vars = env.env(&[
        ("TENANT_ID", "1"),
        ("API_PORT", &port.to_string()),
        ("POSTGRES_CLIENT_PORT", &central.port().to_string()),
        ("POSTGRES_CLIENT_DB", "central"),
        ("SYNC_INTERVAL_SECONDS", "2"),
        ("MAX_CONNECTION_RETRIES", "1"),
        ("DB_CONNECTION_TIMEOUT_MS", "500"),
    ]);
    let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .arg("run")
        .env_clear()
        .envs(vars)
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), rules_for_the_test()).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  \
               - job_name: meter-sync\n    \
                 static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n"
        ),
    )
    .unwrap();
    let prometheus_port = free_port().unwrap();
    let _prometheus = tokio::process::Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");

    // Scraped, and the central connected: no alert.
    let started = Instant::now();
    loop {
        let connected = query(
            &prometheus,
            "meter_sync_database_connected{side=\"remote\"}",
        )
        .await;
        if connected.first().is_some_and(|s| s["value"][1] == "1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped the agent with the central connected: {connected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        query(&prometheus, "up{job=\"meter-sync\"}").await[0]["value"][1],
        "1"
    );
    assert_eq!(alert_state(&prometheus).await, None);

    central.stop(StopMode::Immediate).unwrap();
    let down = watch_alert(&prometheus, Duration::from_secs(60), |s| {
        s.as_deref() == Some("firing")
    })
    .await;
    assert_eq!(
        down,
        [None, Some("pending".into()), Some("firing".into())],
        "the alert must be pending for its `for` before it fires"
    );
    // The agent itself stays up and scraped while the central is down.
    assert_eq!(
        query(&prometheus, "up{job=\"meter-sync\"}").await[0]["value"][1],
        "1"
    );

    // Kept until the end: dropping the handle stops the cluster.
    let _central = tokio::task::spawn_blocking(move || {
        central.restart().unwrap();
        central
    })
    .await
    .unwrap();
    let up = watch_alert(&prometheus, Duration::from_secs(60), Option::is_none).await;
    assert_eq!(up, [Some("firing".into()), None]);
}

/// The names after `key: ` on the lines of `text`, in order.
fn values_of<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(str::trim)
        .collect()
}

#[test]
fn every_alert_rule_has_a_promtool_test_that_fires_it_and_they_pass() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let rules = std::fs::read_to_string(deploy.join("meter-sync-rules.yml")).unwrap();
    let alerts = values_of(&rules, "alert:");
    assert!(alerts.len() >= 12, "{alerts:?}");
    let mut tests: Vec<_> = std::fs::read_dir(deploy.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    tests.sort();
    let texts: Vec<String> = tests
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for alert in &alerts {
        // A test that expects the alert to fire (an `exp_alerts` list with labels), not only
        // one that expects it silent.
        let fired = texts.iter().any(|t| {
            t.split("- eval_time:").any(|case| {
                values_of(case, "alertname:").contains(alert) && case.contains("exp_labels:")
            })
        });
        assert!(
            fired,
            "no promtool test in {} fires {alert}",
            deploy.join("tests").display()
        );
    }
    if !Path::new("/usr/bin/promtool").exists() {
        assert!(
            std::env::var_os("METER_SYNC_PROMETHEUS_TEST").is_none(),
            "METER_SYNC_PROMETHEUS_TEST is set but /usr/bin/promtool is missing"
        );
        eprintln!("promtool checks skipped: /usr/bin/promtool is missing");
        return;
    }
    let check = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "rules", "meter-sync-rules.yml"])
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = std::process::Command::new("/usr/bin/promtool")
        .args(["test", "rules"])
        .args(&tests)
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
