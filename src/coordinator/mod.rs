//! One coordinator per replica: holds leases, runs a [`Refresher`] for each
//! account whose lease it holds, and shares accounts fairly with the other
//! replicas using the same database.
//!
//! Every `lease.renew_interval` it renews its leases (a lease found taken
//! stops its refresher), announces itself, computes its fair share
//! `ceil(accounts / live replicas)`, hands surplus leases back, and takes free
//! ones up to its share. A lease left expired for longer than one renew
//! interval is taken by anyone, whatever its share: no account is left
//! without a refresher. Every `refresh.request_poll_interval` it hands open
//! refresh requests to the refreshers of the accounts it holds (one
//! refresher per credential kind: the access token and each ticket).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use wxtokend_reader::{AccountId, CredentialKind, Refused};

use crate::config::LeaseSettings;
use crate::coordination::{Lease, LeaseId, Leases, Term};
use crate::metrics::Operation;
use crate::open_platform::directory::{AuthorizerState, Directory};
use crate::refresh::{Context, Refresher, RequestSlot};
use crate::store::StoreError;
use crate::subject::{Component, Subject};
use crate::watchdog::Liveness;
use crate::wechat::Api;

mod requests;

/// Most requests read per poll; a storm beyond it is read on the next polls
/// (each poll deletes what it read).
const REQUESTS_PER_POLL: i64 = 1_000;

/// At most this many leases are taken in one batch: one batch must finish
/// well within the operation cut-off (a test server took over 10 s for
/// 20,000, and a cut-off batch is given back, so 100,000 accounts over five
/// replicas never got a lease; see BENCHMARKS.md, "Scale").
const BATCH: usize = 2_000;

/// At most this many of the leases this replica does not hold are looked
/// at in one batch: a `$in` of 80,000 ids costs more than a turn. Above it,
/// successive batches look at the next ones, in the order of the
/// configuration from a random place (random picks found the last few free
/// leases of 100,000 only after many turns).
const SAMPLE: usize = 4 * BATCH;

/// What one batch of [`Coordinator::acquire_up_to`] did.
struct Batch {
    /// It chose as many as a batch may (some may have gone to another
    /// replica): there may be more.
    full: bool,
    /// How many accounts (held or not) it went past to find the ones it
    /// looked at.
    passed: usize,
}

