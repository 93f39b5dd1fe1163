//! Secrets never leave: both database passwords and `API_TOKEN` appear in no HTTP answer, MCP
//! answer, log line (text and JSON), `sync_logs` row, queue row or CLI output, through runs that
//! fail on both sides: a quarantined reading and an entity error with the right passwords, then
//! the wrong remote password.

use std::time::Duration;

use meter_sync::pgcluster::free_port;
use serde_json::{json, Value};

use crate::check::meter_sync;
use crate::mcp::{initialize_params, mcp_post, TOOLS};
use crate::support::{clusters, default_env_with, rows_text, TestEnv};

const LOCAL_ROLE: &str = "ms_secret_local";
const REMOTE_ROLE: &str = "ms_secret_remote";
const LOCAL_PASSWORD: &str = "local-Pw-7f3a91c2e5d4";
const REMOTE_PASSWORD: &str = "remote-Pw-4b8d2e6f19a0";
const WRONG_PASSWORD: &str = "wrong-Pw-9c1e5a7d33b8";
const TOKEN: &str = "token-Tk-2a6c8e0f4b71d3";
const SECRETS: [&str; 4] = [LOCAL_PASSWORD, REMOTE_PASSWORD, WRONG_PASSWORD, TOKEN];

/// Everything the service said, labelled by where it came from.
#[derive(Default)]
struct Said(Vec<(String, String)>);

impl Said {
    fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.0.push((source.into(), text.into()));
    }

    fn contains(&self, source: &str, needle: &str) -> bool {
        self.0
            .iter()
            .any(|(s, t)| s.starts_with(source) && t.contains(needle))
    }
}

