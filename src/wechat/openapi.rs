//! WeChat's own view of an account's API quotas, and resetting them: the
//! calls behind `wxtokend quota` (Official Accounts and Mini Programs; WeCom
//! has no such API).
//!
//! - `POST /cgi-bin/openapi/quota/get?access_token=…`, body `{"cgi_path": …}`:
//!   `quota: {daily_limit, used, remain}` for today, and where WeChat sends
//!   them `rate_limit` / `component_rate_limit: {call_count, refresh_second}`.
//! - `POST /cgi-bin/clear_quota?access_token=…`, body `{"appid": …}`: resets
//!   every API's count of the account; 10 clears a month (errcode 48006
//!   after), the admin console's clears included.
//! - `POST /cgi-bin/clear_quota/v2` with `appid` and `appsecret`: the same
//!   without a token, for when the token API's quota is spent. WeChat's page
//!   lists both in the request body but its example puts them in the query
//!   string (and the common SDKs do so): both are sent, so either reading
//!   works. Every error is built without the URL, as for `/cgi-bin/token`.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wxtokend_reader::AccountId;

use super::answer::{api_error, refused, FetchError};
use super::errcode::Call;
use super::{endpoint, WechatClient};

/// Longest `--api` path accepted; WeChat's paths are far shorter.
const MAX_CGI_PATH_LEN: usize = 200;

/// An API path as WeChat names it in `cgi_path`: `/cgi-bin/token`, without
/// the host. Checked when parsed, so a typo is a command-line error rather
/// than WeChat's 76021.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CgiPath(String);

impl CgiPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CgiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for CgiPath {
    type Err = String;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        if !path.starts_with('/') {
            return Err(format!(
                "{path:?} must start with / (WeChat's path without the host, such as /cgi-bin/token)"
            ));
        }
        if path.len() > MAX_CGI_PATH_LEN {
            return Err(format!("longer than {MAX_CGI_PATH_LEN} characters"));
        }
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
        {
            return Err(format!(
                "{path:?} holds characters WeChat's paths never use (a query string or a host?)"
            ));
        }
        Ok(Self(path.to_owned()))
    }
}

/// WeChat's count of an account's calls to one API today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WechatQuota {
    /// Calls the account may make today.
    pub daily_limit: i64,
    /// Calls made today (WeChat says its count may be off by about 1%).
    pub used: i64,
    pub remain: i64,
    /// The API's rate limit for the account's own calls, if WeChat sent it.
    pub rate_limit: Option<RateLimit>,
    /// The same for calls a third-party platform makes on its behalf.
    pub component_rate_limit: Option<RateLimit>,
}

/// At most `call_count` calls per `refresh_second` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub call_count: i64,
    pub refresh_second: i64,
}

#[derive(Deserialize)]
struct QuotaAnswer {
    errcode: Option<i64>,
    errmsg: Option<String>,
    quota: Option<QuotaCounts>,
    rate_limit: Option<RateLimit>,
    component_rate_limit: Option<RateLimit>,
}

#[derive(Deserialize)]
struct QuotaCounts {
    daily_limit: i64,
    used: i64,
    remain: i64,
}

/// `{errcode, errmsg}`: what the clear calls answer.
#[derive(Deserialize)]
struct StatusAnswer {
    errcode: Option<i64>,
    errmsg: Option<String>,
}

impl WechatClient {
    /// WeChat's count of today's calls to `api` by the account whose access
    /// token this is (`openapi/quota/get`).
    #[tracing::instrument(name = "api_quota", skip_all, fields(%api))]
    pub async fn api_quota(
        &self,
        access_token: &SecretString,
        api: &CgiPath,
    ) -> Result<WechatQuota, FetchError> {
        let mut url = endpoint(&self.base, "cgi-bin/openapi/quota/get");
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose_secret());
        let request = serde_json::json!({ "cgi_path": api.as_str() });
        let response = self.http.post(url).json(&request).send().await;
        parse_quota(&self.read(response).await?, access_token)
    }

    /// Resets every API's count of `appid` for today (`clear_quota`): one of
    /// the account's 10 clears a month.
    #[tracing::instrument(name = "clear_quota", skip_all, fields(account = %appid))]
    pub async fn clear_quota(
        &self,
        appid: &AccountId,
        access_token: &SecretString,
    ) -> Result<(), FetchError> {
        let mut url = endpoint(&self.base, "cgi-bin/clear_quota");
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose_secret());
        let request = serde_json::json!({ "appid": appid.as_str() });
        let response = self.http.post(url).json(&request).send().await;
        parse_status(&self.read(response).await?, access_token, Call::ManageQuota)
    }

    /// The same with the AppSecret instead of a token (`clear_quota/v2`),
    /// for when no valid token is stored (the token API's quota is spent).
    #[tracing::instrument(name = "clear_quota_v2", skip_all, fields(account = %appid))]
    pub async fn clear_quota_with_secret(
        &self,
        appid: &AccountId,
        secret: &SecretString,
    ) -> Result<(), FetchError> {
        let mut url = endpoint(&self.base, "cgi-bin/clear_quota/v2");
        url.query_pairs_mut()
            .append_pair("appid", appid.as_str())
            .append_pair("appsecret", secret.expose_secret());
        let request = serde_json::json!({
            "appid": appid.as_str(),
            "appsecret": secret.expose_secret(),
        });
        let response = self.http.post(url).json(&request).send().await;
        parse_status(
            &self.read(response).await?,
            secret,
            Call::ClearQuotaWithSecret,
        )
    }
}

