//! Secrets as every table gives them: `{name}_env` (an environment variable
//! holding it) or `{name}_file` (a file holding it, as Docker and systemd
//! secrets are), never inline. One reader for all of them, so that every
//! secret is trimmed, refused when empty, and named the same way in problems.

use std::path::Path;

use secrecy::SecretString;

use super::{EnvSource, Problem};

/// Reads the secret `{table}.{name}_env` or `{table}.{name}_file` points
/// at; exactly one of them must be set. A problem names the key and the
/// fix, never the secret.
pub(super) fn read_secret(
    table: &str,
    name: &str,
    var: Option<&str>,
    file: Option<&Path>,
    env: &dyn EnvSource,
) -> Result<SecretString, Problem> {
    let key = |suffix: &str| format!("{table}.{name}_{suffix}");
    let read = match (var, file) {
        (Some(var), None) => secret_from_env(var, name, env).map_err(|m| (key("env"), m)),
        (None, Some(path)) => secret_from_file(path).map_err(|m| (key("file"), m)),
        (Some(_), Some(_)) => Err((
            key("env"),
            format!("set only one of {name}_env and {name}_file"),
        )),
        (None, None) => Err((
            key("env"),
            format!(
                "missing: set {name}_env (an environment variable name) or {name}_file (a path)"
            ),
        )),
    };
    read.map_err(|(key, message)| Problem { key, message })
}

fn secret_from_env(var: &str, name: &str, env: &dyn EnvSource) -> Result<SecretString, String> {
    match env.var(var) {
        Some(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_owned())),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!(
            "environment variable {var} is not set; export it, or use {name}_file"
        )),
    }
}

fn secret_from_file(path: &Path) -> Result<SecretString, String> {
    match std::fs::read_to_string(path) {
        Ok(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_owned())),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}
