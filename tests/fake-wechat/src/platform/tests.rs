//! The component endpoints, each mode and errcode, over HTTP as the daemon
//! meets them; and WeChat's pushes, decrypted as a receiver would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use serde_json::{json, Value};

use crate::component::{ComponentConfig, KEY_BASE64};
use crate::{AppConfig, Endpoint, FakeWechat, Fault};

const COMPONENT: &str = "wxcomponent0000001";
const SECRET: &str = "component-secret";
const ACCOUNT: &str = "wxplainaccount0001";
const AUTHORIZER: &str = "wxauthorizer000001";
const OTHER: &str = "wxauthorizer000002";

async fn fake() -> FakeWechat {
    let fake = FakeWechat::start().await.expect("fake");
    fake.add_component(AppConfig::new(COMPONENT, SECRET));
    fake.add_app(AppConfig::new(ACCOUNT, "s"));
    fake
}

async fn post_to(url: &str, path: &str, body: Value) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(answer.status(), 200, "WeChat answers errors with HTTP 200");
    serde_json::from_str(&answer.text().await.expect("body")).expect("JSON")
}

async fn post(fake: &FakeWechat, path: &str, body: Value) -> Value {
    post_to(&fake.url(), path, body).await
}

async fn get(fake: &FakeWechat, path: &str) -> Value {
    let answer = reqwest::get(format!("{}{path}", fake.url()))
        .await
        .expect("the fake answers");
    serde_json::from_str(&answer.text().await.expect("body")).expect("JSON")
}

fn errcode(v: &Value) -> Option<i64> {
    v["errcode"].as_i64()
}

fn text(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .to_owned()
}

async fn token(fake: &FakeWechat, appid: &str, secret: &str, ticket: &str) -> Value {
    let body = json!({
        "component_appid": appid,
        "component_appsecret": secret,
        "component_verify_ticket": ticket,
    });
    post(fake, Endpoint::ComponentToken.cgi_path(), body).await
}

/// A component token, minted with a pushed ticket.
async fn component_token(fake: &FakeWechat) -> String {
    fake.pushed_verify_ticket(COMPONENT, "ticket@@@for-calls");
    text(
        &token(fake, COMPONENT, SECRET, "ticket@@@for-calls").await,
        "component_access_token",
    )
}

/// A component-token call (`component_access_token=`).
async fn call(fake: &FakeWechat, endpoint: Endpoint, token: &str, body: Value) -> Value {
    let path = format!("{}?component_access_token={token}", endpoint.cgi_path());
    post(fake, &path, body).await
}

async fn authorizer_token(fake: &FakeWechat, token: &str, appid: &str, rt: &str) -> Value {
    let body = json!({
        "component_appid": COMPONENT,
        "authorizer_appid": appid,
        "authorizer_refresh_token": rt,
    });
    call(fake, Endpoint::AuthorizerToken, token, body).await
}

async fn query_auth(fake: &FakeWechat, token: &str, code: &str) -> Value {
    let body = json!({ "component_appid": COMPONENT, "authorization_code": code });
    call(fake, Endpoint::QueryAuth, token, body).await
}

async fn list(fake: &FakeWechat, token: &str, offset: i64, count: i64) -> Value {
    let body = json!({ "component_appid": COMPONENT, "offset": offset, "count": count });
    call(fake, Endpoint::AuthorizerList, token, body).await
}

async fn start_push(fake: &FakeWechat, appid: &str, secret: &str) -> Value {
    let body = json!({ "component_appid": appid, "component_secret": secret });
    post(fake, Endpoint::StartPushTicket.cgi_path(), body).await
}

/// An authorizer's first token, from its code.
async fn exchanged(fake: &FakeWechat, token: &str, appid: &str) -> String {
    let code = fake.authorize(COMPONENT, appid);
    let info = query_auth(fake, token, &code).await;
    text(&info["authorization_info"], "authorizer_access_token")
}

