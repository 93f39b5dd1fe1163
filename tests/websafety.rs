//! Browser safety of the local API against a running service: foreign `Host` names refused on
//! every route (DNS rebinding), cross-origin changes and `/mcp` requests refused (`Origin`,
//! `Sec-Fetch-Site`), the operator's allowed names and origins accepted, plain curl-style
//! requests unchanged, and the hardening headers on every answer.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::support::{count, default_env_with};

/// Every route, with its method.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/local/sync-status"),
    ("GET", "/api/local/meter-sync-status"),
    ("GET", "/api/local/sync-logs"),
    ("GET", "/"),
    ("GET", "/assets/page.js"),
    ("GET", "/assets/page.css"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("GET", "/docs/"),
    ("GET", "/no-such-route"),
    ("POST", "/api/local/sync-trigger"),
    ("POST", "/api/local/upload-trigger"),
    ("POST", "/api/local/meter-sync-trigger"),
    ("POST", "/mcp"),
];

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut request = http.request(method.parse().unwrap(), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// An MCP `initialize` request's headers and body.
fn initialize() -> (Vec<(&'static str, &'static str)>, String) {
    let message = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "websafety-test", "version": "1"}}});
    (
        vec![
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ],
        message.to_string(),
    )
}

async fn runs(env: &crate::support::TestEnv) -> i64 {
    count(&env.local.client().await, "sync_logs").await
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_every_route_and_the_own_names_are_not() {
    let (env, profile) = default_env_with(
        "web_hosts",
        &[
            ("TENANT_ID", "1"),
            ("API_ALLOWED_HOSTS", "meter.site.lan, proxy.lan:8443"),
        ],
    )
    .await;
    let (app, base) = crate::service::serve(&env, &profile).await;
    let port = app.addr.port();
    let http = reqwest::Client::new();

    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("localhost.evil.example:{port}"),
        format!("localhost:{}", port + 1),
        "proxy.lan:80".to_string(),
        format!("10.1.2.3:{port}"),
    ] {
        for (method, path) in ROUTES {
            let answer = send(
                &http,
                method,
                &format!("{base}{path}"),
                &[("host", &host)],
                None,
            )
            .await;
            assert_eq!(
                answer.status, 403,
                "{method} {path} with Host {host}: {:?}",
                answer.body
            );
            assert_eq!(answer.body["error"], "forbidden_host", "{method} {path}");
            let message = answer.body["message"].as_str().unwrap();
            assert!(message.contains("API_ALLOWED_HOSTS"), "{message}");
            assert_eq!(answer.headers["x-frame-options"], "DENY");
        }
    }
    assert_eq!(runs(&env).await, 0, "a refused trigger ran");

    let url = format!("{base}/api/local/sync-status");
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "meter.site.lan".to_string(),
        "meter.site.lan:1234".to_string(),
        "proxy.lan:8443".to_string(),
    ] {
        let answer = send(&http, "GET", &url, &[("host", &host)], None).await;
        assert_eq!(answer.status, 200, "Host {host}: {:?}", answer.body);
        assert_eq!(answer.body["tenant_id"], "1", "Host {host}");
    }
    app.stop().await;
}

