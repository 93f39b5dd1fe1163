//! Turns a raw profile into validated specs, collecting every problem with its location.

use std::collections::{BTreeMap, HashSet};

pub use super::problem::Problem;
use super::raw::{RawColumn, RawEntity, RawProfile, RawReadings, RawReference};
use super::{
    AfterUpload, ColumnSpec, Convert, DefaultFunction, DefaultValue, EntitySpec, Ident, OnMissing,
    Profile, ReadingsSpec, Reference, RemoteQuery, RemoteSource, ResendCheck, SqlType, TableName,
    TimeZone, RESERVED_TABLES,
};

/// Collects problems while building specs.
struct Checker {
    problems: Vec<Problem>,
    /// Columns that were named but refused (a bad type or default), by scope (`entity `x``,
    /// `readings`): other fields may name them without a second, misleading problem.
    broken: Vec<(String, Ident)>,
}

/// The SQL of a default, or why it is refused: literals (booleans, numbers, strings) and a
/// fixed list of functions, never arbitrary SQL.
fn parse_default(value: &toml::Value) -> Result<DefaultValue, String> {
    const HELP: &str = "use true, false, a number, a string, one of now(), current_timestamp, current_date, localtimestamp, clock_timestamp(), statement_timestamp(), transaction_timestamp(), gen_random_uuid(), or nextval('sequence')";
    match value {
        toml::Value::Boolean(b) => Ok(DefaultValue::Bool(*b)),
        toml::Value::Integer(i) => Ok(DefaultValue::Int(*i)),
        toml::Value::Float(f) if f.is_finite() => Ok(DefaultValue::Numeric(format!("{f:?}"))),
        toml::Value::String(text) => {
            let lower = text.trim().to_ascii_lowercase();
            if let Some((f, _)) = DefaultFunction::ALL.iter().find(|(_, sql)| *sql == lower) {
                return Ok(DefaultValue::Function(*f));
            }
            if let Some(argument) = lower
                .strip_prefix("nextval(")
                .and_then(|rest| rest.strip_suffix(')'))
            {
                let name = argument
                    .trim()
                    .strip_prefix('\'')
                    .and_then(|a| a.strip_suffix('\''))
                    .ok_or_else(|| {
                        "nextval takes a quoted sequence name: nextval('meter_id_seq')".to_string()
                    })?;
                return TableName::parse(name)
                    .map(DefaultValue::NextVal)
                    .map_err(|e| format!("sequence name `{name}`: {e}"));
            }
            let call = lower
                .split_once('(')
                .is_some_and(|(head, _)| Ident::parse(head.trim()).is_ok());
            let keyword = matches!(
                lower.as_str(),
                "current_time" | "current_user" | "session_user" | "user" | "localtime" | "null"
            );
            if call || keyword {
                return Err(HELP.to_string());
            }
            Ok(DefaultValue::Text(text.clone()))
        }
        _ => Err(HELP.to_string()),
    }
}

impl Checker {
    fn ident(&mut self, at: impl Into<String>, value: &str) -> Option<Ident> {
        Ident::parse(value)
            .map_err(|reason| {
                self.problems.push(Problem::BadIdent {
                    at: at.into(),
                    value: value.to_string(),
                    reason,
                })
            })
            .ok()
    }

    fn idents(&mut self, at: &str, values: &[String]) -> Vec<Ident> {
        values.iter().filter_map(|v| self.ident(at, v)).collect()
    }

    fn table(&mut self, at: impl Into<String>, value: &str) -> Option<TableName> {
        let at = at.into();
        let table = TableName::parse(value)
            .map_err(|reason| {
                self.problems.push(Problem::BadIdent {
                    at: at.clone(),
                    value: value.to_string(),
                    reason,
                })
            })
            .ok()?;
        if RESERVED_TABLES.contains(&table.bare()) {
            self.problems.push(Problem::ReservedTable {
                at,
                table: value.to_string(),
            });
        }
        Some(table)
    }

