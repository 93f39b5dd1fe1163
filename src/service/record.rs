//! Recording a finished run, in one place for every trigger: its `sync_logs` rows and its
//! summary log lines (spec 004 properties 9, 11 and 14). The engines only return reports.
//! A failure to record is logged, never fatal: the data moved whether or not it is recorded.

use crate::data::pg::Pools;
use crate::data::synclog::{self, LogEntry, SyncType};
use crate::engine::download::{DownloadReport, EntityReport};
use crate::engine::upload::UploadReport;

/// How many new, changed, removed or skipped rows are logged (and kept in `sync_logs`
/// details) one by one per entity.
const LOGGED_ROWS: usize = 100;

/// Records an upload: one `sync_logs` row and the summary line.
pub async fn upload(pools: &Pools, report: &UploadReport) {
    tracing::info!(
        uploaded = report.uploaded,
        deduplicated = report.deduplicated,
        removed = report.removed,
        rejected = report.rejected_count,
        quarantined = report.quarantined,
        batches = report.batches,
        queue_after = report.queue_after.map(|q| q.size),
        duration_ms = report.duration_ms,
        "upload finished"
    );
    let entry = LogEntry {
        sync_type: SyncType::Upload,
        entity: None,
        success: report.success(),
        records_processed: (report.uploaded + report.deduplicated + report.rejected_count) as i64,
        inserted: report.uploaded as i64,
        updated: 0,
        deleted: report.removed as i64,
        skipped: report.rejected_count as i64,
        error_message: report.error.clone(),
        duration_ms: report.duration_ms as i64,
        details: Some(serde_json::json!({
            "deduplicated": report.deduplicated,
            "quarantined": report.quarantined,
            "batches": report.batches,
            "purged": report.purged,
            "queue_before": report.queue_before,
            "queue_after": report.queue_after,
            "rejected": report.rejected.iter().take(100).collect::<Vec<_>>(),
        })),
    };
    write(pools, &[entry], "upload").await;
}

/// Records a download: the lines of every applied entity, one `sync_logs` row per entity.
pub async fn download(pools: &Pools, report: &DownloadReport) {
    for entity in report.entities.iter().filter(|e| e.success) {
        log_entity(entity);
    }
    tracing::info!(
        success = report.success(),
        duration_ms = report.duration_ms,
        "download finished"
    );
    let entries: Vec<LogEntry> = report
        .entities
        .iter()
        .map(|e| LogEntry {
            sync_type: SyncType::Download,
            entity: Some(e.entity.clone()),
            success: e.success,
            records_processed: e.fetched as i64,
            inserted: e.inserted as i64,
            updated: e.updated as i64,
            deleted: e.deleted as i64,
            skipped: e.skipped as i64,
            error_message: e.error.clone(),
            duration_ms: e.duration_ms as i64,
            details: Some(serde_json::json!({
                "tenant": report.tenant,
                "on_missing": e.on_missing,
                "new_rows": e.new_rows.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "changed_rows": e.changed_rows.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "removed_keys": e.removed_keys.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
                "skipped_keys": e.skipped_keys.iter().take(LOGGED_ROWS).collect::<Vec<_>>(),
            })),
        })
        .collect();
    write(pools, &entries, "download").await;
}

async fn write(pools: &Pools, entries: &[LogEntry], what: &str) {
    let result = async {
        let client = pools.local().await?;
        synclog::record(&**client, entries).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the {what} in sync_logs");
    }
}

/// Log lines of spec 004 properties 9, 11 and 14: counts, new rows with key and name, changed
/// rows with the changed columns, skipped rows with their keys. Row values are never logged.
fn log_entity(e: &EntityReport) {
    tracing::info!(
        entity = %e.entity, fetched = e.fetched, inserted = e.inserted, updated = e.updated,
        deleted = e.deleted, on_missing = %e.on_missing, skipped = e.skipped, duration_ms = e.duration_ms,
        "entity synced"
    );
    for row in e.new_rows.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?row.key, name = row.name.as_deref().unwrap_or(""), "new row");
    }
    for row in e.changed_rows.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?row.key, changed = ?row.columns, "row updated");
    }
    for key in e.removed_keys.iter().take(LOGGED_ROWS) {
        tracing::info!(entity = %e.entity, key = ?key, on_missing = %e.on_missing, "row gone remotely");
    }
    let listed = e.new_rows.len().min(LOGGED_ROWS) + e.changed_rows.len().min(LOGGED_ROWS);
    let total = (e.inserted + e.updated) as usize;
    if total > listed {
        tracing::info!(entity = %e.entity, not_listed = total - listed, "more new or updated rows than logged one by one");
    }
    if e.skipped > 0 {
        let keys: Vec<&Vec<String>> = e.skipped_keys.iter().take(20).collect();
        tracing::warn!(entity = %e.entity, count = e.skipped, keys = ?keys, "rows skipped: a referenced row is missing locally");
    }
}
