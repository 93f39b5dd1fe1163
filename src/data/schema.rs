//! The local schema: `meter-sync migrate`. A tracked list of the service's own migrations
//! (`sync_logs`, the `meter_sync_log` view), then the tables of the active profile reconciled
//! with the catalog: missing tables and columns are created, nothing is ever dropped or
//! altered, and a type that differs from the profile is reported. Idempotent: a second run
//! changes nothing. It never touches the remote.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::config::Side;
use crate::data::pg::PgError;
use crate::data::sql;
use crate::profile::{ColumnSpec, Profile, SqlType, TableName};

/// One of the service's own migrations: applied once, in order, recorded with a checksum.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// The service's own migrations. Append only: an applied migration must never change.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "sync_logs and meter_sync_log",
    sql: "create table sync_logs (
    id bigserial primary key,
    sync_type varchar(50) not null,
    entity varchar(63),
    success boolean not null,
    records_processed integer not null default 0,
    inserted integer not null default 0,
    updated integer not null default 0,
    deleted integer not null default 0,
    skipped integer not null default 0,
    error_message text,
    duration_ms integer,
    details jsonb,
    timestamp timestamptz not null default now()
);
create index sync_logs_timestamp_idx on sync_logs (timestamp desc);
create index sync_logs_type_entity_idx on sync_logs (sync_type, entity, timestamp desc);
create view meter_sync_log as
select id, timestamp as synced_at, success,
       inserted as inserted_count, updated as updated_count, deleted as deleted_count,
       skipped as skipped_count, error_message, duration_ms
from sync_logs
where sync_type = 'download' and entity in ('meter', 'meters');",
}];

/// Why the local schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Database(#[from] PgError),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {found}, now {expected}); restore it or migrate a fresh database")]
    Tampered {
        version: i32,
        name: &'static str,
        found: String,
        expected: String,
    },
}

/// What a migrate run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// One line per change made (`created table "meter"`, ...); empty when up to date.
    pub changes: Vec<String>,
    /// Differences left alone (a column whose type differs from the profile).
    pub warnings: Vec<String>,
}

/// Brings the local schema up to date for `profile`, in one transaction.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    profile: &Profile,
) -> Result<MigrateReport, SchemaError> {
    let q = |context: &'static str| move |e| PgError::query(Side::Local, context, e);
    let tx = client.transaction().await.map_err(q("begin migrate"))?;
    crate::data::runlock::lock_migrations(&tx).await?;
    let mut report = MigrateReport::default();
    apply_migrations(&tx, &mut report).await?;
    for entity in &profile.entities {
        let create = sql::create_entity_table(entity);
        let columns = sql::entity_local_columns(entity);
        reconcile_table(&tx, &entity.table, &columns, &create, &mut report).await?;
    }
    if let Some(readings) = &profile.readings {
        let mut columns = readings.columns.clone();
        columns.extend(sql::readings_local_columns());
        let create = sql::create_readings_table(readings);
        reconcile_table(&tx, &readings.table, &columns, &create, &mut report).await?;
        let name = sql::readings_queue_index_name(readings);
        let schema = readings.table.schema.as_ref().map(|s| s.as_str());
        let exists: bool = tx
            .query_one(sql::SELECT_INDEX_EXISTS, &[&schema, &name])
            .await
            .map_err(q("look up the readings queue index"))?
            .get(0);
        if !exists {
            tx.batch_execute(&sql::create_readings_queue_index(readings))
                .await
                .map_err(q("create the readings queue index"))?;
            report.changes.push(format!("created index \"{name}\""));
        }
    }
    tx.commit().await.map_err(q("commit migrate"))?;
    for change in &report.changes {
        tracing::info!(change = %change, "migrate");
    }
    for warning in &report.warnings {
        tracing::warn!(warning = %warning, "migrate");
    }
    Ok(report)
}

