//! The MCP server (official Rust SDK, `rmcp`): the same triggers and status as the HTTP API as
//! tools, over stdio (`meter-sync mcp`: nothing but protocol on stdout) and over streamable
//! HTTP at `/mcp` of `meter-sync run` (same token rule as the API).

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde::{Deserialize, Serialize};

use crate::data::runlock::{RunKind, Trigger};
use crate::data::synclog::LogsQuery;
use crate::service::cycle::SyncCycleResult;
use crate::service::status::MetersError;
use crate::service::Service;

/// `get_sync_logs` arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct LogsArgs {
    /// Rows to return, newest first: 1 to 1000 (default 20).
    pub limit: Option<u32>,
    /// Only rows of this type: "upload" or "download".
    #[serde(rename = "type")]
    pub sync_type: Option<String>,
}

/// `list_meters` arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct MetersArgs {
    /// true: active meters only; false: inactive ones only; absent: all.
    pub active: Option<bool>,
    /// Rows to return, in key order: 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// The MCP handler: a thin adapter over [`Service`].
#[derive(Clone)]
pub struct McpServer {
    service: Service,
    tool_router: ToolRouter<Self>,
}

fn structured(value: impl Serialize) -> Result<CallToolResult, ErrorData> {
    serde_json::to_value(value)
        .map(CallToolResult::structured)
        .map_err(|e| ErrorData::internal_error(format!("cannot encode the result: {e}"), None))
}

/// A tool error the model can read (not a protocol error).
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

#[derive(Serialize)]
struct TriggerAnswer<T> {
    success: bool,
    message: String,
    result: T,
}

#[tool_router]
impl McpServer {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            tool_router: Self::tool_router(),
        }
    }

    async fn run(&self, kind: RunKind) -> Result<Arc<SyncCycleResult>, CallToolResult> {
        let handle = self
            .service
            .trigger(kind, Trigger::Mcp)
            .await
            .map_err(|e| tool_error(e.to_string()))?;
        handle
            .wait()
            .await
            .map_err(|cut| tool_error(cut.to_string()))
    }

    async fn answer<T: Serialize>(
        &self,
        kind: RunKind,
        pick: impl FnOnce(&SyncCycleResult) -> T,
    ) -> Result<CallToolResult, ErrorData> {
        match self.run(kind).await {
            Ok(result) => {
                let answer = TriggerAnswer {
                    success: result.success,
                    message: result.message(),
                    result: pick(&result),
                };
                let mut call = structured(answer)?;
                call.is_error = Some(!result.success);
                Ok(call)
            }
            Err(refused) => Ok(refused),
        }
    }

    #[tool(
        description = "Mirror the configuration tables (tenant, meters, registers, ...) from the central database now and return the meter table's result: success, inserted, updated, deleted, error, timestamp. Refused while another run is in progress."
    )]
    async fn trigger_meter_sync(&self) -> Result<CallToolResult, ErrorData> {
        self.answer(RunKind::Download, |r| r.meter_download.clone())
            .await
    }

    #[tool(
        description = "Run a full sync cycle now: upload the queued meter readings, then mirror every configuration table. Returns the cycle result (upload report, meter and tenant results, every entity). Refused while another run is in progress."
    )]
    async fn trigger_sync(&self) -> Result<CallToolResult, ErrorData> {
        self.answer(RunKind::Cycle, |r| r.clone()).await
    }

    #[tool(
        description = "Upload the queued meter readings to the central database now (the whole queue, batch after batch). Returns uploaded, already-present, removed, refused and quarantined counts. Refused while another run is in progress."
    )]
    async fn trigger_upload(&self) -> Result<CallToolResult, ErrorData> {
        self.answer(RunKind::Upload, |r| r.upload.clone()).await
    }

    #[tool(
        description = "The sync status now: running run, last sync time/success/error, upload queue size, oldest unsent reading age, quarantined readings, totals, local and remote meter and tenant counts, database connectivity."
    )]
    async fn get_sync_status(&self) -> Result<CallToolResult, ErrorData> {
        structured(self.service.sync_status().await)
    }

    #[tool(
        description = "The meter sync status: last sync time, success, error, inserted/updated/deleted counts of the last meter sync, active local meter count, whether a sync is running."
    )]
    async fn get_meter_sync_status(&self) -> Result<CallToolResult, ErrorData> {
        match self.service.meter_sync_status().await {
            Ok(status) => structured(status),
            Err(e) => Ok(tool_error(format!("cannot read the status: {e}"))),
        }
    }

    #[tool(
        description = "The newest sync log rows (one per upload run and per downloaded entity), optionally of one type (upload or download)."
    )]
    async fn get_sync_logs(
        &self,
        Parameters(args): Parameters<LogsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let query = match LogsQuery::new(
            i64::from(args.limit.unwrap_or(20)),
            args.sync_type.as_deref(),
            "type",
        ) {
            Ok(query) => query,
            Err(e) => return Ok(tool_error(e.to_string())),
        };
        let logs = self.service.sync_logs(query).await;
        match logs {
            Ok(logs) => structured(serde_json::json!({ "logs": logs })),
            Err(e) => Ok(tool_error(format!("cannot read the sync logs: {e}"))),
        }
    }

    #[tool(
        description = "The local meters (as mirrored from the central database), optionally only active or only inactive ones, in key order."
    )]
    async fn list_meters(
        &self,
        Parameters(args): Parameters<MetersArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let meters = self
            .service
            .list_meters(args.active, i64::from(args.limit.unwrap_or(100)))
            .await;
        match meters {
            Ok(meters) => {
                structured(serde_json::json!({ "count": meters.len(), "meters": meters }))
            }
            Err(e @ MetersError::Database(_)) => {
                Ok(tool_error(format!("cannot list the meters: {e}")))
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(rmcp::model::Implementation::new(
                "meter-sync",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "meter-sync keeps a metering site's PostgreSQL in step with the central one: \
                 readings up, configuration down. Read the status with get_sync_status; trigger \
                 runs with trigger_sync, trigger_upload or trigger_meter_sync (one run at a time).",
            )
    }
}

/// The streamable HTTP service mounted at `/mcp`.
pub fn http_service(service: Service) -> StreamableHttpService<McpServer, LocalSessionManager> {
    // The router's guard checks Host and Origin on /mcp as on every route, with the operator's
    // API_ALLOWED_HOSTS and API_ALLOWED_ORIGINS, so rmcp's own fixed host list is not used.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(McpServer::new(service.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// `meter-sync mcp`: serves stdio until the client closes it.
pub async fn serve_stdio(service: Service) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = McpServer::new(service.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP session failed to start: {e}"))?;
    let ended = running.waiting().await;
    service.shutdown(service.config().shutdown_grace).await;
    ended
        .map(|_| ())
        .map_err(|e| format!("MCP session ended with an error: {e}"))
}
