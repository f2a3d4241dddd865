//! Typed settings. Loaded in layers with the `config` crate: the committed
//! `config/default.toml` (compiled in), an optional file given with
//! `--config`, then `WXTOKEND__SECTION__KEY` environment variables. Every
//! problem is reported with the key it concerns and what to do about it.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{AccountId, CredentialKind, Platform};

/// The defaults, documented line by line in `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

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
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    pub instance_id: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    pub uri: SecretString,
    pub database: String,
    #[serde(with = "humantime_serde")]
    pub server_selection_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    pub base_url: String,
    pub wecom_base_url: String,
    pub allow_http: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_concurrent_calls: usize,
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
    pub daily_call_limit: i64,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
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
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
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
    /// Only what reading MongoDB needs (`get`): accounts and their secrets
    /// are not looked at, so business hosts need no WeChat secret.
    StoreOnly,
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

impl Settings {
    /// Loads defaults, then `file` if given, then `WXTOKEND__…` variables
    /// from the process environment, and validates the result.
    pub fn load(file: Option<&Path>, scope: Scope) -> Result<Settings, ConfigError> {
        let env = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        Self::load_with(file, env, &ProcessEnv, scope)
    }

    /// Loads defaults plus `toml` (as if it were the `--config` file), with
    /// no environment overrides. Public for the fuzzer (`fuzz/`).
    #[doc(hidden)]
    pub fn load_from_str(toml: &str, env: &dyn EnvSource) -> Result<Settings, ConfigError> {
        let layered = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(toml, FileFormat::Toml))
            .build()
            .map_err(|source| ConfigError::File {
                path: PathBuf::from("<string>"),
                source,
            })?;
        Self::from_layers(layered, env, Scope::Daemon)
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with(
        file: Option<&Path>,
        overrides: Environment,
        env: &dyn EnvSource,
        scope: Scope,
    ) -> Result<Settings, ConfigError> {
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
        let layered =
            builder
                .add_source(overrides)
                .build()
                .map_err(|source| ConfigError::File {
                    path: file.map(Path::to_path_buf).unwrap_or_default(),
                    source,
                })?;
        Self::from_layers(layered, env, scope)
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

/// Settings as written, before secrets are resolved and values checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    daemon: DaemonSettings,
    mongodb: MongoSettings,
    wechat: WechatSettings,
    refresh: RefreshSettings,
    lease: LeaseSettings,
    admin: AdminSettings,
    log: LogSettings,
    accounts: Vec<RawAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    id: String,
    platform: Platform,
    #[serde(default = "default_endpoint")]
    endpoint: TokenEndpoint,
    /// Accepted only to reject it with a helpful message.
    secret: Option<serde::de::IgnoredAny>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    tickets: Vec<TicketName>,
}

fn default_endpoint() -> TokenEndpoint {
    TokenEndpoint::Token
}

/// Collects problems so that one run reports all of them.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.add(key, message);
        }
    }
}

impl RawSettings {
    fn validate(self, env: &dyn EnvSource, scope: Scope) -> Result<Settings, ConfigError> {
        let mut problems = Problems::default();
        self.check_values(&mut problems);
        let accounts = match scope {
            Scope::Daemon => resolve_accounts(self.accounts, env, &mut problems),
            Scope::StoreOnly => Vec::new(),
        };
        let stable = accounts
            .iter()
            .any(|a| a.endpoint == TokenEndpoint::StableToken);
        problems.check(
            !stable || self.refresh.forced_min_interval >= Duration::from_secs(30),
            "refresh.forced_min_interval",
            "must be at least 30s with stable_token accounts (WeChat's limit for force_refresh)",
        );
        if !problems.0.is_empty() {
            return Err(ConfigError::Invalid {
                problems: problems.0,
            });
        }
        let mut daemon = self.daemon;
        if daemon.instance_id.is_empty() {
            daemon.instance_id = default_instance_id();
        }
        Ok(Settings {
            daemon,
            mongodb: self.mongodb,
            wechat: self.wechat,
            refresh: self.refresh,
            lease: self.lease,
            admin: self.admin,
            log: self.log,
            accounts,
        })
    }

