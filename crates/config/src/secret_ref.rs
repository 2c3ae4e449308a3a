//! Secrets in configuration are references (`from_env: NAME`, `from_file: PATH`),
//! never literals: a config file gets copied, committed and pasted into tickets.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use credgate_crypto::SecretString;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Where configuration reads environment variables. Tests pass a map instead of
/// mutating the process environment (which is racy across parallel tests).
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEnv;

impl Env for OsEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A reference to a secret held outside the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File {
        path: PathBuf,
        /// Dev mode only: create the file with a fresh value when it does not exist.
        generate_if_missing: bool,
    },
}

/// Why a secret reference could not be resolved. Names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("environment variable {0} is empty")]
    EmptyEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("secret file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("cannot create secret file {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
}

/// A resolved secret and whether it was just generated (the caller warns loudly).
#[derive(Debug)]
pub struct Resolved {
    pub value: SecretString,
    pub generated: Option<PathBuf>,
}

impl SecretRef {
    pub(crate) fn from_parts(
        from_env: Option<String>,
        from_file: Option<PathBuf>,
        generate_if_missing: bool,
    ) -> Result<Self, &'static str> {
        match (from_env, from_file) {
            (Some(_), Some(_)) => Err("give either from_env or from_file, not both"),
            (None, None) => Err("a secret needs from_env: NAME or from_file: PATH"),
            (Some(_), None) if generate_if_missing => Err("generate_if_missing only works with from_file"),
            (Some(name), None) => Ok(Self::Env(name)),
            (None, Some(path)) => Ok(Self::File {
                path,
                generate_if_missing,
            }),
        }
    }

    /// Makes a relative `from_file` path relative to the config file's folder.
    pub(crate) fn rebase(&mut self, base: &Path) {
        if let Self::File { path, .. } = self {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Reads the secret. `generate` makes a value for a missing dev-mode file.
    pub fn resolve(&self, env: &dyn Env, generate: impl FnOnce() -> SecretString) -> Result<Resolved, SecretError> {
        match self {
            Self::Env(name) => match env.var(name) {
                None => Err(SecretError::MissingEnv(name.clone())),
                Some(value) if value.trim().is_empty() => Err(SecretError::EmptyEnv(name.clone())),
                Some(value) => Ok(Resolved {
                    value: SecretString::new(value.trim()),
                    generated: None,
                }),
            },
            Self::File {
                path,
                generate_if_missing,
            } => match std::fs::read_to_string(path) {
                Ok(text) if text.trim().is_empty() => Err(SecretError::EmptyFile(path.clone())),
                Ok(text) => Ok(Resolved {
                    value: SecretString::new(text.trim()),
                    generated: None,
                }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound && *generate_if_missing => {
                    let value = generate();
                    write_private(path, value.expose()).map_err(|source| SecretError::WriteFile {
                        path: path.clone(),
                        source,
                    })?;
                    Ok(Resolved {
                        value,
                        generated: Some(path.clone()),
                    })
                }
                Err(source) => Err(SecretError::ReadFile {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env {name}"),
            Self::File { path, .. } => write!(f, "file {}", path.display()),
        }
    }
}

/// Creates the file readable by its owner only; never overwrites an existing one.
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

pub(crate) const LITERAL_SECRET: &str =
    "secrets must be references ({ from_env: NAME } or { from_file: PATH }), not literal values";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    from_env: Option<String>,
    from_file: Option<PathBuf>,
    #[serde(default)]
    generate_if_missing: bool,
}

/// Hand-written so that a literal never reaches an error message: serde's default
/// "invalid type: string \"…\"" would print the secret itself.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ from_env: NAME } or { from_file: PATH }")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
                let raw = RawSecretRef::deserialize(de::value::MapAccessDeserializer::new(map))?;
                SecretRef::from_parts(raw.from_env, raw.from_file, raw.generate_if_missing).map_err(de::Error::custom)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(LITERAL_SECRET))
            }
        }

        deserializer.deserialize_any(RefVisitor)
    }
}

/// A value that may be written inline or referenced like a secret (an OAuth client
/// id is public, but teams often keep it next to its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueOrRef {
    Literal(String),
    Ref(SecretRef),
}

impl<'de> Deserialize<'de> for ValueOrRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Literal(String),
            Ref(SecretRef),
        }
        match Either::deserialize(deserializer) {
            Ok(Either::Literal(value)) => Ok(Self::Literal(value)),
            Ok(Either::Ref(reference)) => Ok(Self::Ref(reference)),
            Err(_) => Err(de::Error::custom(
                "expected a string, { from_env: NAME } or { from_file: PATH }",
            )),
        }
    }
}

impl ValueOrRef {
    pub fn resolve(&self, env: &dyn Env) -> Result<String, SecretError> {
        match self {
            Self::Literal(value) => Ok(value.clone()),
            Self::Ref(reference) => reference
                .resolve(env, || SecretString::new(""))
                .map(|resolved| resolved.value.expose().to_owned()),
        }
    }

    pub(crate) fn rebase(&mut self, base: &Path) {
        if let Self::Ref(reference) = self {
            reference.rebase(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secrets_are_refused_without_echoing_them() {
        let error = serde_yaml::from_str::<SecretRef>("hunter2-very-secret").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("not literal values"));
    }

    #[test]
    fn references_parse() {
        let env: SecretRef = serde_yaml::from_str("{ from_env: TOKEN }").unwrap();
        assert_eq!(env, SecretRef::Env("TOKEN".into()));
        assert!(serde_yaml::from_str::<SecretRef>("{ from_env: A, from_file: b }").is_err());
        assert!(serde_yaml::from_str::<SecretRef>("{ from_env: A, bogus: 1 }").is_err());
    }

    #[test]
    fn env_resolution_uses_the_given_env_only() {
        let env: HashMap<String, String> = [("TOKEN".to_owned(), " abc \n".to_owned())].into();
        let reference = SecretRef::Env("TOKEN".into());
        let resolved = reference.resolve(&env, SecretString::default).unwrap();
        assert_eq!(resolved.value.expose(), "abc");
        let missing = SecretRef::Env("NOPE".into()).resolve(&env, SecretString::default);
        assert_eq!(missing.unwrap_err().to_string(), "environment variable NOPE is not set");
    }

    #[test]
    fn dev_files_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let reference = SecretRef::File {
            path: path.clone(),
            generate_if_missing: true,
        };
        let env = HashMap::new();
        let first = reference.resolve(&env, || SecretString::new("generated")).unwrap();
        assert_eq!(first.generated.as_deref(), Some(path.as_path()));
        let second = reference.resolve(&env, || SecretString::new("other")).unwrap();
        assert_eq!(second.value.expose(), "generated");
        assert!(second.generated.is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
