//! The refresh decisions, without I/O: where a refresher is ([`State`]),
//! what it must do next ([`Machine::next`]), and how each outcome moves it
//! on. Time comes in as an argument, so every rule (schedule from
//! `expires_in`, margin cap, backoff, quota stop, forced refresh, repeat
//! answers, a fetched token kept through an outage) is unit-tested in
//! microseconds; the refresher in `mod.rs` only performs the actions and
//! reports the outcomes.
//!
//! **Repeat answers.** WeChat may answer with the value already stored
//! (`getticket` and WeCom until the value dies, `stable_token` until its
//! last minutes). Nothing is written and the earliest known expiry stands,
//! so readers never get a value past the moment it may die. The next try
//! comes at half the time left, never sooner than [`MIN_REPEAT_RETRY`] and
//! never later than that expiry: with `m` the effective margin, at most
//! `⌊log2(m / 1 s)⌋ + 2` calls per value reach it (11 for the default 10
//! minutes; `repeat_calls_until_expiry`), and one more at the stored
//! expiry where WeChat's `expires_in` counting down in whole seconds put
//! the earliest known one before it. Past the stored expiry, WeChat's own
//! copy dies within one call's latency (its clock started after our
//! request was sent, from which the stored expiry counts), so the next
//! tries come [`EXPIRED_REPEAT_RETRY`] apart, doubling (with the jitter of
//! every backoff), up to `refresh.retry_max`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use wxtokend_reader::{Credential, Generation, RefreshReason};

use super::backoff::{effective_margin, Backoff};
use crate::config::RefreshSettings;
use crate::coordination::quota::next_quota_reset;
use crate::coordination::RefreshRequest;
use crate::wechat::{ErrorClass, FetchedCredential};

/// How long a refresher that lost its lease idles until it is stopped.
pub const FENCED_IDLE: Duration = Duration::from_secs(3600);

/// After a repeat answer, the next try never comes sooner than this before
/// the stored expiry.
pub const MIN_REPEAT_RETRY: Duration = Duration::from_secs(1);

/// Past the stored expiry, a value WeChat still repeats is asked for again
/// after about this long (doubling): WeChat's copy dies within a call's
/// latency.
pub const EXPIRED_REPEAT_RETRY: Duration = Duration::from_millis(50);

/// The first calls of a new quota day are spread over this long.
const QUOTA_RESET_SPREAD: Duration = Duration::from_secs(60);

/// While an API's quota is spent, its permit is asked again this often.
const QUOTA_RECHECK: Duration = Duration::from_secs(60);

/// The most calls a stored value gets, from the first scheduled one to the
/// one at its stored expiry, while WeChat repeats it: the first at the
/// margin `margin` (the effective one), then at half the time left while
/// that is at least 2 × [`MIN_REPEAT_RETRY`], one more then, and one at the
/// expiry itself.
#[cfg(test)]
pub fn repeat_calls_until_expiry(margin: Duration) -> u32 {
    let ratio = margin.as_secs_f64() / MIN_REPEAT_RETRY.as_secs_f64();
    if ratio < 2.0 {
        return 2;
    }
    ratio.log2().floor() as u32 + 2
}

/// The credential a refresher relies on: the newest stored one (possibly
/// expired: WeChat may still repeat it for a moment).
#[derive(Debug, Clone)]
pub struct Held {
    pub generation: Generation,
    pub expires_at: SystemTime,
    pub lifetime: Duration,
    /// To recognise WeChat answering it again.
    pub value: SecretString,
}

impl Held {
    pub fn of(credential: &Credential) -> Self {
        Self {
            generation: credential.generation,
            expires_at: credential.expires_at,
            lifetime: credential.expires_in,
            value: credential.value.clone(),
        }
    }
}

/// A fetched credential waiting to be written to MongoDB.
#[derive(Debug)]
pub struct Pending {
    pub fetched: FetchedCredential,
    pub reason: RefreshReason,
    /// It was asked for with `force_refresh`.
    pub forced: bool,
    /// What was relied on before: kept if the fetched one is dropped.
    pub held: Option<Held>,
}

impl Pending {
    /// WeChat answered with the value relied on: a repeat, whatever its
    /// `expires_in` (which may have counted down to zero). The store
    /// recognises it and writes nothing.
    fn repeats_held(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.value.expose_secret() == self.fetched.value.expose_secret())
    }
}

