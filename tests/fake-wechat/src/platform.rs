//! What WeChat knows of an Open Platform component (第三方平台) besides its
//! app: the verify tickets it pushed, the accounts that authorized it
//! (their refresh tokens, authorization codes), and where its pushes go.
//! No HTTP here: the endpoints are in [`crate::platform_handlers`], the
//! pushes in [`crate::pushes`].
//!
//! WeChat's rules as modelled (design-issue15 §1, `shared/open-platform.md`):
//!
//! - A verify ticket may be used for 12 hours after it was pushed; a
//!   repeated push of the same value does not extend it.
//! - An authorization gives a new refresh token (the earlier one dies at
//!   once: "用户重新授权后,之前的刷新令牌会失效") and an authorization
//!   code, which can be exchanged once, within an hour. WeChat echoes the
//!   refresh token on every `api_authorizer_token`; in rotation mode (the
//!   pessimistic reading) it answers a new one every call, the replaced one
//!   accepted for a grace period.
//! - `api_get_authorizer_list` shows an authorizer's refresh token only once
//!   one of its codes was exchanged (community reports); withdrawn
//!   authorizers are not listed.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use rand::distr::{Alphanumeric, SampleString};

use crate::component::{Component, ComponentConfig};
use crate::model::{App, AppConfig};
use crate::pushes::{self, PushLog, Pushes};
use crate::{lock, FakeWechat, World};

/// WeChat: a verify ticket may be used 12 hours ("有效期为 12h").
pub const TICKET_LIFE: Duration = Duration::from_secs(12 * 3600);

/// How long an authorization code may be exchanged (WeChat: an hour).
pub const CODE_LIFE: Duration = Duration::from_secs(3600);

/// In rotation mode, how long a replaced refresh token is still accepted
/// (a WeChat staff answer reports 5 minutes after a change; UNVERIFIED).
pub const REFRESH_TOKEN_GRACE: Duration = Duration::from_secs(300);

/// The permission sets an authorization grants unless a test says
/// otherwise (`func_info[].funcscope_category.id`).
const DEFAULT_FUNC_INFO: [i64; 3] = [1, 2, 3];

/// One component's state besides its app (secret, token endpoint).
pub(crate) struct Platform {
    /// Every verify ticket WeChat pushed, with when it first did.
    pub(crate) tickets: Vec<(String, SystemTime)>,
    /// How long a ticket may be used.
    pub(crate) ticket_life: Duration,
    /// `api_start_push_ticket` calls answered `ok` (pushes restarted).
    pub(crate) push_requests: u32,
    /// The accounts that authorized it (or did and withdrew), by appid.
    pub(crate) authorizers: HashMap<String, Authorizer>,
    /// Their appids in the order they first authorized (the list's order).
    pub(crate) order: Vec<String>,
    /// Every authorization code issued, by value.
    pub(crate) codes: HashMap<String, Code>,
    /// How long a code may be exchanged (checked at the exchange).
    pub(crate) code_life: Duration,
    /// Rotation mode: how long a replaced refresh token is accepted.
    pub(crate) grace: Duration,
    pub(crate) pushes: Pushes,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            tickets: Vec::new(),
            ticket_life: TICKET_LIFE,
            push_requests: 0,
            authorizers: HashMap::new(),
            order: Vec::new(),
            codes: HashMap::new(),
            code_life: CODE_LIFE,
            grace: REFRESH_TOKEN_GRACE,
            pushes: Pushes::default(),
        }
    }
}

/// An account that authorized a component.
#[derive(Debug, Clone)]
pub(crate) struct Authorizer {
    /// `None` after a withdrawal.
    pub(crate) refresh_token: Option<String>,
    /// Replaced refresh tokens still accepted until then (rotation mode).
    pub(crate) previous: Vec<(String, Instant)>,
    /// Whether a code of the current authorization was exchanged (else the
    /// list leaves its refresh token out).
    pub(crate) exchanged: bool,
    /// A new refresh token at every `api_authorizer_token`.
    pub(crate) rotate: bool,
    pub(crate) auth_time: SystemTime,
    /// Permission sets granted; none = no API permission (the exchange
    /// then answers no token and no refresh token).
    pub(crate) func_info: Vec<i64>,
}

