//! What the fake knows: its endpoints, how each hands out values (a
//! [`Mode`]), the apps, and every value issued. No HTTP here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::distr::{Alphanumeric, SampleString};

/// One of WeChat's credential endpoints. Each has, per app, its own mode,
/// daily quota, faults and call counter, as WeChat's quotas are per API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /cgi-bin/token`.
    Token,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `GET /cgi-bin/ticket/getticket` (`type=jsapi` and `type=wx_card`
    /// share it, each with its own current ticket).
    GetTicket,
    /// WeCom's `GET /cgi-bin/gettoken`.
    WecomToken,
    /// WeCom's `GET /cgi-bin/get_jsapi_ticket` (the corporation's ticket).
    WecomJsapiTicket,
    /// WeCom's `GET /cgi-bin/ticket/get?type=agent_config`.
    WecomAgentConfigTicket,
    /// Open Platform: `POST /cgi-bin/component/api_component_token`, for
    /// an app added as a component ([`crate::FakeWechat::add_component`]).
    ComponentToken,
    /// Open Platform: an authorizer's token, from
    /// `POST /cgi-bin/component/api_authorizer_token` (and minted by
    /// `api_query_auth`), counted on the authorizer's app and the
    /// component's (each with its own quota: WeChat's counting unit is
    /// UNVERIFIED).
    AuthorizerToken,
    /// Open Platform: `POST /cgi-bin/component/api_query_auth`, the
    /// exchange of an authorization code; counted like `AuthorizerToken`.
    /// Its token is one of `AuthorizerToken`'s values (same life, same
    /// rotation).
    QueryAuth,
    /// Open Platform: `POST /cgi-bin/component/api_get_authorizer_list`,
    /// counted on the component's app.
    AuthorizerList,
    /// Open Platform: `POST /cgi-bin/component/api_create_preauthcode`
    /// (a `preauthcode@@@…` living 600 s), on the component's app.
    CreatePreauthcode,
    /// Open Platform: `POST /cgi-bin/component/api_start_push_ticket`, on
    /// the component's app.
    StartPushTicket,
}

impl Endpoint {
    pub const ALL: [Endpoint; 12] = [
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::GetTicket,
        Endpoint::WecomToken,
        Endpoint::WecomJsapiTicket,
        Endpoint::WecomAgentConfigTicket,
        Endpoint::ComponentToken,
        Endpoint::AuthorizerToken,
        Endpoint::QueryAuth,
        Endpoint::AuthorizerList,
        Endpoint::CreatePreauthcode,
        Endpoint::StartPushTicket,
    ];

    /// The path WeChat serves it on: what the router routes and what
    /// `openapi/quota/get` names as `cgi_path`. The one place for it.
    pub const fn cgi_path(self) -> &'static str {
        match self {
            Endpoint::Token => "/cgi-bin/token",
            Endpoint::StableToken => "/cgi-bin/stable_token",
            Endpoint::GetTicket => "/cgi-bin/ticket/getticket",
            Endpoint::WecomToken => "/cgi-bin/gettoken",
            Endpoint::WecomJsapiTicket => "/cgi-bin/get_jsapi_ticket",
            Endpoint::WecomAgentConfigTicket => "/cgi-bin/ticket/get",
            Endpoint::ComponentToken => "/cgi-bin/component/api_component_token",
            Endpoint::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Endpoint::QueryAuth => "/cgi-bin/component/api_query_auth",
            Endpoint::AuthorizerList => "/cgi-bin/component/api_get_authorizer_list",
            Endpoint::CreatePreauthcode => "/cgi-bin/component/api_create_preauthcode",
            Endpoint::StartPushTicket => "/cgi-bin/component/api_start_push_ticket",
        }
    }

    pub fn from_cgi_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.cgi_path() == path)
    }

    /// Whether it issues access tokens (what tickets and business APIs
    /// are called with).
    pub const fn issues_tokens(self) -> bool {
        matches!(
            self,
            Endpoint::Token
                | Endpoint::StableToken
                | Endpoint::WecomToken
                | Endpoint::AuthorizerToken
        )
    }

    /// What WeChat's values of this endpoint start with.
    const fn value_prefix(self) -> &'static str {
        match self {
            Endpoint::CreatePreauthcode => "preauthcode@@@",
            _ => "",
        }
    }

    /// Whether it issues tickets.
    pub const fn issues_tickets(self) -> bool {
        matches!(
            self,
            Endpoint::GetTicket | Endpoint::WecomJsapiTicket | Endpoint::WecomAgentConfigTicket
        )
    }

    /// How it behaves unless a test says otherwise: WeChat's documented or
    /// reported behaviour (`shared/design.md`).
    pub fn default_behaviour(self) -> Behaviour {
        let mode = match self {
            // The component token too, its previous one working for 5
            // minutes (reported by WeChat staff, UNVERIFIED for it).
            // An authorizer's too (its overlap UNVERIFIED); pre-auth codes
            // each live their 600 s (overlap as long).
            Endpoint::Token
            | Endpoint::ComponentToken
            | Endpoint::AuthorizerToken
            | Endpoint::CreatePreauthcode => Mode::NewEveryCall,
            // Issue nothing of their own.
            Endpoint::QueryAuth | Endpoint::AuthorizerList | Endpoint::StartPushTicket => {
                Mode::NewEveryCall
            }
            Endpoint::StableToken => Mode::Stable {
                window: Duration::from_secs(300),
            },
            // "The same ticket while it is valid, always with expires_in 7200."
            Endpoint::GetTicket => Mode::SameWhileValid,
            Endpoint::WecomToken
            | Endpoint::WecomJsapiTicket
            | Endpoint::WecomAgentConfigTicket => Mode::SameWhileValidCountingDown,
        };
        let daily_quota = match self {
            Endpoint::Token => 2000,
            // What one platform saw in getApiQuota (a community report).
            Endpoint::ComponentToken => 10_000,
            Endpoint::StableToken => 500_000,
            _ => 1_000_000,
        };
        let (expires_in, overlap) = match self {
            Endpoint::CreatePreauthcode => (Duration::from_secs(600), Duration::from_secs(600)),
            _ => (Duration::from_secs(7200), Duration::from_secs(300)),
        };
        Behaviour {
            mode,
            expires_in,
            overlap,
            early_invalidation: None,
            daily_quota,
        }
    }
}

