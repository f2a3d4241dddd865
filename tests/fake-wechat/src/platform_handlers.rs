//! The Open Platform's endpoints, as WeChat documents them (design-issue15
//! §1.3, §1.5). All answer HTTP 200, errors as `{"errcode", "errmsg": "…
//! rid: fake"}`; a body that is not JSON is 47001. Each is an [`Endpoint`]
//! with its own faults, quota and call counter.
//!
//! | endpoint | answers | refusals |
//! |---|---|---|
//! | `api_component_token` `{component_appid, component_appsecret, component_verify_ticket}` | a new `component_access_token` every call, the previous one working for its overlap | 41002 no appid, 40013 unknown, 61011 not a component, 41004 no secret, 40125 wrong one, 61006 a ticket never pushed (or none), 61005 one past its life, 45009 |
//! | `api_authorizer_token` `{component_appid, authorizer_appid, authorizer_refresh_token}` | a new `authorizer_access_token` (rotating like `/cgi-bin/token`), the refresh token echoed, or new in rotation mode | 61003 not authorized (never, or withdrawn), 61023 not its refresh token, 45009 on the authorizer's or the component's count |
//! | `api_query_auth` `{component_appid, authorization_code}` | `authorization_info` with a new authorizer token and the refresh token (neither without API permission) | 61009 unknown code, 61010 used, superseded or past its hour, 45009 |
//! | `api_get_authorizer_list` `{component_appid, offset, count}` | `{total_count, list: [{authorizer_appid, refresh_token, auth_time}]}`, `refresh_token` only once a code of the authorization was exchanged | 40097 count over 500 or negative numbers, 45009 |
//! | `api_create_preauthcode` `{component_appid}` | `{pre_auth_code, expires_in: 600}` | 45009 |
//! | `api_start_push_ticket` `{component_appid, component_secret}` | `ok` (pushes restarted, one sent now) or `in a normal state` (timed pushes running) | 40013, 41004, 40125, 45009 |
//!
//! Calls made with the component token take it as `component_access_token=`
//! or `access_token=` (newer docs): 41001 none, 42001 expired, 40001 any
//! other (another component's, replaced after its overlap, unknown); 41002
//! no `component_appid`, 40013 one that is not a component.

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::handlers::{errcode, with_fault, Caller};
use crate::model::{Endpoint, Fault};
use crate::platform::{CodeRefusal, RefreshRefusal};
use crate::{lock, Shared, World};

/// WeChat's errcode and errmsg for a call it refuses.
type Refused = (i64, &'static str);

const QUOTA_SPENT: Refused = (45009, "reach max api daily quota limit");
const NOT_AUTHORIZED: Refused = (61003, "component is not authorized by this account");
const LIST_MAX_COUNT: i64 = 500;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route(Endpoint::ComponentToken.cgi_path(), post(component_token))
        .route(Endpoint::AuthorizerToken.cgi_path(), post(authorizer_token))
        .route(Endpoint::QueryAuth.cgi_path(), post(query_auth))
        .route(Endpoint::AuthorizerList.cgi_path(), post(authorizer_list))
        .route(
            Endpoint::CreatePreauthcode.cgi_path(),
            post(create_preauthcode),
        )
        .route(
            Endpoint::StartPushTicket.cgi_path(),
            post(start_push_ticket),
        )
}

fn respond(answer: Result<Value, Refused>) -> Response {
    match answer {
        Ok(body) => Json(body).into_response(),
        Err((code, errmsg)) => errcode(code, errmsg),
    }
}

/// The JSON body, or WeChat's 47001.
fn request<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|_| (47001, "data format error"))
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

/// Counts a call of `endpoint` on each app of `appids` that exists (an
/// authorizer's, then its component's) and takes the first fault queued
/// or sticky on them, in that order.
fn take_calls(world: &Shared, endpoint: Endpoint, appids: &[Option<&str>]) -> Option<Fault> {
    let mut world = lock(world);
    let mut fault = None;
    for appid in appids.iter().flatten() {
        if let Some(app) = world.apps.get_mut(*appid) {
            let state = app.endpoint(endpoint);
            state.calls += 1;
            if fault.is_none() {
                fault = state.faults.pop_front().or_else(|| state.sticky.clone());
            }
        }
    }
    fault
}