    fn check_values(&self, p: &mut Problems) {
        let uri = self.mongodb.uri.expose_secret();
        p.check(
            uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://"),
            "mongodb.uri",
            "must start with mongodb:// or mongodb+srv://",
        );
        p.check(
            !self.mongodb.database.is_empty(),
            "mongodb.database",
            "must not be empty",
        );
        p.check(
            !self.mongodb.server_selection_timeout.is_zero(),
            "mongodb.server_selection_timeout",
            "must be more than zero, for example \"5s\"",
        );
        p.check(
            self.mongodb.history_retention >= Duration::from_secs(3600),
            "mongodb.history_retention",
            "must be at least 1h, so stored tokens outlive their own validity",
        );
        for (key, url) in [
            ("wechat.base_url", &self.wechat.base_url),
            ("wechat.wecom_base_url", &self.wechat.wecom_base_url),
        ] {
            if let Err(message) = crate::wechat::parse_base_url(url, self.wechat.allow_http) {
                p.add(key, message);
            }
        }
        p.check(
            !self.wechat.connect_timeout.is_zero(),
            "wechat.connect_timeout",
            "must be more than zero, for example \"5s\"",
        );
        p.check(
            !self.wechat.request_timeout.is_zero(),
            "wechat.request_timeout",
            "must be more than zero, for example \"10s\"",
        );
        p.check(
            self.wechat.max_concurrent_calls >= 1,
            "wechat.max_concurrent_calls",
            "must be at least 1",
        );
        p.check(
            self.wechat.max_response_bytes >= 1024,
            "wechat.max_response_bytes",
            "must be at least 1024",
        );
        p.check(
            !self.refresh.retry_initial.is_zero(),
            "refresh.retry_initial",
            "must be more than zero, for example \"1s\"",
        );
        p.check(
            self.refresh.retry_max >= self.refresh.retry_initial,
            "refresh.retry_max",
            "must be at least refresh.retry_initial",
        );
        p.check(
            !self.refresh.permanent_error_retry.is_zero(),
            "refresh.permanent_error_retry",
            "must be more than zero, for example \"30m\"",
        );
        p.check(
            !self.refresh.request_poll_interval.is_zero(),
            "refresh.request_poll_interval",
            "must be more than zero, for example \"1s\"",
        );
        p.check(
            self.refresh.daily_call_limit >= 1,
            "refresh.daily_call_limit",
            "must be at least 1 (WeChat allows 2000 a day)",
        );
        p.check(
            !self.lease.renew_interval.is_zero(),
            "lease.renew_interval",
            "must be more than zero, for example \"10s\"",
        );
        p.check(
            self.lease.renew_interval.saturating_mul(3) <= self.lease.duration,
            "lease.renew_interval",
            "must be at most a third of lease.duration, so a lease is renewed before it can lapse",
        );
        p.check(
            self.admin.listen.is_empty() || self.admin.address().is_some(),
            "admin.listen",
            "must be an address such as \"127.0.0.1:9464\", or \"\" to turn the admin server off",
        );
        if let Err(e) = crate::telemetry::parse_filter(&self.log.level) {
            p.add(
                "log.level",
                format!("not a valid filter ({e}); try \"info\""),
            );
        }
    }
}

fn resolve_accounts(raw: Vec<RawAccount>, env: &dyn EnvSource, p: &mut Problems) -> Vec<Account> {
    if raw.is_empty() {
        p.add(
            "accounts",
            "no account configured; add an [[accounts]] table to your --config file",
        );
    }
    let mut seen = HashSet::new();
    let mut accounts = Vec::with_capacity(raw.len());
    for (i, account) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("accounts[{i}].{field}");
        if account.id.trim().is_empty() {
            p.add(key("id"), "must not be empty");
        } else if !seen.insert(account.id.clone()) {
            p.add(
                key("id"),
                format!("duplicate id {:?}; each account appears once", account.id),
            );
        }
        check_account_shape(&account, i, p);
        if account.secret.is_some() {
            p.add(
                key("secret"),
                "inline secrets are not allowed; use secret_env or secret_file",
            );
        }
        let secret = match (&account.secret_env, &account.secret_file) {
            (Some(var), None) => secret_from_env(var, env).map_err(|m| (key("secret_env"), m)),
            (None, Some(path)) => secret_from_file(path).map_err(|m| (key("secret_file"), m)),
            (Some(_), Some(_)) => Err((
                key("secret_env"),
                "set only one of secret_env and secret_file".to_string(),
            )),
            (None, None) => Err((
                key("secret_env"),
                "missing: set secret_env (an environment variable name) or secret_file (a path)"
                    .to_string(),
            )),
        };
        match secret {
            Ok(secret) => accounts.push(Account {
                id: AccountId::new(account.id),
                platform: account.platform,
                endpoint: account.endpoint,
                secret,
                tickets: account.tickets.iter().map(|t| t.kind()).collect(),
            }),
            Err((key, message)) => p.add(key, message),
        }
    }
    accounts
}

