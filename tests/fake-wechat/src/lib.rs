//! A stand-in for WeChat's credential API that follows WeChat's rules, for
//! wxtokend's tests and its local sandbox.
//!
//! Each credential endpoint ([`Endpoint`]) has, per app, a [`Mode`] (how it
//! hands out values), its own daily quota (45009 when spent), its own
//! faults and its own call counter, as WeChat's quotas are per API. The
//! defaults are WeChat's documented or reported behaviour:
//!
//! | endpoint | default mode |
//! |---|---|
//! | `GET /cgi-bin/token` | [`Mode::NewEveryCall`]: earlier tokens keep working for `overlap` (5 min); 2000 calls a day |
//! | `POST /cgi-bin/stable_token` | [`Mode::Stable`]: the same token with its time left, a new one only in its last 5 minutes (the old one valid to its end); `force_refresh` kills the previous one at once; 500,000 calls a day |
//! | `GET /cgi-bin/ticket/getticket?type=jsapi\|wx_card` | [`Mode::SameWhileValid`]: the same ticket while it is valid, always with the full `expires_in` |
//! | WeCom `GET /cgi-bin/gettoken`, `get_jsapi_ticket`, `ticket/get?type=agent_config` | [`Mode::SameWhileValidCountingDown`] |
//! | Open Platform `POST /cgi-bin/component/api_component_token` | [`Mode::NewEveryCall`], overlap 5 min; needs a verify ticket WeChat pushed within its 12 hours; 10,000 calls a day |
//! | `POST /cgi-bin/component/api_authorizer_token` (and `api_query_auth`) | [`Mode::NewEveryCall`], overlap 5 min, accepted by `getticket` and `getcallbackip` like an account's token; the refresh token echoed (or rotated, per authorizer); counted per authorizer and per component |
//! | `api_get_authorizer_list`, `api_create_preauthcode` (600 s), `api_start_push_ticket` | pages of at most 500; see [`platform_handlers`] |
//!
//! Any endpoint may be given any mode, and values that die early
//! ([`Behaviour::early_invalidation`], as WeCom may do).
//!
//! - Wrong parameters answer WeChat's errcodes (40002, 41002, 41004, 40013,
//!   40001); tickets are issued only for an access token accepted right now
//!   (else 40001, or 42001 if it expired).
//! - Faults can be queued per app and endpoint (one per call) or made
//!   sticky: any errcode, an HTTP status, a raw body, or a delay.
//! - `GET /cgi-bin/getcallbackip?access_token=…` is a business API: it says
//!   whether a token is accepted right now (40001 if replaced, 42001 if expired).
//! - `POST /cgi-bin/openapi/quota/get`, `/cgi-bin/clear_quota` and
//!   `/cgi-bin/clear_quota/v2` show and clear quotas (10 clears; [`openapi`]).
//! - Callers can be told apart: [`FakeWechat::caller_url`] gives each caller
//!   (a daemon replica) its own base URL, and [`FakeWechat::issued_by`] says
//!   who got each token.
//! - [`component`]: an Open Platform component's pushes (verify tickets,
//!   authorization events), encrypted and signed as WeChat does, sent on
//!   demand or on a timer.
//! - Open Platform components ([`FakeWechat::add_component`]): the accounts
//!   that authorize them ([`FakeWechat::authorize`], `unauthorize`, …), their
//!   refresh tokens and codes ([`platform`]), the component endpoints
//!   ([`platform_handlers`]), and WeChat's pushes to the callback URL, timed
//!   or at once, in order, round-robin over the replicas ([`pushes`]).

pub mod component;
mod handlers;
mod model;
mod openapi;
mod platform;
mod platform_handlers;
mod pushes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use model::{App, Issued};
pub use model::{AppConfig, Behaviour, Endpoint, Fault, Mode};
pub use platform::{CODE_LIFE, REFRESH_TOKEN_GRACE, TICKET_LIFE as VERIFY_TICKET_LIFE};
pub use pushes::PushLog;

#[derive(Default)]
pub(crate) struct World {
    pub(crate) apps: HashMap<String, App>,
    pub(crate) openapi: openapi::Counters,
    /// Open Platform components, by appid (each also in `apps`).
    pub(crate) platforms: HashMap<String, platform::Platform>,
}

pub(crate) type Shared = Arc<Mutex<World>>;

