//! Redis mirrors (`[[mirrors]]`): every credential this replica stores in
//! MongoDB, or reuses from it when it takes a lease, is also written into
//! Redis where and how each configured SDK reads it ([`layout`]), so that
//! an SDK pointed at that Redis never fetches a token of its own.
//!
//! MongoDB stays the source of truth and its path never waits for Redis: a
//! refresher only offers the credential to a bounded queue ([`Mirrors::offer`]);
//! one task per mirror ([`writer`]) writes it. A full queue drops the offer,
//! counts it, and makes the task rewrite everything from MongoDB.

mod layout;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::{AccountId, Credential, CredentialKind, Generation};

pub use layout::{KeyPrefixes, Layout};

use crate::config::{Account, MirrorSettings};
use crate::metrics::Metrics;
use crate::store::Store;

/// Credentials a mirror's queue holds before offers are dropped: far more
/// than one replica stores between two writes of a healthy Redis.
const QUEUE: usize = 1024;

/// A credential to mirror. `Debug` leaves the value out.
#[derive(Clone)]
pub struct Mirrored {
    pub account: AccountId,
    pub kind: CredentialKind,
    pub generation: Generation,
    pub value: SecretString,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Mirrored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrored")
            .field("account", &self.account)
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl From<Credential> for Mirrored {
    fn from(c: Credential) -> Self {
        Self {
            account: c.app_id,
            kind: c.kind,
            generation: c.generation,
            value: c.value,
            expires_at: c.expires_at,
        }
    }
}

/// The refreshers' side of every configured mirror.
#[derive(Debug, Default)]
pub struct Mirrors {
    queues: Vec<Queue>,
}

/// How a mirror is doing, as this replica's heartbeat tells `status`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub name: String,
    /// The last Redis operation succeeded.
    pub up: bool,
    /// Failed Redis operations since start.
    pub errors: u64,
    /// The last failure (Redis's error: it names the command and the
    /// server, never a value).
    pub last_error: Option<String>,
    /// When the last credential was written.
    pub last_write: Option<SystemTime>,
}

/// The (account, kind) pairs whose offers a full queue dropped.
pub(super) type Lost = Arc<Mutex<HashSet<(AccountId, CredentialKind)>>>;

/// One mirror's [`Health`], updated by its writer.
pub(super) type SharedHealth = Arc<Mutex<Health>>;

fn update(health: &SharedHealth, change: impl FnOnce(&mut Health)) {
    change(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

#[derive(Debug)]
struct Queue {
    settings: Arc<MirrorSettings>,
    tx: mpsc::Sender<Mirrored>,
    /// What offers were dropped for: the writer rereads them from MongoDB.
    lost: Lost,
    metrics: Arc<Metrics>,
    health: SharedHealth,
}

impl Mirrors {
    /// Starts one writer task per mirror; they end when `stop` is cancelled.
    pub fn start(
        settings: &[MirrorSettings],
        accounts: &[Account],
        store: &Store,
        metrics: &Arc<Metrics>,
        stop: &CancellationToken,
    ) -> Result<(Self, Vec<JoinHandle<()>>), MirrorError> {
        let platforms: HashMap<AccountId, _> = accounts
            .iter()
            .map(|a| (a.id.clone(), a.platform))
            .collect();
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for mirror in settings {
            let settings = Arc::new(mirror.clone());
            let (tx, rx) = mpsc::channel(QUEUE);
            let lost = Lost::default();
            let health = Arc::new(Mutex::new(Health {
                name: mirror.name.clone(),
                ..Health::default()
            }));
            let writer = writer::Writer::new(
                settings.clone(),
                platforms.clone(),
                store.clone(),
                metrics.clone(),
                rx,
                lost.clone(),
                health.clone(),
            )
            .map_err(|()| MirrorError::Url(mirror.name.clone()))?;
            tasks.push(tokio::spawn(writer.run(stop.clone())));
            queues.push(Queue {
                settings,
                tx,
                lost,
                metrics: metrics.clone(),
                health,
            });
        }
        Ok((Self { queues }, tasks))
    }

    /// Every mirror's health now.
    pub fn health(&self) -> Vec<Health> {
        self.queues
            .iter()
            .map(|q| {
                q.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .collect()
    }

    /// Hands a credential just stored in (or reused from) MongoDB to every
    /// mirror that wants it. Never waits: a full queue drops it and asks
    /// for a rewrite from MongoDB.
    pub fn offer(&self, credential: &Mirrored) {
        for queue in &self.queues {
            if !queue.settings.wants(&credential.account, credential.kind) {
                continue;
            }
            if full_for_tests() || queue.tx.try_send(credential.clone()).is_err() {
                queue
                    .lost
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((credential.account.clone(), credential.kind));
                queue.metrics.mirror_dropped(&queue.settings.name);
            }
        }
    }
}

/// Whether the mirror's Redis answers (`wxtokend check`). The error is
/// Redis's own (command and server, never the URL).
pub async fn ping(settings: &MirrorSettings) -> Result<(), String> {
    use secrecy::ExposeSecret;
    let client = redis::Client::open(settings.url.expose_secret())
        .map_err(|_| "the Redis URL is not valid".to_owned())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(5)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The test suite's stand-in for a full queue (`FAILPOINTS=mirror-queue-full=1*return`).
fn full_for_tests() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("mirror-queue-full", |_| true);
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Checked at load time already; the URL is never quoted.
    #[error("mirror {0}: the Redis URL is not valid")]
    Url(String),
}
