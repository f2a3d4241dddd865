//! WeChat's answers to credential calls: parsed, checked against WeChat's
//! documented limits, and turned into errors that never hold a secret.

use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use wxtokend_reader::CredentialKind;

use super::errcode::{self, Call, Effect, ErrorClass};

/// WeChat documents that tokens may be up to 512 characters; anything longer
/// is not a token.
pub const MAX_TOKEN_LEN: usize = 512;

/// WeChat's credentials live 7200 s. A lifetime beyond one day is not
/// plausible and would stop refreshing for that long, so it is rejected.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(86_400);

/// `wechat.min_expires_in` when not configured (`config/default.toml`), and
/// the floor [`parse_token_answer`] checks: an answer living less than this
/// would make the daemon refresh every few seconds and spend the day's quota.
pub const DEFAULT_MIN_EXPIRES_IN: Duration = Duration::from_secs(60);

/// Longest part of WeChat's `errmsg` kept in errors and logs.
const MAX_ERRMSG_LEN: usize = 200;

/// A credential as WeChat returned it, before it is stored. `Debug` never
/// shows the value.
#[derive(Clone)]
pub struct FetchedCredential {
    pub value: SecretString,
    /// Lifetime as WeChat returned it.
    pub expires_in: Duration,
    /// When the fetch completed.
    pub fetched_at: SystemTime,
}

impl FetchedCredential {
    pub fn expires_at(&self) -> SystemTime {
        self.fetched_at + self.expires_in
    }
}

