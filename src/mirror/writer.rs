//! One task per mirror: writes the credentials offered to it into Redis,
//! every configured SDK layout of a credential in one atomic script, and
//! rewrites all of them from MongoDB whenever Redis may have lost or aged
//! them (the first contact, a return after a failure, a restart seen as a
//! new `run_id`); an offer a full queue dropped is reread alone.
//!
//! TTL: every key lives as long as the credential (its `expires_at`, by
//! MongoDB's clock, minus now), never shorter. The SDKs' own early expiries
//! (silenceper `expires_in - 1500`, WxJava's `- 200` for tickets and mini
//! programs) are deliberately not copied: wxtokend stores the next token
//! `refresh.margin` before expiry (a stable_token or a ticket only when
//! WeChat issues it, in its last minutes), so a key that vanished earlier
//! would leave the SDK without a key and make it fetch on its own, rotating
//! everyone's token. The SDKs' read-side rules still hold: WxJava counts a
//! key with under 2 s left as expired, wechatpy refetches in the last 60 s
//! of its `…_expires_at`; both only matter once wxtokend is late.
//!
//! No older generation over a newer one: beside the SDK keys, the script
//! keeps `wxtokend:generation:{account}:{kind}` (same TTL) and writes
//! nothing when Redis already holds a newer generation (another replica's
//! write, after a lease moved, racing with this one's late write).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::{AccountId, CredentialKind};

use super::layout::{entries, Value};
use super::{update, Lost, Mirrored, SharedHealth};
use crate::config::{MirrorSettings, Platform};
use crate::metrics::{Metrics, Operation};
use crate::store::Store;

/// Sets every SDK key of one credential unless Redis holds a newer
/// generation of it. KEYS[1]: the generation key; KEYS[2..]: the SDK keys.
/// ARGV[1]: the generation; ARGV[2]: the TTL in seconds; ARGV[3..]: the
/// values of KEYS[2..]. Returns 1 if written, 0 if a newer one stands.
const WRITE: &str = r"
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stored > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[2])
end
return 1
";

/// A Redis call that takes longer counts as failed (and is retried).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

type Key = (AccountId, CredentialKind);

pub(super) struct Writer {
    settings: Arc<MirrorSettings>,
    platforms: HashMap<AccountId, Platform>,
    redis: ConnectionManager,
    store: Store,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Mirrored>,
    lost: Lost,
    script: redis::Script,
    /// The newest credential of each (account, kind) offered so far: what
    /// a rewrite starts from.
    latest: HashMap<Key, Mirrored>,
    /// Those not yet in Redis.
    unwritten: HashSet<Key>,
    /// The `run_id` of the Redis server last seen answering; `None` until
    /// the first contact and after a failure: everything is rewritten
    /// when it answers again.
    server: Option<String>,
    /// The last problem, logged once until Redis answers again.
    failing: bool,
    health: SharedHealth,
}

impl Writer {
    pub(super) fn new(
        settings: Arc<MirrorSettings>,
        platforms: HashMap<AccountId, Platform>,
        store: Store,
        metrics: Arc<Metrics>,
        rx: mpsc::Receiver<Mirrored>,
        lost: Lost,
        health: SharedHealth,
    ) -> Result<Self, ()> {
        let client = redis::Client::open(settings.url.expose_secret()).map_err(|_| ())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(|_| ())?;
        Ok(Self {
            settings,
            platforms,
            redis,
            store,
            metrics,
            rx,
            lost,
            script: redis::Script::new(WRITE),
            latest: HashMap::new(),
            unwritten: HashSet::new(),
            server: None,
            failing: false,
            health,
        })
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let span = tracing::info_span!("mirror", mirror = %self.settings.name);
        let _ = tracing::Instrument::instrument(self.run_until(stop), span).await;
    }

