//! From settings as written to [`Settings`]: every value checked, every
//! problem named by its key with the fix, secrets read, URLs and the log
//! filter parsed once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing_subscriber::filter::Directive;
use wxtokend_reader::AccountId;

use super::{
    Account, AccountSpec, AdminSettings, ConfigError, DaemonSettings, EnvSource, LeaseSettings,
    LogSettings, MongoSettings, Platform, Problem, RawLogSettings, RawWechatSettings,
    RefreshSettings, Scope, Settings, TicketName, TokenEndpoint, WechatSettings,
};

/// Most calls to WeChat in flight that a configuration may ask for: beyond
/// this a storm of due accounts would meet WeChat's per-minute limits.
const MAX_CONCURRENT_CALLS: usize = 1024;

/// Largest `wechat.min_expires_in`: stable_token answers a token's remaining
/// life, which is normally down to about 5 minutes before WeChat rotates
/// it, so a higher floor would refuse good answers.
const MAX_MIN_EXPIRES_IN: Duration = Duration::from_secs(300);

/// Settings as written, before secrets are resolved and values checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    daemon: DaemonSettings,
    mongodb: MongoSettings,
    wechat: RawWechatSettings,
    refresh: RefreshSettings,
    lease: LeaseSettings,
    admin: AdminSettings,
    log: RawLogSettings,
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
    pub(super) fn validate(
        self,
        env: &dyn EnvSource,
        scope: Scope,
    ) -> Result<Settings, ConfigError> {
        let mut problems = Problems::default();
        self.check_values(&mut problems);
        let wechat = wechat_settings(&self.wechat, &mut problems);
        let log = log_settings(&self.log, &mut problems);
        let configured = account_specs(&self.accounts, &mut problems);
        let accounts = match scope {
            Scope::Daemon => resolve_secrets(&self.accounts, &configured, env, &mut problems),
            Scope::StoreOnly => Vec::new(),
        };
        let stable = configured
            .iter()
            .any(|a| a.endpoint == TokenEndpoint::StableToken);
        problems.check(
            !stable || self.refresh.forced_min_interval >= Duration::from_secs(30),
            "refresh.forced_min_interval",
            "must be at least 30s with stable_token accounts (WeChat's limit for force_refresh)",
        );
        let (Some(wechat), Some(log), true) = (wechat, log, problems.0.is_empty()) else {
            return Err(ConfigError::Invalid {
                problems: problems.0,
            });
        };
        let mut daemon = self.daemon;
        if daemon.instance_id.is_empty() {
            daemon.instance_id = default_instance_id();
        }
        Ok(Settings {
            daemon,
            mongodb: self.mongodb,
            wechat,
            refresh: self.refresh,
            lease: self.lease,
            admin: self.admin,
            log,
            accounts,
            configured,
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
            (1..=MAX_CONCURRENT_CALLS).contains(&self.wechat.max_concurrent_calls),
            "wechat.max_concurrent_calls",
            "must be between 1 and 1024 (WeChat limits calls per minute; 16 is plenty)",
        );
        p.check(
            (Duration::from_secs(1)..=MAX_MIN_EXPIRES_IN).contains(&self.wechat.min_expires_in),
            "wechat.min_expires_in",
            "must be between 1s and 5m, for example \"60s\" (stable_token answers a token's \
             remaining life, down to about 5 minutes)",
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
        let call = self.wechat.connect_timeout + self.wechat.request_timeout;
        p.check(
            self.lease.duration / 2 > call,
            "lease.duration",
            "must be more than twice wechat.connect_timeout + wechat.request_timeout, so that \
             a WeChat call allowed under a lease always ends before the lease could",
        );
        p.check(
            self.daemon.shutdown_timeout > call + self.mongodb.server_selection_timeout,
            "daemon.shutdown_timeout",
            "must be more than wechat.connect_timeout + wechat.request_timeout + \
             mongodb.server_selection_timeout, so that a call in flight at shutdown is \
             finished and stored",
        );
        p.check(
            self.admin.listen.is_empty() || self.admin.address().is_some(),
            "admin.listen",
            "must be an address such as \"127.0.0.1:9464\", or \"\" to turn the admin server off",
        );
    }
}

/// `[wechat]` with its base URLs parsed; `None` if one is wrong.
fn wechat_settings(raw: &RawWechatSettings, p: &mut Problems) -> Option<WechatSettings> {
    let mut url = |key: &str, value: &str| match parse_base_url(value, raw.allow_http) {
        Ok(url) => Some(url),
        Err(message) => {
            p.add(key, message);
            None
        }
    };
    let base_url = url("wechat.base_url", &raw.base_url);
    let wecom_base_url = url("wechat.wecom_base_url", &raw.wecom_base_url);
    Some(WechatSettings {
        base_url: base_url?,
        wecom_base_url: wecom_base_url?,
        allow_http: raw.allow_http,
        connect_timeout: raw.connect_timeout,
        request_timeout: raw.request_timeout,
        max_response_bytes: raw.max_response_bytes,
        max_concurrent_calls: raw.max_concurrent_calls,
        min_expires_in: raw.min_expires_in,
    })
}

/// Checks a configured base URL: absolute, https (or http when allowed),
/// without query or fragment.
pub(super) fn parse_base_url(raw: &str, allow_http: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(
                "http:// is refused; use https://, or set wechat.allow_http = true for tests"
                    .into(),
            )
        }
        other => return Err(format!("scheme {other:?} is not supported; use https://")),
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err("must be a plain base such as https://api.weixin.qq.com".into());
    }
    Ok(url)
}

