//! One refresher per credential of each account whose lease this replica
//! holds. The decisions are in [`machine`] (no I/O, unit-tested); this file
//! performs them: it reads what is stored, asks the lease for a permit,
//! calls WeChat, writes through the lease (fenced by its term), and logs.
//!
//! [`Refresher::step`] does one action and says how long to wait before the
//! next; [`Refresher::run`] is only the loop around it, inside one `tracing`
//! span naming the account and the kind.

mod authorizer;
mod backoff;
mod component;
pub mod discovery;
mod fetch;
mod machine;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wxtokend_reader::{Credential, CredentialKind, Generation, RefreshReason};

pub use backoff::Backoff;
use machine::{Action, Machine, Requested};

use crate::config::RefreshSettings;
use crate::coordination::{Inserted, Lease, Newest, RefreshRequest, Stored};
use crate::metrics::{Metrics, Operation};
use crate::mirror::{Mirrored, Mirrors};
use crate::open_platform::store::StoredTicket;
use crate::store::{Store, StoreError};
use crate::subject::Subject;
use crate::wechat::{Api, ErrorClass, WechatClient};

/// What every refresher of this replica shares.
#[derive(Debug)]
pub struct Context {
    pub wechat: WechatClient,
    pub store: Store,
    pub refresh: RefreshSettings,
    pub lease_duration: Duration,
    /// The longest a WeChat call can take (`connect_timeout +
    /// request_timeout`): a call is sent only with this much lease left.
    pub call_timeout: Duration,
    pub instance_id: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// Every MongoDB operation of the daemon is cut off after this long
    /// (see `Settings::mongodb_operation_timeout`), and fails as
    /// [`StoreError::TimedOut`].
    pub operation_timeout: Duration,
    /// Redis mirrors: offered every credential stored or reused, never
    /// waited for.
    pub mirrors: Mirrors,
}

impl Context {
    /// `operation`, timed in the metrics as `what`, cut off after
    /// [`Context::operation_timeout`].
    pub async fn observe<T>(
        &self,
        what: Operation,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.operation_timeout;
        let bounded = async {
            tokio::time::timeout(limit, operation)
                .await
                .unwrap_or(Err(StoreError::TimedOut(limit)))
        };
        self.metrics.observe(what, bounded).await
    }
}

/// What a fetch is made with besides the subject's own secret, read from
/// MongoDB before the call.
#[derive(Debug)]
pub(super) enum Input {
    /// Nothing: an account's access token.
    Nothing,
    /// A ticket's: the valid access token it is fetched with.
    AccessToken(Credential),
    /// A component token's: the newest usable verify ticket.
    VerifyTicket(StoredTicket),
    /// An authorizer's first token: its pending authorization code, with
    /// the component token it is exchanged with.
    Code(authorizer::CodeInput),
    /// An authorizer's token: its refresh token, with the component token.
    RefreshToken(authorizer::RefreshInput),
}

/// What a problem was, to log a repeated one once rather than every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Fetch(ErrorClass, Option<i64>),
    Quota,
    Store,
}

/// The latest refresh request for one refresher, put by the coordinator:
/// a slot, not a queue (a newer request replaces the one not yet taken).
/// Lighter than a `watch` channel (whose shared state is 500 bytes, one per
/// credential of every held account).
#[derive(Debug, Default)]
pub struct RequestSlot {
    pending: std::sync::Mutex<Option<RefreshRequest>>,
    notify: Notify,
}

