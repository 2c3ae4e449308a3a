//! Configuration: the `credgate.yaml` and integration YAML schemas, validated with
//! every error located by file, line, column and field path.
//!
//! Loading is two passes over each file. yaml-rust2 walks the text once to learn
//! where every field starts ([`position`]); serde then builds typed structs from a
//! `serde_yaml::Value`, tracking the field path of the first structural error with
//! serde_path_to_error. Semantic checks (https only, templates that name real
//! fields, …) run only on files that parsed, and every problem found in every file
//! is returned at once.
#![forbid(unsafe_code)]

mod duration;
mod error;
mod integration;
pub mod position;
mod secret_ref;
mod server;
mod template;
mod url;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub use error::{ConfigError, ConfigErrors};
pub use integration::*;
pub use secret_ref::{Env, OsEnv, Resolved, SecretError, SecretRef, ValueOrRef};
pub use server::*;
pub use template::{Part, Template, TemplateError};
pub use url::{check_url, is_loopback_host, matches_pattern};

use error::{file_error, Collector};
use position::PositionIndex;

/// Integrations by name.
pub type Integrations = BTreeMap<String, Arc<Integration>>;

/// A loaded and validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub integrations: Integrations,
}

/// Loads `credgate.yaml` and every integration in its `integrations_dir`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let base = base_dir(path);
    let mut errors = Vec::new();
    let server = match parse_file::<ServerConfig>(path) {
        Ok((mut server, index)) => {
            let mut collector = Collector::new(path, &index);
            server.validate(&mut collector);
            errors.extend(collector.errors);
            server.rebase(&base);
            Some(server)
        }
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let dir = server
        .as_ref()
        .map(|s| s.integrations_dir.clone())
        .unwrap_or_else(|| base.join("integrations"));
    let integrations = match load_integrations(&dir) {
        Ok(integrations) => integrations,
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            BTreeMap::new()
        }
    };
    match server {
        Some(server) if errors.is_empty() => Ok(Config {
            path: path.to_owned(),
            server,
            integrations,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Loads every `*.yaml` / `*.yml` file in `dir` as an integration.
pub fn load_integrations(dir: &Path) -> Result<Integrations, ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        ConfigErrors(vec![file_error(
            dir,
            format!("cannot read integrations folder: {error}"),
        )])
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    let mut integrations = BTreeMap::new();
    let mut errors = Vec::new();
    for file in files {
        match load_integration(&file) {
            Ok(integration) => {
                integrations.insert(integration.name.clone(), Arc::new(integration));
            }
            Err(ConfigErrors(more)) => errors.extend(more),
        }
    }
    if errors.is_empty() {
        Ok(integrations)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads and validates one integration file.
pub fn load_integration(file: &Path) -> Result<Integration, ConfigErrors> {
    let (mut integration, index) = parse_file::<Integration>(file).map_err(|e| ConfigErrors(vec![e]))?;
    let mut collector = Collector::new(file, &index);
    integration.validate(file, &mut collector);
    if !collector.errors.is_empty() {
        return Err(ConfigErrors(collector.errors));
    }
    integration::rebase_secrets(&mut integration, &base_dir(file));
    Ok(integration)
}

fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reads and parses one file; the error names the field and its position.
fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<(T, PositionIndex), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| file_error(path, format!("cannot read: {error}")))?;
    parse_str(path, &text)
}

pub(crate) fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<(T, PositionIndex), ConfigError> {
    let index = PositionIndex::build(text).map_err(|error| ConfigError {
        file: path.to_owned(),
        line: error.position.line,
        column: error.position.column,
        field: String::new(),
        message: format!("invalid YAML: {}", error.message),
    })?;
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|error| {
        let (line, column) = error.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        ConfigError {
            file: path.to_owned(),
            line,
            column,
            field: String::new(),
            message: format!("invalid YAML: {error}"),
        }
    })?;
    let value = if value.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        value
    };
    let typed = serde_path_to_error::deserialize(value).map_err(|error| {
        let field = field_path(error.path());
        let mut collector = Collector::new(path, &index);
        collector.error(field, error.into_inner().to_string());
        collector.errors.remove(0)
    })?;
    Ok((typed, index))
}

/// `credentials.config.auth.tokenHost`, `base_urls[0]`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