#[tokio::test]
async fn a_component_token_needs_a_ticket_wechat_pushed_and_rotates_with_overlap() {
    let fake = fake().await;
    let refused = token(&fake, COMPONENT, SECRET, "ticket@@@never-pushed").await;
    assert_eq!(errcode(&refused), Some(61006), "{refused}");
    assert_eq!(
        errcode(&token(&fake, COMPONENT, SECRET, "").await),
        Some(61006)
    );

    fake.pushed_verify_ticket(COMPONENT, "ticket@@@one");
    let first = text(
        &token(&fake, COMPONENT, SECRET, "ticket@@@one").await,
        "component_access_token",
    );
    let second = token(&fake, COMPONENT, SECRET, "ticket@@@one").await;
    assert_eq!(second["expires_in"], 7200);
    let second = text(&second, "component_access_token");
    assert_ne!(first, second, "a new token every call");
    assert!(fake.is_accepted(&second));
    assert!(
        fake.is_accepted(&first),
        "the previous one works for the overlap"
    );
    assert_eq!(fake.calls(COMPONENT, Endpoint::ComponentToken), 4);
    assert_eq!(fake.issued_by(COMPONENT).len(), 2);
}

#[tokio::test]
async fn a_ticket_past_its_life_is_expired_and_a_repeat_does_not_extend_it() {
    let fake = fake().await;
    fake.pushed_verify_ticket(COMPONENT, "ticket@@@old");
    fake.set_ticket_life(COMPONENT, Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.pushed_verify_ticket(COMPONENT, "ticket@@@old");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let refused = token(&fake, COMPONENT, SECRET, "ticket@@@old").await;
    assert_eq!(errcode(&refused), Some(61005), "{refused}");
    assert!(text(&refused, "errmsg").ends_with("rid: fake"));
    assert_eq!(fake.verify_tickets(COMPONENT), ["ticket@@@old"]);
}

#[tokio::test]
async fn wrong_credentials_get_wechats_errcodes() {
    let fake = fake().await;
    fake.pushed_verify_ticket(COMPONENT, "ticket@@@t");
    let cases = [
        (COMPONENT, "wrong", "ticket@@@t", 40125),
        (COMPONENT, "", "ticket@@@t", 41004),
        ("", SECRET, "ticket@@@t", 41002),
        ("wxnobody000000001", SECRET, "t", 40013),
        (ACCOUNT, "s", "ticket@@@t", 61011),
    ];
    for (appid, secret, ticket, code) in cases {
        let answer = token(&fake, appid, secret, ticket).await;
        assert_eq!(errcode(&answer), Some(code), "{appid} {secret}: {answer}");
    }
    let path = Endpoint::ComponentToken.cgi_path();
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", fake.url()))
        .body("not json")
        .send()
        .await
        .expect("answers");
    let answer: Value = serde_json::from_str(&answer.text().await.expect("body")).expect("JSON");
    assert_eq!(errcode(&answer), Some(47001));
}

#[tokio::test]
async fn the_component_token_has_its_own_daily_quota_shown_with_that_token() {
    let fake = fake().await;
    fake.set_behaviour(COMPONENT, Endpoint::ComponentToken, |b| b.daily_quota = 2);
    let token_value = component_token(&fake).await;
    let spent = token(&fake, COMPONENT, SECRET, "ticket@@@for-calls").await;
    assert!(spent["component_access_token"].is_string());
    let spent = token(&fake, COMPONENT, SECRET, "ticket@@@for-calls").await;
    assert_eq!(errcode(&spent), Some(45009), "{spent}");
    let quota = post(
        &fake,
        &format!("/cgi-bin/openapi/quota/get?access_token={token_value}"),
        json!({ "cgi_path": Endpoint::ComponentToken.cgi_path() }),
    )
    .await;
    assert_eq!(quota["quota"]["daily_limit"], 2, "{quota}");
    assert_eq!(quota["quota"]["used"], 2, "{quota}");
}

#[tokio::test]
async fn calls_made_with_the_component_token_check_it_like_any_token() {
    let fake = fake().await;
    fake.set_behaviour(COMPONENT, Endpoint::ComponentToken, |b| {
        b.expires_in = Duration::from_secs(1);
        b.overlap = Duration::ZERO;
    });
    let old = component_token(&fake).await;
    let token = component_token(&fake).await;
    let body = json!({ "component_appid": COMPONENT, "offset": 0, "count": 10 });
    let path = Endpoint::AuthorizerList.cgi_path();
    let cases = [
        (
            format!("{path}?component_access_token={token}"),
            body.clone(),
            None,
        ),
        (format!("{path}?access_token={token}"), body.clone(), None),
        (path.to_owned(), body.clone(), Some(41001)),
        (
            format!("{path}?component_access_token=nope"),
            body.clone(),
            Some(40001),
        ),
        (
            format!("{path}?component_access_token={old}"),
            body.clone(),
            Some(40001),
        ),
        (
            format!("{path}?component_access_token={token}"),
            json!({ "offset": 0, "count": 1 }),
            Some(41002),
        ),
        (
            format!("{path}?component_access_token={token}"),
            json!({ "component_appid": ACCOUNT, "offset": 0, "count": 1 }),
            Some(40013),
        ),
    ];
    for (path, body, code) in cases {
        let answer = post(&fake, &path, body).await;
        assert_eq!(errcode(&answer), code, "{path}: {answer}");
    }
    fake.add_component(AppConfig::new("wxcomponent0000002", "other"));
    let other = json!({ "component_appid": "wxcomponent0000002", "offset": 0, "count": 1 });
    let answer = call(&fake, Endpoint::AuthorizerList, &token, other).await;
    assert_eq!(errcode(&answer), Some(40001), "another component's token");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = call(&fake, Endpoint::AuthorizerList, &token, body).await;
    assert_eq!(errcode(&answer), Some(42001), "expired");
}

#[tokio::test]
async fn a_code_is_exchanged_once_for_a_token_accepted_like_an_accounts() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let code = fake.authorize(COMPONENT, AUTHORIZER);
    assert!(code.starts_with("queryauthcode@@@"));
    let info = query_auth(&fake, &token, &code).await;
    let info = &info["authorization_info"];
    assert_eq!(info["authorizer_appid"], AUTHORIZER);
    assert_eq!(info["expires_in"], 7200);
    assert_eq!(
        info["func_info"],
        json!([
            {"funcscope_category": {"id": 1}},
            {"funcscope_category": {"id": 2}},
            {"funcscope_category": {"id": 3}}
        ])
    );
    let first = text(info, "authorizer_access_token");
    assert_eq!(
        info["authorizer_refresh_token"].as_str(),
        fake.refresh_token_of(COMPONENT, AUTHORIZER).as_deref()
    );
    // Accepted by the business API and the ticket endpoint, like an
    // account's token; its jsapi ticket is the authorizer's.
    assert!(fake.is_accepted(&first));
    let ip = get(
        &fake,
        &format!("/cgi-bin/getcallbackip?access_token={first}"),
    )
    .await;
    assert!(ip["ip_list"].is_array(), "{ip}");
    let ticket = get(
        &fake,
        &format!("/cgi-bin/ticket/getticket?access_token={first}&type=jsapi"),
    )
    .await;
    assert_eq!(errcode(&ticket), Some(0), "{ticket}");
    assert_eq!(fake.issued_tickets(AUTHORIZER, "jsapi").len(), 1);
    assert_eq!(
        fake.issued_on(AUTHORIZER, Endpoint::AuthorizerToken),
        [first]
    );
    assert_eq!(fake.calls(AUTHORIZER, Endpoint::QueryAuth), 1);
    assert_eq!(fake.calls(COMPONENT, Endpoint::QueryAuth), 1);
}

