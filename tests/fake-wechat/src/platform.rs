//! The Open Platform's component endpoints, as WeChat documents them (DOC
//! component_access_token.html, api_startpushticket.html):
//!
//! - `POST /cgi-bin/component/api_component_token` with `{component_appid,
//!   component_appsecret, component_verify_ticket}`: a new
//!   `component_access_token` every call, the previous one working for
//!   its overlap (as `/cgi-bin/token`). Refusals: 41002 no appid, 40013 an
//!   unknown appid, 61011 an app that is not a component, 41004 no secret,
//!   40125 a wrong one, 61006 a ticket WeChat never pushed (or none), 61005
//!   one older than the ticket life (12 hours), 45009 the daily quota.
//! - `POST /cgi-bin/component/api_start_push_ticket` with `{component_appid,
//!   component_secret}`: `{"errcode":0,"errmsg":"ok"}`, counted (the test
//!   pushes the ticket, as WeChat would); 40013 an unknown appid.
//!
//! - `POST /cgi-bin/component/api_query_auth?component_access_token=T` with
//!   `{component_appid, authorization_code}`: the authorizer's first token
//!   and its refresh token (`authorization_info`); 61009 an unknown code,
//!   61010 one used already or older than an hour.
//! - `POST /cgi-bin/component/api_authorizer_token?component_access_token=T`
//!   (`access_token=` too) with `{component_appid, authorizer_appid,
//!   authorizer_refresh_token}`: a new authorizer token every call (the
//!   previous one working for its overlap), and the refresh token: echoed,
//!   as WeChat does, or in rotation mode a new one every call (the old one
//!   accepted for a minute). 61003 an authorizer that withdrew (or never
//!   authorized), 61023 a refresh token that is not its current one.
//! - Both: 40001 a component token that is not the component's current
//!   one (or not one at all), 42001 an expired one.
//!
//! Which tickets WeChat pushed is told by the test
//! ([`crate::FakeWechat::pushed_verify_ticket`]): the pushes themselves go
//! through [`crate::component`]'s sender.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Query;
use rand::distr::{Alphanumeric, SampleString};

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::handlers::{credential_json, errcode, with_fault, Caller};
use crate::model::{AppConfig, Endpoint};
use crate::{lock, Shared, World};

/// WeChat: a verify ticket may be used 12 hours ("有效期为 12h").
pub const TICKET_LIFE: Duration = Duration::from_secs(12 * 3600);

/// One component's state besides its app (secret, token endpoint).
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    /// Every verify ticket WeChat pushed, with when.
    pub(crate) tickets: Vec<(String, SystemTime)>,
    /// How long a ticket may be used.
    pub(crate) ticket_life: Duration,
    /// `api_start_push_ticket` calls answered `ok`.
    pub(crate) push_requests: u32,
    /// The accounts that authorized it (or did and withdrew), by appid.
    pub(crate) authorizers: HashMap<String, Authorizer>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            tickets: Vec::new(),
            ticket_life: TICKET_LIFE,
            push_requests: 0,
            authorizers: HashMap::new(),
        }
    }
}

/// How long an authorization code may be exchanged (WeChat: an hour).
pub const CODE_LIFE: Duration = Duration::from_secs(3600);

/// In rotation mode, how long a replaced refresh token is still accepted.
const ROTATION_GRACE: Duration = Duration::from_secs(60);

/// An account that authorized a component.
#[derive(Debug, Clone)]
pub(crate) struct Authorizer {
    /// `None` after a withdrawal.
    pub(crate) refresh_token: Option<String>,
    /// Replaced refresh tokens still accepted until then (rotation mode).
    pub(crate) previous: Vec<(String, Instant)>,
    /// The authorization code and until when it may be exchanged; `None`
    /// once used.
    pub(crate) code: Option<(String, SystemTime)>,
    /// Codes used already (61010, not 61009).
    pub(crate) used_codes: Vec<String>,
    /// A new refresh token at every `api_authorizer_token`.
    pub(crate) rotate: bool,
}

fn random(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 32)
    )
}

