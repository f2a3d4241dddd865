//! The refresh decisions, without I/O: where a refresher is ([`State`]),
//! what it must do next ([`Machine::next`]), and how each outcome moves it
//! on. Time comes in as an argument, so every rule (schedule from
//! `expires_in`, margin cap, backoff, quota stop, forced refresh, a fetched
//! token kept through an outage) is unit-tested in microseconds; the
//! refresher in `mod.rs` only performs the actions and reports the outcomes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use wxtokend_reader::{Credential, Generation, RefreshReason};

use super::backoff::{effective_margin, Backoff};
use crate::config::RefreshSettings;
use crate::coordination::quota::next_quota_reset;
use crate::coordination::RefreshRequest;
use crate::wechat::{ErrorClass, FetchedCredential};

/// How long a refresher that lost its lease idles until it is stopped.
pub const FENCED_IDLE: Duration = Duration::from_secs(3600);

/// After a repeat answer, the next try never comes sooner than this.
const MIN_REPEAT_RETRY: Duration = Duration::from_secs(1);

/// The first calls of a new quota day are spread over this long.
const QUOTA_RESET_SPREAD: Duration = Duration::from_secs(60);

/// While an API's quota is spent, its permit is asked again this often.
const QUOTA_RECHECK: Duration = Duration::from_secs(60);

/// The credential a refresher relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub generation: Generation,
    pub expires_at: SystemTime,
    pub lifetime: Duration,
}

impl Held {
    pub fn of(credential: &Credential) -> Self {
        Self {
            generation: credential.generation,
            expires_at: credential.expires_at,
            lifetime: credential.expires_in,
        }
    }
}

/// A fetched credential waiting to be written to MongoDB.
#[derive(Debug)]
pub struct Pending {
    pub fetched: FetchedCredential,
    pub reason: RefreshReason,
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

/// One credential's refresh decisions.
#[derive(Debug)]
pub struct Machine {
    state: State,
    settings: RefreshSettings,
    /// A refresh asked for by a request, wanted until a fetch succeeds.
    forced: Option<RefreshReason>,
    /// No fetch before this time: the quota is spent, or a forced refresh
    /// came too soon. Nothing overrides it.
    not_before: Option<SystemTime>,
    /// No fetch before this time after a failed one (backoff, or the long
    /// wait after a permanent error). An operator's manual refresh
    /// overrides it: they may just have fixed the cause.
    retry_after: Option<SystemTime>,
    fetch_backoff: Backoff,
    store_backoff: Backoff,
}

impl Machine {
    pub fn new(settings: RefreshSettings) -> Self {
        let backoff = Backoff::new(settings.retry_initial, settings.retry_max);
        Self {
            state: State::Loading,
            settings,
            forced: None,
            not_before: None,
            retry_after: None,
            fetch_backoff: backoff.clone(),
            store_backoff: backoff,
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
            State::Pending(pending) if pending.fetched.expires_at() <= now => {
                self.state = State::Holding(None);
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
                    _ => Action::Fetch(self.reason(*held, now)),
                }
            }
        }
    }

    fn reason(&self, held: Option<Held>, now: SystemTime) -> RefreshReason {
        match (self.forced, held) {
            (Some(forced), _) => forced,
            (None, Some(held)) if held.expires_at > now => RefreshReason::Scheduled,
            _ => RefreshReason::Startup,
        }
    }

    /// The newest stored credential was read: reuse it while valid.
    pub fn loaded(&mut self, newest: Option<&Credential>, now: SystemTime) {
        self.store_backoff.reset();
        let held = newest.filter(|c| c.is_valid_at(now)).map(Held::of);
        self.state = State::Holding(held);
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
        self.not_before = None;
        self.retry_after = None;
        self.fetch_backoff.reset();
        self.forced = None;
        self.state = State::Pending(Pending { fetched, reason });
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
            (None, _) => self.fetch_backoff.next_delay(),
        };
        self.retry_after = Some(now + wait);
        wait
    }

    /// The pending credential is stored as `generation`.
    pub fn stored(&mut self, generation: Generation) {
        self.store_backoff.reset();
        let State::Pending(pending) = &self.state else {
            return;
        };
        self.state = State::Holding(Some(Held {
            generation,
            expires_at: pending.fetched.expires_at(),
            lifetime: pending.fetched.expires_in,
        }));
    }

    /// WeChat answered with the value stored as `generation`, which
    /// expires at `stored_expiry`: the earliest known expiry stands (a
    /// repeat never extends it), and the next try comes at half the time
    /// left (at least a second later), until WeChat issues a new value.
    pub fn repeated(&mut self, generation: Generation, stored_expiry: SystemTime, now: SystemTime) {
        self.store_backoff.reset();
        let State::Pending(pending) = &self.state else {
            return;
        };
        let expires_at = stored_expiry.min(pending.fetched.expires_at());
        self.state = State::Holding(Some(Held {
            generation,
            expires_at,
            lifetime: pending.fetched.expires_in,
        }));
        let left = expires_at.duration_since(now).unwrap_or_default();
        self.retry_after = Some(now + (left / 2).max(MIN_REPEAT_RETRY));
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
                    State::Holding(held) => held.map(|h| h.generation),
                    _ => None,
                };
                if request.generation.is_none() || request.generation != newest {
                    return Requested::Ignored { newest };
                }
                RefreshReason::ReportedInvalid
            }
            _ => {
                self.retry_after = None;
                RefreshReason::Manual
            }
        };
        self.forced = Some(reason);
        Requested::Accepted(reason)
    }
}

#[cfg(test)]
mod tests;