impl RequestSlot {
    /// Puts `request` in place of any not yet taken, and wakes the
    /// refresher (now, or at its next wait if it is busy).
    pub fn put(&self, request: RefreshRequest) {
        *self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(request);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<RefreshRequest> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Keeps one credential of one account fresh while this replica holds the
/// account's lease.
pub struct Refresher {
    subject: Subject,
    kind: CredentialKind,
    ctx: Arc<Context>,
    lease: Lease,
    /// The latest refresh request for this credential (a slot, not a queue:
    /// requests are summarized per credential before they get here).
    requests: Arc<RequestSlot>,
    /// Cancelled when the lease is given up or the daemon stops.
    stop: CancellationToken,
    machine: Machine,
    last_problem: Option<Problem>,
    /// The last write of a fetched credential failed: what is stored must
    /// be read back before the next one (it may have landed).
    write_failed: bool,
    /// A component's refresher: since when it has no usable verify ticket.
    ticket_wait: Option<component::TicketWait>,
    /// An authorizer's refresher with neither a refresh token nor a code:
    /// its last wait for one (they back off).
    idle: Option<Duration>,
}

impl Refresher {
    pub fn new(
        subject: Subject,
        kind: CredentialKind,
        ctx: Arc<Context>,
        lease: Lease,
        requests: Arc<RequestSlot>,
        stop: CancellationToken,
    ) -> Self {
        // Only stable_token can be told to issue a new token at once.
        let can_force = subject.api(kind) == Api::StableToken;
        let machine = Machine::new(ctx.refresh.clone(), can_force);
        Self {
            subject,
            kind,
            ctx,
            lease,
            requests,
            stop,
            machine,
            last_problem: None,
            write_failed: false,
            idle: None,
            ticket_wait: None,
        }
    }

    /// For an account with nothing of this kind stored (its coordinator
    /// just looked): no read before the first fetch.
    pub fn nothing_stored(mut self) -> Self {
        self.machine.loaded(None);
        self
    }

    /// Runs until its stop token is cancelled. A call already sent is
    /// finished (a fetched token must not be lost); a token that is still
    /// unstored then gets one last write attempt.
    pub fn run(self) -> impl std::future::Future<Output = ()> {
        // Not an async fn: one would hold the refresher twice (its own
        // argument and the loop's), in every task.
        let span = tracing::info_span!("refresh", account = %self.lease.owner(), kind = %self.kind);
        self.run_until_stopped().instrument(span)
    }

    async fn run_until_stopped(mut self) {
        let shutdown = self.stop.clone();
        while !shutdown.is_cancelled() {
            let wait = self.step().await;
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = self.requests.notify.notified() => {
                    if let Some(request) = self.requests.take() {
                        self.on_request(&request);
                    }
                }
            }
        }
        if self.machine.pending().is_some() {
            tracing::info!("stopping: storing the fetched credential first");
            // Boxed like the step: inline, this last write would make every
            // task as large as the insert's state (10 KB an account).
            Box::pin(self.store_pending()).await;
            if self.machine.pending().is_some() {
                tracing::error!(
                    "stopping without storing the fetched {}: it is lost; MongoDB keeps the \
                     previous one, which WeChat may have replaced (an access token stays valid \
                     about 5 minutes after a new one is issued)",
                    self.kind
                );
            }
        }
        // The lease's next holder mirrors it from now on.
        self.ctx
            .mirrors
            .withdraw(self.subject.app_id(), self.kind, self.lease.term().0);
    }

    /// Does the next action (load what is stored, store a pending token, or
    /// fetch) and returns how long to wait before the next step.
    pub async fn step(&mut self) -> Duration {
        crate::failpoint!("refresh-step");
        let now = self.now();
        // Each action that awaits MongoDB or WeChat is boxed: a task then
        // holds room for the smallest wait only (a sleep, or a call slot),
        // not for the largest action (7 KB; 10,000 accounts waiting for a
        // call slot at start held 76 MB otherwise).
        match self.machine.next(now) {
            Action::Wait(wait) => wait,
            Action::Load => Box::pin(self.load_stored(now)).await,
            Action::Store => Box::pin(self.store_pending()).await,
            Action::Fetch(reason) => self.fetch(reason).await,
            Action::DropExpired => {
                tracing::warn!(
                    "the fetched {} expired before MongoDB could store it; fetching again",
                    self.kind
                );
                Duration::ZERO
            }
        }
    }

    /// The time every decision and stamp uses: MongoDB's (see `clock`).
    fn now(&self) -> SystemTime {
        self.ctx.store.clock().now()
    }

    fn on_request(&mut self, request: &RefreshRequest) {
        match self.machine.request(request) {
            Requested::Accepted(RefreshReason::ReportedInvalid) => tracing::info!(
                generation = ?request.generation,
                "newest {} reported invalid; refreshing", self.kind
            ),
            Requested::Accepted(_) => tracing::info!("manual refresh requested"),
            Requested::Ignored { newest } => tracing::debug!(
                reported = ?request.generation,
                ?newest,
                "ignoring a report about an older or unknown generation"
            ),
        }
    }

    /// At the start of a lease, reuse a stored token that is still valid:
    /// fetching would rotate it under every service that already reads it.
    async fn load_stored(&mut self, now: SystemTime) -> Duration {
        let read = self.read_newest();
        let newest = match self.ctx.observe(Operation::LoadCredential, read).await {
            Ok(newest) => newest,
            Err(e) => return self.store_failed(&e, "cannot read the stored credential"),
        };
        self.recovered_from(&Problem::Store);
        self.machine.loaded(newest.as_ref());
        match newest.filter(|c| c.is_valid_at(now)) {
            Some(c) => {
                self.ctx
                    .mirrors
                    .offer(&c.clone().into(), self.lease.term().0);
                self.ctx.metrics.credential(
                    self.subject.app_id(),
                    self.kind,
                    c.generation,
                    c.fetched_at,
                    c.expires_at,
                );
                tracing::info!(
                    generation = %c.generation,
                    time_left_s = c.time_left(now).as_secs(),
                    "reusing the stored {}", self.kind
                );
            }
            None => tracing::info!("no valid {} stored; fetching one", self.kind),
        }
        Duration::ZERO
    }

    /// The newest readable stored credential, with the lease's generation
    /// counter raised above every stored generation (history written before
    /// leases, a reset lease, documents written by hand). Malformed newer
    /// documents are skipped, with one loud log.
    async fn read_newest(&self) -> Result<Option<Credential>, StoreError> {
        let newest = self
            .ctx
            .store
            .credentials()
            .scan_newest_owned(self.kind, self.lease.owner(), None)
            .await?;
        if !newest.skipped.is_empty() {
            let problems: Vec<String> = newest.skipped.iter().map(ToString::to_string).collect();
            tracing::error!(
                skipped = newest.skipped.len(),
                problems = %problems.join("; "),
                "malformed {} documents are newer than the last readable one; \
                 they are skipped (remove or fix them: readers in other languages may trip on them)",
                self.kind
            );
        }
        if let Some(top) = newest.top_generation {
            self.lease.raise_generation_floor(self.kind, top).await?;
        }
        Ok(newest.credential)
    }

    /// Notes on the lease document are best effort: a failure must not
    /// disturb refreshing.
    fn lease_note_failed(&self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot update the lease document");
        }
    }

