//! The component-token calls' answers: WeChat's documented shapes, the
//! ones it is reported to send, hostile ones, and secrets in errors.

use secrecy::ExposeSecret;

use super::*;
use crate::wechat::{Effect, ErrorClass};

const FLOOR: Duration = Duration::from_secs(60);

/// Every secret of a component-token call, as the client passes them.
struct Secrets {
    component_secret: SecretString,
    component_token: SecretString,
    refresh_token: SecretString,
    code: SecretString,
}

impl Secrets {
    fn new() -> Self {
        Self {
            component_secret: "component-secret-s3cret".into(),
            component_token: "COMPONENT_TOKEN_s3cret".into(),
            refresh_token: "refreshtoken@@@s3cret-rt".into(),
            code: "queryauthcode@@@s3cret-code".into(),
        }
    }

    fn all(&self) -> [&SecretString; 4] {
        [
            &self.component_secret,
            &self.component_token,
            &self.refresh_token,
            &self.code,
        ]
    }

    /// Every secret as sent and percent-encoded, as WeChat might echo it.
    fn shown_forms(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|s| {
                let s = s.expose_secret();
                [s.to_owned(), s.replace('@', "%40")]
            })
            .collect()
    }
}

fn authorizer_answer(body: &str) -> Result<FetchedAuthorizerToken, FetchError> {
    let s = Secrets::new();
    parse_authorizer_answer(body.as_bytes(), &s.all(), FLOOR, None)
}

#[test]
fn an_authorizer_token_comes_with_the_refresh_token_wechat_echoes() {
    let sent = SecretString::from("refreshtoken@@@sent");
    let echo = authorizer_answer(
        r#"{"authorizer_access_token":"AUTH_TOKEN","expires_in":7200,
            "authorizer_refresh_token":"refreshtoken@@@sent"}"#,
    )
    .expect("WeChat's documented answer");
    assert_eq!(echo.token.value.expose_secret(), "AUTH_TOKEN");
    assert_eq!(echo.token.expires_in, Duration::from_secs(7200));
    assert!(
        echo.new_refresh_token(&sent).is_none(),
        "an echo is no news"
    );

    let rotated = authorizer_answer(
        r#"{"authorizer_access_token":"AUTH_TOKEN","expires_in":7200,
            "authorizer_refresh_token":"refreshtoken@@@next"}"#,
    )
    .expect("a rotated refresh token");
    let new = rotated
        .new_refresh_token(&sent)
        .expect("a new one to store");
    assert_eq!(new.expose_secret(), "refreshtoken@@@next");

    for body in [
        r#"{"authorizer_access_token":"T","expires_in":7200}"#,
        r#"{"authorizer_access_token":"T","expires_in":7200,"authorizer_refresh_token":""}"#,
    ] {
        let answer = authorizer_answer(body).expect(body);
        assert!(answer.refresh_token.is_none(), "nothing to store: {body}");
        assert!(answer.new_refresh_token(&sent).is_none());
    }
    let debug = format!("{rotated:?}");
    assert!(
        !debug.contains("AUTH_TOKEN") && !debug.contains("refreshtoken@@@next"),
        "{debug}"
    );
}

#[test]
fn a_malformed_authorizer_answer_stores_nothing() {
    let long = format!(
        r#"{{"authorizer_access_token":"T","expires_in":7200,"authorizer_refresh_token":"{}"}}"#,
        "r".repeat(513)
    );
    for body in [
        r#"{"authorizer_access_token":"T","expires_in":7200,"authorizer_refresh_token":"a b"}"#,
        long.as_str(),
        r#"{"authorizer_access_token":"T","expires_in":7200,"authorizer_refresh_token":7}"#,
        r#"{"access_token":"T","expires_in":7200}"#,
        r#"{"authorizer_access_token":"T"}"#,
        r#"{"authorizer_access_token":"T","expires_in":5}"#,
        r#"{"authorizer_access_token":"","expires_in":7200}"#,
        "<html>502</html>",
    ] {
        let err = authorizer_answer(body).expect_err(body);
        assert!(
            matches!(err, FetchError::InvalidResponse(_)),
            "{body}: {err}"
        );
        assert_eq!(err.class(), ErrorClass::Transient, "{body}");
    }
}