/// A role that must log in with its password on `cluster`.
async fn password_role(cluster: &meter_sync::pgcluster::PgCluster, role: &str, password: &str) {
    let admin = crate::support::connect(cluster, "postgres").await;
    admin
        .batch_execute(&format!(
            "create role {role} superuser login password '{password}'"
        ))
        .await
        .unwrap();
    cluster.require_password(role).unwrap();
    // The reload is asynchronous: wait until a wrong password is refused.
    let mut config = cluster.connect_config("postgres");
    config.user(role).password("not-the-password");
    for _ in 0..100 {
        if config.connect(tokio_postgres::NoTls).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{role}: pg_hba.conf reload did not take effect");
}

fn vars(
    env: &TestEnv,
    remote_password: &str,
    port: u16,
    log_format: &str,
) -> Vec<(String, String)> {
    env.env(&[
        ("TENANT_ID", "1"),
        ("POSTGRES_SYNC_USER", LOCAL_ROLE),
        ("POSTGRES_SYNC_PASSWORD", LOCAL_PASSWORD),
        ("POSTGRES_CLIENT_USER", REMOTE_ROLE),
        ("POSTGRES_CLIENT_PASSWORD", remote_password),
        ("API_TOKEN", TOKEN),
        ("API_PORT", &port.to_string()),
        ("MAX_ROW_FAILURES", "1"),
        ("MAX_CONNECTION_RETRIES", "1"),
        ("SYNC_INTERVAL_SECONDS", "3600"),
        ("METER_SYNC_CRON", "0 0 1 1 *"),
        ("LOG_LEVEL", "debug"),
        ("LOG_FORMAT", log_format),
    ])
}

async fn send(request: reqwest::RequestBuilder, token: Option<&str>) -> String {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.unwrap();
    let headers = format!("{:?}", response.headers());
    format!("{headers}\n{}", response.text().await.unwrap())
}

/// Runs `meter-sync run`, waits for its start-up cycle to end, asks every route and MCP tool,
/// stops it with SIGTERM, and records all of it. Returns the status after the start-up cycle.
async fn serve_and_ask(
    vars: Vec<(String, String)>,
    port: u16,
    said: &mut Said,
    label: &str,
) -> Value {
    // Logs go to files: a pipe nobody reads until the end would fill and stall the service.
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
        .arg("run")
        .env_clear()
        .envs(vars)
        .current_dir(std::env::temp_dir())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut status = Value::Null;
    for _ in 0..300 {
        if let Ok(response) = http
            .get(format!("{base}/api/local/sync-status"))
            .send()
            .await
        {
            status = response.json().await.unwrap_or(Value::Null);
            if status["last_sync_time"].is_string() && status["is_running"] == false {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status["last_sync_time"].is_string(),
        "{label}: no start-up cycle: {status}"
    );

    for path in [
        "/api/local/sync-status",
        "/api/local/meter-sync-status",
        "/api/local/sync-logs?limit=1000",
        "/health",
        "/ready",
        "/metrics",
        "/api/openapi.json",
        "/",
    ] {
        said.add(
            format!("http {label} GET {path}"),
            send(http.get(format!("{base}{path}")), None).await,
        );
    }
    for path in [
        "/api/local/sync-trigger",
        "/api/local/upload-trigger",
        "/api/local/meter-sync-trigger",
    ] {
        let url = format!("{base}{path}");
        said.add(
            format!("http {label} POST {path} no token"),
            send(http.post(&url), None).await,
        );
        said.add(
            format!("http {label} POST {path} bad token"),
            send(http.post(&url), Some("not-the-token-0123456789")).await,
        );
        said.add(
            format!("http {label} POST {path}"),
            send(http.post(&url), Some(TOKEN)).await,
        );
    }

    let url = format!("{base}/mcp");
    let init =
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()});
    let (_, _, refused) = mcp_post(&http, &url, None, None, init.clone()).await;
    said.add(format!("mcp {label} no token"), format!("{refused:?}"));
    let (code, session, body) = mcp_post(&http, &url, None, Some(TOKEN), init).await;
    assert_eq!(code, 200, "{label}: {body:?}");
    let session = session.as_deref();
    mcp_post(
        &http,
        &url,
        session,
        Some(TOKEN),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    for (n, tool) in TOOLS.iter().enumerate() {
        let call = json!({"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}});
        let (_, _, answer) = mcp_post(&http, &url, session, Some(TOKEN), call).await;
        said.add(
            format!("mcp {label} {tool}"),
            answer.map(|a| a.to_string()).unwrap_or_default(),
        );
    }

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the service stops on SIGTERM")
        .unwrap();
    for (name, path) in [("stdout", &stdout), ("stderr", &stderr)] {
        said.add(
            format!("log {label} {name}"),
            std::fs::read_to_string(path).unwrap(),
        );
    }
    status
}

/// Runs each CLI command and records its output.
async fn cli(vars: Vec<(String, String)>, commands: &[&[&str]], said: &mut Said, label: &str) {
    for args in commands {
        let vars = vars.clone();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            meter_sync(&vars, &args)
        })
        .await
        .unwrap();
        said.add(format!("cli {label} {args:?} exit {code} stdout"), out);
        said.add(format!("cli {label} {args:?} stderr"), err);
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_answer_log_row_or_output_of_failing_runs() {
    let c = clusters();
    password_role(&c.local, LOCAL_ROLE, LOCAL_PASSWORD).await;
    password_role(&c.remote, REMOTE_ROLE, REMOTE_PASSWORD).await;
    let (env, _) = default_env_with("secrets", &[]).await;
    let local = env.local.client().await;
    let remote = env.remote.client().await;
    meter_sync::fixture::insert_local_readings(&local, 50, 2, 0)
        .await
        .unwrap();
    // The central refuses one reading (quarantined after one try) and lost a table the profile
    // mirrors (an entity error).
    remote
        .batch_execute(
            "alter table meter_readings add constraint no_negative check (value >= 0);
             alter table register rename to register_retired;",
        )
        .await
        .unwrap();
    local
        .batch_execute(
            "insert into meter_readings (meter_id, timestamp, value, unit)
             select meter_id, now(), -1, unit from meter_readings limit 1",
        )
        .await
        .unwrap();

    let mut said = Said::default();
    let commands: &[&[&str]] = &[
        &["check"],
        &["check", "--json"],
        &["once"],
        &["once", "--json"],
        &["upload", "--json"],
        &["download"],
        &["status"],
        &["status", "--json"],
        &["quarantine", "list"],
        &["quarantine", "list", "--json"],
    ];

    // Right passwords: a reading quarantined, an entity failing.
    let port = free_port().unwrap();
    let status = serve_and_ask(
        vars(&env, REMOTE_PASSWORD, port, "json"),
        port,
        &mut said,
        "right",
    )
    .await;
    assert_eq!(status["quarantined_count"], 1, "{status}");
    assert_eq!(status["last_sync_success"], false, "{status}");
    assert!(
        said.contains("http right GET /api/local/sync-logs", "register"),
        "the entity error is shown"
    );
    cli(
        vars(&env, REMOTE_PASSWORD, port, "text"),
        commands,
        &mut said,
        "right",
    )
    .await;

    // The wrong remote password: every remote part fails.
    let port = free_port().unwrap();
    let status = serve_and_ask(
        vars(&env, WRONG_PASSWORD, port, "text"),
        port,
        &mut said,
        "wrong",
    )
    .await;
    assert_eq!(status["remote_db_connected"], false, "{status}");
    cli(
        vars(&env, WRONG_PASSWORD, port, "json"),
        commands,
        &mut said,
        "wrong",
    )
    .await;
    assert!(
        said.contains("cli wrong [\"check\"]", "password authentication failed"),
        "the wrong password is reported"
    );
    assert!(said.contains("log wrong stderr", "password authentication failed"));
    assert!(
        said.contains("log right stderr", "{\""),
        "JSON log lines were written"
    );

    for query in [
        "select row_to_json(l)::text from sync_logs l",
        "select row_to_json(r)::text from meter_readings r",
    ] {
        for row in rows_text(&local, query).await {
            said.add(format!("row {query}"), row);
        }
    }
    assert!(said.contains(
        "row select row_to_json(l)",
        "password authentication failed"
    ));

    for (source, text) in &said.0 {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{source} shows a secret ({}...):\n{text}",
                &secret[..8]
            );
        }
    }
}