/// How an endpoint hands out values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new value every call; the previous ones keep working for the
    /// endpoint's `overlap` (`/cgi-bin/token`).
    NewEveryCall,
    /// The current value while it is valid, answered with the full
    /// `expires_in` every time: a new value only once it died (`getticket`,
    /// as developers report it).
    SameWhileValid,
    /// The current value while it is valid, with the whole seconds it has
    /// left as `expires_in` (WeCom).
    SameWhileValidCountingDown,
    /// `stable_token`: the current value with its time left, and a new one
    /// only in the last `window` of its life (both valid until the old one
    /// expires); `force_refresh` issues a new value and kills the previous
    /// one at once, with no overlap.
    Stable { window: Duration },
}

/// One endpoint's behaviour for one app.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub mode: Mode,
    /// `expires_in` of a new value.
    pub expires_in: Duration,
    /// [`Mode::NewEveryCall`]: how long a replaced value keeps working.
    pub overlap: Duration,
    /// Each value dies this long after it was issued, before its
    /// `expires_in` ends, as WeCom may do; a call after that gets a new one.
    pub early_invalidation: Option<Duration>,
    /// Successful calls a day before 45009.
    pub daily_quota: u32,
}

/// One registered app and how each endpoint treats it.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub appid: String,
    pub secret: String,
    /// WeCom apps: the corpid (the app id is `corpid/agentid`).
    pub corp_id: Option<String>,
    pub endpoints: HashMap<Endpoint, Behaviour>,
}