    fn columns(&mut self, at: &str, raw: &[RawColumn]) -> Vec<ColumnSpec> {
        if raw.is_empty() {
            self.problems
                .push(Problem::NoColumns { at: at.to_string() });
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, col) in raw.iter().enumerate() {
            let col_at = format!("{at} column {} (`{}`)", i + 1, col.name);
            let name = self.ident(&col_at, &col.name);
            let sql_type = SqlType::parse(&col.sql_type);
            if sql_type.is_none() {
                self.problems.push(Problem::BadType {
                    at: col_at.clone(),
                    value: col.sql_type.clone(),
                });
            }
            let default = match col.default.as_ref().map(parse_default) {
                None => Some(None),
                Some(Ok(default)) => Some(Some(default)),
                Some(Err(reason)) => {
                    self.problems.push(Problem::BadDefault {
                        at: col_at.clone(),
                        value: col
                            .default
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        reason,
                    });
                    None
                }
            };
            let remote_name = match &col.remote_name {
                None => Some(None),
                Some(r) => self.ident(format!("{col_at} remote_name"), r).map(Some),
            };
            let convert = match col.convert.as_deref() {
                None | Some("exact") => Some(Convert::Exact),
                Some("checked") => Some(Convert::Checked),
                Some(other) => {
                    self.problems.push(Problem::BadConvert {
                        at: col_at.clone(),
                        value: other.to_string(),
                    });
                    None
                }
            };
            let time_zone = match &col.time_zone {
                None => Some(None),
                Some(zone) => match TimeZone::parse(zone) {
                    Ok(zone) => Some(Some(zone)),
                    Err(reason) => {
                        self.problems.push(Problem::BadTimeZone {
                            at: col_at.clone(),
                            reason,
                        });
                        None
                    }
                },
            };
            if let (Some(Some(_)), Some(sql_type)) = (&time_zone, &sql_type) {
                if !sql_type.as_str().starts_with("timestamp") || sql_type.as_str().ends_with("[]")
                {
                    self.problems.push(Problem::TimeZoneType {
                        at: col_at.clone(),
                        sql_type: sql_type.to_string(),
                    });
                }
            }
            if let Some(name) = &name {
                if !seen.insert(name.clone()) {
                    self.problems.push(Problem::DuplicateColumn {
                        at: at.to_string(),
                        column: name.to_string(),
                    });
                }
            }
            match (name, sql_type, default, time_zone, remote_name, convert) {
                (
                    Some(name),
                    Some(sql_type),
                    Some(default),
                    Some(time_zone),
                    Some(remote_name),
                    Some(convert),
                ) => out.push(ColumnSpec {
                    name,
                    sql_type,
                    nullable: col.nullable,
                    default,
                    time_zone,
                    remote_name,
                    convert,
                }),
                (Some(name), ..) => self.broken.push((at.to_string(), name)),
                _ => {}
            }
        }
        out
    }

    /// Checks that each named column is among `columns`.
    fn subset(&mut self, at: &str, what: &'static str, names: &[Ident], columns: &[ColumnSpec]) {
        for name in names {
            let broken = self
                .broken
                .iter()
                .any(|(scope, n)| n == name && at.starts_with(scope.as_str()));
            if !broken && !columns.iter().any(|c| &c.name == name) {
                self.problems.push(Problem::NotAColumn {
                    at: at.to_string(),
                    what,
                    column: name.to_string(),
                });
            }
        }
    }

    fn entity(&mut self, raw: RawEntity) -> Option<(EntitySpec, Vec<RawReference>)> {
        let at = format!("entity `{}`", raw.name);
        let name = self.ident(format!("{at} name"), &raw.name)?;
        let table = self.table(
            format!("{at} table"),
            raw.table.as_deref().unwrap_or(&raw.name),
        );
        let remote = match (&raw.remote_table, &raw.remote_query) {
            (Some(t), None) => self
                .table(format!("{at} remote_table"), t)
                .map(RemoteSource::Table),
            (None, Some(q)) => {
                let trimmed = q.trim().to_ascii_lowercase();
                let starts = trimmed.starts_with("select") || trimmed.starts_with("with");
                if !starts || q.contains(';') {
                    self.problems.push(Problem::BadQuery {
                        entity: raw.name.clone(),
                    });
                    None
                } else {
                    Some(RemoteSource::Query(RemoteQuery {
                        text: q.trim().to_string(),
                    }))
                }
            }
            (None, None) => self
                .table(
                    format!("{at} remote_table"),
                    raw.table.as_deref().unwrap_or(&raw.name),
                )
                .map(RemoteSource::Table),
            (Some(_), Some(_)) => {
                self.problems.push(Problem::RemoteSource {
                    entity: raw.name.clone(),
                });
                None
            }
        };
        let columns = self.columns(&at, &raw.columns);
        if let Some(c) = columns
            .iter()
            .find(|c| c.name.as_str() == super::VERSION_COLUMN)
        {
            self.problems.push(Problem::ReservedEntityColumn {
                entity: raw.name.clone(),
                column: c.name.to_string(),
            });
        }
        let key = self.idents(&format!("{at} key"), &raw.key.into_vec());
        if key.is_empty() {
            self.problems.push(Problem::EmptyKey { at: at.clone() });
        }
        self.subset(&at, "key", &key, &columns);
        let tenant_column = raw
            .tenant_column
            .as_deref()
            .and_then(|t| self.ident(format!("{at} tenant_column"), t));
        if let (Some(_), Some(RemoteSource::Query(q))) = (&tenant_column, &remote) {
            if !q.uses_tenant() {
                self.problems.push(Problem::QueryWithoutTenant {
                    entity: raw.name.clone(),
                });
            }
        }
        let on_missing = match raw.on_missing.as_deref().unwrap_or("delete") {
            "delete" => Some(OnMissing::Delete),
            "keep" => Some(OnMissing::Keep),
            "deactivate" => {
                let column_name = raw.active_column.as_deref().unwrap_or("active");
                let column = self.ident(format!("{at} active_column"), column_name)?;
                let is_bool = columns
                    .iter()
                    .any(|c| c.name == column && matches!(c.sql_type.as_str(), "boolean" | "bool"));
                if !is_bool || key.contains(&column) {
                    self.problems.push(Problem::DeactivateColumn {
                        entity: raw.name.clone(),
                        column: column_name.to_string(),
                    });
                }
                Some(OnMissing::Deactivate { column })
            }
            other => {
                self.problems.push(Problem::BadOnMissing {
                    entity: raw.name.clone(),
                    value: other.to_string(),
                });
                None
            }
        };
        let depends_on = self.idents(&format!("{at} depends_on"), &raw.depends_on);
        Some((
            EntitySpec {
                name,
                table: table?,
                remote: remote?,
                key,
                columns,
                tenant_column,
                on_missing: on_missing?,
                depends_on,
                references: Vec::new(),
            },
            raw.references,
        ))
    }

