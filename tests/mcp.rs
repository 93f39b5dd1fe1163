//! MCP: a real session over stdio with a spawned `meter-sync mcp` (initialize, tools/list,
//! every tool called) and over streamable HTTP at `/mcp` of the service.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use meter_sync::fixture::insert_local_readings;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{count, default_env_with};

pub(crate) const TOOLS: [&str; 7] = [
    "get_meter_sync_status",
    "get_sync_logs",
    "get_sync_status",
    "list_meters",
    "trigger_meter_sync",
    "trigger_sync",
    "trigger_upload",
];

/// A JSON-RPC session with a `meter-sync mcp` child over its stdin and stdout.
struct Stdio_ {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    next_id: i64,
}

impl Stdio_ {
    fn spawn(vars: &[(String, String)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sync"))
            .arg("mcp")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Sends a request and returns its response; every line on stdout must be JSON-RPC.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(60), self.stdout.read_line(&mut line))
                    .await
                    .expect("no answer within 60 s")
                    .unwrap();
            assert!(read > 0, "meter-sync mcp closed stdout");
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a non-protocol line ({e}): {line:?}"));
            assert_eq!(message["jsonrpc"], "2.0", "{message}");
            if message["id"] == id {
                return message;
            }
        }
    }
}

pub(crate) fn initialize_params() -> Value {
    json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "meter-sync-test", "version": "1"}
    })
}

/// The structured result of a tool call, and whether it is an error.
fn tool_result(response: &Value) -> (Value, bool) {
    let result = &response["result"];
    assert!(response.get("error").is_none(), "{response}");
    (
        result["structuredContent"].clone(),
        result["isError"] == true,
    )
}

fn text_of(response: &Value) -> String {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_stdio_session_lists_and_calls_every_tool() {
    let (env, _profile) = default_env_with("mcp_stdio", &[("TENANT_ID", "1")]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 150, 3, 0).await.unwrap();
    let mut vars = env.env(&[("TENANT_ID", "1")]);
    vars.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    let mut session = Stdio_::spawn(&vars);

    let init = session.request("initialize", initialize_params()).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "meter-sync", "{init}");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    session
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    let list = session.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: BTreeSet<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOOLS.into_iter().collect());
    for tool in tools {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert!(!tool["description"].as_str().unwrap().is_empty());
    }
    let logs_schema = &tools.iter().find(|t| t["name"] == "get_sync_logs").unwrap()["inputSchema"];
    assert!(
        logs_schema["properties"]["limit"].is_object(),
        "{logs_schema}"
    );
    assert!(
        logs_schema["properties"]["type"].is_object(),
        "{logs_schema}"
    );

    let call = |name: &str, arguments: Value| json!({"name": name, "arguments": arguments});
    let (status, is_error) = tool_result(
        &session
            .request("tools/call", call("get_sync_status", json!({})))
            .await,
    );
    assert!(!is_error);
    assert_eq!(status["queue_size"], 150);
    assert_eq!(status["last_sync_time"], Value::Null);

    let (answer, is_error) = tool_result(
        &session
            .request("tools/call", call("trigger_upload", json!({})))
            .await,
    );
    assert!(!is_error, "{answer}");
    assert_eq!(answer["result"]["uploaded"], 150);
    assert_eq!(count(&local, "meter_readings").await, 0);

    let (answer, is_error) = tool_result(
        &session
            .request("tools/call", call("trigger_meter_sync", json!({})))
            .await,
    );
    assert!(!is_error, "{answer}");
    assert_eq!(answer["result"]["inserted"], 25);

    let (answer, is_error) = tool_result(
        &session
            .request("tools/call", call("trigger_sync", json!({})))
            .await,
    );
    assert!(!is_error, "{answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["result"]["meter_download"]["inserted"], 0);

    let (meter, _) = tool_result(
        &session
            .request("tools/call", call("get_meter_sync_status", json!({})))
            .await,
    );
    assert_eq!(meter["meter_count"], 25);
    assert_eq!(meter["last_sync_success"], true);

    let (logs, _) = tool_result(
        &session
            .request(
                "tools/call",
                call("get_sync_logs", json!({"limit": 2, "type": "upload"})),
            )
            .await,
    );
    let logs = logs["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|l| l["sync_type"] == "upload"));

    let (meters, _) = tool_result(
        &session
            .request(
                "tools/call",
                call("list_meters", json!({"active": true, "limit": 5})),
            )
            .await,
    );
    assert_eq!(meters["count"], 5);
    assert_eq!(meters["meters"][0]["active"], true);
    assert!(meters["meters"][0]["name"].is_string());

    // Bad arguments: a tool error with a message, never a crash.
    let bad = session
        .request(
            "tools/call",
            call("get_sync_logs", json!({"limit": 100000})),
        )
        .await;
    assert!(tool_result(&bad).1);
    assert!(
        text_of(&bad).contains("limit=100000 is out of range"),
        "{bad}"
    );
    let bad = session
        .request(
            "tools/call",
            call("get_sync_logs", json!({"type": "sideways"})),
        )
        .await;
    assert!(text_of(&bad).contains("is not known"), "{bad}");

    // Closing stdin ends the session and the process cleanly.
    drop(session.stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), session.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Posts one JSON-RPC message to `/mcp`; the answer may be JSON or a server-sent event stream.
pub(crate) async fn mcp_post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    token: Option<&str>,
    message: Value,
) -> (u16, Option<String>, Option<Value>) {
    let mut request = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .body(message.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).ok().or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
    });
    (status, session, body)
}