async fn apply_migrations(
    tx: &tokio_postgres::Transaction<'_>,
    report: &mut MigrateReport,
) -> Result<(), SchemaError> {
    let q = |context: &'static str| move |e| PgError::query(Side::Local, context, e);
    let tracked: bool = tx
        .query_one(
            "select to_regclass('meter_sync_schema_migrations') is not null",
            &[],
        )
        .await
        .map_err(q("look up the migrations table"))?
        .get(0);
    if !tracked {
        tx.batch_execute(
            "create table meter_sync_schema_migrations (
                version integer primary key,
                name text not null,
                checksum text not null,
                applied_at timestamptz not null default now())",
        )
        .await
        .map_err(q("create the migrations table"))?;
        report
            .changes
            .push("created table \"meter_sync_schema_migrations\"".into());
    }
    let applied: HashMap<i32, String> = tx
        .query(
            "select version, checksum from meter_sync_schema_migrations",
            &[],
        )
        .await
        .map_err(q("read applied migrations"))?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for migration in MIGRATIONS {
        let checksum = checksum(migration.sql);
        match applied.get(&migration.version) {
            Some(found) if *found == checksum => {}
            Some(found) => {
                return Err(SchemaError::Tampered {
                    version: migration.version,
                    name: migration.name,
                    found: found.clone(),
                    expected: checksum,
                })
            }
            None => {
                tx.batch_execute(migration.sql).await.map_err(|e| {
                    PgError::query(
                        Side::Local,
                        format!("apply migration {} ({})", migration.version, migration.name),
                        e,
                    )
                })?;
                tx.execute(
                    "insert into meter_sync_schema_migrations (version, name, checksum) values ($1, $2, $3)",
                    &[&migration.version, &migration.name, &checksum],
                )
                .await
                .map_err(q("record a migration"))?;
                report.changes.push(format!(
                    "applied migration {} ({})",
                    migration.version, migration.name
                ));
            }
        }
    }
    Ok(())
}

/// Creates the table, or adds the columns it lacks, or reports type differences.
async fn reconcile_table(
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableName,
    columns: &[ColumnSpec],
    create: &str,
    report: &mut MigrateReport,
) -> Result<(), SchemaError> {
    let existing = table_columns(tx, table, Side::Local).await?;
    if existing.is_empty() {
        tx.batch_execute(create)
            .await
            .map_err(|e| PgError::query(Side::Local, format!("create table {table}"), e))?;
        report.changes.push(format!("created table \"{table}\""));
        return Ok(());
    }
    let wanted: Vec<&SqlType> = columns.iter().map(|c| &c.sql_type).collect();
    let canonical = canonical_types(tx, &wanted, Side::Local).await?;
    for (column, canonical) in columns.iter().zip(canonical) {
        match existing.iter().find(|c| c.name == column.name.as_str()) {
            None => {
                tx.batch_execute(&sql::add_column(table, column))
                    .await
                    .map_err(|e| PgError::query(Side::Local, format!("add column {table}.{}", column.name), e))?;
                report.changes.push(format!("added column \"{table}\".\"{}\"", column.name));
            }
            Some(found) if found.sql_type != canonical => report.warnings.push(format!(
                "column \"{table}\".\"{}\" has type {} but the profile says {} ({canonical}); left unchanged",
                column.name, found.sql_type, column.sql_type
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    /// `format_type` spelling, e.g. `character varying(255)`.
    pub sql_type: String,
    pub not_null: bool,
}

/// The columns of a table in order; empty when the table does not exist.
pub async fn table_columns(
    client: &impl GenericClient,
    table: &TableName,
    side: Side,
) -> Result<Vec<CatalogColumn>, PgError> {
    let schema = table.schema.as_ref().map(|s| s.as_str());
    let rows = client
        .query(sql::SELECT_TABLE_COLUMNS, &[&schema, &table.bare()])
        .await
        .map_err(|e| PgError::query(side, format!("read the columns of {table}"), e))?;
    Ok(rows
        .into_iter()
        .map(|row| CatalogColumn {
            name: row.get(0),
            sql_type: row.get(1),
            not_null: row.get(2),
        })
        .collect())
}

/// PostgreSQL's canonical spelling of each type (`varchar(255)` -> `character varying(255)`),
/// through a temporary table dropped at commit. Must run inside a transaction.
pub async fn canonical_types(
    client: &impl GenericClient,
    types: &[&SqlType],
    side: Side,
) -> Result<Vec<String>, PgError> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let probe = "meter_sync_type_probe";
    client
        .batch_execute(&format!(
            "drop table if exists pg_temp.{probe}; {}",
            sql::create_type_probe(probe, types)
        ))
        .await
        .map_err(|e| PgError::query(side, "resolve column types", e))?;
    let probe_table = TableName {
        schema: None,
        name: crate::profile::Ident::constant(probe),
    };
    let columns = table_columns(client, &probe_table, side).await?;
    client
        .batch_execute(&format!("drop table pg_temp.{probe}"))
        .await
        .map_err(|e| PgError::query(side, "resolve column types", e))?;
    Ok(columns.into_iter().map(|c| c.sql_type).collect())
}

/// A stable checksum of a migration's text (FNV-1a, 64 bit, hex): detects edits, not attacks.
fn checksum(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
