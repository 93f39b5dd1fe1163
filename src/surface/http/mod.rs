//! The HTTP API (axum): status and triggers with 003's and 004's shapes, sync logs, health,
//! readiness, Prometheus metrics, the OpenAPI document and Swagger UI (served offline).
//! Every error is JSON with a message; a 5xx never carries a database detail or a secret.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{Config, Side};
use crate::data::runlock::{RunKind, Running, Trigger};
use crate::data::synclog::{self, LogRow};
use crate::service::cycle::{EntitySyncResult, SyncCycleResult};
use crate::service::status::{MeterSyncStatus, SyncStatus};
use crate::service::{Service, TriggerError};

mod guard;
mod history;
mod page;
pub mod tls;

pub use guard::{Guard, PAGE_POLICY};

const DEFAULT_LOG_LIMIT: i64 = 50;
/// Request bodies larger than this are refused (only `/mcp` takes a body: JSON-RPC messages).
const BODY_LIMIT: usize = 1024 * 1024;

/// Refuses to expose the API beyond this machine without a token, or with the token in the
/// clear: beyond loopback both `API_TOKEN` and HTTPS (`API_TLS_CERT`, `API_TLS_KEY`) are needed.
pub fn check_bind(config: &Config) -> Result<(), String> {
    let loopback = match config.api_host {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if loopback {
        return Ok(());
    }
    let mut missing = Vec::new();
    if config.api_token.is_none() {
        missing.push(
            "API_TOKEN (at least 16 characters; POST requests then need `Authorization: Bearer <token>`)",
        );
    }
    if config.api_tls.is_none() {
        missing.push(
            "API_TLS_CERT and API_TLS_KEY (PEM files: the API then serves HTTPS only, so the token never travels in the clear)",
        );
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "API_HOST={} would expose the API (which can trigger runs) beyond this machine; set {}, \
             or bind API_HOST=127.0.0.1 (a reverse proxy on this machine can serve it to others)",
            config.api_host,
            missing.join(" and ")
        ))
    }
}

/// A JSON error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// A short machine-readable code (`busy`, `unauthorized`, `bad_request`, ...).
    pub error: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The run in progress, for `busy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                success: false,
                error,
                message: message.into(),
                running: None,
            },
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A database failure: logged in full, answered without detail.
    fn database(what: &str, error: &crate::data::pg::PgError) -> Self {
        tracing::warn!(error = %error, "{what}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!(
                "{what}: the {} database is unavailable; see the service log",
                error.side()
            ),
        )
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Busy(running) => {
                let mut error = Self::new(StatusCode::CONFLICT, "busy", running.to_string());
                error.body.running = Some(running);
                error
            }
            TriggerError::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The answer to a trigger (003's shape: success, message, result).
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerResponse<T> {
    pub success: bool,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

/// Trigger options.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TriggerQuery {
    /// `false`: answer 202 as soon as the run has started instead of waiting for its result.
    pub wait: Option<bool>,
}

/// `/api/local/sync-logs` options.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// Rows to return, newest first: 1 to 1000 (default 50).
    pub limit: Option<i64>,
    /// `upload` or `download`.
    pub sync_type: Option<String>,
}

/// `/api/local/sync-logs` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogsResponse {
    pub logs: Vec<LogRow>,
}

/// `/health` and `/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_db_connected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_db_connected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meter-sync",
        description = "Status and triggers of a meter-sync site agent. POST requests need `Authorization: Bearer <API_TOKEN>` when a token is configured."
    ),
    paths(
        sync_status,
        sync_trigger,
        upload_trigger,
        meter_sync_status,
        meter_sync_trigger,
        sync_logs,
        history::history,
        health,
        ready,
        metrics
    ),
    components(schemas(
        ErrorBody,
        SyncStatus,
        MeterSyncStatus,
        EntitySyncResult,
        SyncCycleResult,
        LogRow,
        synclog::History,
        synclog::UploadPoint,
        synclog::DownloadPoint,
        Health,
        Running,
        RunKind,
        Trigger
    ))
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router of the service listening on `port`.
pub fn router(service: Service, port: u16) -> Router {
    let guard = Arc::new(Guard::new(service.config(), port));
    Router::new()
        .route("/api/local/sync-status", get(sync_status))
        .route("/api/local/sync-trigger", post(sync_trigger))
        .route("/api/local/upload-trigger", post(upload_trigger))
        .route("/api/local/meter-sync-status", get(meter_sync_status))
        .route("/api/local/meter-sync-trigger", post(meter_sync_trigger))
        .route("/api/local/sync-logs", get(sync_logs))
        .route("/api/local/history", get(history::history))
        .route("/", get(page::page))
        .route("/assets/{file}", get(page::asset))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/api/openapi.json", openapi()))
        .nest_service("/mcp", crate::surface::mcp::http_service(service.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(service.clone(), authorize))
        .layer(middleware::from_fn_with_state(guard, guard::guard))
        .with_state(service)
}

/// With `API_TOKEN` set, every request that can change something needs the bearer token.
async fn authorize(State(service): State<Service>, request: Request, next: Next) -> Response {
    // No route takes a body of this size (MCP messages included): refuse it before reading it.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {BODY_LIMIT} bytes"),
        )
        .into_response();
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if let (false, Some(token)) = (safe, &service.config().api_token) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = token.expose().as_bytes();
        // Constant time for equal lengths; a length mismatch is refused the same way.
        let matches = given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected));
        if !matches {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this request needs `Authorization: Bearer <API_TOKEN>`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// A handler that panicked: a JSON 500 without detail (the panic message goes to the log).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %message, "an HTTP handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred; see the service log",
    )
    .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {}; see /api/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Starts a run and, unless `wait=false`, waits for its result.