/// 45009 unless each of `appids` has `endpoint`'s quota left; else the
/// call is counted on each.
fn spend(world: &mut World, endpoint: Endpoint, appids: &[&str]) -> Result<(), Refused> {
    let spent = appids.iter().any(|id| {
        world
            .apps
            .get_mut(*id)
            .is_some_and(|app| !app.has_quota(endpoint))
    });
    if spent {
        return Err(QUOTA_SPENT);
    }
    for id in appids {
        if let Some(app) = world.apps.get_mut(*id) {
            app.spend(endpoint, false).map_err(|_| QUOTA_SPENT)?;
        }
    }
    Ok(())
}

/// `?component_access_token=` (or `access_token=`, as newer docs write).
#[derive(Deserialize)]
struct TokenQuery {
    component_access_token: Option<String>,
    access_token: Option<String>,
}

impl TokenQuery {
    fn token(&self) -> Option<&str> {
        given(&self.component_access_token).or(given(&self.access_token))
    }
}

/// The call's component, if `token` is a token of it WeChat accepts now.
fn check_component(
    world: &World,
    component: Option<&str>,
    token: Option<&str>,
) -> Result<String, Refused> {
    let token = token.ok_or((41001, "access_token missing"))?;
    let component = component.ok_or((41002, "appid missing"))?;
    if !world.platforms.contains_key(component) {
        return Err((40013, "invalid appid"));
    }
    let now = Instant::now();
    let issued = world
        .apps
        .get(component)
        .and_then(|app| app.component_token(token));
    match issued {
        Some(i) if i.accepted_at(now) => Ok(component.to_owned()),
        Some(i) if now >= i.expires_at => Err((42001, "access_token expired")),
        _ => Err((
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
    }
}

#[derive(Deserialize)]
struct ComponentTokenRequest {
    component_appid: Option<String>,
    component_appsecret: Option<String>,
    component_verify_ticket: Option<String>,
}

async fn component_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Response {
    let r: ComponentTokenRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    let component = given(&r.component_appid);
    let fault = take_calls(&world, Endpoint::ComponentToken, &[component]);
    with_fault(&world, fault, |world| {
        respond(serve_component_token(world, &caller, &r))
    })
    .await
}

fn serve_component_token(
    world: &mut World,
    caller: &Arc<str>,
    r: &ComponentTokenRequest,
) -> Result<Value, Refused> {
    let appid = given(&r.component_appid).ok_or((41002, "appid missing"))?;
    let Some(platform) = world.platforms.get(appid) else {
        return Err(match world.apps.contains_key(appid) {
            true => (61011, "invalid component"),
            false => (40013, "invalid appid"),
        });
    };
    let secret = given(&r.component_appsecret).ok_or((41004, "appsecret missing"))?;
    let app = world.apps.get_mut(appid).ok_or((40013, "invalid appid"))?;
    if secret != app.config.secret {
        return Err((40125, "invalid appsecret"));
    }
    platform.check_ticket(r.component_verify_ticket.as_deref().unwrap_or_default())?;
    let answer = app
        .answer(Endpoint::ComponentToken, "", caller, false)
        .map_err(|_| QUOTA_SPENT)?;
    Ok(json!({
        "component_access_token": answer.value,
        "expires_in": answer.expires_in.as_secs(),
    }))
}

#[derive(Deserialize)]
struct AuthorizerTokenRequest {
    component_appid: Option<String>,
    authorizer_appid: Option<String>,
    authorizer_refresh_token: Option<String>,
}

async fn authorizer_token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let r: AuthorizerTokenRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    let appids = [given(&r.authorizer_appid), given(&r.component_appid)];
    let fault = take_calls(&world, Endpoint::AuthorizerToken, &appids);
    with_fault(&world, fault, |world| {
        respond(serve_authorizer_token(world, &caller, &q, &r))
    })
    .await
}

fn serve_authorizer_token(
    world: &mut World,
    caller: &Arc<str>,
    q: &TokenQuery,
    r: &AuthorizerTokenRequest,
) -> Result<Value, Refused> {
    let component = check_component(world, given(&r.component_appid), q.token())?;
    let appid = given(&r.authorizer_appid).ok_or((41002, "appid missing"))?;
    let sent = r.authorizer_refresh_token.as_deref().unwrap_or_default();
    // Checked before the quota counts the call, and the refresh token
    // rotates only for a call answered.
    world
        .platform(&component)
        .check_refresh(appid, sent)
        .map_err(|refusal| match refusal {
            RefreshRefusal::NotAuthorized => NOT_AUTHORIZED,
            RefreshRefusal::Invalid => (61023, "refresh_token is invalid"),
        })?;
    spend(world, Endpoint::AuthorizerToken, &[appid, &component])?;
    let refresh_token = world
        .platform(&component)
        .answer_refresh(appid)
        .ok_or(NOT_AUTHORIZED)?;
    let app = world.apps.get_mut(appid).ok_or(NOT_AUTHORIZED)?;
    let token = app.hand_out(Endpoint::AuthorizerToken, "", caller, false);
    Ok(json!({
        "authorizer_access_token": token.value,
        "expires_in": token.expires_in.as_secs(),
        "authorizer_refresh_token": refresh_token,
    }))
}

#[derive(Deserialize)]
struct QueryAuthRequest {
    component_appid: Option<String>,
    authorization_code: Option<String>,
}

async fn query_auth(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let r: QueryAuthRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    // The code names its authorizer, whose call it is.
    let authorizer = {
        let world = lock(&world);
        let code = r.authorization_code.as_deref().unwrap_or_default();
        world
            .platforms
            .values()
            .find_map(|p| p.codes.get(code).map(|c| c.authorizer.clone()))
    };
    let appids = [authorizer.as_deref(), given(&r.component_appid)];
    let fault = take_calls(&world, Endpoint::QueryAuth, &appids);
    with_fault(&world, fault, |world| {
        respond(serve_query_auth(world, &caller, &q, &r))
    })
    .await
}

fn serve_query_auth(
    world: &mut World,
    caller: &Arc<str>,
    q: &TokenQuery,
    r: &QueryAuthRequest,
) -> Result<Value, Refused> {
    let component = check_component(world, given(&r.component_appid), q.token())?;
    let code = r.authorization_code.as_deref().unwrap_or_default();
    let appid = world
        .platform(&component)
        .check_code(code)
        .map_err(|refusal| match refusal {
            CodeRefusal::Unknown => (61009, "code is invalid"),
            CodeRefusal::Expired => (61010, "code is expired"),
        })?;
    spend(world, Endpoint::QueryAuth, &[&appid, &component])?;
    let platform = world.platform(&component);
    platform.spend_code(code);
    let authorizer = platform.authorizers.get(&appid).ok_or(NOT_AUTHORIZED)?;
    let func_info = authorizer.func_info.clone();
    let refresh_token = authorizer.refresh_token.clone();
    let mut info = json!({
        "authorizer_appid": appid,
        "func_info": func_info
            .iter()
            .map(|id| json!({ "funcscope_category": { "id": id } }))
            .collect::<Vec<_>>(),
    });
    // "在授权的公众号/小程序具备 API 权限时,才有此返回值"
    if !func_info.is_empty() {
        let app = world.apps.get_mut(&appid).ok_or(NOT_AUTHORIZED)?;
        let token = app.hand_out(Endpoint::AuthorizerToken, "", caller, false);
        info["authorizer_access_token"] = json!(token.value);
        info["expires_in"] = json!(token.expires_in.as_secs());
        info["authorizer_refresh_token"] = json!(refresh_token);
    }
    Ok(json!({ "authorization_info": info }))
}

#[derive(Deserialize)]
struct ListRequest {
    component_appid: Option<String>,
    offset: Option<i64>,
    count: Option<i64>,
}

async fn authorizer_list(
    State(world): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let r: ListRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    let fault = take_calls(
        &world,
        Endpoint::AuthorizerList,
        &[given(&r.component_appid)],
    );
    with_fault(&world, fault, |world| {
        respond(serve_authorizer_list(world, &q, &r))
    })
    .await
}

fn serve_authorizer_list(
    world: &mut World,
    q: &TokenQuery,
    r: &ListRequest,
) -> Result<Value, Refused> {
    const INVALID_ARGS: Refused = (40097, "invalid args");
    let component = check_component(world, given(&r.component_appid), q.token())?;
    let offset = usize::try_from(r.offset.unwrap_or(0)).map_err(|_| INVALID_ARGS)?;
    let count = r
        .count
        .filter(|n| (0..=LIST_MAX_COUNT).contains(n))
        .ok_or(INVALID_ARGS)?;
    spend(world, Endpoint::AuthorizerList, &[&component])?;
    let platform = world.platform(&component);
    let total_count = platform.listed().count();
    let list: Vec<Value> = platform
        .listed()
        .skip(offset)
        .take(usize::try_from(count).unwrap_or_default())
        .map(|(appid, a)| {
            let auth_time = a.auth_time.duration_since(UNIX_EPOCH).unwrap_or_default();
            let mut entry = json!({
                "authorizer_appid": appid,
                "auth_time": auth_time.as_secs(),
            });
            if a.exchanged {
                entry["refresh_token"] = json!(a.refresh_token);
            }
            entry
        })
        .collect();
    Ok(json!({ "total_count": total_count, "list": list }))
}

#[derive(Deserialize)]
struct PreauthcodeRequest {
    component_appid: Option<String>,
}

async fn create_preauthcode(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let r: PreauthcodeRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    let component = given(&r.component_appid);
    let fault = take_calls(&world, Endpoint::CreatePreauthcode, &[component]);
    with_fault(&world, fault, |world| {
        let answer = check_component(world, component, q.token()).and_then(|component| {
            let app = world
                .apps
                .get_mut(&component)
                .ok_or((40013, "invalid appid"))?;
            app.answer(Endpoint::CreatePreauthcode, "", &caller, false)
                .map_err(|_| QUOTA_SPENT)
        });
        respond(answer.map(
            |code| json!({ "pre_auth_code": code.value, "expires_in": code.expires_in.as_secs() }),
        ))
    })
    .await
}

#[derive(Deserialize)]
struct StartPushRequest {
    component_appid: Option<String>,
    component_secret: Option<String>,
}

async fn start_push_ticket(State(world): State<Shared>, body: Bytes) -> Response {
    let r: StartPushRequest = match request(&body) {
        Ok(r) => r,
        Err(refused) => return respond(Err(refused)),
    };
    let component = given(&r.component_appid);
    let fault = take_calls(&world, Endpoint::StartPushTicket, &[component]);
    with_fault(&world, fault, |world| {
        respond(serve_start_push_ticket(world, &r))
    })
    .await
}

fn serve_start_push_ticket(world: &mut World, r: &StartPushRequest) -> Result<Value, Refused> {
    let appid = given(&r.component_appid).unwrap_or_default();
    let secret = world.apps.get(appid).map(|app| app.config.secret.clone());
    let Some(secret) = secret.filter(|_| world.platforms.contains_key(appid)) else {
        return Err((40013, "invalid appid"));
    };
    let sent = given(&r.component_secret).ok_or((41004, "appsecret missing"))?;
    if sent != secret {
        return Err((40125, "invalid appsecret"));
    }
    spend(world, Endpoint::StartPushTicket, &[appid])?;
    let pushes = &mut world.platform(appid).pushes;
    if pushes.timed && !pushes.paused {
        return Ok(json!({ "errcode": 0, "errmsg": "in a normal state" }));
    }
    pushes.paused = false;
    pushes.ticket_now();
    world.platform(appid).push_requests += 1;
    Ok(json!({ "errcode": 0, "errmsg": "ok" }))
}
