//! One task per mirror: writes the credentials offered to it into Redis,
//! every configured SDK layout of a credential in one atomic script, many
//! credentials per pipeline. It rewrites all of them from MongoDB whenever
//! Redis may have lost them (the first contact, a return after a failure,
//! a restart seen as a new `run_id`), and every `repair_interval` it checks
//! every key of what it holds and writes again those that are missing or
//! hold something else (a key deleted, evicted or flushed, or written by an
//! SDK that fetched a token of its own).
//!
//! TTL: every key lives as long as the credential (its `expires_at`, by
//! MongoDB's clock, minus now, in milliseconds), never shorter. The SDKs'
//! own early expiries (silenceper `expires_in - 1500`, WxJava's `- 200` for
//! tickets and mini programs) are deliberately not copied: wxtokend stores
//! the next token `refresh.margin` before expiry (a stable_token or a ticket
//! only when WeChat issues it, in its last minutes), so a key that vanished
//! earlier would leave the SDK without a key and make it fetch on its own,
//! rotating everyone's token. The SDKs' read-side rules still hold: WxJava
//! counts a key with under 2 s left as expired, wechatpy refetches in the
//! last 60 s of its `…_expires_at`; both only matter once wxtokend is late.
//! A key may outlive its credential by the time the write spends on its way
//! to Redis (the TTL is counted from when it was computed).
//!
//! No older generation over a newer one: beside the SDK keys, the script
//! keeps `wxtokend:generation:{account}:{kind}` (same TTL) and writes
//! nothing when Redis already holds a newer generation (another replica's
//! write, after a lease moved, racing with this one's late write); this
//! replica then stops mirroring that credential until it offers a newer one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::AccountId;

use super::layout::{entries, Value};
use super::{update, Key, Mailbox, Mirrored, SharedHealth};
use crate::config::{MirrorSettings, Platform};
use crate::metrics::{Metrics, MirrorTally, Operation};
use crate::store::Store;

/// Writes one credential's SDK keys unless Redis holds a newer generation
/// of it. KEYS[1]: the generation key; KEYS[2..]: the SDK keys. ARGV[1]:
/// the generation; ARGV[2]: the TTL in milliseconds; ARGV[3..]: the values
/// of KEYS[2..].
///
/// A new generation sets every key. The generation already there sets
/// only the keys that are missing or hold something else (a repair). A
/// key of another type (`GET` fails) is something else too.
///
/// Returns `{outcome, keys set}`: outcome 1 written as a new generation,
/// 0 the generation was there, -1 a newer one stands (nothing set).
const WRITE: &str = r"
local generation = tonumber(ARGV[1])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stored > generation then
  return {-1, 0}
end
local set = 0
for i = 2, #KEYS do
  local now = redis.pcall('GET', KEYS[i])
  if stored < generation or now ~= ARGV[i + 1] then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[2])
    set = set + 1
  end
end
if stored < generation then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, set}
end
return {0, set}
";

/// A Redis call that takes longer counts as failed (and is retried).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Credentials per pipeline: a few hundred kilobytes at most.
const PIPELINE: usize = 256;

