//! `wxtokend quota`: WeChat's own count of an account's calls to one API
//! today, and resetting every API's count (10 times a month), without a
//! running daemon.
//!
//! The lease rules hold because nothing here ever asks WeChat for a token:
//! the calls use the newest *stored* access token still valid for the whole
//! call (by MongoDB's clock), the one the account's lease holder fetched.
//! Fetching one here would rotate the token every service reads. With no
//! valid token stored (the token API's quota is spent), a clear uses the
//! AppSecret instead (`clear_quota/v2`), read only then; showing needs a
//! token, so it explains and stops.

use std::fmt::Write as _;

use serde::Serialize;
use wxtokend_reader::{AccountId, Credential, CredentialKind};

use crate::config::{AccountSpec, ConfigError, Platform, Settings};
use crate::coordination::Leases;
use crate::store::{Store, StoreError};
use crate::wechat::{Api, ClientError, ErrorClass, FetchError, WechatClient};
pub use crate::wechat::{CgiPath, RateLimit, WechatQuota};

/// What the command was asked.
#[derive(Debug, Clone)]
pub struct QuotaRequest {
    pub account: AccountId,
    /// The API to show; the account's token API when `None`.
    pub api: Option<CgiPath>,
}

/// Why `quota` did nothing, or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "{0} is not a configured account: `quota` needs its [[accounts]] entry (its platform, \
         and for a clear without a stored token its secret)"
    )]
    NotConfigured(AccountId),
    #[error(
        "{0} is a WeCom account: WeCom has no API to show or clear call quotas (its limits, per \
         corporation and API per minute and per hour, lift by themselves)"
    )]
    Wecom(AccountId),
    #[error("nothing cleared: {0}")]
    NotConfirmed(&'static str),
    #[error(
        "no valid access token of {0} is stored (none yet, or the newest has expired), and \
         `quota` never fetches one: that would rotate the token the daemon keeps. Run the \
         daemon, or if its token API's quota is spent (45009), clear it with \
         `wxtokend quota {0} --clear`, which then uses the AppSecret"
    )]
    NoValidToken(AccountId),
    #[error(transparent)]
    Secret(Box<ConfigError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: {source}{hint}")]
    Wechat {
        what: String,
        source: FetchError,
        hint: &'static str,
    },
}

/// WeChat's count of one API of one account.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub account: AccountId,
    pub api: CgiPath,
    #[serde(flatten)]
    pub quota: WechatQuota,
}

/// How a clear reached WeChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ClearedWith {
    /// `clear_quota` with the stored access token.
    #[serde(rename = "clear_quota")]
    Token,
    /// `clear_quota/v2` with the AppSecret: no valid token was stored, or
    /// WeChat refused the stored one.
    #[serde(rename = "clear_quota/v2")]
    Secret,
}

/// A clear that WeChat accepted, and the API's count after it where a
/// token allows asking.
#[derive(Debug, Clone, Serialize)]
pub struct Cleared {
    pub account: AccountId,
    pub cleared: bool,
    pub via: ClearedWith,
    /// `None`: no token to ask with, or WeChat did not answer (`note`).
    pub quota: Option<Shown>,
    /// The daemon's own per-API counts reset in MongoDB (its 45009 stops
    /// and ceilings), so its refreshers resume within a minute.
    pub daemon_reset: Vec<Api>,
    /// `false`: MongoDB failed after WeChat cleared; the daemon's stops
    /// stand until midnight (see `warnings`). The command then exits 4.
    pub daemon_reset_done: bool,
    /// What went wrong after WeChat cleared (printed on stderr too).
    pub warnings: Vec<String>,
}

/// Shows WeChat's count of today's calls to `request.api` by the account.
pub async fn show(
    store: &Store,
    settings: &Settings,
    request: &QuotaRequest,
) -> Result<Shown, QuotaError> {
    let spec = quota_account(settings, &request.account)?;
    let api = request.api.clone().unwrap_or_else(|| token_api(spec));
    let Some(token) = stored_token(store, settings, &spec.id).await? else {
        return Err(QuotaError::NoValidToken(spec.id.clone()));
    };
    let client = WechatClient::new(&settings.wechat)?;
    let quota = client
        .api_quota(&token.value, &api)
        .await
        .map_err(|e| refused(format!("WeChat did not show the quota of {api}"), e))?;
    Ok(Shown {
        account: spec.id.clone(),
        api,
        quota,
    })
}

