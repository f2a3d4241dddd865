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
//! Which tickets WeChat pushed is told by the test
//! ([`crate::FakeWechat::pushed_verify_ticket`]): the pushes themselves go
//! through [`crate::component`]'s sender.

use std::time::{Duration, SystemTime};

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::handlers::{credential_json, errcode, with_fault, Caller};
use crate::model::Endpoint;
use crate::{lock, Shared};

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
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            tickets: Vec::new(),
            ticket_life: TICKET_LIFE,
            push_requests: 0,
        }
    }
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