/// A credential with less life left is not written (its keys expire on
/// their own).
const MIN_TTL: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    settings: Arc<MirrorSettings>,
    platforms: HashMap<AccountId, Platform>,
    redis: ConnectionManager,
    store: Store,
    metrics: Arc<Metrics>,
    mailbox: Arc<Mailbox>,
    script: redis::Script,
    /// The newest credential of each (account, kind) this replica
    /// mirrors: what a rewrite or a repair starts from.
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
        mailbox: Arc<Mailbox>,
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
            mailbox,
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
        let mailbox = self.mailbox.clone();
        let mut next_check = Instant::now();
        let mut next_repair = Instant::now() + self.settings.repair_interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = mailbox.offered() => {}
                () = tokio::time::sleep_until(next_check) => {
                    // Both counted from the same instant, so that a repair
                    // interval equal to the check interval repairs at every
                    // check.
                    let now = Instant::now();
                    self.check().await;
                    next_check = now + self.settings.check_interval;
                    if now >= next_repair && self.server.is_some() {
                        // Every key of everything held is compared.
                        self.unwritten.extend(self.latest.keys().cloned());
                        next_repair = now + self.settings.repair_interval;
                    }
                }
            }
            for credential in mailbox.take().into_values() {
                self.take(credential);
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
        // The pipelines send the script by its hash.
        if let Err(e) = self.script.load_async(&mut self.redis).await {
            return self.failed(&e);
        }
        match self.server.replace(run_id) {
            Some(_) => tracing::warn!("Redis restarted or was replaced; rewriting every key"),
            None if self.failing => tracing::info!("Redis answers again; rewriting every key"),
            None => tracing::info!("Redis answers; writing every held credential"),
        }
        self.failing = false;
        self.metrics
            .mirror(&self.settings.name, Ok(MirrorTally::default()));
        update(&self.health, |h| h.up = true);
        self.resync().await;
    }

    /// Rereads the newest valid credential of everything held from MongoDB
    /// (a newer one than offered wins; a failed read keeps what was
    /// offered) and marks it all for writing.
    async fn resync(&mut self) {
        self.metrics.mirror_resynced(&self.settings.name);
        let keys: Vec<Key> = self.latest.keys().cloned().collect();
        for (account, kind) in keys {
            let now = self.store.clock().now();
            let read = self.store.credentials().newest_valid(kind, &account, now);
            let read = self.metrics.observe(Operation::MirrorResync, read).await;
            match read {
                Ok(Some(stored)) => self.take(stored.into()),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(
                        error = %e, %account, %kind,
                        "cannot reread the credential from MongoDB; writing the one held"
                    );
                }
            }
            self.unwritten.insert((account, kind));
        }
    }

    /// Writes what is not in Redis yet (or is to be compared), while Redis
    /// answers, [`PIPELINE`] credentials per round trip.
    async fn flush(&mut self) {
        if self.server.is_none() || self.unwritten.is_empty() {
            return;
        }
        let now = self.store.clock().now();
        let mut tally = MirrorTally::default();
        let keys: Vec<Key> = self.unwritten.iter().cloned().collect();
        for chunk in keys.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            let mut sent = Vec::with_capacity(chunk.len());
            for key in chunk {
                match self.latest.get(key).and_then(|c| self.command(c, now)) {
                    Some(command) => {
                        pipe.add_command(command);
                        sent.push(key);
                    }
                    None => {
                        // Expired, or no key in any layout: nothing to keep.
                        self.latest.remove(key);
                        self.unwritten.remove(key);
                    }
                }
            }
            if sent.is_empty() {
                continue;
            }
            let answers: Vec<(i64, u64)> = match pipe.query_async(&mut self.redis).await {
                Ok(answers) => answers,
                Err(e) => return self.failed(&e),
            };
            for (key, (outcome, set)) in sent.into_iter().zip(answers) {
                self.unwritten.remove(key);
                match outcome {
                    1 => tally.written += 1,
                    0 => tally.repaired += set,
                    _ => {
                        // Another replica mirrors a newer one: stop
                        // repairing this one.
                        tally.stale += 1;
                        if let Some(c) = self.latest.remove(key) {
                            tracing::debug!(
                                account = %c.account, kind = %c.kind, generation = %c.generation,
                                "Redis already holds a newer generation; not written"
                            );
                        }
                    }
                }
            }
        }
        if tally.repaired > 0 {
            tracing::warn!(
                keys = tally.repaired,
                "SDK keys were missing or held another value in Redis; written again"
            );
        }
        self.metrics.mirror(&self.settings.name, Ok(tally));
        update(&self.health, |h| {
            h.up = true;
            if tally.written + tally.repaired > 0 {
                h.last_write = Some(now);
            }
        });
    }

    /// The script call for one credential, every layout; `None` when it
    /// has under [`MIN_TTL`] left or no layout has a key for it.
    fn command(&self, credential: &Mirrored, now: SystemTime) -> Option<redis::Cmd> {
        let ttl = credential
            .expires_at
            .duration_since(now)
            .unwrap_or_default();
        let platform = *self.platforms.get(&credential.account)?;
        if ttl < MIN_TTL {
            return None;
        }
        let mut keys = vec![format!(
            "wxtokend:generation:{}:{}",
            credential.account, credential.kind
        )];
        let mut values = Vec::new();
        for &layout in &self.settings.layouts {
            for entry in entries(
                layout,
                &self.settings.key_prefix,
                platform,
                &credential.account,
                credential.kind,
            ) {
                keys.push(entry.key);
                values.push(encode(entry.value, credential));
            }
        }
        if values.is_empty() {
            return None;
        }
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(self.script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(credential.generation.0)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(values);
        Some(command)
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
