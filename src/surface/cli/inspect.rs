//! The commands that look and prepare: `check`, `migrate`, `status`, `quarantine`.

use std::process::ExitCode;

use serde::Serialize;

use super::print::print_status;
use super::{readings, usage_error, QuarantineAction};
use crate::config::{Config, RawSettings, Side};
use crate::data::pg::{self, Backoff, Pools};
use crate::data::schema;
use crate::engine::{download, upload};
use crate::error::{chain, Exit};
use crate::profile::Profile;

/// The outcome of connecting to one side.
#[derive(Debug, Serialize)]
struct SideCheck {
    side: Side,
    address: String,
    ok: bool,
    server_version: Option<String>,
    error: Option<String>,
}

async fn check_side(db: &crate::config::DbConfig, config: &Config) -> SideCheck {
    let result = pg::server_version(db, &config.pool).await;
    SideCheck {
        side: db.side,
        address: db.address(),
        ok: result.is_ok(),
        server_version: result.as_ref().ok().cloned(),
        error: result.err().map(|e| chain(&e)),
    }
}

pub(super) async fn check(
    raw: &RawSettings,
    config: &Config,
    profile: &Profile,
    json: bool,
) -> ExitCode {
    let (local, remote) = tokio::join!(
        check_side(&config.local, config),
        check_side(&config.remote, config)
    );
    let connected = local.ok && remote.ok;
    let parts = match connected {
        true => dry_run(config, profile).await,
        false => Vec::new(),
    };
    let api = check_api(config);
    let ok = connected && parts.iter().all(|p| p.error.is_none()) && api.is_ok();
    if json {
        let out = serde_json::json!({
            "ok": ok,
            "api": match &api {
                Ok(address) => serde_json::json!({ "ok": true, "address": address }),
                Err(error) => serde_json::json!({ "ok": false, "error": error }),
            },
            "configuration": Config::redacted_summary(raw),
            "profile": { "origin": profile.origin, "entities": profile.entities.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
                         "readings": profile.readings.as_ref().map(|r| r.table.to_string()) },
            "databases": [local, remote],
            "profile_check": parts,
        });
        println!("{out:#}");
    } else {
        println!("configuration (secrets masked):");
        for line in Config::redacted_summary(raw) {
            println!("  {line}");
        }
        let entities: Vec<String> = profile
            .entities
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        println!(
            "profile: {} (entities in order: {})",
            profile.origin,
            entities.join(", ")
        );
        if let Some(readings) = &profile.readings {
            println!(
                "  readings: {} -> remote {}",
                readings.table, readings.remote_table
            );
        }
        match &api {
            Ok(address) => println!("HTTP API: ok ({address})"),
            Err(error) => println!("HTTP API: FAILED: {error}"),
        }
        for side in [&local, &remote] {
            match (&side.server_version, &side.error) {
                (Some(version), _) => println!(
                    "{} database {}: ok (PostgreSQL {version})",
                    side.side, side.address
                ),
                (_, Some(error)) => {
                    println!("{} database {}: FAILED: {error}", side.side, side.address)
                }
                _ => {}
            }
        }
        if connected {
            let failed = parts.iter().filter(|p| p.error.is_some()).count();
            println!(
                "profile check (every statement prepared, every column pair compared, nothing written): {}",
                match failed {
                    0 => "ok".to_string(),
                    n => format!("{n} problem(s)"),
                }
            );
            for part in &parts {
                match &part.error {
                    None => println!("  {}: ok", part.part),
                    Some(error) => println!("  {}: FAILED: {error}", part.part),
                }
            }
        }
    }
    Exit::from_success(ok).into()
}

/// The HTTP API as `run` would serve it: the bind rule, and the TLS files read and matched.
fn check_api(config: &Config) -> Result<String, String> {
    let serving = crate::surface::http::tls::Serving::from_config(config)?;
    Ok(serving.url(std::net::SocketAddr::new(config.api_host, config.api_port)))
}