/// An authorization code.
#[derive(Debug, Clone)]
pub(crate) struct Code {
    pub(crate) authorizer: String,
    pub(crate) issued_at: Instant,
    /// Exchanged, or killed by a later authorization or a withdrawal.
    pub(crate) spent: bool,
}

/// Why a refresh token is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefreshRefusal {
    /// 61003: not authorized (never, or withdrawn).
    NotAuthorized,
    /// 61023: not its current refresh token (nor one in its grace).
    Invalid,
}

/// Why a code cannot be exchanged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CodeRefusal {
    /// 61009: WeChat never issued it.
    Unknown,
    /// 61010: used, killed, or older than the code life.
    Expired,
}

pub(crate) fn random(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 43)
    )
}

impl Platform {
    /// Whether WeChat pushed `ticket` and it is within its life (`Ok`), or
    /// 61006 (never pushed, or empty) / 61005 (too old).
    pub(crate) fn check_ticket(&self, ticket: &str) -> Result<(), (i64, &'static str)> {
        let pushed = self.tickets.iter().find(|(t, _)| t == ticket);
        match pushed {
            None => Err((61006, "component ticket is invalid")),
            Some((_, at))
                if SystemTime::now().duration_since(*at).unwrap_or_default()
                    >= self.ticket_life =>
            {
                Err((61005, "component ticket is expired"))
            }
            Some(_) => Ok(()),
        }
    }

    /// WeChat pushed `ticket` now (a repeat keeps its first time).
    pub(crate) fn pushed(&mut self, ticket: &str) {
        if !self.tickets.iter().any(|(t, _)| t == ticket) {
            self.tickets.push((ticket.to_owned(), SystemTime::now()));
        }
    }

    /// `appid` authorizes (again): a new refresh token, the earlier one and
    /// earlier codes dead; with a code (returned) unless `silently`, in
    /// which case the authorization counts as exchanged long ago (the list
    /// shows its refresh token).
    pub(crate) fn authorize(&mut self, appid: &str, silently: bool) -> Option<String> {
        self.kill_codes(appid);
        let (rotate, func_info) = self
            .authorizers
            .get(appid)
            .map_or((false, DEFAULT_FUNC_INFO.to_vec()), |a| {
                (a.rotate, a.func_info.clone())
            });
        if !self.authorizers.contains_key(appid) {
            self.order.push(appid.to_owned());
        }
        self.authorizers.insert(
            appid.to_owned(),
            Authorizer {
                refresh_token: Some(random("refreshtoken@@@")),
                previous: Vec::new(),
                exchanged: silently,
                rotate,
                auth_time: SystemTime::now(),
                func_info,
            },
        );
        (!silently).then(|| self.new_code(appid))
    }

    /// A new authorization code for `appid` (earlier ones dead).
    pub(crate) fn new_code(&mut self, appid: &str) -> String {
        self.kill_codes(appid);
        let code = random("queryauthcode@@@");
        self.codes.insert(
            code.clone(),
            Code {
                authorizer: appid.to_owned(),
                issued_at: Instant::now(),
                spent: false,
            },
        );
        code
    }

    fn kill_codes(&mut self, appid: &str) {
        self.codes
            .values_mut()
            .filter(|c| c.authorizer == appid)
            .for_each(|c| c.spent = true);
    }

    /// `appid` withdraws: its refresh token and codes die.
    pub(crate) fn unauthorize(&mut self, appid: &str) {
        self.kill_codes(appid);
        if let Some(a) = self.authorizers.get_mut(appid) {
            a.refresh_token = None;
            a.previous.clear();
            a.exchanged = false;
        }
    }

    /// The authorizer whose code `code` is, if it can be exchanged now.
    pub(crate) fn check_code(&self, code: &str) -> Result<String, CodeRefusal> {
        let found = self.codes.get(code).ok_or(CodeRefusal::Unknown)?;
        if found.spent || found.issued_at.elapsed() >= self.code_life {
            return Err(CodeRefusal::Expired);
        }
        Ok(found.authorizer.clone())
    }

