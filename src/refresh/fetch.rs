//! The fetch half of a refresher: a permit from the lease, then the call to
//! WeChat, and what its answer or error means (quota stop, backoff, a stale
//! access token reported, one clear log per problem).

use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use wxtokend_reader::requests::{self as request_docs, NewRequest};
use wxtokend_reader::{Credential, CredentialKind, RefreshReason};

use super::{Input, Problem, Refresher};
use crate::coordination::{Permit, PermitRules};
use crate::metrics::{Operation, Outcome};
use crate::store::StoreError;
use crate::subject::Subject;
use crate::wechat::{
    Api, CallSlot, Effect, ErrorClass, FetchError, FetchedCredential, STABLE_TOKEN_FORCED_PER_DAY,
};

/// The longest an authorizer's ticket waits between two looks for its
/// token: a ticket follows a repaired authorizer's token within this.
const AUTHORIZER_TOKEN_WAIT_MAX: Duration = Duration::from_secs(30);

/// One permitted call to WeChat.
struct Call<'a> {
    slot: &'a CallSlot,
    reason: RefreshReason,
    calls_today: i64,
    /// What the call is made with, besides the subject's secret.
    input: &'a Input,
}

impl Refresher {
    /// Takes a call slot, asks the lease for a permit, then calls WeChat,
    /// but only if the lease will outlast the call (see [`Self::send_by`]).
    /// Until the request is sent, a stop (lease given back, shutdown)
    /// abandons the step; once sent, the call completes and its answer is
    /// kept. A ticket needs a valid access token first, a component token
    /// a verify ticket.
    pub(super) async fn fetch(&mut self, reason: RefreshReason) -> Duration {
        let input = match self.input().await {
            Ok(input) => input,
            Err(wait) => return wait,
        };
        let stop = self.stop.clone();
        let slot = tokio::select! {
            slot = self.ctx.wechat.slot() => slot,
            () = stop.cancelled() => return Duration::ZERO,
        };
        // Boxed: a refresher waiting for a call slot (thousands at start)
        // holds only that wait, not room for the permit and the call.
        Box::pin(self.fetch_with_slot(slot, reason, input, stop)).await
    }

    /// How long a ticket's refresher waits for its access token: an
    /// account's polls (its token comes within seconds); an authorizer's
    /// backs off up to [`AUTHORIZER_TOKEN_WAIT_MAX`], since one waiting
    /// for a re-authorization may have no token for days, and thousands
    /// of them would otherwise poll MongoDB every second.
    fn token_wait(&mut self) -> Duration {
        let poll = self.ctx.refresh.request_poll_interval;
        if !matches!(self.subject, Subject::Authorizer { .. }) {
            return poll;
        }
        let wait = self
            .idle
            .map_or(poll, |wait| wait * 2)
            .min(AUTHORIZER_TOKEN_WAIT_MAX.max(poll));
        self.idle = Some(wait);
        wait
    }

    /// What the call needs, read from MongoDB, or how long to wait for it.
    async fn input(&mut self) -> Result<Input, Duration> {
        if let Some(token_kind) = self.kind.access_token_kind() {
            return match Box::pin(self.access_token(token_kind)).await {
                Ok(Some(token)) => {
                    self.idle = None;
                    Ok(Input::AccessToken(token))
                }
                Ok(None) => {
                    tracing::debug!("waiting for a valid {token_kind}");
                    Err(self.token_wait())
                }
                Err(e) => Err(self.store_failed(&e, "cannot read the access token for a ticket")),
            };
        }
        match &self.subject {
            Subject::Component(component) => {
                let component = component.clone();
                self.verify_ticket(&component).await
            }
            Subject::Authorizer { component, app_id } => {
                let (component, app_id) = (component.clone(), app_id.clone());
                Box::pin(self.authorizer_input(&component, &app_id)).await
            }
            Subject::Account(_) => Ok(Input::Nothing),
        }
    }

