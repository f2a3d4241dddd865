//! A stand-in for WeChat's token API that follows WeChat's rules, for
//! wxtokend's tests and its local sandbox.
//!
//! - `GET /cgi-bin/token` issues a random token per app. Issuing one makes
//!   every earlier token of that app invalid after `overlap`.
//! - Wrong parameters answer WeChat's errcodes (40002, 41002, 41004, 40013,
//!   40001); a spent daily quota answers 45009.
//! - Faults can be queued per app (one per call) or made sticky: any errcode,
//!   an HTTP status, a raw body, or a delay before answering.
//! - `GET /cgi-bin/getcallbackip?access_token=…` is a business API: it says
//!   whether a token is accepted right now (40001 if replaced, 42001 if expired).
//! - `POST /cgi-bin/stable_token` returns the same token until its last
//!   `stable_window`; `force_refresh` issues a new one (the old one keeps
//!   working for `overlap`). Classic and stable tokens are independent.
//! - `GET /cgi-bin/ticket/getticket?type=jsapi|wx_card`, WeCom's
//!   `GET /cgi-bin/get_jsapi_ticket` and `GET /cgi-bin/ticket/get?type=agent_config`
//!   issue tickets, only for an access token accepted right now.
//! - WeCom's `GET /cgi-bin/gettoken?corpid=…&corpsecret=…` returns the same
//!   token while it is valid; [`FakeWechat::invalidate_tokens`] kills tokens
//!   early, as WeCom may.
//! - `POST /cgi-bin/openapi/quota/get`, `/cgi-bin/clear_quota` and
//!   `/cgi-bin/clear_quota/v2` show and clear quotas (10 clears; [`openapi`]).
//! - Callers can be told apart: [`FakeWechat::caller_url`] gives each caller
//!   (a daemon replica) its own base URL, and [`FakeWechat::issued_by`] says
//!   who got each token.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::json;

mod openapi;

/// One registered app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub appid: String,
    pub secret: String,
    /// `expires_in` of issued tokens.
    pub expires_in: Duration,
    /// How long a replaced token keeps working.
    pub overlap: Duration,
    /// Successful token calls allowed before 45009.
    pub daily_quota: u32,
    /// `expires_in` of issued tickets.
    pub ticket_expires_in: Duration,
    /// stable_token hands out a new token only in its last `stable_window`.
    pub stable_window: Duration,
    /// WeCom apps: the corpid (the app id is `corpid/agentid`).
    pub corp_id: Option<String>,
}

impl AppConfig {
    /// WeChat's real numbers: 7200 s tokens, 5 min overlap, 2000 calls a day.
    pub fn new(appid: &str, secret: &str) -> Self {
        Self {
            appid: appid.into(),
            secret: secret.into(),
            expires_in: Duration::from_secs(7200),
            overlap: Duration::from_secs(300),
            daily_quota: 2000,
            ticket_expires_in: Duration::from_secs(7200),
            stable_window: Duration::from_secs(300),
            corp_id: None,
        }
    }

    /// A WeCom app: `id` is `corpid/agentid`, `secret` the app's secret.
    pub fn wecom(id: &str, secret: &str) -> Self {
        let corp = id.split_once('/').map_or(id, |(corp, _)| corp).to_string();
        Self {
            corp_id: Some(corp),
            ..Self::new(id, secret)
        }
    }

    pub fn ticket_expires_in(mut self, expires_in: Duration) -> Self {
        self.ticket_expires_in = expires_in;
        self
    }

    pub fn stable_window(mut self, window: Duration) -> Self {
        self.stable_window = window;
        self
    }

    pub fn expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = expires_in;
        self
    }

    pub fn overlap(mut self, overlap: Duration) -> Self {
        self.overlap = overlap;
        self
    }

    pub fn daily_quota(mut self, quota: u32) -> Self {
        self.daily_quota = quota;
        self
    }
}

