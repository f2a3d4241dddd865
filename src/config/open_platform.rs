//! `[open_platform]`: a WeChat Open Platform (第三方平台) component. Its
//! secrets (the component secret, the message token, the EncodingAESKey and
//! an optional previous one) are read like every secret
//! ([`super::secrets`]), for the daemon only; so are the keys that seal
//! authorizers' refresh tokens at rest (`refresh_token_key_file`, and
//! `previous_refresh_token_key_file` after a rotation). The callback
//! receiver's listener and limits are checked in every scope.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use wxtokend_reader::{AccountId, CredentialKind};

use super::secrets::read_secret;
use super::validate::Problems;
use super::{EnvSource, Scope};
use crate::open_platform::secretbox::{Key, KeyError};
use crate::open_platform::{CryptoError, KeyRole, MessageCrypto, SecretBox};

/// The table's name, which every problem's key starts with.
const TABLE: &str = "open_platform";

/// The shortest `max_message_age`: WeChat's pushes and the servers' clocks
/// must fit in it.
const MIN_MESSAGE_AGE: Duration = Duration::from_secs(30);
/// Longer would let a captured push be replayed for longer.
const MAX_MESSAGE_AGE: Duration = Duration::from_secs(3600);

/// `max_connections`: fewer would let a handful of idle clients delay
/// every push; more than this is beyond what one listener should hold.
const MIN_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS: usize = 65_536;

/// The smallest `max_body_bytes`: a push is under 1 KiB, an authorization
/// event somewhat more.
const MIN_BODY_BYTES: usize = 1024;

/// The largest `max_body_bytes`: more only helps whoever floods the port.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `[open_platform]`, checked. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct OpenPlatformSettings {
    pub component_appid: String,
    /// `listen`: where the callback receiver listens; `None` = off.
    pub listen: Option<SocketAddr>,
    /// At most this many connections open at once on `listen`; more wait
    /// until one closes ([`crate::http::ConnectionCap`]).
    pub max_connections: usize,
    /// The callback URL's path, which WeChat POSTs to.
    pub path: String,
    /// A push whose timestamp is further than this from MongoDB's clock is
    /// refused (a replay).
    pub max_message_age: Duration,
    /// Larger bodies are refused (413) once that many bytes have come.
    pub max_body_bytes: usize,
    /// With no usable verify ticket for this long, the component's
    /// refresher asks WeChat to push one (`api_start_push_ticket`), and
    /// again after as long; `None` (`"0s"`) = never.
    pub start_push_ticket_after: Option<Duration>,
    /// Which authorizers to keep fresh (`authorizers`).
    pub authorizers: AuthorizerSelection,
    /// The tickets kept for every authorizer besides its access token
    /// (`authorizer_tickets`).
    pub authorizer_tickets: Vec<CredentialKind>,
    /// Between two reads of WeChat's authorizer list (`discovery_interval`).
    pub discovery_interval: Duration,
    /// `/readyz` wants a usable verify ticket received this recently
    /// (`ticket_fresh_within`).
    pub ticket_fresh_within: Duration,
    /// The component's secrets: read for [`Scope::Daemon`] only.
    pub secrets: Option<ComponentSecrets>,
}

impl OpenPlatformSettings {
    /// The credential kinds `/readyz` and `status` want valid for every
    /// `active` authorizer (one `distinct` each, by `component_appid` and
    /// `expires_at`, on the authorizer collections' indexes): its access
    /// token and the configured tickets (`authorizer_tickets`).
    pub fn authorizer_kinds_checked(&self) -> Vec<CredentialKind> {
        std::iter::once(CredentialKind::AuthorizerAccessToken)
            .chain(self.authorizer_tickets.iter().copied())
            .collect()
    }
}

/// `authorizers`: every account that authorized the component (`"all"`),
/// or only the listed appids (the others are left alone: no lease, no
/// call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizerSelection {
    All,
    Only(Arc<BTreeSet<AccountId>>),
}

impl AuthorizerSelection {
    /// Whether the authorizer `app_id` is kept fresh.
    pub fn keeps(&self, app_id: &AccountId) -> bool {
        match self {
            Self::All => true,
            Self::Only(listed) => listed.contains(app_id),
        }
    }
}

