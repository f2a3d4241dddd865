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

fn authorizer_answer(body: &str) -> Result<(FetchedCredential, Option<SecretString>), FetchError> {
    let s = Secrets::new();
    parse_authorizer_answer(body.as_bytes(), &s.all(), FLOOR, None)
}

#[test]
fn an_authorizer_token_comes_with_the_refresh_token_wechat_answers() {
    let (token, echoed) = authorizer_answer(
        r#"{"authorizer_access_token":"AUTH_TOKEN","expires_in":7200,
            "authorizer_refresh_token":"refreshtoken@@@sent"}"#,
    )
    .expect("WeChat's documented answer");
    assert_eq!(token.value.expose_secret(), "AUTH_TOKEN");
    assert_eq!(token.expires_in, Duration::from_secs(7200));
    let echoed = echoed.expect("the refresh token");
    assert_eq!(echoed.expose_secret(), "refreshtoken@@@sent");

    for body in [
        r#"{"authorizer_access_token":"T","expires_in":7200}"#,
        r#"{"authorizer_access_token":"T","expires_in":7200,"authorizer_refresh_token":""}"#,
    ] {
        let (_, refresh_token) = authorizer_answer(body).expect(body);
        assert!(refresh_token.is_none(), "nothing to store: {body}");
    }
    let answer = authorizer_answer(
        r#"{"authorizer_access_token":"AUTH_TOKEN","expires_in":7200,
            "authorizer_refresh_token":"refreshtoken@@@next"}"#,
    )
    .expect("a new refresh token");
    let debug = format!("{answer:?}");
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
    assert_eq!(answer.authorizer_appid, "wxf8b4f85f3a794e77");
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
        assert_eq!(
            err.class(),
            ErrorClass::Transient,
            "{code}: the refresh token next"
        );
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

/// The client's calls against the fake WeChat (its own implementation of
/// WeChat's rules): request shapes, the token in the query, the answers.
mod against_the_fake {
    use std::time::Duration;

    use fake_wechat::{AppConfig, Endpoint, FakeWechat, Fault};
    use secrecy::{ExposeSecret, SecretString};
    use wxtokend_reader::AccountId;

    use crate::config::{AuthorizerSelection, WechatSettings};
    use crate::subject::Component;
    use crate::wechat::{Effect, ErrorClass, FetchError, WechatClient};

    const COMPONENT: &str = "wxcomponent0000001";
    const SECRET: &str = "component-secret-s3cret";
    const AUTHORIZER: &str = "wxauthorizer000001";

    struct Setup {
        fake: FakeWechat,
        client: WechatClient,
        component: Component,
        token: SecretString,
    }

    async fn setup() -> Setup {
        let fake = FakeWechat::start().await.expect("fake WeChat");
        fake.add_component(AppConfig::new(COMPONENT, SECRET));
        let url = fake.url().parse().expect("url");
        let client = WechatClient::new(&WechatSettings {
            base_url: url,
            wecom_base_url: fake.url().parse().expect("url"),
            allow_http: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            max_concurrent_calls: 4,
            min_expires_in: Duration::from_secs(60),
        })
        .expect("client");
        let component = Component {
            appid: AccountId::new(COMPONENT),
            secret: SECRET.into(),
            start_push_ticket_after: None,
            sealing: None,
            keep: AuthorizerSelection::All,
            tickets: Vec::new(),
            discovery_interval: Duration::from_secs(3600),
        };
        fake.pushed_verify_ticket(COMPONENT, "ticket@@@client-test");
        let slot = client.slot().await;
        let ticket = SecretString::from("ticket@@@client-test");
        let token = client
            .fetch_component_token(&slot, &component, &ticket, None)
            .await
            .expect("a component token")
            .value;
        Setup {
            fake,
            client,
            component,
            token,
        }
    }

    #[tokio::test]
    async fn a_code_is_exchanged_then_the_refresh_token_mints_tokens_the_fake_accepts() {
        let s = setup().await;
        let slot = s.client.slot().await;
        let authorizer = AccountId::new(AUTHORIZER);
        let code = SecretString::from(s.fake.authorize(COMPONENT, AUTHORIZER));
        let exchanged = s
            .client
            .query_auth(&slot, &s.component, &s.token, &code)
            .await
            .expect("exchanged");
        assert_eq!(exchanged.authorizer_appid, AUTHORIZER);
        assert_eq!(exchanged.func_info, [1, 2, 3]);
        let first = exchanged.token.expect("a token");
        assert!(s.fake.is_accepted(first.value.expose_secret()));
        let rt = exchanged.refresh_token.expect("a refresh token");
        assert_eq!(
            Some(rt.expose_secret()),
            s.fake.refresh_token_of(COMPONENT, AUTHORIZER).as_deref()
        );

        let (token, answered) = s
            .client
            .fetch_authorizer_token(&slot, &s.component, &s.token, &authorizer, &rt, None)
            .await
            .expect("a token");
        assert!(s.fake.is_accepted(token.value.expose_secret()));
        assert_eq!(token.expires_in, Duration::from_secs(7200));
        assert_eq!(
            answered.expect("echoed").expose_secret(),
            rt.expose_secret()
        );
        s.fake.rotate_refresh_tokens(COMPONENT, AUTHORIZER, true);
        let (_, rotated) = s
            .client
            .fetch_authorizer_token(&slot, &s.component, &s.token, &authorizer, &rt, None)
            .await
            .expect("a token");
        let rotated = rotated.expect("a new refresh token");
        assert_ne!(rotated.expose_secret(), rt.expose_secret());
        assert_eq!(s.fake.calls(AUTHORIZER, Endpoint::AuthorizerToken), 2);
        assert_eq!(s.fake.calls(AUTHORIZER, Endpoint::QueryAuth), 1);

        let reused = s
            .client
            .query_auth(&slot, &s.component, &s.token, &code)
            .await
            .expect_err("a code is exchanged once");
        assert_eq!(reused.effect(), Some(Effect::CodeUnusable));
    }

