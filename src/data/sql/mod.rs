//! Every statement built from profile data is built here, from validated specs only:
//! identifiers always pass through [`quote_ident`](crate::profile::quote_ident) (via
//! [`Ident::quoted`]), values are bound parameters or [`TenantId::literal`]s. No other module
//! formats SQL from data.

mod download;
pub mod ledger;
mod upload;

pub use download::*;
pub use upload::*;

use crate::data::convert::Conversion;
use crate::profile::{
    quote_ident, ColumnSpec, DefaultValue, EntitySpec, Ident, ReadingsSpec, SqlType, TableName,
};

/// `"a", "b", "c"`.
pub fn column_list<'a>(names: impl IntoIterator<Item = &'a Ident>) -> String {
    names
        .into_iter()
        .map(Ident::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `expression` converted by the type rule's `conversion`: as it is, cast to the target's type
/// (`expression::"int8"`), or through the declared zone (`(expression at time zone 'UTC')`).
pub fn convert(expression: String, conversion: &Conversion) -> String {
    match conversion {
        Conversion::None => expression,
        Conversion::Cast(target) => format!("({expression})::{}", quote_ident(target)),
        Conversion::AtTimeZone(zone) => format!("({expression} at time zone {})", zone.literal()),
        Conversion::Checked {
            cast: Some(target), ..
        } => format!("({expression})::{}", quote_ident(target)),
        Conversion::Checked { cast: None, .. } => expression,
    }
}

/// The remote columns (by their remote names), each read through its conversion
/// (`conversions` in column order; missing ones pass as they are) and named as the local
/// column: the select list the local types expect.
pub fn converted_columns(columns: &[ColumnSpec], conversions: &[Conversion]) -> String {
    read_columns(columns, conversions, |c| c.remote().quoted())
}

/// The select list of `columns`: each column's `value` (its name, or an expression of it) read
/// through its conversion, named as the column wherever it is not the bare column.
pub fn read_columns(
    columns: &[ColumnSpec],
    conversions: &[Conversion],
    value: impl Fn(&ColumnSpec) -> String,
) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.name.quoted();
            let read = convert(value(c), conversions.get(i).unwrap_or(&Conversion::None));
            if read == name {
                name
            } else {
                format!("{read} as {name}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One column in `create table` / `add column`: `"name" type [not null] [default ...]`.
pub fn column_definition(column: &ColumnSpec) -> String {
    let mut text = format!("{} {}", column.name.quoted(), column.sql_type);
    if !column.nullable {
        text.push_str(" not null");
    }
    if let Some(default) = &column.default {
        text.push_str(" default ");
        text.push_str(&default.sql());
    }
    text
}

/// The local columns of an entity: its synced columns (the remote-only tenant column is not
/// among them unless the profile lists it).
pub fn create_entity_table(entity: &EntitySpec) -> String {
    let mut parts: Vec<String> = entity_local_columns(entity)
        .iter()
        .map(column_definition)
        .collect();
    parts.push(format!("primary key ({})", column_list(&entity.key)));
    format!(
        "create table {} (\n    {}\n)",
        entity.table.quoted(),
        parts.join(",\n    ")
    )
}

/// An entity's local columns: the remote row version (bookkeeping) first, then the profile's.
/// First, because the diff reads it for every row: PostgreSQL decodes a row's columns in order
/// up to the last one a query needs, so a version at the end would cost decoding every column.
pub fn entity_local_columns(entity: &EntitySpec) -> Vec<ColumnSpec> {
    let mut columns = vec![ColumnSpec::new(
        Ident::constant(VERSION_COLUMN),
        SqlType::constant("bigint"),
    )];
    columns.extend(entity.columns.iter().cloned());
    columns
}

/// The readings bookkeeping columns the service adds locally, in order.
pub fn readings_local_columns() -> Vec<ColumnSpec> {
    let col = |name: &'static str,
               ty: &'static str,
               nullable: bool,
               default: Option<DefaultValue>| ColumnSpec {
        nullable,
        default,
        ..ColumnSpec::new(Ident::constant(name), SqlType::constant(ty))
    };
    vec![
        col(
            "is_synchronized",
            "boolean",
            false,
            Some(DefaultValue::Bool(false)),
        ),
        col("synced_at", "timestamptz", true, None),
        col(
            "sync_attempts",
            "integer",
            false,
            Some(DefaultValue::Int(0)),
        ),
        col("sync_error", "text", true, None),
        col("quarantined_at", "timestamptz", true, None),
    ]
}

/// The local readings table: a `bigserial` id (unless the id is an uploaded column), the
/// uploaded columns, the bookkeeping columns.
pub fn create_readings_table(readings: &ReadingsSpec) -> String {
    let mut parts = Vec::new();
    if !readings.id_is_uploaded() {
        parts.push(format!(
            "{} {SERIAL_TYPE} primary key",
            readings.id_column.quoted()
        ));
    }
    parts.extend(readings.columns.iter().map(column_definition));
    parts.extend(readings_local_columns().iter().map(column_definition));
    if readings.id_is_uploaded() {
        parts.push(format!("primary key ({})", readings.id_column.quoted()));
    }
    format!(
        "create table {} (\n    {}\n)",
        readings.table.quoted(),
        parts.join(",\n    ")
    )
}

/// The readings key `migrate` adds when the profile does not list it among the columns: a
/// `bigserial`. (An existing key of any type is accepted as it is.)
pub fn readings_id_column(readings: &ReadingsSpec) -> ColumnSpec {
    ColumnSpec {
        nullable: false,
        ..ColumnSpec::new(readings.id_column.clone(), SqlType::constant(SERIAL_TYPE))
    }
}

/// The type of the readings key `migrate` creates.
pub const SERIAL_TYPE: &str = "bigserial";

/// The unique index on a readings key added to an existing table.
pub fn readings_id_index_name(readings: &ReadingsSpec) -> String {
    truncate_ident(&format!(
        "{}_{}_key",
        readings.table.bare(),
        readings.id_column
    ))
}

/// `create unique index` on the readings key (added to a table that already existed).
pub fn create_readings_id_index(readings: &ReadingsSpec) -> String {
    format!(
        "create unique index {} on {} ({})",
        crate::profile::quote_ident(&readings_id_index_name(readings)),
        readings.table.quoted(),
        readings.id_column.quoted()
    )
}

/// The columns of the queue index, in order.
pub fn readings_queue_index_columns(readings: &ReadingsSpec) -> Vec<Ident> {
    let mut columns = vec![Ident::constant("is_synchronized")];
    columns.extend(readings.order_by.iter().cloned());
    columns
}

/// `drop index`, in the table's schema.
pub fn drop_index(schema: Option<&Ident>, name: &str) -> String {
    match schema {
        Some(schema) => format!(
            "drop index {}.{}",
            schema.quoted(),
            crate::profile::quote_ident(name)
        ),
        None => format!("drop index {}", crate::profile::quote_ident(name)),
    }
}

/// An enum type with the given labels (each an escaped string literal).
pub fn create_enum(name: &str, labels: &[String]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|l| crate::profile::DefaultValue::Text(l.clone()).sql())
        .collect();
    format!(
        "create type {} as enum ({})",
        crate::profile::quote_ident(name),
        labels.join(", ")
    )
}

/// A type's kind (`e` enum, `d` domain, `b` base, ...) and, for an enum, its labels in order:
/// binds `$1`, the type's name; no row when there is none.
pub const SELECT_TYPE_DEFINITION: &str = "select t.typtype::text,
    array(select e.enumlabel::text from pg_enum e where e.enumtypid = t.oid order by e.enumsortorder)
from pg_type t where t.oid = to_regtype($1)";

/// The index the upload's claim query walks: `(is_synchronized, <order_by>)`.
pub fn readings_queue_index_name(readings: &ReadingsSpec) -> String {
    truncate_ident(&format!("{}_sync_queue_idx", readings.table.bare()))
}

/// `create index` for the upload queue.
pub fn create_readings_queue_index(readings: &ReadingsSpec) -> String {
    let columns = readings_queue_index_columns(readings);
    let name = readings_queue_index_name(readings);
    let on = match &readings.table.schema {
        Some(schema) => format!("{}.{}", schema.quoted(), readings.table.name.quoted()),
        None => readings.table.name.quoted(),
    };
    format!(
        "create index {} on {on} ({})",
        crate::profile::quote_ident(&name),
        column_list(&columns)
    )
}

/// `alter table ... add column ...`.
pub fn add_column(table: &TableName, column: &ColumnSpec) -> String {
    format!(
        "alter table {} add column {}",
        table.quoted(),
        column_definition(column)
    )
}

/// A temporary table whose columns have the given types, for asking PostgreSQL the canonical
/// spelling of each (`varchar(255)` is `character varying(255)`).
pub fn create_type_probe(name: &str, types: &[&SqlType]) -> String {
    let columns: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("c{i} {t}"))
        .collect();
    format!(
        "create temporary table {} ({}) on commit drop",
        crate::profile::quote_ident(name),
        columns.join(", ")
    )
}

/// Column names and canonical types of a table: binds `$1` schema (null: search path) and
/// `$2` table name.
pub const SELECT_TABLE_COLUMNS: &str =
    "select a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
where c.relname = $2
  and ($1::text is null and pg_table_is_visible(c.oid) or n.nspname = $1::text)
  and a.attnum > 0 and not a.attisdropped
order by a.attnum";

/// The columns of the index of this name in the table's schema, in order (NULL when it has
/// expressions or a predicate); no row when there is none. Binds `$1` schema, `$2` name.
pub const SELECT_INDEX_COLUMNS: &str = "select case when i.indexprs is null and i.indpred is null then
    array(select a.attname::text from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum order by k.ord) end
from pg_class c join pg_namespace n on n.oid = c.relnamespace join pg_index i on i.indexrelid = c.oid
where c.relkind = 'i' and c.relname = $2
  and ($1::text is null and pg_table_is_visible(c.oid) or n.nspname = $1::text)";

/// PostgreSQL truncates identifiers to 63 bytes; do it ourselves so names are predictable.
fn truncate_ident(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn entity_tables_quote_every_identifier_and_key_on_the_profile_key() {
        let profile = Profile::builtin_default().unwrap();
        let meter = profile.entity("meter").unwrap();
        let ddl = create_entity_table(meter);
        assert!(
            ddl.starts_with(
                "create table \"meter\" (\n    \"meter_sync_version\" bigint,\n    \"id\" bigint not null,"
            ),
            "{ddl}"
        );
        assert!(ddl.contains("\"active\" boolean default true"), "{ddl}");
        assert!(
            ddl.ends_with("primary key (\"id\", \"meter_element_id\")\n)"),
            "{ddl}"
        );
        assert!(
            !ddl.contains("tenant_id"),
            "the tenant column stays remote: {ddl}"
        );
    }

    #[test]
    fn readings_table_has_a_serial_id_and_bookkeeping_columns() {
        let profile = Profile::builtin_default().unwrap();
        let readings = profile.readings.as_ref().unwrap();
        let ddl = create_readings_table(readings);
        assert!(ddl.contains("\"id\" bigserial primary key"), "{ddl}");
        assert!(ddl.contains("\"timestamp\" timestamp not null"), "{ddl}");
        assert!(
            ddl.contains("\"created_at\" timestamp default now()"),
            "{ddl}"
        );
        assert!(
            ddl.contains("\"is_synchronized\" boolean not null default false"),
            "{ddl}"
        );
        assert_eq!(
            create_readings_queue_index(readings),
            "create index \"meter_readings_sync_queue_idx\" on \"meter_readings\" (\"is_synchronized\", \"timestamp\", \"id\")"
        );
    }
}