/// Platform rules: WeCom ids are `corpid/agentid` and use `gettoken`; each
/// platform has its own tickets.
fn check_account_shape(account: &RawAccount, i: usize, p: &mut Problems) {
    let key = |field: &str| format!("accounts[{i}].{field}");
    if account.platform == Platform::Wecom {
        let shaped = account
            .id
            .split_once('/')
            .is_some_and(|(corp, agent)| !corp.is_empty() && !agent.is_empty());
        if !shaped {
            p.add(
                key("id"),
                "a wecom account id is \"corpid/agentid\", e.g. \"ww0123456789abcdef/1000002\"",
            );
        }
        if account.endpoint == TokenEndpoint::StableToken {
            p.add(
                key("endpoint"),
                "stable_token exists only for official_account and mini_program",
            );
        }
    }
    let mut seen = Vec::new();
    for ticket in &account.tickets {
        if !ticket.allowed_on(account.platform) {
            p.add(
                key("tickets"),
                format!(
                    "{ticket:?} tickets do not exist for {:?} (official_account: jsapi, wx_card; wecom: jsapi, agent_config)",
                    account.platform
                ),
            );
        }
        if seen.contains(ticket) {
            p.add(key("tickets"), format!("{ticket:?} is listed twice"));
        }
        seen.push(*ticket);
    }
}

