//! `wxtokend config`: the effective configuration, every key as the layers
//! set it, with nothing secret in it. No secret is read to print it: the
//! accounts' `secret_env` and `secret_file` are shown as written, never
//! resolved, and `mongodb.uri_file` is named, not opened. A password in
//! `mongodb.uri` (and the URI options that can carry one) shows as `****`;
//! `mongodb.uri` is left out when `mongodb.uri_file` replaces it. The
//! `[open_platform]` secrets are `*_env` and `*_file` names like the
//! accounts', shown as written, and so are its refresh-token key files
//! (paths, never opened here).

use std::path::Path;

use serde_json::{Map, Value};

use super::{layers, process_overrides, ConfigError, ProcessEnv, Scope, Settings};

/// What stands for a secret in the output.
const REDACTED: &str = "****";

/// Options of a connection string that can carry a secret (MongoDB's, and
/// Redis's `pass` of `redis+unix://` URLs).
const SECRET_OPTIONS: [&str; 5] = [
    "tlsCertificateKeyFilePassword",
    "authMechanismProperties",
    "proxyPassword",
    "pass",
    "password",
];

/// The configuration `file` (if any) and the environment make, checked as
/// every command checks it, with its secrets left out; keys sorted.
pub fn effective(file: Option<&Path>) -> Result<Value, ConfigError> {
    let layered = layers(file, process_overrides())?;
    Settings::from_layers(layered.clone(), &ProcessEnv, Scope::Local)?;
    let mut value: Value = layered
        .try_deserialize()
        .map_err(|e| ConfigError::invalid("configuration", e.to_string()))?;
    if let Some(mongodb) = value.get_mut("mongodb").and_then(Value::as_object_mut) {
        redact_mongodb(mongodb);
    }
    if let Some(mirrors) = value.get_mut("mirrors").and_then(Value::as_array_mut) {
        for mirror in mirrors.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(Value::String(url)) = mirror.get_mut("url") {
                *url = redact_uri(url);
            }
        }
    }
    if let Some(accounts) = value.get_mut("accounts").and_then(Value::as_array_mut) {
        for account in accounts.iter_mut().filter_map(Value::as_object_mut) {
            // The defaults of an [[accounts]] entry (see accounts.rs).
            account.entry("endpoint").or_insert_with(|| "token".into());
            account
                .entry("tickets")
                .or_insert_with(|| Value::Array(Vec::new()));
        }
    }
    if let Some(open_platform) = value
        .get_mut("open_platform")
        .and_then(Value::as_object_mut)
    {
        // The defaults of [open_platform] (see open_platform.rs); its
        // secrets are `*_env` and `*_file` names, shown as written.
        open_platform.entry("listen").or_insert_with(|| "".into());
        open_platform
            .entry("max_connections")
            .or_insert_with(|| super::open_platform::default_max_connections().into());
        open_platform
            .entry("path")
            .or_insert_with(|| super::open_platform::default_path().into());
        open_platform.entry("max_message_age").or_insert_with(|| {
            humantime::format_duration(super::open_platform::default_max_message_age())
                .to_string()
                .into()
        });
        open_platform
            .entry("max_body_bytes")
            .or_insert_with(|| super::open_platform::default_max_body_bytes().into());
        open_platform
            .entry("start_push_ticket_after")
            .or_insert_with(|| {
                humantime::format_duration(super::open_platform::default_start_push_ticket_after())
                    .to_string()
                    .into()
            });
        open_platform
            .entry("authorizers")
            .or_insert_with(|| "all".into());
        open_platform
            .entry("authorizer_tickets")
            .or_insert_with(|| Value::Array(Vec::new()));
        open_platform
            .entry("discovery_interval")
            .or_insert_with(|| {
                humantime::format_duration(super::open_platform::default_discovery_interval())
                    .to_string()
                    .into()
            });
        open_platform
            .entry("ticket_fresh_within")
            .or_insert_with(|| {
                humantime::format_duration(super::open_platform::default_ticket_fresh_within())
                    .to_string()
                    .into()
            });
    }
    Ok(sorted(value))
}

fn redact_mongodb(mongodb: &mut Map<String, Value>) {
    let uri_file = mongodb
        .get("uri_file")
        .and_then(Value::as_str)
        .is_some_and(|path| !path.is_empty());
    if uri_file {
        mongodb.remove("uri");
    } else if let Some(Value::String(uri)) = mongodb.get_mut("uri") {
        *uri = redact_uri(uri);
    }
}

/// The connection string with its password, and the values of options
/// that can carry a secret, replaced by `****`.
pub(super) fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    // The user information ends at the last @: where a password holds an
    // unescaped / or ? (which the driver refuses), or an option value an @,
    // this hides more, never less.
    let (user_info, tail) = match rest.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => (format!("{user}:{REDACTED}@"), hosts),
            None => (format!("{user_info}@"), hosts),
        },
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let options: Vec<String> = query
                .split('&')
                .map(|option| match option.split_once('=') {
                    Some((name, _))
                        if SECRET_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(name)) =>
                    {
                        format!("{name}={REDACTED}")
                    }
                    _ => option.to_owned(),
                })
                .collect();
            format!("{path}?{}", options.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{user_info}{tail}")
    } else {
        format!("{scheme}://{user_info}{tail}")
    }
}

/// The same value with every table's keys in order (the layers merge in no
/// particular order).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn passwords_and_secret_options_are_redacted_and_nothing_else() {
        for (uri, shown) in [
            ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
            (
                "mongodb://wxtokend:p%40ss:w@rd@db1:27017,db2/?replicaSet=rs0&authSource=admin",
                "mongodb://wxtokend:****@db1:27017,db2/?replicaSet=rs0&authSource=admin",
            ),
            (
                "mongodb+srv://user:pw@cluster.example.com/wechat",
                "mongodb+srv://user:****@cluster.example.com/wechat",
            ),
            (
                "mongodb://user@db/?authMechanism=MONGODB-X509",
                "mongodb://user@db/?authMechanism=MONGODB-X509",
            ),
            (
                "mongodb://db/?tls=true&tlsCertificateKeyFilePassword=kp&authMechanismProperties=AWS_SESSION_TOKEN:t",
                "mongodb://db/?tls=true&tlsCertificateKeyFilePassword=****&authMechanismProperties=****",
            ),
            (
                "mongodb://db/?proxyHost=p&proxyUsername=pu&ProxyPassword=pp",
                "mongodb://db/?proxyHost=p&proxyUsername=pu&ProxyPassword=****",
            ),
            ("mongodb://u:pw@db?tls=true", "mongodb://u:****@db?tls=true"),
            ("mongodb://u:pa/ss?x@db/", "mongodb://u:****@db/"),
            ("redis://:pw@cache:6379/0", "redis://:****@cache:6379/0"),
            ("redis://app:pw@cache/1", "redis://app:****@cache/1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=pw",
                "redis+unix:///run/redis.sock?db=1&pass=****",
            ),
        ] {
            assert_eq!(redact_uri(uri), shown, "{uri}");
        }
    }
}
