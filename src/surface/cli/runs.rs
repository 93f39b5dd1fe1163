//! The commands that run a sync: `once`, `upload`, `download`, through the service like every
//! other trigger, and `mcp` over stdio.

use std::process::ExitCode;

use super::print::{print_download, print_upload};
use super::{readings, usage_error};
use crate::config::Config;
use crate::data::runlock::{RunKind, Trigger};
use crate::error::Exit;
use crate::profile::Profile;
use crate::service::cycle::{RunRequest, SyncCycleResult};
use crate::service::Service;
use crate::surface::progress::Progress;

pub(super) async fn download(
    config: Config,
    profile: Profile,
    entities: Vec<String>,
    full: bool,
    allow_mass_delete: bool,
    json: bool,
) -> ExitCode {
    if let Some(unknown) = entities.iter().find(|n| profile.entity(n).is_none()) {
        let known: Vec<String> = profile
            .entities
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        eprintln!(
            "meter-sync: unknown entity `{unknown}`; the profile has: {}",
            known.join(", ")
        );
        return Exit::Usage.into();
    }
    let count = if entities.is_empty() {
        profile.entities.len()
    } else {
        entities.len()
    };
    let run = RunRequest {
        kind: RunKind::Download,
        only: entities,
        full,
        allow_mass_delete,
    };
    let service = match new_service(config, profile) {
        Ok(service) => service,
        Err(code) => return code,
    };
    let progress = Progress::download(count);
    let report = match run_part(service, run, progress, |r| r.download.clone()).await {
        Ok(report) => report,
        Err(code) => return code,
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["success"] = report.success().into();
        value["sync_result"] = report.sync_result();
        println!("{value:#}");
    } else {
        print_download(&report);
    }
    Exit::from_success(report.success()).into()
}

/// [`run_once`] with `progress` shown until it ends, returning the report of its one part.
async fn run_part<T>(
    service: Service,
    run: RunRequest,
    progress: Progress,
    part: impl FnOnce(&SyncCycleResult) -> Option<T>,
) -> Result<T, ExitCode> {
    let result = run_once(service, run).await;
    progress.finish();
    part(&*result?).ok_or_else(|| Exit::Failed.into())
}

/// The service of a one-shot command (connections are made lazily); a usage error when the
/// configuration cannot make its pools.
fn new_service(config: Config, profile: Profile) -> Result<Service, ExitCode> {
    Service::new(config, profile).map_err(usage_error)
}

/// Runs `run` through the service, as the API and the scheduler do (single flight, run lock,
/// deadline, recording), then closes its pools. The exit code (with the reason printed) when
/// it could not start or was cut short.
async fn run_once(
    service: Service,
    run: RunRequest,
) -> Result<std::sync::Arc<SyncCycleResult>, ExitCode> {
    let result = match service.start(run, Trigger::Cli).await {
        Ok(handle) => handle.wait().await,
        Err(e) => {
            eprintln!("meter-sync: {e}");
            return Err(Exit::Failed.into());
        }
    };
    service.shutdown(std::time::Duration::ZERO).await;
    result.map_err(|cut| {
        eprintln!("meter-sync: {cut}");
        Exit::Failed.into()
    })
}

pub(super) async fn upload(config: Config, profile: Profile, json: bool) -> ExitCode {
    if !config.upload_enabled {
        eprintln!("meter-sync: uploads are disabled on this site (UPLOAD_ENABLED=false)");
        return Exit::Usage.into();
    }
    if let Err(code) = readings(&profile) {
        return code;
    }
    let service = match new_service(config, profile) {
        Ok(service) => service,
        Err(code) => return code,
    };
    // The progress bar polls the queue on the run's own pool.
    let progress = match readings(service.profile()) {
        Ok(readings) => Progress::upload(service.pools(), readings).await,
        Err(code) => return code,
    };
    let run = RunRequest::of(RunKind::Upload);
    let report = match run_part(service, run, progress, |r| r.upload.clone()).await {
        Ok(report) => report,
        Err(code) => return code,
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["success"] = report.success().into();
        println!("{value:#}");
    } else {
        print_upload(&report);
    }
    Exit::from_success(report.success()).into()
}

pub(super) async fn mcp(config: Config, profile: Profile) -> ExitCode {
    let service = match new_service(config, profile) {
        Ok(service) => service,
        Err(code) => return code,
    };
    match crate::surface::mcp::serve_stdio(service).await {
        Ok(()) => Exit::Ok.into(),
        Err(message) => {
            tracing::error!("{message}");
            Exit::Failed.into()
        }
    }
}

pub(super) async fn once(config: Config, profile: Profile, json: bool) -> ExitCode {
    let service = match new_service(config, profile) {
        Ok(service) => service,
        Err(code) => return code,
    };
    let result = match run_once(service, RunRequest::of(RunKind::Cycle)).await {
        Ok(result) => result,
        Err(code) => return code,
    };
    if json {
        println!("{:#}", serde_json::to_value(&*result).unwrap_or_default());
    } else {
        if let Some(upload) = &result.upload {
            print_upload(upload);
        }
        if let Some(download) = &result.download {
            print_download(download);
        }
        println!(
            "cycle: {} in {} ms",
            if result.success { "ok" } else { "FAILED" },
            result.total_duration_ms
        );
    }
    Exit::from_success(result.success).into()
}
