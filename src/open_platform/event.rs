//! What WeChat pushes to the platform's callback URL (授权事件接收URL): the
//! `component_verify_ticket` every 10 minutes and the authorization events,
//! each an encrypted XML message ([`super::crypto`]).
//!
//! [`verify`] is the whole check of one push, without I/O: the query
//! string, the timestamp's freshness, the envelope, the signature, the
//! decryption, both appids, and the event inside.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use serde::Deserialize;

use super::crypto::{CryptoError, MessageCrypto};

/// How long an authorization code lives when the event does not say
/// (WeChat's redirect gives `expires_in=3600`).
pub const AUTHORIZATION_CODE_LIFETIME: Duration = Duration::from_secs(3600);

/// One push, decrypted and checked. Tickets and codes are secrets: `Debug`
/// hides them.
#[derive(Debug)]
pub enum Event {
    /// `component_verify_ticket`: the ticket the platform's token is minted
    /// with (valid 12 h).
    VerifyTicket {
        create_time: SystemTime,
        ticket: SecretString,
    },
    /// `authorized` (`update: false`) or `updateauthorized` (`update:
    /// true`): an account authorized the platform, or changed what it
    /// allows; `authorization_code` is exchanged with `api_query_auth`.
    Authorized {
        authorizer_appid: String,
        authorization_code: SecretString,
        code_expires_at: SystemTime,
        create_time: SystemTime,
        update: bool,
    },
    /// `unauthorized`: the account withdrew the authorization; its refresh
    /// token is dead.
    Unauthorized {
        authorizer_appid: String,
        create_time: SystemTime,
    },
    /// Any other `InfoType`: acknowledged, not acted on.
    Other { info_type: String },
}

/// The query string of a push: `?signature=…&timestamp=…&nonce=…&
/// encrypt_type=aes&msg_signature=…`. The plain `signature` (without
/// `Encrypt`) is not read: `msg_signature` covers more.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackQuery {
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
}

/// Why a push was refused. No variant holds the token, a key, a ticket or
/// any part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("the message is not encrypted (encrypt_type is not aes)")]
    NotEncrypted,
    #[error("the query string has no {0}")]
    MissingParameter(&'static str),
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {age:?} away from now, more than {max_age:?}")]
    Stale { age: Duration, max_age: Duration },
    #[error("the body is not XML with one Encrypt element")]
    BadEnvelope,
    #[error("msg_signature does not match")]
    BadSignature,
    #[error("the message cannot be decrypted: {0}")]
    Undecryptable(CryptoError),
    #[error("the message is addressed to another appid")]
    OtherAppId,
    #[error("the decrypted message is not an event WeChat documents")]
    BadEvent,
    #[error("the event's AppId is not the platform's")]
    OtherInnerAppId,
}

impl Reject {
    /// A short name for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotEncrypted => "not_encrypted",
            Self::MissingParameter(_) | Self::BadTimestamp => "bad_query",
            Self::Stale { .. } => "stale",
            Self::BadEnvelope => "bad_envelope",
            Self::BadSignature => "bad_signature",
            Self::Undecryptable(_) => "undecryptable",
            Self::OtherAppId | Self::OtherInnerAppId => "other_appid",
            Self::BadEvent => "bad_event",
        }
    }
}

/// Checks one push and reads the event in it: `encrypt_type` is `aes`, the
/// timestamp is within `max_age` of `now` (either side), the body holds
/// exactly one `Encrypt`, `msg_signature` matches, the message decrypts
/// (current key, then the previous one) and is addressed to the platform,
/// and the event inside names the platform's `AppId`.
///
/// A signature stays valid forever; only the freshness check keeps an old
/// push from being replayed.
pub fn verify(
    crypto: &MessageCrypto,
    query: &CallbackQuery,
    body: &[u8],
    now: SystemTime,
    max_age: Duration,
) -> Result<Event, Reject> {
    if query.encrypt_type.as_deref() != Some("aes") {
        return Err(Reject::NotEncrypted);
    }
    let timestamp = parameter(&query.timestamp, "timestamp")?;
    let nonce = parameter(&query.nonce, "nonce")?;
    let msg_signature = parameter(&query.msg_signature, "msg_signature")?;
    check_fresh(timestamp, now, max_age)?;
    let encrypt = envelope(body)?;
    if !crypto.signature_matches(msg_signature, timestamp, nonce, &encrypt) {
        return Err(Reject::BadSignature);
    }
    let msg = crypto.decrypt(&encrypt).map_err(|e| match e {
        CryptoError::OtherAppId => Reject::OtherAppId,
        e => Reject::Undecryptable(e),
    })?;
    parse(&msg, crypto.appid())
}

