use std::fmt;
use std::path::{Path, PathBuf};

use crate::position::{Position, PositionIndex};

/// One problem in one configuration file, located by line, column and field path:
/// `config/integrations/hubspot.yaml:7:5: credentials.config.auth.tokenHost: must be an https URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted field path; empty for problems with the file as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration, reported together so that one run of
/// `credgate config check` shows all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one file, placing each at its field's position.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    index: &'a PositionIndex,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(file: &'a Path, index: &'a PositionIndex) -> Self {
        Self {
            file,
            index,
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        let Position { line, column } = self.index.find(&field);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field,
            message: message.into(),
        });
    }
}

/// An error about a file that has no position (unreadable, not found).
pub(crate) fn file_error(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line: 1,
        column: 1,
        field: String::new(),
        message: message.into(),
    }
}
