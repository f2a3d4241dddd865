//! The upstream: WeChat's HTTP API. Only this module speaks HTTP.
//!
//! The AppSecret travels in the query string of `/cgi-bin/token`, so every
//! error leaving this module is built without the URL, and WeChat's own
//! `errmsg` is scrubbed of the secret before it is kept.

pub mod errcode;

use std::time::{Duration, SystemTime};

use reqwest::{redirect, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{Account, TokenEndpoint, WechatSettings};
use crate::domain::{CredentialKind, FetchedCredential, Platform};
pub use errcode::{Call, ErrorClass};

/// WeChat documents that tokens may be up to 512 characters; anything longer
/// is not a token.
pub const MAX_TOKEN_LEN: usize = 512;

/// WeChat's credentials live 7200 s. A lifetime beyond one day is not
/// plausible and would stop refreshing for that long, so it is rejected.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(86_400);

/// WeChat allows about 20 `force_refresh` calls of `stable_token` a day.
pub const STABLE_TOKEN_FORCED_PER_DAY: i64 = 20;

/// Longest part of WeChat's `errmsg` kept in errors and logs.
const MAX_ERRMSG_LEN: usize = 200;

/// Why a fetch failed. No variant ever holds a URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("WeChat did not answer within the request timeout")]
    Timeout,
    #[error("cannot reach WeChat: {0}")]
    Transport(String),
    #[error("WeChat answered HTTP {0}")]
    HttpStatus(u16),
    #[error("WeChat's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("WeChat's answer is not valid: {0}")]
    InvalidResponse(String),
    #[error("WeChat errcode {errcode} ({meaning}): {errmsg}")]
    Api {
        errcode: i64,
        errmsg: String,
        meaning: &'static str,
        class: ErrorClass,
    },
}

impl FetchError {
    /// What the refresh loop should do about this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Timeout | Self::Transport(_) | Self::TooLarge(_) | Self::InvalidResponse(_) => {
                ErrorClass::Transient
            }
            // A 4xx other than 429 means the base URL or path is wrong:
            // retrying soon will not fix it.
            Self::HttpStatus(code) if (400..500).contains(code) && *code != 429 => {
                ErrorClass::Permanent
            }
            Self::HttpStatus(_) => ErrorClass::Transient,
            Self::Api { class, .. } => *class,
        }
    }

    /// The errcode WeChat returned, if it returned one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }
}

