//! Typed settings. Loaded in layers with the `config` crate: the committed
//! `config/default.toml` (compiled in), an optional file given with
//! `--config`, then `WXTOKEND__SECTION__KEY` environment variables. Every
//! problem is reported with the key it concerns and what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;
use tracing_subscriber::filter::Directive;
use wxtokend_reader::{AccountId, CredentialKind};

use crate::wechat::Api;
use validate::RawSettings;

/// The defaults, documented line by line in `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides: `WXTOKEND__MONGODB__URI` sets `mongodb.uri`.
pub const ENV_PREFIX: &str = "WXTOKEND";

/// A configuration that loaded and passed validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub daemon: DaemonSettings,
    pub mongodb: MongoSettings,
    pub wechat: WechatSettings,
    pub refresh: RefreshSettings,
    pub lease: LeaseSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    /// The accounts with their secrets: filled for [`Scope::Daemon`] only.
    pub accounts: Vec<Account>,
    /// Every configured account as written, without its secret, in both
    /// scopes (what `status` lists).
    pub configured: Vec<AccountSpec>,
    /// `[[mirrors]]`: Redis servers filled in SDKs' key layouts; their URLs
    /// are read for [`Scope::Daemon`] only.
    pub mirrors: Vec<MirrorSettings>,
    /// `[open_platform]`, if configured: a WeChat Open Platform component
    /// (its secrets read for [`Scope::Daemon`] only).
    pub open_platform: Option<OpenPlatformSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    pub instance_id: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

/// `[mongodb]`, with the connection string read from `uri_file` when that
/// is set.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// The connection string: `mongodb.uri`, or the contents of
    /// `mongodb.uri_file` (not read in [`Scope::Local`]).
    pub uri: SecretString,
    /// Where the connection string was read from, if from a file.
    pub uri_file: Option<PathBuf>,
    pub database: String,
    pub server_selection_timeout: Duration,
    pub history_retention: Duration,
}

impl MongoSettings {
    /// The key a problem with the connection string names.
    pub fn uri_key(&self) -> &'static str {
        if self.uri_file.is_some() {
            "mongodb.uri_file"
        } else {
            "mongodb.uri"
        }
    }

    /// The connection string as an error may name it: never its text,
    /// which may hold a password, but the file it came from.
    pub fn uri_described(&self) -> String {
        match &self.uri_file {
            Some(path) => format!("the connection string in {}", path.display()),
            None => "the connection string".to_owned(),
        }
    }
}

/// `[mongodb]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMongoSettings {
    uri: SecretString,
    /// Empty: not set.
    #[serde(default)]
    uri_file: PathBuf,
    database: String,
    #[serde(with = "humantime_serde")]
    server_selection_timeout: Duration,
    #[serde(with = "humantime_serde")]
    history_retention: Duration,
}

/// WeChat's API, with its base URLs checked and parsed.
#[derive(Debug, Clone)]
pub struct WechatSettings {
    pub base_url: Url,
    pub wecom_base_url: Url,
    pub allow_http: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_concurrent_calls: usize,
    /// Shortest `expires_in` accepted from WeChat.
    pub min_expires_in: Duration,
}

/// `[wechat]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWechatSettings {
    base_url: String,
    wecom_base_url: String,
    allow_http: bool,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    max_response_bytes: usize,
    max_concurrent_calls: usize,
    #[serde(with = "humantime_serde")]
    min_expires_in: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSettings {
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    #[serde(with = "humantime_serde")]
    pub permanent_error_retry: Duration,
    #[serde(with = "humantime_serde")]
    pub request_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub forced_min_interval: Duration,
    pub daily_call_limits: DailyCallLimits,
    /// The single ceiling of earlier versions, kept only to say what
    /// replaced it.
    #[serde(default, rename = "daily_call_limit")]
    pub(crate) retired_daily_call_limit: Option<i64>,
}