#[test]
fn the_authorizers_errcodes_carry_their_effect() {
    let cases = [
        (
            61023,
            ErrorClass::Permanent,
            Some(Effect::RefreshTokenInvalid),
        ),
        (61003, ErrorClass::Permanent, Some(Effect::NotAuthorized)),
        (42001, ErrorClass::InvalidToken, None),
        (40001, ErrorClass::InvalidToken, None),
        (45009, ErrorClass::DailyQuota, None),
        (-1, ErrorClass::Transient, None),
    ];
    for (code, class, effect) in cases {
        let body = format!(r#"{{"errcode":{code},"errmsg":"refused rid: 1-2-3"}}"#);
        let err = authorizer_answer(&body).expect_err(&body);
        assert_eq!(err.errcode(), Some(code));
        assert_eq!(err.class(), class, "{code}");
        assert_eq!(err.effect(), effect, "{code}");
    }
}

#[test]
fn no_secret_of_a_call_is_in_its_error() {
    let s = Secrets::new();
    let errmsg = format!("rid: x echoing {}", s.shown_forms().join(" and "));
    let min = FLOOR;
    for code in [61023, 61009, 40001, 99999] {
        let body = json!({ "errcode": code, "errmsg": errmsg }).to_string();
        let errors = [
            parse_authorizer_answer(body.as_bytes(), &s.all(), min, None).expect_err("refused"),
            parse_query_auth(body.as_bytes(), &s.all(), min).expect_err("refused"),
            parse_authorizer_list(body.as_bytes(), &s.all()).expect_err("refused"),
        ];
        for err in errors {
            let shown = format!("{err} {err:?}");
            for secret in s.shown_forms() {
                assert!(!shown.contains(&secret), "{secret} in {shown}");
            }
            assert!(shown.contains("rid: x"), "the rest is kept: {shown}");
        }
    }
}

/// WeChat's documented `api_query_auth` answer (DOC authorization_info,
/// wechatpy's fixture).
const QUERY_AUTH: &str = r#"{"authorization_info":{
    "authorizer_appid":"wxf8b4f85f3a794e77",
    "authorizer_access_token":"QXjUqNqfYVH0yBE1iI_7vuN_9gQbpjfK7hYwJ3P7xOa88a89-Aga5x1NMYJyB8G2yKt1KCl0nPC3W9GJzw0Zzq_dBxc8pxIGUNi_bFes0qM",
    "expires_in":7200,
    "authorizer_refresh_token":"dTo-YCXPL4llX-u1W1pPpnp8Hgm4wpJtlR6iV0doKdY",
    "func_info":[{"funcscope_category":{"id":1}},{"funcscope_category":{"id":2}},
                 {"funcscope_category":{"id":3}},{"other":true}]}}"#;

#[test]
fn an_exchanged_code_gives_the_first_token_the_refresh_token_and_the_permissions() {
    let s = Secrets::new();
    let answer = parse_query_auth(QUERY_AUTH.as_bytes(), &s.all(), FLOOR).expect("documented");
    assert_eq!(answer.authorizer_appid.as_str(), "wxf8b4f85f3a794e77");
    let token = answer.token.as_ref().expect("a token");
    assert!(token.value.expose_secret().starts_with("QXjUqNqf"));
    assert_eq!(token.expires_in, Duration::from_secs(7200));
    let rt = answer.refresh_token.as_ref().expect("a refresh token");
    assert_eq!(
        rt.expose_secret(),
        "dTo-YCXPL4llX-u1W1pPpnp8Hgm4wpJtlR6iV0doKdY"
    );
    assert_eq!(answer.func_info, [1, 2, 3]);
    let debug = format!("{answer:?}");
    assert!(
        !debug.contains("dTo-YCXPL") && !debug.contains("QXjUqNqf"),
        "{debug}"
    );

    // An account that granted no API permission: no token, no refresh token.
    let bare = r#"{"authorization_info":{"authorizer_appid":"wxf8b4f85f3a794e77","func_info":[]}}"#;
    let answer = parse_query_auth(bare.as_bytes(), &s.all(), FLOOR).expect("no permission");
    assert!(answer.token.is_none() && answer.refresh_token.is_none());
    assert!(answer.func_info.is_empty());
}

