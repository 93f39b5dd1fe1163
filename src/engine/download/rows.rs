//! Streaming helpers of the download (remote COPY piped into a local table, statements whose
//! returned rows are counted and sampled) and the key checks on staged remote rows.

use std::pin::pin;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::{EntityError, EntityReport, DETAIL_LIMIT};
use crate::data::pg::{on_local, on_remote, PgError};
use crate::data::sql;
use crate::profile::{EntitySpec, Ident};

/// Refuses remote rows with a NULL in a key column.
async fn refuse_null_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    let null_keys: i64 = ltx
        .query_one(&sql::count_null_keys_in(entity, relation), &[])
        .await
        .map_err(on_local("check keys"))?
        .get(0);
    if null_keys > 0 {
        return Err(EntityError::NullKey {
            count: null_keys,
            key: entity
                .key
                .iter()
                .map(Ident::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

/// Refuses NULL or duplicate keys among the remote rows (the unique index names a duplicate
/// key), and gives the planner statistics.
pub(super) async fn check_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    refuse_null_keys(ltx, entity, relation).await?;
    ltx.batch_execute(&sql::index_keys(entity, relation))
        .await
        .map_err(on_local(
            "index the remote rows by key (duplicate remote keys?)",
        ))?;
    Ok(())
}

/// Refuses NULL or repeated keys among the remote keys of the diff path (no index needed).
pub(super) async fn check_remote_keys(
    ltx: &Transaction<'_>,
    entity: &EntitySpec,
    relation: &str,
) -> Result<(), EntityError> {
    refuse_null_keys(ltx, entity, relation).await?;
    let duplicate = ltx
        .query_opt(&sql::find_duplicate_key(entity, relation), &[])
        .await
        .map_err(on_local("check keys"))?;
    match duplicate {
        Some(row) => Err(EntityError::DuplicateKey {
            columns: entity
                .key
                .iter()
                .map(Ident::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            values: key_of(&row, entity.key.len()).join(", "),
        }),
        None => Ok(()),
    }
}

/// Runs a skip statement, recording the skipped keys; returns how many.
pub(super) async fn skip(
    ltx: &Transaction<'_>,
    statement: &str,
    entity: &EntitySpec,
    report: &mut EntityReport,
) -> Result<u64, PgError> {
    let key_len = entity.key.len();
    for_each_row(ltx, statement, "skip rows with missing references", |row| {
        keep(&mut report.skipped_keys, key_of(&row, key_len));
    })
    .await
}

/// Streams binary COPY data from the remote query into a local table, chunk by chunk;
/// `target` names that table in errors.
pub(super) async fn pipe(
    rtx: &Transaction<'_>,
    ltx: &Transaction<'_>,
    copy_out: &str,
    copy_in: &str,
    target: &'static str,
) -> Result<u64, PgError> {
    let stream = rtx
        .copy_out(copy_out)
        .await
        .map_err(on_remote("read the remote rows"))?;
    let sink = ltx
        .copy_in::<_, Bytes>(copy_in)
        .await
        .map_err(on_local(target))?;
    let mut stream = pin!(stream);
    let mut sink = pin!(sink);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(on_remote("read the remote rows"))?;
        sink.as_mut().feed(chunk).await.map_err(on_local(target))?;
    }
    sink.as_mut().finish().await.map_err(on_local(target))
}

/// Runs a statement with `RETURNING`, streaming its rows to `f`; returns how many there were.
pub(super) async fn for_each_row(
    tx: &Transaction<'_>,
    statement: &str,
    context: &'static str,
    mut f: impl FnMut(Row),
) -> Result<u64, PgError> {
    let rows = tx
        .query_raw(statement, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await
        .map_err(on_local(context))?;
    let mut rows = pin!(rows);
    let mut count = 0;
    while let Some(row) = rows.try_next().await.map_err(on_local(context))? {
        count += 1;
        f(row);
    }
    Ok(count)
}

pub(super) fn key_of(row: &Row, len: usize) -> Vec<String> {
    (0..len)
        .map(|i| {
            row.get::<_, Option<String>>(i)
                .unwrap_or_else(|| "NULL".into())
        })
        .collect()
}

pub(super) fn keep<T>(list: &mut Vec<T>, item: T) {
    if list.len() < DETAIL_LIMIT {
        list.push(item);
    }
}