/// Where a refresher is.
#[derive(Debug)]
pub enum State {
    /// The lease was just taken: read what is stored first (a valid stored
    /// token is reused, never rotated).
    Loading,
    /// Relying on a stored credential, or with `None` on nothing (none is
    /// stored, or it expired): refresh when it enters its margin.
    Holding(Option<Held>),
    /// Fetched but not stored: write it before anything else, and never ask
    /// WeChat again for it (a new fetch would rotate the token for nothing).
    Pending(Pending),
    /// The lease moved on: no call and no write any more.
    Fenced,
}

/// What the refresher must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the newest stored credential.
    Load,
    /// Write the pending credential.
    Store,
    /// Ask for a permit, then call WeChat.
    Fetch(RefreshReason),
    /// The pending credential expired before it could be stored: it was
    /// dropped, and a new fetch follows.
    DropExpired,
    /// Nothing to do for this long.
    Wait(Duration),
}

/// What became of a refresh request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A refresh will follow as soon as permitted.
    Accepted(RefreshReason),
    /// A report about an older or unknown generation: nothing to do.
    Ignored { newest: Option<Generation> },
}

/// What a [`Machine`] reads of the refresh settings after it is made.
#[derive(Debug, Clone, Copy)]
struct Timings {
    margin: Duration,
    request_poll_interval: Duration,
    permanent_error_retry: Duration,
}

/// One credential's refresh decisions.
#[derive(Debug)]
pub struct Machine {
    state: State,
    /// The settings it decides with (not all of [`RefreshSettings`]: one
    /// machine per credential, 10,000s of them).
    settings: Timings,
    /// A refresh asked for by a request, wanted until a fetch succeeds.
    forced: Option<RefreshReason>,
    /// This credential's endpoint can be forced to issue a new value
    /// (stable_token's `force_refresh`).
    can_force: bool,
    /// The next fetch is sent with `force_refresh`: a reported value that
    /// WeChat answered again to a plain request.
    force_refresh: bool,
    /// No fetch before this time: the quota is spent, or a forced refresh
    /// came too soon. Nothing overrides it.
    not_before: Option<SystemTime>,
    /// No fetch before this time after a failed one (backoff, or the long
    /// wait after a permanent error). An operator's manual refresh
    /// overrides it: they may just have fixed the cause.
    retry_after: Option<SystemTime>,
    fetch_backoff: Backoff,
    store_backoff: Backoff,
    /// Tries after the stored expiry of a value WeChat still repeats.
    expired_repeats: Backoff,
}