#[tokio::test]
async fn a_code_is_refused_unknown_used_superseded_withdrawn_or_past_its_hour() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let unknown = query_auth(&fake, &token, "queryauthcode@@@nope").await;
    assert_eq!(errcode(&unknown), Some(61009), "{unknown}");
    assert_eq!(errcode(&query_auth(&fake, &token, "").await), Some(61009));

    let used = fake.authorize(COMPONENT, AUTHORIZER);
    assert!(query_auth(&fake, &token, &used).await["authorization_info"].is_object());
    assert_eq!(
        errcode(&query_auth(&fake, &token, &used).await),
        Some(61010)
    );

    let superseded = fake.authorize(COMPONENT, AUTHORIZER);
    let update = fake.update_authorization(COMPONENT, AUTHORIZER);
    assert_eq!(
        errcode(&query_auth(&fake, &token, &superseded).await),
        Some(61010)
    );
    fake.unauthorize(COMPONENT, AUTHORIZER);
    assert_eq!(
        errcode(&query_auth(&fake, &token, &update).await),
        Some(61010)
    );

    let late = fake.authorize(COMPONENT, OTHER);
    fake.set_code_life(COMPONENT, Duration::ZERO);
    assert_eq!(
        errcode(&query_auth(&fake, &token, &late).await),
        Some(61010)
    );
    fake.set_code_life(COMPONENT, crate::CODE_LIFE);
    assert!(query_auth(&fake, &token, &late).await["authorization_info"].is_object());
}

