//! Least privilege on the central database: `deploy/remote-grants.sql` as shipped, with the
//! agent's role for upload, download and the cycle, and the read-only role for a download-only
//! site.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use meter_sync::data::runlock::{RunKind, Trigger};
use meter_sync::fixture::insert_local_readings;
use meter_sync::service::Service;

use crate::support::{count, default_env_with, rows_text, run_now, TestEnv, READINGS_MULTISET};

const GRANTS: &str = include_str!("../deploy/remote-grants.sql");

static ROLES: AtomicU32 = AtomicU32::new(0);

/// Applies the shipped grants with role names of this test (roles are cluster-wide); returns
/// the agent's and the reader's names.
async fn grant(env: &TestEnv) -> (String, String) {
    let n = ROLES.fetch_add(1, Ordering::SeqCst);
    let agent = format!("agent_{}_{n}", std::process::id());
    let reader = format!("reader_{}_{n}", std::process::id());
    let script = GRANTS
        .replace("meter_sync_agent", &agent)
        .replace("meter_sync_reader", &reader);
    env.remote
        .client()
        .await
        .batch_execute(&script)
        .await
        .unwrap();
    (agent, reader)
}

fn service_as(
    env: &TestEnv,
    profile: &meter_sync::profile::Profile,
    user: &str,
    upload: bool,
) -> Service {
    let mut config = env.config.clone();
    config.remote.user = user.to_string();
    config.upload_enabled = upload;
    Service::new(config, profile.clone()).unwrap()
}

#[tokio::test]
async fn the_agent_role_uploads_downloads_and_runs_the_cycle() {
    let (env, profile) = default_env_with("priv_agent", &[("TENANT_ID", "1")]).await;
    let (agent, _) = grant(&env).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 500, 5, 0).await.unwrap();
    let original = rows_text(&local, READINGS_MULTISET).await;
    let service = service_as(&env, &profile, &agent, true);
    let result = run_now(&service, RunKind::Cycle, Trigger::Cli).await;
    assert!(result.success, "{:?}", result.first_error());
    assert_eq!(result.upload.as_ref().unwrap().uploaded, 500);
    assert_eq!(result.meter_download.as_ref().unwrap().inserted, 25);
    // A resend goes through the stage (TEMPORARY) and the dedupe (SELECT): still allowed.
    insert_local_readings(&local, 500, 5, 0).await.unwrap();
    let again = run_now(&service, RunKind::Upload, Trigger::Cli).await;
    let upload = again.upload.as_ref().unwrap();
    assert!(upload.success(), "{:?}", upload.error);
    assert_eq!((upload.uploaded, upload.deduplicated), (0, 500));
    let remote = env.remote.client().await;
    assert_eq!(rows_text(&remote, READINGS_MULTISET).await, original);
    let status = service.sync_status().await;
    assert_eq!(status.remote_meter_count, Some(25));
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_read_only_role_downloads_with_uploads_disabled_and_a_refused_upload_loses_nothing() {
    let (env, profile) = default_env_with("priv_reader", &[("TENANT_ID", "1")]).await;
    let (_, reader) = grant(&env).await;
    let local = env.local.client().await;
    insert_local_readings(&local, 100, 5, 0).await.unwrap();
    let service = service_as(&env, &profile, &reader, false);
    let result = run_now(&service, RunKind::Cycle, Trigger::Cli).await;
    assert!(result.success, "{:?}", result.first_error());
    assert!(result.upload.is_none());
    assert_eq!(result.meter_download.as_ref().unwrap().inserted, 25);
    assert_eq!(count(&local, "meter_readings").await, 100);
    service.shutdown(Duration::from_secs(5)).await;

    // Uploading anyway with that role: a clear permission error, every reading still queued.
    let service = service_as(&env, &profile, &reader, true);
    let result = run_now(&service, RunKind::Upload, Trigger::Cli).await;
    let error = result.upload.as_ref().unwrap().error.clone().unwrap();
    assert!(error.contains("permission denied"), "{error}");
    assert_eq!(count(&local, "meter_readings").await, 100);
    let remote = env.remote.client().await;
    assert_eq!(count(&remote, "meter_readings").await, 0);
    service.shutdown(Duration::from_secs(5)).await;
}