    /// [`Self::fetch`] once it has a call slot.
    async fn fetch_with_slot(
        &mut self,
        slot: CallSlot,
        reason: RefreshReason,
        input: Input,
        stop: CancellationToken,
    ) -> Duration {
        // Before the request: the lease's end is measured from here.
        let started = Instant::now();
        let mut rules = self.permit_rules();
        // A code's exchange has an API and a ceiling of its own.
        rules.api = self.api_of(&input);
        rules.daily_limit = self.ctx.refresh.daily_call_limits.of(rules.api);
        let ask = self.lease.permit(rules);
        let permit = tokio::select! {
            permit = self.ctx.observe(Operation::Permit, ask) => permit,
            () = stop.cancelled() => return Duration::ZERO,
        };
        match permit {
            Ok(Permit::Granted {
                calls_today,
                lease_left,
            }) => {
                let metrics = &self.ctx.metrics;
                let api = self.api_of(&input);
                metrics.quota_calls_today(self.subject.app_id(), api, calls_today);
                metrics.quota_exhausted(self.subject.app_id(), api, false);
                if !self.send_by(started + lease_left) {
                    return self.machine.not_holder();
                }
                let call = Call {
                    slot: &slot,
                    reason,
                    calls_today,
                    input: &input,
                };
                self.call_wechat(call).await
            }
            Ok(Permit::NotHolder) => {
                tracing::debug!("no permit: lease not held with enough time left");
                self.machine.not_holder()
            }
            Ok(Permit::TooSoon { retry_in }) => {
                tracing::info!(retry_in_s = retry_in.as_secs(), %reason, "forced refresh postponed: the previous one was too recent");
                self.machine.too_soon(retry_in, self.now())
            }
            Ok(Permit::QuotaSpent { calls_today }) => {
                let api = self.api_of(&input);
                self.quota_spent(api, calls_today, None)
            }
            Ok(Permit::ForcedSpent) => {
                tracing::warn!(
                    %reason,
                    limit = STABLE_TOKEN_FORCED_PER_DAY,
                    "forced refresh dropped: today's stable_token force_refresh calls are spent"
                );
                self.machine.forced_spent();
                Duration::ZERO
            }
            Err(e) => self.store_failed(&e, "cannot get a permit to call WeChat"),
        }
    }

    /// The newest valid access token of `kind` (malformed documents
    /// skipped).
    async fn access_token(&self, kind: CredentialKind) -> Result<Option<Credential>, StoreError> {
        let read = async {
            let credentials = self.ctx.store.credentials();
            let now = Some(self.now());
            Ok(credentials
                .scan_newest_owned(kind, self.lease.owner(), now)
                .await?)
        };
        let newest = self.ctx.observe(Operation::ReadAccessToken, read).await?;
        Ok(newest.credential)
    }

    /// The WeChat API this refresher calls: quotas are counted per API.
    fn api(&self) -> Api {
        self.subject.api(self.kind)
    }

    /// The API a call with `input` is counted against: an authorization
    /// code's exchange has its own.
    fn api_of(&self, input: &Input) -> Api {
        match input {
            Input::Code(_) => Api::QueryAuth,
            _ => self.api(),
        }
    }

    pub(super) fn permit_rules(&self) -> PermitRules {
        let forced = self.machine.forced();
        // A plain stable_token request replaces nothing: only calls with
        // force_refresh are spaced, and counted against WeChat's 20 a day.
        let spaced = forced.filter(|_| !self.uses_stable_token() || self.force_refresh());
        PermitRules {
            api: self.api(),
            min_remaining: self.ctx.lease_duration / 2,
            daily_limit: self.ctx.refresh.daily_call_limits.of(self.api()),
            forced_min_interval: spaced.map(|_| self.ctx.refresh.forced_min_interval),
            forced_daily_limit: self.force_refresh().then_some(STABLE_TOKEN_FORCED_PER_DAY),
            // The coordinator reads it every renew interval (at most a third
            // of the lease): older means the process was held up.
            clock_max_age: self.ctx.lease_duration / 2,
        }
    }

    fn uses_stable_token(&self) -> bool {
        self.api() == Api::StableToken
    }

    /// Whether the call is sent with stable_token's `force_refresh`: only
    /// for a reported token that a plain request answered again (see
    /// `Machine::repeated`).
    fn force_refresh(&self) -> bool {
        self.uses_stable_token() && self.machine.force_refresh()
    }