#[tokio::test]
async fn an_exchange_rotates_the_previous_token_and_without_permission_gives_none() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let first = exchanged(&fake, &token, AUTHORIZER).await;
    fake.set_behaviour(AUTHORIZER, Endpoint::AuthorizerToken, |b| {
        b.overlap = Duration::ZERO;
    });
    let rt = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    let second = text(
        &authorizer_token(&fake, &token, AUTHORIZER, &rt).await,
        "authorizer_access_token",
    );
    assert!(!fake.is_accepted(&first), "replaced, no overlap");
    let code = fake.update_authorization(COMPONENT, AUTHORIZER);
    let third = query_auth(&fake, &token, &code).await;
    assert!(third["authorization_info"]["authorizer_access_token"].is_string());
    assert!(!fake.is_accepted(&second), "the exchange rotates it too");

    let code = fake.authorize(COMPONENT, OTHER);
    fake.set_func_info(COMPONENT, OTHER, &[]);
    let bare = query_auth(&fake, &token, &code).await;
    let info = &bare["authorization_info"];
    assert_eq!(info["authorizer_appid"], OTHER);
    assert!(info.get("authorizer_access_token").is_none(), "{bare}");
    assert!(info.get("authorizer_refresh_token").is_none(), "{bare}");
    assert!(fake.issued_on(OTHER, Endpoint::AuthorizerToken).is_empty());
}

