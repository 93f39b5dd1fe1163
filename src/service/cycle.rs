//! One sync run: the upload, then the download of every entity in dependency order. A part
//! that fails is logged and recorded, and the next part still runs (004 properties 10, 15).

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Config;
use crate::data::pg::{Backoff, Pools};
use crate::data::runlock::RunKind;
use crate::engine::download::{self, DownloadReport, DownloadRequest};
use crate::engine::upload::{self, UploadReport};
use crate::engine::Deadline;
use crate::profile::{Profile, ReadingsSpec, METER_ENTITIES, TENANT_ENTITIES};

/// The result of one entity's download in the shape of 003's `MeterSyncResult` (also used for
/// the tenant, as 004's `TenantSyncResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntitySyncResult {
    pub success: bool,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub error: Option<String>,
    pub timestamp: DateTime<Utc>,
}

impl EntitySyncResult {
    /// The result of the first of `names` the download ran; a run-level failure counts.
    pub fn from_report(report: &DownloadReport, names: &[&str]) -> Option<Self> {
        let entity = names.iter().find_map(|n| report.entity(n))?;
        Some(Self {
            success: entity.success,
            inserted: entity.inserted,
            updated: entity.updated,
            deleted: entity.deleted,
            error: entity.error.clone().or_else(|| report.error.clone()),
            timestamp: report.started_at,
        })
    }
}

/// One run (004's `SyncCycleResult`, snake_case): the parts that ran, with full reports.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SyncCycleResult {
    pub kind: RunKind,
    /// True when every part that ran succeeded.
    pub success: bool,
    #[schema(value_type = Option<Object>)]
    pub upload: Option<UploadReport>,
    pub meter_download: Option<EntitySyncResult>,
    pub tenant_download: Option<EntitySyncResult>,
    /// Every entity's download, in order.
    #[schema(value_type = Option<Object>)]
    pub download: Option<DownloadReport>,
    pub total_duration_ms: u64,
    pub timestamp: DateTime<Utc>,
}

impl SyncCycleResult {
    /// What the run did, in a sentence (the `message` of a trigger's answer).
    pub fn message(&self) -> String {
        match self.first_error() {
            None => format!("{} finished in {} ms", self.kind, self.total_duration_ms),
            Some(error) => format!("{} finished with errors: {error}", self.kind),
        }
    }

    /// The first error of the parts that ran.
    pub fn first_error(&self) -> Option<String> {
        let upload = self
            .upload
            .as_ref()
            .and_then(|u| u.error.as_ref().map(|e| format!("upload: {e}")));
        upload.or_else(|| {
            self.download
                .as_ref()
                .and_then(|d| d.first_error().map(|e| format!("download: {e}")))
        })
    }
}

/// The upload settings of a configuration.
pub fn upload_request<'a>(
    config: &'a Config,
    profile: &'a Profile,
    readings: &'a ReadingsSpec,
) -> upload::UploadRequest<'a> {
    upload::UploadRequest {
        readings,
        tenant: config.tenant_id.as_ref(),
        profile,
        batch_size: config.batch_size,
        max_batches: config.max_batches_per_run,
        workers: config.upload_workers_for(config.batch_size),
        connect: Backoff::connection(&config.retry),
        retry: Backoff::query(&config.retry),
        max_row_failures: config.max_row_failures,
        retention_days: config.reading_retention_days,
        deadline: Deadline::from_config(config),
    }
}

/// The download settings of a configuration.
pub fn download_request<'a>(
    config: &'a Config,
    profile: &'a Profile,
    only: &'a [String],
    full: bool,
) -> DownloadRequest<'a> {
    DownloadRequest {
        profile,
        tenant: config.tenant_id.as_ref(),
        only,
        backoff: Backoff::connection(&config.retry),
        full,
        guard: config.delete_guard,
        deadline: Deadline::from_config(config),
    }
}

/// A run to start: its kind and, for a download, which entities and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub kind: RunKind,
    /// Entity names to download; empty: all of them.
    pub only: Vec<String>,
    /// Compare every row (`download --full`).
    pub full: bool,
    /// Lift the mass-delete guard for this run (`download --allow-mass-delete`).
    pub allow_mass_delete: bool,
}

impl RunRequest {
    /// A run of `kind` with the configured defaults.
    pub fn of(kind: RunKind) -> Self {
        Self {
            kind,
            only: Vec::new(),
            full: false,
            allow_mass_delete: false,
        }
    }
}

/// Runs one upload and records it.
pub async fn upload(pools: &Pools, request: upload::UploadRequest<'_>) -> UploadReport {
    let report = upload::run(pools, request).await;
    crate::service::record::upload(pools, &report).await;
    report
}

/// Runs one download and records it.
pub async fn download(pools: &Pools, request: DownloadRequest<'_>) -> DownloadReport {
    let report = download::run(pools, request).await;
    crate::service::record::download(pools, &report).await;
    report
}

/// Runs the parts of `run`, recording each. Never fails as a whole: every failure is in the
/// result.
pub async fn run(
    pools: &Pools,
    config: &Config,
    profile: &Profile,
    run: &RunRequest,
) -> SyncCycleResult {
    let kind = run.kind;
    let clock = Instant::now();
    let timestamp = Utc::now();
    tracing::info!(kind = ?kind, "sync run started");
    // One limit for the whole run: the download gets what the upload left of it.
    let deadline = Deadline::from_config(config);
    let upload = match (&profile.readings, kind.uploads() && config.upload_enabled) {
        (Some(readings), true) => {
            let request = upload::UploadRequest {
                deadline,
                ..upload_request(config, profile, readings)
            };
            Some(upload(pools, request).await)
        }
        _ => None,
    };
    let download = if kind.downloads() {
        let mut request = DownloadRequest {
            deadline,
            ..download_request(config, profile, &run.only, run.full)
        };
        request.guard.allowed |= run.allow_mass_delete;
        Some(download(pools, request).await)
    } else {
        None
    };
    let success = upload.as_ref().is_none_or(UploadReport::success)
        && download.as_ref().is_none_or(DownloadReport::success);
    let result = SyncCycleResult {
        kind,
        success,
        meter_download: download
            .as_ref()
            .and_then(|d| EntitySyncResult::from_report(d, &METER_ENTITIES)),
        tenant_download: download
            .as_ref()
            .and_then(|d| EntitySyncResult::from_report(d, &TENANT_ENTITIES)),
        upload,
        download,
        total_duration_ms: clock.elapsed().as_millis() as u64,
        timestamp,
    };
    match result.first_error() {
        None => tracing::info!(
            kind = ?kind,
            duration_ms = result.total_duration_ms,
            "sync run finished"
        ),
        Some(error) => tracing::warn!(
            kind = ?kind,
            duration_ms = result.total_duration_ms,
            error = %error,
            "sync run finished with errors"
        ),
    }
    result
}
