//! What the service reports: 004's `SyncStatus` and 003's meter sync status, computed afresh
//! from both databases on every query (so they are accurate at every moment, 004 property 12,
//! 003 properties 6 and 7) with the last results read back from `sync_logs` (so they survive a
//! restart). The API, MCP, web page, metrics and `meter-sync status` all report these.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use crate::config::{Config, Side};
use crate::data::pg::{PgError, Pools};
use crate::data::runlock::{self, Running};
use crate::data::synclog::{self, LogRow, SyncType};
use crate::profile::{EntitySpec, OnMissing, Profile, TenantId};

/// The local meter count of spec 003 (property 7): active rows of the profile's meter entity
/// (`meter`, or `meters` in the 004 layout); all rows when the entity is never deactivated.
/// `None` when the profile has no meter entity.
pub async fn meter_count(
    client: &impl GenericClient,
    profile: &Profile,
) -> Result<Option<i64>, PgError> {
    let Some(entity) = profile.meter_entity() else {
        return Ok(None);
    };
    let active = match &entity.on_missing {
        OnMissing::Deactivate { column } => Some(column),
        _ => None,
    };
    let row = client
        .query_one(&crate::data::sql::count_active(&entity.table, active), &[])
        .await
        .map_err(|e| PgError::query(Side::Local, format!("count {}", entity.table), e))?;
    Ok(Some(row.get(0)))
}

/// The latest run of each part (the upload, each downloaded entity), as the status shows it:
/// a `sync_logs` row without its id and details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LastRun {
    pub sync_type: String,
    pub entity: Option<String>,
    pub success: bool,
    pub timestamp: DateTime<Utc>,
    pub duration_ms: Option<i32>,
    pub error_message: Option<String>,
    pub records_processed: i32,
    pub inserted: i32,
    pub updated: i32,
    pub deleted: i32,
    pub skipped: i32,
}

impl From<LogRow> for LastRun {
    fn from(r: LogRow) -> Self {
        Self {
            sync_type: r.sync_type,
            entity: r.entity,
            success: r.success,
            timestamp: r.timestamp,
            duration_ms: r.duration_ms,
            error_message: r.error_message,
            records_processed: r.records_processed,
            inserted: r.inserted,
            updated: r.updated,
            deleted: r.deleted,
            skipped: r.skipped,
        }
    }
}

/// 004's `SyncStatus` (snake_case), with the queue details and the last result of each part.
/// A value that cannot be measured because its database is unreachable is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SyncStatus {
    /// A run (here or in another process on this local database) is in progress.
    pub is_running: bool,
    /// What runs, since when and who started it.
    pub running: Option<Running>,
    /// When the latest recorded part (upload or an entity's download) ran; null: never synced.
    pub last_sync_time: Option<DateTime<Utc>>,
    /// Whether the latest result of every part (the upload and each entity) succeeded.
    pub last_sync_success: Option<bool>,
    /// The first error among those latest results.
    pub last_sync_error: Option<String>,
    /// Readings waiting to be uploaded (quarantined ones not included).
    pub queue_size: Option<i64>,
    /// Age of the oldest waiting reading, by its timestamp.
    pub oldest_unsent_age_seconds: Option<f64>,
    /// Readings kept back after `MAX_ROW_FAILURES` refusals (`meter-sync quarantine list`).
    pub quarantined_count: Option<i64>,
    /// Readings uploaded, summed over the upload runs kept in `sync_logs`.
    pub total_records_synced: Option<i64>,
    /// Active local meters.
    pub local_meter_count: Option<i64>,
    /// The site tenant's meters on the remote.
    pub remote_meter_count: Option<i64>,
    pub local_tenant_count: Option<i64>,
    /// The site tenant's rows on the remote (1 when the remote knows the tenant).
    pub remote_tenant_count: Option<i64>,
    pub local_db_connected: bool,
    pub remote_db_connected: bool,
    /// Why a database is not connected (address and reason; never a secret).
    pub local_db_error: Option<String>,
    pub remote_db_error: Option<String>,
    /// The site's tenant, when it can be settled.
    pub tenant_id: Option<String>,
    /// The latest upload run.
    pub last_upload: Option<LastRun>,
    /// The latest download of each entity of the profile, in profile order.
    pub last_download: Vec<LastRun>,
    pub checked_at: DateTime<Utc>,
}

/// 003's meter sync status, exactly: the latest download of the meter entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MeterSyncStatus {
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_success: Option<bool>,
    pub last_sync_error: Option<String>,
    pub inserted_count: i64,
    pub updated_count: i64,
    pub deleted_count: i64,
    /// Active local meters.
    pub meter_count: i64,
    /// A download (alone or in a cycle) is in progress.
    pub is_syncing: bool,
}