/// `[refresh.daily_call_limits]`: the ceiling on calls per account per
/// day (Beijing time) for each WeChat API, which WeChat counts apart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyCallLimits {
    pub token: i64,
    pub stable_token: i64,
    pub jsapi_ticket: i64,
    pub wx_card_ticket: i64,
    pub wecom_token: i64,
    pub wecom_jsapi_ticket: i64,
    pub agent_config_ticket: i64,
    /// Open Platform: the component token (per component).
    pub component_token: i64,
    /// Open Platform: asking WeChat to push a verify ticket.
    pub start_push_ticket: i64,
    /// Open Platform: an authorizer's token (per authorizer).
    pub authorizer_token: i64,
    /// Open Platform: exchanging an authorization code (per authorizer).
    pub query_auth: i64,
    /// Open Platform: listing the authorizers (per component).
    pub authorizer_list: i64,
}

impl DailyCallLimits {
    /// The same ceiling for every API (unit tests).
    #[cfg(test)]
    pub fn all(limit: i64) -> Self {
        Self {
            token: limit,
            stable_token: limit,
            jsapi_ticket: limit,
            wx_card_ticket: limit,
            wecom_token: limit,
            wecom_jsapi_ticket: limit,
            agent_config_ticket: limit,
            component_token: limit,
            start_push_ticket: limit,
            authorizer_token: limit,
            query_auth: limit,
            authorizer_list: limit,
        }
    }

    pub fn of(&self, api: Api) -> i64 {
        match api {
            Api::Token => self.token,
            Api::StableToken => self.stable_token,
            Api::JsapiTicket => self.jsapi_ticket,
            Api::WxCardTicket => self.wx_card_ticket,
            Api::WecomToken => self.wecom_token,
            Api::WecomJsapiTicket => self.wecom_jsapi_ticket,
            Api::AgentConfigTicket => self.agent_config_ticket,
            Api::ComponentToken => self.component_token,
            Api::StartPushTicket => self.start_push_ticket,
            Api::AuthorizerToken => self.authorizer_token,
            Api::QueryAuth => self.query_auth,
            Api::AuthorizerList => self.authorizer_list,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Empty: no admin server.
    pub listen: String,
    /// Which per-account series `/metrics` exports.
    #[serde(default)]
    pub account_series: AccountSeries,
}

/// Per-account series in `/metrics`: each costs every scrape, and 10,000
/// accounts make tens of thousands of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountSeries {
    /// Those the alert rules use: seconds until expiry, refresh outcomes,
    /// quota calls and stops, the lease held.
    #[default]
    Alerting,
    /// Also each credential's age and generation and the WeChat calls
    /// made for it.
    All,
}

impl AdminSettings {
    /// The address to listen on, if the admin server is on.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// Logging, with `log.level` parsed into filter directives.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub directives: Vec<Directive>,
}

/// `[log]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogSettings {
    format: LogFormat,
    level: String,
}

/// Which WeChat product an account belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// 公众号
    OfficialAccount,
    /// 小程序
    MiniProgram,
    /// 企业微信 (WeCom): one token per corpid and app secret.
    Wecom,
}

/// Which WeChat endpoint issues the account's access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    /// `GET /cgi-bin/token` (WeCom: `gettoken`).
    Token,
    /// `POST /cgi-bin/stable_token`: the same token while it is valid;
    /// `force_refresh` only for tokens reported invalid.
    StableToken,
}

/// A ticket an account wants kept fresh, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketName {
    Jsapi,
    WxCard,
    AgentConfig,
}

impl TicketName {
    pub fn kind(self) -> CredentialKind {
        match self {
            Self::Jsapi => CredentialKind::JsapiTicket,
            Self::WxCard => CredentialKind::WxCardTicket,
            Self::AgentConfig => CredentialKind::AgentConfigTicket,
        }
    }

    fn allowed_on(self, platform: Platform) -> bool {
        matches!(
            (platform, self),
            (Platform::OfficialAccount, Self::Jsapi | Self::WxCard)
                | (Platform::Wecom, Self::Jsapi | Self::AgentConfig)
        )
    }
}

/// A configured account without its secret: what a command that only reads
/// MongoDB knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    pub id: AccountId,
    pub platform: Platform,
    pub endpoint: TokenEndpoint,
    /// Tickets kept fresh besides the access token.
    pub tickets: Vec<CredentialKind>,
    /// Where its secret is, as written (read only by the commands that need it).
    pub secret: SecretSource,
}