/// Resets every API's count of the account for today, once `confirm`
/// agrees (it is asked after the account is checked, before any call).
pub async fn clear(
    store: &Store,
    settings: &Settings,
    request: &QuotaRequest,
    confirm: impl FnOnce(&AccountId) -> Result<(), &'static str>,
) -> Result<Cleared, QuotaError> {
    let spec = quota_account(settings, &request.account)?;
    confirm(&spec.id).map_err(QuotaError::NotConfirmed)?;
    let client = WechatClient::new(&settings.wechat)?;
    let token = stored_token(store, settings, &spec.id).await?;
    let (via, token) = send_clear(&client, settings, spec, token).await?;
    // WeChat has cleared: from here on an error must not hide that (a
    // retry would spend another of the 10 clears).
    let mut warnings = Vec::new();
    let (daemon_reset, daemon_reset_done) =
        match Leases::new(store.clone()).clear_quota_stops(&spec.id).await {
            Ok(apis) => (apis, true),
            Err(e) => {
                warnings.push(format!(
                    "cleared at WeChat, but the daemon's own stops could not be lifted in \
                     MongoDB ({e}): they end at 00:00 Beijing time. Do not clear again for \
                     this (it would spend another of the 10 clears); to lift them at once \
                     when MongoDB answers, set quota.<api>.calls to 0 and \
                     quota.<api>.exhausted to false in the leases document with _id \"{}\"",
                    spec.id
                ));
                (Vec::new(), false)
            }
        };
    let api = request.api.clone().unwrap_or_else(|| token_api(spec));
    let (quota, note) = match token {
        Some(token) => match client.api_quota(&token.value, &api).await {
            Ok(quota) => {
                let account = spec.id.clone();
                (
                    Some(Shown {
                        account,
                        api,
                        quota,
                    }),
                    None,
                )
            }
            Err(e) => (
                None,
                Some(format!("cleared, but showing {api} failed: {e}")),
            ),
        },
        None => (None, None),
    };
    warnings.extend(note);
    Ok(Cleared {
        account: spec.id.clone(),
        cleared: true,
        via,
        quota,
        daemon_reset,
        daemon_reset_done,
        warnings,
    })
}

/// Clears with the stored token, or with the AppSecret when none is stored
/// or WeChat refuses it (rotated early); returns how, and the token if
/// WeChat took it.
async fn send_clear(
    client: &WechatClient,
    settings: &Settings,
    spec: &AccountSpec,
    token: Option<Credential>,
) -> Result<(ClearedWith, Option<Credential>), QuotaError> {
    let Some(token) = token else {
        return Ok((clear_with_secret(client, settings, spec).await?, None));
    };
    match client.clear_quota(&spec.id, &token.value).await {
        Ok(()) => Ok((ClearedWith::Token, Some(token))),
        Err(e) if e.class() == ErrorClass::InvalidToken => {
            Ok((clear_with_secret(client, settings, spec).await?, None))
        }
        Err(e) => Err(refused_clear(
            format!("WeChat did not clear {}", spec.id),
            e,
        )),
    }
}

async fn clear_with_secret(
    client: &WechatClient,
    settings: &Settings,
    spec: &AccountSpec,
) -> Result<ClearedWith, QuotaError> {
    let secret = settings
        .secret_of(spec)
        .map_err(|e| QuotaError::Secret(Box::new(e)))?;
    client
        .clear_quota_with_secret(&spec.id, &secret)
        .await
        .map_err(|e| {
            refused_clear(
                format!("WeChat did not clear {} (clear_quota/v2)", spec.id),
                e,
            )
        })?;
    Ok(ClearedWith::Secret)
}

/// The configured account, if WeChat has quotas for its platform.
fn quota_account<'a>(
    settings: &'a Settings,
    id: &AccountId,
) -> Result<&'a AccountSpec, QuotaError> {
    let spec = settings
        .configured
        .iter()
        .find(|a| a.id == *id)
        .ok_or_else(|| QuotaError::NotConfigured(id.clone()))?;
    match spec.platform {
        Platform::Wecom => Err(QuotaError::Wecom(spec.id.clone())),
        Platform::OfficialAccount | Platform::MiniProgram => Ok(spec),
    }
}

/// The API the account's tokens come from.
fn token_api(spec: &AccountSpec) -> CgiPath {
    let path = spec.api(CredentialKind::AccessToken).cgi_path();
    path.parse()
        .unwrap_or_else(|e| unreachable!("{path} is a valid API path: {e}"))
}

/// The newest stored access token still valid when a call sent now would
/// end (MongoDB's clock), as the daemon's lease holder stored it.
async fn stored_token(
    store: &Store,
    settings: &Settings,
    id: &AccountId,
) -> Result<Option<Credential>, QuotaError> {
    let call = settings.wechat.connect_timeout + settings.wechat.request_timeout;
    let until = store.server_time().await? + call;
    Ok(store
        .credentials()
        .newest_valid(CredentialKind::AccessToken, id, until)
        .await
        .map_err(StoreError::from)?)
}