/// `[log]` with `level` parsed into filter directives (comma-separated,
/// as `RUST_LOG` takes them); `None` if one is wrong.
fn log_settings(raw: &RawLogSettings, p: &mut Problems) -> Option<LogSettings> {
    let directives: Result<Vec<Directive>, _> = raw
        .level
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse::<Directive>())
        .collect();
    match directives {
        Ok(directives) => Some(LogSettings {
            format: raw.format,
            directives,
        }),
        Err(e) => {
            p.add(
                "log.level",
                format!("not a valid filter ({e}); try \"info\""),
            );
            None
        }
    }
}

/// Every `[[accounts]]` entry as a spec, its id and shape checked (in both
/// scopes: `status` lists these). An inline `secret` is refused everywhere,
/// as a config file must never hold one; reading the secret is left to
/// [`resolve_secrets`].
fn account_specs(raw: &[RawAccount], p: &mut Problems) -> Vec<AccountSpec> {
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(raw.len());
    for (i, account) in raw.iter().enumerate() {
        let key = |field: &str| format!("accounts[{i}].{field}");
        if account.id.trim().is_empty() {
            p.add(key("id"), "must not be empty");
        } else if !seen.insert(account.id.clone()) {
            p.add(
                key("id"),
                format!("duplicate id {:?}; each account appears once", account.id),
            );
        }
        check_account_shape(account, i, p);
        if account.secret.is_some() {
            p.add(
                key("secret"),
                "inline secrets are not allowed; use secret_env or secret_file",
            );
        }
        specs.push(AccountSpec {
            id: AccountId::new(account.id.clone()),
            platform: account.platform,
            endpoint: account.endpoint,
            tickets: account.tickets.iter().map(|t| t.kind()).collect(),
        });
    }
    specs
}

/// The daemon's accounts: each spec with its secret read from the
/// environment or a file.
fn resolve_secrets(
    raw: &[RawAccount],
    specs: &[AccountSpec],
    env: &dyn EnvSource,
    p: &mut Problems,
) -> Vec<Account> {
    if raw.is_empty() {
        p.add(
            "accounts",
            "no account configured; add an [[accounts]] table to your --config file",
        );
    }
    let mut accounts = Vec::with_capacity(raw.len());
    for (i, (account, spec)) in raw.iter().zip(specs).enumerate() {
        let key = |field: &str| format!("accounts[{i}].{field}");
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
                id: spec.id.clone(),
                platform: spec.platform,
                endpoint: spec.endpoint,
                secret,
                tickets: spec.tickets.clone(),
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

/// `hostname-pid-random`: unique per process even where hostnames and pids
/// repeat (containers with host networking, pid 1 everywhere).
pub(super) fn default_instance_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!(
        "{}-{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id(),
        Alphanumeric
            .sample_string(&mut rand::rng(), 6)
            .to_lowercase()
    )
}