/// A lease this replica holds, with one refresher per credential kind the
/// account wants (access token first, then its tickets).
struct HeldLease {
    lease: Lease,
    requests: HashMap<CredentialKind, Arc<RequestSlot>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A refresh task ended without being told to (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the refresh task of account {lease} died")]
pub struct RefresherDied {
    pub lease: LeaseId,
}

/// Why the coordinator stopped the replica before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    RefresherDied(#[from] RefresherDied),
    /// MongoDB refused a privilege to one of this replica's operations: no
    /// retry can succeed until the user's role changes.
    #[error(transparent)]
    Refused(Refused),
}

pub struct Coordinator {
    ctx: Arc<Context>,
    leases: Leases,
    /// What there is to keep fresh: one lease each. The configured ones
    /// first (`fixed` of them), then the component's authorizers as the
    /// directory lists them.
    subjects: Vec<Subject>,
    fixed: usize,
    /// The component whose authorizers are subjects too, read from the
    /// directory every renew interval.
    directory: Option<(Directory, Arc<Component>)>,
    /// Each kept authorizer as last read (its state and last event time:
    /// a newer one, a re-authorization, wakes the refresher of a held
    /// authorizer, whose new code must be exchanged before its refresh
    /// token dies), and where the next read starts.
    known: Known,
    lease: LeaseSettings,
    held: HashMap<LeaseId, HeldLease>,
    /// The daemon's shutdown; each lease's stop token is a child of it, so
    /// no refresher starts a call after SIGTERM.
    shutdown: CancellationToken,
    /// Refreshers told to stop, and give-backs waiting for them: never
    /// awaited in the loop (a call in flight must not delay renewals), only
    /// at shutdown.
    stopping: Vec<JoinHandle<()>>,
    /// Where the loop notes its progress for systemd's watchdog.
    liveness: Arc<Liveness>,
    /// The leases being taken, while they are.
    taking: Vec<LeaseId>,
    /// Where each lease's subject is in `subjects`.
    index: HashMap<LeaseId, usize>,
    /// Leases whose taking was cut off: MongoDB may have given them to
    /// this replica all the same.
    stranded: Vec<LeaseId>,
    /// Where in `subjects` the next look for free leases begins.
    scan_at: usize,
    /// The share at which a whole pass over the accounts found no free
    /// lease.
    exhausted_at: Option<usize>,
}

/// Between two reads of the whole authorizer directory: the incremental
/// reads in between (by `updated_at`) see every change; this is the safety
/// net for a writer whose clock was further off than the overlap.
const DIRECTORY_FULL_READ: Duration = Duration::from_secs(600);

/// The kept authorizers as the directory was last read.
#[derive(Debug, Default)]
struct Known {
    entries: HashMap<AccountId, (AuthorizerState, Option<SystemTime>)>,
    /// When the last read began (MongoDB's clock), and when the last full
    /// read was made.
    read_at: Option<(SystemTime, Instant)>,
}

impl Known {
    /// Where the next read starts: `None` for a full read.
    fn since(&self, overlap: Duration) -> Option<SystemTime> {
        let (started, full) = self.read_at?;
        (full.elapsed() < DIRECTORY_FULL_READ).then(|| started - overlap)
    }
}

impl Coordinator {
    pub fn new(
        ctx: Arc<Context>,
        subjects: Vec<Subject>,
        lease: LeaseSettings,
        liveness: Arc<Liveness>,
    ) -> Self {
        let subjects_len = subjects.len();
        // Authorizers only with a key to open their refresh tokens.
        let directory = subjects.iter().find_map(|s| match s {
            Subject::Component(c) if c.sealing.is_some() => {
                Some((Directory::new(ctx.store.clone()), c.clone()))
            }
            _ => None,
        });
        let index = subjects
            .iter()
            .enumerate()
            .map(|(at, subject)| (subject.lease_id(), at))
            .collect();
        Self {
            index,
            leases: Leases::new(ctx.store.clone()),
            ctx,
            fixed: subjects_len,
            subjects,
            directory,
            known: Known::default(),
            lease,
            held: HashMap::new(),
            shutdown: CancellationToken::new(),
            stopping: Vec::new(),
            liveness,
            taking: Vec::new(),
            stranded: Vec::new(),
            // Replicas start looking in different places.
            scan_at: rand::rng().random_range(0..subjects_len.max(1)),
            exhausted_at: None,
        }
    }

    /// Runs until `shutdown`, then stops every refresher (letting each
    /// finish its step and store what it fetched) and releases the leases.
    /// A refresher that died (a bug), or a privilege MongoDB refused to any
    /// operation of this replica, ends the run with an error, after the
    /// same clean stop, so that the process exits non-zero.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
        self.shutdown = shutdown.clone();
        let mut maintain = tokio::time::interval(self.lease.renew_interval);
        maintain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(self.ctx.refresh.request_poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let outcome = loop {
            self.liveness.idle();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                _ = maintain.tick() => {
                    self.liveness.progress();
                    if let Err(stop) = self.check_refreshers().and_then(|()| self.check_refused()) {
                        break Err(stop);
                    }
                    self.maintain().await;
                }
                _ = poll.tick() => {
                    self.liveness.progress();
                    self.dispatch_requests().await;
                }
            }
        };
        self.stop_all().await;
        outcome
    }

    /// MongoDB refused a privilege to an operation of this replica (any
    /// part: a refresher retries what failed, but no retry can succeed).
    fn check_refused(&self) -> Result<(), CoordinatorError> {
        match self.ctx.store.refused() {
            Some(refused) => {
                tracing::error!(error = %refused, "stopping: MongoDB refused a privilege this replica needs");
                Err(CoordinatorError::Refused(refused.clone()))
            }
            None => Ok(()),
        }
    }