    /// Resolves references against the other entities and adds them as dependencies.
    fn references(
        &mut self,
        entity: &mut EntitySpec,
        raw: Vec<RawReference>,
        all: &BTreeMap<Ident, Vec<ColumnSpec>>,
    ) {
        let at = format!("entity `{}` reference", entity.name);
        for reference in raw {
            let columns = self.idents(&at, &reference.columns.into_vec());
            let target_columns = self.idents(&at, &reference.entity_columns.into_vec());
            let Some(target) = self.ident(&at, &reference.entity) else {
                continue;
            };
            self.subset(&at, "reference", &columns, &entity.columns);
            let Some(target_spec) = all.get(&target) else {
                self.problems.push(Problem::UnknownEntity {
                    entity: entity.name.to_string(),
                    dependency: target.to_string(),
                });
                continue;
            };
            for column in &target_columns {
                if !target_spec.iter().any(|c| &c.name == column) {
                    self.problems.push(Problem::ReferenceColumn {
                        entity: entity.name.to_string(),
                        target: target.to_string(),
                        column: column.to_string(),
                    });
                }
            }
            if columns.len() != target_columns.len() || columns.is_empty() {
                self.problems.push(Problem::ReferenceArity {
                    entity: entity.name.to_string(),
                    target: target.to_string(),
                    left: columns.len(),
                    right: target_columns.len(),
                });
            }
            if !entity.depends_on.contains(&target) {
                entity.depends_on.push(target.clone());
            }
            entity.references.push(Reference {
                columns,
                entity: target,
                entity_columns: target_columns,
            });
        }
    }

    fn readings(&mut self, raw: RawReadings) -> Option<ReadingsSpec> {
        let at = "readings";
        let table = self.table("readings table", &raw.table);
        let remote_table = self.table(
            "readings remote_table",
            raw.remote_table.as_deref().unwrap_or(&raw.table),
        );
        let id_column = self.ident(
            "readings id_column",
            raw.id_column.as_deref().unwrap_or("id"),
        );
        let columns = self.columns(at, &raw.columns);
        for column in &columns {
            let name = column.name.as_str();
            if super::ReadingsSpec::LOCAL_COLUMNS.contains(&name) {
                self.problems.push(Problem::ReservedColumn {
                    column: name.to_string(),
                });
            }
        }
        let order_by = raw
            .order_by
            .map(|o| o.into_vec())
            .unwrap_or_else(|| vec!["timestamp".into(), "id".into()]);
        let order_by = self.idents("readings order_by", &order_by);
        let orderable: Vec<Ident> = order_by
            .iter()
            .filter(|o| Some(*o) != id_column.as_ref())
            .cloned()
            .collect();
        self.subset(at, "order_by", &orderable, &columns);
        // An uploaded local key (a uuid minted at the site) identifies a reading everywhere: the
        // natural dedupe key. Otherwise spec 004's (meter, time, unit).
        let id_uploaded = id_column
            .as_ref()
            .is_some_and(|id| columns.iter().any(|c| &c.name == id));
        let dedupe = match raw.dedupe_key {
            Some(d) => d.into_vec(),
            None if id_uploaded => vec![raw.id_column.clone().unwrap_or_else(|| "id".into())],
            None => vec!["meter_id".into(), "timestamp".into(), "unit".into()],
        };
        let dedupe_key = self.idents("readings dedupe_key", &dedupe);
        if dedupe_key.is_empty() {
            self.problems.push(Problem::EmptyKey {
                at: "readings dedupe_key".into(),
            });
        }
        self.subset(at, "dedupe_key", &dedupe_key, &columns);
        let tenant_column = raw
            .tenant_column
            .as_deref()
            .and_then(|t| self.ident("readings tenant_column", t));
        if let Some(column) = &tenant_column {
            self.subset(at, "tenant_column", std::slice::from_ref(column), &columns);
        }
        let after_upload = match raw.after_upload.as_deref().unwrap_or("delete") {
            "delete" => Some(AfterUpload::Delete),
            "mark" => Some(AfterUpload::Mark),
            other => {
                self.problems.push(Problem::BadAfterUpload {
                    value: other.to_string(),
                });
                None
            }
        };
        let resend_check = match raw.resend_check.as_deref().unwrap_or("uncertain") {
            "uncertain" => Some(ResendCheck::Uncertain),
            "every_batch" => Some(ResendCheck::EveryBatch),
            other => {
                self.problems.push(Problem::BadResendCheck {
                    value: other.to_string(),
                });
                None
            }
        };
        Some(ReadingsSpec {
            table: table?,
            remote_table: remote_table?,
            id_column: id_column?,
            columns,
            order_by,
            dedupe_key,
            after_upload: after_upload?,
            resend_check: resend_check?,
            tenant_column,
        })
    }
}