/// The profile's dry run: every entity, then the readings, each with its first problem.
async fn dry_run(config: &Config, profile: &Profile) -> Vec<download::PartCheck> {
    let pools = match Pools::new(config) {
        Ok(pools) => pools,
        Err(e) => {
            return vec![download::PartCheck {
                part: "connection pools".into(),
                error: Some(chain(&e)),
            }]
        }
    };
    let backoff = Backoff::connection(&config.retry);
    let mut parts = download::dry_run(&pools, profile, config.tenant_id.as_ref(), backoff)
        .await
        .unwrap_or_else(|e| {
            vec![download::PartCheck {
                part: "entities".into(),
                error: Some(chain(&e)),
            }]
        });
    if let Some(readings) = &profile.readings {
        let request = crate::service::cycle::upload_request(config, profile, readings);
        parts.push(download::PartCheck {
            part: format!(
                "readings {} -> remote {}",
                readings.table, readings.remote_table
            ),
            error: upload::dry_run(&pools, request)
                .await
                .err()
                .map(|e| chain(&e)),
        });
    }
    parts
}

pub(super) async fn migrate(config: &Config, profile: &Profile, json: bool) -> ExitCode {
    let result = async {
        let mut client = Backoff::connection(&config.retry)
            .retry(
                "connect to the local database",
                pg::PgError::is_retryable,
                || pg::connect(&config.local, &config.pool),
            )
            .await?;
        let types = schema::TypeSource {
            remote: &config.remote,
            pool: &config.pool,
        };
        schema::migrate_with(&mut client, profile, Some(types)).await
    }
    .await;
    match result {
        Ok(report) => {
            if json {
                println!(
                    "{:#}",
                    serde_json::json!({ "ok": true, "changes": report.changes, "warnings": report.warnings })
                );
            } else if report.changes.is_empty() {
                println!("local schema is up to date ({})", config.local.address());
            } else {
                for change in &report.changes {
                    println!("{change}");
                }
            }
            if !json {
                for warning in &report.warnings {
                    println!("warning: {warning}");
                }
            }
            Exit::Ok.into()
        }
        Err(e) => {
            if json {
                println!(
                    "{:#}",
                    serde_json::json!({ "ok": false, "error": chain(&e) })
                );
            }
            eprintln!("meter-sync: migrate failed: {}", chain(&e));
            Exit::Failed.into()
        }
    }
}

pub(super) async fn status(config: &Config, profile: &Profile, json: bool) -> ExitCode {
    let pools = match Pools::new(config) {
        Ok(pools) => pools,
        Err(e) => return usage_error(e),
    };
    let status = crate::service::status::sync_status(&pools, config, profile, None).await;
    let meter = crate::service::status::meter_sync_status(&pools, profile, None)
        .await
        .ok();
    if json {
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        value["meter_sync"] = serde_json::to_value(&meter).unwrap_or_default();
        println!("{value:#}");
    } else {
        print_status(&status);
    }
    Exit::from_success(status.local_db_connected).into()
}

pub(super) async fn quarantine(
    config: &Config,
    profile: &Profile,
    action: QuarantineAction,
) -> ExitCode {
    let readings = match readings(profile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = match pg::connect(&config.local, &config.pool).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            return Exit::Failed.into();
        }
    };
    let outcome = match action {
        QuarantineAction::List { limit, json } => {
            upload::list_quarantined(&client, readings, limit.clamp(1, 100_000))
                .await
                .map(|list| {
                    if json {
                        println!("{:#}", serde_json::to_value(&list).unwrap_or_default());
                    } else if list.is_empty() {
                        println!("no quarantined readings");
                    } else {
                        for q in &list {
                            println!(
                                "{}\t{}\t{} attempts\tsince {}\t{}",
                                q.id,
                                q.row,
                                q.attempts,
                                q.quarantined_at.to_rfc3339(),
                                q.error.as_deref().unwrap_or("")
                            );
                        }
                    }
                })
        }
        QuarantineAction::Release { all, ids, json } => {
            let ids: Vec<upload::ReadingId> =
                ids.into_iter().map(upload::ReadingId::from_text).collect();
            let chosen = if all { None } else { Some(ids.as_slice()) };
            upload::release_quarantined(&client, readings, chosen)
                .await
                .map(|released| {
                    if json {
                        let value = serde_json::json!({
                            "released": released.len(),
                            "ids": released,
                        });
                        println!("{value:#}");
                    } else {
                        println!("released {} reading(s) for another upload", released.len())
                    }
                })
        }
    };
    match outcome {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("meter-sync: {}", chain(&e));
            Exit::Failed.into()
        }
    }
}
