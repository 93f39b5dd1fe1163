//! The type rule: whether every value of one PostgreSQL column type can be stored in another
//! unchanged, and how it is converted on the way. One function, [`conversion`], decides for
//! both directions: the download asks it about (remote column, local column), the upload about
//! (local column, remote column).
//!
//! A pair passes when no value of the source type can be altered (rounded, truncated, padded,
//! shifted through a time zone) or refused by the target type. Everything else is refused
//! before anything moves, with the reason: a billing system must never store a value that
//! differs from the one it was sent, and PostgreSQL's own assignment rules would round
//! `59.9734` into a `numeric(6,2)` column without a word.

use std::fmt;

use tokio_postgres::types::{Kind, Type};

use crate::profile::{ColumnSpec, Convert, TimeZone};

mod fit;

pub use fit::{Fit, FitRule};

/// A column's type as a prepared statement describes it: the type and its modifier (`-1`:
/// none). The modifier of an array column is its elements'.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    pub ty: Type,
    pub typmod: i32,
}

impl ColumnType {
    /// The type of a statement's result column.
    pub fn of(column: &tokio_postgres::Column) -> Self {
        Self {
            ty: column.type_().clone(),
            typmod: column.type_modifier(),
        }
    }

    fn element(&self) -> Option<Self> {
        match self.ty.kind() {
            Kind::Array(element) => Some(Self {
                ty: element.clone(),
                typmod: self.typmod,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ColumnType {
    /// The type as a person writes it: `numeric(6,2)`, `varchar(10)`, `timestamp(3)`, `int4[]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(element) = self.element() {
            return write!(f, "{element}[]");
        }
        let name = self.ty.name();
        match (name, self.typmod) {
            (_, m) if m < 0 => f.write_str(name),
            ("numeric", m) => {
                let (precision, scale) = numeric_modifier(m);
                write!(f, "numeric({precision},{scale})")
            }
            ("varchar" | "bpchar", m) => write!(f, "{name}({})", m - VARHDRSZ),
            ("bit" | "varbit", m) => write!(f, "{name}({m})"),
            ("timestamp" | "timestamptz" | "time" | "timetz", m) => write!(f, "{name}({m})"),
            ("interval", m) => write!(f, "interval(modifier {m})"),
            (_, m) => write!(f, "{name}(modifier {m})"),
        }
    }
}

/// How a value moves from the source column to the target column, applied on the source side
/// (in the statement that reads it) so the bytes on the wire already have the target's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// The same type: passed through as it is (the target's modifier may be wider).
    None,
    /// Cast to the target's type, by its catalog name (`int8`, `text`, `_int8` for `int8[]`).
    Cast(String),
    /// `value at time zone 'zone'`: a naive `timestamp` read as wall time in `zone` (giving a
    /// `timestamptz`), or an instant shown as wall time in `zone` (giving a `timestamp`).
    AtTimeZone(TimeZone),
    /// A narrowing pair allowed with `convert = "checked"`: values that pass `fit` arrive
    /// unchanged (cast to `cast`, a catalog type name, when set); any other value is refused
    /// on its own before anything moves, never altered.
    Checked { cast: Option<String>, fit: Fit },
}

impl Conversion {
    /// The value check of a checked column.
    pub fn fit(&self) -> Option<&Fit> {
        match self {
            Conversion::Checked { fit, .. } => Some(fit),
            _ => None,
        }
    }
}

/// The checked columns of `columns` (`convert = "checked"` pairs, by the conversions planned for
/// them in column order) with the test their values must pass: one list for the download's
/// search of the remote and the upload's quarantine and claims.
pub fn checks<'a>(
    columns: &'a [ColumnSpec],
    conversions: &'a [Conversion],
) -> impl Iterator<Item = (&'a crate::profile::Ident, &'a Fit)> {
    columns
        .iter()
        .zip(conversions)
        .filter_map(|(c, conversion)| conversion.fit().map(|fit| (&c.name, fit)))
}

/// Which way values move between the sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Remote to local (configuration tables).
    Download,
    /// Local to remote (readings).
    Upload,
}

/// The conversion of each column of `specs`, from the columns of two statements that select
/// them in the same order on each side; or, when any pair could change or refuse a value, one
/// line per such column naming both full types and why
/// (`frequency: remote numeric(6,2), local numeric(18,4) (numeric(6,2) rounds to 2 decimal place(s))`).
pub fn plan(
    specs: &[ColumnSpec],
    remote: &[tokio_postgres::Column],
    local: &[tokio_postgres::Column],
    direction: Direction,
) -> Result<Vec<Conversion>, String> {
    let mut conversions = Vec::with_capacity(specs.len());
    let mut refused = Vec::new();
    for ((spec, remote), local) in specs.iter().zip(remote).zip(local) {
        let (remote, local) = (ColumnType::of(remote), ColumnType::of(local));
        let (source, target) = match direction {
            Direction::Download => (&remote, &local),
            Direction::Upload => (&local, &remote),
        };
        let checked = spec.convert == Convert::Checked;
        match conversion(source, target, spec.time_zone.as_ref(), checked) {
            Ok(c) => conversions.push(c),
            Err(why) => refused.push(format!(
                "{}: remote {remote}, local {local} ({why})",
                spec.name
            )),
        }
    }
    if refused.is_empty() {
        Ok(conversions)
    } else {
        Err(refused.join("; "))
    }
}

