//! The diff strategy: the remote's (key, version or hash) pairs are staged and compared with
//! the local ones; only new and changed rows are then fetched, by key, batch by batch. When
//! more than a quarter of the rows are new or changed, every row is staged instead (`full`).

use std::pin::pin;

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use super::apply::Removal;
use super::entity::Source;
use super::rows::{check_remote_keys, pipe, skip};
use super::{full, EntityError, EntityReport, Strategy};
use crate::data::pg::{copy_row, on_local, on_remote, PgError};
use crate::data::sql;
use crate::data::sql::Target;
use crate::logging::Steps;

/// Above this fraction of new or changed rows the diff path stages every row instead.
const FULL_STAGE_FRACTION: f64 = 0.25;

/// Keys fetched per remote query on the diff path.
const FETCH_BATCH: usize = 10_000;

/// What the diff compares.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Compare {
    /// Both servers have `hash_record_extended` (14+).
    pub(super) record_hash: bool,
    /// Compare row hashes even where row versions exist: what the local rows hold is unknown.
    pub(super) content: bool,
    /// Also fetch and compare the suspects (local rows written by others since the last run).
    pub(super) suspects: bool,
}

/// Stages what differs and says which local rows are gone remotely.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stage(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
    keyed: bool,
    targets: &[Target<'_>],
    compare: Compare,
    report: &mut EntityReport,
    steps: &mut Steps<'_>,
) -> Result<Removal, EntityError> {
    let entity = source.entity;
    // Diff: compare row versions or hashes, then fetch only what is new or changed.
    report.strategy = Strategy::Diff;
    let kind = sql::ChangeCheck::for_entity(
        entity,
        source.versioned && !compare.content,
        compare.record_hash,
    );
    let hash_stage = sql::hash_stage_name(entity);
    ltx.batch_execute(&sql::create_hash_stage(entity, kind))
        .await
        .map_err(on_local("create the hash stage"))?;
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(&sql::remote_hash_select(
            entity,
            source.tenant,
            kind,
            source.conversions,
        )),
        &sql::copy_into_hash_stage(entity),
        "write the hash stage",
    )
    .await?;
    steps.done("copy remote hashes");
    if !keyed {
        check_remote_keys(ltx, entity, &hash_stage).await?;
        steps.done("check keys");
    }
    ltx.batch_execute(&sql::create_diff(entity, kind))
        .await
        .map_err(on_local("compare row versions"))?;
    if compare.suspects {
        ltx.batch_execute(&sql::need_suspects(entity))
            .await
            .map_err(on_local("queue the local rows written by others"))?;
    }
    steps.done("compare");
    let need: i64 = ltx
        .query_one(&sql::count_need(entity), &[])
        .await
        .map_err(on_local("count new and changed rows"))?
        .get(0);
    let stage = sql::stage_name(entity);
    let removal = if need as f64 > report.fetched as f64 * FULL_STAGE_FRACTION {
        let present = full::stage(ltx, rtx, source, targets, report).await?;
        steps.done("stage every row");
        Removal::NotIn(present)
    } else {
        fetch_by_keys(ltx, rtx, source).await?;
        ltx.batch_execute(&sql::index_keys(entity, &stage))
            .await
            .map_err(on_local("index the fetched rows"))?;
        skip_unreferenced(ltx, entity, targets, report).await?;
        steps.done("fetch new and changed rows");
        Removal::Gone
    };
    Ok(removal)
}

/// Skips the fetched rows whose references are missing, and the unchanged local rows whose
/// references are about to go (both marked gone in the diff).
pub(super) async fn skip_unreferenced(
    ltx: &Transaction<'_>,
    entity: &crate::profile::EntitySpec,
    targets: &[Target<'_>],
    report: &mut EntityReport,
) -> Result<(), PgError> {
    for statement in [
        sql::skip_unreferenced_fetched(entity, targets),
        sql::skip_unreferenced_unchanged(entity, targets),
    ]
    .into_iter()
    .flatten()
    {
        report.skipped += skip(ltx, &statement, entity, report).await?;
    }
    Ok(())
}

/// Diff path: fetches the remote rows of the needed keys, batch by batch, into the stage.
/// Values pass through as raw binary (the types were checked equal).
pub(super) async fn fetch_by_keys(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
) -> Result<u64, PgError> {
    let (entity, types) = (source.entity, &source.types[..]);
    let key_types: Vec<&str> = entity
        .key
        .iter()
        .filter_map(|k| entity.columns.iter().position(|c| c.name == *k))
        .map(|i| types[i].name())
        .collect();
    let query = rtx
        .prepare(&sql::remote_select_by_keys(
            entity,
            source.tenant,
            source.versioned,
            source.conversions,
            &key_types,
        ))
        .await
        .map_err(on_remote("prepare the fetch of changed rows"))?;
    let take = sql::take_need_batch(entity, FETCH_BATCH);
    let mut fetched = 0;
    loop {
        let batch = ltx
            .query(&take, &[])
            .await
            .map_err(on_local("take needed keys"))?;
        if batch.is_empty() {
            return Ok(fetched);
        }
        let columns: Vec<Vec<String>> = (0..entity.key.len())
            .map(|i| batch.iter().map(|row| row.get::<_, String>(i)).collect())
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let rows = rtx
            .query_raw(&query, params)
            .await
            .map_err(on_remote("fetch changed rows"))?;
        fetched += into_stage(ltx, entity, types, rows).await?;
    }
}

/// Streams remote rows (binary values of the stage's types) into the stage; returns how many.
pub(super) async fn into_stage(
    ltx: &Transaction<'_>,
    entity: &crate::profile::EntitySpec,
    types: &[tokio_postgres::types::Type],
    rows: tokio_postgres::RowStream,
) -> Result<u64, PgError> {
    let sink = ltx
        .copy_in::<_, Bytes>(&sql::copy_into_stage(entity))
        .await
        .map_err(on_local("write the stage table"))?;
    let writer = BinaryCopyInWriter::new(sink, types);
    let mut writer = pin!(writer);
    let mut rows = pin!(rows);
    let mut fetched = 0;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(on_remote("fetch changed rows"))?
    {
        copy_row(writer.as_mut(), &row, 0..types.len())
            .await
            .map_err(on_local("write the stage table"))?;
        fetched += 1;
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(on_local("write the stage table"))?;
    Ok(fetched)
}
