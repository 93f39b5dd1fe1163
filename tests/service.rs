//! The service runtime: routes and their shapes on a real HTTP listener (port 0), single
//! flight under 100 concurrent triggers, the token rule, part isolation in a cycle, metrics,
//! and the 004 property 12 status accuracy across random sequences of runs and failures.

use std::collections::BTreeSet;
use std::time::Duration;

use meter_sync::data::runlock::{RunKind, Trigger};
use meter_sync::fixture::insert_local_readings;
use meter_sync::profile::Profile;
use meter_sync::service::Service;
use meter_sync::surface::app::App;
use proptest::prelude::*;
use serde_json::Value;

use crate::support::{count, default_env_with, run_now, upload_env, TestEnv};

/// The service of `env` serving HTTP on a port-0 listener, without the scheduler.
pub async fn serve(env: &TestEnv, profile: &Profile) -> (App, String) {
    let service = Service::new(env.config.clone(), profile.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::start(service, listener, false).unwrap();
    let base = format!("http://{}", app.addr);
    (app, base)
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = http.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `/metrics` text of the service at `base`.
async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Active local meters, as 003 property 7 defines the meter count.
async fn active_meters(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("select count(*) from meter where active", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_route_answers_with_its_shape() {
    let (env, profile) = default_env_with("svc_routes", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 300, 3, 0).await.unwrap();
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();

    // Never synced: the 003 shape with nulls and zeros.
    let (code, meter) = get(&http, &format!("{base}/api/local/meter-sync-status")).await;
    assert_eq!(code, 200);
    assert_eq!(
        keys(&meter),
        set(&[
            "last_sync_at",
            "last_sync_success",
            "last_sync_error",
            "inserted_count",
            "updated_count",
            "deleted_count",
            "meter_count",
            "is_syncing"
        ])
    );
    assert_eq!(meter["last_sync_at"], Value::Null);
    assert_eq!(meter["meter_count"], 0);
    assert_eq!(meter["is_syncing"], false);

    let (code, status) = get(&http, &format!("{base}/api/local/sync-status")).await;
    assert_eq!(code, 200);
    for key in [
        "is_running",
        "last_sync_time",
        "last_sync_success",
        "last_sync_error",
        "queue_size",
        "total_records_synced",
        "local_meter_count",
        "remote_meter_count",
        "local_tenant_count",
        "remote_tenant_count",
        "local_db_connected",
        "remote_db_connected",
        "oldest_unsent_age_seconds",
        "quarantined_count",
    ] {
        assert!(
            status.get(key).is_some(),
            "sync-status lacks {key}: {status}"
        );
    }
    assert_eq!(status["queue_size"], 300);
    assert_eq!(status["is_running"], false);
    assert_eq!(status["last_sync_time"], Value::Null);
    assert_eq!(status["remote_meter_count"], 25);
    assert_eq!(status["remote_db_connected"], true);

    // The meter trigger: 003's answer, the meter entity's counts.
    let (code, answer) = post(&http, &format!("{base}/api/local/meter-sync-trigger"), None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(keys(&answer), set(&["success", "message", "result"]));
    assert_eq!(answer["success"], true);
    assert_eq!(
        keys(&answer["result"]),
        set(&[
            "success",
            "inserted",
            "updated",
            "deleted",
            "error",
            "timestamp"
        ])
    );
    assert_eq!(answer["result"]["inserted"], 25);
    let (_, meter) = get(&http, &format!("{base}/api/local/meter-sync-status")).await;
    assert_eq!(meter["inserted_count"], 25);
    assert_eq!(meter["last_sync_success"], true);
    assert_eq!(meter["meter_count"], active_meters(&local).await);

    // The full cycle: upload then download, 004's SyncCycleResult.
    let (code, answer) = post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
    assert_eq!(code, 200, "{answer}");
    let result = &answer["result"];
    for key in [
        "success",
        "upload",
        "meter_download",
        "tenant_download",
        "download",
        "total_duration_ms",
        "timestamp",
    ] {
        assert!(
            result.get(key).is_some(),
            "cycle result lacks {key}: {result}"
        );
    }
    assert_eq!(result["upload"]["uploaded"], 300);
    assert_eq!(result["meter_download"]["inserted"], 0);
    assert_eq!(count(&local, "meter_readings").await, 0);

    let (code, logs) = get(&http, &format!("{base}/api/local/sync-logs?limit=3")).await;
    assert_eq!(code, 200);
    assert_eq!(logs["logs"].as_array().unwrap().len(), 3);
    let (_, logs) = get(
        &http,
        &format!("{base}/api/local/sync-logs?sync_type=upload"),
    )
    .await;
    let logs = logs["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["inserted"], 300);

    // Bad input: a JSON message, never a 5xx.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=99999999999999999999",
        "sync_type=nope",
    ] {
        let (code, body) = get(&http, &format!("{base}/api/local/sync-logs?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{query}: {body}"
        );
    }
    let (code, body) = get(&http, &format!("{base}/api/local/sync-trigger")).await;
    assert_eq!(code, 405, "{body}");
    assert_eq!(body["error"], "method_not_allowed");
    let (code, body) = get(&http, &format!("{base}/api/nothing")).await;
    assert_eq!(code, 404);
    assert!(body["message"].as_str().unwrap().contains("/api/nothing"));

    let (code, body) = get(&http, &format!("{base}/health")).await;
    assert_eq!((code, &body["status"]), (200, &Value::from("ok")));
    let (code, body) = get(&http, &format!("{base}/ready")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["remote_db_connected"], true);

    let (code, doc) = get(&http, &format!("{base}/api/openapi.json")).await;
    assert_eq!(code, 200);
    for path in [
        "/api/local/sync-status",
        "/api/local/sync-trigger",
        "/api/local/meter-sync-status",
        "/api/local/meter-sync-trigger",
        "/api/local/sync-logs",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    let docs = http.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.stop().await;
}

async fn wait_until_running(http: &reqwest::Client, base: &str) -> Value {
    for _ in 0..200 {
        let (_, status) = get(http, &format!("{base}/api/local/sync-status")).await;
        if status["is_running"] == true {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run never started");
}

#[tokio::test]
async fn a_hundred_concurrent_triggers_start_exactly_one_run() {
    let (env, profile) = upload_env("svc_single", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 1000, 5, 0).await.unwrap();
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let blocker = crate::support::block_remote_readings(&env).await;

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/api/local/sync-trigger");
            tokio::spawn(async move { post(&http, &url, None).await })
        })
        .collect();
    let status = wait_until_running(&http, &base).await;
    assert_eq!(status["running"]["kind"], "cycle");
    assert_eq!(status["running"]["trigger"], "api");
    // Another process is refused too, by the run lock on the local database.
    let vars = env.env(&[]);
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
            .arg("upload")
            .env_clear()
            .envs(vars)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        stderr.contains("a sync cycle is already running (started by api")
            && stderr.contains("in another meter-sync process"),
        "{stderr}"
    );
    // All but one answer 409 while the run waits for the remote.
    let mut conflicts = 0;
    for _ in 0..200 {
        conflicts = tasks.iter().filter(|t| t.is_finished()).count();
        if conflicts == 99 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(conflicts, 99);
    blocker.batch_execute("commit").await.unwrap();
    let mut codes = Vec::new();
    for task in tasks {
        let (code, body) = task.await.unwrap();
        if code == 409 {
            assert_eq!(body["success"], false);
            assert_eq!(body["running"]["kind"], "cycle");
            assert!(body["message"]
                .as_str()
                .unwrap()
                .starts_with("a sync cycle is already running (started by api at "));
        } else {
            assert_eq!(body["result"]["upload"]["uploaded"], 1000, "{body}");
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 99);
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1);
    let uploads: i64 = local
        .query_one(
            "select count(*) from sync_logs where sync_type = 'upload'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(uploads, 1);
    app.stop().await;
}

#[tokio::test]
async fn with_a_token_every_post_needs_it() {
    let token = "s3cret-token-0123456789";
    let (env, profile) = upload_env("svc_token", &[("TENANT_ID", "1"), ("API_TOKEN", token)]).await;
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/local/upload-trigger");
    let (code, body) = post(&http, &url, None).await;
    assert_eq!(code, 401);
    assert!(body["message"].as_str().unwrap().contains("Bearer"));
    assert!(!body.to_string().contains(token));
    let (code, _) = post(&http, &url, Some("s3cret-token-0123456780")).await;
    assert_eq!(code, 401);
    let (code, _) = post(&http, &url, Some("short")).await;
    assert_eq!(code, 401);
    let (code, body) = post(&http, &url, Some(token)).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(&http, &format!("{base}/api/local/sync-status")).await;
    assert_eq!(code, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_part_never_stops_the_others() {
    let (env, profile) = default_env_with("svc_isolation", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    insert_local_readings(&local, 200, 2, 0).await.unwrap();
    let service = Service::new(env.config.clone(), profile.clone()).unwrap();

    // The meter download fails (004 property 10): the upload and the tenant still go through.
    remote
        .batch_execute("alter table meter rename to meter_gone")
        .await
        .unwrap();
    let result = run_now(&service, RunKind::Cycle, Trigger::Cli).await;
    assert!(!result.success);
    assert!(result.upload.as_ref().unwrap().success());
    assert_eq!(result.upload.as_ref().unwrap().uploaded, 200);
    assert!(!result.meter_download.as_ref().unwrap().success);
    assert!(result
        .meter_download
        .as_ref()
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .contains("meter"));
    assert!(result.tenant_download.as_ref().unwrap().success);
    assert_eq!(count(&local, "tenant").await, 1);

    // The upload fails (004 property 15's other side): the downloads still go through.
    remote
        .batch_execute("alter table meter_gone rename to meter; alter table meter_readings rename to readings_gone")
        .await
        .unwrap();
    insert_local_readings(&local, 50, 2, 100).await.unwrap();
    let result = run_now(&service, RunKind::Cycle, Trigger::Cli).await;
    assert!(!result.upload.as_ref().unwrap().success());
    assert!(result.download.as_ref().unwrap().success());
    assert_eq!(result.meter_download.as_ref().unwrap().inserted, 25);
    assert_eq!(count(&local, "meter_readings").await, 50);
    let status = service.sync_status().await;
    assert_eq!(status.last_sync_success, Some(false));
    assert!(status.last_sync_error.unwrap().starts_with("upload: "));
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn metrics_parse_and_move_with_the_work() {
    let (env, profile) = upload_env("svc_metrics", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 400, 4, 0).await.unwrap();
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let scrape = || async {
        let text = metrics_text(&http, &base).await;
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        move |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            scrape.samples.iter().find_map(|s| {
                let matches =
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
                if !matches {
                    return None;
                }
                match &s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => Some(*v),
                    prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count),
                    _ => None,
                }
            })
        }
    };
    let before = scrape().await;
    assert_eq!(before("meter_sync_queue_size", &[]), Some(400.0));
    assert_eq!(before("meter_sync_readings_uploaded_total", &[]), Some(0.0));
    assert_eq!(
        before("meter_sync_database_connected", &[("side", "remote")]),
        Some(1.0)
    );
    assert!(before("meter_sync_oldest_unsent_age_seconds", &[]).unwrap() > 0.0);

    let (code, _) = post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
    assert_eq!(code, 200);
    let after = scrape().await;
    assert_eq!(after("meter_sync_queue_size", &[]), Some(0.0));
    assert_eq!(
        after("meter_sync_oldest_unsent_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        after("meter_sync_readings_uploaded_total", &[]),
        Some(400.0)
    );
    assert_eq!(
        after(
            "meter_sync_runs_total",
            &[("part", "upload"), ("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after(
            "meter_sync_run_duration_seconds_count",
            &[("part", "cycle")]
        ),
        Some(1.0)
    );
    assert!(
        after(
            "meter_sync_last_success_timestamp_seconds",
            &[("part", "download")]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        after(
            "meter_sync_entity_rows_total",
            &[("entity", "meter"), ("change", "inserted")]
        ),
        Some(1.0)
    );
    // The storage gauges: measured, never an invented 0.
    assert!(after("meter_sync_local_database_size_bytes", &[]).unwrap() > 1e6);
    assert!(after("meter_sync_readings_table_size_bytes", &[]).unwrap() > 8192.0);
    for purpose in ["working_directory", "local_database"] {
        let label = [("purpose", purpose)];
        let avail = after("meter_sync_filesystem_avail_bytes", &label).unwrap();
        let size = after("meter_sync_filesystem_size_bytes", &label).unwrap();
        assert!(avail > 0.0 && avail <= size, "{purpose}: {avail} of {size}");
    }
    let started = after("process_start_time_seconds", &[]).unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");

    // Failed uploads in a row are counted, and a success resets the count.
    assert_eq!(
        after("meter_sync_consecutive_failures", &[("part", "upload")]),
        Some(0.0)
    );
    insert_local_readings(&local, 1, 1, 500).await.unwrap();
    let remote = env.remote.client().await;
    remote
        .batch_execute("alter table meter_readings rename to gone")
        .await
        .unwrap();
    for failures in [1.0, 2.0] {
        post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
        let now = scrape().await;
        let part = |part| now("meter_sync_consecutive_failures", &[("part", part)]);
        assert_eq!(part("upload"), Some(failures));
        assert_eq!(part("download"), Some(0.0));
    }
    remote
        .batch_execute("alter table gone rename to meter_readings")
        .await
        .unwrap();
    post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
    let healed = scrape().await;
    assert_eq!(
        healed("meter_sync_consecutive_failures", &[("part", "upload")]),
        Some(0.0)
    );
    assert_eq!(healed("meter_sync_queue_size", &[]), Some(0.0));
    app.stop().await;
}

/// The series names a Prometheus text exposition has samples of.
fn exported_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// The `meter_sync_*` and `process_*` names in a PromQL expression.
fn named_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let from = &rest[at..];
        let end = from
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(from.len());
        let word = &from[..end];
        if word.starts_with("meter_sync_") || word.starts_with("process_") {
            names.push(word.to_string());
        }
        rest = &from[end..];
    }
    names
}

#[tokio::test]
async fn the_grafana_dashboard_parses_and_queries_only_exported_metrics() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/meter-sync.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Importable: a datasource input, a uid, a title, panels with a place and queries.
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    assert_eq!(dashboard["uid"], "meter-sync");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut exprs = vec![dashboard["templating"]["list"][0]["definition"]
        .as_str()
        .unwrap()
        .to_string()];
    let mut titles = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert!(
            titles.insert(title.to_string()),
            "two panels titled {title}"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    // What the issue asks the dashboard to show.
    for wanted in [
        "meter_sync_queue_size",
        "meter_sync_oldest_unsent_age_seconds",
        "meter_sync_readings_uploaded_total",
        "meter_sync_run_duration_seconds_bucket",
        "meter_sync_runs_total",
        "meter_sync_entity_rows_total",
        "meter_sync_database_connected",
        "meter_sync_quarantined_readings",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| named_metrics(e).iter().any(|n| n == wanted)),
            "{wanted} not shown"
        );
    }
    // Every metric a query names is one a running service exports (after one cycle, when
    // every family has samples).
    let (env, profile) = upload_env("svc_dashboard", &[("TENANT_ID", "1")]).await;
    insert_local_readings(&env.local.client().await, 10, 2, 0)
        .await
        .unwrap();
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let (code, _) = post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
    assert_eq!(code, 200);
    let text = metrics_text(&http, &base).await;
    let exported = exported_series(&text);
    for expr in &exprs {
        let names = named_metrics(expr);
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "no metric in {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in `{expr}`) is not exported: {exported:?}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_say_unknown_where_the_status_says_null() {
    let closed = meter_sync::pgcluster::free_port().unwrap().to_string();
    let (env, profile) = upload_env(
        "svc_metrics_down",
        &[
            ("TENANT_ID", "1"),
            ("POSTGRES_SYNC_PORT", closed.as_str()),
            ("DB_CONNECTION_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let (_, status) = get(&http, &format!("{base}/api/local/sync-status")).await;
    assert_eq!(status["local_db_connected"], false, "{status}");
    assert_eq!(status["queue_size"], Value::Null);
    let text = metrics_text(&http, &base).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("{name} is not a gauge"),
            })
    };
    for name in [
        "meter_sync_queue_size",
        "meter_sync_oldest_unsent_age_seconds",
        "meter_sync_quarantined_readings",
        "meter_sync_local_database_size_bytes",
        "meter_sync_readings_table_size_bytes",
    ] {
        assert!(value(name).unwrap().is_nan(), "{name}: {text}");
    }
    // The database's data directory cannot be asked for; the working directory is measured.
    assert!(!text.contains("purpose=\"local_database\""), "{text}");
    assert!(text.contains("purpose=\"working_directory\""), "{text}");
    app.stop().await;
}

/// The meter entity's last result: success, inserted, updated, deleted.
type MeterCounts = Option<(bool, u64, u64, u64)>;

/// One step of the status accuracy property.
#[derive(Debug, Clone)]
enum Op {
    Insert(i64),
    Upload,
    Download,
    /// The remote meter table is renamed away (downloads of meters fail) or back.
    BreakMeters(bool),
    /// The remote readings table is renamed away (uploads fail) or back.
    BreakReadings(bool),
    /// A remote meter is added, or one is deleted.
    RemoteMeter(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..300).prop_map(Op::Insert),
        Just(Op::Upload),
        Just(Op::Download),
        any::<bool>().prop_map(Op::BreakMeters),
        any::<bool>().prop_map(Op::BreakReadings),
        any::<bool>().prop_map(Op::RemoteMeter),
    ]
}

/// 004 property 12 and 003 properties 6 and 7: after any sequence of runs and failures, every
/// reported value equals what the databases say and what the last runs did.
#[test]
fn status_is_accurate_after_any_sequence_of_runs_and_failures() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    crate::support::check_cases(proptest::collection::vec(op(), 1..8), |ops| {
        runtime.block_on(status_case(ops));
    });
}

async fn rename(client: &tokio_postgres::Client, table: &str, away: bool) {
    let (from, to) = if away {
        (table.to_string(), format!("{table}_away"))
    } else {
        (format!("{table}_away"), table.to_string())
    };
    client
        .batch_execute(&format!(
            "do $$ begin if to_regclass('{from}') is not null then alter table {from} rename to {to}; end if; end $$"
        ))
        .await
        .unwrap();
}

async fn status_case(ops: Vec<Op>) {
    let (env, profile) = default_env_with("svc_status_prop", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    let service = Service::new(env.config.clone(), profile.clone()).unwrap();
    let mut minute = 0;
    let mut uploaded_total = 0u64;
    // The last result of each part: (upload success), (entity -> success), meter counts.
    let mut last_upload: Option<bool> = None;
    let mut last_download: Option<(Vec<bool>, MeterCounts)> = None;
    let mut next_meter = 10_000;
    for op in ops {
        match op {
            Op::Insert(n) => {
                insert_local_readings(&local, n, 3, minute).await.unwrap();
                minute += n;
            }
            Op::Upload | Op::Download => {
                let kind = if matches!(op, Op::Upload) {
                    RunKind::Upload
                } else {
                    RunKind::Download
                };
                let result = run_now(&service, kind, Trigger::Cli).await;
                if let Some(upload) = &result.upload {
                    uploaded_total += upload.uploaded;
                    last_upload = Some(upload.success());
                }
                if let Some(download) = &result.download {
                    let meter = result
                        .meter_download
                        .as_ref()
                        .map(|m| (m.success, m.inserted, m.updated, m.deleted));
                    last_download =
                        Some((download.entities.iter().map(|e| e.success).collect(), meter));
                }
            }
            Op::BreakMeters(away) => rename(&remote, "meter", away).await,
            Op::BreakReadings(away) => rename(&remote, "meter_readings", away).await,
            Op::RemoteMeter(true) => {
                next_meter += 1;
                let _ = remote
                    .execute(
                        "insert into meter (id, meter_element_id, tenant_id, name, active) values ($1, 1, 1, 'new meter', true)",
                        &[&next_meter],
                    )
                    .await;
            }
            Op::RemoteMeter(false) => {
                let _ = remote
                    .batch_execute("delete from meter where ctid = (select ctid from meter where tenant_id = 1 limit 1)")
                    .await;
            }
        }
        let status = service.sync_status().await;
        let meter_status = service.meter_sync_status().await.unwrap();
        assert!(!status.is_running && !meter_status.is_syncing);
        assert!(status.local_db_connected && status.remote_db_connected);
        let queue: i64 = local
            .query_one(
                "select count(*) from meter_readings where quarantined_at is null",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(status.queue_size, Some(queue));
        assert_eq!(status.total_records_synced, Some(uploaded_total as i64));
        let active = active_meters(&local).await;
        assert_eq!(status.local_meter_count, Some(active));
        assert_eq!(meter_status.meter_count, active);
        assert_eq!(
            status.local_tenant_count,
            Some(count(&local, "tenant").await)
        );
        let remote_meters = remote
            .query_one("select count(*) from meter where tenant_id = 1", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .ok();
        assert_eq!(status.remote_meter_count, remote_meters);
        assert_eq!(status.remote_tenant_count, Some(1));
        let expected_success = match (&last_upload, &last_download) {
            (None, None) => None,
            (u, d) => Some(
                u.unwrap_or(true) && d.as_ref().is_none_or(|(each, _)| each.iter().all(|s| *s)),
            ),
        };
        assert_eq!(status.last_sync_success, expected_success);
        assert_eq!(
            status.last_sync_error.is_some(),
            expected_success == Some(false)
        );
        match last_download.as_ref().and_then(|d| d.1) {
            Some((success, inserted, updated, deleted)) => {
                assert_eq!(meter_status.last_sync_success, Some(success));
                assert_eq!(meter_status.inserted_count, inserted as i64);
                assert_eq!(meter_status.updated_count, updated as i64);
                assert_eq!(meter_status.deleted_count, deleted as i64);
                assert_eq!(meter_status.last_sync_error.is_some(), !success);
            }
            None => assert_eq!(meter_status.last_sync_at, None),
        }
    }
    // The last results survive a restart: a new service reads them back from sync_logs.
    let before = service.sync_status().await;
    service.shutdown(Duration::from_secs(5)).await;
    let restarted = Service::new(env.config.clone(), profile.clone()).unwrap();
    let after = restarted.sync_status().await;
    assert_eq!(after.last_sync_time, before.last_sync_time);
    assert_eq!(after.last_sync_success, before.last_sync_success);
    assert_eq!(after.last_sync_error, before.last_sync_error);
    assert_eq!(after.total_records_synced, before.total_records_synced);
    restarted.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sync_logs_past_their_retention_are_pruned() {
    let (env, profile) = upload_env("svc_prune", &[("SYNC_LOG_RETENTION_DAYS", "7")]).await;
    let local = env.local.client().await;
    local
        .batch_execute(
            "insert into sync_logs (sync_type, success, timestamp)
             select 'upload', true, now() - make_interval(days => d) + interval '1 hour' from generate_series(0, 10) d",
        )
        .await
        .unwrap();
    let service = Service::new(env.config.clone(), profile).unwrap();
    // Rows 8, 9 and 10 days old (less an hour) are past 7 days; the 7-day one is not yet.
    assert_eq!(service.prune_logs().await.unwrap(), 3);
    assert_eq!(count(&local, "sync_logs").await, 8);
    assert_eq!(service.prune_logs().await.unwrap(), 0);
    service.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn history_lists_each_run_with_its_queue_rate_and_changes() {
    let (env, profile) = default_env_with("svc_history", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    let (app, base) = serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let history = |hours: &'static str| {
        let http = http.clone();
        let url = format!("{base}/api/local/history?hours={hours}");
        async move { get(&http, &url).await }
    };
    let (code, empty) = history("24").await;
    assert_eq!(code, 200);
    assert_eq!(empty["uploads"], serde_json::json!([]));
    assert_eq!(empty["downloads"], serde_json::json!([]));

    // A cycle (upload of 300, download of the fixture), then 120 more readings and an upload.
    insert_local_readings(&local, 300, 3, 0).await.unwrap();
    let (code, _) = post(&http, &format!("{base}/api/local/sync-trigger"), None).await;
    assert_eq!(code, 200);
    insert_local_readings(&local, 120, 3, 1000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _) = post(&http, &format!("{base}/api/local/upload-trigger"), None).await;
    assert_eq!(code, 200);

    let (code, h) = history("24").await;
    assert_eq!(code, 200);
    let uploads = h["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2, "{h:#}");
    let (first, second) = (&uploads[0], &uploads[1]);
    assert_eq!(
        (
            &first["queue_before"],
            &first["queue_after"],
            &first["uploaded"]
        ),
        (&Value::from(300), &Value::from(0), &Value::from(300))
    );
    assert_eq!(
        (
            &second["queue_before"],
            &second["queue_after"],
            &second["uploaded"]
        ),
        (&Value::from(120), &Value::from(0), &Value::from(120))
    );
    // The rate is the upload over the time since the previous run, as sync_logs timed them.
    let rows = local
        .query(
            "select extract(epoch from timestamp)::float8 from sync_logs where sync_type = 'upload' order by timestamp",
            &[],
        )
        .await
        .unwrap();
    let gap = rows[1].get::<_, f64>(0) - rows[0].get::<_, f64>(0);
    let rate = second["rate_per_minute"].as_f64().unwrap();
    assert!(
        (rate - 120.0 * 60.0 / gap).abs() < 1e-6 * rate,
        "{rate} vs a {gap} s gap"
    );
    assert_eq!(first["rate_per_minute"], Value::Null, "no earlier run");

    // The download's entities make one run: their changes summed.
    let downloads = h["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 1, "{h:#}");
    let changed: i64 = local
        .query_one(
            "select sum(inserted + updated + deleted)::int8 from sync_logs where sync_type = 'download'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(changed > 0);
    assert_eq!(downloads[0]["changes"], changed);
    assert_eq!(downloads[0]["entities"], profile.entities.len());
    assert_eq!(downloads[0]["success"], true);

    // Runs older than the window are left out; a window out of range is refused.
    local
        .batch_execute("update sync_logs set timestamp = timestamp - interval '3 hours' where sync_type = 'download'")
        .await
        .unwrap();
    let (_, recent) = history("2").await;
    assert_eq!(recent["downloads"], serde_json::json!([]));
    assert_eq!(recent["uploads"].as_array().unwrap().len(), 2);
    for bad in ["0", "169", "x"] {
        let (code, body) = history(bad).await;
        assert_eq!(code, 400, "hours={bad}: {body}");
    }
    app.stop().await;
}
