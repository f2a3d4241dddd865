//! One refresh task per account whose lease this replica holds: decides
//! when to fetch, asks MongoDB for a permit, fetches, stores (fenced by the
//! lease term), and reacts to failures and refresh requests.
//!
//! [`Refresher::step`] does one unit of work and says how long to wait before
//! the next; [`Refresher::run`] is only the loop around it. The state a step
//! keeps is what survives MongoDB outages: a fetched token that could not be
//! stored stays in memory and is written when MongoDB is back, without asking
//! WeChat again (a new fetch would rotate the token for nothing).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Account, RefreshSettings};
use crate::domain::{
    next_quota_reset, Credential, CredentialKind, FetchedCredential, Generation, RefreshReason,
};
use crate::metrics::Metrics;
use crate::store::lease::{Permit, PermitRules, Term};
use crate::store::requests::RefreshRequest;
use crate::store::{Inserted, NewFetch, Store, StoreError};
use crate::wechat::{ErrorClass, FetchError, WechatClient, STABLE_TOKEN_FORCED_PER_DAY};

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

/// What every refresh task of this replica shares.
#[derive(Debug)]
pub struct Context {
    pub wechat: WechatClient,
    pub store: Store,
    pub refresh: RefreshSettings,
    pub lease_duration: Duration,
    pub instance_id: String,
    pub metrics: Arc<Metrics>,
}

/// How long a task that lost its lease idles until it is cancelled.
const FENCED_IDLE: Duration = Duration::from_secs(3600);

/// The token this task currently relies on (stored, or in memory only).
#[derive(Debug, Clone, Copy)]
struct Held {
    generation: Option<Generation>,
    expires_at: SystemTime,
    lifetime: Duration,
}

/// A fetched credential waiting to be written to MongoDB.
#[derive(Debug)]
struct Pending {
    fetched: FetchedCredential,
    reason: RefreshReason,
    /// The generation held when it was fetched (stable_token and WeCom
    /// may answer with the same credential again).
    previous: Option<Generation>,
}

/// What a problem was, to log a repeated one once rather than every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Fetch(ErrorClass, Option<i64>),
    Quota,
    Store,
}

/// Keeps one credential of one account fresh while this replica holds the
/// account's lease.
pub struct Refresher {
    account: Account,
    kind: CredentialKind,
    ctx: Arc<Context>,
    /// The lease term this task works under; its writes are fenced by it.
    term: Term,
    /// The latest refresh request for this credential (a slot, not a queue:
    /// requests are summarized per credential before they get here).
    requests: watch::Receiver<Option<RefreshRequest>>,
    loaded: bool,
    held: Option<Held>,
    pending: Option<Pending>,
    /// A refresh asked for by a request, to do as soon as permitted.
    forced: Option<RefreshReason>,
    /// No fetch before this instant (after a failure).
    fetch_not_before: Option<SystemTime>,
    fetch_backoff: Backoff,
    store_backoff: Backoff,
    last_problem: Option<Problem>,
    /// The lease moved on: this task must not call WeChat or write again.
    fenced: bool,
}

impl Refresher {
    pub fn new(
        account: Account,
        kind: CredentialKind,
        ctx: Arc<Context>,
        term: Term,
        requests: watch::Receiver<Option<RefreshRequest>>,
    ) -> Self {
        let backoff = Backoff::new(ctx.refresh.retry_initial, ctx.refresh.retry_max);
        Self {
            account,
            kind,
            ctx,
            term,
            requests,
            loaded: false,
            held: None,
            pending: None,
            forced: None,
            fetch_not_before: None,
            fetch_backoff: backoff.clone(),
            store_backoff: backoff,
            last_problem: None,
            fenced: false,
        }
    }