/// A misbehaviour for one call (queued) or every call (sticky).
#[derive(Debug, Clone)]
pub enum Fault {
    /// `{"errcode": N, "errmsg": "..."}` with HTTP 200, as WeChat does.
    Errcode(i64),
    /// This HTTP status with a small HTML body.
    Http(u16),
    /// This exact body with HTTP 200.
    Body(String),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Issue the token at once (rotating the previous one), but answer only
    /// after this long: a response stuck in the network.
    AnswerLate(Duration),
    /// Start a 200 answer, then drop the connection in the middle of the body.
    Reset,
}

struct Issued {
    token: String,
    /// The caller's name (see [`FakeWechat::caller_url`]); empty by default.
    caller: Arc<str>,
    expires_at: Instant,
    replaced_until: Option<Instant>,
}

impl Issued {
    fn accepted_at(&self, now: Instant) -> bool {
        now < self.expires_at && self.replaced_until.is_none_or(|until| now < until)
    }
}

struct App {
    config: AppConfig,
    token_calls: u32,
    quota_used: u32,
    issued: Vec<Issued>,
    faults: VecDeque<Fault>,
    sticky: Option<Fault>,
    stable_calls: u32,
    forced_stable_calls: u32,
    stable_issued: Vec<Issued>,
    /// (ticket type, ticket)
    tickets: Vec<(String, Issued)>,
}

impl App {
    fn all_tokens(&self) -> impl Iterator<Item = &Issued> {
        self.issued.iter().chain(self.stable_issued.iter())
    }
}

#[derive(Default)]
struct World {
    apps: HashMap<String, App>,
    openapi: openapi::Counters,
}

/// WeChat's count of `app`'s calls to `cgi_path` today, as
/// `openapi/quota/get` answers it: (daily limit, used); `None` for a path
/// WeChat does not know (76021). Only the token API has a quota this fake
/// enforces; the others answer plausible figures.
fn quota_of(app: &App, cgi_path: &str) -> Option<(u32, u32)> {
    match cgi_path {
        "/cgi-bin/token" => Some((app.config.daily_quota, app.quota_used)),
        // WeChat documents 500,000 stable_token calls a day.
        "/cgi-bin/stable_token" => Some((500_000, app.stable_calls)),
        // Not a documented number.
        "/cgi-bin/ticket/getticket" => Some((100_000, app.tickets.len() as u32)),
        _ => None,
    }
}