async fn start(
    service: &Service,
    kind: RunKind,
    query: Result<Query<TriggerQuery>, QueryRejection>,
) -> Result<Option<Arc<SyncCycleResult>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let handle = service.trigger(kind, Trigger::Api).await?;
    if query.wait == Some(false) {
        return Ok(None);
    }
    match handle.wait().await {
        Ok(result) => Ok(Some(result)),
        Err(cut) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            cut.to_string(),
        )),
    }
}

fn started(kind: RunKind) -> Response {
    let body = TriggerResponse::<()> {
        success: true,
        message: format!("{kind} started; follow it at /api/local/sync-status"),
        result: None,
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// 004's `SyncStatus`.
#[utoipa::path(get, path = "/api/local/sync-status", responses((status = 200, body = SyncStatus)))]
async fn sync_status(State(service): State<Service>) -> Json<SyncStatus> {
    Json(service.sync_status().await)
}

/// Runs a full cycle (upload, then every download) now.
#[utoipa::path(post, path = "/api/local/sync-trigger", params(TriggerQuery), responses(
    (status = 200, description = "the run's result", body = TriggerResponse<SyncCycleResult>),
    (status = 202, description = "started (wait=false)"),
    (status = 401, body = ErrorBody), (status = 409, description = "a run is in progress", body = ErrorBody)))]
async fn sync_trigger(
    State(service): State<Service>,
    query: Result<Query<TriggerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    cycle_response(&service, RunKind::Cycle, query).await
}

/// Uploads the queued readings now.
#[utoipa::path(post, path = "/api/local/upload-trigger", params(TriggerQuery), responses(
    (status = 200, description = "the run's result", body = TriggerResponse<SyncCycleResult>),
    (status = 202, description = "started (wait=false)"),
    (status = 401, body = ErrorBody), (status = 409, description = "a run is in progress", body = ErrorBody)))]
async fn upload_trigger(
    State(service): State<Service>,
    query: Result<Query<TriggerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    cycle_response(&service, RunKind::Upload, query).await
}

async fn cycle_response(
    service: &Service,
    kind: RunKind,
    query: Result<Query<TriggerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Some(result) = start(service, kind, query).await? else {
        return Ok(started(kind));
    };
    let body = TriggerResponse {
        success: result.success,
        message: result.message(),
        result: Some(result),
    };
    Ok(Json(body).into_response())
}

/// 003's meter sync status.
#[utoipa::path(get, path = "/api/local/meter-sync-status", responses(
    (status = 200, body = MeterSyncStatus), (status = 503, body = ErrorBody)))]
async fn meter_sync_status(
    State(service): State<Service>,
) -> Result<Json<MeterSyncStatus>, ApiError> {
    service
        .meter_sync_status()
        .await
        .map(Json)
        .map_err(|e| ApiError::database("meter sync status", &e))
}

/// Runs the download (every entity, the meters included) now; 003's answer shape.
#[utoipa::path(post, path = "/api/local/meter-sync-trigger", params(TriggerQuery), responses(
    (status = 200, description = "the meter entity's result", body = TriggerResponse<EntitySyncResult>),
    (status = 202, description = "started (wait=false)"),
    (status = 401, body = ErrorBody), (status = 409, description = "a run is in progress", body = ErrorBody)))]
async fn meter_sync_trigger(
    State(service): State<Service>,
    query: Result<Query<TriggerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Some(result) = start(&service, RunKind::Download, query).await? else {
        return Ok(started(RunKind::Download));
    };
    let body = TriggerResponse {
        success: result.success,
        message: result.message(),
        result: result.meter_download.clone(),
    };
    Ok(Json(body).into_response())
}

/// The newest `sync_logs` rows.
#[utoipa::path(get, path = "/api/local/sync-logs", params(LogsQuery), responses(
    (status = 200, body = LogsResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sync_logs(
    State(service): State<Service>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogsResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let query = synclog::LogsQuery::new(
        query.limit.unwrap_or(DEFAULT_LOG_LIMIT),
        query.sync_type.as_deref(),
        "sync_type",
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let logs = service
        .sync_logs(query)
        .await
        .map_err(|e| ApiError::database("sync logs", &e))?;
    Ok(Json(LogsResponse { logs }))
}

/// The process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        local_db_connected: None,
        remote_db_connected: None,
        message: None,
    })
}

async fn answers(pool: &deadpool_postgres::Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("select 1").await.is_ok(),
        Err(_) => false,
    }
}

/// Both databases answer.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn ready(State(service): State<Service>) -> Response {
    let pools = service.pools();
    let (local, remote) = tokio::join!(answers(&pools.local), answers(&pools.remote));
    let down: Vec<&str> = [(Side::Local, local), (Side::Remote, remote)]
        .iter()
        .filter(|(_, up)| !up)
        .map(|(side, _)| side.as_str())
        .collect();
    let body = Health {
        status: if down.is_empty() {
            "ready"
        } else {
            "not_ready"
        },
        local_db_connected: Some(local),
        remote_db_connected: Some(remote),
        message: (!down.is_empty()).then(|| format!("{} database unreachable", down.join(" and "))),
    };
    let status = if down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(service): State<Service>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics_text().await,
    )
        .into_response()
}