/// Parses `openapi/quota/get`'s answer; `access_token` is scrubbed from
/// WeChat's `errmsg`.
fn parse_quota(body: &[u8], access_token: &SecretString) -> Result<WechatQuota, FetchError> {
    let answer: QuotaAnswer = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    refused(
        answer.errcode,
        answer.errmsg,
        &[access_token],
        Call::ManageQuota,
    )?;
    let counts = answer
        .quota
        .ok_or_else(|| FetchError::InvalidResponse("quota is missing".into()))?;
    Ok(WechatQuota {
        daily_limit: counts.daily_limit,
        used: counts.used,
        remain: counts.remain,
        rate_limit: answer.rate_limit,
        component_rate_limit: answer.component_rate_limit,
    })
}

/// Parses `{errcode, errmsg}`: success only with errcode 0, so that a body
/// that is not WeChat's answer never reads as a clear that happened.
fn parse_status(body: &[u8], secret: &SecretString, call: Call) -> Result<(), FetchError> {
    let answer: StatusAnswer = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    match answer.errcode {
        Some(0) => Ok(()),
        Some(errcode) => Err(api_error(errcode, answer.errmsg, &[secret], call)),
        None => Err(FetchError::InvalidResponse("errcode is missing".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::ErrorClass;

    fn token() -> SecretString {
        SecretString::from("TOKEN-abc123")
    }

    #[test]
    fn a_quota_answer_gives_the_counts_and_the_rate_limits_when_sent() {
        let body =
            br#"{"errcode":0,"errmsg":"ok","quota":{"daily_limit":2000,"used":3,"remain":1997},
            "rate_limit":{"call_count":100,"refresh_second":60}}"#;
        let quota = parse_quota(body, &token()).expect("parsed");
        assert_eq!(
            quota,
            WechatQuota {
                daily_limit: 2000,
                used: 3,
                remain: 1997,
                rate_limit: Some(RateLimit {
                    call_count: 100,
                    refresh_second: 60
                }),
                component_rate_limit: None,
            }
        );
        // WeChat's older answer, without errcode.
        let old = br#"{"quota":{"daily_limit":1000,"used":0,"remain":1000}}"#;
        assert_eq!(parse_quota(old, &token()).expect("parsed").remain, 1000);
    }

    #[test]
    fn refusals_are_classified_and_never_echo_the_token() {
        let body = br#"{"errcode":42001,"errmsg":"access_token expired TOKEN-abc123 rid: x"}"#;
        let error = parse_quota(body, &token()).expect_err("refused");
        assert_eq!(error.class(), ErrorClass::InvalidToken);
        assert!(!error.to_string().contains("TOKEN-abc123"), "{error}");
        let error = parse_quota(
            br#"{"errcode":76021,"errmsg":"cgi_path not found"}"#,
            &token(),
        )
        .expect_err("refused");
        assert!(error.to_string().contains("--api"), "{error}");
        let error = parse_quota(br#"{"errcode":0,"errmsg":"ok"}"#, &token()).expect_err("no quota");
        assert!(matches!(error, FetchError::InvalidResponse(_)), "{error}");
    }

    #[test]
    fn a_clear_succeeds_only_on_errcode_0() {
        let secret = SecretString::from("the-app-secret");
        let call = Call::ClearQuotaWithSecret;
        assert!(parse_status(br#"{"errcode":0,"errmsg":"ok"}"#, &secret, call).is_ok());
        for body in [&b"{}"[..], b"<html>ok</html>", b"{\"errmsg\":\"ok\"}"] {
            assert!(parse_status(body, &secret, call).is_err());
        }
        let error = parse_status(
            br#"{"errcode":40001,"errmsg":"invalid credential the-app-secret"}"#,
            &secret,
            call,
        )
        .expect_err("refused");
        assert_eq!(error.errcode(), Some(40001));
        assert!(!error.to_string().contains("the-app-secret"), "{error}");
        let error = parse_status(br#"{"errcode":48006,"errmsg":"forbid"}"#, &secret, call)
            .expect_err("refused");
        assert!(error.to_string().contains("10 quota clears"), "{error}");
    }

    #[test]
    fn api_paths_start_with_a_slash_and_hold_no_query_or_host() {
        assert_eq!(
            "/cgi-bin/token".parse::<CgiPath>().map(|p| p.0),
            Ok("/cgi-bin/token".to_owned())
        );
        for bad in [
            "cgi-bin/token",
            "",
            "https://api.weixin.qq.com/cgi-bin/token",
            "/cgi-bin/token?access_token=x",
            "/cgi bin",
        ] {
            assert!(bad.parse::<CgiPath>().is_err(), "{bad:?}");
        }
        assert!("/a".repeat(101).parse::<CgiPath>().is_err());
    }
}