fn secret_from_env(var: &str, env: &dyn EnvSource) -> Result<SecretString, String> {
    match env.var(var) {
        Some(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_owned())),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!(
            "environment variable {var} is not set; export it, or use secret_file"
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

fn default_instance_id() -> String {
    format!(
        "{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<String, String>);

    impl EnvSource for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wxtokend.toml");
        std::fs::write(&path, toml).expect("write config");
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let overrides = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars.clone()));
        Settings::load_with(Some(&path), overrides, &MapEnv(vars), Scope::Daemon)
    }

    const ONE_ACCOUNT: &str = r#"
        [[accounts]]
        id = "wx0001"
        platform = "official_account"
        secret_env = "WX_SECRET"
    "#;

    fn keys(err: ConfigError) -> Vec<String> {
        err.problems().iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn defaults_plus_one_account_load() {
        let s = load(ONE_ACCOUNT, &[("WX_SECRET", "s3cr3t")]).expect("valid");
        assert_eq!(s.mongodb.database, "wechat");
        assert_eq!(s.refresh.margin, Duration::from_secs(600));
        assert_eq!(s.mongodb.history_retention, Duration::from_secs(7 * 86400));
        assert_eq!(s.accounts.len(), 1);
        assert_eq!(s.accounts[0].secret.expose_secret(), "s3cr3t");
        assert!(!s.daemon.instance_id.is_empty());
    }

    #[test]
    fn environment_overrides_file() {
        let s = load(
            ONE_ACCOUNT,
            &[
                ("WX_SECRET", "x"),
                ("WXTOKEND__MONGODB__DATABASE", "other"),
                ("WXTOKEND__REFRESH__MARGIN", "90s"),
            ],
        )
        .expect("valid");
        assert_eq!(s.mongodb.database, "other");
        assert_eq!(s.refresh.margin, Duration::from_secs(90));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let s = load(ONE_ACCOUNT, &[("WX_SECRET", "very-secret-value")]).expect("valid");
        assert!(!format!("{s:?}").contains("very-secret-value"));
    }

    #[test]
    fn missing_secret_names_the_key_and_the_fix() {
        let err = load(ONE_ACCOUNT, &[]).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("accounts[0].secret_env"), "{text}");
        assert!(text.contains("WX_SECRET is not set"), "{text}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(
            &format!("{ONE_ACCOUNT}\n[mongodb]\nurl = \"x\"\n"),
            &[("WX_SECRET", "x")],
        )
        .expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("mongodb"), "{text}");
        assert!(text.contains("unknown field `url`"), "{text}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load(
            &format!("{ONE_ACCOUNT}\n[refresh]\nmargin = \"ten minutes\"\n"),
            &[("WX_SECRET", "x")],
        )
        .expect_err("must fail");
        assert_eq!(keys(err), vec!["refresh.margin"]);
    }

    #[test]
    fn empty_account_list_is_rejected() {
        let err = load("", &[]).expect_err("must fail");
        assert_eq!(keys(err), vec!["accounts"]);
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let twice = format!("{ONE_ACCOUNT}{ONE_ACCOUNT}");
        let err = load(&twice, &[("WX_SECRET", "x")]).expect_err("must fail");
        assert_eq!(keys(err), vec!["accounts[1].id"]);
    }

    #[test]
    fn inline_secret_is_rejected() {
        let toml = r#"
            [[accounts]]
            id = "wx0001"
            platform = "mini_program"
            secret = "oops"
            secret_env = "WX_SECRET"
        "#;
        let err = load(toml, &[("WX_SECRET", "x")]).expect_err("must fail");
        assert!(!err.to_string().contains("oops"));
        assert_eq!(keys(err), vec!["accounts[0].secret"]);
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let toml = format!("{ONE_ACCOUNT}\n[wechat]\nbase_url = \"http://127.0.0.1:9\"\n");
        let err = load(&toml, &[("WX_SECRET", "x")]).expect_err("must fail");
        assert_eq!(keys(err), vec!["wechat.base_url"]);
        let allowed = format!("{toml}allow_http = true\n");
        load(&allowed, &[("WX_SECRET", "x")]).expect("allowed");
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").expect("write");
        let toml = format!(
            "[[accounts]]\nid = \"wx1\"\nplatform = \"official_account\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        );
        let s = load(&toml, &[]).expect("valid");
        assert_eq!(s.accounts[0].secret.expose_secret(), "from-file");
    }

    #[test]
    fn store_only_scope_needs_no_account_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wxtokend.toml");
        std::fs::write(&path, ONE_ACCOUNT).expect("write config");
        let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
        let s = Settings::load_with(
            Some(&path),
            overrides,
            &MapEnv(HashMap::new()),
            Scope::StoreOnly,
        )
        .expect("no secret needed");
        assert!(s.accounts.is_empty());
    }

    #[test]
    fn wecom_ids_tickets_and_stable_token_rules() {
        let toml = r#"
            [refresh]
            forced_min_interval = "10s"
            [[accounts]]
            id = "ww0123"
            platform = "wecom"
            secret_env = "S"
            tickets = ["wx_card"]
            [[accounts]]
            id = "wxmp"
            platform = "mini_program"
            endpoint = "stable_token"
            secret_env = "S"
            tickets = ["jsapi"]
        "#;
        let err = load(toml, &[("S", "x")]).expect_err("must fail");
        assert_eq!(
            keys(err),
            vec![
                "accounts[0].id",
                "accounts[0].tickets",
                "accounts[1].tickets",
                "refresh.forced_min_interval"
            ]
        );
        let good = r#"
            [refresh]
            forced_min_interval = "30s"
            [[accounts]]
            id = "ww0123/1000002"
            platform = "wecom"
            secret_env = "S"
            tickets = ["jsapi", "agent_config"]
            [[accounts]]
            id = "wxoa"
            platform = "official_account"
            endpoint = "stable_token"
            secret_env = "S"
            tickets = ["jsapi", "wx_card"]
        "#;
        let s = load(good, &[("S", "x")]).expect("valid");
        assert_eq!(s.accounts[0].corp_id(), "ww0123");
        assert_eq!(s.accounts[1].kinds().count(), 3);
    }

    #[test]
    fn all_problems_are_reported_together() {
        let toml = r#"
            [refresh]
            retry_initial = "10s"
            retry_max = "1s"
            [[accounts]]
            id = ""
            platform = "official_account"
        "#;
        let err = load(toml, &[]).expect_err("must fail");
        assert_eq!(
            keys(err),
            vec![
                "refresh.retry_max",
                "accounts[0].id",
                "accounts[0].secret_env"
            ]
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn try_load(toml: &str) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("c.toml");
            std::fs::write(&path, toml).expect("write");
            let overrides = Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()));
            let env = MapEnv(HashMap::from([("S".to_string(), "secret".to_string())]));
            let _ = Settings::load_with(Some(&path), overrides, &env, Scope::Daemon);
        }

        /// Lines made of real keys, sections and odd values.
        fn config_text() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                Just("[refresh]".to_string()),
                Just("[mongodb]".to_string()),
                Just("[[accounts]]".to_string()),
                Just("[lease]".to_string()),
                Just("id = \"wx1\"".to_string()),
                Just("platform = \"wecom\"".to_string()),
                Just("secret_env = \"S\"".to_string()),
                Just("tickets = [\"jsapi\", \"agent_config\"]".to_string()),
                "(margin|duration|renew_interval|uri|database|daily_call_limit|history_retention) = \"[ -~]{0,12}\"",
                "(margin|duration|daily_call_limit) = -?[0-9]{1,20}",
                "[ -~]{0,40}",
            ];
            proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::test_cases(500)))]

            #[test]
            fn arbitrary_config_files_never_panic(text in config_text()) {
                try_load(&text);
            }
        }
    }
}