/// Checks a configured base URL: absolute, https (or http when allowed),
/// without query or fragment.
pub fn parse_base_url(raw: &str, allow_http: bool) -> Result<Url, String> {
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

/// A long-lived client for WeChat's API, shared by all accounts.
#[derive(Debug, Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: Url,
    wecom_base: Url,
    max_response_bytes: usize,
    /// Bounds calls in flight (`wechat.max_concurrent_calls`), so thousands
    /// of accounts falling due together do not storm WeChat.
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Every credential answer: `{access_token|ticket, expires_in}` or
/// `{errcode, errmsg}` (WeCom and tickets send both, errcode 0 on success).
#[derive(Deserialize)]
struct CredentialResponse {
    access_token: Option<String>,
    ticket: Option<String>,
    expires_in: Option<i64>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

impl WechatClient {
    pub fn new(settings: &WechatSettings) -> Result<Self, String> {
        let base = parse_base_url(&settings.base_url, settings.allow_http)?;
        let wecom_base = parse_base_url(&settings.wecom_base_url, settings.allow_http)?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A redirect would carry the secret to another host.
            .redirect(redirect::Policy::none())
            .https_only(!settings.allow_http)
            .user_agent(concat!("wxtokend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            wecom_base,
            max_response_bytes: settings.max_response_bytes,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_calls,
            )),
        })
    }

    /// The account's access token, from its platform's endpoint:
    /// `GET /cgi-bin/token`, `POST /cgi-bin/stable_token` (with
    /// `force_refresh` when `force`), or WeCom's `GET /cgi-bin/gettoken`.
    #[tracing::instrument(name = "fetch_access_token", skip_all, fields(account = %account.id))]
    pub async fn fetch_access_token(
        &self,
        account: &Account,
        force: bool,
    ) -> Result<FetchedCredential, FetchError> {
        let secret = account.secret.expose_secret();
        let (body, call) = match (account.platform, account.endpoint) {
            (Platform::Wecom, _) => {
                let mut url = endpoint(&self.wecom_base, "cgi-bin/gettoken");
                url.query_pairs_mut()
                    .append_pair("corpid", account.corp_id())
                    .append_pair("corpsecret", secret);
                (self.get(url).await?, Call::WecomIssueToken)
            }
            (_, TokenEndpoint::StableToken) => {
                let url = endpoint(&self.base, "cgi-bin/stable_token");
                let request = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": account.id.as_str(),
                    "secret": secret,
                    "force_refresh": force,
                });
                let _slot = self.slot().await;
                let response = self.http.post(url).json(&request).send().await;
                (self.read(response).await?, Call::IssueToken)
            }
            (_, TokenEndpoint::Token) => {
                let mut url = endpoint(&self.base, "cgi-bin/token");
                url.query_pairs_mut()
                    .append_pair("grant_type", "client_credential")
                    .append_pair("appid", account.id.as_str())
                    .append_pair("secret", secret);
                (self.get(url).await?, Call::IssueToken)
            }
        };
        parse_credential(&body, CredentialKind::AccessToken, call, &account.secret)
    }

    /// A ticket, fetched with a currently valid access token.
    #[tracing::instrument(name = "fetch_ticket", skip_all, fields(account = %account.id, %kind))]
    pub async fn fetch_ticket(
        &self,
        account: &Account,
        kind: CredentialKind,
        access_token: &SecretString,
    ) -> Result<FetchedCredential, FetchError> {
        let (mut url, ticket_type, call) = match (account.platform, kind) {
            (Platform::Wecom, CredentialKind::JsapiTicket) => (
                endpoint(&self.wecom_base, "cgi-bin/get_jsapi_ticket"),
                None,
                Call::WecomUseToken,
            ),
            (Platform::Wecom, _) => (
                endpoint(&self.wecom_base, "cgi-bin/ticket/get"),
                Some("agent_config"),
                Call::WecomUseToken,
            ),
            (_, CredentialKind::WxCardTicket) => (
                endpoint(&self.base, "cgi-bin/ticket/getticket"),
                Some("wx_card"),
                Call::UseToken,
            ),
            _ => (
                endpoint(&self.base, "cgi-bin/ticket/getticket"),
                Some("jsapi"),
                Call::UseToken,
            ),
        };
        url.query_pairs_mut()
            .append_pair("access_token", access_token.expose_secret());
        if let Some(ticket_type) = ticket_type {
            url.query_pairs_mut().append_pair("type", ticket_type);
        }
        let body = self.get(url).await?;
        parse_credential(&body, kind, call, access_token)
    }

    /// Sends a GET and reads at most `max_response_bytes` of the body.
    async fn get(&self, url: Url) -> Result<Vec<u8>, FetchError> {
        let _slot = self.slot().await;
        let response = self.http.get(url).send().await;
        self.read(response).await
    }

    /// Waits for a free slot among `wechat.max_concurrent_calls`.
    async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed, so this is always Some.
        self.in_flight.acquire().await.ok()
    }

    /// Checks the status and reads at most `max_response_bytes` of the body.
    async fn read(
        &self,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Vec<u8>, FetchError> {
        let mut response = response.map_err(transport_error)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::HttpStatus(response.status().as_u16()));
        }
        let limit = self.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(FetchError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// Turns a reqwest error into one that cannot show the URL (and its secret).
fn transport_error(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    FetchError::Transport(text)
}

/// Parses `body` as WeChat's answer to a token call, as the daemon does.
/// Public for the fuzzer (`fuzz/`); not part of the supported API.
#[doc(hidden)]
pub fn parse_token_answer(body: &[u8]) -> Result<FetchedCredential, FetchError> {
    parse_credential(
        body,
        CredentialKind::AccessToken,
        Call::IssueToken,
        &SecretString::from("fuzz-secret".to_owned()),
    )
}

/// Parses a credential answer. `secret` (the AppSecret, or the access token
/// a ticket was fetched with) is scrubbed from WeChat's `errmsg`.
fn parse_credential(
    body: &[u8],
    kind: CredentialKind,
    call: Call,
    secret: &SecretString,
) -> Result<FetchedCredential, FetchError> {
    let parsed: CredentialResponse = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    if let Some(errcode) = parsed.errcode.filter(|code| *code != 0) {
        return Err(api_error(errcode, parsed.errmsg, secret, call));
    }
    let field = kind.value_field();
    let value = match kind {
        CredentialKind::AccessToken => parsed.access_token,
        _ => parsed.ticket,
    }
    .ok_or_else(|| FetchError::InvalidResponse(format!("{field} is missing")))?;
    let expires_in = parsed
        .expires_in
        .ok_or_else(|| FetchError::InvalidResponse("expires_in is missing".into()))?;
    Ok(FetchedCredential {
        value: check_value(field, value)?,
        expires_in: check_expires_in(expires_in)?,
        fetched_at: SystemTime::now(),
    })
}

fn api_error(
    errcode: i64,
    errmsg: Option<String>,
    secret: &SecretString,
    call: Call,
) -> FetchError {
    let mut errmsg: String = errmsg.unwrap_or_default();
    let secret = secret.expose_secret();
    if !secret.is_empty() {
        errmsg = errmsg.replace(secret, "****");
    }
    FetchError::Api {
        errcode,
        errmsg: errmsg.chars().take(MAX_ERRMSG_LEN).collect(),
        meaning: errcode::meaning(errcode, call),
        class: errcode::classify(errcode, call),
    }
}

fn check_value(field: &str, value: String) -> Result<SecretString, FetchError> {
    if value.is_empty() {
        return Err(FetchError::InvalidResponse(format!("{field} is empty")));
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(FetchError::InvalidResponse(format!(
            "{field} is {} bytes, more than {MAX_TOKEN_LEN}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::InvalidResponse(format!(
            "{field} holds characters WeChat never uses"
        )));
    }
    Ok(SecretString::from(value))
}

fn check_expires_in(seconds: i64) -> Result<Duration, FetchError> {
    let max = MAX_EXPIRES_IN.as_secs();
    match u64::try_from(seconds) {
        Ok(s) if (1..=max).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(FetchError::InvalidResponse(format!(
            "expires_in {seconds} is outside 1..={max} seconds"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<(SecretString, Duration), FetchError> {
        parse_credential(
            body.as_bytes(),
            CredentialKind::AccessToken,
            Call::IssueToken,
            &SecretString::from("the-secret"),
        )
        .map(|c| (c.value, c.expires_in))
    }

    #[test]
    fn ticket_answer_parses_and_a_stale_token_is_invalid_token() {
        let secret = SecretString::from("ACCESS");
        let ok = parse_credential(
            br#"{"errcode":0,"errmsg":"ok","ticket":"TICKET","expires_in":7200}"#,
            CredentialKind::JsapiTicket,
            Call::UseToken,
            &secret,
        )
        .expect("ticket");
        assert_eq!(ok.value.expose_secret(), "TICKET");
        let stale = parse_credential(
            br#"{"errcode":40001,"errmsg":"invalid credential ACCESS"}"#,
            CredentialKind::JsapiTicket,
            Call::UseToken,
            &secret,
        )
        .expect_err("stale");
        assert_eq!(stale.class(), ErrorClass::InvalidToken);
        assert!(!stale.to_string().contains("ACCESS"));
    }

    #[test]
    fn success_body_parses() {
        let (token, expires_in) =
            parse(r#"{"access_token":"ACCESS_TOKEN","expires_in":7200}"#).expect("valid answer");
        assert_eq!(token.expose_secret(), "ACCESS_TOKEN");
        assert_eq!(expires_in, Duration::from_secs(7200));
    }

    #[test]
    fn wecom_style_success_with_errcode_zero_parses() {
        let body = r#"{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}"#;
        assert!(parse(body).is_ok());
    }

    #[test]
    fn errcode_is_classified_and_secret_scrubbed() {
        let err = parse(r#"{"errcode":40001,"errmsg":"invalid credential the-secret"}"#)
            .expect_err("errcode");
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(err.errcode(), Some(40001));
        assert!(!err.to_string().contains("the-secret"), "{err}");
    }

    #[test]
    fn bad_bodies_are_transient_invalid_responses() {
        let long = format!(
            r#"{{"access_token":"{}","expires_in":7200}}"#,
            "a".repeat(513)
        );
        for body in [
            "<html>502 Bad Gateway</html>",
            r#"{"access_token":"T","expires_in":72"#,
            r#"{"expires_in":7200}"#,
            r#"{"access_token":"T"}"#,
            r#"{"access_token":"","expires_in":7200}"#,
            r#"{"access_token":"T","expires_in":0}"#,
            r#"{"access_token":"T","expires_in":-5}"#,
            r#"{"access_token":"T","expires_in":9999999999}"#,
            r#"{"access_token":"a b","expires_in":7200}"#,
            long.as_str(),
        ] {
            let err = parse(body).expect_err(body);
            assert!(
                matches!(err, FetchError::InvalidResponse(_)),
                "{body}: {err}"
            );
            assert_eq!(err.class(), ErrorClass::Transient);
        }
    }

    #[test]
    fn base_url_rules() {
        assert!(parse_base_url("https://api.weixin.qq.com", false).is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080", false).is_err());
        assert!(parse_base_url("http://127.0.0.1:8080", true).is_ok());
        assert!(parse_base_url("https://x/?a=b", false).is_err());
        assert!(parse_base_url("ftp://x", true).is_err());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn parse_any(body: &[u8]) -> Result<FetchedCredential, FetchError> {
            parse_credential(
                body,
                CredentialKind::AccessToken,
                Call::IssueToken,
                &SecretString::from("s3cret"),
            )
        }

        /// JSON-ish answers: the right keys with values of any type.
        fn answer() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| format!("{n:?}")),
                "[ -~]{0,600}".prop_map(|s| serde_json::Value::String(s).to_string()),
                Just("null".to_string()),
                Just("{}".to_string()),
                Just("[]".to_string()),
            ];
            let key = prop_oneof![
                Just("access_token"),
                Just("expires_in"),
                Just("errcode"),
                Just("errmsg"),
                Just("ticket"),
                Just("x"),
            ];
            proptest::collection::vec((key, value), 0..6).prop_map(|pairs| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::test_cases(2000)))]

            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse_any(&body);
            }

            #[test]
            fn accepted_answers_respect_wechats_rules(body in answer()) {
                if let Ok(credential) = parse_any(body.as_bytes()) {
                    let value = credential.value.expose_secret();
                    prop_assert!(!value.is_empty() && value.len() <= MAX_TOKEN_LEN);
                    prop_assert!(value.bytes().all(|b| b.is_ascii_graphic()));
                    prop_assert!(credential.expires_in >= Duration::from_secs(1));
                    prop_assert!(credential.expires_in <= MAX_EXPIRES_IN);
                }
            }

            #[test]
            fn errors_never_echo_the_secret(msg in "[ -~]{0,100}") {
                let body = serde_json::json!({"errcode": 40001, "errmsg": format!("{msg}s3cret{msg}")});
                let err = parse_any(body.to_string().as_bytes()).expect_err("errcode");
                prop_assert!(!err.to_string().contains("s3cret"));
            }
        }
    }
}