impl World {
    /// `appid` authorizes `component`: a new refresh token and code (the
    /// previous ones dead, as after a re-authorization). Returns the code.
    pub(crate) fn authorize(&mut self, component: &str, appid: &str) -> String {
        if !self.apps.contains_key(appid) {
            // Its tokens are accepted by the business API and the ticket
            // endpoints like any account's.
            let app = AppConfig::new(appid, &random("unused-secret-"));
            self.apps
                .insert(appid.to_owned(), crate::model::App::new(app));
        }
        let code = random("queryauthcode@@@");
        let platform = self
            .platforms
            .get_mut(component)
            .unwrap_or_else(|| panic!("fake WeChat: no component {component}"));
        let rotate = platform.authorizers.get(appid).is_some_and(|a| a.rotate);
        platform.authorizers.insert(
            appid.to_owned(),
            Authorizer {
                refresh_token: Some(random("refreshtoken@@@")),
                previous: Vec::new(),
                code: Some((code.clone(), SystemTime::now() + CODE_LIFE)),
                used_codes: Vec::new(),
                rotate,
            },
        );
        code
    }
}

/// `?component_access_token=` (or `access_token=`, as newer docs write).
#[derive(Deserialize)]
pub(crate) struct ComponentTokenQuery {
    component_access_token: Option<String>,
    access_token: Option<String>,
}

impl ComponentTokenQuery {
    fn token(&self) -> &str {
        self.component_access_token
            .as_deref()
            .or(self.access_token.as_deref())
            .unwrap_or_default()
    }
}

/// Whether `token` is `component`'s current token, else WeChat's errcode
/// (boxed: a response is large).
fn check_component_token(world: &World, component: &str, token: &str) -> Result<(), Box<Response>> {
    let app = world
        .apps
        .get(component)
        .filter(|_| world.platforms.contains_key(component))
        .ok_or_else(|| Box::new(errcode(40013, "invalid appid")))?;
    let now = Instant::now();
    let issued = app
        .issued
        .iter()
        .find(|i| i.endpoint == Endpoint::ComponentToken && i.value == token);
    match issued {
        Some(i) if i.accepted_at(now) => Ok(()),
        Some(i) if now >= i.expires_at => Err(Box::new(errcode(42001, "access_token expired"))),
        _ => Err(Box::new(errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ))),
    }
}

#[derive(Deserialize)]
pub(crate) struct QueryAuthRequest {
    component_appid: Option<String>,
    authorization_code: Option<String>,
}

pub(crate) async fn query_auth(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<ComponentTokenQuery>,
    Json(r): Json<QueryAuthRequest>,
) -> Response {
    let mut world = lock(&world);
    let component = r.component_appid.as_deref().unwrap_or_default();
    if let Err(refused) = check_component_token(&world, component, q.token()) {
        return *refused;
    }
    let code = r.authorization_code.as_deref().unwrap_or_default();
    let Some(platform) = world.platforms.get_mut(component) else {
        return errcode(40013, "invalid appid");
    };
    let found = platform.authorizers.iter_mut().find(|(_, a)| {
        a.code.as_ref().is_some_and(|(c, _)| c == code) || a.used_codes.iter().any(|c| c == code)
    });
    let Some((appid, authorizer)) = found else {
        return errcode(61009, "code is invalid");
    };
    let appid = appid.clone();
    match authorizer.code.take() {
        Some((c, until)) if c == code && SystemTime::now() < until => {
            authorizer.used_codes.push(c);
        }
        other => {
            authorizer.code = other;
            return errcode(61010, "code is expired");
        }
    }
    let refresh_token = authorizer.refresh_token.clone().unwrap_or_default();
    let Some(app) = world.apps.get_mut(&appid) else {
        return errcode(61003, "component is not authorized by this account");
    };
    match app.answer(Endpoint::AuthorizerToken, "", &caller, false) {
        Ok(answer) => Json(json!({ "authorization_info": {
            "authorizer_appid": appid,
            "authorizer_access_token": answer.value,
            "expires_in": answer.expires_in.as_secs(),
            "authorizer_refresh_token": refresh_token,
            "func_info": [{ "funcscope_category": { "id": 1 } }],
        }}))
        .into_response(),
        Err(_) => errcode(45009, "reach max api daily quota limit"),
    }
}

#[derive(Deserialize)]
pub(crate) struct AuthorizerTokenRequest {
    component_appid: Option<String>,
    authorizer_appid: Option<String>,
    authorizer_refresh_token: Option<String>,
}

