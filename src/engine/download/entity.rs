//! One entity's first pass: the remote's shape (a table with row versions? keyed by its primary
//! key?), the column check, then the strategy: `cold` for an empty local table, `full` when
//! asked (`download --full`), `incremental` for a remote table (which falls back to `diff` when
//! it cannot vouch for the rows), else `diff`; then the collected removals, updates and inserts.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::apply::{self, Removal};
use super::attempt::EntityOptions;
use super::incremental::{self, Clocks};
use super::{cold, columns, diff, full, EntityError, EntityReport, Strategy};
use crate::data::convert::Conversion;
use crate::data::pg::{on_local, on_remote};
use crate::data::sql;
use crate::data::sql::Target;
use crate::logging::Steps;
use crate::profile::{EntitySpec, Ident, RemoteSource, TenantId};

/// What every strategy reads from the remote for one entity.
pub(super) struct Source<'a> {
    pub(super) entity: &'a EntitySpec,
    pub(super) tenant: &'a TenantId,
    /// The remote is a table with row versions (`xmin`).
    pub(super) versioned: bool,
    /// Per column, how a remote value becomes a local one.
    pub(super) conversions: &'a [Conversion],
    /// The select of every remote row (the columns, then the row version).
    pub(super) remote_select: String,
    /// The local column types, then `int8` for the version: the stage's binary layout.
    pub(super) types: Vec<Type>,
}

/// Mirrors one entity inside the open transactions, all but the removal of rows gone remotely:
/// returns whether those were collected (then [`remove_gone`] applies them).
#[allow(clippy::too_many_arguments)]
pub(super) async fn sync(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    tenant: &TenantId,
    targets: &[Target<'_>],
    options: EntityOptions,
    clocks: &Clocks,
    report: &mut EntityReport,
) -> Result<bool, EntityError> {
    let (versioned, keyed) = remote_shape(rtx, entity).await?;
    let columns = columns::check(ltx, rtx, entity, tenant, versioned).await?;
    let remote_select = sql::remote_select(entity, tenant, versioned, &columns.conversions);
    let mut types = columns.local_types;
    types.push(Type::INT8);
    let source = Source {
        entity,
        tenant,
        versioned,
        conversions: &columns.conversions,
        remote_select,
        types,
    };
    let empty: bool = ltx
        .query_one(&sql::local_is_empty(entity), &[])
        .await
        .map_err(on_local("look at the local table"))?
        .get(0);
    // A table with foreign keys of its own goes through the stage even when empty: its rows
    // with a missing reference are skipped there, before the constraint would refuse the load.
    let constrained: bool = empty
        && ltx
            .query_one(sql::SELECT_HAS_FOREIGN_KEYS, &[&entity.table.quoted()])
            .await
            .map_err(on_local("look up the local foreign keys"))?
            .get(0);
    // Entities read from a remote table keep state between runs (see `incremental`).
    let plan = match versioned {
        true => Some(incremental::plan(ltx, entity, &source.remote_select, clocks).await?),
        false => None,
    };
    if empty && !constrained {
        report.strategy = Strategy::Cold;
        cold::sync(ltx, rtx, &source, targets, report).await?;
        if let Some(plan) = &plan {
            incremental::record(ltx, entity, &source.remote_select, clocks, plan).await?;
        }
        return Ok(false);
    }

    ltx.batch_execute(&sql::create_stage(entity))
        .await
        .map_err(on_local("create the stage table"))?;
    let mut steps = Steps::new("download", entity.name.as_str());
    let removal = if options.full {
        let present = full::stage(ltx, rtx, &source, targets, report).await?;
        steps.done("stage every row");
        Removal::NotIn(present)
    } else if let Some(plan) = &plan {
        incremental::stage(
            ltx,
            rtx,
            &source,
            keyed,
            options.record_hash,
            targets,
            plan,
            report,
            &mut steps,
        )
        .await?
    } else {
        let compare = diff::Compare {
            record_hash: options.record_hash,
            ..diff::Compare::default()
        };
        diff::stage(
            ltx, rtx, &source, keyed, targets, compare, report, &mut steps,
        )
        .await?
    };
    let collected = apply::apply(ltx, entity, removal, options.guard, report, &mut steps).await?;
    if report.strategy == Strategy::Incremental {
        ltx.batch_execute(sql::KEYED_JOINS_OFF)
            .await
            .map_err(on_local("plan joins freely again"))?;
    }
    if let Some(plan) = &plan {
        incremental::record(ltx, entity, &source.remote_select, clocks, plan).await?;
    }
    drop_stages(ltx, entity).await?;
    Ok(collected)
}

/// The remote source's shape: whether it is a table with row versions (`xmin`), and whether
/// its primary key lies within the entity's key (then its rows can neither repeat nor lack a
/// key).
pub(super) async fn remote_shape(
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
) -> Result<(bool, bool), EntityError> {
    Ok(match &entity.remote {
        RemoteSource::Table(table) => {
            let kind: Option<String> = rtx
                .query_opt(sql::SELECT_RELKIND, &[&table.quoted()])
                .await
                .map_err(on_remote("look up the remote table"))?
                .and_then(|row| row.get(0));
            let key: Vec<&str> = entity.remote_key().into_iter().map(Ident::as_str).collect();
            let keyed: bool = rtx
                .query_one(sql::SELECT_KEY_IS_PRIMARY, &[&table.quoted(), &key])
                .await
                .map_err(on_remote("look up the remote primary key"))?
                .get(0);
            (matches!(kind.as_deref(), Some("r" | "p" | "m")), keyed)
        }
        RemoteSource::Query(_) => (false, false),
    })
}

async fn drop_stages(ltx: &Transaction<'_>, entity: &EntitySpec) -> Result<(), EntityError> {
    ltx.batch_execute(&format!(
        "{}; {}; {}",
        sql::drop_stage(entity),
        sql::drop_diff_tables(entity),
        sql::drop_incremental_tables(entity)
    ))
    .await
    .map_err(on_local("drop the stage tables"))?;
    Ok(())
}