impl Machine {
    /// `can_force`: the endpoint has a forced refresh (stable_token).
    pub fn new(settings: RefreshSettings, can_force: bool) -> Self {
        let backoff = Backoff::new(settings.retry_initial, settings.retry_max);
        let expired_repeats = Backoff::new(EXPIRED_REPEAT_RETRY, settings.retry_max);
        Self {
            state: State::Loading,
            settings: Timings {
                margin: settings.margin,
                request_poll_interval: settings.request_poll_interval,
                permanent_error_retry: settings.permanent_error_retry,
            },
            forced: None,
            can_force,
            force_refresh: false,
            not_before: None,
            retry_after: None,
            fetch_backoff: backoff.clone(),
            store_backoff: backoff,
            expired_repeats,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The refresh asked for by a request, if one is wanted.
    pub fn forced(&self) -> Option<RefreshReason> {
        self.forced
    }

    /// Whether the next fetch is sent with `force_refresh`: only after
    /// WeChat answered a plain request with the very value reported invalid.
    pub fn force_refresh(&self) -> bool {
        self.force_refresh && self.forced == Some(RefreshReason::ReportedInvalid)
    }

    /// The value relied on, to recognise WeChat repeating it.
    pub fn held_value(&self) -> Option<&SecretString> {
        match &self.state {
            State::Holding(Some(held)) => Some(&held.value),
            _ => None,
        }
    }

    /// Failed fetches in a row.
    pub fn fetch_attempts(&self) -> u32 {
        self.fetch_backoff.attempts()
    }

    /// The pending credential, if one is waiting to be stored.
    pub fn pending(&self) -> Option<&Pending> {
        match &self.state {
            State::Pending(pending) => Some(pending),
            _ => None,
        }
    }

    /// The next action at `now`.
    pub fn next(&mut self, now: SystemTime) -> Action {
        match &self.state {
            State::Fenced => Action::Wait(FENCED_IDLE),
            State::Loading => Action::Load,
            State::Pending(pending)
                if pending.fetched.expires_at() <= now && !pending.repeats_held() =>
            {
                let State::Pending(pending) = std::mem::replace(&mut self.state, State::Fenced)
                else {
                    unreachable!("matched as pending")
                };
                self.state = State::Holding(pending.held);
                Action::DropExpired
            }
            State::Pending(_) => Action::Store,
            State::Holding(held) => {
                let due = match (self.forced, held) {
                    (Some(_), _) => now,
                    (None, Some(held)) => {
                        held.expires_at - effective_margin(self.settings.margin, held.lifetime)
                    }
                    (None, None) => UNIX_EPOCH,
                };
                let due = due
                    .max(self.not_before.unwrap_or(now))
                    .max(self.retry_after.unwrap_or(now));
                match due.duration_since(now) {
                    Ok(wait) if !wait.is_zero() => Action::Wait(wait),
                    _ => Action::Fetch(self.reason(held.as_ref(), now)),
                }
            }
        }
    }

    fn reason(&self, held: Option<&Held>, now: SystemTime) -> RefreshReason {
        match (self.forced, held) {
            (Some(forced), _) => forced,
            (None, Some(held)) if held.expires_at > now => RefreshReason::Scheduled,
            _ => RefreshReason::Startup,
        }
    }

    /// The newest stored credential was read: reuse it while valid (an
    /// expired one is held too, only to recognise WeChat repeating it: it
    /// is due at once).
    pub fn loaded(&mut self, newest: Option<&Credential>) {
        self.store_backoff.reset();
        self.expired_repeats.reset();
        self.state = State::Holding(newest.map(Held::of));
    }

    /// Reading or writing MongoDB failed: how long to wait before retrying
    /// (a pending credential stays pending).
    pub fn store_failed(&mut self) -> Duration {
        self.store_backoff.next_delay()
    }

    /// No permit: the lease is not held with enough time left (the renewal
    /// may be late, or the lease moved on and the coordinator will stop us).
    pub fn not_holder(&self) -> Duration {
        self.settings.request_poll_interval
    }

    /// A forced refresh came too soon after the previous one.
    pub fn too_soon(&mut self, retry_in: Duration, now: SystemTime) -> Duration {
        self.not_before = Some(now + retry_in);
        retry_in
    }

    /// Today's forced refreshes are spent: the forced refresh is dropped.
    pub fn forced_spent(&mut self) {
        self.forced = None;
        self.force_refresh = false;
    }

    /// The day's quota of this API is spent (our ceiling, or WeChat's
    /// 45009): no fetch until WeChat's quota day ends, spread over a
    /// minute. The permit is asked again every [`QUOTA_RECHECK`] meanwhile
    /// (MongoDB only, never WeChat), so that a stop cleared by
    /// `wxtokend quota --clear` ends within a minute, not at midnight.
    /// Returns the time until the reset and the wait before the next ask.
    pub fn quota_spent(&mut self, now: SystemTime) -> (Duration, Duration) {
        let spread = rand::rng().random_range(Duration::ZERO..QUOTA_RESET_SPREAD);
        let reset = next_quota_reset(now)
            .duration_since(now)
            .unwrap_or_default()
            + spread;
        let wait = reset.min(QUOTA_RECHECK);
        self.not_before = Some(now + wait);
        (reset, wait)
    }

    /// WeChat answered with a credential: store it next.
    pub fn fetched(&mut self, fetched: FetchedCredential, reason: RefreshReason) {
        let forced = self.force_refresh();
        self.not_before = None;
        self.retry_after = None;
        self.fetch_backoff.reset();
        self.forced = None;
        self.force_refresh = false;
        let held = match std::mem::replace(&mut self.state, State::Fenced) {
            State::Holding(held) => held,
            _ => None,
        };
        self.state = State::Pending(Pending {
            fetched,
            reason,
            forced,
            held,
        });
    }

    /// The fetch failed with an error of `class` (other than the daily
    /// quota): how long to wait before the next attempt. `retry_after` is
    /// WeChat's own word on when, where it gives one.
    pub fn fetch_failed(
        &mut self,
        class: ErrorClass,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Duration {
        let wait = match (retry_after, class) {
            (Some(after), _) => after,
            (None, ErrorClass::Permanent) => self.settings.permanent_error_retry,
            // Never past the expiry of the credential relied on: where WeChat
            // repeats a value until it dies, that is when the next one comes,
            // and readers have nothing until it is stored.
            (None, _) => {
                let backoff = self.fetch_backoff.next_delay();
                match self
                    .held_expiry()
                    .and_then(|at| at.duration_since(now).ok())
                {
                    Some(left) if !left.is_zero() => backoff.min(left),
                    _ => backoff,
                }
            }
        };
        self.retry_after = Some(now + wait);
        wait
    }

    /// When the credential relied on expires.
    fn held_expiry(&self) -> Option<SystemTime> {
        match &self.state {
            State::Holding(Some(held)) => Some(held.expires_at),
            _ => None,
        }
    }

    /// The pending credential is stored as `generation`.
    pub fn stored(&mut self, generation: Generation) {
        self.store_backoff.reset();
        self.expired_repeats.reset();
        let State::Pending(pending) = &self.state else {
            return;
        };
        self.state = State::Holding(Some(Held {
            generation,
            expires_at: pending.fetched.expires_at(),
            lifetime: pending.fetched.expires_in,
            value: pending.fetched.value.clone(),
        }));
    }

    /// The pending credential was found stored as `generation`, newer than
    /// the one held, expiring at `stored_expiry` (a write whose answer was
    /// lost had landed, or a former holder stored the same value): stored,
    /// with the earlier of the two expiries. Not a repeat: it is a new
    /// value, so a report about the held one is answered.
    pub fn landed(&mut self, generation: Generation, stored_expiry: SystemTime) {
        self.stored(generation);
        if let State::Holding(Some(held)) = &mut self.state {
            held.expires_at = held.expires_at.min(stored_expiry);
        }
    }

    /// WeChat answered with the value stored as `generation`, which
    /// expires at `stored_expiry`: the earliest known expiry stands (a
    /// repeat never extends it), and the next try comes as the module
    /// documentation says, until WeChat issues a new value. A value that
    /// was reported invalid and comes back from a plain request is asked
    /// for again at once with `force_refresh`, where the endpoint has one.
    pub fn repeated(&mut self, generation: Generation, stored_expiry: SystemTime, now: SystemTime) {
        self.store_backoff.reset();
        let State::Pending(pending) = &self.state else {
            return;
        };
        let expires_at = stored_expiry.min(pending.fetched.expires_at());
        let escalate =
            self.can_force && pending.reason == RefreshReason::ReportedInvalid && !pending.forced;
        self.state = State::Holding(Some(Held {
            generation,
            expires_at,
            lifetime: pending.fetched.expires_in,
            value: pending.fetched.value.clone(),
        }));
        if escalate {
            self.forced = Some(RefreshReason::ReportedInvalid);
            self.force_refresh = true;
            return;
        }
        let wait = self.next_repeat_try(expires_at, stored_expiry, now);
        self.retry_after = Some(now + wait);
    }

    /// How long after a repeat answer at `now` to ask again, for a value
    /// known to expire at `expires_at` and stored as expiring at
    /// `stored_expiry` (later, when WeChat counted it down in whole
    /// seconds, rounded down).
    fn next_repeat_try(
        &mut self,
        expires_at: SystemTime,
        stored_expiry: SystemTime,
        now: SystemTime,
    ) -> Duration {
        let left = |at: SystemTime| at.duration_since(now).unwrap_or_default();
        match (left(expires_at), left(stored_expiry)) {
            (left, _) if left >= 2 * MIN_REPEAT_RETRY => left / 2,
            // The last try lands at the expiry itself...
            (left, _) if !left.is_zero() => left,
            // ... and one more where readers lose the value: WeChat's
            // copy lives at least until then.
            (_, stored) if !stored.is_zero() => stored,
            _ => self.expired_repeats.next_delay(),
        }
    }

    /// The lease moved on before the pending credential was stored.
    pub fn fenced(&mut self) {
        self.state = State::Fenced;
    }

    /// A business service reported a credential WeChat rejected, or an
    /// operator asked for a refresh. A report counts only for the newest
    /// generation, so any number of reports of one token cause one refresh.
    /// A manual refresh is tried now, whatever the backoff after a failure
    /// (not past a spent quota or the forced-refresh spacing).
    pub fn request(&mut self, request: &RefreshRequest) -> Requested {
        let reason = match request.reason {
            RefreshReason::ReportedInvalid => {
                let newest = match &self.state {
                    State::Holding(held) => held.as_ref().map(|h| h.generation),
                    _ => None,
                };
                if request.generation.is_none() || request.generation != newest {
                    return Requested::Ignored { newest };
                }
                RefreshReason::ReportedInvalid
            }
            _ => {
                self.retry_after = None;
                // A pending report stays: it is the stronger request (it may
                // need stable_token's force_refresh; a manual one never does).
                if self.forced == Some(RefreshReason::ReportedInvalid) {
                    return Requested::Accepted(RefreshReason::ReportedInvalid);
                }
                RefreshReason::Manual
            }
        };
        self.forced = Some(reason);
        Requested::Accepted(reason)
    }
}

#[cfg(test)]
mod tests;