    async fn run_until(&mut self, stop: CancellationToken) {
        let mut next_check = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = self.rx.recv() => match received {
                    Some(credential) => self.take(credential),
                    None => return,
                },
                () = tokio::time::sleep_until(next_check) => {
                    self.check().await;
                    next_check = Instant::now() + self.settings.check_interval;
                }
            }
            while let Ok(credential) = self.rx.try_recv() {
                self.take(credential);
            }
            let lost: Vec<Key> =
                std::mem::take(&mut *self.lost.lock().unwrap_or_else(PoisonError::into_inner))
                    .into_iter()
                    .collect();
            if !lost.is_empty() {
                tracing::warn!(
                    dropped = lost.len(),
                    "the mirror queue was full; rereading those credentials from MongoDB"
                );
                self.reread(lost).await;
            }
            self.flush().await;
        }
    }

    /// Keeps `credential` if it is the newest of its (account, kind).
    fn take(&mut self, credential: Mirrored) {
        let key = (credential.account.clone(), credential.kind);
        let newer = self
            .latest
            .get(&key)
            .is_none_or(|held| held.generation <= credential.generation);
        if newer {
            self.latest.insert(key.clone(), credential);
            self.unwritten.insert(key);
        }
    }

    /// Asks Redis who it is: a first answer, an answer after a failure, or
    /// another server (a restart, a failover) means everything is rewritten.
    async fn check(&mut self) {
        let info = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut self.redis)
            .await;
        let run_id = match info {
            Ok(info) => info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            Err(e) => return self.failed(&e),
        };
        if self.server.as_deref() == Some(run_id.as_str()) {
            return;
        }
        match self.server.replace(run_id) {
            Some(_) => tracing::warn!("Redis restarted or was replaced; rewriting every key"),
            None if self.failing => tracing::info!("Redis answers again; rewriting every key"),
            None => tracing::info!("Redis answers; writing every held credential"),
        }
        self.failing = false;
        self.metrics.mirror(&self.settings.name, Ok(0));
        update(&self.health, |h| h.up = true);
        self.resync().await;
    }

    /// Rereads everything held from MongoDB and marks it for writing.
    async fn resync(&mut self) {
        self.metrics.mirror_resynced(&self.settings.name);
        let keys: Vec<Key> = self.latest.keys().cloned().collect();
        self.reread(keys).await;
    }

    /// Rereads the newest valid credential of each of `keys` from MongoDB
    /// (a newer one than offered wins; a failed read keeps what was
    /// offered) and marks it for writing.
    async fn reread(&mut self, keys: Vec<Key>) {
        for (account, kind) in keys {
            let now = self.store.clock().now();
            let read = self.store.credentials().newest_valid(kind, &account, now);
            let read = self.metrics.observe(Operation::MirrorResync, read).await;
            match read {
                Ok(Some(stored)) => self.take(stored.into()),
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(
                        error = %e, %account, %kind,
                        "cannot reread the credential from MongoDB; writing the one held"
                    );
                }
            }
            let key = (account, kind);
            if self.latest.contains_key(&key) {
                self.unwritten.insert(key);
            } else {
                // Never offered (dropped) and not read: read again later.
                self.lost
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key);
            }
        }
    }

    /// Writes what is not in Redis yet, while Redis answers.
    async fn flush(&mut self) {
        if self.server.is_none() || self.unwritten.is_empty() {
            return;
        }
        let mut written = 0;
        let keys: Vec<Key> = self.unwritten.iter().cloned().collect();
        for key in keys {
            let Some(credential) = self.latest.get(&key) else {
                continue;
            };
            match self.write(credential.clone()).await {
                Ok(()) => {
                    self.unwritten.remove(&key);
                    written += 1;
                }
                Err(e) => return self.failed(&e),
            }
        }
        self.metrics.mirror(&self.settings.name, Ok(written));
        let now = self.store.clock().now();
        update(&self.health, |h| {
            h.up = true;
            if written > 0 {
                h.last_write = Some(now);
            }
        });
    }

    /// One credential, every layout, one script call. An expired one is
    /// not written (its keys expire on their own).
    async fn write(&mut self, credential: Mirrored) -> redis::RedisResult<()> {
        let now = self.store.clock().now();
        let ttl = credential
            .expires_at
            .duration_since(now)
            .unwrap_or_default()
            .as_secs();
        let Some(&platform) = self.platforms.get(&credential.account) else {
            return Ok(());
        };
        if ttl < 1 {
            return Ok(());
        }
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!(
                "wxtokend:generation:{}:{}",
                credential.account, credential.kind
            ))
            .arg(credential.generation.0)
            .arg(ttl);
        let mut any = false;
        for &layout in &self.settings.layouts {
            let keys = entries(
                layout,
                &self.settings.key_prefix,
                platform,
                &credential.account,
                credential.kind,
            );
            for entry in keys {
                invocation
                    .key(entry.key)
                    .arg(encode(entry.value, &credential));
                any = true;
            }
        }
        if !any {
            return Ok(());
        }
        let stood: i64 = invocation.invoke_async(&mut self.redis).await?;
        if stood == 0 {
            tracing::debug!(
                account = %credential.account,
                kind = %credential.kind,
                generation = %credential.generation,
                "Redis already holds a newer generation; not written"
            );
        }
        Ok(())
    }

    fn failed(&mut self, error: &redis::RedisError) {
        self.metrics.mirror(&self.settings.name, Err(()));
        update(&self.health, |h| {
            h.up = false;
            h.errors += 1;
            h.last_error = Some(error.to_string());
        });
        // Redis's errors name the command and the server, never the values.
        if self.failing {
            tracing::debug!(error = %error, "Redis still fails; retrying");
        } else {
            tracing::warn!(
                error = %error,
                retry_in_s = self.settings.check_interval.as_secs_f32(),
                "cannot write to Redis; the SDKs keep the keys they have until they expire"
            );
        }
        self.failing = true;
        self.server = None;
    }
}

/// The bytes an SDK expects under a key.
fn encode(value: Value, credential: &Mirrored) -> String {
    let secret = credential.value.expose_secret();
    match value {
        Value::Raw => secret.to_owned(),
        Value::Json => serde_json::Value::from(secret).to_string(),
        Value::JsonExpiresAt => credential
            .expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string(),
    }
}