#[tokio::test]
async fn the_refresh_token_is_echoed_or_rotated_and_dies_with_the_authorization() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let first = exchanged(&fake, &token, AUTHORIZER).await;
    let rt = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    let answer = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
    assert_eq!(answer["authorizer_refresh_token"], rt.as_str(), "echoed");
    let second = text(&answer, "authorizer_access_token");
    assert!(
        fake.is_accepted(&first) && fake.is_accepted(&second),
        "overlap"
    );
    for wrong in ["refreshtoken@@@wrong", ""] {
        let refused = authorizer_token(&fake, &token, AUTHORIZER, wrong).await;
        assert_eq!(errcode(&refused), Some(61023), "{wrong:?}: {refused}");
    }

    fake.rotate_refresh_tokens(COMPONENT, AUTHORIZER, true);
    let rotated = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
    let next = text(&rotated, "authorizer_refresh_token");
    assert_ne!(next, rt, "rotated");
    assert_eq!(
        fake.refresh_token_of(COMPONENT, AUTHORIZER),
        Some(next.clone())
    );
    // The replaced one works for the grace period (and rotates again).
    let again = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
    let latest = text(&again, "authorizer_refresh_token");
    fake.set_refresh_token_grace(COMPONENT, Duration::ZERO);
    let after = authorizer_token(&fake, &token, AUTHORIZER, &latest).await;
    assert!(after["authorizer_access_token"].is_string(), "{after}");
    let refused = authorizer_token(&fake, &token, AUTHORIZER, &latest).await;
    assert_eq!(
        errcode(&refused),
        Some(61023),
        "replaced, no grace: {refused}"
    );
    assert_eq!(fake.calls(AUTHORIZER, Endpoint::AuthorizerToken), 7);
    assert_eq!(fake.calls(COMPONENT, Endpoint::AuthorizerToken), 7);

    let current = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    let tokens = fake.issued_on(AUTHORIZER, Endpoint::AuthorizerToken);
    fake.unauthorize(COMPONENT, AUTHORIZER);
    assert!(
        tokens.iter().all(|t| !fake.is_accepted(t)),
        "they die with it"
    );
    assert_eq!(fake.refresh_token_of(COMPONENT, AUTHORIZER), None);
    for appid in [AUTHORIZER, "wxnobody000000001"] {
        let refused = authorizer_token(&fake, &token, appid, &current).await;
        assert_eq!(errcode(&refused), Some(61003), "{appid}: {refused}");
    }
    let ticket = get(
        &fake,
        &format!(
            "/cgi-bin/ticket/getticket?access_token={}&type=jsapi",
            tokens[0]
        ),
    )
    .await;
    assert_eq!(errcode(&ticket), Some(40001), "{ticket}");

    // A new authorization: a new refresh token, rotation kept.
    fake.authorize(COMPONENT, AUTHORIZER);
    let renewed = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    assert_ne!(renewed, current);
    let answer = authorizer_token(&fake, &token, AUTHORIZER, &renewed).await;
    assert_ne!(
        text(&answer, "authorizer_refresh_token"),
        renewed,
        "still rotating"
    );
}

#[tokio::test]
async fn an_invalidated_refresh_token_is_refused_and_the_list_gives_the_current_one() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    exchanged(&fake, &token, AUTHORIZER).await;
    let held = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    fake.invalidate_refresh_token(COMPONENT, AUTHORIZER);
    let refused = authorizer_token(&fake, &token, AUTHORIZER, &held).await;
    assert_eq!(errcode(&refused), Some(61023));
    let page = list(&fake, &token, 0, 500).await;
    let listed = text(&page["list"][0], "refresh_token");
    assert_ne!(listed, held);
    let answer = authorizer_token(&fake, &token, AUTHORIZER, &listed).await;
    assert!(answer["authorizer_access_token"].is_string(), "{answer}");
}

#[tokio::test]
async fn the_list_pages_every_authorizer_with_its_refresh_token_once_exchanged() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let started = std::time::Instant::now();
    let silent: Vec<String> = (0..1000).map(|n| format!("wxsilent{n:010}")).collect();
    for appid in &silent {
        fake.authorize_silently(COMPONENT, appid);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bulk set-up is fast"
    );
    fake.authorize(COMPONENT, AUTHORIZER); // its code never exchanged
    exchanged(&fake, &token, OTHER).await;
    fake.authorize_silently(COMPONENT, "wxwithdrawn0000001");
    fake.unauthorize(COMPONENT, "wxwithdrawn0000001");

    let mut seen = Vec::new();
    for offset in [0, 500, 1000] {
        let page = list(&fake, &token, offset, 500).await;
        assert_eq!(page["total_count"], 1002, "{page}");
        seen.extend(page["list"].as_array().expect("list").iter().cloned());
    }
    assert_eq!(seen.len(), 1002);
    assert!(list(&fake, &token, 1002, 500).await["list"]
        .as_array()
        .expect("list")
        .is_empty());
    let entry = |appid: &str| {
        seen.iter()
            .find(|e| e["authorizer_appid"] == appid)
            .unwrap_or_else(|| panic!("{appid} listed"))
            .clone()
    };
    assert_eq!(
        entry(&silent[7])["refresh_token"].as_str(),
        fake.refresh_token_of(COMPONENT, &silent[7]).as_deref()
    );
    assert!(entry(&silent[7])["auth_time"].as_u64().is_some());
    assert!(
        entry(AUTHORIZER).get("refresh_token").is_none(),
        "never exchanged"
    );
    assert!(entry(OTHER)["refresh_token"].is_string());
    assert!(seen
        .iter()
        .all(|e| e["authorizer_appid"] != "wxwithdrawn0000001"));

    for (offset, count) in [(0, 501), (0, -1), (-1, 10)] {
        let refused = list(&fake, &token, offset, count).await;
        assert_eq!(errcode(&refused), Some(40097), "{offset} {count}");
    }
    assert_eq!(fake.calls(COMPONENT, Endpoint::AuthorizerList), 7);
}