/// Where an account's secret is read from: its `secret_env` or `secret_file`
/// as written, not the secret itself (that is read by [`Settings::secret_of`]
/// or, for the daemon, at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// Position in `[[accounts]]`, for the key a problem names.
    index: usize,
    env: Option<String>,
    file: Option<PathBuf>,
}

impl AccountSpec {
    /// Every credential kind kept fresh for this account.
    pub fn kinds(&self) -> impl Iterator<Item = CredentialKind> + '_ {
        std::iter::once(CredentialKind::AccessToken).chain(self.tickets.iter().copied())
    }

    /// The WeChat API that issues `kind` for this account.
    pub fn api(&self, kind: CredentialKind) -> Api {
        Api::of(self.platform, self.endpoint, kind)
    }
}

/// One WeChat account to keep fresh. `Debug` redacts the secret.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub platform: Platform,
    pub endpoint: TokenEndpoint,
    pub secret: SecretString,
    /// Tickets kept fresh besides the access token.
    pub tickets: Vec<CredentialKind>,
}

impl Account {
    /// For WeCom accounts (`corpid/agentid`): the corpid.
    pub fn corp_id(&self) -> &str {
        self.id.js_app_id()
    }

    /// Every credential kind kept fresh for this account.
    pub fn kinds(&self) -> impl Iterator<Item = CredentialKind> + '_ {
        std::iter::once(CredentialKind::AccessToken).chain(self.tickets.iter().copied())
    }

    /// The WeChat API that issues `kind` for this account.
    pub fn api(&self, kind: CredentialKind) -> Api {
        Api::of(self.platform, self.endpoint, kind)
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {message}", path.display())]
    File {
        path: PathBuf,
        /// The loader's error without the lines of the file it quotes
        /// (see [`file_error`]).
        message: String,
    },
    #[error("invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }

    /// The problems found, one per key (empty for a file that cannot be read).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems } => problems,
            Self::File { .. } => &[],
        }
    }
}

/// What the caller needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything, with every account's secret resolved (`run`, `check`).
    Daemon,
    /// Only what reading MongoDB needs (`get`, `sign`, `refresh`, `status`,
    /// `quota`): the connection string (read from `mongodb.uri_file` when
    /// set), and each account's id, platform, endpoint and tickets, kept
    /// and checked ([`Settings::configured`]); no account's secret is read
    /// or required, so business hosts need no WeChat secret.
    StoreOnly,
    /// No secret at all, not even `mongodb.uri_file` (`health`, `config`):
    /// every value is checked, nothing is read but the configuration.
    Local,
}

/// Where environment values come from; tests pass their own.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// The shortest time a MongoDB operation is given before it is abandoned:
/// a loaded host or server takes seconds for what usually takes
/// milliseconds.
pub const MIN_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

impl Settings {
    /// How long any one MongoDB operation of the daemon may take before it
    /// is abandoned and counted as failed: a renew interval, and at least
    /// twice the server selection timeout (a failover, a slow primary) and
    /// [`MIN_OPERATION_TIMEOUT`]. One that hangs must not stop the loop
    /// that renews the leases; one that is merely slow must not be cut
    /// (a retry only adds load).
    pub fn mongodb_operation_timeout(&self) -> Duration {
        self.lease
            .renew_interval
            .max(self.mongodb.server_selection_timeout * 2)
            .max(MIN_OPERATION_TIMEOUT)
    }

    /// Reads the secret of one configured account from its `secret_env` (in
    /// the process environment) or `secret_file`, for a command that needs
    /// it only sometimes (`quota --clear` without a valid stored token).
    pub fn secret_of(&self, account: &AccountSpec) -> Result<SecretString, ConfigError> {
        account
            .secret
            .read(&ProcessEnv)
            .map_err(|problem| ConfigError::Invalid {
                problems: vec![problem],
            })
    }

    /// Loads defaults, then `file` if given, then `WXTOKEND__…` variables
    /// from the process environment, and validates the result.
    pub fn load(file: Option<&Path>, scope: Scope) -> Result<Settings, ConfigError> {
        Self::load_with(file, process_overrides(), &ProcessEnv, scope)
    }