/// PostgreSQL's length-word size, added to character and numeric modifiers.
const VARHDRSZ: i32 = 4;

/// Precision and scale of a `numeric` modifier (the scale may be negative since 15).
fn numeric_modifier(typmod: i32) -> (i32, i32) {
    let m = typmod - VARHDRSZ;
    ((m >> 16) & 0xffff, ((m & 0x7ff) ^ 1024) - 1024)
}

/// Digits before and after the point that a numeric type (or an integer) holds; `None`:
/// unconstrained.
fn numeric_digits(column: &ColumnType) -> Option<(i32, i32)> {
    match column.ty.name() {
        "int2" => Some((5, 0)),
        "int4" => Some((10, 0)),
        "int8" => Some((19, 0)),
        "numeric" if column.typmod >= 0 => {
            let (precision, scale) = numeric_modifier(column.typmod);
            Some((precision - scale, scale))
        }
        _ => None,
    }
}

/// The fractional-second digits of a time type (6 when unconstrained).
fn time_precision(column: &ColumnType) -> i32 {
    if column.typmod < 0 {
        6
    } else {
        column.typmod
    }
}

/// The length limit of a character or bit type (`None`: unlimited).
fn length(column: &ColumnType) -> Option<i32> {
    match column.ty.name() {
        "text" => None,
        "varchar" | "bpchar" if column.typmod >= 0 => Some(column.typmod - VARHDRSZ),
        "bit" | "varbit" if column.typmod >= 0 => Some(column.typmod),
        _ => None,
    }
}

/// The hint added to a refusal that `convert = "checked"` would allow.
const CHECKED_HINT: &str =
    "; allowed per value with convert = \"checked\" on the column: a value that does not fit is then refused on its own, never altered";

/// Whether every value of `source` can be stored in `target` unchanged and, if so, how to
/// convert it; otherwise why not. `zone` is the profile's `time_zone` for the column: the zone
/// of whichever side is a naive `timestamp`, without which `timestamp` and `timestamptz` would
/// be converted through the session's `TimeZone` setting. `checked` (`convert = "checked"`)
/// also allows a narrowing pair whose values can only be refused, never altered, with the
/// check each value must pass.
pub fn conversion(
    source: &ColumnType,
    target: &ColumnType,
    zone: Option<&TimeZone>,
    checked: bool,
) -> Result<Conversion, String> {
    match (source.element(), target.element()) {
        (Some(s), Some(t)) => {
            return match conversion(&s, &t, None, false)? {
                Conversion::None => Ok(Conversion::None),
                Conversion::Cast(_) => Ok(Conversion::Cast(target.ty.name().to_string())),
                Conversion::AtTimeZone(_) => Err("arrays of times are not converted".into()),
                Conversion::Checked { .. } => Err("arrays are not checked per value".into()),
            };
        }
        (None, None) => {}
        _ => return Err("an array and a single value".into()),
    }
    if let Some(fit) = narrowing(source, target) {
        if checked {
            let cast = (source.ty != target.ty).then(|| target.ty.name().to_string());
            return Ok(Conversion::Checked { cast, fit });
        }
        let why = exact(source, target, zone)
            .err()
            .unwrap_or_else(|| format!("{target} refuses some values"));
        return Err(why + CHECKED_HINT);
    }
    exact(source, target, zone)
}