#[tokio::test]
async fn faults_and_quotas_apply_per_authorizer_and_per_component() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    exchanged(&fake, &token, AUTHORIZER).await;
    exchanged(&fake, &token, OTHER).await;
    let rt = fake.refresh_token_of(COMPONENT, AUTHORIZER).expect("rt");
    let other_rt = fake.refresh_token_of(COMPONENT, OTHER).expect("rt");

    fake.push_faults_on(
        AUTHORIZER,
        Endpoint::AuthorizerToken,
        [Fault::Errcode(61004)],
    );
    let refused = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
    assert_eq!(errcode(&refused), Some(61004), "an injected IP refusal");
    assert!(
        authorizer_token(&fake, &token, AUTHORIZER, &rt).await["authorizer_access_token"]
            .is_string()
    );

    // The authorizer's own count: 45009 for it, not for the other; no
    // rotation for a refused call.
    fake.rotate_refresh_tokens(COMPONENT, AUTHORIZER, true);
    fake.set_behaviour(AUTHORIZER, Endpoint::AuthorizerToken, |b| b.daily_quota = 1);
    let spent = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
    assert_eq!(errcode(&spent), Some(45009), "{spent}");
    assert_eq!(
        fake.refresh_token_of(COMPONENT, AUTHORIZER),
        Some(rt.clone())
    );
    assert!(
        authorizer_token(&fake, &token, OTHER, &other_rt).await["authorizer_access_token"]
            .is_string()
    );
    let own_token = fake.issued_on(OTHER, Endpoint::AuthorizerToken);
    let quota = post(
        &fake,
        &format!(
            "/cgi-bin/openapi/quota/get?access_token={}",
            own_token.last().expect("a token")
        ),
        json!({ "cgi_path": Endpoint::AuthorizerToken.cgi_path() }),
    )
    .await;
    assert_eq!(
        quota["quota"]["used"], 1,
        "the authorizer's own count: {quota}"
    );

    // The component's count (if WeChat counts per component).
    fake.set_behaviour(COMPONENT, Endpoint::AuthorizerToken, |b| b.daily_quota = 2);
    let spent = authorizer_token(&fake, &token, OTHER, &other_rt).await;
    assert_eq!(errcode(&spent), Some(45009), "{spent}");

    fake.set_sticky_fault_on(COMPONENT, Endpoint::AuthorizerList, Some(Fault::Http(502)));
    let status = reqwest::Client::new()
        .post(format!(
            "{}{}?component_access_token={token}",
            fake.url(),
            Endpoint::AuthorizerList.cgi_path()
        ))
        .body(json!({ "component_appid": COMPONENT, "offset": 0, "count": 1 }).to_string())
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status, 502);
    fake.set_sticky_fault_on(COMPONENT, Endpoint::AuthorizerList, None);
    fake.push_faults_on(COMPONENT, Endpoint::QueryAuth, [Fault::Errcode(-1)]);
    let code = fake.authorize(COMPONENT, "wxauthorizer000003");
    assert_eq!(errcode(&query_auth(&fake, &token, &code).await), Some(-1));
    assert!(
        query_auth(&fake, &token, &code).await["authorization_info"].is_object(),
        "a failed call spends no code"
    );
}