impl AppConfig {
    /// WeChat's real numbers: 7200 s values, a 5-minute overlap, 2000 token
    /// calls a day, each endpoint in its default mode.
    pub fn new(appid: &str, secret: &str) -> Self {
        Self {
            appid: appid.into(),
            secret: secret.into(),
            corp_id: None,
            endpoints: Endpoint::ALL
                .into_iter()
                .map(|e| (e, e.default_behaviour()))
                .collect(),
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

    /// Changes how `endpoint` behaves.
    pub fn behaviour(mut self, endpoint: Endpoint, change: impl FnOnce(&mut Behaviour)) -> Self {
        if let Some(behaviour) = self.endpoints.get_mut(&endpoint) {
            change(behaviour);
        }
        self
    }

    fn each(mut self, which: impl Fn(Endpoint) -> bool, change: impl Fn(&mut Behaviour)) -> Self {
        for (endpoint, behaviour) in &mut self.endpoints {
            if which(*endpoint) {
                change(behaviour);
            }
        }
        self
    }

    pub fn mode(self, endpoint: Endpoint, mode: Mode) -> Self {
        self.behaviour(endpoint, |b| b.mode = mode)
    }

    pub fn early_invalidation(self, endpoint: Endpoint, after: Duration) -> Self {
        self.behaviour(endpoint, |b| b.early_invalidation = Some(after))
    }

    pub fn quota(self, endpoint: Endpoint, daily: u32) -> Self {
        self.behaviour(endpoint, |b| b.daily_quota = daily)
    }

    /// `expires_in` of new access tokens (every token endpoint).
    pub fn expires_in(self, expires_in: Duration) -> Self {
        self.each(
            |e| e.issues_tokens() || e == Endpoint::ComponentToken,
            |b| b.expires_in = expires_in,
        )
    }

    /// `expires_in` of new tickets (every ticket endpoint).
    pub fn ticket_expires_in(self, expires_in: Duration) -> Self {
        self.each(Endpoint::issues_tickets, |b| b.expires_in = expires_in)
    }

    /// How long a replaced `/cgi-bin/token` token keeps working.
    pub fn overlap(self, overlap: Duration) -> Self {
        self.behaviour(Endpoint::Token, |b| b.overlap = overlap)
    }

    /// `/cgi-bin/token` calls allowed a day before 45009.
    pub fn daily_quota(self, quota: u32) -> Self {
        self.quota(Endpoint::Token, quota)
    }

    /// stable_token hands out a new token only in its last `window`.
    pub fn stable_window(self, window: Duration) -> Self {
        self.mode(Endpoint::StableToken, Mode::Stable { window })
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
    /// Issue the value at once (rotating the previous one), but answer only
    /// after this long: a response stuck in the network.
    AnswerLate(Duration),
    /// Start a 200 answer, then drop the connection in the middle of the body.
    Reset,
}

/// One value WeChat handed out.
pub(crate) struct Issued {
    pub endpoint: Endpoint,
    /// The ticket type (`jsapi`, `wx_card`, `agent_config`); empty for tokens.
    pub series: &'static str,
    pub value: String,
    /// The caller's name (see `FakeWechat::caller_url`); empty by default.
    pub caller: Arc<str>,
    /// When it was issued and when it expires, by the wall clock.
    pub issued_at: SystemTime,
    pub expires_wall: SystemTime,
    pub expires_at: Instant,
    /// Killed before its expiry at this moment: replaced, forced away, or
    /// invalidated early.
    pub dies_at: Option<Instant>,
    /// Calls answered with it: the one that issued it and every repeat.
    pub answers: u32,
}

impl Issued {
    pub fn accepted_at(&self, at: Instant) -> bool {
        at < self.expires_at && self.dies_at.is_none_or(|dies| at < dies)
    }

    /// Dead by now for a reason other than its own expiry.
    pub fn killed_by(&self, at: Instant) -> bool {
        self.dies_at
            .is_some_and(|dies| dies <= at && dies < self.expires_at)
    }

    fn kill_at(&mut self, at: Instant) {
        self.dies_at = Some(self.dies_at.map_or(at, |dies| dies.min(at)));
    }
}

/// One endpoint's state for one app.
pub(crate) struct EndpointState {
    pub behaviour: Behaviour,
    /// Calls received, failed ones included.
    pub calls: u32,
    /// Successful answers today (45009 at `daily_quota`).
    pub quota_used: u32,
    /// stable_token: calls with `force_refresh`.
    pub forced_calls: u32,
    pub faults: VecDeque<Fault>,
    pub sticky: Option<Fault>,
}

pub(crate) struct App {
    pub config: AppConfig,
    pub endpoints: HashMap<Endpoint, EndpointState>,
    /// Every value issued, oldest first.
    pub issued: Vec<Issued>,
}

/// What a successful call answers.
pub(crate) struct Answer {
    pub value: String,
    pub expires_in: Duration,
}

/// The fake's answer to a call that may be served.
pub(crate) enum Refusal {
    /// 45009: the endpoint's daily quota is spent.
    QuotaSpent,
}

impl App {
    pub fn new(config: AppConfig) -> Self {
        let endpoints = Endpoint::ALL
            .into_iter()
            .map(|e| {
                let behaviour = config
                    .endpoints
                    .get(&e)
                    .cloned()
                    .unwrap_or_else(|| e.default_behaviour());
                let state = EndpointState {
                    behaviour,
                    calls: 0,
                    quota_used: 0,
                    forced_calls: 0,
                    faults: VecDeque::new(),
                    sticky: None,
                };
                (e, state)
            })
            .collect();
        Self {
            config,
            endpoints,
            issued: Vec::new(),
        }
    }

    pub fn endpoint(&mut self, endpoint: Endpoint) -> &mut EndpointState {
        self.endpoints
            .get_mut(&endpoint)
            .expect("every endpoint has a state")
    }

    /// Counts a call and takes its fault, if one is queued or sticky.
    pub fn take_call(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let state = self.endpoint(endpoint);
        state.calls += 1;
        state.faults.pop_front().or_else(|| state.sticky.clone())
    }

    /// Answers a call that passed its checks, as the endpoint's mode says.
    pub fn answer(
        &mut self,
        endpoint: Endpoint,
        series: &'static str,
        caller: &Arc<str>,
        force: bool,
    ) -> Result<Answer, Refusal> {
        self.spend(endpoint, force)?;
        Ok(self.hand_out(endpoint, series, caller, force))
    }

    /// Whether `endpoint`'s daily quota has a call left.
    pub fn has_quota(&mut self, endpoint: Endpoint) -> bool {
        let state = self.endpoint(endpoint);
        state.quota_used < state.behaviour.daily_quota
    }

    /// Counts an answered call against `endpoint`'s daily quota.
    pub fn spend(&mut self, endpoint: Endpoint, force: bool) -> Result<(), Refusal> {
        if !self.has_quota(endpoint) {
            return Err(Refusal::QuotaSpent);
        }
        let state = self.endpoint(endpoint);
        state.quota_used += 1;
        if force {
            state.forced_calls += 1;
        }
        Ok(())
    }

    /// The value `endpoint` hands out now, as its mode says (its quota
    /// already counted, possibly as another endpoint's: `api_query_auth`
    /// hands out `api_authorizer_token`'s values).
    pub fn hand_out(
        &mut self,
        endpoint: Endpoint,
        series: &'static str,
        caller: &Arc<str>,
        force: bool,
    ) -> Answer {
        let behaviour = self.endpoint(endpoint).behaviour.clone();
        let now = Instant::now();
        if let Some(repeat) = self.repeat(endpoint, series, &behaviour, force, now) {
            return repeat;
        }
        let kill_previous = match behaviour.mode {
            Mode::NewEveryCall => Some(now + behaviour.overlap),
            Mode::Stable { .. } if force => Some(now),
            _ => None,
        };
        if let Some(at) = kill_previous {
            self.issued
                .iter_mut()
                .filter(|i| i.endpoint == endpoint && i.series == series)
                .for_each(|i| i.kill_at(at));
        }
        self.issue(endpoint, series, caller, &behaviour, now)
    }

    /// The current value answered again, if the mode says so.
    fn repeat(
        &mut self,
        endpoint: Endpoint,
        series: &str,
        behaviour: &Behaviour,
        force: bool,
        now: Instant,
    ) -> Option<Answer> {
        let current = self
            .issued
            .iter_mut()
            .rev()
            .find(|i| i.endpoint == endpoint && i.series == series && i.accepted_at(now))?;
        let left = current.expires_at - now;
        // Whole seconds left, rounded down so that the answer never
        // outlives the value: 0 in its last second.
        let counting_down = Duration::from_secs(left.as_secs());
        let expires_in = match behaviour.mode {
            Mode::SameWhileValid => behaviour.expires_in,
            Mode::SameWhileValidCountingDown => counting_down,
            Mode::Stable { window } if !force && left > window => counting_down,
            _ => return None,
        };
        current.answers += 1;
        Some(Answer {
            value: current.value.clone(),
            expires_in,
        })
    }

    fn issue(
        &mut self,
        endpoint: Endpoint,
        series: &'static str,
        caller: &Arc<str>,
        behaviour: &Behaviour,
        now: Instant,
    ) -> Answer {
        let length = if endpoint.issues_tokens() { 136 } else { 86 };
        let value = format!(
            "{}{}",
            endpoint.value_prefix(),
            Alphanumeric.sample_string(&mut rand::rng(), length)
        );
        self.issued.push(Issued {
            endpoint,
            series,
            value: value.clone(),
            caller: caller.clone(),
            issued_at: SystemTime::now(),
            expires_wall: SystemTime::now() + behaviour.expires_in,
            expires_at: now + behaviour.expires_in,
            dies_at: behaviour
                .early_invalidation
                .filter(|early| *early < behaviour.expires_in)
                .map(|early| now + early),
            answers: 1,
        });
        Answer {
            value,
            expires_in: behaviour.expires_in,
        }
    }

    /// Kills every live access token now, as WeCom may.
    pub fn invalidate_tokens(&mut self) {
        let now = Instant::now();
        self.issued
            .iter_mut()
            .filter(|i| i.endpoint.issues_tokens())
            .for_each(|i| i.kill_at(now));
    }

    /// The component token `token`, if this app (a component) issued it.
    pub fn component_token(&self, token: &str) -> Option<&Issued> {
        self.issued
            .iter()
            .find(|i| i.endpoint == Endpoint::ComponentToken && i.value == token)
    }

    /// The app's access token `token`, if it issued it.
    pub fn token(&self, token: &str) -> Option<&Issued> {
        self.issued
            .iter()
            .find(|i| i.endpoint.issues_tokens() && i.value == token)
    }
}
