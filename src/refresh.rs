//! One refresh task per account: decides when to fetch, fetches, stores, and
//! reacts to failures.
//!
//! [`Refresher::step`] does one unit of work and says how long to wait before
//! the next; [`Refresher::run`] is only the loop around it. The state a step
//! keeps is what survives MongoDB outages: a fetched token that could not be
//! stored stays in memory and is written when MongoDB is back, without asking
//! WeChat again (a new fetch would rotate the token for nothing).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{Account, RefreshSettings};
use crate::domain::{CredentialKind, FetchedCredential, Generation, RefreshReason};
use crate::store::{Store, StoreError};
use crate::wechat::{ErrorClass, FetchError, WechatClient};

/// Seconds east of UTC of Beijing time; WeChat's daily quotas reset at
/// midnight there.
const QUOTA_RESET_UTC_OFFSET: u64 = 8 * 3600;

/// Exponential backoff with jitter: the n-th delay is drawn between half and
/// all of `min(initial * 2^n, max)`, so retries of many accounts spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        half + rand::rng().random_range(Duration::ZERO..=cap - half)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The refresh margin actually used for a token: the configured margin,
/// capped at half the token's lifetime so a short-lived token cannot make
/// the daemon refresh in a loop.
pub fn effective_margin(margin: Duration, lifetime: Duration) -> Duration {
    margin.min(lifetime / 2)
}

/// When WeChat's daily quota resets after `now`: the next midnight in
/// Beijing time.
pub fn next_quota_reset(now: SystemTime) -> SystemTime {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let local_day = (secs + QUOTA_RESET_UTC_OFFSET) / 86_400;
    UNIX_EPOCH + Duration::from_secs((local_day + 1) * 86_400 - QUOTA_RESET_UTC_OFFSET)
}

/// The token this task currently relies on (stored, or in memory only).
#[derive(Debug, Clone, Copy)]
struct Held {
    generation: Option<Generation>,
    expires_at: SystemTime,
    lifetime: Duration,
}

/// A fetched token waiting to be written to MongoDB.
#[derive(Debug)]
struct Pending {
    fetched: FetchedCredential,
    reason: RefreshReason,
}

/// What a problem was, to log a repeated one once rather than every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Fetch(ErrorClass, Option<i64>),
    Store,
}

/// Keeps one account's access token fresh.
pub struct Refresher {
    account: Account,
    kind: CredentialKind,
    wechat: WechatClient,
    store: Store,
    settings: RefreshSettings,
    instance_id: String,
    loaded: bool,
    held: Option<Held>,
    pending: Option<Pending>,
    /// No fetch before this instant (after a failure).
    fetch_not_before: Option<SystemTime>,
    fetch_backoff: Backoff,
    store_backoff: Backoff,
    last_problem: Option<Problem>,
}

impl Refresher {
    pub fn new(
        account: Account,
        wechat: WechatClient,
        store: Store,
        settings: RefreshSettings,
        instance_id: String,
    ) -> Self {
        let backoff = Backoff::new(settings.retry_initial, settings.retry_max);
        Self {
            account,
            kind: CredentialKind::AccessToken,
            wechat,
            store,
            settings,
            instance_id,
            loaded: false,
            held: None,
            pending: None,
            fetch_not_before: None,
            fetch_backoff: backoff.clone(),
            store_backoff: backoff,
            last_problem: None,
        }
    }

