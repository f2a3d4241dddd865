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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::json;

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
        }
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
}

struct Issued {
    token: String,
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
}

#[derive(Default)]
struct World {
    apps: HashMap<String, App>,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake. Dropping it stops the server.
pub struct FakeWechat {
    addr: SocketAddr,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWechat {
    fn drop(&mut self) {
        self.server.abort();
    }
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
        let app = Router::new()
            .route("/cgi-bin/token", get(token))
            .route("/cgi-bin/getcallbackip", get(callback_ip))
            .with_state(world.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeWechat {
            addr,
            world,
            server,
        })
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

    /// Whether WeChat would accept `token` right now.
    pub fn is_accepted(&self, token: &str) -> bool {
        let now = Instant::now();
        lock(&self.world)
            .apps
            .values()
            .flat_map(|app| app.issued.iter())
            .any(|i| i.token == token && i.accepted_at(now))
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
        Fault::Delay(_) | Fault::AnswerLate(_) => None,
    }
}

async fn token(State(world): State<Shared>, Query(q): Query<TokenQuery>) -> Response {
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
            let response = issue(&world, q);
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
    issue(&world, q)
}

fn issue(world: &Shared, q: TokenQuery) -> Response {
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
    let token = Alphanumeric.sample_string(&mut rand::rng(), 136);
    app.issued.push(Issued {
        token: token.clone(),
        expires_at: now + app.config.expires_in,
        replaced_until: None,
    });
    Json(json!({ "access_token": token, "expires_in": app.config.expires_in.as_secs() }))
        .into_response()
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
        .flat_map(|app| app.issued.iter())
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
