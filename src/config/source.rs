//! Where raw settings come from: defaults, a `--config` TOML file, the environment (and a
//! `.env` file), and `--set KEY=VALUE` on the command line, in rising precedence.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::keys::{self, KeySpec};
use super::ConfigError;

/// Where one raw value came from; named in every error about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    DotEnv(PathBuf),
    Env,
    Cli,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::DotEnv(path) => write!(f, "env file {}", path.display()),
            Source::Env => f.write_str("environment"),
            Source::Cli => f.write_str("command line"),
        }
    }
}

/// One raw value and its origin.
#[derive(Debug, Clone)]
pub struct RawValue {
    pub value: String,
    pub source: Source,
}

/// The merged raw settings, one entry per known key that has a value (given or default).
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<&'static str, RawValue>,
}

/// Everything the configuration is read from; built by `main` from the process, and by tests
/// from literals, so no test touches the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file with the same keys in lower case (`--config FILE`).
    pub file: Option<PathBuf>,
    /// A dotenv file; its values yield to the real environment (`.env` in the working
    /// directory when it exists).
    pub dotenv: Option<PathBuf>,
    /// The process environment, `(name, value)`; names that are not ours are ignored.
    pub env: Vec<(String, String)>,
    /// `--set KEY=VALUE` pairs, highest precedence.
    pub cli: Vec<(String, String)>,
}

impl Sources {
    /// The sources of a real process: its environment, `.env` in the working directory if it
    /// exists, the given config file and command-line overrides.
    pub fn from_process(file: Option<PathBuf>, cli: Vec<(String, String)>) -> Self {
        let dotenv = Path::new(".env");
        Self {
            file,
            dotenv: dotenv.is_file().then(|| dotenv.to_path_buf()),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            cli,
        }
    }
}

impl RawSettings {
    /// Merges the layers: defaults < file < `.env` < environment < command line.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut settings = RawSettings::default();
        for spec in keys::ALL {
            if let Some(default) = spec.default {
                settings.set(spec, default.to_string(), Source::Default);
            }
        }
        if let Some(path) = &sources.file {
            for (key, value) in read_toml_file(path)? {
                let spec = keys::lookup(&key).ok_or_else(|| ConfigError::UnknownKey {
                    key: key.clone(),
                    source_name: Source::File(path.clone()).to_string(),
                    suggestion: keys::suggest(&key),
                })?;
                settings.set(spec, value, Source::File(path.clone()));
            }
        }
        if let Some(path) = &sources.dotenv {
            let iter = dotenvy::from_path_iter(path).map_err(|e| ConfigError::DotEnv {
                path: path.clone(),
                source: e,
            })?;
            for item in iter {
                let (key, value) = item.map_err(|e| ConfigError::DotEnv {
                    path: path.clone(),
                    source: e,
                })?;
                if let Some(spec) = keys::lookup(&key) {
                    settings.set(spec, value, Source::DotEnv(path.clone()));
                }
            }
        }
        for (key, value) in &sources.env {
            if let Some(spec) = keys::lookup_exact(key) {
                settings.set(spec, value.clone(), Source::Env);
            }
        }
        for (key, value) in &sources.cli {
            let spec = keys::lookup(key).ok_or_else(|| ConfigError::UnknownKey {
                key: key.clone(),
                source_name: Source::Cli.to_string(),
                suggestion: keys::suggest(key),
            })?;
            settings.set(spec, value.clone(), Source::Cli);
        }
        Ok(settings)
    }

    /// Sets one value; an empty value means "not set" and restores the default, as with
    /// `KEY=` in an env file.
    fn set(&mut self, spec: &'static KeySpec, value: String, source: Source) {
        let value = value.trim().to_string();
        if value.is_empty() {
            match spec.default {
                Some(default) => {
                    self.values.insert(
                        spec.name,
                        RawValue {
                            value: default.to_string(),
                            source: Source::Default,
                        },
                    );
                }
                None => {
                    self.values.remove(spec.name);
                }
            }
        } else {
            self.values.insert(spec.name, RawValue { value, source });
        }
    }

    /// The raw value of a key, if it has one.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.values.get(key)
    }
}

/// Reads a flat TOML table; values may be strings, integers, floats or booleans.
fn read_toml_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source: e,
    })?;
    let table: toml::Table = text.parse().map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError::FileValueType {
                    path: path.to_path_buf(),
                    key,
                    found: other.type_str(),
                })
            }
        };
        out.push((key, text));
    }
    Ok(out)
}