    /// No call to this API until WeChat's quota day ends; `cause` is
    /// WeChat's 45009 answer when it came from WeChat rather than our own
    /// ceiling. The account's other APIs go on.
    fn quota_spent(&mut self, api: Api, calls_today: i64, cause: Option<&FetchError>) -> Duration {
        let metrics = &self.ctx.metrics;
        metrics.quota_calls_today(self.subject.app_id(), api, calls_today);
        metrics.quota_exhausted(self.subject.app_id(), api, true);
        let (reset, wait) = self.machine.quota_spent(self.now());
        if self.last_problem != Some(Problem::Quota) {
            tracing::error!(
                error = cause.map(tracing::field::display),
                %api,
                cgi_path = api.cgi_path(),
                calls_today,
                daily_call_limit = self.ctx.refresh.daily_call_limits.of(api),
                resets_in_s = reset.as_secs(),
                "daily quota of {} for this {} is spent: no call until it resets at midnight \
                 Beijing time (`wxtokend quota ACCOUNT --api PATH` shows WeChat's count; not for WeCom)",
                api.cgi_path(),
                self.kind
            );
            self.last_problem = Some(Problem::Quota);
        }
        wait
    }

    /// Whether a call may be sent now under a lease that ends (locally) at
    /// `lease_ends`: not after a stop, and not unless the whole call fits in
    /// what is left of the lease. A call sent by a replica whose lease then
    /// lapses would rotate the token another replica stores.
    pub(super) fn send_by(&self, lease_ends: Instant) -> bool {
        if self.stop.is_cancelled() {
            tracing::debug!("stopping: the call is not sent");
            return false;
        }
        let left = lease_ends.saturating_duration_since(Instant::now());
        let needed = self.ctx.call_timeout;
        if left < needed {
            tracing::debug!(
                lease_left_ms = left.as_millis(),
                needed_ms = needed.as_millis(),
                "not calling WeChat: the lease would end before the call could"
            );
            return false;
        }
        true
    }

    async fn call_wechat(&mut self, call: Call<'_>) -> Duration {
        let Call {
            slot,
            reason,
            calls_today,
            input,
        } = call;
        let started = Instant::now();
        // WeChat's clock for the credential starts no sooner than this.
        let sent_at = self.now();
        let wechat = &self.ctx.wechat;
        let held = self.machine.held_value();
        let result = match (&self.subject, input) {
            (subject, Input::AccessToken(token)) => {
                let api = (subject.app_id(), subject.api(self.kind));
                wechat
                    .fetch_ticket(slot, api, self.kind, &token.value, held)
                    .await
            }
            (Subject::Account(account), _) => {
                let force = self.force_refresh();
                wechat.fetch_access_token(slot, account, force, held).await
            }
            (Subject::Component(component), Input::VerifyTicket(ticket)) => {
                wechat
                    .fetch_component_token(slot, component, &ticket.ticket, held)
                    .await
            }
            (Subject::Authorizer { component, app_id }, Input::Code(code)) => {
                self.exchange_code(slot, component, app_id, code).await
            }
            (Subject::Authorizer { component, app_id }, Input::RefreshToken(refresh)) => {
                self.refresh_authorizer(slot, component, app_id, refresh, held)
                    .await
            }
            // Not made: a programming error, reported like a failed call
            // rather than a panic that would stop every replica in turn.
            (Subject::Component(_) | Subject::Authorizer { .. }, _) => Err(
                FetchError::InvalidResponse("internal: no input for this call".into()),
            ),
        };
        let metrics = &self.ctx.metrics;
        metrics.upstream_call(self.subject.app_id(), self.kind, started.elapsed());
        let outcome = result
            .as_ref()
            .map_or_else(|e| e.class().into(), |_| Outcome::Success);
        metrics.refresh_outcome(self.subject.app_id(), self.kind, outcome);
        match result {
            Ok(fetched) => {
                self.fetched(fetched, sent_at, reason, calls_today);
                Duration::ZERO
            }
            Err(e) => self.fetch_failed(&e, calls_today, input, sent_at).await,
        }
    }

    fn fetched(
        &mut self,
        mut fetched: FetchedCredential,
        sent_at: SystemTime,
        reason: RefreshReason,
        calls_today: i64,
    ) {
        // Stamped by MongoDB's clock, which readers can trust, not this
        // host's, which may be minutes off; and from when the request was
        // sent, so that `expires_at` never outlives WeChat's own expiry.
        fetched.fetched_at = sent_at;
        tracing::debug!(
            expires_in_s = fetched.expires_in.as_secs(),
            %reason,
            calls_today,
            "fetched a {}", self.kind
        );
        self.machine.fetched(fetched, reason);
    }