    /// `code` (checked) is exchanged: spent, and its authorization's
    /// refresh token listed from now on.
    pub(crate) fn spend_code(&mut self, code: &str) {
        let Some(found) = self.codes.get_mut(code) else {
            return;
        };
        found.spent = true;
        if let Some(a) = self.authorizers.get_mut(&found.authorizer) {
            a.exchanged = true;
        }
    }

    /// Whether `sent` is `appid`'s refresh token: its current one, or in
    /// rotation mode one replaced within the grace period.
    pub(crate) fn check_refresh(&self, appid: &str, sent: &str) -> Result<(), RefreshRefusal> {
        let authorizer = self
            .authorizers
            .get(appid)
            .ok_or(RefreshRefusal::NotAuthorized)?;
        let current = authorizer
            .refresh_token
            .as_deref()
            .ok_or(RefreshRefusal::NotAuthorized)?;
        let now = Instant::now();
        let in_grace = |(t, until): &(String, Instant)| t == sent && *until > now;
        match !sent.is_empty() && (sent == current || authorizer.previous.iter().any(in_grace)) {
            true => Ok(()),
            false => Err(RefreshRefusal::Invalid),
        }
    }

    /// The refresh token a successful `api_authorizer_token` answers: the
    /// current one, or in rotation mode a new one (the replaced one kept
    /// for the grace period).
    pub(crate) fn answer_refresh(&mut self, appid: &str) -> Option<String> {
        let grace = self.grace;
        let authorizer = self.authorizers.get_mut(appid)?;
        let current = authorizer.refresh_token.clone()?;
        if !authorizer.rotate {
            return Some(current);
        }
        let now = Instant::now();
        authorizer.previous.retain(|(_, until)| *until > now);
        let next = random("refreshtoken@@@");
        authorizer.previous.push((current, now + grace));
        authorizer.refresh_token = Some(next.clone());
        Some(next)
    }

    /// `appid`'s refresh token stops working with no event (lost, or made
    /// stale behind the holder's back); WeChat's current one, which the
    /// list shows, is a new one.
    pub(crate) fn invalidate_refresh_token(&mut self, appid: &str) {
        if let Some(a) = self.authorizers.get_mut(appid) {
            if a.refresh_token.is_some() {
                a.refresh_token = Some(random("refreshtoken@@@"));
                a.previous.clear();
                a.exchanged = true;
            }
        }
    }

    /// The authorizers `api_get_authorizer_list` counts, in order.
    pub(crate) fn listed(&self) -> impl Iterator<Item = (&String, &Authorizer)> {
        self.order.iter().filter_map(|appid| {
            let a = self.authorizers.get(appid)?;
            a.refresh_token.is_some().then_some((appid, a))
        })
    }
}

impl World {
    pub(crate) fn platform(&mut self, component: &str) -> &mut Platform {
        self.platforms
            .get_mut(component)
            .unwrap_or_else(|| panic!("fake WeChat: no component {component}"))
    }

    /// `appid` gets an app of its own, if it has none, so that its
    /// authorizer tokens are accepted by the business API and the ticket
    /// endpoints like any account's.
    pub(crate) fn ensure_app(&mut self, appid: &str) {
        if !self.apps.contains_key(appid) {
            let config = AppConfig::new(appid, &random("authorizer-has-no-secret-"));
            self.apps.insert(appid.to_owned(), App::new(config));
        }
    }
}

/// The test's side: components, authorizations, pushes.
impl FakeWechat {
    /// Adds an Open Platform component: `config` is its appid and
    /// component secret, and how [`crate::Endpoint::ComponentToken`] (and the
    /// other component endpoints) behave.
    pub fn add_component(&self, config: AppConfig) {
        let appid = config.appid.clone();
        self.add_app(config);
        lock(&self.world)
            .platforms
            .insert(appid, Platform::default());
    }

    fn with_platform<T>(&self, component: &str, f: impl FnOnce(&mut Platform) -> T) -> T {
        f(lock(&self.world).platform(component))
    }