fn refused(what: String, source: FetchError) -> QuotaError {
    let hint = match source.class() {
        ErrorClass::InvalidToken => {
            " (WeChat refused the stored token: the daemon replaces it when a service reports \
             it, or after `wxtokend refresh`)"
        }
        _ => "",
    };
    QuotaError::Wechat { what, source, hint }
}

/// A clear that failed. Without an answer from WeChat (timeout, broken
/// connection, HTTP error) the clear may have happened all the same: say so,
/// since clearing again would spend another of the 10 a month.
fn refused_clear(what: String, source: FetchError) -> QuotaError {
    if source.errcode().is_some() {
        return refused(what, source);
    }
    QuotaError::Wechat {
        what,
        source,
        hint: " (WeChat did not answer, so the clear may have happened all the same: check \
               with `wxtokend quota ACCOUNT` before clearing again, as each clear counts)",
    }
}

/// A table for people: one line per API shown.
pub fn render(shown: &[&Shown]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<28} {:>11} {:>8} {:>8}  RATE LIMIT",
        "ACCOUNT", "API", "DAILY LIMIT", "USED", "REMAIN"
    );
    for s in shown {
        let rate = s.quota.rate_limit.map_or("-".into(), |r| {
            format!("{} per {}s", r.call_count, r.refresh_second)
        });
        let _ = writeln!(
            out,
            "{:<28} {:<28} {:>11} {:>8} {:>8}  {rate}",
            s.account, s.api, s.quota.daily_limit, s.quota.used, s.quota.remain
        );
    }
    out.push_str(
        "(WeChat's count for today, Beijing time; WeChat says it may be off by about 1%)\n",
    );
    out
}

/// What a clear did, for people.
pub fn render_cleared(cleared: &Cleared) -> String {
    let how = match cleared.via {
        ClearedWith::Token => "clear_quota, with the stored access token",
        ClearedWith::Secret => "clear_quota/v2, with the AppSecret: no valid access token stored",
    };
    let mut out = format!(
        "cleared today's API call counts of {} ({how}); this used one of the 10 clears WeChat \
         allows each account per month\n",
        cleared.account
    );
    if !cleared.daemon_reset.is_empty() {
        let apis: Vec<&str> = cleared
            .daemon_reset
            .iter()
            .map(|api| api.as_str())
            .collect();
        let _ = writeln!(
            out,
            "the daemon's own counts were reset too ({}): a refresher stopped by 45009 or its \
             ceiling resumes within a minute",
            apis.join(", ")
        );
    }
    if let Some(shown) = &cleared.quota {
        out.push_str(&render(&[shown]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::RateLimit;

    #[test]
    fn a_clear_without_an_answer_says_it_may_have_happened() {
        let unanswered = [
            FetchError::Timeout,
            FetchError::Transport("connection reset".into()),
            FetchError::HttpStatus(502),
        ];
        for error in unanswered {
            let text = refused_clear("WeChat did not clear wx1".into(), error).to_string();
            assert!(text.contains("may have happened"), "{text}");
        }
        let answered = FetchError::Api {
            errcode: 48006,
            errmsg: "forbid to clear quota because of reaching the limit".into(),
            meaning: "used up",
            class: ErrorClass::Permanent,
            effect: None,
            retry_after: None,
        };
        let text = refused_clear("WeChat did not clear wx1".into(), answered).to_string();
        assert!(!text.contains("may have happened"), "{text}");
    }

    #[test]
    fn the_table_lines_up_under_its_header() {
        let shown = Shown {
            account: AccountId::new("wx1234567890abcdef"),
            api: "/cgi-bin/token".parse().expect("a path"),
            quota: WechatQuota {
                daily_limit: 2000,
                used: 13,
                remain: 1987,
                rate_limit: Some(RateLimit {
                    call_count: 100,
                    refresh_second: 60,
                }),
                component_rate_limit: None,
            },
        };
        let table = render(&[&shown]);
        let lines: Vec<&str> = table.lines().collect();
        let column = |line: &str, text: &str| line.find(text).map(|at| at + text.len());
        assert_eq!(
            lines[1].find("/cgi-bin/token"),
            lines[0].find("API"),
            "{table}"
        );
        for (header, value) in [("DAILY LIMIT", "2000"), ("USED", "13"), ("REMAIN", "1987")] {
            assert_eq!(column(lines[0], header), column(lines[1], value), "{table}");
        }
        assert!(lines[1].ends_with("100 per 60s"), "{table}");
    }
}
