//! The local schema: `meter-sync migrate`. A tracked list of the service's own migrations
//! (`sync_logs`, the `meter_sync_log` view, the upload ledger), then the tables of the active profile reconciled
//! with the catalog: missing enum types (defined as on the remote, read from its catalog),
//! sequences, tables and columns are created, the readings queue's key and index completed or
//! rebuilt, nothing else is ever dropped or altered, and a type that differs from the profile
//! is reported. Idempotent: a second run changes nothing. It never writes to the remote.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::config::{DbConfig, PoolConfig, Side};
use crate::data::pg::PgError;
use crate::data::sql;
use crate::profile::{ColumnSpec, DefaultValue, Profile, ReadingsSpec, SqlType, TableName};

/// One of the service's own migrations: applied once, in order, recorded with a checksum.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// The service's own migrations. Append only: an applied migration must never change.
const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "the upload ledger",
        sql: "create table meter_sync_upload_ledger (
    id bigserial primary key,
    readings_table text not null,
    ids text[] not null,
    written_at timestamptz not null default now()
);
create index meter_sync_upload_ledger_table_idx on meter_sync_upload_ledger (readings_table);
create table meter_sync_upload_epoch (
    readings_table text primary key,
    database_identity text not null,
    since timestamptz not null default now()
);",
    },
    Migration {
        version: 3,
        name: "the download state",
        sql: "create table meter_sync_download_state (
    entity text primary key,
    source_select text not null,
    local_identity text not null,
    remote_identity text,
    local_horizon bigint not null,
    local_next bigint not null,
    local_xids bigint[] not null,
    remote_horizon bigint not null,
    remote_next bigint not null,
    updated_at timestamptz not null default now()
);",
    },
];

/// Why the local schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Database(#[from] PgError),
    #[error("type {name} (column {column}) does not exist locally{remote}")]
    MissingType {
        name: String,
        column: String,
        /// What the remote said about it.
        remote: String,
    },
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

/// Where `migrate` reads the definition of a type the local database lacks: the remote.
#[derive(Debug, Clone, Copy)]
pub struct TypeSource<'a> {
    pub remote: &'a DbConfig,
    pub pool: &'a PoolConfig,
}

/// Brings the local schema up to date for `profile`, in one transaction, without a remote: a
/// type the local database lacks is an error.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    profile: &Profile,
) -> Result<MigrateReport, SchemaError> {
    migrate_with(client, profile, None).await
}