fn parameter<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, Reject> {
    value.as_deref().ok_or(Reject::MissingParameter(name))
}

/// Refuses a timestamp more than `max_age` before or after `now`.
fn check_fresh(timestamp: &str, now: SystemTime, max_age: Duration) -> Result<(), Reject> {
    let sent = unix_seconds(timestamp).ok_or(Reject::BadTimestamp)?;
    let age = match now.duration_since(sent) {
        Ok(age) => age,
        Err(ahead) => ahead.duration(),
    };
    if age > max_age {
        return Err(Reject::Stale { age, max_age });
    }
    Ok(())
}

/// `secs` as a time, if it is a number of seconds a `SystemTime` can hold.
fn unix_seconds(secs: &str) -> Option<SystemTime> {
    let secs: u64 = secs.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The body of a push: `<xml><AppId|ToUserName/><Encrypt/></xml>`. Only
/// `Encrypt` is read.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Encrypt")]
    encrypt: String,
}

pub(crate) fn envelope(body: &[u8]) -> Result<String, Reject> {
    let body = std::str::from_utf8(body).map_err(|_| Reject::BadEnvelope)?;
    let envelope: Envelope = quick_xml::de::from_str(body).map_err(|_| Reject::BadEnvelope)?;
    Ok(envelope.encrypt)
}

/// The decrypted message, with WeChat's element names. Numbers are read as
/// text, so that a malformed one is this module's decision.
#[derive(Deserialize)]
struct Message {
    #[serde(rename = "AppId")]
    app_id: String,
    #[serde(rename = "CreateTime")]
    create_time: String,
    #[serde(rename = "InfoType")]
    info_type: String,
    #[serde(rename = "ComponentVerifyTicket")]
    ticket: Option<String>,
    #[serde(rename = "AuthorizerAppid")]
    authorizer_appid: Option<String>,
    #[serde(rename = "AuthorizationCode")]
    authorization_code: Option<String>,
    #[serde(rename = "AuthorizationCodeExpiredTime")]
    code_expired_time: Option<String>,
}

/// Reads a decrypted message to `appid` as an [`Event`].
fn parse(msg: &[u8], appid: &str) -> Result<Event, Reject> {
    let msg = std::str::from_utf8(msg).map_err(|_| Reject::BadEvent)?;
    let msg: Message = quick_xml::de::from_str(msg).map_err(|_| Reject::BadEvent)?;
    if msg.app_id != appid {
        return Err(Reject::OtherInnerAppId);
    }
    let create_time = unix_seconds(&msg.create_time).ok_or(Reject::BadEvent)?;
    let event = match msg.info_type.as_str() {
        "component_verify_ticket" => Event::VerifyTicket {
            create_time,
            ticket: secret(msg.ticket)?,
        },
        info_type @ ("authorized" | "updateauthorized") => Event::Authorized {
            authorizer_appid: required(msg.authorizer_appid)?,
            authorization_code: secret(msg.authorization_code)?,
            code_expires_at: code_expires_at(msg.code_expired_time.as_deref(), create_time)?,
            create_time,
            update: info_type == "updateauthorized",
        },
        "unauthorized" => Event::Unauthorized {
            authorizer_appid: required(msg.authorizer_appid)?,
            create_time,
        },
        _ => Event::Other {
            info_type: msg.info_type,
        },
    };
    Ok(event)
}

fn required(value: Option<String>) -> Result<String, Reject> {
    value.filter(|v| !v.is_empty()).ok_or(Reject::BadEvent)
}

fn secret(value: Option<String>) -> Result<SecretString, Reject> {
    required(value).map(SecretString::from)
}