    /// Runs until `shutdown` is cancelled. A step in progress is finished
    /// (a fetched token must not be lost); a token that is still unstored at
    /// shutdown gets one last write attempt.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Boxed: a sleeping task then holds a pointer, not room for the
            // largest step (10,000 idle accounts cost kilobytes each otherwise).
            let wait = Box::pin(self.step()).await;
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                Ok(()) = self.requests.changed() => {
                    let request = self.requests.borrow_and_update().clone();
                    if let Some(request) = request {
                        self.on_request(&request);
                    }
                }
            }
        }
        if self.pending.is_some() && !self.fenced {
            tracing::info!(account = %self.account.id, kind = %self.kind, "stopping: storing the fetched credential first");
            self.store_pending().await;
        }
    }

    /// Does the next unit of work (load stored state, store a pending token,
    /// or fetch) and returns how long to wait before the next step.
    pub async fn step(&mut self) -> Duration {
        if self.fenced {
            return FENCED_IDLE;
        }
        if !self.loaded {
            return self.load_stored().await;
        }
        if self.pending.is_some() {
            return self.store_pending().await;
        }
        let now = SystemTime::now();
        let due = match self.forced {
            Some(_) => now,
            None => self.refresh_due_at(),
        };
        let due = due.max(self.fetch_not_before.unwrap_or(now));
        match due.duration_since(now) {
            Ok(wait) if !wait.is_zero() => wait,
            _ => self.fetch().await,
        }
    }

    /// A business service reported a token WeChat rejected, or an operator
    /// asked for a refresh. A report counts only for the newest generation,
    /// so any number of reports of one token cause one refresh.
    fn on_request(&mut self, request: &RefreshRequest) {
        let account = &self.account.id;
        match request.reason {
            RefreshReason::ReportedInvalid => {
                let newest = self.held.and_then(|h| h.generation);
                if request.generation.is_some() && request.generation == newest {
                    tracing::info!(%account, kind = %self.kind, generation = ?request.generation, "newest {} reported invalid; refreshing", self.kind);
                    self.forced = Some(RefreshReason::ReportedInvalid);
                } else {
                    tracing::debug!(%account, reported = ?request.generation, ?newest, "ignoring a report about an older or unknown generation");
                }
            }
            _ => {
                tracing::info!(%account, "manual refresh requested");
                self.forced = Some(RefreshReason::Manual);
            }
        }
    }

    /// When the held token enters its margin (now, if none is held).
    fn refresh_due_at(&self) -> SystemTime {
        self.held.map_or(UNIX_EPOCH, |held| {
            held.expires_at - effective_margin(self.ctx.refresh.margin, held.lifetime)
        })
    }

    /// At the start of a lease, reuse a stored token that is still valid:
    /// fetching would rotate it under every service that already reads it.
    async fn load_stored(&mut self) -> Duration {
        let stored = match self.ctx.store.newest(self.kind, &self.account.id).await {
            Ok(stored) => stored,
            Err(e) => return self.store_failed(&e, "cannot read the stored credential"),
        };
        if let Some(newest) = &stored {
            let floor = self
                .ctx
                .store
                .raise_generation_floor(&self.account.id, self.kind, newest.generation)
                .await;
            if let Err(e) = floor {
                return self.store_failed(&e, "cannot read the stored credential");
            }
        }
        self.loaded = true;
        self.recovered_from(&Problem::Store);
        let now = SystemTime::now();
        match stored.filter(|c| c.is_valid_at(now)) {
            Some(c) => {
                self.ctx.metrics.credential(
                    &self.account.id,
                    self.kind,
                    c.generation,
                    c.fetched_at,
                    c.expires_at,
                );
                self.held = Some(Held {
                    generation: Some(c.generation),
                    expires_at: c.expires_at,
                    lifetime: c.expires_in,
                });
                tracing::info!(
                    account = %self.account.id,
                    kind = %self.kind,
                    generation = %c.generation,
                    time_left_s = c.time_left(now).as_secs(),
                    "reusing the stored {}", self.kind
                );
            }
            None => tracing::info!(
                account = %self.account.id,
                kind = %self.kind,
                "no valid {} stored; fetching one", self.kind
            ),
        }
        Duration::ZERO
    }

    fn reason(&self) -> RefreshReason {
        if let Some(forced) = self.forced {
            return forced;
        }
        match self.held {
            Some(held) if held.expires_at > SystemTime::now() => RefreshReason::Scheduled,
            _ => RefreshReason::Startup,
        }
    }

    /// Asks MongoDB for a permit, then calls WeChat. A ticket needs a valid
    /// access token first.
    async fn fetch(&mut self) -> Duration {
        let reason = self.reason();
        let access_token = if self.kind.is_ticket() {
            let now = SystemTime::now();
            let token = self
                .ctx
                .store
                .newest_valid(CredentialKind::AccessToken, &self.account.id, now)
                .await;
            match token {
                Ok(Some(token)) => Some(token),
                Ok(None) => {
                    tracing::debug!(account = %self.account.id, kind = %self.kind, "waiting for a valid access_token");
                    return self.ctx.refresh.request_poll_interval;
                }
                Err(e) => {
                    return self.store_failed(&e, "cannot read the access_token for a ticket")
                }
            }
        } else {
            None
        };
        let rules = PermitRules {
            min_remaining: self.ctx.lease_duration / 2,
            daily_limit: self.ctx.refresh.daily_call_limit,
            forced_min_interval: self.forced.map(|_| self.ctx.refresh.forced_min_interval),
            forced_daily_limit: self
                .forced
                .filter(|_| self.uses_stable_token())
                .map(|_| STABLE_TOKEN_FORCED_PER_DAY),
        };
        let started = Instant::now();
        let permit = self
            .ctx
            .store
            .permit(&self.account.id, &self.ctx.instance_id, self.term, rules)
            .await;
        self.ctx
            .metrics
            .mongodb("permit", started.elapsed(), permit.is_ok());
        match permit {
            Ok(Permit::Granted { calls_today }) => {
                self.ctx
                    .metrics
                    .quota_calls_today(&self.account.id, calls_today);
                self.call_wechat(reason, calls_today, access_token).await
            }
            Ok(Permit::NotHolder) => {
                // Either the lease moved on (the coordinator will stop this
                // task) or its renewal is late: check again shortly.
                tracing::debug!(account = %self.account.id, "no permit: lease not held with enough time left");
                self.ctx.refresh.request_poll_interval
            }
            Ok(Permit::TooSoon { retry_in }) => {
                tracing::info!(account = %self.account.id, retry_in_s = retry_in.as_secs(), %reason, "forced refresh postponed: the previous one was too recent");
                self.fetch_not_before = Some(SystemTime::now() + retry_in);
                retry_in
            }
            Ok(Permit::QuotaSpent { calls_today }) => self.quota_spent(calls_today, None),
            Ok(Permit::ForcedSpent) => {
                tracing::warn!(
                    account = %self.account.id,
                    %reason,
                    limit = STABLE_TOKEN_FORCED_PER_DAY,
                    "forced refresh dropped: today's stable_token force_refresh calls are spent"
                );
                self.forced = None;
                Duration::ZERO
            }
            Err(e) => self.store_failed(&e, "cannot get a permit to call WeChat"),
        }
    }

    /// No fetch until WeChat's quota day ends; `cause` is WeChat's 45009
    /// answer when it came from WeChat rather than our own ceiling.
    fn uses_stable_token(&self) -> bool {
        self.kind == CredentialKind::AccessToken
            && self.account.endpoint == crate::config::TokenEndpoint::StableToken
    }

    fn quota_spent(&mut self, calls_today: i64, cause: Option<&FetchError>) -> Duration {
        self.ctx
            .metrics
            .quota_calls_today(&self.account.id, calls_today);
        let now = SystemTime::now();
        let wait = next_quota_reset(now).duration_since(now).unwrap_or_default()
            // Spread the first calls of a new day over a minute.
            + Duration::from_millis(rand::rng().random_range(0..60_000));
        self.fetch_not_before = Some(now + wait);
        if self.last_problem != Some(Problem::Quota) {
            tracing::error!(
                account = %self.account.id,
                error = cause.map(tracing::field::display),
                calls_today,
                daily_call_limit = self.ctx.refresh.daily_call_limit,
                retry_in_s = wait.as_secs(),
                "daily quota for the token call is spent: no fetch until it resets"
            );
            self.last_problem = Some(Problem::Quota);
        }
        wait
    }

    async fn call_wechat(
        &mut self,
        reason: RefreshReason,
        calls_today: i64,
        access_token: Option<Credential>,
    ) -> Duration {
        let started = Instant::now();
        let wechat = &self.ctx.wechat;
        let result = match &access_token {
            None => {
                // stable_token's force_refresh is only for a token reported invalid.
                let force = reason == RefreshReason::ReportedInvalid;
                wechat.fetch_access_token(&self.account, force).await
            }
            Some(token) => {
                wechat
                    .fetch_ticket(&self.account, self.kind, &token.value)
                    .await
            }
        };
        let metrics = &self.ctx.metrics;
        metrics.upstream_call(&self.account.id, self.kind, started.elapsed());
        let outcome = result
            .as_ref()
            .map_or_else(|e| e.class().as_str(), |_| "success");
        metrics.refresh_outcome(&self.account.id, self.kind, outcome);
        match result {
            Ok(fetched) => {
                tracing::debug!(
                    account = %self.account.id,
                    kind = %self.kind,
                    expires_in_s = fetched.expires_in.as_secs(),
                    %reason,
                    calls_today,
                    "fetched a {}", self.kind
                );
                self.fetch_not_before = None;
                self.fetch_backoff.reset();
                // A forced refresh stays wanted until a fetch succeeds.
                self.forced = None;
                let previous = self.held.and_then(|h| h.generation);
                self.held = Some(Held {
                    generation: None,
                    expires_at: fetched.expires_at(),
                    lifetime: fetched.expires_in,
                });
                self.pending = Some(Pending {
                    fetched,
                    reason,
                    previous,
                });
                Duration::ZERO
            }
            Err(e) => {
                if e.class() == ErrorClass::DailyQuota {
                    let marked = self
                        .ctx
                        .store
                        .mark_quota_exhausted(&self.account.id, &self.ctx.instance_id, self.term)
                        .await;
                    self.lease_note_failed(marked);
                    return self.quota_spent(calls_today, Some(&e));
                }
                if let (ErrorClass::InvalidToken, Some(token)) = (e.class(), &access_token) {
                    self.report_stale_access_token(token).await;
                }
                let wait = self.wait_after(&e);
                self.fetch_not_before = Some(SystemTime::now() + wait);
                self.report_fetch_error(&e, wait);
                let message = e.to_string();
                self.note_error(Some(&message)).await;
                wait
            }
        }
    }

    /// WeChat refused the access token a ticket was fetched with: ask for
    /// that token to be refreshed (once per generation, like any report).
    async fn report_stale_access_token(&self, token: &Credential) {
        let filed = self
            .ctx
            .store
            .file_request(
                &self.account.id,
                CredentialKind::AccessToken,
                RefreshReason::ReportedInvalid,
                Some(token.generation),
                &self.ctx.instance_id,
            )
            .await;
        if let Err(e) = filed {
            tracing::debug!(account = %self.account.id, error = %e, "cannot report the stale access_token");
        }
    }

    /// Records (or with `None` clears) the last error in the lease document,
    /// for `status`. Best effort: a failure here must not disturb refreshing.
    async fn note_error(&self, message: Option<&str>) {
        let noted = self
            .ctx
            .store
            .record_error(&self.account.id, &self.ctx.instance_id, self.term, message)
            .await;
        self.lease_note_failed(noted);
    }

    fn lease_note_failed(&self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::debug!(account = %self.account.id, error = %e, "cannot update the lease document");
        }
    }

    fn wait_after(&mut self, error: &FetchError) -> Duration {
        match error.class() {
            ErrorClass::Permanent => self.ctx.refresh.permanent_error_retry,
            _ => self.fetch_backoff.next_delay(),
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
                %account, kind = %self.kind, error = %error, attempt = self.fetch_backoff.attempts(), retry_in_s,
                "{} fetch failed; retrying", self.kind
            ),
            _ if repeated => tracing::debug!(
                %account, kind = %self.kind, error = %error, retry_in_s, "{} fetch still failing", self.kind
            ),
            ErrorClass::Permanent => tracing::error!(
                %account, kind = %self.kind, error = %error, retry_in_s,
                "{} fetch refused by WeChat: fix this account's configuration \
                 (secret, appid, IP whitelist); the last good one is served while valid", self.kind
            ),
            // Reported by quota_spent, which also stops fetching.
            ErrorClass::DailyQuota => {}
        }
    }

    /// Writes the pending token, fenced by the lease term. On failure it
    /// stays pending and is retried with backoff; one that expired meanwhile
    /// is dropped and a new fetch follows.
    async fn store_pending(&mut self) -> Duration {
        let Some(pending) = self.pending.take() else {
            return Duration::ZERO;
        };
        if pending.fetched.expires_at() <= SystemTime::now() {
            tracing::warn!(
                account = %self.account.id,
                kind = %self.kind,
                "the fetched {} expired before MongoDB could store it; fetching again", self.kind
            );
            self.held = None;
            return Duration::ZERO;
        }
        let new = NewFetch {
            kind: self.kind,
            app_id: &self.account.id,
            fetched: &pending.fetched,
            reason: pending.reason,
        };
        let started = Instant::now();
        let inserted = self
            .ctx
            .store
            .insert_fenced(&new, &self.ctx.instance_id, self.term)
            .await;
        self.ctx
            .metrics
            .mongodb("insert_credential", started.elapsed(), inserted.is_ok());
        match inserted {
            Ok(Inserted::Stored(generation)) => {
                self.stored(&pending, generation).await;
                Duration::ZERO
            }
            Ok(Inserted::Fenced) => {
                tracing::warn!(
                    account = %self.account.id,
                    kind = %self.kind,
                    "lost the lease before storing the fetched {}; discarding it", self.kind
                );
                self.fenced = true;
                FENCED_IDLE
            }
            Err(e) => {
                self.pending = Some(pending);
                let what = format!(
                    "cannot store the fetched {}; keeping it in memory",
                    self.kind
                );
                self.store_failed(&e, &what)
            }
        }
    }

    async fn stored(&mut self, pending: &Pending, generation: Generation) {
        self.recovered_from(&Problem::Store);
        if self.last_problem.take().is_some() {
            self.note_error(None).await;
        }
        self.store_backoff.reset();
        if let Some(held) = &mut self.held {
            held.generation = Some(generation);
        }
        self.ctx.metrics.credential(
            &self.account.id,
            self.kind,
            generation,
            pending.fetched.fetched_at,
            pending.fetched.expires_at(),
        );
        if pending.previous == Some(generation) {
            tracing::debug!(account = %self.account.id, kind = %self.kind, %generation, "WeChat answered with the current {} again", self.kind);
            return;
        }
        tracing::info!(
            account = %self.account.id,
            kind = %self.kind,
            %generation,
            expires_in_s = pending.fetched.expires_in.as_secs(),
            reason = %pending.reason,
            "stored a new {}", self.kind
        );
    }

    fn store_failed(&mut self, error: &StoreError, what: &str) -> Duration {
        let wait = self.store_backoff.next_delay();
        if self.last_problem.as_ref() == Some(&Problem::Store) {
            tracing::debug!(account = %self.account.id, kind = %self.kind, error = %error, retry_in_s = wait.as_secs(), "{what}");
        } else {
            tracing::warn!(account = %self.account.id, kind = %self.kind, error = %error, retry_in_s = wait.as_secs(), "{what}");
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
}
