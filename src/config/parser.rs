//! Reading raw settings into typed values, key by key, collecting every error: each key's
//! accepted values come from its definition in `keys`.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{self, Accepts};
use super::{DbConfig, KeyError, RawSettings, Secret, Side};

/// The key names of one database side.
pub(super) struct DbKeys {
    side: Side,
    host: &'static str,
    port: &'static str,
    db: &'static str,
    user: &'static str,
    password: &'static str,
    sslmode: &'static str,
    sslrootcert: &'static str,
    /// The pool mode key (the remote side only).
    pool_mode: Option<&'static str>,
}

pub(super) const LOCAL_KEYS: DbKeys = DbKeys {
    side: Side::Local,
    host: "POSTGRES_SYNC_HOST",
    port: "POSTGRES_SYNC_PORT",
    db: "POSTGRES_SYNC_DB",
    user: "POSTGRES_SYNC_USER",
    password: "POSTGRES_SYNC_PASSWORD",
    sslmode: "POSTGRES_SYNC_SSLMODE",
    sslrootcert: "POSTGRES_SYNC_SSLROOTCERT",
    pool_mode: None,
};

pub(super) const REMOTE_KEYS: DbKeys = DbKeys {
    side: Side::Remote,
    host: "POSTGRES_CLIENT_HOST",
    port: "POSTGRES_CLIENT_PORT",
    db: "POSTGRES_CLIENT_DB",
    user: "POSTGRES_CLIENT_USER",
    password: "POSTGRES_CLIENT_PASSWORD",
    sslmode: "POSTGRES_CLIENT_SSLMODE",
    sslrootcert: "POSTGRES_CLIENT_SSLROOTCERT",
    pool_mode: Some("POSTGRES_CLIENT_POOL_MODE"),
};

/// Collects parse errors while reading keys.
pub(super) struct Parser<'a> {
    pub(super) raw: &'a RawSettings,
    pub(super) errors: Vec<KeyError>,
}

impl Parser<'_> {
    /// Records that `key` is missing or invalid.
    pub(super) fn fail(&mut self, key: &'static str) {
        let spec = keys::lookup_exact(key);
        let expected = spec.map_or_else(String::new, |s| s.accepts.describe());
        let raw = self.raw.get(key);
        self.errors.push(KeyError {
            key,
            value: raw.map(|r| {
                if spec.is_some_and(|s| s.secret) {
                    Secret::MASK.to_string()
                } else {
                    r.value.clone()
                }
            }),
            source: raw.map(|r| r.source.clone()),
            expected,
        });
    }

    /// A key that has a value (given or default); parse failures and absence are recorded.
    pub(super) fn value<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        match self.raw.get(key) {
            Some(raw) => {
                let parsed = parse(&raw.value);
                if parsed.is_none() {
                    self.fail(key);
                }
                parsed
            }
            None => {
                self.fail(key);
                None
            }
        }
    }

    /// A key that may be unset.
    pub(super) fn optional<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        self.raw.get(key)?;
        self.value(key, parse)
    }

    /// The key's definition; every key the parser reads is in the table.
    fn accepts(key: &'static str) -> Accepts {
        keys::lookup_exact(key).map_or(Accepts::Text(""), |s| s.accepts)
    }

    /// A whole number in the key's range.
    pub(super) fn int(&mut self, key: &'static str) -> u64 {
        let Accepts::Int { min, max } = Self::accepts(key) else {
            unreachable!("{key} is not defined as a number");
        };
        self.value(key, |v| {
            v.replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
        })
        .unwrap_or(min)
    }

    /// Seconds up to the key's maximum.
    pub(super) fn seconds(&mut self, key: &'static str) -> Duration {
        let Accepts::Seconds { max } = Self::accepts(key) else {
            unreachable!("{key} is not defined as seconds");
        };
        self.value(key, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=max).contains(s))
                .map(Duration::from_secs_f64)
        })
        .unwrap_or_default()
    }

    pub(super) fn db(&mut self, keys: &DbKeys) -> Option<DbConfig> {
        let host = self.value(keys.host, |v| Some(v.to_string()));
        let port = self.int(keys.port) as u16;
        let dbname = self.value(keys.db, |v| Some(v.to_string()));
        let user = self.value(keys.user, |v| Some(v.to_string()));
        let password = self
            .raw
            .get(keys.password)
            .map(|v| Secret::new(v.value.clone()))
            .unwrap_or_default();
        let sslmode = self.value(keys.sslmode, |v| v.parse().ok());
        let sslrootcert = self.optional(keys.sslrootcert, |v| {
            let path = PathBuf::from(v);
            path.is_file().then_some(path)
        });
        let pool_mode = match keys.pool_mode {
            Some(key) => self.value(key, |v| v.parse().ok()),
            None => Some(super::PoolMode::Direct),
        };
        Some(DbConfig {
            pool_mode: pool_mode?,
            side: keys.side,
            host: host?,
            port,
            dbname: dbname?,
            user: user?,
            password,
            sslmode: sslmode?,
            sslrootcert,
        })
    }
}

/// A boolean setting: true/false, 1/0, yes/no, on/off.
pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}
