//! The download half of `meter-sync check`: every entity's statements prepared on both sides and
//! its column pairs checked by the type rule (and its checked columns' values), inside a
//! read-only remote snapshot and a local transaction that are both rolled back, so nothing is
//! written anywhere (the local statements that work on the run's temporary stages are prepared
//! against empty stages created in that transaction). Each entity is checked under its own
//! savepoints: every problem is found in one pass.

use super::{columns, entity, EntityError};
use crate::config::Side;
use crate::data::pg::{on_local, Backoff, PgError, Pools};
use crate::data::sql;
use crate::data::tenant;
use crate::error::chain;
use crate::profile::{Profile, TenantId};

/// What the dry run found for one part of the profile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartCheck {
    /// `entity meter`, `tenant`, `readings meter_readings`.
    pub part: String,
    /// `None`: every statement prepared and every column pair passed.
    pub error: Option<String>,
}

/// Checks every entity of the profile without changing anything.
pub async fn dry_run(
    pools: &Pools,
    profile: &Profile,
    configured: Option<&TenantId>,
    backoff: Backoff,
) -> Result<Vec<PartCheck>, PgError> {
    let mut parts = Vec::new();
    if profile.entities.is_empty() {
        return Ok(parts);
    }
    let mut local = pools.local_with_retry(backoff).await?;
    let tenant = match tenant::resolve(&**local, configured, profile).await {
        Ok(tenant) => tenant,
        Err(e) => {
            parts.push(PartCheck {
                part: "tenant".into(),
                error: Some(chain(&e)),
            });
            // Statements are still prepared, for some tenant.
            TenantId::placeholder()
        }
    };
    let mut remote = pools.remote_with_retry(backoff).await?;
    let rtx = super::attempt::begin_snapshot(&mut remote, pools).await?;
    let local_client: &mut tokio_postgres::Client = &mut local;
    // Not read only: the stages are temporary tables, created and rolled back with it.
    let ltx = local_client
        .transaction()
        .await
        .map_err(|e| PgError::query(Side::Local, "begin the check", e))?;
    // As the run decides: row hashes by `hash_record_extended` on PostgreSQL 14 and newer.
    let record_hash: bool = ltx
        .query_one(
            "select current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .map_err(on_local("read the server version"))?
        .get(0);
    let targets: Vec<sql::Target<'_>> = profile
        .entities
        .iter()
        .map(|spec| sql::Target {
            spec,
            deleting: false,
        })
        .collect();
    for spec in &profile.entities {
        for (tx, side) in [(&ltx, Side::Local), (&rtx, Side::Remote)] {
            tx.batch_execute("savepoint meter_sync_check")
                .await
                .map_err(|e| PgError::query(side, "savepoint", e))?;
        }
        let outcome: Result<(), EntityError> = async {
            let (versioned, _) = entity::remote_shape(&rtx, spec).await?;
            let checked = columns::check(&ltx, &rtx, spec, &tenant, versioned).await?;
            let select = sql::remote_select(spec, &tenant, versioned, &checked.conversions);
            rtx.prepare(&select)
                .await
                .map_err(crate::data::pg::on_remote("prepare the remote rows"))?;
            ltx.prepare(&sql::list_rows(spec, None))
                .await
                .map_err(on_local("prepare the listing of local rows"))?;
            // The run's local statements, against empty stages.
            let kind = sql::ChangeCheck::for_entity(spec, versioned, record_hash);
            ltx.batch_execute(&format!(
                "{}; {}",
                sql::create_stage(spec),
                sql::create_hash_stage(spec, kind)
            ))
            .await
            .map_err(on_local("create the stages"))?;
            ltx.batch_execute(&sql::create_diff(spec, kind))
                .await
                .map_err(on_local("compare row versions"))?;
            let stage = sql::stage_name(spec);
            let mut statements = vec![
                sql::insert_new(spec),
                sql::sync_versions(spec),
                sql::take_need_batch(spec, 1),
                sql::find_duplicate_key(spec, &stage),
            ];
            statements.extend(sql::update_changed(spec));
            statements.extend(sql::skip_unreferenced(spec, &targets));
            statements.extend(sql::skip_unreferenced_fetched(spec, &targets));
            statements.extend(sql::skip_unreferenced_unchanged(spec, &targets));
            for statement in &statements {
                ltx.prepare(statement)
                    .await
                    .map_err(on_local("prepare the statements that apply the rows"))?;
            }
            if let Some(collect) = sql::collect_missing(spec, &stage) {
                ltx.batch_execute(&collect)
                    .await
                    .map_err(on_local("collect rows gone remotely"))?;
                for statement in [sql::count_staying(spec)]
                    .into_iter()
                    .chain(sql::remove_gone(spec))
                {
                    ltx.prepare(&statement)
                        .await
                        .map_err(on_local("prepare the removal of rows gone remotely"))?;
                }
            }
            Ok(())
        }
        .await;
        parts.push(PartCheck {
            part: format!("entity {}", spec.name),
            error: outcome.err().map(|e| chain(&e)),
        });
        for (tx, side) in [(&ltx, Side::Local), (&rtx, Side::Remote)] {
            tx.batch_execute("rollback to savepoint meter_sync_check")
                .await
                .map_err(|e| PgError::query(side, "rollback to savepoint", e))?;
        }
    }
    let _ = ltx.rollback().await;
    let _ = rtx.rollback().await;
    Ok(parts)
}
