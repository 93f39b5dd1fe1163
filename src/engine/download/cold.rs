//! The cold strategy: the local table is empty, so every remote row is new.

use tokio_postgres::Transaction;

use super::entity::Source;
use super::rows::{key_of, pipe, skip};
use super::{EntityError, EntityReport, NewRow, DETAIL_LIMIT};
use crate::data::pg::on_local;
use crate::data::sql;
use crate::data::sql::Target;

/// Cold path: the local table is empty, so every remote row is new: copy straight into it
/// (its primary key refuses duplicates), then drop rows whose references are missing.
pub(super) async fn sync(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    source: &Source<'_>,
    targets: &[Target<'_>],
    report: &mut EntityReport,
) -> Result<(), EntityError> {
    let entity = source.entity;
    // Load first, build the primary key after (PostgreSQL's advice for bulk loads: far cheaper
    // than maintaining it row by row), unless a foreign key depends on it. The savepoint
    // restores it if anything fails; duplicate or NULL remote keys fail the rebuild.
    let table = entity.table.quoted();
    let key = ltx
        .query_opt(sql::SELECT_PRIMARY_KEY, &[&table])
        .await
        .map_err(on_local("look up the local primary key"))?
        .filter(|row| !row.get::<_, bool>(2))
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
    if let Some((name, _)) = &key {
        ltx.batch_execute(&sql::drop_constraint(&entity.table, name))
            .await
            .map_err(on_local("set the primary key aside for the load"))?;
    }
    report.fetched = pipe(
        rtx,
        ltx,
        &sql::copy_out(&source.remote_select),
        &sql::copy_into_table(entity),
        "write the local table",
    )
    .await?;
    if let Some((name, definition)) = &key {
        ltx.batch_execute(&sql::add_constraint(&entity.table, name, definition))
            .await
            .map_err(on_local(
                "build the primary key (duplicate or NULL remote keys?)",
            ))?;
    }
    if let Some(statement) = sql::delete_unreferenced(entity, targets) {
        report.skipped = skip(ltx, &statement, entity, report).await?;
    }
    report.inserted = report.fetched - report.skipped;
    let key_len = entity.key.len();
    let sample = ltx
        .query(&sql::sample_rows(entity, DETAIL_LIMIT), &[])
        .await
        .map_err(on_local("list the new rows"))?;
    report.new_rows = sample
        .iter()
        .map(|row| NewRow {
            key: key_of(row, key_len),
            name: row.get(key_len),
        })
        .collect();
    Ok(())
}