pub(crate) fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The daily limit and today's use of the endpoint served on `cgi_path`
/// (what `openapi/quota/get` answers); `None` for a path that is not one.
pub(crate) fn quota_of(app: &App, cgi_path: &str) -> Option<(u32, u32)> {
    let endpoint = Endpoint::from_cgi_path(cgi_path)?;
    let state = app.endpoints.get(&endpoint)?;
    Some((state.behaviour.daily_quota, state.quota_used))
}

/// Starts a new quota day for every endpoint of `app` (what `clear_quota`
/// does).
pub(crate) fn clear_quotas(app: &mut App) {
    for state in app.endpoints.values_mut() {
        state.quota_used = 0;
    }
}

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

fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> tokio::task::JoinHandle<()> {
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
        let server = serve(listener, handlers::router(world.clone(), ""));
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
        let server = serve(listener, handlers::router(self.world.clone(), name));
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
        lock(&self.world)
            .apps
            .insert(config.appid.clone(), App::new(config));
    }

    fn with_app<T>(&self, appid: &str, f: impl FnOnce(&mut App) -> T) -> T {
        let mut world = lock(&self.world);
        let app = world
            .apps
            .get_mut(appid)
            .unwrap_or_else(|| panic!("fake WeChat: no app {appid}"));
        f(app)
    }

    /// Every value of `appid` that `which` selects, oldest first.
    fn values(&self, appid: &str, which: impl Fn(&Issued) -> bool) -> Vec<String> {
        self.with_app(appid, |app| {
            app.issued
                .iter()
                .filter(|i| which(i))
                .map(|i| i.value.clone())
                .collect()
        })
    }

    /// Queues faults, one per coming `/cgi-bin/token` call.
    pub fn push_faults(&self, appid: &str, faults: impl IntoIterator<Item = Fault>) {
        self.push_faults_on(appid, Endpoint::Token, faults);
    }

    /// Queues faults, one per coming call of `endpoint`.
    pub fn push_faults_on(
        &self,
        appid: &str,
        endpoint: Endpoint,
        faults: impl IntoIterator<Item = Fault>,
    ) {
        self.with_app(appid, |app| app.endpoint(endpoint).faults.extend(faults));
    }

    /// Applies `fault` to every `/cgi-bin/token` call until cleared with `None`.
    pub fn set_sticky_fault(&self, appid: &str, fault: Option<Fault>) {
        self.set_sticky_fault_on(appid, Endpoint::Token, fault);
    }

    /// Applies `fault` to every call of `endpoint` until cleared with `None`.
    pub fn set_sticky_fault_on(&self, appid: &str, endpoint: Endpoint, fault: Option<Fault>) {
        self.with_app(appid, |app| app.endpoint(endpoint).sticky = fault);
    }

    /// Changes how `endpoint` behaves for `appid` from now on (values
    /// already issued keep their lives).
    pub fn set_behaviour(
        &self,
        appid: &str,
        endpoint: Endpoint,
        change: impl FnOnce(&mut Behaviour),
    ) {
        self.with_app(appid, |app| change(&mut app.endpoint(endpoint).behaviour));
    }

    /// From now on, issue `appid`'s access tokens with this `expires_in`
    /// (tokens already issued keep theirs).
    pub fn set_expires_in(&self, appid: &str, expires_in: Duration) {
        for endpoint in Endpoint::ALL.into_iter().filter(|e| e.issues_tokens()) {
            self.set_behaviour(appid, endpoint, |b| b.expires_in = expires_in);
        }
    }

    /// Calls of `endpoint` received for `appid`, failed ones included.
    pub fn calls(&self, appid: &str, endpoint: Endpoint) -> u32 {
        self.with_app(appid, |app| app.endpoint(endpoint).calls)
    }

    /// Calls of `endpoint` counted against today's quota (answered ones).
    pub fn quota_used(&self, appid: &str, endpoint: Endpoint) -> u32 {
        self.with_app(appid, |app| app.endpoint(endpoint).quota_used)
    }

    /// Token calls received for `appid` (`/cgi-bin/token` and WeCom's
    /// `gettoken`), failed ones included.
    pub fn token_calls(&self, appid: &str) -> u32 {
        self.calls(appid, Endpoint::Token) + self.calls(appid, Endpoint::WecomToken)
    }

    /// Tokens issued for `appid` by `/cgi-bin/token` or WeCom's `gettoken`.
    pub fn tokens_issued(&self, appid: &str) -> u32 {
        self.issued_tokens(appid).len() as u32
    }

    /// Every token `/cgi-bin/token` or WeCom's `gettoken` issued for
    /// `appid`, oldest first.
    pub fn issued_tokens(&self, appid: &str) -> Vec<String> {
        self.values(appid, |i| {
            matches!(i.endpoint, Endpoint::Token | Endpoint::WecomToken)
        })
    }

    /// Every value `endpoint` issued for `appid`, oldest first.
    pub fn issued_on(&self, appid: &str, endpoint: Endpoint) -> Vec<String> {
        self.values(appid, |i| i.endpoint == endpoint)
    }

    /// Every access token issued by `/cgi-bin/token` for `appid` (for an
    /// Open Platform authorizer: by `api_authorizer_token` and
    /// `api_query_auth`; for a component: its component tokens), oldest
    /// first, with the name of the caller that got it.
    pub fn issued_by(&self, appid: &str) -> Vec<(String, String)> {
        self.with_app(appid, |app| {
            app.issued
                .iter()
                .filter(|i| {
                    matches!(
                        i.endpoint,
                        Endpoint::Token | Endpoint::AuthorizerToken | Endpoint::ComponentToken
                    )
                })
                .map(|i| (i.value.clone(), i.caller.to_string()))
                .collect()
        })
    }

    /// The value `value`, found among every app's.
    fn find<T>(&self, value: &str, f: impl FnOnce(&Issued) -> T) -> Option<T> {
        let world = lock(&self.world);
        let found = world
            .apps
            .values()
            .find_map(|app| app.issued.iter().find(|i| i.value == value));
        found.map(f)
    }

    /// Whether WeChat rejects `value` (access token or ticket) right now
    /// because it was killed before its own expiry (replaced after the
    /// overlap, forced away, invalidated early).
    pub fn is_rotated_away(&self, value: &str) -> bool {
        let now = Instant::now();
        self.find(value, |i| i.killed_by(now)).unwrap_or(false)
    }

    /// Whether WeChat would accept `value` (access token or ticket) right now.
    pub fn is_accepted(&self, value: &str) -> bool {
        self.is_accepted_at(value, Instant::now())
    }

    /// Whether WeChat accepted (or will accept) `value` at `at`.
    pub fn is_accepted_at(&self, value: &str, at: Instant) -> bool {
        self.find(value, |i| i.accepted_at(at)).unwrap_or(false)
    }

    /// When WeChat issued `value`, and when it expires by WeChat's clock
    /// (not counting an early death).
    pub fn lifetime_of(&self, value: &str) -> Option<(SystemTime, SystemTime)> {
        self.find(value, |i| (i.issued_at, i.expires_wall))
    }

    /// How many calls WeChat answered with `value`: the one that issued it
    /// and every repeat.
    pub fn answers_of(&self, value: &str) -> u32 {
        self.find(value, |i| i.answers).unwrap_or(0)
    }

    /// `stable_token` calls for `appid`, and how many of them forced a refresh.
    pub fn stable_calls(&self, appid: &str) -> (u32, u32) {
        self.with_app(appid, |app| {
            let stable = app.endpoint(Endpoint::StableToken);
            (stable.calls, stable.forced_calls)
        })
    }

    /// Tickets issued for `appid` of `ticket_type` (`jsapi`, `wx_card`,
    /// `agent_config`; WeCom's corporation ticket is `jsapi`), oldest first.
    pub fn issued_tickets(&self, appid: &str, ticket_type: &str) -> Vec<String> {
        self.values(appid, |i| {
            !i.endpoint.issues_tokens() && i.series == ticket_type
        })
    }

    /// Every access token issued for `appid` (every token endpoint), oldest first.
    pub fn all_issued_tokens(&self, appid: &str) -> Vec<String> {
        self.values(appid, |i| i.endpoint.issues_tokens())
    }

    /// Makes every access token of `appid` invalid now, as WeCom may do.
    pub fn invalidate_tokens(&self, appid: &str) {
        self.with_app(appid, App::invalidate_tokens);
    }

    /// Starts a new day: every endpoint's quota is available again.
    pub fn reset_quota(&self, appid: &str) {
        self.with_app(appid, clear_quotas);
    }
}
