//! Turns the config's key and token references into a keyring and a token, generating
//! dev-mode files on first run with a warning nobody can miss.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use credgate_config::{Env, ServerConfig};
use credgate_crypto::{Key, KeyId, Keyring, SecretString};
use rand::RngCore;

use crate::exit::{Code, Failure};

pub fn keyring(config: &ServerConfig, env: &dyn Env) -> Result<Keyring, Failure> {
    let mut keys = Vec::with_capacity(config.keys.len());
    for source in &config.keys {
        let config_error = |message: String| Failure::new(Code::Config, format!("keys: {}: {message}", source.id));
        let id = KeyId::new(source.id.clone()).map_err(|e| config_error(e.to_string()))?;
        let reference = source
            .secret_ref()
            .ok_or_else(|| config_error("needs from_env or from_file".into()))?;
        let resolved = reference
            .resolve(env, || Key::generate().to_base64())
            .map_err(|e| config_error(e.to_string()))?;
        if let Some(path) = &resolved.generated {
            warn_generated("encryption key", path);
        }
        let key = Key::from_base64(&id, resolved.value.expose()).map_err(|e| config_error(e.to_string()))?;
        keys.push((id, key));
    }
    Keyring::new(keys).map_err(|e| Failure::new(Code::Config, e))
}

pub fn admin_token(config: &ServerConfig, env: &dyn Env) -> Result<Option<SecretString>, Failure> {
    let Some(reference) = &config.admin.token else {
        return Ok(None);
    };
    let resolved = reference
        .resolve(env, random_token)
        .map_err(|e| Failure::new(Code::Config, format!("admin.token: {e}")))?;
    if let Some(path) = &resolved.generated {
        warn_generated("admin token", path);
    }
    Ok(Some(resolved.value))
}

fn random_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    SecretString::new(URL_SAFE_NO_PAD.encode(bytes))
}

fn warn_generated(what: &str, path: &std::path::Path) {
    let line = "!".repeat(78);
    eprintln!(
        "{line}\n!! DEV MODE: generated a new {what} in {}\n!! Anyone who can read that file can read every stored credential or\n!! administer credgate. In production, use from_env with a managed secret.\n{line}",
        path.display()
    );
    tracing::warn!(path = %path.display(), "generated a new dev-mode {what}");
}