/// What the local database says.
struct LocalPart {
    queue: Option<crate::engine::upload::QueueStats>,
    total_uploaded: i64,
    meter_count: Option<i64>,
    tenant_count: Option<i64>,
    tenant: Option<TenantId>,
    runs: Vec<LastRun>,
    holder: Option<Running>,
}

async fn local_part(
    client: &impl GenericClient,
    config: &Config,
    profile: &Profile,
) -> Result<LocalPart, PgError> {
    let queue = match &profile.readings {
        Some(r) => Some(crate::engine::upload::queue_stats(client, r).await?),
        None => None,
    };
    let total_uploaded = synclog::total_uploaded(client).await?;
    let tenant_count = match profile.tenant_entity() {
        Some(entity) => Some(count(client, Side::Local, entity, None).await?),
        None => None,
    };
    let tenant = crate::data::tenant::resolve(client, config.tenant_id.as_ref(), profile)
        .await
        .ok();
    let mut runs: Vec<LastRun> = synclog::latest_per_part(client)
        .await?
        .into_iter()
        .map(LastRun::from)
        .collect();
    runs.retain(|r| {
        r.sync_type == SyncType::Upload.as_str()
            || r.entity
                .as_deref()
                .is_some_and(|e| profile.entity(e).is_some())
    });
    Ok(LocalPart {
        queue,
        total_uploaded,
        meter_count: meter_count(client, profile).await?,
        tenant_count,
        tenant,
        runs,
        holder: runlock::holder(client).await?,
    })
}

/// Rows of an entity's table, locally (`tenant` None) or its tenant's rows remotely.
async fn count(
    client: &impl GenericClient,
    side: Side,
    entity: &EntitySpec,
    tenant: Option<&TenantId>,
) -> Result<i64, PgError> {
    let statement = match tenant {
        None => crate::data::sql::count_active(&entity.table, None),
        Some(tenant) => format!(
            "select count(*) from ({}) as rows",
            crate::data::sql::remote_select(entity, tenant, false, &[])
        ),
    };
    // One round trip on the unnamed statement: safe behind a pooler in transaction mode.
    let row = client
        .query_typed_one(&statement, &[])
        .await
        .map_err(|e| PgError::query(side, format!("count {}", entity.name), e))?;
    Ok(row.get(0))
}