#[tokio::test]
async fn cross_origin_changes_are_refused_and_plain_or_own_origin_requests_run() {
    let (env, profile) = default_env_with(
        "web_origins",
        &[
            ("TENANT_ID", "1"),
            ("API_ALLOWED_HOSTS", "meter.site.lan"),
            ("API_ALLOWED_ORIGINS", "https://meter.site.lan"),
        ],
    )
    .await;
    let (app, base) = crate::service::serve(&env, &profile).await;
    let port = app.addr.port();
    let own = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let trigger = format!("{base}/api/local/meter-sync-trigger");
    let mcp = format!("{base}/mcp");
    let (mcp_headers, init) = initialize();

    // What a page of another site can make a browser send.
    let foreign: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        vec![("origin", "null")],
        vec![
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-site"),
        ],
        vec![("origin", &own), ("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "https://127.0.0.1")],
        vec![("origin", "http://meter.site.lan")],
    ];
    for headers in &foreign {
        let answer = send(&http, "POST", &trigger, headers, Some("{}".into())).await;
        assert_eq!(answer.status, 403, "{headers:?}: {:?}", answer.body);
        assert_eq!(answer.body["error"], "forbidden_origin", "{headers:?}");
        let mut with_mcp = mcp_headers.clone();
        with_mcp.extend(headers.iter().filter(|(n, _)| *n != "content-type"));
        let answer = send(&http, "POST", &mcp, &with_mcp, Some(init.clone())).await;
        assert_eq!(answer.status, 403, "/mcp {headers:?}: {:?}", answer.body);
        assert_eq!(answer.body["error"], "forbidden_origin", "/mcp {headers:?}");
        let answer = send(&http, "GET", &mcp, headers, None).await;
        assert_eq!(answer.status, 403, "GET /mcp {headers:?}");
    }
    assert_eq!(runs(&env).await, 0, "a refused trigger ran");
    // Reads are not changes: the browser keeps them from the foreign page (no CORS header).
    let answer = send(
        &http,
        "GET",
        &format!("{base}/api/local/sync-status"),
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(!answer.headers.contains_key("access-control-allow-origin"));

    // curl, the page itself, and the operator's proxy origin all run the sync.
    let host = format!("meter.site.lan:{port}");
    let accepted: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("content-type", "text/plain")],
        vec![("origin", &own), ("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
        vec![
            ("host", &host),
            ("origin", "https://meter.site.lan"),
            ("sec-fetch-site", "same-origin"),
        ],
        vec![
            ("host", &host),
            ("origin", "https://meter.site.lan:443"),
            ("sec-fetch-site", "cross-site"),
        ],
    ];
    for (n, headers) in accepted.iter().enumerate() {
        let answer = send(&http, "POST", &trigger, headers, None).await;
        assert_eq!(answer.status, 200, "{headers:?}: {:?}", answer.body);
        assert_eq!(answer.body["success"], true, "{headers:?}");
        assert_eq!(
            runs(&env).await,
            4 * (n as i64 + 1),
            "one download (4 entities) per trigger"
        );
        let mut with_mcp = mcp_headers.clone();
        with_mcp.extend(headers.iter().filter(|(n, _)| *n != "content-type"));
        let answer = send(&http, "POST", &mcp, &with_mcp, Some(init.clone())).await;
        assert_eq!(answer.status, 200, "/mcp {headers:?}: {:?}", answer.body);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_valid_token_does_not_let_a_foreign_page_in() {
    let token = "web-token-0123456789abcdef";
    let (env, profile) =
        default_env_with("web_token", &[("TENANT_ID", "1"), ("API_TOKEN", token)]).await;
    let (app, base) = crate::service::serve(&env, &profile).await;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {token}");
    let url = format!("{base}/api/local/upload-trigger");
    let answer = send(
        &http,
        "POST",
        &url,
        &[
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    let answer = send(
        &http,
        "POST",
        &url,
        &[("origin", "http://evil.example")],
        None,
    )
    .await;
    assert_eq!(answer.status, 403, "the origin is checked before the token");
    let answer = send(&http, "POST", &url, &[], None).await;
    assert_eq!(answer.status, 401, "the token rule still holds");
    let answer = send(&http, "POST", &url, &[("authorization", &bearer)], None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(runs(&env).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_the_hardening_headers_and_the_page_allows_no_inline_code() {
    let (env, profile) = default_env_with("web_headers", &[("TENANT_ID", "1")]).await;
    let (app, base) = crate::service::serve(&env, &profile).await;
    let http = reqwest::Client::new();
    for (method, path) in ROUTES.iter().filter(|(m, _)| *m == "GET") {
        let answer = send(&http, method, &format!("{base}{path}"), &[], None).await;
        assert!(
            answer.status < 500 || *path == "/ready",
            "{path}: {}",
            answer.status
        );
        assert_eq!(answer.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(
            answer.headers["x-content-type-options"], "nosniff",
            "{path}"
        );
        assert_eq!(answer.headers["referrer-policy"], "no-referrer", "{path}");
        let policy = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
    }
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/page.js", "text/javascript"),
        ("/assets/page.css", "text/css"),
    ] {
        let answer = send(&http, "GET", &format!("{base}{path}"), &[], None).await;
        assert_eq!(answer.status, 200, "{path}");
        let content_type = answer.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let policy = answer.headers["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(policy.contains(part), "{path}: {policy} lacks {part}");
        }
    }
    // The page itself has nothing the policy would block.
    let page = send(&http, "GET", &format!("{base}/"), &[], None).await;
    let html = page.body.as_str().unwrap();
    assert!(!html.contains("<style"), "inline style element");
    assert!(!html.contains(" style="), "inline style attribute");
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload="),
        "inline handler"
    );
    // Two scripts, both files of the service: the chart library and the page's own.
    assert_eq!(html.matches("<script").count(), 2);
    assert!(html.contains(r#"<script src="/assets/uPlot.iife.min.js" defer></script>"#));
    assert!(html.contains(r#"<script src="/assets/page.js" defer></script>"#));
    for asset in ["/assets/uPlot.iife.min.js", "/assets/uPlot.min.css"] {
        let file = send(&http, "GET", &format!("{base}{asset}"), &[], None).await;
        assert_eq!(file.status, 200, "{asset}");
    }
    app.stop().await;
}