pub(crate) async fn authorizer_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<ComponentTokenQuery>,
    Json(r): Json<AuthorizerTokenRequest>,
) -> Response {
    let fault = {
        let mut world = lock(&world);
        let app = r
            .authorizer_appid
            .as_deref()
            .and_then(|id| world.apps.get_mut(id));
        app.and_then(|app| app.take_call(Endpoint::AuthorizerToken))
    };
    with_fault(&world, fault, |world| {
        let component = r.component_appid.as_deref().unwrap_or_default();
        if let Err(refused) = check_component_token(world, component, q.token()) {
            return *refused;
        }
        let appid = r.authorizer_appid.as_deref().unwrap_or_default();
        let sent = r.authorizer_refresh_token.as_deref().unwrap_or_default();
        let Some(authorizer) = world
            .platforms
            .get_mut(component)
            .and_then(|p| p.authorizers.get_mut(appid))
        else {
            return errcode(61003, "component is not authorized by this account");
        };
        let Some(current) = authorizer.refresh_token.clone() else {
            return errcode(61003, "component is not authorized by this account");
        };
        let now = Instant::now();
        authorizer.previous.retain(|(_, until)| *until > now);
        let known = sent == current || authorizer.previous.iter().any(|(t, _)| t == sent);
        if !known {
            return errcode(61023, "refresh_token is invalid");
        }
        let refresh_token = if authorizer.rotate {
            let next = random("refreshtoken@@@");
            authorizer.previous.push((current, now + ROTATION_GRACE));
            authorizer.refresh_token = Some(next.clone());
            next
        } else {
            current
        };
        let Some(app) = world.apps.get_mut(appid) else {
            return errcode(61003, "component is not authorized by this account");
        };
        match app.answer(Endpoint::AuthorizerToken, "", &caller, false) {
            Ok(answer) => Json(json!({
                "authorizer_access_token": answer.value,
                "expires_in": answer.expires_in.as_secs(),
                "authorizer_refresh_token": refresh_token,
            }))
            .into_response(),
            Err(_) => errcode(45009, "reach max api daily quota limit"),
        }
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    component_appid: Option<String>,
    component_appsecret: Option<String>,
    component_verify_ticket: Option<String>,
}

pub(crate) async fn component_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Json(r): Json<TokenRequest>,
) -> Response {
    let fault = {
        let mut world = lock(&world);
        let app = r
            .component_appid
            .as_deref()
            .and_then(|id| world.apps.get_mut(id));
        app.and_then(|app| app.take_call(Endpoint::ComponentToken))
    };
    with_fault(&world, fault, |world| {
        let Some(appid) = r.component_appid.as_deref().filter(|s| !s.is_empty()) else {
            return errcode(41002, "appid missing");
        };
        let Some(platform) = world.platforms.get(appid).cloned() else {
            return match world.apps.contains_key(appid) {
                true => errcode(61011, "invalid component"),
                false => errcode(40013, "invalid appid"),
            };
        };
        let Some(app) = world.apps.get_mut(appid) else {
            return errcode(40013, "invalid appid");
        };
        let Some(secret) = r.component_appsecret.as_deref().filter(|s| !s.is_empty()) else {
            return errcode(41004, "appsecret missing");
        };
        if secret != app.config.secret {
            return errcode(40125, "invalid appsecret");
        }
        let ticket = r.component_verify_ticket.as_deref().unwrap_or_default();
        let pushed = platform.tickets.iter().find(|(t, _)| t == ticket);
        match pushed {
            None => return errcode(61006, "component ticket is invalid"),
            Some((_, at))
                if SystemTime::now().duration_since(*at).unwrap_or_default()
                    >= platform.ticket_life =>
            {
                return errcode(61005, "component ticket is expired")
            }
            Some(_) => {}
        }
        let answer = app.answer(Endpoint::ComponentToken, "", &caller, false);
        credential_json(answer, "component_access_token", false)
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct StartPushRequest {
    component_appid: Option<String>,
    component_secret: Option<String>,
}

pub(crate) async fn start_push_ticket(
    State(world): State<Shared>,
    Json(r): Json<StartPushRequest>,
) -> Response {
    let mut world = lock(&world);
    let appid = r.component_appid.as_deref().unwrap_or_default();
    let secret_ok = world
        .apps
        .get(appid)
        .is_some_and(|app| r.component_secret.as_deref() == Some(app.config.secret.as_str()));
    let Some(platform) = world.platforms.get_mut(appid) else {
        return errcode(40013, "invalid appid");
    };
    if !secret_ok {
        return errcode(40125, "invalid appsecret");
    }
    platform.push_requests += 1;
    Json(json!({ "errcode": 0, "errmsg": "ok" })).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::{AppConfig, Endpoint, FakeWechat};

    const COMPONENT: &str = "wxcomponent0000001";
    const SECRET: &str = "component-secret";

    async fn post(fake: &FakeWechat, path: &str, body: Value) -> Value {
        let answer = reqwest::Client::new()
            .post(format!("{}{path}", fake.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(answer.status(), 200, "WeChat answers errors with HTTP 200");
        serde_json::from_str(&answer.text().await.expect("body")).expect("JSON")
    }

    async fn token(fake: &FakeWechat, appid: &str, secret: &str, ticket: &str) -> Value {
        let body = json!({
            "component_appid": appid,
            "component_appsecret": secret,
            "component_verify_ticket": ticket,
        });
        post(fake, Endpoint::ComponentToken.cgi_path(), body).await
    }

    async fn fake() -> FakeWechat {
        let fake = FakeWechat::start().await.expect("fake");
        fake.add_component(AppConfig::new(COMPONENT, SECRET));
        fake.add_app(AppConfig::new("wxplainaccount0001", "s"));
        fake
    }

    #[tokio::test]
    async fn a_component_token_needs_a_ticket_wechat_pushed_and_rotates_with_overlap() {
        let fake = fake().await;
        let refused = token(&fake, COMPONENT, SECRET, "ticket@@@never-pushed").await;
        assert_eq!(refused["errcode"], 61006, "{refused}");
        assert_eq!(token(&fake, COMPONENT, SECRET, "").await["errcode"], 61006);

        fake.pushed_verify_ticket(COMPONENT, "ticket@@@one");
        let first = token(&fake, COMPONENT, SECRET, "ticket@@@one").await;
        let first = first["component_access_token"]
            .as_str()
            .expect("a token")
            .to_owned();
        let second = token(&fake, COMPONENT, SECRET, "ticket@@@one").await;
        assert_eq!(second["expires_in"], 7200);
        let second = second["component_access_token"].as_str().expect("a token");
        assert_ne!(first, second, "a new token every call");
        assert!(fake.is_accepted(second));
        assert!(
            fake.is_accepted(&first),
            "the previous one works for the overlap"
        );
        assert_eq!(fake.calls(COMPONENT, Endpoint::ComponentToken), 4);
    }

    #[tokio::test]
    async fn a_ticket_past_its_life_is_expired() {
        let fake = fake().await;
        fake.pushed_verify_ticket(COMPONENT, "ticket@@@old");
        fake.set_ticket_life(COMPONENT, Duration::ZERO);
        let refused = token(&fake, COMPONENT, SECRET, "ticket@@@old").await;
        assert_eq!(refused["errcode"], 61005, "{refused}");
        assert!(refused["errmsg"]
            .as_str()
            .expect("errmsg")
            .ends_with("rid: fake"));
    }

    #[tokio::test]
    async fn wrong_credentials_get_wechats_errcodes() {
        let fake = fake().await;
        fake.pushed_verify_ticket(COMPONENT, "ticket@@@t");
        let errcode = |v: Value| v["errcode"].as_i64();
        assert_eq!(
            errcode(token(&fake, COMPONENT, "wrong", "ticket@@@t").await),
            Some(40125)
        );
        assert_eq!(
            errcode(token(&fake, COMPONENT, "", "ticket@@@t").await),
            Some(41004)
        );
        assert_eq!(
            errcode(token(&fake, "", SECRET, "ticket@@@t").await),
            Some(41002)
        );
        assert_eq!(
            errcode(token(&fake, "wxnobody000000001", SECRET, "t").await),
            Some(40013)
        );
        let account = token(&fake, "wxplainaccount0001", "s", "ticket@@@t").await;
        assert_eq!(
            errcode(account),
            Some(61011),
            "an account is not a component"
        );
    }

    #[tokio::test]
    async fn the_component_token_has_its_own_daily_quota() {
        let fake = fake().await;
        fake.set_behaviour(COMPONENT, Endpoint::ComponentToken, |b| b.daily_quota = 1);
        fake.pushed_verify_ticket(COMPONENT, "ticket@@@q");
        assert!(
            token(&fake, COMPONENT, SECRET, "ticket@@@q").await["component_access_token"]
                .is_string()
        );
        let spent = token(&fake, COMPONENT, SECRET, "ticket@@@q").await;
        assert_eq!(spent["errcode"], 45009, "{spent}");
    }

    /// A component token, minted with a pushed ticket.
    async fn component_token(fake: &FakeWechat) -> String {
        fake.pushed_verify_ticket(COMPONENT, "ticket@@@for-calls");
        let answer = token(fake, COMPONENT, SECRET, "ticket@@@for-calls").await;
        answer["component_access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    async fn query_auth(fake: &FakeWechat, token: &str, code: &str) -> Value {
        let path = format!("/cgi-bin/component/api_query_auth?component_access_token={token}");
        let body = json!({ "component_appid": COMPONENT, "authorization_code": code });
        post(fake, &path, body).await
    }

    async fn authorizer_token(fake: &FakeWechat, token: &str, appid: &str, rt: &str) -> Value {
        // Newer docs write `access_token=`: both are accepted.
        let path = format!("/cgi-bin/component/api_authorizer_token?access_token={token}");
        let body = json!({
            "component_appid": COMPONENT,
            "authorizer_appid": appid,
            "authorizer_refresh_token": rt,
        });
        post(fake, &path, body).await
    }

    const AUTHORIZER: &str = "wxauthorizer000001";

    #[tokio::test]
    async fn a_code_is_exchanged_once_for_the_first_token_and_the_refresh_token() {
        let fake = fake().await;
        let token = component_token(&fake).await;
        let code = fake.authorize(COMPONENT, AUTHORIZER);
        assert_eq!(
            query_auth(&fake, "not-a-token", &code).await["errcode"],
            40001
        );
        let info = query_auth(&fake, &token, &code).await;
        let info = &info["authorization_info"];
        assert_eq!(info["authorizer_appid"], AUTHORIZER);
        let first = info["authorizer_access_token"].as_str().expect("a token");
        assert!(fake.is_accepted(first), "accepted like an account's token");
        assert_eq!(
            info["authorizer_refresh_token"].as_str(),
            fake.refresh_token_of(COMPONENT, AUTHORIZER).as_deref()
        );
        assert_eq!(
            query_auth(&fake, &token, &code).await["errcode"],
            61010,
            "used"
        );
        assert_eq!(
            query_auth(&fake, &token, "queryauthcode@@@nope").await["errcode"],
            61009
        );
    }

    #[tokio::test]
    async fn the_refresh_token_is_echoed_or_rotated_and_dies_with_the_authorization() {
        let fake = fake().await;
        let token = component_token(&fake).await;
        fake.authorize(COMPONENT, AUTHORIZER);
        let rt = fake
            .refresh_token_of(COMPONENT, AUTHORIZER)
            .expect("authorized");
        let answer = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
        assert_eq!(
            answer["authorizer_refresh_token"].as_str(),
            Some(rt.as_str()),
            "echoed"
        );
        let first = answer["authorizer_access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        assert_eq!(
            authorizer_token(&fake, &token, AUTHORIZER, "refreshtoken@@@wrong").await["errcode"],
            61023
        );

        fake.rotate_refresh_tokens(COMPONENT, AUTHORIZER, true);
        let rotated = authorizer_token(&fake, &token, AUTHORIZER, &rt).await;
        let next = rotated["authorizer_refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
        assert_ne!(next, rt, "rotated");
        let second = rotated["authorizer_access_token"].as_str().expect("token");
        assert!(
            fake.is_accepted(second) && fake.is_accepted(&first),
            "overlap"
        );
        // The replaced one still works for a grace period; the new one too.
        assert!(
            authorizer_token(&fake, &token, AUTHORIZER, &rt).await["authorizer_access_token"]
                .is_string()
        );
        assert_eq!(fake.calls(AUTHORIZER, Endpoint::AuthorizerToken), 4);

        fake.unauthorize(COMPONENT, AUTHORIZER);
        assert!(!fake.is_accepted(second), "its tokens die with it");
        let current = fake.refresh_token_of(COMPONENT, AUTHORIZER);
        assert_eq!(current, None);
        assert_eq!(
            authorizer_token(&fake, &token, AUTHORIZER, &next).await["errcode"],
            61003
        );
        assert_eq!(
            authorizer_token(&fake, &token, "wxnobody000000001", &next).await["errcode"],
            61003
        );
    }

    #[tokio::test]
    async fn start_push_ticket_is_counted_for_a_component_only() {
        let fake = fake().await;
        let path = "/cgi-bin/component/api_start_push_ticket";
        let body = json!({ "component_appid": COMPONENT, "component_secret": SECRET });
        assert_eq!(
            post(&fake, path, body).await,
            json!({"errcode": 0, "errmsg": "ok"})
        );
        let unknown = json!({ "component_appid": "wxnobody000000001", "component_secret": SECRET });
        assert_eq!(post(&fake, path, unknown).await["errcode"], 40013);
        let wrong = json!({ "component_appid": COMPONENT, "component_secret": "wrong" });
        assert_eq!(post(&fake, path, wrong).await["errcode"], 40125);
        assert_eq!(fake.start_push_requests(COMPONENT), 1);
    }
}