/// `authorizers` as written: `"all"` or a list of appids.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "\"all\" or a list of appids such as [\"wx0123456789abcdef\"]"
)]
enum RawSelection {
    Word(String),
    List(Vec<String>),
}

impl Default for RawSelection {
    fn default() -> Self {
        Self::Word("all".to_owned())
    }
}

/// A ticket kept for every authorizer, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthorizerTicket {
    Jsapi,
    WxCard,
}

impl AuthorizerTicket {
    /// As written in the configuration.
    fn name(self) -> &'static str {
        match self {
            Self::Jsapi => "jsapi",
            Self::WxCard => "wx_card",
        }
    }

    fn kind(self) -> CredentialKind {
        match self {
            Self::Jsapi => CredentialKind::AuthorizerJsapiTicket,
            Self::WxCard => CredentialKind::AuthorizerWxCardTicket,
        }
    }
}

/// What only the daemon reads. `Debug` shows neither the secret nor the
/// keys ([`MessageCrypto`] shows its appid only).
#[derive(Clone)]
pub struct ComponentSecrets {
    /// `component_appsecret`, for `api_component_token` (later steps).
    pub component_secret: SecretString,
    /// The message token and EncodingAESKey(s), checked.
    pub crypto: MessageCrypto,
    /// The keys that seal authorizers' refresh tokens and codes
    /// (`refresh_token_key_file`, `previous_refresh_token_key_file`);
    /// `None` when not configured.
    pub refresh_tokens: Option<SecretBox>,
}

impl std::fmt::Debug for ComponentSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentSecrets")
            .field("component_secret", &"****")
            .field("crypto", &self.crypto)
            .field("refresh_tokens", &self.refresh_tokens)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOpenPlatform {
    component_appid: String,
    component_secret_env: Option<String>,
    component_secret_file: Option<PathBuf>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    encoding_aes_key_env: Option<String>,
    encoding_aes_key_file: Option<PathBuf>,
    previous_encoding_aes_key_env: Option<String>,
    previous_encoding_aes_key_file: Option<PathBuf>,
    refresh_token_key_file: Option<PathBuf>,
    previous_refresh_token_key_file: Option<PathBuf>,
    /// Accepted only to be refused with a helpful message.
    component_secret: Option<serde::de::IgnoredAny>,
    token: Option<serde::de::IgnoredAny>,
    encoding_aes_key: Option<serde::de::IgnoredAny>,
    previous_encoding_aes_key: Option<serde::de::IgnoredAny>,
    refresh_token_key: Option<serde::de::IgnoredAny>,
    previous_refresh_token_key: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    listen: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_max_message_age", with = "humantime_serde")]
    max_message_age: Duration,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_start_push_ticket_after", with = "humantime_serde")]
    start_push_ticket_after: Duration,
    #[serde(default)]
    authorizers: RawSelection,
    #[serde(default)]
    authorizer_tickets: Vec<AuthorizerTicket>,
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    discovery_interval: Duration,
    #[serde(default = "default_ticket_fresh_within", with = "humantime_serde")]
    ticket_fresh_within: Duration,
}

pub(super) fn default_path() -> String {
    "/wechat/open/events".to_owned()
}

pub(super) fn default_max_connections() -> usize {
    256
}

pub(super) fn default_max_message_age() -> Duration {
    Duration::from_secs(300)
}

pub(super) fn default_max_body_bytes() -> usize {
    64 * 1024
}

/// Three missed pushes (WeChat pushes every 10 minutes).
pub(super) fn default_start_push_ticket_after() -> Duration {
    Duration::from_secs(30 * 60)
}

/// WeChat's list changes when an account authorizes, and its event
/// brings the change sooner; the list is a safety net.
pub(super) fn default_discovery_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Three missed pushes (WeChat pushes every 10 minutes), as
/// `start_push_ticket_after`.
/// Shorter would turn replicas unready between two of WeChat's pushes
/// (every 10 minutes, give or take); longer than a ticket's 12 hours
/// would call a ticket fresh that may no longer be used.
const MIN_TICKET_FRESH_WITHIN: Duration = Duration::from_secs(60);
const MAX_TICKET_FRESH_WITHIN: Duration = Duration::from_secs(12 * 3600);