    /// Runs until `shutdown` is cancelled. A step in progress is finished
    /// (a fetched token must not be lost); a token that is still unstored at
    /// shutdown gets one last write attempt.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let wait = self.step().await;
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if self.pending.is_some() {
            tracing::info!(account = %self.account.id, "shutting down: storing the fetched token first");
            self.store_pending().await;
        }
    }

    /// Does the next unit of work (load stored state, store a pending token,
    /// or fetch) and returns how long to wait before the next step.
    pub async fn step(&mut self) -> Duration {
        if !self.loaded {
            return self.load_stored().await;
        }
        if self.pending.is_some() {
            return self.store_pending().await;
        }
        let now = SystemTime::now();
        let due = self
            .refresh_due_at()
            .max(self.fetch_not_before.unwrap_or(now));
        match due.duration_since(now) {
            Ok(wait) if !wait.is_zero() => wait,
            _ => self.fetch().await,
        }
    }

    /// When the held token enters its margin (now, if none is held).
    fn refresh_due_at(&self) -> SystemTime {
        self.held.map_or(UNIX_EPOCH, |held| {
            held.expires_at - effective_margin(self.settings.margin, held.lifetime)
        })
    }

    /// At startup, reuse a stored token that is still valid: fetching would
    /// rotate it under every service that already reads it.
    async fn load_stored(&mut self) -> Duration {
        match self.store.newest(self.kind, &self.account.id).await {
            Ok(stored) => {
                self.loaded = true;
                self.recovered_from(&Problem::Store);
                let now = SystemTime::now();
                match stored.filter(|c| c.is_valid_at(now)) {
                    Some(c) => {
                        self.held = Some(Held {
                            generation: Some(c.generation),
                            expires_at: c.expires_at,
                            lifetime: c.expires_in,
                        });
                        tracing::info!(
                            account = %self.account.id,
                            generation = %c.generation,
                            time_left_s = c.time_left(now).as_secs(),
                            "reusing the stored access_token"
                        );
                    }
                    None => tracing::info!(
                        account = %self.account.id,
                        "no valid access_token stored; fetching one"
                    ),
                }
                Duration::ZERO
            }
            Err(e) => self.store_failed(&e, "cannot read the stored access_token"),
        }
    }

    fn reason(&self) -> RefreshReason {
        let now = SystemTime::now();
        match self.held {
            Some(held) if held.expires_at > now => RefreshReason::Scheduled,
            _ => RefreshReason::Startup,
        }
    }

    async fn fetch(&mut self) -> Duration {
        let reason = self.reason();
        match self.wechat.fetch_access_token(&self.account).await {
            Ok(fetched) => {
                tracing::debug!(
                    account = %self.account.id,
                    expires_in_s = fetched.expires_in.as_secs(),
                    %reason,
                    "fetched a new access_token"
                );
                self.fetch_not_before = None;
                self.fetch_backoff.reset();
                self.held = Some(Held {
                    generation: None,
                    expires_at: fetched.expires_at(),
                    lifetime: fetched.expires_in,
                });
                self.pending = Some(Pending { fetched, reason });
                Duration::ZERO
            }
            Err(e) => {
                let wait = self.wait_after(&e);
                self.fetch_not_before = Some(SystemTime::now() + wait);
                self.report_fetch_error(&e, wait);
                wait
            }
        }
    }

    fn wait_after(&mut self, error: &FetchError) -> Duration {
        match error.class() {
            ErrorClass::Transient | ErrorClass::InvalidToken => self.fetch_backoff.next_delay(),
            ErrorClass::Permanent => self.settings.permanent_error_retry,
            ErrorClass::DailyQuota => {
                let now = SystemTime::now();
                next_quota_reset(now)
                    .duration_since(now)
                    .unwrap_or_default()
                    // Spread the first calls of a new day over a minute.
                    + Duration::from_millis(rand::rng().random_range(0..60_000))
            }
        }
    }

    fn report_fetch_error(&mut self, error: &FetchError, wait: Duration) {
        let class = error.class();
        let problem = Problem::Fetch(class, error.errcode());
        let repeated = self.last_problem.as_ref() == Some(&problem);
        self.last_problem = Some(problem);
        let account = &self.account.id;
        let retry_in_s = wait.as_secs();
        match class {
            ErrorClass::Transient | ErrorClass::InvalidToken => tracing::warn!(
                %account, error = %error, attempt = self.fetch_backoff.attempts(), retry_in_s,
                "access_token fetch failed; retrying"
            ),
            _ if repeated => tracing::debug!(
                %account, error = %error, retry_in_s, "access_token fetch still failing"
            ),
            ErrorClass::Permanent => tracing::error!(
                %account, error = %error, retry_in_s,
                "access_token fetch refused by WeChat: fix this account's configuration \
                 (secret, appid, IP whitelist); the last good token is served while valid"
            ),
            ErrorClass::DailyQuota => tracing::error!(
                %account, error = %error, retry_in_s,
                "daily quota for the token call is spent: no fetch until it resets"
            ),
        }
    }

    /// Writes the pending token. On failure it stays pending and is retried
    /// with backoff; one that expired meanwhile is dropped and a new fetch
    /// follows.
    async fn store_pending(&mut self) -> Duration {
        let Some(pending) = self.pending.take() else {
            return Duration::ZERO;
        };
        if pending.fetched.expires_at() <= SystemTime::now() {
            tracing::warn!(
                account = %self.account.id,
                "the fetched access_token expired before MongoDB could store it; fetching again"
            );
            self.held = None;
            return Duration::ZERO;
        }
        let result = self
            .store
            .insert(
                self.kind,
                &self.account.id,
                &pending.fetched,
                pending.reason,
                &self.instance_id,
            )
            .await;
        match result {
            Ok(generation) => {
                self.recovered_from(&Problem::Store);
                self.last_problem = None;
                self.store_backoff.reset();
                if let Some(held) = &mut self.held {
                    held.generation = Some(generation);
                }
                tracing::info!(
                    account = %self.account.id,
                    %generation,
                    expires_in_s = pending.fetched.expires_in.as_secs(),
                    reason = %pending.reason,
                    "stored a new access_token"
                );
                Duration::ZERO
            }
            Err(e) => {
                self.pending = Some(pending);
                self.store_failed(
                    &e,
                    "cannot store the fetched access_token; keeping it in memory",
                )
            }
        }
    }

    fn store_failed(&mut self, error: &StoreError, what: &str) -> Duration {
        let wait = self.store_backoff.next_delay();
        if self.last_problem.as_ref() == Some(&Problem::Store) {
            tracing::debug!(account = %self.account.id, error = %error, retry_in_s = wait.as_secs(), "{what}");
        } else {
            tracing::warn!(account = %self.account.id, error = %error, retry_in_s = wait.as_secs(), "{what}");
        }
        self.last_problem = Some(Problem::Store);
        wait
    }

    fn recovered_from(&mut self, problem: &Problem) {
        if self.last_problem.as_ref() == Some(problem) {
            tracing::info!(account = %self.account.id, "MongoDB is reachable again");
            self.last_problem = None;
            self.store_backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let caps = [1, 2, 4, 8, 8, 8];
        for (d, cap) in delays.iter().zip(caps) {
            let cap = Duration::from_secs(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn margin_is_capped_at_half_the_lifetime() {
        let ten_min = Duration::from_secs(600);
        assert_eq!(
            effective_margin(ten_min, Duration::from_secs(7200)),
            ten_min
        );
        assert_eq!(
            effective_margin(ten_min, Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn quota_resets_at_beijing_midnight() {
        // 2026-11-24 15:59:59 UTC is 23:59:59 in Beijing.
        let before = UNIX_EPOCH + Duration::from_secs(1_795_535_999);
        let reset = next_quota_reset(before);
        assert_eq!(reset, before + Duration::from_secs(1));
        // One second later it is the next day there: the next reset is a day away.
        assert_eq!(next_quota_reset(reset), reset + Duration::from_secs(86_400));
    }
}