/// A narrowing pair whose values PostgreSQL can only refuse, never alter, with the test a
/// value must pass; `None` for any other pair.
fn narrowing(source: &ColumnType, target: &ColumnType) -> Option<Fit> {
    let fit = |rule| {
        Some(Fit {
            rule,
            target: target.to_string(),
        })
    };
    let (s, t) = (source.ty.name(), target.ty.name());
    let range = |t: &str| match t {
        "int2" => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
        "int4" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        _ => None,
    };
    match (s, t) {
        ("int8", "int4" | "int2") | ("int4", "int2") => {
            let (min, max) = range(t)?;
            fit(FitRule::Range { min, max })
        }
        ("text" | "varchar", "varchar") => match (length(source), length(target)) {
            (Some(have), Some(room)) if room < have => fit(FitRule::Length(room)),
            (None, Some(room)) => fit(FitRule::Length(room)),
            _ => None,
        },
        ("int2" | "int4" | "int8" | "numeric", "numeric") => {
            match (numeric_digits(source), numeric_digits(target)) {
                (Some((digits, scale)), Some((room, target_scale)))
                    if target_scale >= scale.max(0) && room < digits && room >= 0 =>
                {
                    fit(FitRule::Digits(room))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The pairs where no value can change or be refused.
fn exact(
    source: &ColumnType,
    target: &ColumnType,
    zone: Option<&TimeZone>,
) -> Result<Conversion, String> {
    if source.ty == target.ty {
        return same_type(source, target);
    }
    if Type::from_oid(source.ty.oid()).is_none() || Type::from_oid(target.ty.oid()).is_none() {
        return user_types(source, target);
    }
    let (s, t) = (source.ty.name(), target.ty.name());
    let cast = || Ok(Conversion::Cast(t.to_string()));
    match (s, t) {
        ("int2", "int4" | "int8" | "float4" | "float8") | ("int4", "int8" | "float8") => cast(),
        ("int2" | "int4" | "int8", "numeric") => {
            match (numeric_digits(source), numeric_digits(target)) {
                (Some((digits, _)), Some((room, scale))) if room >= digits && scale >= 0 => cast(),
                (_, None) => cast(),
                (Some((digits, _)), Some(_)) => {
                    Err(format!("{target} cannot hold every {digits}-digit integer"))
                }
                (None, _) => Err("not an integer type".into()),
            }
        }
        ("varchar", "text") => cast(),
        ("text", "varchar") if target.typmod < 0 => cast(),
        ("text", "varchar") => Err(format!("{target} refuses longer text")),
        ("bpchar", _) | (_, "bpchar") => {
            Err("character(n) pads or strips trailing spaces when converted".into())
        }
        ("timestamp", "timestamptz") | ("timestamptz", "timestamp") => {
            if time_precision(target) < time_precision(source) {
                return Err(format!("{target} rounds fractional seconds of {source}"));
            }
            match zone {
                Some(zone) => Ok(Conversion::AtTimeZone(zone.clone())),
                None => Err("timestamp against timestamptz converts through the session's TimeZone; name the zone of the naive side with time_zone = \"UTC\" on the column".into()),
            }
        }
        ("float4" | "float8", "numeric") | ("numeric", "float4" | "float8") => {
            Err("floating point and numeric values do not convert exactly".into())
        }
        ("float4", "float8") => {
            Err("float4 values gain digits as float8 (0.1 becomes 0.10000000149011612)".into())
        }
        ("int8", "int4" | "int2") | ("int4", "int2") => {
            Err(format!("{target} refuses values outside its range"))
        }
        ("int4" | "int8", "float4") | ("int8", "float8") => {
            Err(format!("{target} rounds large integers"))
        }
        _ => Err("the types differ".into()),
    }
}

/// Two columns of one built-in type: only the modifiers can differ.
fn same_type(source: &ColumnType, target: &ColumnType) -> Result<Conversion, String> {
    if source.typmod == target.typmod {
        return Ok(Conversion::None);
    }
    let name = source.ty.name();
    let ok = match name {
        "numeric" => match (numeric_digits(source), numeric_digits(target)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some((digits, scale)), Some((room, target_scale))) => {
                if target_scale < scale {
                    return Err(format!(
                        "{target} rounds to {target_scale} decimal place(s)"
                    ));
                }
                room >= digits
            }
        },
        "varchar" | "varbit" => match (length(source), length(target)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(have), Some(room)) => room >= have,
        },
        "timestamp" | "timestamptz" | "time" | "timetz" => {
            if time_precision(target) < time_precision(source) {
                return Err(format!("{target} rounds fractional seconds"));
            }
            true
        }
        "bpchar" => return Err(format!("{target} pads {source} values with spaces")),
        "bit" => return Err(format!("{target} refuses {source} values")),
        // Other modifiers (interval fields) only ever restrict.
        _ => target.typmod < 0,
    };
    if ok {
        Ok(Conversion::None)
    } else {
        Err(format!("{target} is narrower than {source}"))
    }
}

/// User-defined types have different oids in different databases: they are compared by name,
/// and an enum by its labels (its values travel as label text). An enum becomes text (or a
/// varchar long enough for every label) unchanged.
fn user_types(source: &ColumnType, target: &ColumnType) -> Result<Conversion, String> {
    let same_name =
        source.ty.name() == target.ty.name() && source.ty.schema() == target.ty.schema();
    if let Kind::Enum(labels) = source.ty.kind() {
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        match (target.ty.name(), length(target)) {
            ("text", _) | ("varchar", None) => {
                return Ok(Conversion::Cast(target.ty.name().to_string()))
            }
            ("varchar", Some(room)) if room as usize >= longest => {
                return Ok(Conversion::Cast("varchar".to_string()))
            }
            ("varchar", Some(_)) => {
                return Err(format!(
                    "{target} is shorter than the longest label of {} ({longest} characters)",
                    source.ty.name()
                ))
            }
            _ => {}
        }
    }
    match (source.ty.kind(), target.ty.kind()) {
        (Kind::Enum(have), Kind::Enum(room)) if same_name => {
            match have.iter().find(|label| !room.contains(label)) {
                None => Ok(Conversion::None),
                Some(label) => Err(format!("enum label {label:?} is missing on the target")),
            }
        }
        _ if same_name => Err(format!(
            "user-defined type {} is only compared when it is an enum",
            source.ty.name()
        )),
        _ => Err("the types differ".into()),
    }
}

#[cfg(test)]
mod tests;
