//! An entity's columns on both sides, checked before anything moves: the local table has every
//! column the profile names and the bookkeeping column, and each remote column's type can be
//! stored in the local one unchanged ([`crate::data::convert`], the rule the upload uses too).

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::EntityError;
use crate::config::Side;
use crate::data::convert::{self, Conversion, Direction};
use crate::data::pg::{on_remote, PgError};
use crate::data::sql;
use crate::profile::{EntitySpec, TenantId, VERSION_COLUMN};

/// The checked columns of an entity.
pub(super) struct Columns {
    /// How each remote column is read so that it arrives in the local type.
    pub conversions: Vec<Conversion>,
    /// The local types of the profile's columns, in order.
    pub local_types: Vec<Type>,
}

/// Checks the local table and both sides' column types; `versioned`: the remote source is a
/// table with row versions.
pub(super) async fn check(
    ltx: &Transaction<'_>,
    rtx: &Transaction<'_>,
    entity: &EntitySpec,
    tenant: &TenantId,
    versioned: bool,
) -> Result<Columns, EntityError> {
    let present = crate::data::schema::table_columns(ltx, &entity.table, Side::Local).await?;
    if present.is_empty() {
        return Err(EntityError::LocalTableMissing {
            table: entity.table.to_string(),
        });
    }
    let missing: Vec<&str> = std::iter::once(VERSION_COLUMN)
        .chain(entity.columns.iter().map(|c| c.name.as_str()))
        .filter(|name| !present.iter().any(|p| p.name == *name))
        .collect();
    if !missing.is_empty() {
        return Err(EntityError::LocalColumnsMissing {
            table: entity.table.to_string(),
            columns: missing.join(", "),
        });
    }
    let local = ltx.prepare(&sql::local_select(entity)).await.map_err(|e| {
        PgError::query(
            Side::Local,
            format!("read the columns of {}", entity.table),
            e,
        )
    })?;
    let remote = rtx
        .prepare(&sql::remote_select(entity, tenant, versioned, &[]))
        .await
        .map_err(on_remote("prepare the remote query"))?;
    let conversions = convert::plan(
        &entity.columns,
        remote.columns(),
        local.columns(),
        Direction::Download,
    )
    .map_err(|detail| EntityError::TypeMismatch {
        table: entity.table.to_string(),
        detail,
    })?;
    if let Some(query) = sql::find_unfit(entity, tenant, versioned, &conversions) {
        let unfit = rtx
            .query_opt(&query, &[])
            .await
            .map_err(on_remote("check the values of checked columns"))?;
        if let Some(row) = unfit {
            let n = entity.key.len();
            let column: String = row.get(n);
            let target = entity
                .columns
                .iter()
                .zip(&conversions)
                .find(|(c, _)| c.name.as_str() == column)
                .and_then(|(_, conversion)| conversion.fit())
                .map(|fit| fit.target.clone())
                .unwrap_or_default();
            return Err(EntityError::DoesNotFit {
                table: entity.table.to_string(),
                key: entity
                    .key
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                values: super::rows::key_of(&row, n).join(", "),
                column,
                value: row
                    .get::<_, Option<String>>(n + 1)
                    .unwrap_or_else(|| "NULL".into()),
                target,
            });
        }
    }
    Ok(Columns {
        conversions,
        local_types: local.columns().iter().map(|c| c.type_().clone()).collect(),
    })
}
