//! Values that end up inside SQL text: identifiers, table names, column types and the tenant
//! id. Each is valid by construction, so the `sql` module can build statements from them alone.

use std::fmt;

/// Why a string is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 63 bytes")]
    TooLong,
    #[error("it must start with a lower-case letter or `_`")]
    BadStart,
    #[error("character {ch:?} at position {pos} is not allowed (only a-z, 0-9 and `_`)")]
    BadChar { ch: char, pos: usize },
}

/// A plain SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL's limit).
///
/// Upper case is refused rather than folded so that what the profile says is exactly the name
/// in the catalog. Statements always use the quoted form, so reserved words such as
/// `timestamp` are fine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates a plain identifier.
    pub fn parse(text: &str) -> Result<Self, IdentError> {
        let mut chars = text.chars();
        let first = chars.next().ok_or(IdentError::Empty)?;
        if !(first.is_ascii_lowercase() || first == '_') {
            return Err(if first.is_ascii_uppercase() || first.is_ascii_digit() {
                IdentError::BadStart
            } else {
                IdentError::BadChar { ch: first, pos: 0 }
            });
        }
        if let Some((pos, ch)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(IdentError::BadChar { ch, pos });
        }
        if text.len() > 63 {
            return Err(IdentError::TooLong);
        }
        Ok(Self(text.to_string()))
    }

    /// An identifier written in the source code. An invalid constant is a programming error,
    /// caught by the unit tests that build every constant one.
    #[allow(clippy::expect_used)]
    pub fn constant(name: &'static str) -> Self {
        Self::parse(name).expect("constant identifiers are plain")
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier in double quotes, ready for SQL text.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes any string as a SQL identifier (`"` doubled). The one function through which every
/// identifier reaches SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads back a quoted identifier produced by [`quote_ident`]; `None` if it is not one.
pub fn unquote_ident(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' && chars.next() != Some('"') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// A table name, optionally schema-qualified (`schema.table`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub name: Ident,
}

impl TableName {
    /// Parses `table` or `schema.table`, each part a plain identifier.
    pub fn parse(text: &str) -> Result<Self, IdentError> {
        match text.split_once('.') {
            Some((schema, name)) => Ok(Self {
                schema: Some(Ident::parse(schema)?),
                name: Ident::parse(name)?,
            }),
            None => Ok(Self {
                schema: None,
                name: Ident::parse(text)?,
            }),
        }
    }

    /// The quoted, possibly qualified, name for SQL text.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.quoted(), self.name.quoted()),
            None => self.name.quoted(),
        }
    }

    /// The schema-less name as a value (for catalog lookups bound as parameters).
    pub fn bare(&self) -> &str {
        self.name.as_str()
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// A column type as PostgreSQL writes it: lower-case words, an optional `(n)` or `(p, s)`
/// modifier and optional `[]` suffixes, e.g. `bigint`, `varchar(255)`, `numeric(12, 3)`,
/// `timestamp with time zone`, `text[]`. Nothing else can appear, so it is safe in DDL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqlType(String);

impl SqlType {
    /// Validates and normalises (lower case, single spaces, `(p, s)` spacing).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() || text.len() > 100 {
            return None;
        }
        let (mut base, mut arrays) = (text.as_str(), 0);
        while let Some(rest) = base.trim_end().strip_suffix("[]") {
            base = rest;
            arrays += 1;
        }
        let (words, modifier) = match base.find('(') {
            Some(open) => {
                let inner = base[open + 1..].trim_end().strip_suffix(')')?;
                let numbers: Vec<&str> = inner.split(',').map(str::trim).collect();
                if numbers.len() > 2
                    || numbers
                        .iter()
                        .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
                {
                    return None;
                }
                (&base[..open], Some(format!("({})", numbers.join(", "))))
            }
            None => (base, None),
        };
        let words: Vec<&str> = words.split_whitespace().collect();
        let word_ok = |w: &&str| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if words.is_empty() || !words.iter().all(word_ok) {
            return None;
        }
        let mut out = words.join(" ");
        if let Some(m) = modifier {
            out.push_str(&m);
        }
        out.push_str(&"[]".repeat(arrays));
        Some(Self(out))
    }

    /// A type written in the source code (see [`Ident::constant`]).
    #[allow(clippy::expect_used)]
    pub fn constant(text: &'static str) -> Self {
        Self::parse(text).expect("constant types are valid")
    }

    /// The normalised type text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The zone of a naive `timestamp` column that faces a `timestamptz` column on the other side
/// (the profile's `time_zone`). Only zones with one fixed offset are accepted (`UTC`, `GMT`,
/// `Etc/UTC`, `Etc/GMT`, `Etc/GMT+N`, `Etc/GMT-N`): in a zone with daylight saving time one
/// wall-clock hour a year stands for two instants and another for none, so converting would
/// change some values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimeZone(String);