/// [`migrate`], creating a missing local enum type as the remote defines it (`types`; the
/// remote is only connected to when a type is missing, and only read).
pub async fn migrate_with(
    client: &mut tokio_postgres::Client,
    profile: &Profile,
    types: Option<TypeSource<'_>>,
) -> Result<MigrateReport, SchemaError> {
    let q = |context: &'static str| move |e| PgError::query(Side::Local, context, e);
    let tx = client.transaction().await.map_err(q("begin migrate"))?;
    crate::data::runlock::lock_migrations(&tx).await?;
    let mut report = MigrateReport::default();
    apply_migrations(&tx, &mut report).await?;
    let mut columns: Vec<&ColumnSpec> = profile.entities.iter().flat_map(|e| &e.columns).collect();
    columns.extend(profile.readings.iter().flat_map(|r| &r.columns));
    create_missing_types(&tx, &columns, types, &mut report).await?;
    create_missing_sequences(&tx, &columns, &mut report).await?;
    for entity in &profile.entities {
        let create = sql::create_entity_table(entity);
        let columns = sql::entity_local_columns(entity);
        reconcile_table(&tx, &entity.table, &columns, &create, &mut report).await?;
    }
    if let Some(readings) = &profile.readings {
        let mut columns = Vec::new();
        if !readings.id_is_uploaded() {
            columns.push(sql::readings_id_column(readings));
        }
        columns.extend(readings.columns.iter().cloned());
        columns.extend(sql::readings_local_columns());
        let create = sql::create_readings_table(readings);
        let added = reconcile_table(&tx, &readings.table, &columns, &create, &mut report).await?;
        if added.contains(&readings.id_column) {
            // A key added to a table that already existed: index it like a primary key.
            tx.batch_execute(&sql::create_readings_id_index(readings))
                .await
                .map_err(q("index the readings id"))?;
            report.changes.push(format!(
                "created unique index \"{}\"",
                sql::readings_id_index_name(readings)
            ));
        }
        reconcile_queue_index(&tx, readings, &mut report).await?;
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

/// The queue index (`is_synchronized`, then `order_by`): created when missing, rebuilt when its
/// columns are not the profile's (the profile's `order_by` changed, or another system made it).
async fn reconcile_queue_index(
    tx: &tokio_postgres::Transaction<'_>,
    readings: &ReadingsSpec,
    report: &mut MigrateReport,
) -> Result<(), SchemaError> {
    let q = |context: &'static str| move |e| PgError::query(Side::Local, context, e);
    let name = sql::readings_queue_index_name(readings);
    let schema = readings.table.schema.as_ref().map(|s| s.as_str());
    let found: Option<Option<Vec<String>>> = tx
        .query_opt(sql::SELECT_INDEX_COLUMNS, &[&schema, &name])
        .await
        .map_err(q("look up the readings queue index"))?
        .map(|row| row.get(0));
    let wanted = sql::readings_queue_index_columns(readings);
    let wanted: Vec<String> = wanted.iter().map(|c| c.to_string()).collect();
    match found {
        Some(Some(columns)) if columns == wanted => return Ok(()),
        Some(columns) => {
            tx.batch_execute(&sql::drop_index(readings.table.schema.as_ref(), &name))
                .await
                .map_err(q("drop the stale readings queue index"))?;
            tx.batch_execute(&sql::create_readings_queue_index(readings))
                .await
                .map_err(q("create the readings queue index"))?;
            report.changes.push(format!(
                "rebuilt index \"{name}\" on ({}) (it was on ({}))",
                wanted.join(", "),
                columns
                    .map(|c| c.join(", "))
                    .unwrap_or_else(|| "expressions or a predicate".into())
            ));
        }
        None => {
            tx.batch_execute(&sql::create_readings_queue_index(readings))
                .await
                .map_err(q("create the readings queue index"))?;
            report.changes.push(format!("created index \"{name}\""));
        }
    }
    Ok(())
}

/// The base type name of a column (`meter_kind` of `meter_kind[]`).
fn base_type(column: &ColumnSpec) -> &str {
    column.sql_type.as_str().trim_end_matches("[]")
}

/// Creates each enum type the profile's columns name that the local database lacks, with the
/// labels the remote's type has, read from the remote catalog in a read-only transaction.
async fn create_missing_types(
    tx: &tokio_postgres::Transaction<'_>,
    columns: &[&ColumnSpec],
    source: Option<TypeSource<'_>>,
    report: &mut MigrateReport,
) -> Result<(), SchemaError> {
    let mut missing: Vec<&ColumnSpec> = Vec::new();
    for column in columns {
        if missing.iter().any(|m| base_type(m) == base_type(column)) {
            continue;
        }
        let known: bool = tx
            .query_one("select to_regtype($1) is not null", &[&base_type(column)])
            .await
            .map_err(|e| PgError::query(Side::Local, "look up a column type", e))?
            .get(0);
        if !known {
            missing.push(column);
        }
    }
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let Some(source) = source else {
        return Err(SchemaError::MissingType {
            name: base_type(first).to_string(),
            column: first.name.to_string(),
            remote: " (and no remote database was given to read its definition from)".into(),
        });
    };
    let remote = crate::data::pg::connect(source.remote, source.pool).await?;
    let r = |context: &'static str| move |e| PgError::query(Side::Remote, context, e);
    remote
        .batch_execute("begin transaction read only")
        .await
        .map_err(r("begin reading types"))?;
    for column in missing {
        let name = base_type(column);
        let row = remote
            .query_opt(sql::SELECT_TYPE_DEFINITION, &[&name])
            .await
            .map_err(r("read a type definition"))?;
        let missing = |remote: String| SchemaError::MissingType {
            name: name.to_string(),
            column: column.name.to_string(),
            remote,
        };
        match row {
            None => {
                return Err(missing(
                    " and the remote has no type of that name either".into(),
                ))
            }
            Some(row) => {
                let (kind, labels): (String, Vec<String>) = (row.get(0), row.get(1));
                if kind != "e" {
                    return Err(missing(format!(
                        "; the remote's {name} is a {} type, which migrate does not copy: create it locally by hand",
                        match kind.as_str() {
                            "d" => "domain",
                            "c" => "composite",
                            "r" => "range",
                            "m" => "multirange",
                            _ => "base",
                        }
                    )));
                }
                tx.batch_execute(&sql::create_enum(name, &labels))
                    .await
                    .map_err(|e| PgError::query(Side::Local, format!("create type {name}"), e))?;
                report.changes.push(format!(
                    "created type \"{name}\" as enum ({}) as the remote defines it",
                    labels.join(", ")
                ));
            }
        }
    }
    let _ = remote.batch_execute("rollback").await;
    Ok(())
}

/// Creates the sequences that `nextval` defaults name and the local database lacks.
async fn create_missing_sequences(
    tx: &tokio_postgres::Transaction<'_>,
    columns: &[&ColumnSpec],
    report: &mut MigrateReport,
) -> Result<(), SchemaError> {
    for column in columns {
        let Some(DefaultValue::NextVal(sequence)) = &column.default else {
            continue;
        };
        let exists: bool = tx
            .query_one("select to_regclass($1) is not null", &[&sequence.quoted()])
            .await
            .map_err(|e| PgError::query(Side::Local, "look up a sequence", e))?
            .get(0);
        if !exists {
            tx.batch_execute(&format!("create sequence {}", sequence.quoted()))
                .await
                .map_err(|e| {
                    PgError::query(Side::Local, format!("create sequence {sequence}"), e)
                })?;
            report
                .changes
                .push(format!("created sequence \"{sequence}\""));
        }
    }
    Ok(())
}

/// Creates the table, or adds the columns it lacks (returning their names), or reports type
/// differences.
async fn reconcile_table(
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableName,
    columns: &[ColumnSpec],
    create: &str,
    report: &mut MigrateReport,
) -> Result<Vec<crate::profile::Ident>, SchemaError> {
    let existing = table_columns(tx, table, Side::Local).await?;
    let mut added = Vec::new();
    if existing.is_empty() {
        tx.batch_execute(create)
            .await
            .map_err(|e| PgError::query(Side::Local, format!("create table {table}"), e))?;
        report.changes.push(format!("created table \"{table}\""));
        return Ok(added);
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
                added.push(column.name.clone());
            }
            // The readings key migrate would create; one that exists is accepted whatever its type.
            Some(_) if column.sql_type.as_str() == sql::SERIAL_TYPE => {}
            Some(found) if found.sql_type != canonical => report.warnings.push(format!(
                "column \"{table}\".\"{}\" has type {} but the profile says {} ({canonical}); left unchanged",
                column.name, found.sql_type, column.sql_type
            )),
            Some(_) => {}
        }
    }
    Ok(added)
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