    /// WeChat pushed `ticket` to `component`'s callback URL now (the test
    /// sent the push itself): from now on `api_component_token` accepts
    /// it, for the ticket life.
    pub fn pushed_verify_ticket(&self, component: &str, ticket: &str) {
        self.with_platform(component, |p| p.pushed(ticket));
    }

    /// Every verify ticket WeChat pushed (or was told it pushed), oldest
    /// first.
    pub fn verify_tickets(&self, component: &str) -> Vec<String> {
        self.with_platform(component, |p| {
            p.tickets.iter().map(|(t, _)| t.clone()).collect()
        })
    }

    /// How long a verify ticket may be used (WeChat: 12 hours), counted
    /// from its first push, for tickets already pushed too; shorter makes
    /// them expire (61005).
    pub fn set_ticket_life(&self, component: &str, life: Duration) {
        self.with_platform(component, |p| p.ticket_life = life);
    }

    /// `api_start_push_ticket` calls answered `ok` (pushes restarted).
    pub fn start_push_requests(&self, component: &str) -> u32 {
        self.with_platform(component, |p| p.push_requests)
    }

    /// From now on WeChat pushes `messages.appid`'s verify tickets (see
    /// [`Self::start_pushes`], [`Self::push_ticket_now`]) and authorization
    /// events ([`Self::authorize`], …) to `targets`, round-robin, encrypted
    /// with `messages`' token and key. Needs a tokio runtime.
    pub fn set_push_targets(&self, messages: &ComponentConfig, targets: Vec<String>) {
        let sender = Component::new(messages.clone());
        let task = pushes::set_targets(&self.world, &messages.appid, sender, targets);
        self.keep(task);
    }