pub(super) fn default_ticket_fresh_within() -> Duration {
    Duration::from_secs(30 * 60)
}

/// A pass reads `ceil(authorizers / 500)` `authorizer_list` pages; the
/// day's ceiling (`refresh.daily_call_limits.authorizer_list`, 500) is
/// enforced by the permits, not by this floor, which only keeps a typo
/// (`"1s"`) from spending it in minutes.
const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

/// Asking WeChat to push sooner than this would only spend the API's
/// daily ceiling: a push takes a moment to come.
const MIN_START_PUSH_TICKET_AFTER: Duration = Duration::from_secs(10);

/// `[open_platform]` checked; its secrets read in [`Scope::Daemon`] only.
pub(super) fn open_platform_settings(
    raw: &RawOpenPlatform,
    env: &dyn EnvSource,
    scope: Scope,
    p: &mut Problems,
) -> OpenPlatformSettings {
    let key = |field: &str| format!("{TABLE}.{field}");
    check_appid(&raw.component_appid, p);
    for (inline, name) in [
        (&raw.component_secret, "component_secret"),
        (&raw.token, "token"),
        (&raw.encoding_aes_key, "encoding_aes_key"),
        (&raw.previous_encoding_aes_key, "previous_encoding_aes_key"),
    ] {
        if inline.is_some() {
            p.add(
                key(name),
                format!("inline secrets are not allowed; use {name}_env or {name}_file"),
            );
        }
    }
    for (inline, name) in [
        (&raw.refresh_token_key, "refresh_token_key"),
        (
            &raw.previous_refresh_token_key,
            "previous_refresh_token_key",
        ),
    ] {
        if inline.is_some() {
            p.add(
                key(name),
                format!("inline keys are not allowed; use {name}_file"),
            );
        }
    }
    let listen = raw.listen.parse::<SocketAddr>().ok();
    p.check(
        raw.listen.is_empty() || listen.is_some(),
        &key("listen"),
        "must be an address such as \"0.0.0.0:8088\", or \"\" to turn the callback receiver off",
    );
    p.check(
        (MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&raw.max_connections),
        &key("max_connections"),
        "must be between 16 and 65536: how many connections the callback receiver keeps open \
         at once (WeChat needs a few; the default 256 leaves file descriptors for MongoDB and \
         WeChat)",
    );
    // Only characters no router reads as a parameter or wildcard (`:`,
    // `*`, `{`).
    p.check(
        raw.path.starts_with('/')
            && raw
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._~-".contains(&b)),
        &key("path"),
        "must be a URL path of letters, digits and / . _ ~ - starting with /, such as \"/wechat/open/events\"",
    );
    p.check(
        (MIN_MESSAGE_AGE..=MAX_MESSAGE_AGE).contains(&raw.max_message_age),
        &key("max_message_age"),
        "must be between 30s and 1h, for example \"5m\" (WeChat's pushes and clocks must fit \
         in it; longer lets an old push be replayed for longer)",
    );
    p.check(
        (MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&raw.max_body_bytes),
        &key("max_body_bytes"),
        "must be between 1024 and 1048576 (a push is under 1 KiB; the default 65536 is plenty)",
    );
    p.check(
        raw.start_push_ticket_after.is_zero()
            || raw.start_push_ticket_after >= MIN_START_PUSH_TICKET_AFTER,
        &key("start_push_ticket_after"),
        "must be at least 10s, for example \"30m\" (three missed pushes), or \"0s\" to never \
         ask WeChat to push a verify ticket",
    );
    p.check(
        raw.discovery_interval >= MIN_DISCOVERY_INTERVAL,
        &key("discovery_interval"),
        "must be at least 1m, for example \"1h\" (each pass reads WeChat's authorizer list, \
         500 calls a day)",
    );
    p.check(
        (MIN_TICKET_FRESH_WITHIN..=MAX_TICKET_FRESH_WITHIN).contains(&raw.ticket_fresh_within),
        &key("ticket_fresh_within"),
        "must be between 1m and 12h, for example \"30m\" (three missed pushes: WeChat pushes \
         a verify ticket every 10 minutes); /readyz wants one received this recently",
    );
    let authorizers = authorizer_selection(&raw.authorizers, p);
    let mut authorizer_tickets = Vec::new();
    for ticket in &raw.authorizer_tickets {
        if authorizer_tickets.contains(&ticket.kind()) {
            p.add(
                key("authorizer_tickets"),
                format!("{:?} is listed twice", ticket.name()),
            );
        }
        authorizer_tickets.push(ticket.kind());
    }
    let secrets = match scope {
        Scope::Daemon => component_secrets(raw, env, p),
        Scope::StoreOnly | Scope::Local => None,
    };
    OpenPlatformSettings {
        component_appid: raw.component_appid.clone(),
        listen,
        max_connections: raw.max_connections,
        path: raw.path.clone(),
        max_message_age: raw.max_message_age,
        max_body_bytes: raw.max_body_bytes,
        start_push_ticket_after: Some(raw.start_push_ticket_after).filter(|d| !d.is_zero()),
        authorizers,
        authorizer_tickets,
        discovery_interval: raw.discovery_interval,
        ticket_fresh_within: raw.ticket_fresh_within,
        secrets,
    }
}

