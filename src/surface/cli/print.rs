//! The human-readable tables and lines of the commands.

use crate::config::Side;
use crate::engine::download::DownloadReport;
use crate::engine::upload::UploadReport;
use crate::profile::OnMissingKind;
use crate::service::status::SyncStatus;

/// The human-readable download table.
pub fn print_download(report: &DownloadReport) {
    let tenant = report.tenant.as_deref().unwrap_or("?");
    let verdict = if report.success() { "ok" } else { "FAILED" };
    println!(
        "download for tenant {tenant}: {verdict} in {} ms",
        report.duration_ms
    );
    if let Some(error) = &report.error {
        println!("error: {error}");
    }
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  result",
        "entity", "fetched", "inserted", "updated", "deleted", "skipped", "duration"
    );
    for e in &report.entities {
        let result = match &e.error {
            None => "ok".to_string(),
            Some(error) => format!("FAILED: {error}"),
        };
        let deleted = match e.on_missing {
            OnMissingKind::Deactivate => format!("{}*", e.deleted),
            _ => e.deleted.to_string(),
        };
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} ms  {result}",
            e.entity, e.fetched, e.inserted, e.updated, deleted, e.skipped, e.duration_ms
        );
    }
    if report
        .entities
        .iter()
        .any(|e| e.on_missing == OnMissingKind::Deactivate)
    {
        println!("* deactivated (active = false) rather than deleted");
    }
}

/// The human-readable upload report.
pub fn print_upload(report: &UploadReport) {
    let verdict = if report.success() { "ok" } else { "FAILED" };
    println!(
        "upload: {verdict} in {} ms: {} uploaded, {} already on the remote, {} removed locally, {} refused ({} quarantined), {} batches",
        report.duration_ms, report.uploaded, report.deduplicated, report.removed, report.rejected_count, report.quarantined, report.batches
    );
    if let (Some(before), Some(after)) = (report.queue_before, report.queue_after) {
        println!(
            "queue: {} before, {} after; {} quarantined",
            before.size, after.size, after.quarantined
        );
    }
    for r in &report.rejected {
        println!(
            "refused reading {}: {}{}",
            r.id,
            r.error,
            if r.quarantined { " (quarantined)" } else { "" }
        );
    }
    if let Some(error) = &report.error {
        println!("error: {error}");
    }
}
fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human-readable status.
pub fn print_status(s: &SyncStatus) {
    println!("tenant: {}", or_dash(s.tenant_id.as_deref()));
    for (side, up, error) in [
        (Side::Local, s.local_db_connected, &s.local_db_error),
        (Side::Remote, s.remote_db_connected, &s.remote_db_error),
    ] {
        match (up, error) {
            (true, None) => println!("{side} database: connected"),
            (true, Some(e)) => println!("{side} database: connected ({e})"),
            (false, e) => println!("{side} database: UNREACHABLE: {}", or_dash(e.as_deref())),
        }
    }
    match &s.running {
        Some(running) => println!(
            "running: {} since {}",
            running.kind,
            running.since.to_rfc3339()
        ),
        None => println!("running: no"),
    }
    println!(
        "upload queue: {} readings, oldest {}, {} quarantined; {} uploaded in the kept sync_logs",
        or_dash(s.queue_size),
        s.oldest_unsent_age_seconds
            .map_or("-".to_string(), |a| format!("{a:.0} s old")),
        or_dash(s.quarantined_count),
        or_dash(s.total_records_synced)
    );
    println!(
        "meters: {} active locally, {} on the remote; tenants: {} locally, {} on the remote",
        or_dash(s.local_meter_count),
        or_dash(s.remote_meter_count),
        or_dash(s.local_tenant_count),
        or_dash(s.remote_tenant_count)
    );
    match (s.last_sync_time, s.last_sync_success) {
        (Some(at), Some(ok)) => println!(
            "last sync: {} at {}{}",
            if ok { "ok" } else { "FAILED" },
            at.to_rfc3339(),
            s.last_sync_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        _ => println!("last sync: never"),
    }
    for run in s.last_upload.iter().chain(&s.last_download) {
        println!(
            "  {:<22} {:<6} at {} ({} ms) +{} ~{} -{}{}",
            match &run.entity {
                Some(e) => format!("download {e}"),
                None => "upload".to_string(),
            },
            if run.success { "ok" } else { "FAILED" },
            run.timestamp.to_rfc3339(),
            run.duration_ms.unwrap_or(0),
            run.inserted,
            run.updated,
            run.deleted,
            run.error_message
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}
