//! `[[mirrors]]`: Redis servers that get every credential in the key layout
//! of the SDKs named, so that an SDK pointed at that Redis reads wxtokend's
//! credentials instead of fetching its own. The Redis URL is a secret (it
//! may hold a password): read from `url_file` or `url_env` (or `url`) for
//! the daemon only, and never quoted in a problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use wxtokend_reader::{AccountId, CredentialKind};

use super::validate::Problems;
use super::{AccountSpec, EnvSource, Scope};
use crate::mirror::{KeyPrefixes, Layout};

/// One `[[mirrors]]` entry, checked, with its URL read ([`Scope::Daemon`]).
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// `name`, or the entry's position: the `mirror` label of its metrics.
    pub name: String,
    /// Empty outside [`Scope::Daemon`].
    pub url: SecretString,
    pub layouts: Vec<Layout>,
    /// `None`: every configured account.
    pub accounts: Option<Vec<AccountId>>,
    /// `None`: every kind.
    pub kinds: Option<Vec<CredentialKind>>,
    pub key_prefix: KeyPrefixes,
    /// How often Redis is checked for a restart (a new `run_id`); after a
    /// failure, sooner (from 250 ms, doubling up to it).
    pub check_interval: Duration,
    /// How often every key is compared with what it should hold, and
    /// written again where it is missing or differs.
    pub repair_interval: Duration,
}