    /// Runs one MongoDB operation (timed in `metrics`), cut off after the
    /// operation timeout (a write that hangs must not hold up the renewals),
    /// whose end, failed or not, is progress for the watchdog; a refusal is
    /// noted, to stop the replica at the next turn.
    async fn observed<T>(
        &self,
        operation: Operation,
        run: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let bounded = bounded(self.ctx.operation_timeout, run);
        let result = self.ctx.metrics.observe(operation, bounded).await;
        self.liveness.progress();
        if let Err(StoreError::Refused(refused)) = &result {
            self.ctx.store.note_refused(refused);
        }
        result
    }

    /// Every held lease with its term.
    fn held_terms(&self) -> Vec<(LeaseId, Term)> {
        self.held
            .iter()
            .map(|(id, held)| (id.clone(), held.lease.term()))
            .collect()
    }

    /// A refresher of a held lease ends only when told to: one that ended
    /// on its own died.
    fn check_refreshers(&self) -> Result<(), CoordinatorError> {
        let dead = self.held.iter().find(|(_, held)| {
            !held.stop.is_cancelled() && held.tasks.iter().any(JoinHandle::is_finished)
        });
        match dead {
            Some((lease, _)) => {
                tracing::error!(account = %lease, "a refresh task died; stopping this replica");
                Err(RefresherDied {
                    lease: lease.clone(),
                }
                .into())
            }
            None => Ok(()),
        }
    }