    /// Loads defaults plus `toml` (as if it were the `--config` file), with
    /// no environment overrides. Public for the fuzzer (`fuzz/`).
    #[doc(hidden)]
    pub fn load_from_str(toml: &str, env: &dyn EnvSource) -> Result<Settings, ConfigError> {
        let layered = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(toml, FileFormat::Toml))
            .build()
            .map_err(|source| file_error(PathBuf::from("<string>"), &source))?;
        Self::from_layers(layered, env, Scope::Daemon)
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with(
        file: Option<&Path>,
        overrides: Environment,
        env: &dyn EnvSource,
        scope: Scope,
    ) -> Result<Settings, ConfigError> {
        Self::from_layers(layers(file, overrides)?, env, scope)
    }

    /// Deserializes merged layers (naming the key of a type error) and
    /// validates the result.
    fn from_layers(
        layered: Config,
        env: &dyn EnvSource,
        scope: Scope,
    ) -> Result<Settings, ConfigError> {
        let raw: RawSettings = serde_path_to_error::deserialize(layered)
            .map_err(|e| ConfigError::invalid(e.path().to_string(), e.inner().to_string()))?;
        raw.validate(env, scope)
    }
}

/// The `WXTOKEND__SECTION__KEY` variables of the process environment.
fn process_overrides() -> Environment {
    Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

/// The defaults, `file` if given, then `overrides`, merged.
fn layers(file: Option<&Path>, overrides: Environment) -> Result<Config, ConfigError> {
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::invalid(
                "--config",
                format!("{} does not exist or is not a file", path.display()),
            ));
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml));
    }
    builder
        .add_source(overrides)
        .build()
        .map_err(|source| file_error(file.map(Path::to_path_buf).unwrap_or_default(), &source))
}

/// A file the loader could not read or parse. A TOML syntax error quotes
/// the offending line, which may be `mongodb.uri` with its password: only
/// the position and the reason are kept.
fn file_error(path: PathBuf, source: &config::ConfigError) -> ConfigError {
    let text = source.to_string();
    let message = text
        .lines()
        .filter(|line| {
            let quoted = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !quoted.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(" ");
    ConfigError::File { path, message }
}

/// Where the configuration file is looked for when none is given.
pub const DEFAULT_FILE: &str = "/etc/wxtokend/wxtokend.toml";

/// Replaces [`DEFAULT_FILE`], for the test suite only (not documented in
/// `--help`): tests cannot write to `/etc`.
const DEFAULT_FILE_FOR_TESTS: &str = "WXTOKEND_DEFAULT_CONFIG";

/// The configuration file in use, and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// Given with `--config` or `WXTOKEND_CONFIG`.
    Given(PathBuf),
    /// None given, and [`DEFAULT_FILE`] exists.
    Default(PathBuf),
    /// None given and none at [`DEFAULT_FILE`]: the built-in defaults and
    /// `WXTOKEND__…` variables only.
    None,
}

impl ConfigFile {
    /// `given` if any, else [`DEFAULT_FILE`] if it exists.
    pub fn choose(given: Option<PathBuf>) -> Self {
        if let Some(path) = given {
            return Self::Given(path);
        }
        let default = std::env::var_os(DEFAULT_FILE_FOR_TESTS)
            .map_or_else(|| PathBuf::from(DEFAULT_FILE), PathBuf::from);
        // Only a file that is not there means none: one that cannot even
        // be looked at (a directory the user may not enter) is used, so that
        // loading it fails naming it, rather than running on the defaults.
        match std::fs::metadata(&default) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::None,
            _ => Self::Default(default),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Given(path) | Self::Default(path) => Some(path),
            Self::None => None,
        }
    }
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(path) => write!(f, "{}", path.display()),
            Self::Default(path) => write!(f, "{} (the default path)", path.display()),
            Self::None => write!(
                f,
                "none (no --config, no WXTOKEND_CONFIG, no {DEFAULT_FILE}): built-in defaults \
                 and WXTOKEND__* variables only"
            ),
        }
    }
}

mod accounts;
mod mirrors;
mod open_platform;
mod secrets;
mod show;
mod validate;

pub use mirrors::MirrorSettings;
pub use open_platform::{AuthorizerSelection, OpenPlatformSettings};
pub use show::effective;

#[cfg(test)]
mod tests;