#[tokio::test]
async fn a_pre_auth_code_lives_600_seconds() {
    let fake = fake().await;
    let token = component_token(&fake).await;
    let body = json!({ "component_appid": COMPONENT });
    let answer = call(&fake, Endpoint::CreatePreauthcode, &token, body.clone()).await;
    assert!(text(&answer, "pre_auth_code").starts_with("preauthcode@@@"));
    assert_eq!(answer["expires_in"], 600);
    fake.set_behaviour(COMPONENT, Endpoint::CreatePreauthcode, |b| {
        b.daily_quota = 1
    });
    let spent = call(&fake, Endpoint::CreatePreauthcode, &token, body).await;
    assert_eq!(errcode(&spent), Some(45009));
}

/// A callback receiver: records each push's body, answers `success` (or
/// `fail` once told to).
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<String>>>,
    failing: Arc<Mutex<bool>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move |body: String| {
                let me = me.clone();
                async move {
                    me.bodies.lock().expect("lock").push(body);
                    match *me.failing.lock().expect("lock") {
                        true => "fail",
                        false => "success",
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/cb")
    }

    fn count(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }

    fn messages(&self, config: &ComponentConfig) -> Vec<String> {
        let bodies = self.bodies.lock().expect("lock").clone();
        bodies.iter().map(|b| decrypt(config, b)).collect()
    }
}

/// The message inside a push, decrypted as a receiver does.
fn decrypt(config: &ComponentConfig, body: &str) -> String {
    let encrypt = body
        .split("<Encrypt><![CDATA[")
        .nth(1)
        .and_then(|rest| rest.split("]]>").next())
        .expect("an Encrypt element");
    let key: [u8; 32] = KEY_BASE64
        .decode(format!("{}=", config.encoding_aes_key))
        .expect("key")
        .try_into()
        .expect("32 bytes");
    let iv: [u8; 16] = key[..16].try_into().expect("16 bytes");
    let mut buf = STANDARD.decode(encrypt).expect("base64");
    let plain = cbc::Decryptor::<Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded::<NoPadding>(&mut buf)
        .expect("whole blocks");
    let pad = usize::from(plain[plain.len() - 1]);
    let plain = &plain[..plain.len() - pad];
    let len = u32::from_be_bytes(plain[16..20].try_into().expect("4 bytes")) as usize;
    assert_eq!(
        &plain[20 + len..],
        config.appid.as_bytes(),
        "the tail appid"
    );
    String::from_utf8(plain[20..20 + len].to_vec()).expect("UTF-8")
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn timed_pushes_carry_usable_tickets_round_robin_and_stop_until_restarted() {
    let fake = fake().await;
    let config = ComponentConfig::random(COMPONENT);
    let (a, b) = (Receiver::default(), Receiver::default());
    let targets = vec![a.start().await, b.start().await];
    fake.set_push_targets(&config, targets);
    fake.start_pushes(COMPONENT, Duration::from_millis(50));
    until("four pushes", || fake.pushes(COMPONENT).len() >= 4).await;
    assert!(a.count() >= 2 && b.count() >= 2, "round-robin");
    let pushes = fake.pushes(COMPONENT);
    assert!(pushes
        .iter()
        .all(|p| p.delivered() && p.info_type == "component_verify_ticket"));
    let tickets = fake.verify_tickets(COMPONENT);
    let message = &a.messages(&config)[0];
    assert!(
        message.contains(&format!(
            "<ComponentVerifyTicket><![CDATA[{}]]>",
            tickets[0]
        )),
        "{message}"
    );
    let minted = token(&fake, COMPONENT, SECRET, tickets.last().expect("one")).await;
    assert!(minted["component_access_token"].is_string(), "{minted}");

    let running = start_push(&fake, COMPONENT, SECRET).await;
    assert_eq!(
        running,
        json!({"errcode": 0, "errmsg": "in a normal state"})
    );
    fake.pause_pushes(COMPONENT, true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused_at = fake.pushes(COMPONENT).len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.pushes(COMPONENT).len(),
        paused_at,
        "no push while paused"
    );
    let restarted = start_push(&fake, COMPONENT, SECRET).await;
    assert_eq!(restarted, json!({"errcode": 0, "errmsg": "ok"}));
    assert_eq!(fake.start_push_requests(COMPONENT), 1);
    until("pushes again", || {
        fake.pushes(COMPONENT).len() > paused_at + 1
    })
    .await;
}

#[tokio::test]
async fn pushes_now_repeat_tickets_when_told_and_log_what_was_not_delivered() {
    let fake = fake().await;
    let config = ComponentConfig::random(COMPONENT);
    let receiver = Receiver::default();
    fake.set_push_targets(&config, vec![receiver.start().await]);
    fake.new_ticket_every(COMPONENT, 2);
    let first = fake.push_ticket_now(COMPONENT).await;
    assert!(first.delivered(), "{first:?}");
    fake.push_ticket_now(COMPONENT).await;
    fake.push_ticket_now(COMPONENT).await;
    assert_eq!(
        fake.verify_tickets(COMPONENT).len(),
        2,
        "1 and 2 share a value"
    );

    *receiver.failing.lock().expect("lock") = true;
    let failed = fake.push_ticket_now(COMPONENT).await;
    assert!(!failed.delivered());
    assert_eq!(failed.answer.body, "fail");
    assert_eq!(fake.pushes(COMPONENT).len(), 4);
}

#[tokio::test]
async fn authorization_events_are_pushed_in_order_with_their_codes() {
    let fake = fake().await;
    let config = ComponentConfig::random(COMPONENT);
    let receiver = Receiver::default();
    fake.set_push_targets(&config, vec![receiver.start().await]);
    let code = fake.authorize(COMPONENT, AUTHORIZER);
    let update = fake.update_authorization(COMPONENT, AUTHORIZER);
    fake.unauthorize(COMPONENT, AUTHORIZER);
    fake.authorize_silently(COMPONENT, OTHER);
    fake.push_ticket_now(COMPONENT).await; // after the events
    let kinds: Vec<String> = fake
        .pushes(COMPONENT)
        .into_iter()
        .map(|p| p.info_type)
        .collect();
    assert_eq!(
        kinds,
        [
            "authorized",
            "updateauthorized",
            "unauthorized",
            "component_verify_ticket"
        ]
    );
    let messages = receiver.messages(&config);
    let has = |i: usize, part: &str| {
        assert!(messages[i].contains(part), "{part} in {}", messages[i]);
    };
    has(0, "<InfoType><![CDATA[authorized]]></InfoType>");
    has(0, &format!("<AuthorizationCode><![CDATA[{code}]]>"));
    has(0, &format!("<AuthorizerAppid><![CDATA[{AUTHORIZER}]]>"));
    has(1, "<InfoType><![CDATA[updateauthorized]]></InfoType>");
    has(1, &format!("<AuthorizationCode><![CDATA[{update}]]>"));
    has(2, "<InfoType><![CDATA[unauthorized]]></InfoType>");
    assert!(!messages[2].contains("AuthorizationCode"));
}

#[tokio::test]
async fn start_push_ticket_checks_the_component_and_its_secret() {
    let fake = fake().await;
    let cases = [
        (COMPONENT, "wrong", Some(40125)),
        (COMPONENT, "", Some(41004)),
        ("wxnobody000000001", SECRET, Some(40013)),
        (ACCOUNT, "s", Some(40013)),
        (COMPONENT, SECRET, Some(0)),
    ];
    for (appid, secret, code) in cases {
        let answer = start_push(&fake, appid, secret).await;
        assert_eq!(errcode(&answer), code, "{appid} {secret}: {answer}");
    }
    assert_eq!(fake.start_push_requests(COMPONENT), 1);
    assert_eq!(fake.calls(COMPONENT, Endpoint::StartPushTicket), 3);
    fake.set_behaviour(COMPONENT, Endpoint::StartPushTicket, |b| b.daily_quota = 1);
    assert_eq!(
        errcode(&start_push(&fake, COMPONENT, SECRET).await),
        Some(45009)
    );
}