#[test]
fn an_unusable_code_or_a_malformed_exchange_is_refused() {
    let s = Secrets::new();
    for code in [61009, 61010] {
        let body = format!(r#"{{"errcode":{code},"errmsg":"code is invalid"}}"#);
        let err = parse_query_auth(body.as_bytes(), &s.all(), FLOOR).expect_err("refused");
        assert_eq!(err.effect(), Some(Effect::CodeUnusable), "{code}");
        assert_eq!(err.class(), ErrorClass::Permanent, "{code}");
    }
    for body in [
        r#"{}"#,
        r#"{"authorization_info":{}}"#,
        r#"{"authorization_info":{"authorizer_appid":"wx:bad"}}"#,
        r#"{"authorization_info":{"authorizer_appid":"wxa","authorizer_access_token":"T"}}"#,
        r#"{"authorization_info":{"authorizer_appid":"wxa","authorizer_access_token":"T",
            "expires_in":7200,"authorizer_refresh_token":"with space"}}"#,
    ] {
        let err = parse_query_auth(body.as_bytes(), &s.all(), FLOOR).expect_err(body);
        assert!(
            matches!(err, FetchError::InvalidResponse(_)),
            "{body}: {err}"
        );
    }
}

#[test]
fn a_list_page_gives_each_authorizer_and_its_refresh_token_when_there_is_one() {
    let s = Secrets::new();
    let body = r#"{"total_count":33,"list":[
        {"authorizer_appid":"wxaaaaaaaaaaaaaaa1","refresh_token":"refreshtoken@@@one","auth_time":1558000607},
        {"authorizer_appid":"wxaaaaaaaaaaaaaaa2","auth_time":1558000608},
        {"authorizer_appid":"wxaaaaaaaaaaaaaaa3","refresh_token":"","auth_time":1558000609},
        {"authorizer_appid":"wx:colon","refresh_token":"refreshtoken@@@x"},
        {"authorizer_appid":"wxaaaaaaaaaaaaaaa5","refresh_token":"has space"},
        {"refresh_token":"refreshtoken@@@y"},
        "not an object"
    ]}"#;
    let page = parse_authorizer_list(body.as_bytes(), &s.all()).expect("a page");
    assert_eq!(page.total_count, 33);
    assert_eq!(page.skipped, 4, "malformed entries are counted, not fatal");
    let ids: Vec<&str> = page
        .list
        .iter()
        .map(|l| l.authorizer_appid.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "wxaaaaaaaaaaaaaaa1",
            "wxaaaaaaaaaaaaaaa2",
            "wxaaaaaaaaaaaaaaa3"
        ]
    );
    let rt = page.list[0].refresh_token.as_ref().expect("exchanged");
    assert_eq!(rt.expose_secret(), "refreshtoken@@@one");
    assert!(page.list[1].refresh_token.is_none(), "code never exchanged");
    assert!(page.list[2].refresh_token.is_none(), "empty is none");
    assert_eq!(
        page.list[0].auth_time,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_558_000_607))
    );
    assert!(!format!("{page:?}").contains("refreshtoken@@@one"));

    let empty = parse_authorizer_list(br#"{"total_count":0}"#, &s.all()).expect("empty");
    assert!(empty.list.is_empty() && empty.skipped == 0);
    for bad in [
        r#"{"list":[]}"#,
        r#"{"total_count":-1,"list":[]}"#,
        r#"{"total_count":1,"list":"x"}"#,
    ] {
        let err = parse_authorizer_list(bad.as_bytes(), &s.all()).expect_err(bad);
        assert!(
            matches!(err, FetchError::InvalidResponse(_)),
            "{bad}: {err}"
        );
    }
    let stale = parse_authorizer_list(br#"{"errcode":42001,"errmsg":"expired"}"#, &s.all())
        .expect_err("expired token");
    assert_eq!(stale.class(), ErrorClass::InvalidToken);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(500)))]

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let s = Secrets::new();
            let _ = parse_authorizer_answer(&body, &s.all(), FLOOR, None);
            let _ = parse_query_auth(&body, &s.all(), FLOOR);
            let _ = parse_authorizer_list(&body, &s.all());
        }

        #[test]
        fn errors_never_echo_a_secret(msg in "[ -~]{0,60}", which in 0usize..8, code in -1i64..70000) {
            let s = Secrets::new();
            let forms = s.shown_forms();
            let secret = &forms[which];
            let errmsg = format!("{msg}{secret}{msg}");
            let body = json!({ "errcode": code, "errmsg": errmsg }).to_string();
            if code != 0 {
                let err = parse_query_auth(body.as_bytes(), &s.all(), FLOOR).expect_err("refused");
                prop_assert!(!err.to_string().contains(secret.as_str()));
                let err = parse_authorizer_list(body.as_bytes(), &s.all()).expect_err("refused");
                prop_assert!(!err.to_string().contains(secret.as_str()));
            }
        }
    }
}