    /// Writes the pending token through the lease. On failure it stays
    /// pending and is retried with backoff.
    async fn store_pending(&mut self) -> Duration {
        let Some(pending) = self.machine.pending() else {
            return Duration::ZERO;
        };
        let (fetched_at, expires_at, expires_in) = (
            pending.fetched.fetched_at,
            pending.fetched.expires_at(),
            pending.fetched.expires_in,
        );
        let reason = pending.reason;
        let held_generation = pending.held.as_ref().map(|held| held.generation);
        // What this holder last read or wrote is what is stored, unless a
        // write failed since (it may have landed all the same).
        let newest = if self.write_failed {
            Newest::Unknown
        } else {
            Newest::Known(pending.held.as_ref().map(|held| Stored {
                generation: held.generation,
                expires_at: held.expires_at,
                value: &held.value,
            }))
        };
        let value = pending.fetched.value.clone();
        let insert = self
            .lease
            .insert(self.kind, &pending.fetched, pending.reason, newest);
        let inserted = self.ctx.observe(Operation::InsertCredential, insert).await;
        self.write_failed = inserted.is_err();
        if inserted.is_ok() {
            self.stored_again().await;
        }
        match inserted {
            Ok(Inserted::Stored(generation)) => {
                self.published(generation, value, fetched_at, expires_at);
                self.machine.stored(generation);
                tracing::info!(
                    %generation,
                    expires_in_s = expires_in.as_secs(),
                    %reason,
                    "stored a new {}", self.kind
                );
                Duration::ZERO
            }
            Ok(Inserted::Repeat {
                generation,
                expires_at: stored_expiry,
            }) if held_generation.is_none_or(|held| held < generation) => {
                // Newer than what this holder held: this fetch is stored
                // already (an earlier attempt landed although its answer
                // was lost or cut off, or a former holder stored the same
                // value), and the mirrors and metrics have not seen it.
                let expires_at = stored_expiry.min(expires_at);
                self.published(generation, value, fetched_at, expires_at);
                self.machine.landed(generation, stored_expiry);
                tracing::info!(
                    %generation,
                    %reason,
                    "the fetched {} was found stored already (a write whose answer was lost, or a \
                     former holder's)",
                    self.kind
                );
                Duration::ZERO
            }
            Ok(Inserted::Repeat {
                generation,
                expires_at: stored_expiry,
            }) => {
                self.machine.repeated(generation, stored_expiry, self.now());
                tracing::debug!(
                    %generation,
                    "WeChat answered with the current {} again; its stored expiry stands", self.kind
                );
                Duration::ZERO
            }
            Ok(Inserted::Fenced) => {
                tracing::warn!(
                    "lost the lease before storing the fetched {}; discarding it",
                    self.kind
                );
                self.machine.fenced();
                machine::FENCED_IDLE
            }
            Err(e) => {
                let what = format!(
                    "cannot store the fetched {}; keeping it in memory",
                    self.kind
                );
                self.store_failed(&e, &what)
            }
        }
    }