#[tokio::test]
async fn the_service_serves_the_tools_over_streamable_http_with_the_token_rule() {
    let token = "mcp-token-0123456789abcdef";
    let (env, profile) =
        default_env_with("mcp_http", &[("TENANT_ID", "1"), ("API_TOKEN", token)]).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 40, 2, 0).await.unwrap();
    let (app, base) = crate::service::serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/mcp");
    let init =
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()});

    let (code, _, _) = mcp_post(&http, &url, None, None, init.clone()).await;
    assert_eq!(code, 401);
    let (code, session, body) = mcp_post(&http, &url, None, Some(token), init).await;
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(body.unwrap()["result"]["serverInfo"]["name"], "meter-sync");
    let session = session.as_deref();
    let (code, _, _) = mcp_post(
        &http,
        &url,
        session,
        Some(token),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(code == 202 || code == 200, "{code}");
    let (_, _, list) = mcp_post(
        &http,
        &url,
        session,
        Some(token),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
    )
    .await;
    let list = list.unwrap();
    let names: BTreeSet<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, TOOLS.into_iter().collect());

    // A trigger during a run is a tool error with the API's message.
    let blocker = crate::support::block_remote_readings(&env).await;
    let running = app
        .service
        .trigger(
            meter_sync::data::runlock::RunKind::Upload,
            meter_sync::data::runlock::Trigger::Api,
        )
        .await
        .unwrap();
    let (_, _, refused) = mcp_post(
        &http,
        &url,
        session,
        Some(token),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "trigger_sync", "arguments": {}}}),
    )
    .await;
    let refused = refused.unwrap();
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(
        text_of(&refused).starts_with("an upload is already running (started by api at "),
        "{refused}"
    );
    blocker.batch_execute("commit").await.unwrap();
    let result = running.wait().await.unwrap();
    assert_eq!(result.upload.as_ref().unwrap().uploaded, 40);

    let (_, _, status) = mcp_post(
        &http,
        &url,
        session,
        Some(token),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "get_sync_status", "arguments": {}}}),
    )
    .await;
    let status = status.unwrap();
    assert_eq!(
        status["result"]["structuredContent"]["queue_size"], 0,
        "{status}"
    );
    app.stop().await;
}