/// Validates a raw profile; on success the entities are in dependency order.
pub fn validate(raw: RawProfile, origin: &str) -> Result<Profile, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
        broken: Vec::new(),
    };
    if raw.entities.is_empty() && raw.readings.is_none() {
        return Err(vec![Problem::Empty]);
    }
    let mut entities = Vec::new();
    let mut names = HashSet::new();
    let mut tables = HashSet::new();
    for raw_entity in raw.entities {
        let Some((spec, refs)) = c.entity(raw_entity) else {
            continue;
        };
        if !names.insert(spec.name.clone()) {
            c.problems.push(Problem::DuplicateEntity {
                name: spec.name.to_string(),
            });
        }
        if !tables.insert(spec.table.clone()) {
            c.problems.push(Problem::DuplicateTable {
                table: spec.table.to_string(),
            });
        }
        entities.push((spec, refs));
    }
    let columns_by_name: BTreeMap<Ident, Vec<ColumnSpec>> = entities
        .iter()
        .map(|(e, _)| (e.name.clone(), e.columns.clone()))
        .collect();
    let mut specs = Vec::with_capacity(entities.len());
    for (mut spec, refs) in entities {
        c.references(&mut spec, refs, &columns_by_name);
        for dep in &spec.depends_on {
            if !columns_by_name.contains_key(dep) {
                c.problems.push(Problem::UnknownEntity {
                    entity: spec.name.to_string(),
                    dependency: dep.to_string(),
                });
            }
        }
        specs.push(spec);
    }
    let readings = raw.readings.and_then(|r| c.readings(r));
    if let Some(r) = &readings {
        if tables.contains(&r.table) {
            c.problems.push(Problem::DuplicateTable {
                table: r.table.to_string(),
            });
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let entities = dependency_order(specs).map_err(|path| vec![Problem::Cycle { path }])?;
    Ok(Profile {
        origin: origin.to_string(),
        entities,
        readings,
    })
}

/// Orders entities so each comes after what it depends on, keeping declaration order where
/// free; a cycle is returned as `a -> b -> a`.
fn dependency_order(specs: Vec<EntitySpec>) -> Result<Vec<EntitySpec>, String> {
    let mut remaining = specs;
    let mut ordered: Vec<EntitySpec> = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|e| {
            e.depends_on
                .iter()
                .all(|d| ordered.iter().any(|o| &o.name == d))
        });
        match ready {
            Some(i) => ordered.push(remaining.remove(i)),
            None => return Err(find_cycle(&remaining)),
        }
    }
    Ok(ordered)
}

/// Walks dependencies among the blocked entities until one repeats.
fn find_cycle(blocked: &[EntitySpec]) -> String {
    let mut path: Vec<&Ident> = Vec::new();
    let mut current = &blocked[0];
    loop {
        if let Some(start) = path.iter().position(|n| **n == current.name) {
            let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(current.name.to_string());
            return cycle.join(" -> ");
        }
        path.push(&current.name);
        let next = current
            .depends_on
            .iter()
            .find_map(|d| blocked.iter().find(|e| &e.name == d));
        match next {
            Some(next) => current = next,
            None => {
                return path
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            }
        }
    }
}
