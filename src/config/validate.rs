//! From settings as written to [`Settings`]: every value checked, every
//! problem named by its key with the fix, secrets read, URLs and the log
//! filter parsed once.

use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing_subscriber::filter::Directive;

use crate::wechat::Api;

use super::accounts::{account_specs, resolve_secrets, RawAccount};
use super::mirrors::{mirror_settings, RawMirror};
use super::open_platform::{open_platform_settings, RawOpenPlatform};
use super::{
    AdminSettings, ConfigError, DaemonSettings, EnvSource, LeaseSettings, LogSettings,
    MongoSettings, Problem, RawLogSettings, RawMongoSettings, RawWechatSettings, RefreshSettings,
    Scope, Settings, TokenEndpoint, WechatSettings,
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
    mongodb: RawMongoSettings,
    wechat: RawWechatSettings,
    refresh: RefreshSettings,
    lease: LeaseSettings,
    admin: AdminSettings,
    log: RawLogSettings,
    accounts: Vec<RawAccount>,
    #[serde(default)]
    mirrors: Vec<RawMirror>,
    #[serde(default)]
    open_platform: Option<RawOpenPlatform>,
}

/// Collects problems so that one run reports all of them.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn check(&mut self, ok: bool, key: &str, message: &str) {
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
        let mongodb = mongo_settings(&self.mongodb, scope, &mut problems);
        let configured = account_specs(&self.accounts, &mut problems);
        let accounts = match scope {
            Scope::Daemon => resolve_secrets(&configured, env, &mut problems),
            Scope::StoreOnly | Scope::Local => Vec::new(),
        };
        let mirrors = mirror_settings(&self.mirrors, &configured, env, scope, &mut problems);
        let open_platform = self
            .open_platform
            .as_ref()
            .map(|raw| open_platform_settings(raw, env, scope, &mut problems));
        if let Some(op) = &open_platform {
            // The component's token and an account's would share their
            // metrics series (`account` = the appid).
            if let Some(i) = configured
                .iter()
                .position(|a| a.id.as_str() == op.component_appid)
            {
                problems.add(
                    format!("accounts[{i}].id"),
                    "is open_platform.component_appid: a platform's token comes from \
                     api_component_token, not /cgi-bin/token (61024); remove the account",
                );
            }
        }
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
            mongodb,
            wechat,
            refresh: self.refresh,
            lease: self.lease,
            admin: self.admin,
            log,
            accounts,
            configured,
            mirrors,
            open_platform,
        })
    }

    fn check_values(&self, p: &mut Problems) {
        if self.mongodb.uri_file.as_os_str().is_empty() {
            p.check(
                is_mongodb_uri(self.mongodb.uri.expose_secret()),
                "mongodb.uri",
                "must start with mongodb:// or mongodb+srv://",
            );
        }
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
            self.refresh.retired_daily_call_limit.is_none(),
            "refresh.daily_call_limit",
            "was replaced by one ceiling per WeChat API, because WeChat counts quotas per API: \
             remove it and set refresh.daily_call_limits.token (and the other APIs, see \
             config/default.toml) instead",
        );
        for api in Api::ALL {
            let limit = self.refresh.daily_call_limits.of(api);
            p.check(
                limit >= 1,
                &format!("refresh.daily_call_limits.{api}"),
                "must be at least 1 (see config/default.toml for WeChat's own limits)",
            );
        }
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

fn is_mongodb_uri(uri: &str) -> bool {
    uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")
}

/// `[mongodb]` with the connection string read from `uri_file` when that
/// is set (except in [`Scope::Local`], which reads no secret).
fn mongo_settings(raw: &RawMongoSettings, scope: Scope, p: &mut Problems) -> MongoSettings {
    let uri_file = Some(raw.uri_file.clone()).filter(|path| !path.as_os_str().is_empty());
    let uri = match (&uri_file, scope) {
        (Some(path), Scope::Daemon | Scope::StoreOnly) => match uri_from_file(path) {
            Ok(uri) => uri,
            Err(message) => {
                p.add("mongodb.uri_file", message);
                SecretString::from(String::new())
            }
        },
        _ => raw.uri.clone(),
    };
    MongoSettings {
        uri,
        uri_file,
        database: raw.database.clone(),
        server_selection_timeout: raw.server_selection_timeout,
        history_retention: raw.history_retention,
    }
}

/// The connection string in `path`, trimmed (a trailing newline is usual);
/// a problem names the file, never what it holds.
fn uri_from_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let uri = text.trim();
    if uri.is_empty() {
        return Err(format!(
            "{} is empty; write the connection string (mongodb://...) in it",
            path.display()
        ));
    }
    if !is_mongodb_uri(uri) {
        return Err(format!(
            "the connection string in {} (not shown, as it may hold a password) must start \
             with mongodb:// or mongodb+srv://",
            path.display()
        ));
    }
    Ok(SecretString::from(uri.to_owned()))
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
