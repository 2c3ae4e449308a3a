use credgate_crypto::CryptoError;
use credgate_store::StoreError;

/// Why an account operation was refused. Every variant that concerns input names
/// the field, so an API client can point at it. None carries a credential value.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("integration: unknown integration {0:?}")]
    UnknownIntegration(String),
    #[error("account {0} not found")]
    NotFound(String),
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("account {0} was changed concurrently; read it again and retry")]
    Conflict(String),
    #[error("stored key check for key {0} has no configured key, but values sealed with it remain; add the key back (rekey needs it)")]
    MissingKey(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("store: {0}")]
    Store(StoreError),
}

impl AccountError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The input field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::UnknownIntegration(_) => Some("integration"),
            Self::AlreadyExists(_) => Some("id"),
            _ => None,
        }
    }
}

impl From<StoreError> for AccountError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::AlreadyExists(id) => Self::AlreadyExists(id),
            StoreError::VersionConflict { id, .. } => Self::Conflict(id),
            other => Self::Store(other),
        }
    }
}
