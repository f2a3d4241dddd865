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

/// Every credential answer: `{access_token|ticket|…, expires_in}` or
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
        &[&SecretString::from("fuzz-secret".to_owned())],
        DEFAULT_MIN_EXPIRES_IN,
    )
}

/// Parses a credential answer. `secrets` (every secret the call was made
/// with: the AppSecret, or the access token a ticket was fetched with) are
/// scrubbed from WeChat's `errmsg`; an `expires_in` below `min_expires_in`
/// (`wechat.min_expires_in`) is refused.
pub(super) fn parse_credential(
    body: &[u8],
    kind: CredentialKind,
    call: Call,
    secrets: &[&SecretString],
    min_expires_in: Duration,
) -> Result<FetchedCredential, FetchError> {
    parse_repeatable(body, kind, call, secrets, min_expires_in, None)
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
    secrets: &[&SecretString],
    min_expires_in: Duration,
    held: Option<&SecretString>,
) -> Result<FetchedCredential, FetchError> {
    let parsed: CredentialResponse = read_json(body)?;
    refused(parsed.errcode, parsed.errmsg, secrets, call)?;
    let value = match kind {
        CredentialKind::AccessToken => parsed.access_token,
        CredentialKind::ComponentAccessToken => parsed.component_access_token,
        CredentialKind::AuthorizerAccessToken => parsed.authorizer_access_token,
        _ => parsed.ticket,
    };
    let field = kind.value_field();
    credential(field, value, parsed.expires_in, min_expires_in, held)
}

/// `body` as the JSON object `T`, or a transient [`FetchError::InvalidResponse`].
pub(super) fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body)
        .map_err(|e| FetchError::InvalidResponse(format!("not the expected JSON object ({e})")))
}

/// A credential named `field` in WeChat's answer, checked as
/// [`parse_repeatable`] says.
pub(super) fn credential(
    field: &str,
    value: Option<String>,
    expires_in: Option<i64>,
    min_expires_in: Duration,
    held: Option<&SecretString>,
) -> Result<FetchedCredential, FetchError> {
    let value = value.ok_or_else(|| FetchError::InvalidResponse(format!("{field} is missing")))?;
    let expires_in =
        expires_in.ok_or_else(|| FetchError::InvalidResponse("expires_in is missing".into()))?;
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

/// `Err` when WeChat answered a non-zero `errcode` (see [`api_error`]).
pub(super) fn refused(
    errcode: Option<i64>,
    errmsg: Option<String>,
    secrets: &[&SecretString],
    call: Call,
) -> Result<(), FetchError> {
    match errcode.filter(|code| *code != 0) {
        Some(errcode) => Err(api_error(errcode, errmsg, secrets, call)),
        None => Ok(()),
    }
}

/// WeChat's refusal as an error: classified by `call`, with every one of
/// `secrets` (what the call was made with: AppSecret, token, verify
/// ticket, refresh token, authorization code) scrubbed from its `errmsg`.
pub(super) fn api_error(
    errcode: i64,
    errmsg: Option<String>,
    secrets: &[&SecretString],
    call: Call,
) -> FetchError {
    let errmsg = scrub(errmsg.unwrap_or_default(), secrets);
    FetchError::Api {
        errcode,
        errmsg: errmsg.chars().take(MAX_ERRMSG_LEN).collect(),
        meaning: errcode::meaning(errcode, call),
        class: errcode::classify(errcode, call),
        effect: errcode::effect(errcode, call),
        retry_after: errcode::retry_after(errcode, call),
    }
}

/// `text` with each secret, as sent and percent-encoded (as it would be
/// in a URL WeChat might echo), replaced by `****`; longest first, so that
/// a secret holding another is not left half shown.
fn scrub(mut text: String, secrets: &[&SecretString]) -> String {
    let mut forms: Vec<String> = secrets
        .iter()
        .map(|s| s.expose_secret())
        .filter(|s| !s.is_empty())
        .flat_map(|s| [s.to_owned(), percent_encoded(s)])
        .collect();
    forms.sort_unstable_by_key(|form| std::cmp::Reverse(form.len()));
    for form in &forms {
        text = text.replace(form.as_str(), "****");
    }
    text
}

/// `s` with every byte but `A-Za-z0-9-._~` written `%XX`.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// WeChat's plain `{errcode, errmsg}` answer to a call that issues
/// nothing: `Ok` for errcode 0.
pub(super) fn parse_ack(
    body: &[u8],
    secrets: &[&SecretString],
    call: Call,
) -> Result<(), FetchError> {
    #[derive(Deserialize)]
    struct Ack {
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    let ack: Ack = read_json(body)?;
    match ack.errcode {
        Some(0) => Ok(()),
        Some(errcode) => Err(api_error(errcode, ack.errmsg, secrets, call)),
        None => Err(FetchError::InvalidResponse("errcode is missing".into())),
    }
}

pub(super) fn check_value(field: &str, value: String) -> Result<SecretString, FetchError> {
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