impl TimeZone {
    /// Validates a fixed-offset zone name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fixed = match text {
            "UTC" | "GMT" | "Etc/UTC" | "Etc/GMT" => true,
            _ => text
                .strip_prefix("Etc/GMT")
                .and_then(|offset| {
                    let (sign, hours) = offset.split_at_checked(1)?;
                    let hours: u8 = hours.parse().ok().filter(|_| !hours.starts_with('0'))?;
                    Some(matches!((sign, hours), ("+", 1..=12) | ("-", 1..=14)))
                })
                .unwrap_or(false),
        };
        if fixed {
            Ok(Self(text.to_string()))
        } else {
            Err(format!("`{text}` is not a fixed-offset time zone (use UTC, GMT or Etc/GMT+N / Etc/GMT-N: a zone with daylight saving time maps two instants to one wall-clock time, so a value could change)"))
        }
    }

    /// The zone name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The zone as a SQL string literal (its characters exclude quotes).
    pub fn literal(&self) -> String {
        format!("'{}'", self.0)
    }
}

/// Why a tenant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tenant id: 1-255 characters from letters, digits, `_`, `-`, `.` and `:`")]
pub struct TenantIdError(pub String);

/// The site's tenant. Its characters exclude quotes and backslashes, so it can be written as a
/// SQL string literal where a parameter cannot be bound (a `COPY (query)`), and it compares
/// with integer and text tenant columns alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id.
    pub fn parse(text: &str) -> Result<Self, TenantIdError> {
        let text = text.trim();
        let ok = !text.is_empty()
            && text.len() <= 255
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(TenantIdError(text.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A tenant id that stands for none in particular (`0`): for statements that are only
    /// prepared, never run for a tenant (`meter-sync check`).
    pub fn placeholder() -> Self {
        Self("0".to_string())
    }

    /// The id as an untyped SQL string literal (`'42'`), which PostgreSQL coerces to the type
    /// of the column it is compared with.
    pub fn literal(&self) -> String {
        format!("'{}'", self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_identifiers_are_rejected() {
        for bad in [
            "",
            "meter; drop table x",
            "\"meter\"",
            "me'ter",
            "Meter",
            "1meter",
            "meter-x",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(Ident::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["meter", "_x", "device_register", "t1", &"a".repeat(63)] {
            assert_eq!(Ident::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(
            Ident::parse("meter; drop table x").unwrap_err().to_string(),
            "character ';' at position 5 is not allowed (only a-z, 0-9 and `_`)"
        );
    }

    #[test]
    fn table_names_may_be_schema_qualified() {
        assert_eq!(
            TableName::parse("public.meter").unwrap().quoted(),
            "\"public\".\"meter\""
        );
        assert_eq!(TableName::parse("meter").unwrap().quoted(), "\"meter\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".meter").is_err());
    }

    #[test]
    fn sql_types_are_normalised_and_nothing_else_passes() {
        let norm = |t: &str| SqlType::parse(t).map(|t| t.0);
        assert_eq!(norm("BIGINT").as_deref(), Some("bigint"));
        assert_eq!(norm("varchar( 255 )").as_deref(), Some("varchar(255)"));
        assert_eq!(norm("numeric(12,3)").as_deref(), Some("numeric(12, 3)"));
        assert_eq!(
            norm("timestamp  with time zone").as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(norm("text[]").as_deref(), Some("text[]"));
        for bad in [
            "",
            "int; drop table x",
            "text default 'x'",
            "varchar(a)",
            "numeric(1,2,3)",
            "int)",
            "\"int\"",
            "int -- x",
        ] {
            assert_eq!(norm(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_id_literal_is_safe() {
        assert_eq!(TenantId::parse(" 42 ").unwrap().literal(), "'42'");
        for zone in [
            "UTC",
            "GMT",
            "Etc/UTC",
            "Etc/GMT",
            "Etc/GMT+5",
            "Etc/GMT-14",
            "Etc/GMT+12",
        ] {
            assert_eq!(
                TimeZone::parse(zone).unwrap().literal(),
                format!("'{zone}'")
            );
        }
        for zone in [
            "Europe/Berlin",
            "utc",
            "Etc/GMT+13",
            "Etc/GMT-15",
            "Etc/GMT+05",
            "Etc/GMT+",
            "'; drop",
        ] {
            assert!(TimeZone::parse(zone).is_err(), "{zone}");
        }
        assert_eq!(
            TenantId::parse("site-a.b:c_1").unwrap().literal(),
            "'site-a.b:c_1'"
        );
        for bad in ["", "1'; drop table x; --", "a\\b", "a b", &"x".repeat(256)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        // Profile validation property: any string either validates as a plain identifier or is
        // rejected; a validated one round-trips through quoting unchanged.
        #[test]
        fn identifiers_validate_or_reject_and_round_trip(text in "\\PC{0,70}") {
            match Ident::parse(&text) {
                Ok(ident) => {
                    prop_assert_eq!(ident.as_str(), text.as_str());
                    prop_assert!(text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
                    prop_assert_eq!(unquote_ident(&ident.quoted()), Some(text.clone()));
                }
                Err(_) => {
                    let plain = !text.is_empty()
                        && text.len() <= 63
                        && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    prop_assert!(!plain, "plain identifier {:?} rejected", text);
                }
            }
        }

        #[test]
        fn identifier_shaped_strings_always_validate(text in "[a-z_][a-z0-9_]{0,62}") {
            let ident = Ident::parse(&text).unwrap();
            prop_assert_eq!(unquote_ident(&ident.quoted()), Some(text));
        }

        #[test]
        fn quoting_round_trips_any_string(text in "\\PC{0,40}") {
            prop_assert_eq!(unquote_ident(&quote_ident(&text)), Some(text));
        }
    }
}
