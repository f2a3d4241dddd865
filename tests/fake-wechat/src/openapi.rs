//! WeChat's quota administration, as `wxtokend quota` meets it:
//!
//! - `POST /cgi-bin/openapi/quota/get?access_token=…` with `{"cgi_path": …}`
//!   answers `quota: {daily_limit, used, remain}` for the token's app, for
//!   the paths [`crate::quota_of`] knows; 76021 for others, 76022 for
//!   `/sns/` paths (WeChat keeps no quota there).
//! - `POST /cgi-bin/clear_quota?access_token=…` with `{"appid": …}` resets
//!   the app's counts ([`crate::clear_quotas`]), 10 times; then 48006.
//! - `POST /cgi-bin/clear_quota/v2` takes `appid` and `appsecret` from the
//!   JSON body or the query string (WeChat's page shows both), checks the
//!   secret, and counts against the same 10.
//!
//! A token must be one WeChat accepts right now (40001 if replaced or
//! unknown, 42001 if expired), as for every business API. The "month" is
//! the fake's lifetime.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::handlers::errcode;
use crate::{clear_quotas, lock, quota_of, App, FakeWechat, Shared, World};

/// Clears WeChat allows per account per month.
const CLEARS_PER_MONTH: u32 = 10;

/// Per appid: what the tests count.
#[derive(Default)]
pub(crate) struct Counters {
    /// Clears that took effect, either way.
    clears: HashMap<String, u32>,
    /// Of those, the ones made with the AppSecret (`clear_quota/v2`).
    clears_with_secret: HashMap<String, u32>,
    /// `openapi/quota/get` calls answered with a quota.
    quota_queries: HashMap<String, u32>,
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/cgi-bin/openapi/quota/get", post(quota_get))
        .route("/cgi-bin/clear_quota", post(clear_quota))
        .route("/cgi-bin/clear_quota/v2", post(clear_quota_v2))
}

impl FakeWechat {
    /// Quota clears of `appid` that took effect (with a token or the secret).
    pub fn clears(&self, appid: &str) -> u32 {
        count(&lock(&self.world).openapi.clears, appid)
    }

    /// Of those, the ones made with the AppSecret (`clear_quota/v2`).
    pub fn clears_with_secret(&self, appid: &str) -> u32 {
        count(&lock(&self.world).openapi.clears_with_secret, appid)
    }

    /// Quotas shown for `appid` (`openapi/quota/get` answered).
    pub fn quota_queries(&self, appid: &str) -> u32 {
        count(&lock(&self.world).openapi.quota_queries, appid)
    }

    /// WeChat's count for `appid` and `cgi_path` now, as `quota/get` would
    /// answer it: (daily limit, used).
    pub fn quota(&self, appid: &str, cgi_path: &str) -> Option<(u32, u32)> {
        lock(&self.world)
            .apps
            .get(appid)
            .and_then(|app| quota_of(app, cgi_path))
    }
}

fn count(counts: &HashMap<String, u32>, appid: &str) -> u32 {
    counts.get(appid).copied().unwrap_or(0)
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// WeChat's errcode and errmsg for a call it refuses.
type Refusal = (i64, &'static str);

fn refuse((code, errmsg): Refusal) -> Response {
    errcode(code, errmsg)
}

/// The JSON body, or WeChat's 47001 for one it cannot read.
fn json_body(body: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|_| (47001, "data format error"))
}

fn field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The appid whose token this is, if WeChat accepts it right now.
fn token_owner(world: &World, token: Option<&str>) -> Result<String, Refusal> {
    let Some(token) = token else {
        return Err((41001, "access_token missing"));
    };
    let now = Instant::now();
    // An Open Platform component's token shows its quotas too (DOC
    // getApiQuota), as an authorizer's token shows the authorizer's.
    let found = world.apps.iter().find_map(|(id, app)| {
        app.token(token)
            .or_else(|| app.component_token(token))
            .map(|i| (id, i.accepted_at(now), now >= i.expires_at))
    });
    match found {
        Some((id, true, _)) => Ok(id.clone()),
        Some((_, false, true)) => Err((42001, "access_token expired")),
        _ => Err((
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
    }
}

async fn quota_get(
    State(world): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let mut world = lock(&world);
    let appid = match token_owner(&world, q.access_token.as_deref()) {
        Ok(appid) => appid,
        Err(refusal) => return refuse(refusal),
    };
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(refusal) => return refuse(refusal),
    };
    let path = field(&body, "cgi_path").unwrap_or_default();
    if path.contains("/sns/") {
        return errcode(76022, "could not use this cgi_path, no permission");
    }
    let Some((daily_limit, used)) = world.apps.get(&appid).and_then(|a| quota_of(a, path)) else {
        return errcode(76021, "cgi_path not found, please check");
    };
    *world.openapi.quota_queries.entry(appid).or_default() += 1;
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "quota": {
            "daily_limit": daily_limit,
            "used": used,
            "remain": daily_limit.saturating_sub(used),
        },
    }))
    .into_response()
}

async fn clear_quota(
    State(world): State<Shared>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let mut world = lock(&world);
    let owner = match token_owner(&world, q.access_token.as_deref()) {
        Ok(appid) => appid,
        Err(refusal) => return refuse(refusal),
    };
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(refusal) => return refuse(refusal),
    };
    match field(&body, "appid") {
        None => errcode(41002, "appid missing"),
        Some(appid) if appid != owner => errcode(40013, "invalid appid"),
        Some(_) => clear(&mut world, &owner, false),
    }
}

#[derive(Deserialize)]
struct SecretQuery {
    appid: Option<String>,
    appsecret: Option<String>,
}

async fn clear_quota_v2(
    State(world): State<Shared>,
    Query(q): Query<SecretQuery>,
    body: Bytes,
) -> Response {
    // An empty body is fine when the query string carries both.
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let appid = q
        .appid
        .filter(|s| !s.is_empty())
        .or_else(|| field(&body, "appid").map(str::to_owned));
    let secret = q
        .appsecret
        .filter(|s| !s.is_empty())
        .or_else(|| field(&body, "appsecret").map(str::to_owned));
    let Some(appid) = appid else {
        return errcode(41002, "appid missing");
    };
    let Some(secret) = secret else {
        return errcode(41004, "appsecret missing");
    };
    let mut world = lock(&world);
    let Some(app) = world.apps.get(&appid) else {
        return errcode(40013, "invalid appid");
    };
    if app.config.secret != secret {
        return errcode(40001, "invalid credential, appsecret is invalid");
    }
    clear(&mut world, &appid, true)
}

/// One clear, if this month's 10 are not used yet.
fn clear(world: &mut World, appid: &str, with_secret: bool) -> Response {
    if count(&world.openapi.clears, appid) >= CLEARS_PER_MONTH {
        return errcode(48006, "forbid to clear quota because of reaching the limit");
    }
    let app: Option<&mut App> = world.apps.get_mut(appid);
    if let Some(app) = app {
        clear_quotas(app);
    }
    *world.openapi.clears.entry(appid.to_owned()).or_default() += 1;
    if with_secret {
        *world
            .openapi
            .clears_with_secret
            .entry(appid.to_owned())
            .or_default() += 1;
    }
    Json(json!({ "errcode": 0, "errmsg": "ok" })).into_response()
}