    async fn fetch_failed(
        &mut self,
        error: &FetchError,
        calls_today: i64,
        input: &Input,
        sent_at: SystemTime,
    ) -> Duration {
        if error.class() == ErrorClass::DailyQuota {
            let api = self.api_of(input);
            let mark = self.lease.mark_quota_exhausted(api);
            let marked = self.ctx.observe(Operation::LeaseNote, mark).await;
            self.lease_note_failed(marked);
            return self.quota_spent(api, calls_today, Some(error));
        }
        let mut retry_after = error.retry_after();
        // What the refresh token or the code was refused for (a ticket's
        // call sends neither).
        let authorizer = match (&self.subject, input) {
            (_, Input::AccessToken(_)) => None,
            (Subject::Authorizer { component, app_id }, _) => Some((component, app_id)),
            _ => None,
        };
        if let Some((component, app_id)) = authorizer {
            self.authorizer_refused(component, app_id, error, input, sent_at)
                .await;
        }
        match (input, &self.subject) {
            (Input::AccessToken(token), _) if error.class() == ErrorClass::InvalidToken => {
                self.report_stale_access_token(token).await;
            }
            (Input::Code(i), _) if error.class() == ErrorClass::InvalidToken => {
                self.report_stale_access_token(i.component_token()).await;
            }
            (Input::RefreshToken(i), _) if error.class() == ErrorClass::InvalidToken => {
                self.report_stale_access_token(i.component_token()).await;
            }
            (Input::Code(code), _)
                if error.effect() == Some(Effect::CodeUnusable) && code.refresh_token_stored() =>
            {
                // The stored refresh token, at once.
                retry_after = Some(Duration::ZERO);
            }
            (Input::VerifyTicket(ticket), Subject::Component(component))
                if error.effect() == Some(Effect::TicketRejected) =>
            {
                let marked = self.reject_ticket(component, ticket, error.errcode()).await;
                // The next usable ticket, or the next push, soon; a ticket
                // not marked would be tried again: back off as the class says.
                if marked {
                    retry_after = Some(self.ctx.refresh.request_poll_interval);
                }
            }
            _ => {}
        }
        let wait = self
            .machine
            .fetch_failed(error.class(), retry_after, self.now());
        self.report_fetch_error(error, wait);
        let message = error.to_string();
        let note = self.lease.note_error(Some(&message));
        let noted = self.ctx.observe(Operation::LeaseNote, note).await;
        self.lease_note_failed(noted);
        wait
    }

    /// WeChat refused the access token a ticket was fetched with: ask for
    /// that token to be refreshed (once per generation, like any report).
    async fn report_stale_access_token(&self, token: &Credential) {
        let request = NewRequest {
            app_id: &token.app_id,
            component_appid: token.component_appid.as_ref(),
            kind: token.kind,
            reason: RefreshReason::ReportedInvalid,
            generation: Some(token.generation),
            requested_by: &self.ctx.instance_id,
        };
        if let Err(e) = request_docs::file(self.ctx.store.database(), &request).await {
            tracing::debug!(error = %e, "cannot report the stale access_token");
        }
    }

    fn report_fetch_error(&mut self, error: &FetchError, wait: Duration) {
        let class = error.class();
        let problem = Problem::Fetch(class, error.errcode());
        let repeated = self.last_problem.as_ref() == Some(&problem);
        self.last_problem = Some(problem);
        let retry_in_s = wait.as_secs();
        match class {
            ErrorClass::Transient | ErrorClass::InvalidToken => tracing::warn!(
                error = %error, attempt = self.machine.fetch_attempts(), retry_in_s,
                "{} fetch failed; retrying", self.kind
            ),
            _ if repeated => tracing::debug!(
                error = %error, retry_in_s, "{} fetch still failing", self.kind
            ),
            ErrorClass::Permanent => tracing::error!(
                error = %error, retry_in_s,
                "{} fetch refused by WeChat: fix this account's configuration \
                 (secret, appid, IP whitelist); the last good one is served while valid", self.kind
            ),
            // Reported by quota_spent, which also stops fetching.
            ErrorClass::DailyQuota => {}
        }
    }
}