    /// Starts WeChat's timed verify ticket pushes (every 10 minutes at
    /// WeChat), the first one now. Needs push targets.
    pub fn start_pushes(&self, component: &str, every: Duration) {
        let task = pushes::start_timer(&self.world, component, every);
        self.keep(task);
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    /// Stops (or resumes) the timed ticket pushes, as when WeChat stops
    /// pushing; `api_start_push_ticket` resumes them.
    pub fn pause_pushes(&self, component: &str, paused: bool) {
        self.with_platform(component, |p| p.pushes.paused = paused);
    }

    /// A new ticket value every `pushes` ticket pushes, repeats in between
    /// (WeChat repeats values; when it changes them is UNVERIFIED). 1 (the
    /// default): a new one every push.
    pub fn new_ticket_every(&self, component: &str, pushes: u64) {
        self.with_platform(component, |p| p.pushes.new_ticket_every = pushes);
    }

    /// Pushes a verify ticket now (after any queued push) and says how it
    /// went. Needs push targets.
    pub async fn push_ticket_now(&self, component: &str) -> PushLog {
        pushes::ticket_now(&self.world, component).await
    }

    /// Every push sent so far, oldest first, with its answer.
    pub fn pushes(&self, component: &str) -> Vec<PushLog> {
        self.with_platform(component, |p| p.pushes.log.clone())
    }

    /// `authorizer` authorizes `component` (again): a new refresh token (an
    /// earlier one and earlier codes die, as after a re-authorization) and
    /// an authorization code (valid an hour, once), returned and pushed in
    /// an `authorized` event when the component has push targets (else the
    /// test pushes it). The authorizer gets an app of its own, whose tokens
    /// `getticket` and `getcallbackip` accept like an account's.
    pub fn authorize(&self, component: &str, authorizer: &str) -> String {
        let mut world = lock(&self.world);
        world.ensure_app(authorizer);
        let platform = world.platform(component);
        let code = platform
            .authorize(authorizer, false)
            .expect("a code unless silently");
        platform.push_event("authorized", |sender, now| {
            sender.authorized(authorizer, &code, now)
        });
        code
    }

    /// As [`Self::authorize`] long ago: no code, no event, and the list
    /// shows its refresh token (bulk set-up for discovery).
    pub fn authorize_silently(&self, component: &str, authorizer: &str) {
        let mut world = lock(&self.world);
        world.ensure_app(authorizer);
        world.platform(component).authorize(authorizer, true);
    }

    /// `authorizer` changes its permission sets: a new code (earlier ones
    /// die), pushed in an `updateauthorized` event; the refresh token
    /// stays. Panics unless it authorizes `component` now.
    pub fn update_authorization(&self, component: &str, authorizer: &str) -> String {
        let mut world = lock(&self.world);
        let platform = world.platform(component);
        let authorized = platform
            .authorizers
            .get(authorizer)
            .is_some_and(|a| a.refresh_token.is_some());
        assert!(
            authorized,
            "fake WeChat: {authorizer} does not authorize {component}"
        );
        let code = platform.new_code(authorizer);
        platform.push_event("updateauthorized", |sender, now| {
            sender.update_authorized(authorizer, &code, now)
        });
        code
    }

    /// `authorizer` withdraws: its refresh token and codes die, and its
    /// tokens at once; an `unauthorized` event is pushed.
    pub fn unauthorize(&self, component: &str, authorizer: &str) {
        let mut world = lock(&self.world);
        let platform = world.platform(component);
        platform.unauthorize(authorizer);
        platform.push_event("unauthorized", |sender, now| {
            sender.unauthorized(authorizer, now)
        });
        if let Some(app) = world.apps.get_mut(authorizer) {
            app.invalidate_tokens();
        }
    }

    /// The authorizer's current refresh token at WeChat (`None` if it never
    /// authorized or withdrew).
    pub fn refresh_token_of(&self, component: &str, authorizer: &str) -> Option<String> {
        self.with_platform(component, |p| {
            p.authorizers.get(authorizer)?.refresh_token.clone()
        })
    }

    /// The refresh token the daemon holds stops working, with no event
    /// (61023 from now on); WeChat's current one is a new one, which
    /// `api_get_authorizer_list` shows.
    pub fn invalidate_refresh_token(&self, component: &str, authorizer: &str) {
        self.with_platform(component, |p| p.invalidate_refresh_token(authorizer));
    }

    /// From now on every `api_authorizer_token` of `authorizer` answers a
    /// new refresh token, the replaced one accepted for the grace period
    /// ([`Self::set_refresh_token_grace`]): the pessimistic reading of
    /// WeChat's docs. `false`: echo it, as WeChat does. Kept across
    /// re-authorizations.
    pub fn rotate_refresh_tokens(&self, component: &str, authorizer: &str, rotate: bool) {
        self.with_platform(component, |p| {
            if let Some(a) = p.authorizers.get_mut(authorizer) {
                a.rotate = rotate;
            }
        });
    }

    /// How long a refresh token replaced in rotation mode is still
    /// accepted ([`REFRESH_TOKEN_GRACE`] by default).
    pub fn set_refresh_token_grace(&self, component: &str, grace: Duration) {
        self.with_platform(component, |p| p.grace = grace);
    }

    /// How long an authorization code may be exchanged ([`CODE_LIFE`] by
    /// default), for codes already issued too.
    pub fn set_code_life(&self, component: &str, life: Duration) {
        self.with_platform(component, |p| p.code_life = life);
    }

    /// The permission sets `authorizer` (authorized already) grants from
    /// now on, as the next exchange of its code answers them; none = no
    /// API permission, so that the exchange answers no token and no
    /// refresh token.
    pub fn set_func_info(&self, component: &str, authorizer: &str, ids: &[i64]) {
        self.with_platform(component, |p| {
            if let Some(a) = p.authorizers.get_mut(authorizer) {
                a.func_info = ids.to_vec();
            }
        });
    }
}

impl Platform {
    /// Queues the event `build` makes, if the component has push targets.
    fn push_event(
        &self,
        info_type: &'static str,
        build: impl FnOnce(&Component, SystemTime) -> crate::component::Push,
    ) {
        if let Some(sender) = self.pushes.sender() {
            self.pushes
                .event(build(sender, SystemTime::now()), info_type);
        }
    }
}

#[cfg(test)]
mod tests;