    #[tokio::test]
    async fn refusals_carry_their_effect_and_no_secret_of_the_call() {
        let s = setup().await;
        let slot = s.client.slot().await;
        let authorizer = AccountId::new(AUTHORIZER);
        let code = SecretString::from(s.fake.authorize(COMPONENT, AUTHORIZER));
        let held = SecretString::from(s.fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt"));
        s.fake.invalidate_refresh_token(COMPONENT, AUTHORIZER);
        let err = s
            .client
            .fetch_authorizer_token(&slot, &s.component, &s.token, &authorizer, &held, None)
            .await
            .expect_err("61023");
        assert_eq!(err.effect(), Some(Effect::RefreshTokenInvalid));
        s.fake.unauthorize(COMPONENT, AUTHORIZER);
        let err = s
            .client
            .fetch_authorizer_token(&slot, &s.component, &s.token, &authorizer, &held, None)
            .await
            .expect_err("61003");
        assert_eq!(err.effect(), Some(Effect::NotAuthorized));

        let stale = SecretString::from("not-the-component-token");
        let err = s
            .client
            .authorizer_list(&slot, &s.component, &stale, 0, 500)
            .await
            .expect_err("40001");
        assert_eq!(err.class(), ErrorClass::InvalidToken);

        // WeChat echoing every secret of the call in its errmsg.
        let echo = format!(
            "{SECRET} {} {} {} rid: fake",
            s.token.expose_secret(),
            held.expose_secret(),
            code.expose_secret()
        );
        let body = serde_json::json!({ "errcode": -1, "errmsg": echo }).to_string();
        s.fake.push_faults_on(
            AUTHORIZER,
            Endpoint::AuthorizerToken,
            [Fault::Body(body.clone())],
        );
        s.fake
            .push_faults_on(COMPONENT, Endpoint::QueryAuth, [Fault::Body(body)]);
        let token_call = s
            .client
            .fetch_authorizer_token(&slot, &s.component, &s.token, &authorizer, &held, None)
            .await
            .expect_err("-1");
        let exchange = s
            .client
            .query_auth(&slot, &s.component, &s.token, &code)
            .await
            .expect_err("-1");
        let refused = [
            (token_call, held.expose_secret()),
            (exchange, code.expose_secret()),
        ];
        for (err, own) in refused {
            assert!(matches!(err, FetchError::Api { errcode: -1, .. }), "{err}");
            let shown = format!("{err} {err:?}");
            for secret in [SECRET, s.token.expose_secret(), own] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("rid: fake"), "{shown}");
        }
    }

    #[tokio::test]
    async fn the_list_comes_in_pages_of_at_most_500() {
        let s = setup().await;
        let slot = s.client.slot().await;
        for n in 0..620 {
            s.fake
                .authorize_silently(COMPONENT, &format!("wxsilent{n:010}"));
        }
        s.fake.authorize(COMPONENT, AUTHORIZER);
        // More than WeChat's 500 is asked as 500.
        let first = s
            .client
            .authorizer_list(&slot, &s.component, &s.token, 0, 10_000)
            .await
            .expect("a page");
        assert_eq!(first.total_count, 621);
        assert_eq!(first.list.len(), 500);
        assert_eq!(first.skipped, 0);
        assert!(first.list.iter().all(|l| l.refresh_token.is_some()));
        let rest = s
            .client
            .authorizer_list(&slot, &s.component, &s.token, 500, 500)
            .await
            .expect("a page");
        assert_eq!(rest.list.len(), 121);
        let last = rest.list.last().expect("one");
        assert_eq!(last.authorizer_appid.as_str(), AUTHORIZER);
        assert!(last.refresh_token.is_none(), "its code was never exchanged");
        assert!(last.auth_time.is_some());
        assert_eq!(s.fake.calls(COMPONENT, Endpoint::AuthorizerList), 2);
    }
}
