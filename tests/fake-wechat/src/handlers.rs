//! The HTTP side: WeChat's request shapes and errcodes, faults, and the
//! business API that says whether a token is accepted.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::model::{Answer, App, Endpoint, Fault, Refusal};
use crate::{lock, Shared, World};

/// Which base URL a request came in on.
#[derive(Clone)]
pub(crate) struct Caller(pub(crate) Arc<str>);

pub(crate) fn router(world: Shared, caller: &str) -> Router {
    Router::new()
        .route(Endpoint::Token.cgi_path(), get(token))
        .route(Endpoint::StableToken.cgi_path(), post(stable_token))
        .route(Endpoint::WecomToken.cgi_path(), get(wecom_token))
        .route(Endpoint::GetTicket.cgi_path(), get(ticket))
        .route(
            Endpoint::WecomJsapiTicket.cgi_path(),
            get(wecom_jsapi_ticket),
        )
        .route(Endpoint::WecomAgentConfigTicket.cgi_path(), get(ticket))
        .route("/cgi-bin/getcallbackip", get(callback_ip))
        .merge(crate::platform_handlers::routes())
        .merge(crate::openapi::routes())
        .layer(Extension(Caller(caller.into())))
        .with_state(world)
}

pub(crate) fn errcode(code: i64, errmsg: &str) -> Response {
    Json(json!({ "errcode": code, "errmsg": format!("{errmsg} rid: fake") })).into_response()
}

/// An errcode and its errmsg, before it becomes a response.
type Refused = (i64, &'static str);

fn refused((code, errmsg): Refused) -> Response {
    errcode(code, errmsg)
}

const INVALID_TOKEN: Refused = (
    40001,
    "invalid credential, access_token is invalid or not latest",
);

fn invalid_token() -> Response {
    refused(INVALID_TOKEN)
}

fn fault_response(fault: Fault) -> Option<Response> {
    match fault {
        Fault::Errcode(code) => Some(errcode(code, "injected by fake WeChat")),
        Fault::Http(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Some((status, "<html><body>error</body></html>").into_response())
        }
        Fault::Body(body) => Some(body.into_response()),
        Fault::Reset => {
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok(r#"{"access_token":"cut-he"#),
                Err(std::io::Error::other("connection reset by the fake")),
            ];
            let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
            Some(body.into_response())
        }
        Fault::Delay(_) | Fault::AnswerLate(_) => None,
    }
}

/// Applies the call's fault, if any, around `serve` (which checks the
/// request and answers it): a delay before, a late answer after, or an
/// answer of its own instead.
pub(crate) async fn with_fault(
    world: &Shared,
    fault: Option<Fault>,
    serve: impl FnOnce(&mut World) -> Response,
) -> Response {
    match fault {
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::AnswerLate(delay)) => {
            let response = serve(&mut lock(world));
            tokio::time::sleep(delay).await;
            return response;
        }
        Some(fault) => {
            if let Some(response) = fault_response(fault) {
                return response;
            }
        }
        None => {}
    }
    serve(&mut lock(world))
}

/// The answer to a credential call, in WeChat's shape for `field`.
pub(crate) fn credential_json(
    answer: Result<Answer, Refusal>,
    field: &str,
    with_errcode: bool,
) -> Response {
    match answer {
        Ok(Answer { value, expires_in }) => {
            let mut body = json!({ field: value, "expires_in": expires_in.as_secs() });
            if with_errcode {
                body["errcode"] = json!(0);
                body["errmsg"] = json!("ok");
            }
            Json(body).into_response()
        }
        Err(Refusal::QuotaSpent) => errcode(45009, "reach max api daily quota limit"),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

async fn token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let fault = {
        let mut world = lock(&world);
        let app = q.appid.as_deref().and_then(|id| world.apps.get_mut(id));
        app.and_then(|app| app.take_call(Endpoint::Token))
    };
    with_fault(&world, fault, |world| {
        if q.grant_type.as_deref() != Some("client_credential") {
            return errcode(40002, "invalid grant_type");
        }
        let Some(appid) = q.appid.as_deref().filter(|s| !s.is_empty()) else {
            return errcode(41002, "appid missing");
        };
        let Some(secret) = q.secret.as_deref().filter(|s| !s.is_empty()) else {
            return errcode(41004, "appsecret missing");
        };
        let Some(app) = world.apps.get_mut(appid) else {
            return errcode(40013, "invalid appid");
        };
        if secret != app.config.secret {
            return invalid_token();
        }
        let answer = app.answer(Endpoint::Token, "", &caller, false);
        credential_json(answer, "access_token", false)
    })
    .await
}

#[derive(Deserialize)]
struct StableRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

async fn stable_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Json(r): Json<StableRequest>,
) -> Response {
    let fault = {
        let mut world = lock(&world);
        let app = r.appid.as_deref().and_then(|id| world.apps.get_mut(id));
        app.and_then(|app| app.take_call(Endpoint::StableToken))
    };
    with_fault(&world, fault, |world| {
        if r.grant_type.as_deref() != Some("client_credential") {
            return errcode(40002, "invalid grant_type");
        }
        let Some(app) = r.appid.as_deref().and_then(|id| world.apps.get_mut(id)) else {
            return errcode(40013, "invalid appid");
        };
        if r.secret.as_deref() != Some(app.config.secret.as_str()) {
            return errcode(40001, "invalid credential");
        }
        let answer = app.answer(Endpoint::StableToken, "", &caller, r.force_refresh);
        credential_json(answer, "access_token", false)
    })
    .await
}

