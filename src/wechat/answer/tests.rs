//! WeChat's answers, good, bad and hostile.

use super::*;

fn parse(body: &str) -> Result<(SecretString, Duration), FetchError> {
    parse_credential(
        body.as_bytes(),
        CredentialKind::AccessToken,
        Call::IssueToken,
        &[&SecretString::from("the-secret")],
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
            &[&SecretString::from("the-secret")],
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
fn a_repeat_of_the_held_value_is_accepted_whatever_its_expires_in_and_a_new_one_is_not() {
    let held = SecretString::from("HELD");
    let parse = |body: &str| {
        parse_repeatable(
            body.as_bytes(),
            CredentialKind::JsapiTicket,
            Call::WecomUseToken,
            &[&SecretString::from("the-token")],
            Duration::from_secs(60),
            Some(&held),
        )
    };
    // WeChat counts the held value down, to zero in its last second.
    for (seconds, kept) in [(0, 0), (5, 5), (59, 59), (-3, 0), (99_999_999, 86_400)] {
        let body = format!(r#"{{"errcode":0,"ticket":"HELD","expires_in":{seconds}}}"#);
        let repeat = parse(&body).expect(&body);
        assert_eq!(repeat.expires_in, Duration::from_secs(kept), "{body}");
    }
    // A new value is judged as ever.
    let outside = parse(r#"{"errcode":0,"ticket":"NEW","expires_in":0}"#).expect_err("0");
    assert!(outside.to_string().contains("outside"), "{outside}");
    let short = parse(r#"{"errcode":0,"ticket":"NEW","expires_in":5}"#).expect_err("5");
    assert!(
        short.to_string().contains("wechat.min_expires_in"),
        "{short}"
    );
    assert!(
        parse(r#"{"errcode":0,"ticket":"HELD"}"#).is_err(),
        "expires_in missing"
    );
}

#[test]
fn ticket_answer_parses_and_a_stale_token_is_invalid_token() {
    let secret = SecretString::from("ACCESS");
    let ok = parse_credential(
        br#"{"errcode":0,"errmsg":"ok","ticket":"TICKET","expires_in":7200}"#,
        CredentialKind::JsapiTicket,
        Call::UseToken,
        &[&secret],
        DEFAULT_MIN_EXPIRES_IN,
    )
    .expect("ticket");
    assert_eq!(ok.value.expose_secret(), "TICKET");
    let stale = parse_credential(
        br#"{"errcode":40001,"errmsg":"invalid credential ACCESS"}"#,
        CredentialKind::JsapiTicket,
        Call::UseToken,
        &[&secret],
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
            &[&SecretString::from("s3cret")],
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