    /// A newly stored value, to the mirrors and the metrics.
    fn published(
        &self,
        generation: Generation,
        value: SecretString,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) {
        self.ctx.mirrors.offer(
            &Mirrored {
                account: self.subject.app_id().clone(),
                kind: self.kind,
                generation,
                value,
                expires_at,
            },
            self.lease.term().0,
        );
        self.ctx.metrics.credential(
            self.subject.app_id(),
            self.kind,
            generation,
            fetched_at,
            expires_at,
        );
    }

    /// A write succeeded: a MongoDB problem noted before is over.
    async fn stored_again(&mut self) {
        self.recovered_from(&Problem::Store);
        if self.last_problem.take().is_some() {
            let clear = self.lease.note_error(None);
            let cleared = self.ctx.observe(Operation::LeaseNote, clear).await;
            self.lease_note_failed(cleared);
        }
    }

    fn store_failed(&mut self, error: &StoreError, what: &str) -> Duration {
        let wait = self.machine.store_failed();
        if error.refused().is_some() {
            // No retry can succeed: the coordinator stops the replica at its
            // next turn.
            tracing::error!(
                error = %error,
                "MongoDB refused to store the fetched {}: this replica stops",
                self.kind
            );
        } else if self.last_problem.as_ref() == Some(&Problem::Store) {
            tracing::debug!(error = %error, retry_in_s = wait.as_secs(), "{what}");
        } else {
            tracing::warn!(error = %error, retry_in_s = wait.as_secs(), "{what}");
        }
        self.last_problem = Some(Problem::Store);
        wait
    }

    fn recovered_from(&mut self, problem: &Problem) {
        if self.last_problem.as_ref() == Some(problem) {
            tracing::info!("MongoDB is reachable again");
            self.last_problem = None;
        }
    }
}