    /// Renews, announces, balances and takes leases.
    async fn maintain(&mut self) {
        crate::failpoint!("coordinator-maintain");
        crate::stall_point!("coordinator-stall");
        self.stopping.retain(|task| !task.is_finished());
        self.renew_all().await;
        self.read_directory().await;
        let mirrors = self.ctx.mirrors.health();
        let heartbeat = self.leases.heartbeat(
            &self.ctx.instance_id,
            self.lease.duration,
            self.held.len(),
            &mirrors,
        );
        let live = match self.observed(Operation::Heartbeat, heartbeat).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot announce this replica; leases unchanged");
                return;
            }
        };
        let share = self.subjects.len().div_ceil(live);
        while self.held.len() > share {
            let Some(id) = self.held.keys().next().cloned() else {
                break;
            };
            self.give_back(&id, "handing the lease to a less busy replica");
        }
        self.release_stranded().await;
        self.acquire_in_batches(share).await;
        self.date_undated_requests().await;
    }

    /// Takes leases up to `share` in batches of at most [`BATCH`], one
    /// after the other for up to half a renew interval (10,000 accounts
    /// then start in one turn, not in five renew intervals), and only while
    /// below the share: while a batch comes back full or took some, and
    /// until every account was looked at once in this turn (unless such a
    /// pass at this share found nothing: a replica below its share only by
    /// rounding would scan everything every turn). At the share, one batch
    /// (orphans only) a turn: other replicas' leases that lapsed in a
    /// MongoDB outage get one tick to be renewed by their holders. Each
    /// batch is cut off like any one operation; a lease being taken when
    /// the cut comes may have been taken all the same: it is given back at
    /// the next turn.
    async fn acquire_in_batches(&mut self, share: usize) {
        let metrics = self.ctx.metrics.clone();
        let limit = self.ctx.operation_timeout;
        let turn = std::time::Instant::now();
        let n = self.subjects.len();
        let held_at_start = self.held.len();
        let mut looked_at = 0;
        loop {
            let before = self.held.len();
            let acquired = metrics
                .observe(
                    Operation::Acquire,
                    bounded(limit, self.acquire_up_to(share)),
                )
                .await;
            self.liveness.progress();
            self.stranded.append(&mut self.taking);
            let time_left =
                turn.elapsed() < self.lease.renew_interval / 2 && !self.shutdown.is_cancelled();
            match acquired {
                Ok(batch) => {
                    looked_at += batch.passed;
                    let grew = self.held.len() > before;
                    let unseen = looked_at < n && self.exhausted_at != Some(share);
                    let more = batch.full || (grew && looked_at < n) || unseen;
                    if !(self.held.len() < share && more && time_left) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for free leases");
                    break;
                }
            }
        }
        // A whole pass below the share that found nothing: until the share
        // changes, later turns look at one window each.
        if self.held.len() > held_at_start {
            self.exhausted_at = None;
        } else if looked_at >= n && self.held.len() < share {
            self.exhausted_at = Some(share);
        }
    }

    /// The component's authorizers, as the directory lists them now, become
    /// the subjects after the configured ones (all but the `unauthorized`:
    /// those needing re-authorization stay, so that a repair is picked up).
    /// A held authorizer that left is given back. Every replica reads the
    /// same directory, so the shares agree (a turn apart at most).
    async fn read_directory(&mut self) {
        let Some((directory, component)) = &self.directory else {
            return;
        };
        let component = component.clone();
        // From where the last read began, less an overlap for writes
        // stamped before it that landed after (each writer's clock is an
        // estimate of MongoDB's), or everything every DIRECTORY_FULL_READ.
        let started = self.ctx.store.clock().now();
        let overlap = 2 * self.lease.renew_interval + self.ctx.operation_timeout;
        let since = self.known.since(overlap);
        let read = async {
            match since {
                Some(since) => directory.changed_since(&component.appid, since).await,
                None => directory.all(&component.appid).await,
            }
        };
        let authorizers = match self.observed(Operation::Directory, read).await {
            Ok(authorizers) => authorizers,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the authorizer directory; authorizers unchanged");
                return;
            }
        };
        // A full read replaces what is known (an authorizer no longer
        // listed leaves), compared with what was known before.
        let before = if since.is_none() {
            std::mem::take(&mut self.known.entries)
        } else {
            HashMap::new()
        };
        let full_read_at = match (since, self.known.read_at) {
            (Some(_), Some((_, full))) => full,
            _ => Instant::now(),
        };
        self.known.read_at = Some((started, full_read_at));
        // Those `open_platform.authorizers` leaves out are not kept: no
        // lease, no call (a listed one that withdraws still leaves).
        for authorizer in authorizers {
            if !component.keep.keeps(&authorizer.app_id) {
                continue;
            }
            let now = (authorizer.state, authorizer.event_time);
            let known = self.known.entries.insert(authorizer.app_id.clone(), now);
            // A new authorization (its code): the holder exchanges it at
            // once. (Discovery's repair of a refused refresh token files a
            // refresh request: a state a read may not see is no signal.)
            let newer_event = known
                .or_else(|| before.get(&authorizer.app_id).copied())
                .is_some_and(|(_, t)| t != authorizer.event_time);
            if newer_event && authorizer.state != AuthorizerState::Unauthorized {
                self.wake(&component, &authorizer.app_id);
            }
        }
        self.count_authorizers(&component.appid);
        let mut wanted: Vec<AccountId> = self
            .known
            .entries
            .iter()
            .filter(|(_, (state, _))| *state != AuthorizerState::Unauthorized)
            .map(|(app_id, _)| app_id.clone())
            .collect();
        wanted.sort();
        let unchanged = self.subjects.len() - self.fixed == wanted.len()
            && self.subjects[self.fixed..]
                .iter()
                .zip(&wanted)
                .all(|(s, id)| s.app_id() == id);
        if unchanged {
            return;
        }
        self.subjects.truncate(self.fixed);
        self.subjects
            .extend(wanted.into_iter().map(|app_id| Subject::Authorizer {
                component: component.clone(),
                app_id,
            }));
        self.index = self
            .subjects
            .iter()
            .enumerate()
            .map(|(at, subject)| (subject.lease_id(), at))
            .collect();
        self.scan_at %= self.subjects.len().max(1);
        self.exhausted_at = None;
        let gone: Vec<LeaseId> = self
            .held
            .keys()
            .filter(|id| !self.index.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.give_back(&id, "the account no longer authorizes the platform");
        }
    }

    /// The directory as last read, by state, into the metrics (every
    /// replica reads it, so every replica exports it).
    fn count_authorizers(&self, component: &AccountId) {
        let mut counts = HashMap::new();
        for (state, _) in self.known.entries.values() {
            *counts.entry(*state).or_default() += 1;
        }
        self.ctx.metrics.authorizers(component, &counts);
    }

    /// Asks the refresher of a held authorizer to act now (a manual
    /// request): its pending code is exchanged at once.
    fn wake(&self, component: &Component, app_id: &AccountId) {
        let id = LeaseId::authorizer(&component.appid, app_id);
        let kind = CredentialKind::AuthorizerAccessToken;
        let Some(slot) = self.held.get(&id).and_then(|h| h.requests.get(&kind)) else {
            return;
        };
        tracing::info!(account = %app_id, "a new authorization: exchanging its code now");
        slot.put(crate::coordination::RefreshRequest {
            id: mongodb::bson::Bson::Null,
            app_id: app_id.clone(),
            component_appid: Some(component.appid.clone()),
            kind,
            reason: wxtokend_reader::RefreshReason::Manual,
            generation: None,
        });
    }

    async fn renew_all(&mut self) {
        let held = self.held_terms();
        if held.is_empty() {
            return;
        }
        let renew = self
            .leases
            .renew_all(&held, &self.ctx.instance_id, self.lease.duration);
        let renewed = self.observed(Operation::Renew, renew).await;
        let still = match renewed {
            Ok(still) => still,
            Err(e) => {
                // Keep refreshing what can be: writes stay fenced by term.
                tracing::warn!(error = %e, "cannot renew leases");
                return;
            }
        };
        let still: std::collections::HashSet<LeaseId> = still.into_iter().collect();
        for (id, _) in held {
            if still.contains(&id) {
                continue;
            }
            if let Some(held) = self.held.get(&id) {
                tracing::warn!(account = %id, term = held.lease.term().0, "lease taken over by another replica; stopping here");
                if let Some((lease, tasks)) = self.stop(&id) {
                    let metrics = self.ctx.metrics.clone();
                    self.stopping.push(tokio::spawn(async move {
                        join_all(&id, tasks).await;
                        // After the last call in flight recorded its metrics.
                        metrics.lease_given_up(&lease.owner().app_id);
                    }));
                }
            }
        }
    }

    /// Takes free leases up to `share`, and orphans (leases left expired
    /// for over a renew interval) whatever the share, in one batch of at
    /// most [`BATCH`], among the next [`SAMPLE`] accounts this replica does
    /// not hold.
    async fn acquire_up_to(&mut self, share: usize) -> Result<Batch, StoreError> {
        let store = self.ctx.store.clone();
        // In configuration order: `free` is shuffled below, and orphans
        // come in MongoDB's order.
        let (ids, passed) = self.next_unheld(SAMPLE);
        if self.held.len() >= share {
            // At our share: only orphans concern us, and that query returns
            // nothing when all is well.
            let now = store.server_time().await?;
            let mut orphans = self
                .leases
                .expired(&ids, now - self.lease.renew_interval)
                .await?;
            let full = orphans.len() >= BATCH;
            orphans.truncate(BATCH);
            return self
                .take(orphans, Vec::new())
                .await
                .map(|()| Batch { full, passed });
        }
        let infos: HashMap<LeaseId, _> = self
            .leases
            .infos(&ids)
            .await?
            .into_iter()
            .map(|info| (info.id.clone(), info))
            .collect();
        let now = store.server_time().await?;
        let mut free: Vec<LeaseId> = ids
            .into_iter()
            .filter(|id| infos.get(id).is_none_or(|i| i.expires_at <= now))
            .collect();
        free.shuffle(&mut rand::rng());
        let orphaned = |id: &LeaseId| {
            infos
                .get(id)
                .is_some_and(|i| i.expires_at + self.lease.renew_interval <= now)
        };
        let (mut chosen, others): (Vec<LeaseId>, Vec<LeaseId>) =
            free.into_iter().partition(|id| orphaned(id));
        chosen.extend(others.into_iter().take(share - self.held.len()));
        let full = chosen.len() >= BATCH;
        chosen.truncate(BATCH);
        let new = chosen
            .iter()
            .filter(|id| !infos.contains_key(*id))
            .filter_map(|id| {
                let subject = &self.subjects[*self.index.get(id)?];
                let apis = subject.kinds().map(|kind| subject.api(kind)).collect();
                Some((id.clone(), apis))
            })
            .collect();
        self.take(chosen, new)
            .await
            .map(|()| Batch { full, passed })
    }

    /// Up to `limit` leases this replica does not hold, from `scan_at`
    /// on (wrapping around), and how many subjects were passed over to
    /// find them; `scan_at` moves past them.
    fn next_unheld(&mut self, limit: usize) -> (Vec<LeaseId>, usize) {
        let n = self.subjects.len();
        let mut ids = Vec::new();
        let mut passed = 0;
        while passed < n && ids.len() < limit {
            let id = self.subjects[(self.scan_at + passed) % n].lease_id();
            passed += 1;
            if !self.held.contains_key(&id) {
                ids.push(id);
            }
        }
        if n > 0 {
            self.scan_at = (self.scan_at + passed) % n;
        }
        (ids, passed)
    }

    /// Tries to take the leases of `ids` (`new`: those without a lease
    /// document yet) and starts the refreshers of those it gets.
    async fn take(
        &mut self,
        ids: Vec<LeaseId>,
        new: Vec<(LeaseId, Vec<Api>)>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Until their refreshers run, leases this batch may have got are in
        // `taking`: a cut-off or an error gives them back at the next turn.
        self.taking.clone_from(&ids);
        let owned: Vec<(LeaseId, wxtokend_reader::Owner)> = ids
            .into_iter()
            .filter_map(|id| {
                let owner = self.subjects[*self.index.get(&id)?].owner();
                Some((id, owner))
            })
            .collect();
        let taken = self
            .leases
            .acquire_many(&owned, &new, &self.ctx.instance_id, self.lease.duration)
            .await;
        self.liveness.progress();
        let taken = match taken {
            Ok(taken) => taken,
            Err(e) => {
                self.stranded.append(&mut self.taking);
                return Err(e);
            }
        };
        // Which of them have anything stored, one query per kind: a
        // refresher of an account with nothing stored (a new account) need
        // not read first.
        let taken_ids: Vec<AccountId> = taken.iter().map(|l| l.owner().app_id.clone()).collect();
        let mut with_history = HashMap::new();
        let component = self.directory.as_ref().map(|(_, c)| c.appid.clone());
        let component = component.as_ref();
        for kind in CredentialKind::ALL {
            let wanted = taken.iter().any(|lease| {
                self.index
                    .get(lease.id())
                    .is_some_and(|&at| self.subjects[at].kinds().any(|k| k == kind))
            });
            if wanted {
                // On failure, every refresher reads for itself.
                let any = self
                    .ctx
                    .store
                    .accounts_with_history(kind, &taken_ids, component)
                    .await
                    .ok();
                with_history.insert(kind, any);
                self.liveness.progress();
            }
        }
        for lease in taken {
            let subject = self
                .index
                .get(lease.id())
                .map(|&at| self.subjects[at].clone());
            if let Some(subject) = subject {
                let app_id = lease.owner().app_id.clone();
                let stored = |kind| match with_history.get(&kind) {
                    Some(Some(ids)) => ids.contains(&app_id),
                    _ => true,
                };
                self.start(subject, lease, stored);
            }
        }
        self.taking.clear();
        Ok(())
    }

    /// Gives back the leases whose taking was cut off and that MongoDB gave
    /// this replica all the same (held by this instance, and not in
    /// `held`): nobody refreshes them otherwise until they expire.
    async fn release_stranded(&mut self) {
        if self.stranded.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.stranded);
        let infos = self
            .observed(Operation::Acquire, self.leases.infos(&ids))
            .await;
        let Ok(infos) = infos else {
            // Try again at the next turn.
            self.stranded = ids;
            return;
        };
        for info in infos {
            if info.holder != *self.ctx.instance_id || self.held.contains_key(&info.id) {
                continue;
            }
            let release = self.leases.release_taken(&info);
            match self.observed(Operation::Release, release).await {
                Ok(()) => {
                    tracing::info!(account = %info.id, "released a lease whose taking was cut off")
                }
                Err(e) => {
                    tracing::warn!(account = %info.id, error = %e, "cannot release a lease whose taking was cut off; it expires on its own")
                }
            }
        }
    }

    /// Starts the subject's refreshers under `lease`; `stored(kind)`: some
    /// credential of that kind may be stored (read it before anything),
    /// `false` when none is.
    fn start(&mut self, subject: Subject, lease: Lease, stored: impl Fn(CredentialKind) -> bool) {
        tracing::info!(account = %lease.owner(), term = lease.term().0, "took the lease");
        self.ctx.metrics.lease_taken(&lease.owner().app_id);
        let stop = self.shutdown.child_token();
        let mut requests = HashMap::new();
        let mut tasks = Vec::new();
        for kind in subject.kinds() {
            let slot = Arc::new(RequestSlot::default());
            let refresher = Refresher::new(
                subject.clone(),
                kind,
                self.ctx.clone(),
                lease.clone(),
                slot.clone(),
                stop.clone(),
            );
            let refresher = if stored(kind) {
                refresher
            } else {
                refresher.nothing_stored()
            };
            requests.insert(kind, slot);
            tasks.push(tokio::spawn(refresher.run()));
        }
        // The component's holder also keeps the directory in line with
        // WeChat's authorizer list.
        if let Subject::Component(component) = &subject {
            tasks.push(tokio::spawn(crate::refresh::discovery::run(
                self.ctx.clone(),
                lease.clone(),
                component.clone(),
                stop.clone(),
            )));
        }
        self.held.insert(
            lease.id().clone(),
            HeldLease {
                lease,
                requests,
                stop,
                tasks,
            },
        );
    }

    /// Tells the account's refreshers to stop, without waiting: one that
    /// already sent a call finishes it and stores what it fetched; the
    /// others stop at once. Returns the lease and the refreshers' tasks.
    fn stop(&mut self, id: &LeaseId) -> Option<(Lease, Vec<JoinHandle<()>>)> {
        let held = self.held.remove(id)?;
        held.stop.cancel();
        Some((held.lease, held.tasks))
    }

    /// Gives the lease back once its refreshers have stopped (so a call in
    /// flight is stored under it first), in a task of its own.
    fn give_back(&mut self, id: &LeaseId, why: &'static str) {
        let Some((lease, tasks)) = self.stop(id) else {
            return;
        };
        let id = id.clone();
        let metrics = self.ctx.metrics.clone();
        self.stopping.push(tokio::spawn(async move {
            join_all(&id, tasks).await;
            // After the last call in flight recorded its metrics.
            metrics.lease_given_up(&lease.owner().app_id);
            let term = lease.term();
            match metrics.observe(Operation::Release, lease.release()).await {
                Ok(()) => tracing::info!(account = %id, term = term.0, "released the lease: {why}"),
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "cannot release the lease; it expires on its own")
                }
            }
        }));
    }

    /// At shutdown: every refresher was stopped by the shutdown token; wait
    /// until each stored what it fetched (the daemon bounds the wait), then
    /// release every lease in one write.
    async fn stop_all(&mut self) {
        let held = self.held_terms();
        let ids: Vec<LeaseId> = held.iter().map(|(id, _)| id.clone()).collect();
        for id in &ids {
            if let Some((_, tasks)) = self.stop(id) {
                join_all(id, tasks).await;
            }
        }
        for task in self.stopping.drain(..) {
            let _ = task.await;
        }
        let release = self.leases.release_all(&held, &self.ctx.instance_id);
        match self.ctx.metrics.observe(Operation::Release, release).await {
            Ok(()) => tracing::info!(leases = ids.len(), "released every lease: shutting down"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leases; they expire on their own")
            }
        }
        if let Err(e) = self.leases.leave(&self.ctx.instance_id).await {
            tracing::debug!(error = %e, "cannot remove this replica's heartbeat");
        }
    }
}

/// `run`, failed with [`StoreError::TimedOut`] if it takes longer than
/// `limit`.
async fn bounded<T>(
    limit: std::time::Duration,
    run: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or(Err(StoreError::TimedOut(limit)))
}

/// Waits for a lease's refresher tasks.
async fn join_all(id: &LeaseId, tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(account = %id, error = %e, "refresh task failed");
        }
    }
}
