//! WeChat's answers to credential calls: parsed, checked against WeChat's
//! documented limits, and turned into errors that never hold a secret.

use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use wxtokend_reader::CredentialKind;

use super::errcode::{self, Call, ErrorClass};

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
        expires_in: check_expires_in(expires_in, min_expires_in)?,
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
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<(SecretString, Duration), FetchError> {
        parse_credential(
            body.as_bytes(),
            CredentialKind::AccessToken,
            Call::IssueToken,
            &SecretString::from("the-secret"),
            Duration::from_secs(1),
        )
        .map(|c| (c.value, c.expires_in))
    }

    #[test]
    fn expires_in_below_the_configured_floor_is_a_transient_invalid_response() {
        let parse_with = |body: &str, min: Duration, kind, call| {
            parse_credential(
                body.as_bytes(),
                kind,
                call,
                &SecretString::from("the-secret"),
                min,
            )
        };
        let floor = Duration::from_secs(60);
        for (kind, call, field) in [
            (
                CredentialKind::AccessToken,
                Call::IssueToken,
                "access_token",
            ),
            (CredentialKind::JsapiTicket, Call::UseToken, "ticket"),
        ] {
            for seconds in [1, 2, 59] {
                let body = format!(r#"{{"{field}":"T","expires_in":{seconds}}}"#);
                let err = parse_with(&body, floor, kind, call).expect_err(&body);
                assert!(
                    matches!(err, FetchError::InvalidResponse(_)),
                    "{body}: {err}"
                );
                assert_eq!(err.class(), ErrorClass::Transient);
                assert_eq!(
                    err.to_string(),
                    format!(
                        "WeChat's answer is not valid: expires_in {seconds} is below \
                         wechat.min_expires_in (1m); such a credential would be refreshed \
                         every few seconds"
                    )
                );
                // A lower floor accepts it.
                let ok = parse_with(&body, Duration::from_secs(1), kind, call).expect(&body);
                assert_eq!(ok.expires_in, Duration::from_secs(seconds));
            }
            for seconds in [60, 7200] {
                let body = format!(r#"{{"{field}":"T","expires_in":{seconds}}}"#);
                let ok = parse_with(&body, floor, kind, call).expect(&body);
                assert_eq!(ok.expires_in, Duration::from_secs(seconds));
            }
        }
        // The fuzz entry point checks the default floor.
        assert_eq!(DEFAULT_MIN_EXPIRES_IN, floor);
        assert!(parse_token_answer(br#"{"access_token":"T","expires_in":59}"#).is_err());
        assert!(parse_token_answer(br#"{"access_token":"T","expires_in":60}"#).is_ok());
    }

    #[test]
    fn ticket_answer_parses_and_a_stale_token_is_invalid_token() {
        let secret = SecretString::from("ACCESS");
        let ok = parse_credential(
            br#"{"errcode":0,"errmsg":"ok","ticket":"TICKET","expires_in":7200}"#,
            CredentialKind::JsapiTicket,
            Call::UseToken,
            &secret,
            DEFAULT_MIN_EXPIRES_IN,
        )
        .expect("ticket");
        assert_eq!(ok.value.expose_secret(), "TICKET");
        let stale = parse_credential(
            br#"{"errcode":40001,"errmsg":"invalid credential ACCESS"}"#,
            CredentialKind::JsapiTicket,
            Call::UseToken,
            &secret,
            DEFAULT_MIN_EXPIRES_IN,
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

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn parse_any(body: &[u8]) -> Result<FetchedCredential, FetchError> {
            parse_credential(
                body,
                CredentialKind::AccessToken,
                Call::IssueToken,
                &SecretString::from("s3cret"),
                DEFAULT_MIN_EXPIRES_IN,
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
                    prop_assert!(credential.expires_in >= DEFAULT_MIN_EXPIRES_IN);
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