impl MirrorSettings {
    /// Whether this mirror wants `kind` of `account`.
    pub fn wants(&self, account: &AccountId, kind: CredentialKind) -> bool {
        self.accounts.as_ref().is_none_or(|a| a.contains(account))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    url: Option<SecretString>,
    #[serde(default)]
    url_env: Option<String>,
    #[serde(default)]
    url_file: Option<PathBuf>,
    #[serde(default)]
    layouts: Vec<String>,
    #[serde(default)]
    accounts: Option<Vec<String>>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    key_prefix: RawKeyPrefixes,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    check_interval: Duration,
    #[serde(default = "default_repair_interval", with = "humantime_serde")]
    repair_interval: Duration,
}

/// One `INFO` a second: a Redis that restarted empty is noticed, and
/// written again, within about a second (SDKs that look meanwhile find no
/// key and fetch a token of their own).
fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_repair_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyPrefixes {
    wxjava: Option<String>,
    wxjava_miniapp: Option<String>,
    wxjava_wecom: Option<String>,
    wechatpy: Option<String>,
}

impl RawKeyPrefixes {
    fn resolve(&self) -> KeyPrefixes {
        let d = KeyPrefixes::default();
        KeyPrefixes {
            wxjava: self.wxjava.clone().unwrap_or(d.wxjava),
            wxjava_miniapp: self.wxjava_miniapp.clone().unwrap_or(d.wxjava_miniapp),
            wxjava_wecom: self.wxjava_wecom.clone().unwrap_or(d.wxjava_wecom),
            wechatpy: self.wechatpy.clone().unwrap_or(d.wechatpy),
        }
    }
}

/// Every `[[mirrors]]` entry checked; URLs read in [`Scope::Daemon`] only.
pub(super) fn mirror_settings(
    raw: &[RawMirror],
    configured: &[AccountSpec],
    env: &dyn EnvSource,
    scope: Scope,
    p: &mut Problems,
) -> Vec<MirrorSettings> {
    let mut names = Vec::new();
    let mirrors: Vec<MirrorSettings> = raw
        .iter()
        .enumerate()
        .map(|(i, mirror)| {
            let name = mirror.name.clone().unwrap_or_else(|| i.to_string());
            if names.contains(&name) {
                p.add(
                    format!("mirrors[{i}].name"),
                    format!("duplicate name {name:?}; give each mirror its own"),
                );
            }
            names.push(name.clone());
            MirrorSettings {
                name,
                url: mirror_url(mirror, i, env, scope, p),
                layouts: layouts(&mirror.layouts, i, p),
                accounts: mirror_accounts(mirror, i, configured, p),
                kinds: kinds(mirror, i, p),
                key_prefix: mirror.key_prefix.resolve(),
                check_interval: check_interval(mirror, i, p),
                repair_interval: repair_interval(mirror, i, p),
            }
        })
        .collect();
    // Two entries on one Redis database would share the generation keys
    // and count each other's writes as repairs. Compared by address and
    // database, whatever the user, password or spelling.
    let databases: Vec<Option<String>> = mirrors.iter().map(|m| database(&m.url)).collect();
    for (i, database) in databases.iter().enumerate() {
        let Some(database) = database else { continue };
        let first = databases[..i]
            .iter()
            .position(|d| d.as_ref() == Some(database));
        if let Some(first) = first {
            p.add(
                format!("mirrors[{i}]"),
                format!(
                    "the same Redis as mirrors[{first}]; list every layout in one [[mirrors]] \
                     entry per Redis database"
                ),
            );
        }
    }
    mirrors
}

fn check_interval(mirror: &RawMirror, i: usize, p: &mut Problems) -> Duration {
    p.check(
        mirror.check_interval >= Duration::from_millis(100),
        &format!("mirrors[{i}].check_interval"),
        "must be at least 100ms, for example \"1s\"",
    );
    mirror.check_interval
}

/// `host:port/db` (or `path/db`) of a Redis URL; `None` when it is not
/// read (outside the daemon) or not valid (reported elsewhere).
fn database(url: &SecretString) -> Option<String> {
    use redis::IntoConnectionInfo;
    let url = url.expose_secret();
    if url.is_empty() {
        return None;
    }
    let info = url.into_connection_info().ok()?;
    Some(format!("{}/{}", info.addr(), info.redis_settings().db()))
}

fn repair_interval(mirror: &RawMirror, i: usize, p: &mut Problems) -> Duration {
    p.check(
        mirror.repair_interval >= mirror.check_interval,
        &format!("mirrors[{i}].repair_interval"),
        "must be at least check_interval (the repair runs after a check), for example \"30s\"",
    );
    mirror.repair_interval
}

fn layouts(names: &[String], i: usize, p: &mut Problems) -> Vec<Layout> {
    let key = format!("mirrors[{i}].layouts");
    if names.is_empty() {
        p.add(
            &key,
            "missing: list the SDKs whose keys to write, e.g. [\"wxjava\", \"silenceper\", \"wechatpy\"]",
        );
    }
    let mut layouts = Vec::new();
    for name in names {
        match Layout::parse(name) {
            Some(layout) if layouts.contains(&layout) => {
                p.add(&key, format!("{name:?} is listed twice"));
            }
            Some(layout) => layouts.push(layout),
            None if name == "easywechat" => p.add(
                &key,
                "easywechat is not supported: its cache key holds the AppSecret in clear \
                 (see the README, \"Using wxtokend with your SDK\")",
            ),
            None => p.add(
                &key,
                format!("unknown layout {name:?}; use wxjava, silenceper or wechatpy"),
            ),
        }
    }
    layouts
}

fn mirror_accounts(
    mirror: &RawMirror,
    i: usize,
    configured: &[AccountSpec],
    p: &mut Problems,
) -> Option<Vec<AccountId>> {
    let ids = mirror.accounts.as_ref()?;
    for (j, id) in ids.iter().enumerate() {
        if !configured.iter().any(|a| a.id.as_str() == id) {
            p.add(
                format!("mirrors[{i}].accounts[{j}]"),
                format!("{id:?} is not an [[accounts]] id; list configured accounts only, or leave accounts out for all"),
            );
        }
    }
    Some(ids.iter().map(|id| AccountId::new(id.clone())).collect())
}

fn kinds(mirror: &RawMirror, i: usize, p: &mut Problems) -> Option<Vec<CredentialKind>> {
    let names = mirror.kinds.as_ref()?;
    let mut kinds = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match CredentialKind::parse(name) {
            Some(kind) => kinds.push(kind),
            None => p.add(
                format!("mirrors[{i}].kinds[{j}]"),
                format!(
                    "unknown kind {name:?}; use access_token, jsapi_ticket, wx_card_ticket or \
                     agent_config_ticket, or leave kinds out for all"
                ),
            ),
        }
    }
    Some(kinds)
}

