//! The profile TOML as written, before validation (`serde` shapes only).

use serde::Deserialize;

/// A whole profile file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Configuration tables mirrored from the remote, in any order (dependencies decide).
    #[serde(default, rename = "entity")]
    pub entities: Vec<RawEntity>,
    /// The readings table uploaded to the remote; absent: no upload.
    pub readings: Option<RawReadings>,
}

/// One string or a list of strings (`key = "id"` or `key = ["id", "element"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A column: name, SQL type, nullability, optional default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub sql_type: String,
    #[serde(default = "yes")]
    pub nullable: bool,
    pub default: Option<toml::Value>,
    pub time_zone: Option<String>,
    /// The column's name on the remote, when it differs.
    pub remote_name: Option<String>,
    /// `"exact"` (default) or `"checked"`: a narrowing pair whose values are refused one by one
    /// when they do not fit, never altered.
    pub convert: Option<String>,
}

fn yes() -> bool {
    true
}

/// A reference whose target must exist locally before a row is inserted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReference {
    pub columns: OneOrMany,
    pub entity: String,
    pub entity_columns: OneOrMany,
}

/// One mirrored table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    pub name: String,
    pub table: Option<String>,
    pub remote_table: Option<String>,
    pub remote_query: Option<String>,
    pub key: OneOrMany,
    pub columns: Vec<RawColumn>,
    pub tenant_column: Option<String>,
    #[serde(default)]
    pub on_missing: Option<String>,
    pub active_column: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub references: Vec<RawReference>,
}

/// The readings table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReadings {
    pub table: String,
    pub remote_table: Option<String>,
    pub id_column: Option<String>,
    pub columns: Vec<RawColumn>,
    pub order_by: Option<OneOrMany>,
    pub dedupe_key: Option<OneOrMany>,
    pub after_upload: Option<String>,
    pub resend_check: Option<String>,
    pub tenant_column: Option<String>,
}