#[derive(Deserialize)]
struct WecomTokenQuery {
    corpid: Option<String>,
    corpsecret: Option<String>,
}

/// The WeCom app with this corpid and secret, or WeCom's errcode.
fn wecom_app<'w>(world: &'w mut World, q: &WecomTokenQuery) -> Result<&'w mut App, Refused> {
    let Some(corpid) = q.corpid.as_deref().filter(|s| !s.is_empty()) else {
        return Err((41002, "corpid missing"));
    };
    let Some(secret) = q.corpsecret.as_deref().filter(|s| !s.is_empty()) else {
        return Err((41004, "corpsecret missing"));
    };
    let corp = |app: &App| app.config.corp_id.as_deref() == Some(corpid);
    if !world.apps.values().any(corp) {
        return Err((40013, "invalid corpid"));
    }
    world
        .apps
        .values_mut()
        .find(|app| corp(app) && app.config.secret == secret)
        .ok_or((40001, "invalid secret"))
}

async fn wecom_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<WecomTokenQuery>,
) -> Response {
    let fault = match wecom_app(&mut lock(&world), &q) {
        Ok(app) => app.take_call(Endpoint::WecomToken),
        Err(refusal) => return refused(refusal),
    };
    with_fault(&world, fault, |world| match wecom_app(world, &q) {
        Ok(app) => {
            let answer = app.answer(Endpoint::WecomToken, "", &caller, false);
            credential_json(answer, "access_token", true)
        }
        Err(refusal) => refused(refusal),
    })
    .await
}

#[derive(Deserialize)]
struct TicketQuery {
    access_token: Option<String>,
    #[serde(rename = "type")]
    ticket_type: Option<String>,
}

async fn ticket(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TicketQuery>,
) -> Response {
    let (endpoint, series) = match q.ticket_type.as_deref() {
        Some("jsapi") => (Endpoint::GetTicket, "jsapi"),
        Some("wx_card") => (Endpoint::GetTicket, "wx_card"),
        Some("agent_config") => (Endpoint::WecomAgentConfigTicket, "agent_config"),
        _ => return errcode(40097, "invalid args"),
    };
    issue_ticket(&world, q.access_token, endpoint, series, caller).await
}

async fn wecom_jsapi_ticket(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<UseQuery>,
) -> Response {
    issue_ticket(
        &world,
        q.access_token,
        Endpoint::WecomJsapiTicket,
        "jsapi",
        caller,
    )
    .await
}

/// The app that issued `access_token`, if it is accepted right now; else
/// WeChat's errcode for a token that expired (42001) or was replaced (40001).
fn token_owner<'w>(world: &'w mut World, access_token: &str) -> Result<&'w mut App, Refused> {
    let now = Instant::now();
    let app = world
        .apps
        .values_mut()
        .find(|app| app.token(access_token).is_some())
        .ok_or(INVALID_TOKEN)?;
    match app.token(access_token) {
        Some(t) if t.accepted_at(now) => Ok(app),
        Some(t) if now >= t.expires_at => Err((42001, "access_token expired")),
        _ => Err(INVALID_TOKEN),
    }
}

async fn issue_ticket(
    world: &Shared,
    access_token: Option<String>,
    endpoint: Endpoint,
    series: &'static str,
    caller: Arc<str>,
) -> Response {
    let Some(access_token) = access_token else {
        return errcode(41001, "access_token missing");
    };
    let fault = match token_owner(&mut lock(world), &access_token) {
        Ok(app) => app.take_call(endpoint),
        Err(refusal) => return refused(refusal),
    };
    with_fault(world, fault, |world| {
        match token_owner(world, &access_token) {
            Ok(app) => {
                credential_json(app.answer(endpoint, series, &caller, false), "ticket", true)
            }
            Err(refusal) => refused(refusal),
        }
    })
    .await
}

#[derive(Deserialize)]
struct UseQuery {
    access_token: Option<String>,
}

async fn callback_ip(State(world): State<Shared>, Query(q): Query<UseQuery>) -> Response {
    let Some(token) = q.access_token else {
        return errcode(41001, "access_token missing");
    };
    let world = lock(&world);
    let now = Instant::now();
    let found = world.apps.values().find_map(|app| app.token(&token));
    match found {
        Some(i) if i.accepted_at(now) => Json(json!({ "ip_list": ["127.0.0.1"] })).into_response(),
        Some(i) if now >= i.expires_at => errcode(42001, "access_token expired"),
        _ => invalid_token(),
    }
}