/// The URL from exactly one of `url`, `url_env`, `url_file`; read in
/// [`Scope::Daemon`] only. A problem names the key and the file or
/// variable, never the URL.
fn mirror_url(
    mirror: &RawMirror,
    i: usize,
    env: &dyn EnvSource,
    scope: Scope,
    p: &mut Problems,
) -> SecretString {
    let key = |field: &str| format!("mirrors[{i}].{field}");
    let empty = || SecretString::from(String::new());
    let read = match (&mirror.url, &mirror.url_env, &mirror.url_file) {
        (Some(url), None, None) => Ok((url.clone(), key("url"), "mirrors.url".to_owned())),
        (None, Some(var), None) => match env.var(var) {
            _ if scope != Scope::Daemon => return empty(),
            Some(value) if !value.trim().is_empty() => Ok((
                SecretString::from(value.trim().to_owned()),
                key("url_env"),
                format!("environment variable {var}"),
            )),
            Some(_) => Err((
                key("url_env"),
                format!("environment variable {var} is empty"),
            )),
            None => Err((
                key("url_env"),
                format!("environment variable {var} is not set; export it, or use url_file"),
            )),
        },
        (None, None, Some(path)) if scope != Scope::Daemon => {
            let _ = path;
            return empty();
        }
        (None, None, Some(path)) => url_from_file(path)
            .map(|url| (url, key("url_file"), path.display().to_string()))
            .map_err(|m| (key("url_file"), m)),
        (None, None, None) => Err((
            key("url_file"),
            "missing: set url_file (a file holding redis://...), url_env or url".to_owned(),
        )),
        _ => Err((
            key("url_file"),
            "set only one of url, url_env and url_file".to_owned(),
        )),
    };
    match read {
        Ok((url, key, source)) => {
            if let Err(message) = check_url(url.expose_secret(), &source) {
                p.add(key, message);
            } else if mirror.url.is_some() && has_password(url.expose_secret()) {
                // Like an inline AppSecret: a password never sits in the
                // configuration file, which business hosts read too.
                p.add(
                    key,
                    "holds a password (not shown); move the URL to the file named by url_file \
                     or the variable named by url_env"
                        .to_owned(),
                );
            }
            url
        }
        Err((key, message)) => {
            p.add(key, message);
            empty()
        }
    }
}

fn url_from_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match text.trim() {
        "" => Err(format!(
            "{} is empty; write the Redis URL (redis://...) in it",
            path.display()
        )),
        url => Ok(SecretString::from(url.to_owned())),
    }
}

/// Whether a URL [`check_url`] accepted carries a password.
fn has_password(url: &str) -> bool {
    redis::Client::open(url).is_ok_and(|c| {
        c.get_connection_info()
            .redis_settings()
            .password()
            .is_some_and(|p| !p.is_empty())
    })
}

/// The schemes this build speaks; the URL itself is never quoted.
fn check_url(url: &str, source: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "redis+unix" | "unix") => {}
        Some("rediss") => {
            return Err(format!(
                "the URL in {source} uses rediss:// (TLS), which this build does not support; \
                 use redis:// on a trusted network or a TLS tunnel"
            ))
        }
        _ => {
            return Err(format!(
                "the URL in {source} (not shown, as it may hold a password) must start with \
                 redis:// or unix://"
            ))
        }
    }
    if redis::Client::open(url).is_err() {
        return Err(format!(
            "the URL in {source} (not shown, as it may hold a password) is not a valid Redis URL"
        ));
    }
    Ok(())
}