impl fmt::Debug for FetchedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedCredential")
            .field("value", &"****")
            .field("expires_in", &self.expires_in)
            .field("fetched_at", &self.fetched_at)
            .finish()
    }
}

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
        /// What the errcode asks of the daemon besides its class.
        effect: Option<Effect>,
        /// When WeChat lifts the refusal, where it says.
        retry_after: Option<Duration>,
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

    /// When to try again, where WeChat says (the IP confirmation codes);
    /// `None`: as [`FetchError::class`] says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What the errcode asks besides its class (a verify ticket refused).
    pub fn effect(&self) -> Option<Effect> {
        match self {
            Self::Api { effect, .. } => *effect,
            _ => None,
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

/// Every credential answer: `{access_token|ticket, expires_in}` or
/// `{errcode, errmsg}` (WeCom and tickets send both, errcode 0 on success).
#[derive(Deserialize)]
struct CredentialResponse {
    access_token: Option<String>,
    component_access_token: Option<String>,
    authorizer_access_token: Option<String>,
    ticket: Option<String>,
    expires_in: Option<i64>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// Parses `body` as WeChat's answer to a token call, as the daemon does
/// with the default `wechat.min_expires_in` ([`DEFAULT_MIN_EXPIRES_IN`]).
/// Public for the fuzzer (`fuzz/`); not part of the supported API.
#[doc(hidden)]
pub fn parse_token_answer(body: &[u8]) -> Result<FetchedCredential, FetchError> {
    parse_credential(
        body,
        CredentialKind::AccessToken,
        Call::IssueToken,
        &SecretString::from("fuzz-secret".to_owned()),
        DEFAULT_MIN_EXPIRES_IN,
    )
}

/// Parses a credential answer. `secret` (the AppSecret, or the access token
/// a ticket was fetched with) is scrubbed from WeChat's `errmsg`; an
/// `expires_in` below `min_expires_in` (`wechat.min_expires_in`) is refused.
pub(super) fn parse_credential(
    body: &[u8],
    kind: CredentialKind,
    call: Call,
    secret: &SecretString,
    min_expires_in: Duration,
) -> Result<FetchedCredential, FetchError> {
    parse_repeatable(body, kind, call, secret, min_expires_in, None)
}

/// As [`parse_credential`], except that an answer repeating `held` (the
/// value the refresher relies on) is accepted whatever its `expires_in`
/// (clamped to WeChat's range): WeChat may count a repeated value down to
/// zero, and a repeat never sets an expiry anyway (the stored one stands).
/// The bounds and the floor are there to refuse *new* values that would be
/// refreshed in a loop.
pub(super) fn parse_repeatable(
    body: &[u8],
    kind: CredentialKind,
    call: Call,
    secret: &SecretString,
    min_expires_in: Duration,
    held: Option<&SecretString>,
) -> Result<FetchedCredential, FetchError> {
    let parsed: CredentialResponse = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    if let Some(errcode) = parsed.errcode.filter(|code| *code != 0) {
        return Err(api_error(errcode, parsed.errmsg, secret, call));
    }
    let field = kind.value_field();
    let value = match kind {
        CredentialKind::AccessToken => parsed.access_token,
        CredentialKind::ComponentAccessToken => parsed.component_access_token,
        CredentialKind::AuthorizerAccessToken => parsed.authorizer_access_token,
        _ => parsed.ticket,
    }
    .ok_or_else(|| FetchError::InvalidResponse(format!("{field} is missing")))?;
    let expires_in = parsed
        .expires_in
        .ok_or_else(|| FetchError::InvalidResponse("expires_in is missing".into()))?;
    let value = check_value(field, value)?;
    let repeat = held.is_some_and(|held| held.expose_secret() == value.expose_secret());
    let expires_in = if repeat {
        let seconds = expires_in.clamp(0, MAX_EXPIRES_IN.as_secs() as i64);
        Duration::from_secs(seconds.unsigned_abs())
    } else {
        check_expires_in(expires_in, min_expires_in)?
    };
    Ok(FetchedCredential {
        value,
        expires_in,
        fetched_at: SystemTime::now(),
    })
}

/// WeChat's refusal as an error: classified by `call`, with `secret` (the
/// AppSecret or token the call was made with) scrubbed from its `errmsg`.
pub(super) fn api_error(
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
        effect: errcode::effect(errcode, call),
        retry_after: errcode::retry_after(errcode, call),
    }
}

/// The `authorizer_refresh_token` of an answer that parsed (absent:
/// `None`), checked like a token.
pub(super) fn refresh_token_in(body: &[u8]) -> Result<Option<SecretString>, FetchError> {
    #[derive(Deserialize)]
    struct WithRefreshToken {
        authorizer_refresh_token: Option<String>,
    }
    let parsed: WithRefreshToken = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    parsed
        .authorizer_refresh_token
        .map(|rt| check_value("authorizer_refresh_token", rt))
        .transpose()
}

/// What `api_query_auth` answered: the authorizer, and its first token
/// and refresh token (both absent when the account granted the platform
/// no API: WeChat's docs).
#[derive(Debug)]
pub struct QueryAuth {
    pub authorizer_appid: String,
    pub token: Option<FetchedCredential>,
    pub refresh_token: Option<SecretString>,
}

/// Parses `api_query_auth`'s answer (`{authorization_info: {…}}`);
/// `secrets` are scrubbed from an error's `errmsg`.
pub(super) fn parse_query_auth(
    body: &[u8],
    secrets: &[&SecretString],
    min_expires_in: Duration,
) -> Result<QueryAuth, FetchError> {
    #[derive(Deserialize)]
    struct Answer {
        authorization_info: Option<serde_json::Value>,
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    let parsed: Answer = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    if let Some(errcode) = parsed.errcode.filter(|code| *code != 0) {
        let error = api_error(errcode, parsed.errmsg, secrets[0], Call::ComponentUse);
        return Err(secrets[1..].iter().fold(error, |e, s| scrubbed(e, s)));
    }
    let info = parsed
        .authorization_info
        .ok_or_else(|| FetchError::InvalidResponse("authorization_info is missing".into()))?;
    let authorizer_appid = info
        .get("authorizer_appid")
        .and_then(serde_json::Value::as_str)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .ok_or_else(|| FetchError::InvalidResponse("authorizer_appid is missing".into()))?
        .to_owned();
    let inner = info.to_string();
    let token = if info.get("authorizer_access_token").is_some() {
        let call = Call::ComponentUse;
        let kind = CredentialKind::AuthorizerAccessToken;
        Some(parse_repeatable(
            inner.as_bytes(),
            kind,
            call,
            secrets[0],
            min_expires_in,
            None,
        )?)
    } else {
        None
    };
    Ok(QueryAuth {
        authorizer_appid,
        token,
        refresh_token: refresh_token_in(inner.as_bytes())?,
    })
}

/// `error` with `secret` too scrubbed from WeChat's `errmsg` (for a call
/// made with more than one secret).
pub(super) fn scrubbed(error: FetchError, secret: &SecretString) -> FetchError {
    match error {
        FetchError::Api {
            errcode,
            errmsg,
            meaning,
            class,
            effect,
            retry_after,
        } => {
            let secret = secret.expose_secret();
            let errmsg = if secret.is_empty() {
                errmsg
            } else {
                errmsg.replace(secret, "****")
            };
            FetchError::Api {
                errcode,
                errmsg,
                meaning,
                class,
                effect,
                retry_after,
            }
        }
        other => other,
    }
}

/// WeChat's plain `{errcode, errmsg}` answer to a call that issues
/// nothing: `Ok` for errcode 0.
pub(super) fn parse_ack(body: &[u8], secret: &SecretString, call: Call) -> Result<(), FetchError> {
    #[derive(Deserialize)]
    struct Ack {
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    let ack: Ack = serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))?;
    match ack.errcode {
        Some(0) => Ok(()),
        Some(errcode) => Err(api_error(errcode, ack.errmsg, secret, call)),
        None => Err(FetchError::InvalidResponse("errcode is missing".into())),
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

/// WeChat's bounds first (1 s to a day), then the configured floor.
fn check_expires_in(seconds: i64, min: Duration) -> Result<Duration, FetchError> {
    let max = MAX_EXPIRES_IN.as_secs();
    let expires_in = match u64::try_from(seconds) {
        Ok(s) if (1..=max).contains(&s) => Duration::from_secs(s),
        _ => {
            return Err(FetchError::InvalidResponse(format!(
                "expires_in {seconds} is outside 1..={max} seconds"
            )))
        }
    };
    if expires_in < min {
        return Err(FetchError::InvalidResponse(format!(
            "expires_in {seconds} is below wechat.min_expires_in ({}); such a credential would \
             be refreshed every few seconds",
            humantime::format_duration(min)
        )));
    }
    Ok(expires_in)
}

#[cfg(test)]
mod tests;