/// Computes the status now. `running` is this process's run, if any; a run of another process
/// on the same local database is found through its run lock.
pub async fn sync_status(
    pools: &Pools,
    config: &Config,
    profile: &Profile,
    running: Option<Running>,
) -> SyncStatus {
    let local = async {
        let client = pools.local().await?;
        local_part(&**client, config, profile).await
    }
    .await;
    let (local, local_db_error) = match local {
        Ok(part) => (Some(part), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let tenant = local
        .as_ref()
        .and_then(|l| l.tenant.clone())
        .or_else(|| config.tenant_id.clone());
    // Each count on its own: a missing remote table is not a lost connection.
    // Bounded: a stalled link must not hang the status (the page asks every few seconds).
    let limit = config
        .pool
        .connection_timeout
        .max(std::time::Duration::from_secs(1))
        * 2;
    let remote = tokio::time::timeout(limit, async {
        match pools.remote().await {
            Ok(client) => {
                let mut errors = Vec::new();
                let mut measure = async |entity: Option<&EntitySpec>| {
                    let (Some(tenant), Some(entity)) = (&tenant, entity) else {
                        return None;
                    };
                    count(&**client, Side::Remote, entity, Some(tenant))
                        .await
                        .map_err(|e| errors.push(e.to_string()))
                        .ok()
                };
                let meters = measure(profile.meter_entity()).await;
                let tenants = measure(profile.tenant_entity()).await;
                let connected = client.simple_query("select 1").await.is_ok();
                let error = (!errors.is_empty()).then(|| errors.join("; "));
                (connected, (meters, tenants), error)
            }
            Err(e) => (false, (None, None), Some(e.to_string())),
        }
    })
    .await;
    let (remote_db_connected, remote_counts, remote_db_error) = remote.unwrap_or_else(|_| {
        (
            false,
            (None, None),
            Some(format!(
                "remote database did not answer within {} s",
                limit.as_secs()
            )),
        )
    });
    let running = running.or_else(|| local.as_ref().and_then(|l| l.holder.clone()));
    let runs = local.as_ref().map(|l| l.runs.as_slice()).unwrap_or(&[]);
    let last_upload = runs
        .iter()
        .find(|r| r.sync_type == SyncType::Upload.as_str())
        .cloned();
    let last_download: Vec<LastRun> = profile
        .entities
        .iter()
        .filter_map(|e| {
            runs.iter()
                .find(|r| {
                    r.sync_type == SyncType::Download.as_str()
                        && r.entity.as_deref() == Some(e.name.as_str())
                })
                .cloned()
        })
        .collect();
    let latest: Vec<&LastRun> = last_upload.iter().chain(&last_download).collect();
    let last_sync_error = latest.iter().find_map(|r| {
        r.error_message.as_ref().map(|m| match &r.entity {
            Some(entity) => format!("download {entity}: {m}"),
            None => format!("upload: {m}"),
        })
    });
    SyncStatus {
        is_running: running.is_some(),
        running,
        last_sync_time: latest.iter().map(|r| r.timestamp).max(),
        last_sync_success: (!latest.is_empty()).then(|| latest.iter().all(|r| r.success)),
        last_sync_error,
        queue_size: local.as_ref().and_then(|l| l.queue.map(|q| q.size)),
        oldest_unsent_age_seconds: local
            .as_ref()
            .and_then(|l| l.queue.and_then(|q| q.oldest_age_seconds)),
        quarantined_count: local.as_ref().and_then(|l| l.queue.map(|q| q.quarantined)),
        total_records_synced: local.as_ref().map(|l| l.total_uploaded),
        local_meter_count: local.as_ref().and_then(|l| l.meter_count),
        remote_meter_count: remote_counts.0,
        local_tenant_count: local.as_ref().and_then(|l| l.tenant_count),
        remote_tenant_count: remote_counts.1,
        local_db_connected: local.is_some(),
        remote_db_connected,
        local_db_error,
        remote_db_error,
        tenant_id: tenant.map(|t| t.to_string()),
        last_upload,
        last_download,
        checked_at: Utc::now(),
    }
}

/// 003's meter sync status, from the local database. `running` as for [`sync_status`].
pub async fn meter_sync_status(
    pools: &Pools,
    profile: &Profile,
    running: Option<Running>,
) -> Result<MeterSyncStatus, PgError> {
    let client = pools.local().await?;
    let running = match running {
        Some(r) => Some(r),
        None => runlock::holder(&**client).await?,
    };
    let names: Vec<String> = profile
        .meter_entity()
        .map(|e| vec![e.name.to_string()])
        .unwrap_or_default();
    let last = synclog::latest_download(&**client, &names).await?;
    Ok(MeterSyncStatus {
        last_sync_at: last.as_ref().map(|r| r.timestamp),
        last_sync_success: last.as_ref().map(|r| r.success),
        last_sync_error: last.as_ref().and_then(|r| r.error_message.clone()),
        inserted_count: last.as_ref().map_or(0, |r| i64::from(r.inserted)),
        updated_count: last.as_ref().map_or(0, |r| i64::from(r.updated)),
        deleted_count: last.as_ref().map_or(0, |r| i64::from(r.deleted)),
        meter_count: meter_count(&**client, profile).await?.unwrap_or(0),
        is_syncing: running.is_some_and(|r| r.kind.downloads()),
    })
}

/// Why the meters could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum MetersError {
    #[error(transparent)]
    Limit(#[from] synclog::QueryError),
    #[error("the profile has no meter table")]
    NoMeterTable,
    #[error("the {table} table has no active column in this profile: omit `active`")]
    NoActiveColumn { table: String },
    #[error(transparent)]
    Database(#[from] PgError),
}

/// The local meters as JSON objects, in key order; `active` filters on the deactivation column.
pub async fn list_meters(
    pools: &Pools,
    profile: &Profile,
    active: Option<bool>,
    limit: i64,
) -> Result<Vec<serde_json::Value>, MetersError> {
    let limit = synclog::check_limit(limit)?;
    let entity = profile.meter_entity().ok_or(MetersError::NoMeterTable)?;
    let column = match &entity.on_missing {
        OnMissing::Deactivate { column } => Some(column),
        _ => None,
    };
    if active.is_some() && column.is_none() {
        return Err(MetersError::NoActiveColumn {
            table: entity.table.to_string(),
        });
    }
    let client = pools.local().await?;
    let rows = client
        .query(
            &crate::data::sql::list_rows(entity, column),
            &[&active, &limit],
        )
        .await
        .map_err(|e| PgError::query(Side::Local, "list meters", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