/// What `clear_quota` resets: every quota this fake enforces.
fn clear_quotas(app: &mut App) {
    app.quota_used = 0;
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which base URL a request came in on.
#[derive(Clone)]
struct Caller(Arc<str>);

/// A running fake. Dropping it stops the server.
pub struct FakeWechat {
    addr: SocketAddr,
    world: Shared,
    servers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for FakeWechat {
    fn drop(&mut self) {
        let servers = self
            .servers
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for server in servers.iter() {
            server.abort();
        }
    }
}

fn router(world: Shared, caller: &str) -> Router {
    Router::new()
        .route("/cgi-bin/token", get(token))
        .route("/cgi-bin/stable_token", axum::routing::post(stable_token))
        .route("/cgi-bin/gettoken", get(wecom_token))
        .route("/cgi-bin/ticket/getticket", get(ticket))
        .route("/cgi-bin/get_jsapi_ticket", get(wecom_jsapi_ticket))
        .route("/cgi-bin/ticket/get", get(ticket))
        .route("/cgi-bin/getcallbackip", get(callback_ip))
        .merge(openapi::routes())
        .layer(Extension(Caller(caller.into())))
        .with_state(world)
}

fn serve(listener: tokio::net::TcpListener, app: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

impl FakeWechat {
    /// Starts on a free loopback port, on the current tokio runtime.
    pub async fn start() -> std::io::Result<FakeWechat> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeWechat> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let world = Shared::default();
        let server = serve(listener, router(world.clone(), ""));
        Ok(FakeWechat {
            addr,
            world,
            servers: Mutex::new(vec![server]),
        })
    }

    /// A base URL of its own for caller `name` (same apps, same state), so
    /// that [`FakeWechat::issued_by`] can say who got each token.
    pub async fn caller_url(&self, name: &str) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = serve(listener, router(self.world.clone(), name));
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(server);
        Ok(format!("http://{addr}"))
    }

    /// Base URL to configure as `wechat.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_app(&self, config: AppConfig) {
        lock(&self.world).apps.insert(
            config.appid.clone(),
            App {
                config,
                token_calls: 0,
                quota_used: 0,
                issued: Vec::new(),
                faults: VecDeque::new(),
                sticky: None,
                stable_calls: 0,
                forced_stable_calls: 0,
                stable_issued: Vec::new(),
                tickets: Vec::new(),
            },
        );
    }

    fn with_app<T>(&self, appid: &str, f: impl FnOnce(&mut App) -> T) -> T {
        let mut world = lock(&self.world);
        let app = world
            .apps
            .get_mut(appid)
            .unwrap_or_else(|| panic!("fake WeChat: no app {appid}"));
        f(app)
    }

    /// Queues faults, one per coming token call.
    pub fn push_faults(&self, appid: &str, faults: impl IntoIterator<Item = Fault>) {
        self.with_app(appid, |app| app.faults.extend(faults));
    }

    /// Applies `fault` to every token call until cleared with `None`.
    pub fn set_sticky_fault(&self, appid: &str, fault: Option<Fault>) {
        self.with_app(appid, |app| app.sticky = fault);
    }

    /// From now on, issue `appid`'s tokens with this `expires_in` (tokens
    /// already issued keep theirs).
    pub fn set_expires_in(&self, appid: &str, expires_in: Duration) {
        self.with_app(appid, |app| app.config.expires_in = expires_in);
    }

    /// Token calls received for `appid`, failed ones included.
    pub fn token_calls(&self, appid: &str) -> u32 {
        self.with_app(appid, |app| app.token_calls)
    }

    /// Tokens issued for `appid`.
    pub fn tokens_issued(&self, appid: &str) -> u32 {
        self.with_app(appid, |app| app.issued.len() as u32)
    }

    /// Every token ever issued for `appid`, oldest first.
    pub fn issued_tokens(&self, appid: &str) -> Vec<String> {
        self.with_app(appid, |app| {
            app.issued.iter().map(|i| i.token.clone()).collect()
        })
    }

    /// Every access token issued by `/cgi-bin/token` for `appid`, oldest
    /// first, with the name of the caller that got it.
    pub fn issued_by(&self, appid: &str) -> Vec<(String, String)> {
        self.with_app(appid, |app| {
            app.issued
                .iter()
                .map(|i| (i.token.clone(), i.caller.to_string()))
                .collect()
        })
    }

    /// Whether WeChat rejects `token` (access token or ticket) right now
    /// because a newer one replaced it (its overlap ended before its own
    /// expiry): what a competing refresher does to the tokens readers hold.
    pub fn is_rotated_away(&self, token: &str) -> bool {
        let now = Instant::now();
        lock(&self.world).apps.values().any(|app| {
            app.all_tokens()
                .chain(app.tickets.iter().map(|(_, t)| t))
                .any(|i| {
                    i.token == token
                        && i.replaced_until
                            .is_some_and(|until| until <= now && until < i.expires_at)
                })
        })
    }

    /// Whether WeChat would accept `token` (access token or ticket) right now.
    pub fn is_accepted(&self, token: &str) -> bool {
        let now = Instant::now();
        lock(&self.world).apps.values().any(|app| {
            app.all_tokens()
                .chain(app.tickets.iter().map(|(_, t)| t))
                .any(|i| i.token == token && i.accepted_at(now))
        })
    }

    /// `stable_token` calls for `appid`, and how many of them forced a refresh.
    pub fn stable_calls(&self, appid: &str) -> (u32, u32) {
        self.with_app(appid, |app| (app.stable_calls, app.forced_stable_calls))
    }

    /// Tickets issued for `appid` of `ticket_type` (`jsapi`, `wx_card`,
    /// `agent_config`; WeCom's corporation ticket is `jsapi`), oldest first.
    pub fn issued_tickets(&self, appid: &str, ticket_type: &str) -> Vec<String> {
        self.with_app(appid, |app| {
            app.tickets
                .iter()
                .filter(|(t, _)| t == ticket_type)
                .map(|(_, i)| i.token.clone())
                .collect()
        })
    }

    /// Every access token issued for `appid` (classic and stable), oldest first per kind.
    pub fn all_issued_tokens(&self, appid: &str) -> Vec<String> {
        self.with_app(appid, |app| {
            app.all_tokens().map(|i| i.token.clone()).collect()
        })
    }

    /// Makes every access token of `appid` invalid now, as WeCom may do.
    pub fn invalidate_tokens(&self, appid: &str) {
        let now = Instant::now();
        self.with_app(appid, |app| {
            for token in app.issued.iter_mut().chain(app.stable_issued.iter_mut()) {
                token.replaced_until = Some(now);
            }
        });
    }

    /// Starts a new day: the quota is available again.
    pub fn reset_quota(&self, appid: &str) {
        self.with_app(appid, |app| app.quota_used = 0);
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

fn errcode(code: i64, errmsg: &str) -> Response {
    Json(json!({ "errcode": code, "errmsg": format!("{errmsg} rid: fake") })).into_response()
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

async fn token(
    State(world): State<Shared>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let fault = {
        let mut world = lock(&world);
        let app = q.appid.as_deref().and_then(|id| world.apps.get_mut(id));
        app.and_then(|app| {
            app.token_calls += 1;
            app.faults.pop_front().or_else(|| app.sticky.clone())
        })
    };
    match fault {
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::AnswerLate(delay)) => {
            let response = issue(&world, q, caller);
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
    issue(&world, q, caller)
}

fn issue(world: &Shared, q: TokenQuery, caller: Arc<str>) -> Response {
    if q.grant_type.as_deref() != Some("client_credential") {
        return errcode(40002, "invalid grant_type");
    }
    let Some(appid) = q.appid.filter(|s| !s.is_empty()) else {
        return errcode(41002, "appid missing");
    };
    let Some(secret) = q.secret.filter(|s| !s.is_empty()) else {
        return errcode(41004, "appsecret missing");
    };
    let mut world = lock(world);
    let Some(app) = world.apps.get_mut(&appid) else {
        return errcode(40013, "invalid appid");
    };
    if secret != app.config.secret {
        return errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        );
    }
    if app.quota_used >= app.config.daily_quota {
        return errcode(45009, "reach max api daily quota limit");
    }
    app.quota_used += 1;
    let now = Instant::now();
    let overlap_end = now + app.config.overlap;
    for old in app.issued.iter_mut().filter(|i| i.replaced_until.is_none()) {
        old.replaced_until = Some(overlap_end);
    }
    let token = new_token();
    app.issued.push(Issued {
        token: token.clone(),
        caller,
        expires_at: now + app.config.expires_in,
        replaced_until: None,
    });
    Json(json!({ "access_token": token, "expires_in": app.config.expires_in.as_secs() }))
        .into_response()
}

fn new_token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 136)
}

fn token_json(token: &str, expires_in: Duration) -> Response {
    Json(json!({ "access_token": token, "expires_in": expires_in.as_secs() })).into_response()
}

#[derive(Deserialize)]
struct StableRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

async fn stable_token(State(world): State<Shared>, Json(r): Json<StableRequest>) -> Response {
    if r.grant_type.as_deref() != Some("client_credential") {
        return errcode(40002, "invalid grant_type");
    }
    let mut world = lock(&world);
    let Some(app) = r.appid.as_deref().and_then(|id| world.apps.get_mut(id)) else {
        return errcode(40013, "invalid appid");
    };
    app.stable_calls += 1;
    if r.secret.as_deref() != Some(app.config.secret.as_str()) {
        return errcode(40001, "invalid credential");
    }
    let now = Instant::now();
    let current = app
        .stable_issued
        .iter()
        .rev()
        .find(|i| i.replaced_until.is_none() && now < i.expires_at);
    if let Some(current) = current {
        let left = current.expires_at - now;
        if !r.force_refresh && left > app.config.stable_window {
            return token_json(&current.token, left);
        }
    }
    if r.force_refresh {
        app.forced_stable_calls += 1;
        let overlap_end = now + app.config.overlap;
        for old in app
            .stable_issued
            .iter_mut()
            .filter(|i| i.replaced_until.is_none())
        {
            old.replaced_until = Some(overlap_end);
        }
    }
    let token = new_token();
    app.stable_issued.push(Issued {
        token: token.clone(),
        caller: "".into(),
        expires_at: now + app.config.expires_in,
        replaced_until: None,
    });
    token_json(&token, app.config.expires_in)
}

#[derive(Deserialize)]
struct WecomTokenQuery {
    corpid: Option<String>,
    corpsecret: Option<String>,
}

async fn wecom_token(State(world): State<Shared>, Query(q): Query<WecomTokenQuery>) -> Response {
    let Some(corpid) = q.corpid.filter(|s| !s.is_empty()) else {
        return errcode(41002, "corpid missing");
    };
    let Some(secret) = q.corpsecret.filter(|s| !s.is_empty()) else {
        return errcode(41004, "corpsecret missing");
    };
    let mut world = lock(&world);
    if !world
        .apps
        .values()
        .any(|a| a.config.corp_id.as_deref() == Some(corpid.as_str()))
    {
        return errcode(40013, "invalid corpid");
    }
    let Some(app) = world.apps.values_mut().find(|a| {
        a.config.corp_id.as_deref() == Some(corpid.as_str()) && a.config.secret == secret
    }) else {
        return errcode(40001, "invalid secret");
    };
    app.token_calls += 1;
    let now = Instant::now();
    // WeCom: the same token while it is valid.
    if let Some(current) = app.issued.iter().rev().find(|i| i.accepted_at(now)) {
        let left = current.expires_at - now;
        let body = json!({ "errcode": 0, "errmsg": "ok", "access_token": current.token, "expires_in": left.as_secs() });
        return Json(body).into_response();
    }
    let token = new_token();
    app.issued.push(Issued {
        token: token.clone(),
        caller: "".into(),
        expires_at: now + app.config.expires_in,
        replaced_until: None,
    });
    let body = json!({ "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": app.config.expires_in.as_secs() });
    Json(body).into_response()
}

#[derive(Deserialize)]
struct TicketQuery {
    access_token: Option<String>,
    #[serde(rename = "type")]
    ticket_type: Option<String>,
}

async fn ticket(State(world): State<Shared>, Query(q): Query<TicketQuery>) -> Response {
    let ticket_type = q.ticket_type.unwrap_or_default();
    issue_ticket(&world, q.access_token, &ticket_type)
}

async fn wecom_jsapi_ticket(State(world): State<Shared>, Query(q): Query<UseQuery>) -> Response {
    issue_ticket(&world, q.access_token, "jsapi")
}

fn issue_ticket(world: &Shared, access_token: Option<String>, ticket_type: &str) -> Response {
    if !matches!(ticket_type, "jsapi" | "wx_card" | "agent_config") {
        return errcode(40097, "invalid args");
    }
    let Some(access_token) = access_token else {
        return errcode(41001, "access_token missing");
    };
    let mut world = lock(world);
    let now = Instant::now();
    let Some(app) = world
        .apps
        .values_mut()
        .find(|app| app.all_tokens().any(|i| i.token == access_token))
    else {
        return errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        );
    };
    let token = app
        .all_tokens()
        .find(|i| i.token == access_token)
        .map(|i| (i.accepted_at(now), now >= i.expires_at));
    match token {
        Some((true, _)) => {}
        Some((false, true)) => return errcode(42001, "access_token expired"),
        _ => {
            return errcode(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )
        }
    }
    let ticket = Alphanumeric.sample_string(&mut rand::rng(), 86);
    app.tickets.push((
        ticket_type.to_string(),
        Issued {
            token: ticket.clone(),
            caller: "".into(),
            expires_at: now + app.config.ticket_expires_in,
            replaced_until: None,
        },
    ));
    let body = json!({
        "errcode": 0, "errmsg": "ok", "ticket": ticket,
        "expires_in": app.config.ticket_expires_in.as_secs(),
    });
    Json(body).into_response()
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
    let found = world
        .apps
        .values()
        .flat_map(|app| app.all_tokens())
        .find(|i| i.token == token);
    match found {
        Some(i) if i.accepted_at(now) => Json(json!({ "ip_list": ["127.0.0.1"] })).into_response(),
        Some(i) if now >= i.expires_at => errcode(42001, "access_token expired"),
        _ => errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ),
    }
}
