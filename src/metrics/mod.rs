//! Prometheus metrics, served on `/metrics` by the admin server. Names and
//! labels are the contract with dashboards and alerts (see the README).
//!
//! Each replica exports the accounts whose lease it holds: sum or max over
//! replicas by `account` gives the whole picture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use wxtokend_reader::{AccountId, CredentialKind, Generation};

use crate::clock::Clock;
use crate::config::{AccountSeries, DailyCallLimits};
use crate::open_platform::directory::AuthorizerState;
use crate::wechat::Api;
mod labels;

use labels::{
    AccountLabels, ApiLabels, AuthorizerStateLabels, CallbackLabels, CommandLabels,
    ComponentLabels, CredentialLabels, Kind, KindLabels, MirrorLabels, OperationLabels,
    OutcomeLabels, QuotaLabels,
};
pub use labels::{Operation, Outcome};

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn upstream_buckets() -> Histogram {
    // 5 ms .. ~20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

fn mongodb_buckets() -> Histogram {
    // 0.5 ms .. ~4 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// What Redis answered to a round of a mirror's writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorTally {
    /// Credentials written as a new generation.
    pub written: u64,
    /// SDK keys of a generation already there, written again because they
    /// were missing or held something else.
    pub repaired: u64,
    /// Credentials not written: Redis holds a newer generation.
    pub stale: u64,
}

/// What the refreshers know about the credential they keep fresh.
#[derive(Debug, Clone, Copy)]
struct Held {
    generation: Generation,
    fetched_at: SystemTime,
    expires_at: SystemTime,
}

/// All metrics of one replica.
pub struct Metrics {
    registry: Registry,
    /// `admin.account_series = "all"`: age, generation and WeChat calls
    /// per credential too.
    all_series: bool,
    seconds_until_expiry: Family<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    age: Family<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    generation: Family<CredentialLabels, Gauge>,
    refreshes: Family<OutcomeLabels, Counter>,
    upstream_calls: Family<CredentialLabels, Counter>,
    upstream_duration: Histograms<KindLabels>,
    quota_calls_today: Family<QuotaLabels, Gauge>,
    quota_exhausted: Family<QuotaLabels, Gauge>,
    daily_call_limit: Family<ApiLabels, Gauge>,
    lease_held: Family<AccountLabels, Gauge>,
    mongodb_duration: Histograms<OperationLabels>,
    mongodb_errors: Family<OperationLabels, Counter>,
    mongodb_commands: Family<CommandLabels, Counter>,
    mirror_writes: Family<MirrorLabels, Counter>,
    mirror_errors: Family<MirrorLabels, Counter>,
    mirror_repairs: Family<MirrorLabels, Counter>,
    mirror_stale: Family<MirrorLabels, Counter>,
    mirror_resyncs: Family<MirrorLabels, Counter>,
    mirror_up: Family<MirrorLabels, Gauge>,
    mirror_credentials: Family<MirrorLabels, Gauge>,
    open_platform_callbacks: Family<CallbackLabels, Counter>,
    verify_ticket_age: Family<ComponentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// When each component's newest verify ticket was stored (MongoDB's
    /// clock): its age is brought up to now at each scrape.
    verify_tickets: Mutex<HashMap<String, SystemTime>>,
    authorizers: Family<AuthorizerStateLabels, Gauge>,
    held: Mutex<HashMap<(AccountId, CredentialKind), Held>>,
    clock: Arc<Clock>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn labels(account: &AccountId, kind: CredentialKind) -> CredentialLabels {
    CredentialLabels {
        account: account.to_string(),
        kind: Kind(kind),
    }
}

fn account_labels(account: &AccountId) -> AccountLabels {
    AccountLabels {
        account: account.to_string(),
    }
}

fn quota_labels(account: &AccountId, api: Api) -> QuotaLabels {
    QuotaLabels {
        account: account.to_string(),
        api,
    }
}

impl Metrics {
    /// Metrics whose time-based gauges are measured with `clock`, with
    /// the configured daily ceilings of each WeChat API.
    pub fn new(clock: Arc<Clock>, limits: &DailyCallLimits, series: AccountSeries) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            clock,
            all_series: series == AccountSeries::All,
            seconds_until_expiry: Family::default(),
            age: Family::default(),
            generation: Family::default(),
            refreshes: Family::default(),
            upstream_calls: Family::default(),
            upstream_duration: Family::new_with_constructor(upstream_buckets),
            quota_calls_today: Family::default(),
            quota_exhausted: Family::default(),
            daily_call_limit: Family::default(),
            lease_held: Family::default(),
            mongodb_duration: Family::new_with_constructor(mongodb_buckets),
            mongodb_errors: Family::default(),
            mongodb_commands: Family::default(),
            mirror_writes: Family::default(),
            mirror_errors: Family::default(),
            mirror_repairs: Family::default(),
            mirror_stale: Family::default(),
            mirror_resyncs: Family::default(),
            mirror_up: Family::default(),
            mirror_credentials: Family::default(),
            open_platform_callbacks: Family::default(),
            verify_ticket_age: Family::default(),
            verify_tickets: Mutex::new(HashMap::new()),
            authorizers: Family::default(),
            held: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "wxtokend_token_seconds_until_expiry",
            "Seconds until the newest credential expires",
            m.seconds_until_expiry.clone(),
        );
        registry.register(
            "wxtokend_token_age_seconds",
            "Seconds since the newest credential was fetched",
            m.age.clone(),
        );
        registry.register(
            "wxtokend_token_generation",
            "Generation of the newest credential",
            m.generation.clone(),
        );
        registry.register(
            "wxtokend_refresh",
            "Refresh attempts by outcome (success or error class)",
            m.refreshes.clone(),
        );
        registry.register(
            "wxtokend_upstream_calls",
            "Calls to WeChat's credential endpoints",
            m.upstream_calls.clone(),
        );
        registry.register(
            "wxtokend_upstream_duration_seconds",
            "Duration of calls to WeChat's credential endpoints",
            m.upstream_duration.clone(),
        );
        registry.register(
            "wxtokend_quota_calls_today",
            "Calls to one WeChat API counted today (Beijing time) against its ceiling",
            m.quota_calls_today.clone(),
        );
        registry.register(
            "wxtokend_quota_exhausted",
            "1 while an API of an account may not be called until midnight Beijing time \
             (WeChat's 45009 or the ceiling reached)",
            m.quota_exhausted.clone(),
        );
        registry.register(
            "wxtokend_quota_daily_call_limit",
            "Ceiling on calls per account per day to each WeChat API \
             (refresh.daily_call_limits)",
            m.daily_call_limit.clone(),
        );
        for api in Api::ALL {
            m.daily_call_limit
                .get_or_create(&ApiLabels { api })
                .set(limits.of(api));
        }
        registry.register(
            "wxtokend_lease_held",
            "1 while this replica holds the account's lease",
            m.lease_held.clone(),
        );
        registry.register(
            "wxtokend_mongodb_duration_seconds",
            "Duration of MongoDB operations, by what they are for",
            m.mongodb_duration.clone(),
        );
        registry.register(
            "wxtokend_mongodb_errors",
            "Failed MongoDB operations, by what they are for",
            m.mongodb_errors.clone(),
        );
        registry.register(
            "wxtokend_mongodb_commands",
            "MongoDB commands sent (each one round trip), by command name",
            m.mongodb_commands.clone(),
        );
        registry.register(
            "wxtokend_mirror_writes",
            "Credentials written to a Redis mirror (every SDK layout of one credential in one \
             write)",
            m.mirror_writes.clone(),
        );
        registry.register(
            "wxtokend_mirror_errors",
            "Failed Redis operations of a mirror (each is retried; see wxtokend_mirror_up)",
            m.mirror_errors.clone(),
        );
        registry.register(
            "wxtokend_mirror_repairs",
            "SDK keys found missing or changed in Redis (deleted, evicted, flushed, or \
             written by an SDK) and written again with the newest credential",
            m.mirror_repairs.clone(),
        );
        registry.register(
            "wxtokend_mirror_stale",
            "Credentials not written because Redis already holds a newer generation (another \
             replica's)",
            m.mirror_stale.clone(),
        );
        registry.register(
            "wxtokend_mirror_resyncs",
            "Rewrites of every held credential from MongoDB (at Redis's first answer, and \
             when it restarted or was replaced: a new run_id)",
            m.mirror_resyncs.clone(),
        );
        registry.register(
            "wxtokend_mirror_up",
            "1 while the mirror's Redis answers and takes its writes",
            m.mirror_up.clone(),
        );
        registry.register(
            "wxtokend_mirror_credentials",
            "Credentials this replica keeps written in a mirror and repairs (those of the \
             leases it holds)",
            m.mirror_credentials.clone(),
        );
        registry.register(
            "wxtokend_open_platform_callbacks",
            "Pushes to the Open Platform callback receiver by outcome: stored (a verify \
             ticket), authorized, updateauthorized, unauthorized (authorization events, \
             applied), acknowledged (another event), store_error (MongoDB failed; answered \
             503) or the reason it was refused",
            m.open_platform_callbacks.clone(),
        );
        registry.register(
            "wxtokend_open_platform_verify_ticket_age_seconds",
            "Seconds since the component's newest verify ticket was stored in MongoDB \
             (by any replica or writer; WeChat pushes one every 10 minutes)",
            m.verify_ticket_age.clone(),
        );
        registry.register(
            "wxtokend_open_platform_authorizers",
            "Authorizers of the component this daemon keeps, by state, as this replica \
             last read the directory",
            m.authorizers.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one push to the Open Platform callback receiver.
    pub fn open_platform_callback(&self, outcome: &str) {
        self.open_platform_callbacks
            .get_or_create(&CallbackLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// When the newest verify ticket of `component` was stored, as MongoDB
    /// says (the readiness check reads it); `None`: none is stored, and the
    /// component has no series.
    pub fn verify_ticket_seen(&self, component: &AccountId, received_at: Option<SystemTime>) {
        let mut tickets = self
            .verify_tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match received_at {
            Some(at) => {
                tickets.insert(component.to_string(), at);
            }
            None => {
                tickets.remove(component.as_str());
                self.verify_ticket_age.remove(&ComponentLabels {
                    component: component.to_string(),
                });
            }
        }
    }

    /// This replica's receiver stored a new verify ticket of `component`
    /// at `received_at`: its age starts again from there (never from an
    /// older time).
    pub fn verify_ticket_received(&self, component: &AccountId, received_at: SystemTime) {
        self.verify_tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(component.to_string())
            .and_modify(|at| *at = (*at).max(received_at))
            .or_insert(received_at);
    }

    /// How many authorizers of `component` are in each state (`counts`
    /// by [`AuthorizerState`]; a state not counted is 0).
    pub fn authorizers(&self, component: &AccountId, counts: &HashMap<AuthorizerState, usize>) {
        for state in AuthorizerState::ALL {
            let n = counts.get(&state).copied().unwrap_or_default();
            self.authorizers
                .get_or_create(&AuthorizerStateLabels {
                    component: component.to_string(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one MongoDB command sent (see `Store::on_command`).
    pub fn command_counter(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let commands = self.mongodb_commands.clone();
        move |command: &str| {
            commands
                .get_or_create(&CommandLabels {
                    command: command.to_owned(),
                })
                .inc();
        }
    }

    /// What Redis answered to a round of a mirror's writes.
    pub fn mirror_tally(&self, mirror: &str, tally: MirrorTally) {
        let labels = MirrorLabels {
            mirror: mirror.to_owned(),
        };
        self.mirror_writes
            .get_or_create(&labels)
            .inc_by(tally.written);
        self.mirror_repairs
            .get_or_create(&labels)
            .inc_by(tally.repaired);
        self.mirror_stale.get_or_create(&labels).inc_by(tally.stale);
    }

    /// Whether a mirror's Redis took what it was asked (`Err`: a failed
    /// operation, counted).
    pub fn mirror_state(&self, mirror: &str, result: Result<(), ()>) {
        let labels = MirrorLabels {
            mirror: mirror.to_owned(),
        };
        if result.is_err() {
            self.mirror_errors.get_or_create(&labels).inc();
        }
        self.mirror_up
            .get_or_create(&labels)
            .set(i64::from(result.is_ok()));
    }

    /// How many credentials a mirror keeps written and repairs.
    pub fn mirror_credentials(&self, mirror: &str, held: usize) {
        self.mirror_credentials
            .get_or_create(&MirrorLabels {
                mirror: mirror.to_owned(),
            })
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    pub fn mirror_resynced(&self, mirror: &str) {
        self.mirror_resyncs
            .get_or_create(&MirrorLabels {
                mirror: mirror.to_owned(),
            })
            .inc();
    }

    /// The credential an account's refresher now relies on.
    pub fn credential(
        &self,
        account: &AccountId,
        kind: CredentialKind,
        generation: Generation,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) {
        if self.all_series {
            self.generation
                .get_or_create(&labels(account, kind))
                .set(generation.0);
        }
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (account.clone(), kind),
                Held {
                    generation,
                    fetched_at,
                    expires_at,
                },
            );
    }

    pub fn refresh_outcome(&self, account: &AccountId, kind: CredentialKind, outcome: Outcome) {
        self.refreshes
            .get_or_create(&OutcomeLabels {
                account: account.to_string(),
                kind: Kind(kind),
                outcome,
            })
            .inc();
    }

    pub fn upstream_call(&self, account: &AccountId, kind: CredentialKind, took: Duration) {
        if self.all_series {
            self.upstream_calls
                .get_or_create(&labels(account, kind))
                .inc();
        }
        self.upstream_duration
            .get_or_create(&KindLabels { kind: Kind(kind) })
            .observe(took.as_secs_f64());
    }

    pub fn quota_calls_today(&self, account: &AccountId, api: Api, calls: i64) {
        self.quota_calls_today
            .get_or_create(&quota_labels(account, api))
            .set(calls);
    }

    /// Whether `api` of `account` is stopped for the day. Only stopped
    /// APIs have a series, so thousands of healthy accounts add none.
    pub fn quota_exhausted(&self, account: &AccountId, api: Api, exhausted: bool) {
        let labels = quota_labels(account, api);
        if exhausted {
            self.quota_exhausted.get_or_create(&labels).set(1);
        } else {
            self.quota_exhausted.remove(&labels);
        }
    }

    /// Runs one MongoDB operation, counting its duration and its failure.
    pub async fn observe<T, E>(
        &self,
        operation: Operation,
        run: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = run.await;
        self.mongodb(operation, started.elapsed(), result.is_ok());
        result
    }

    pub fn mongodb(&self, operation: Operation, took: Duration, ok: bool) {
        let labels = OperationLabels { operation };
        self.mongodb_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.mongodb_errors.get_or_create(&labels).inc();
        }
    }

    pub fn lease_taken(&self, account: &AccountId) {
        self.lease_held
            .get_or_create(&account_labels(account))
            .set(1);
    }

    /// The lease went to another replica, which exports the account from
    /// now on: every series naming the account is removed here, so that
    /// thousands of accounts moving between replicas leave no stale series.
    pub fn lease_given_up(&self, account: &AccountId) {
        self.lease_held.remove(&account_labels(account));
        for api in Api::ALL {
            self.quota_calls_today.remove(&quota_labels(account, api));
            self.quota_exhausted.remove(&quota_labels(account, api));
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for kind in CredentialKind::ALL {
            held.remove(&(account.clone(), kind));
            let labels = labels(account, kind);
            self.generation.remove(&labels);
            self.seconds_until_expiry.remove(&labels);
            self.age.remove(&labels);
            self.upstream_calls.remove(&labels);
            for outcome in Outcome::ALL {
                self.refreshes.remove(&OutcomeLabels {
                    account: labels.account.clone(),
                    kind: labels.kind,
                    outcome,
                });
            }
        }
    }

    /// The Prometheus text exposition, with time-based gauges brought up to now.
    pub fn render(&self) -> String {
        let now = self.clock.now();
        for ((account, kind), held) in self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let labels = labels(account, *kind);
            let left = held.expires_at.duration_since(now).unwrap_or_default();
            let age = now.duration_since(held.fetched_at).unwrap_or_default();
            self.seconds_until_expiry
                .get_or_create(&labels)
                .set(left.as_secs_f64());
            if self.all_series {
                self.age.get_or_create(&labels).set(age.as_secs_f64());
                self.generation
                    .get_or_create(&labels)
                    .set(held.generation.0);
            }
        }
        for (component, received_at) in self
            .verify_tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let age = now.duration_since(*received_at).unwrap_or_default();
            self.verify_ticket_age
                .get_or_create(&ComponentLabels {
                    component: component.clone(),
                })
                .set(age.as_secs_f64());
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