/// `authorizers`, checked: `"all"`, or a list of distinct appids.
fn authorizer_selection(raw: &RawSelection, p: &mut Problems) -> AuthorizerSelection {
    let key = format!("{TABLE}.authorizers");
    match raw {
        RawSelection::Word(word) if word == "all" => AuthorizerSelection::All,
        RawSelection::Word(other) => {
            p.add(
                key,
                format!(
                    "{other:?} is not a choice: \"all\" (every account that authorizes the \
                     platform) or a list of appids such as [\"wx0123456789abcdef\"]"
                ),
            );
            AuthorizerSelection::All
        }
        RawSelection::List(ids) => {
            let mut listed = BTreeSet::new();
            for id in ids {
                if !is_appid(id) {
                    p.add(
                        key.clone(),
                        format!("{id:?} is not an appid (letters and digits, such as \"wx0123456789abcdef\")"),
                    );
                } else if !listed.insert(AccountId::new(id.as_str())) {
                    p.add(key.clone(), format!("{id:?} is listed twice"));
                }
            }
            p.check(
                !ids.is_empty(),
                &key,
                "an empty list keeps no authorizer: list appids, or write \"all\"",
            );
            AuthorizerSelection::Only(Arc::new(listed))
        }
    }
}

fn is_appid(appid: &str) -> bool {
    !appid.is_empty()
        && appid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_appid(appid: &str, p: &mut Problems) {
    p.check(
        is_appid(appid),
        &format!("{TABLE}.component_appid"),
        "must be the platform's appid (letters and digits, such as \"wx0123456789abcdef\")",
    );
}

/// The secret `{name}_env` / `{name}_file` give, or `None` with a problem.
fn secret(
    name: &str,
    var: &Option<String>,
    file: &Option<PathBuf>,
    env: &dyn EnvSource,
    p: &mut Problems,
) -> Option<SecretString> {
    read_secret(TABLE, name, var.as_deref(), file.as_deref(), env)
        .map_err(|problem| p.add(problem.key, problem.message))
        .ok()
}

fn component_secrets(
    raw: &RawOpenPlatform,
    env: &dyn EnvSource,
    p: &mut Problems,
) -> Option<ComponentSecrets> {
    // Read first, so that their problems are named whatever else is wrong.
    let refresh_tokens = refresh_token_keys(raw, p);
    let component_secret = secret(
        "component_secret",
        &raw.component_secret_env,
        &raw.component_secret_file,
        env,
        p,
    );
    let token = secret("token", &raw.token_env, &raw.token_file, env, p);
    let key = secret(
        "encoding_aes_key",
        &raw.encoding_aes_key_env,
        &raw.encoding_aes_key_file,
        env,
        p,
    );
    let previous_given =
        raw.previous_encoding_aes_key_env.is_some() || raw.previous_encoding_aes_key_file.is_some();
    // A previous key that cannot be read is named, and the current key is
    // still checked below.
    let previous = if previous_given {
        secret(
            "previous_encoding_aes_key",
            &raw.previous_encoding_aes_key_env,
            &raw.previous_encoding_aes_key_file,
            env,
            p,
        )
        .map(Some)
    } else {
        Some(None)
    };
    let key = key?;
    // The keys are checked even when another secret is missing, so that
    // one run names every problem; the placeholders are never used.
    let crypto = MessageCrypto::new(
        token.as_ref().map_or("unread", |t| t.expose_secret()),
        key.expose_secret(),
        previous
            .as_ref()
            .and_then(Option::as_ref)
            .map(|k| k.expose_secret()),
        if raw.component_appid.is_empty() {
            "unset"
        } else {
            &raw.component_appid
        },
    );
    match crypto {
        Ok(crypto) => {
            // An unreadable previous key: already named.
            previous?;
            Some(ComponentSecrets {
                component_secret: component_secret?,
                crypto: token.map(|_| crypto)?,
                refresh_tokens: refresh_tokens.ok()?,
            })
        }
        Err(e) => {
            // The error names which value is wrong and how, never its text.
            p.add(crypto_problem_key(raw, e), format!("{e}"));
            None
        }
    }
}

/// The key a problem of [`MessageCrypto::new`] is about, as the user gave
/// it (`…_env` or `…_file`).
fn crypto_problem_key(raw: &RawOpenPlatform, e: CryptoError) -> String {
    let (name, from_file) = match e {
        CryptoError::KeyLength {
            key: KeyRole::Previous,
            ..
        }
        | CryptoError::KeyAlphabet {
            key: KeyRole::Previous,
        } => (
            "previous_encoding_aes_key",
            raw.previous_encoding_aes_key_file.is_some(),
        ),
        CryptoError::EmptyToken => ("token", raw.token_file.is_some()),
        CryptoError::EmptyAppId => return format!("{TABLE}.component_appid"),
        _ => ("encoding_aes_key", raw.encoding_aes_key_file.is_some()),
    };
    let suffix = if from_file { "file" } else { "env" };
    format!("{TABLE}.{name}_{suffix}")
}

/// The path `{name}` gives, if set (an empty one is not set: an
/// environment override can unset it).
fn path_of(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// The refresh-token keys: `Ok(None)` when `refresh_token_key_file` is not
/// set, `Err` with the problems added.
fn refresh_token_keys(raw: &RawOpenPlatform, p: &mut Problems) -> Result<Option<SecretBox>, ()> {
    const CURRENT: &str = "refresh_token_key_file";
    const PREVIOUS: &str = "previous_refresh_token_key_file";
    let current = path_of(&raw.refresh_token_key_file).map(|path| read_key(CURRENT, path, p));
    let previous =
        path_of(&raw.previous_refresh_token_key_file).map(|path| read_key(PREVIOUS, path, p));
    match (current, previous) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            p.add(
                format!("{TABLE}.{CURRENT}"),
                format!(
                    "missing: {PREVIOUS} only opens what an older key sealed; set {CURRENT} to \
                     the current key's file"
                ),
            );
            Err(())
        }
        (Some(current), previous) => {
            let previous = previous.transpose()?;
            Ok(Some(SecretBox::new(current?, previous)))
        }
    }
}

/// One key file, read and checked. A problem names the key and the fix,
/// never what the file holds.
fn read_key(name: &str, path: &Path, p: &mut Problems) -> Result<Key, ()> {
    let key = format!("{TABLE}.{name}");
    let mut contents = std::fs::read(path).map_err(|e| {
        p.add(key.clone(), format!("cannot read {}: {e}", path.display()));
    })?;
    let parsed = Key::from_file_contents(&contents);
    contents.zeroize();
    parsed.map_err(|e| p.add(key, key_problem(name, path, &e)))
}

fn key_problem(name: &str, path: &Path, e: &KeyError) -> String {
    let fix = if name.starts_with("previous_") {
        "point it at the file of the key used before the rotation, or remove it".to_owned()
    } else {
        format!(
            "make a key with: (umask 077; openssl rand -base64 32 > {}), and back it up with \
             the database's credentials",
            path.display()
        )
    };
    format!("{} {e}; {fix}", path.display())
}