/// `AuthorizationCodeExpiredTime` is a Unix time (captured values are about
/// `CreateTime + 3600`); where it is missing, malformed or not after
/// `CreateTime`, the code is taken to live [`AUTHORIZATION_CODE_LIFETIME`].
fn code_expires_at(value: Option<&str>, create_time: SystemTime) -> Result<SystemTime, Reject> {
    let stated = value.and_then(unix_seconds).filter(|at| *at > create_time);
    match stated {
        Some(at) => Ok(at),
        None => create_time
            .checked_add(AUTHORIZATION_CODE_LIFETIME)
            .ok_or(Reject::BadEvent),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::crypto::tests::{A, E};
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(300);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Vector E's push as WeChat sends it.
    fn e_query() -> CallbackQuery {
        CallbackQuery {
            timestamp: Some(E.timestamp.to_owned()),
            nonce: Some(E.nonce.to_owned()),
            encrypt_type: Some("aes".to_owned()),
            msg_signature: Some(E.msg_signature.to_owned()),
        }
    }

    fn e_body() -> String {
        format!(
            "<xml><AppId><![CDATA[wx2c2769f8efd9abc2]]></AppId><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            E.encrypt
        )
    }

    /// A's platform: the crypto every push below is for.
    fn crypto() -> MessageCrypto {
        A.crypto()
    }

    /// `msg` pushed at `timestamp` by `sender`: query and body.
    fn push_from(sender: &MessageCrypto, msg: &str, timestamp: u64) -> (CallbackQuery, String) {
        let encrypt = sender
            .encrypt_with(*b"0123456789abcdef", msg.as_bytes())
            .expect("encrypts");
        let timestamp = timestamp.to_string();
        let query = CallbackQuery {
            msg_signature: Some(sender.signature(&timestamp, "42", &encrypt)),
            timestamp: Some(timestamp),
            nonce: Some("42".to_owned()),
            encrypt_type: Some("aes".to_owned()),
        };
        let body = format!("<xml>\n    <AppId><![CDATA[{}]]></AppId>\n    <Encrypt><![CDATA[{encrypt}]]></Encrypt>\n</xml>", sender.appid());
        (query, body)
    }

    /// `msg` pushed now (at 1_700_000_000) to A's platform, and verified.
    fn receive(msg: &str) -> Result<Event, Reject> {
        let (query, body) = push_from(&crypto(), msg, 1_700_000_000);
        verify(
            &crypto(),
            &query,
            body.as_bytes(),
            at(1_700_000_000),
            MAX_AGE,
        )
    }

    /// An event to A's platform from these inner elements.
    fn event(info_type: &str, rest: &str) -> String {
        format!(
            "<xml><AppId><![CDATA[{}]]></AppId><CreateTime>1700000000</CreateTime>\
             <InfoType><![CDATA[{info_type}]]></InfoType>{rest}</xml>",
            A.appid
        )
    }

    #[test]
    fn reads_vector_e_end_to_end() {
        let now = at(1413192605 + 10);
        let event = verify(&crypto(), &e_query(), e_body().as_bytes(), now, MAX_AGE);
        let Ok(Event::VerifyTicket {
            create_time,
            ticket,
        }) = event
        else {
            panic!("{event:?}");
        };
        assert_eq!(create_time, at(1413192605));
        assert_eq!(ticket.expose_secret(), "ticket@@@fake-ticket-0001");
    }

    #[test]
    fn reads_the_documented_ticket_push_without_cdata() {
        let msg = format!(
            "<xml><AppId>{}</AppId><CreateTime>1413192605</CreateTime>\
             <InfoType>component_verify_ticket</InfoType>\
             <ComponentVerifyTicket>some_verify_ticket</ComponentVerifyTicket></xml>",
            A.appid
        );
        let Ok(Event::VerifyTicket {
            ticket,
            create_time,
        }) = receive(&msg)
        else {
            panic!("{:?}", receive(&msg));
        };
        assert_eq!(ticket.expose_secret(), "some_verify_ticket");
        assert_eq!(create_time, at(1413192605));
    }

    #[test]
    fn reads_authorization_events() {
        let rest = "<AuthorizerAppid><![CDATA[wxaaaa]]></AuthorizerAppid>\
                    <AuthorizationCode><![CDATA[queryauthcode@@@abc]]></AuthorizationCode>\
                    <AuthorizationCodeExpiredTime>1700003000</AuthorizationCodeExpiredTime>\
                    <PreAuthCode><![CDATA[preauthcode@@@xyz]]></PreAuthCode>";
        for (info_type, expected_update) in [("authorized", false), ("updateauthorized", true)] {
            let event = receive(&event(info_type, rest));
            let Ok(Event::Authorized {
                authorizer_appid,
                authorization_code,
                code_expires_at,
                create_time,
                update,
            }) = event
            else {
                panic!("{event:?}");
            };
            assert_eq!(authorizer_appid, "wxaaaa");
            assert_eq!(authorization_code.expose_secret(), "queryauthcode@@@abc");
            assert_eq!(code_expires_at, at(1_700_003_000));
            assert_eq!(create_time, at(1_700_000_000));
            assert_eq!(update, expected_update);
        }

        let event = receive(&event(
            "unauthorized",
            "<AuthorizerAppid>wxaaaa</AuthorizerAppid>",
        ));
        let Ok(Event::Unauthorized {
            authorizer_appid,
            create_time,
        }) = event
        else {
            panic!("{event:?}");
        };
        assert_eq!(authorizer_appid, "wxaaaa");
        assert_eq!(create_time, at(1_700_000_000));
    }

    #[test]
    fn a_code_without_a_usable_expiry_lives_an_hour() {
        for expiry in [
            "",
            "<AuthorizationCodeExpiredTime>soon</AuthorizationCodeExpiredTime>",
            "<AuthorizationCodeExpiredTime>3600</AuthorizationCodeExpiredTime>",
            "<AuthorizationCodeExpiredTime>1700000000</AuthorizationCodeExpiredTime>",
        ] {
            let rest = format!(
                "<AuthorizerAppid>wxaaaa</AuthorizerAppid>\
                 <AuthorizationCode>code</AuthorizationCode>{expiry}"
            );
            let event = receive(&event("authorized", &rest));
            let Ok(Event::Authorized {
                code_expires_at, ..
            }) = event
            else {
                panic!("{event:?}");
            };
            assert_eq!(code_expires_at, at(1_700_003_600), "{expiry}");
        }
    }

    #[test]
    fn other_info_types_are_reported_as_such() {
        let event = receive(&event("notify_third_fasteregister", "<Status>0</Status>"));
        let Ok(Event::Other { info_type }) = event else {
            panic!("{event:?}");
        };
        assert_eq!(info_type, "notify_third_fasteregister");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let ticket = verify(
            &crypto(),
            &e_query(),
            e_body().as_bytes(),
            at(1413192605),
            MAX_AGE,
        );
        let debug = format!("{ticket:?}");
        assert!(!debug.contains("fake-ticket"), "{debug}");
        let code = receive(&event(
            "authorized",
            "<AuthorizerAppid>wxaaaa</AuthorizerAppid><AuthorizationCode>queryauthcode@@@abc</AuthorizationCode>",
        ));
        let debug = format!("{code:?}");
        assert!(
            debug.contains("wxaaaa") && !debug.contains("queryauthcode"),
            "{debug}"
        );
    }

    #[test]
    fn the_previous_key_still_reads_pushes() {
        let new_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
        let during_change = MessageCrypto::new(A.token, new_key, Some(A.encoding_aes_key), A.appid)
            .expect("valid settings");
        let now = at(1413192605);
        let event = verify(
            &during_change,
            &e_query(),
            e_body().as_bytes(),
            now,
            MAX_AGE,
        );
        assert!(matches!(event, Ok(Event::VerifyTicket { .. })), "{event:?}");
        let after_change =
            MessageCrypto::new(A.token, new_key, None, A.appid).expect("valid settings");
        let event = verify(&after_change, &e_query(), e_body().as_bytes(), now, MAX_AGE);
        assert!(matches!(event, Err(Reject::Undecryptable(_))), "{event:?}");
    }

    #[test]
    fn unencrypted_pushes_are_refused() {
        for encrypt_type in [None, Some("raw"), Some("AES"), Some("")] {
            let query = CallbackQuery {
                encrypt_type: encrypt_type.map(str::to_owned),
                ..e_query()
            };
            let now = at(1413192605);
            assert_eq!(
                verify(&crypto(), &query, e_body().as_bytes(), now, MAX_AGE).map(|_| ()),
                Err(Reject::NotEncrypted),
                "{encrypt_type:?}"
            );
        }
    }

    #[test]
    fn each_query_parameter_is_required() {
        let now = at(1413192605);
        let body = e_body();
        let without = |name| {
            let mut query = e_query();
            match name {
                "timestamp" => query.timestamp = None,
                "nonce" => query.nonce = None,
                _ => query.msg_signature = None,
            }
            query
        };
        for name in ["timestamp", "nonce", "msg_signature"] {
            let query = without(name);
            assert_eq!(
                verify(&crypto(), &query, body.as_bytes(), now, MAX_AGE).map(|_| ()),
                Err(Reject::MissingParameter(name))
            );
        }
    }

    #[test]
    fn timestamps_must_be_seconds_within_max_age() {
        let body = e_body();
        let check = |timestamp: &str, now: SystemTime| {
            let query = CallbackQuery {
                timestamp: Some(timestamp.to_owned()),
                ..e_query()
            };
            verify(&crypto(), &query, body.as_bytes(), now, MAX_AGE).map(|_| ())
        };
        let sent = 1413192605;
        for bad in [
            "",
            "abc",
            "-1",
            "1413192605.0",
            "99999999999999999999",
            "18446744073709551615",
        ] {
            assert_eq!(check(bad, at(sent)), Err(Reject::BadTimestamp), "{bad}");
        }
        // Exactly max_age away either side is fresh (and here, signed).
        assert_eq!(check(E.timestamp, at(sent + 300)), Ok(()));
        assert_eq!(check(E.timestamp, at(sent - 300)), Ok(()));
        let late = at(sent + 301);
        assert_eq!(
            check(E.timestamp, late),
            Err(Reject::Stale {
                age: Duration::from_secs(301),
                max_age: MAX_AGE
            })
        );
        let early = at(sent - 301);
        assert!(matches!(
            check(E.timestamp, early),
            Err(Reject::Stale { .. })
        ));
    }

    #[test]
    fn bodies_without_exactly_one_encrypt_are_refused() {
        let now = at(1413192605);
        let encrypt = E.encrypt;
        let bodies = [
            b"\xff\xfe<xml/>".to_vec(),
            b"not xml".to_vec(),
            b"".to_vec(),
            b"<xml><AppId>wx2c2769f8efd9abc2</AppId></xml>".to_vec(),
            format!("<xml><Encrypt>{encrypt}</Encrypt><Encrypt>{encrypt}</Encrypt></xml>").into_bytes(),
            format!("<xml><Encrypt>{encrypt}</Encrypt><AppId>x</AppId><Encrypt>{encrypt}</Encrypt></xml>").into_bytes(),
            format!("<xml><Encrypt>{encrypt}</Encrypt>").into_bytes(),
            // An entity defined in a DOCTYPE is not expanded.
            format!(
                "<!DOCTYPE xml [<!ENTITY e \"{encrypt}\">]><xml><Encrypt>&e;</Encrypt></xml>"
            )
            .into_bytes(),
        ];
        for body in bodies {
            assert_eq!(
                verify(&crypto(), &e_query(), &body, now, MAX_AGE).map(|_| ()),
                Err(Reject::BadEnvelope),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn envelopes_may_differ_around_encrypt() {
        let now = at(1413192605);
        let encrypt = E.encrypt;
        for body in [
            format!("<xml><Encrypt>{encrypt}</Encrypt></xml>"),
            format!("<?xml version=\"1.0\"?>\n<xml>\n  <ToUserName><![CDATA[gh_x]]></ToUserName>\n  <Encrypt><![CDATA[{encrypt}]]></Encrypt>\n  <Extra><A>1</A></Extra>\n</xml>\n"),
        ] {
            let event = verify(&crypto(), &e_query(), body.as_bytes(), now, MAX_AGE);
            assert!(matches!(event, Ok(Event::VerifyTicket { .. })), "{body}: {event:?}");
        }
    }

    #[test]
    fn a_wrong_signature_is_refused() {
        let now = at(1413192605);
        let query = CallbackQuery {
            msg_signature: Some("84cb3ae7b212d7393425dcae41cfe63a0705d9d3".to_owned()),
            ..e_query()
        };
        assert_eq!(
            verify(&crypto(), &query, e_body().as_bytes(), now, MAX_AGE).map(|_| ()),
            Err(Reject::BadSignature)
        );
        // Signed by a sender with another token.
        let other_token =
            MessageCrypto::new("other", A.encoding_aes_key, None, A.appid).expect("valid settings");
        assert_eq!(
            verify(&other_token, &e_query(), e_body().as_bytes(), now, MAX_AGE).map(|_| ()),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn a_signed_message_that_does_not_decrypt_is_refused() {
        let crypto = crypto();
        let now = at(1413192605);
        let query = CallbackQuery {
            msg_signature: Some(crypto.signature(E.timestamp, E.nonce, "AAAA")),
            ..e_query()
        };
        assert_eq!(
            verify(
                &crypto,
                &query,
                b"<xml><Encrypt>AAAA</Encrypt></xml>",
                now,
                MAX_AGE
            )
            .map(|_| ()),
            Err(Reject::Undecryptable(CryptoError::CiphertextLength(3)))
        );
    }

    #[test]
    fn a_message_to_another_platform_is_refused() {
        let other = MessageCrypto::new(A.token, A.encoding_aes_key, None, "wx0000000000000000")
            .expect("valid settings");
        let now = at(1413192605);
        assert_eq!(
            verify(&other, &e_query(), e_body().as_bytes(), now, MAX_AGE).map(|_| ()),
            Err(Reject::OtherAppId)
        );
    }

    #[test]
    fn an_event_naming_another_platform_is_refused() {
        let msg = event(
            "component_verify_ticket",
            "<ComponentVerifyTicket>t</ComponentVerifyTicket>",
        )
        .replace(A.appid, "wx0000000000000000");
        assert_eq!(receive(&msg).map(|_| ()), Err(Reject::OtherInnerAppId));
    }

    #[test]
    fn malformed_events_are_refused() {
        let authorizer = "<AuthorizerAppid>wxaaaa</AuthorizerAppid>";
        let code = "<AuthorizationCode>c</AuthorizationCode>";
        let bad = [
            "not xml".to_owned(),
            "<xml><Content>hello</Content></xml>".to_owned(),
            event("component_verify_ticket", ""),
            event("component_verify_ticket", "<ComponentVerifyTicket></ComponentVerifyTicket>"),
            event(
                "component_verify_ticket",
                "<ComponentVerifyTicket>a</ComponentVerifyTicket><ComponentVerifyTicket>b</ComponentVerifyTicket>",
            ),
            event("authorized", authorizer),
            event("authorized", code),
            event("updateauthorized", code),
            event("unauthorized", ""),
            event("unauthorized", &format!("{authorizer}{authorizer}")),
            event("authorized", "<ComponentVerifyTicket>t</ComponentVerifyTicket>")
                .replace("1700000000", "soon"),
            event("unauthorized", authorizer).replace("<CreateTime>1700000000</CreateTime>", ""),
            event("unauthorized", authorizer).replace("<InfoType><![CDATA[unauthorized]]></InfoType>", ""),
        ];
        for msg in bad {
            assert_eq!(receive(&msg).map(|_| ()), Err(Reject::BadEvent), "{msg}");
        }
        // Not UTF-8.
        let crypto = crypto();
        let encrypt = crypto
            .encrypt_with([0; 16], b"<xml>\xff</xml>")
            .expect("encrypts");
        let query = CallbackQuery {
            msg_signature: Some(crypto.signature(E.timestamp, E.nonce, &encrypt)),
            ..e_query()
        };
        let body = format!("<xml><Encrypt>{encrypt}</Encrypt></xml>");
        assert_eq!(
            verify(&crypto, &query, body.as_bytes(), at(1413192605), MAX_AGE).map(|_| ()),
            Err(Reject::BadEvent)
        );
    }

    #[test]
    fn rejects_show_no_secrets() {
        let rejects = [
            Reject::NotEncrypted,
            Reject::MissingParameter("nonce"),
            Reject::BadTimestamp,
            Reject::Stale {
                age: Duration::from_secs(301),
                max_age: MAX_AGE,
            },
            Reject::BadEnvelope,
            Reject::BadSignature,
            Reject::Undecryptable(CryptoError::Padding),
            Reject::OtherAppId,
            Reject::BadEvent,
            Reject::OtherInnerAppId,
        ];
        for reject in rejects {
            let shown = format!("{reject} {reject:?} {}", reject.reason());
            for secret in [A.token, A.encoding_aes_key, "ticket@@@"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    /// Hostile pushes, in CI: the same checks as the coverage-guided target
    /// `fuzz/fuzz_targets/open_platform_callback.rs`, with inputs drawn
    /// around vector E (`PROPTEST_CASES` for a longer run).
    mod fuzz {
        use proptest::prelude::*;
        use sha1::{Digest, Sha1};

        use super::super::super::crypto::tests::{A, E};
        use super::super::*;
        use super::{crypto, e_body, e_query, MAX_AGE};
        use crate::fuzzing::{callback_encrypt, verify_callback, CALLBACK_TOKEN};

        /// `msg_signature` computed here, apart from `MessageCrypto`: the
        /// SHA-1 of the four values sorted byte-wise, in lower-case hex.
        fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
            let mut parts = [token, timestamp, nonce, encrypt];
            parts.sort_unstable();
            let digest = Sha1::digest(parts.concat().as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }

        /// Whether `query`'s `msg_signature` is `token`'s signature over its
        /// `timestamp` and `nonce` and the `Encrypt` the receiver reads
        /// from `body`.
        fn signed(token: &str, query: &CallbackQuery, body: &[u8]) -> bool {
            let (Some(timestamp), Some(nonce), Some(msg_signature), Some(encrypt)) = (
                &query.timestamp,
                &query.nonce,
                &query.msg_signature,
                callback_encrypt(body),
            ) else {
                return false;
            };
            *msg_signature == signature(token, timestamp, nonce, &encrypt)
        }

        /// What WeChat would send for E: the query string.
        fn e_query_string() -> String {
            format!(
                "signature=9c4a719ef184968d4d302c2cc69eebf02c07c403&timestamp={}&nonce={}\
                 &encrypt_type=aes&msg_signature={}",
                E.timestamp, E.nonce, E.msg_signature
            )
        }

        /// `base` with one to three edits, each a byte replaced, inserted
        /// or removed.
        fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
            let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
            proptest::collection::vec(edit, 1..=3).prop_map(move |edits| {
                let mut bytes = base.clone();
                for (at, byte, kind) in edits {
                    let at = at.index(bytes.len() + 1);
                    match kind {
                        0 if at < bytes.len() => bytes[at] = byte,
                        2 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, byte),
                    }
                }
                bytes
            })
        }

        /// A query value: E's (often enough that all four are, now and
        /// then), E's mutated, absent, or anything.
        fn value(e: &'static str) -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                4 => Just(Some(e.to_owned())),
                1 => mutated(e.as_bytes().to_vec())
                    .prop_map(|v| Some(String::from_utf8_lossy(&v).into_owned())),
                1 => Just(None),
                1 => any::<String>().prop_map(Some),
                1 => "[0-9]{0,25}".prop_map(Some),
            ]
        }

        /// A query string: E's, E's mutated, parameters in any order with
        /// E's or other values (a repeated one: the first counts), or
        /// anything.
        fn query_string() -> impl Strategy<Value = String> {
            let name = prop::sample::select(vec![
                "timestamp",
                "nonce",
                "encrypt_type",
                "msg_signature",
                "signature",
                "",
            ]);
            let value = prop_oneof![
                prop::sample::select(vec![E.timestamp, E.nonce, "aes", E.msg_signature])
                    .prop_map(str::to_owned),
                "[0-9a-f]{0,41}",
                "[^&]{0,12}",
            ];
            let params = proptest::collection::vec((name, value), 0..8).prop_map(|params| {
                let params: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v}")).collect();
                params.join("&")
            });
            prop_oneof![
                2 => Just(e_query_string()),
                3 => mutated(e_query_string().into_bytes())
                    .prop_map(|q| String::from_utf8_lossy(&q).into_owned()),
                2 => params,
                1 => any::<String>(),
            ]
        }

        /// A body: E's, E's mutated, E's `Encrypt` mutated in place,
        /// XML-ish text, or any bytes.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                2 => Just(e_body().into_bytes()),
                4 => mutated(e_body().into_bytes()),
                2 => mutated(E.encrypt.as_bytes().to_vec()).prop_map(|encrypt| {
                    let encrypt = String::from_utf8_lossy(&encrypt).into_owned();
                    e_body().replace(E.encrypt, &encrypt).into_bytes()
                }),
                1 => "(<[A-Za-z!?/]{0,3}[A-Za-z]{0,8}>|<!\\[CDATA\\[|\\]\\]>|&[a-z#0-9]{0,5};|[A-Za-z0-9+/=]{0,40}){0,12}"
                    .prop_map(String::into_bytes),
                1 => proptest::collection::vec(any::<u8>(), 0..2048),
            ]
        }

        /// The receiver's clock: at E's timestamp, near it, or anywhen.
        fn now() -> impl Strategy<Value = SystemTime> {
            let sent: u64 = E.timestamp.parse().expect("E's timestamp");
            prop_oneof![Just(sent), (sent - 600)..(sent + 600), any::<u64>(),].prop_map(|secs| {
                UNIX_EPOCH
                    .checked_add(Duration::from_secs(secs))
                    .unwrap_or(UNIX_EPOCH)
            })
        }

        /// What an accepted push must be, in inputs drawn around E: signed
        /// over exactly the bytes given, and so E itself (nothing else here
        /// carries a valid signature).
        fn assert_only_e_passes(
            result: &Result<Event, Reject>,
            query: &CallbackQuery,
            body: &[u8],
        ) -> Result<(), TestCaseError> {
            let Ok(event) = result else {
                return Ok(());
            };
            prop_assert!(
                signed(A.token, query, body),
                "{query:?} {:?}",
                String::from_utf8_lossy(body)
            );
            prop_assert_eq!(query.timestamp.as_deref(), Some(E.timestamp));
            prop_assert_eq!(query.nonce.as_deref(), Some(E.nonce));
            prop_assert_eq!(query.msg_signature.as_deref(), Some(E.msg_signature));
            let encrypt = callback_encrypt(body);
            prop_assert_eq!(encrypt.as_deref(), Some(E.encrypt));
            prop_assert!(matches!(event, Event::VerifyTicket { .. }), "{event:?}");
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::test_cases(2000)))]

            #[test]
            fn verify_never_panics_and_accepts_only_signed_pushes(
                body in body(),
                timestamp in value(E.timestamp),
                nonce in value(E.nonce),
                encrypt_type in value("aes"),
                msg_signature in value(E.msg_signature),
                now in now(),
                max_age in prop_oneof![Just(MAX_AGE.as_secs()), any::<u64>()],
            ) {
                let query = CallbackQuery { timestamp, nonce, encrypt_type, msg_signature };
                let result = verify(&crypto(), &query, &body, now, Duration::from_secs(max_age));
                assert_only_e_passes(&result, &query, &body)?;
            }

            /// The fuzz target's own path: the raw query string read as the
            /// receiver reads it, the clock at E's timestamp.
            #[test]
            fn pushes_as_sent_never_panic_and_only_signed_ones_pass(
                query in query_string(),
                body in body(),
            ) {
                let result = verify_callback(&query, &body);
                let parsed = crate::open_platform::receiver::parse_query(&query);
                assert_only_e_passes(&result, &parsed, &body)?;
                if let Err(reject) = result {
                    prop_assert!(!reject.to_string().contains(CALLBACK_TOKEN));
                }
            }
        }

        #[test]
        fn e_as_sent_passes_and_its_signature_is_computed_alike_here() {
            assert_eq!(
                signature(A.token, E.timestamp, E.nonce, E.encrypt),
                E.msg_signature
            );
            let body = e_body().into_bytes();
            assert!(signed(A.token, &e_query(), &body));
            let result = verify_callback(&e_query_string(), &body);
            assert!(
                matches!(result, Ok(Event::VerifyTicket { .. })),
                "{result:?}"
            );
        }
    }
}
