//! One task per mirror: writes the credentials offered to it into Redis,
//! every configured SDK layout of a credential in one atomic script, many
//! credentials per pipeline. It rewrites all of them from MongoDB whenever
//! Redis may have lost them (the first contact, a restart or replacement
//! seen as a new `run_id`; the same server answering again after a failure
//! gets what waited meanwhile), and every `repair_interval` it checks
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

use futures_util::{stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxtokend_reader::AccountId;

use super::layout::{entries, Value};
use super::{update, Key, Mailbox, Mirrored, SharedHealth};
use crate::config::{MirrorSettings, Platform};
use crate::metrics::{Metrics, MirrorTally, Operation};
use crate::refresh::Backoff;
use crate::store::Store;

/// The first retry after a failure ([`Writer::next_check_in`]).
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// MongoDB reads in flight while a resync rereads what a mirror holds: a
/// Redis restart at 10,000 credentials would otherwise wait for 10,000
/// round trips in sequence before the first key is written again.
const RESYNC_READS: usize = 16;

/// Writes one credential's SDK keys unless Redis holds a newer generation
/// of it. KEYS[1]: the generation key; KEYS[2..]: the SDK keys. ARGV[1]:
/// the generation; ARGV[2]: the TTL in milliseconds; ARGV[3..]: the values
/// of KEYS[2..].
///
/// A new generation sets every key. The generation already there sets
/// only the keys that are missing, hold something else, or whose TTL is
/// gone or more than 10 s off (a repair; the two clocks and two deliveries
/// between them may differ by seconds). A key of another type (`GET`
/// fails) holds something else; a generation key of another type counts
/// as none.
///
/// Returns `{outcome, keys set}`: outcome 1 written as a new generation,
/// 0 the generation was there, -1 a newer one stands (nothing set).
const WRITE: &str = r"
local generation = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local found = redis.pcall('GET', KEYS[1])
local stored = 0
if type(found) == 'string' then
  stored = tonumber(found) or 0
end
if stored > generation then
  return {-1, 0}
end
local set = 0
for i = 2, #KEYS do
  local stale = stored < generation
  if not stale then
    local now = redis.pcall('GET', KEYS[i])
    local left = redis.call('PTTL', KEYS[i])
    stale = now ~= ARGV[i + 1] or left < 0 or math.abs(left - ttl) > 10000
  end
  if stale then
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

/// How long the last writes may take once the daemon stops.
const LAST_FLUSH: Duration = Duration::from_secs(5);

/// The longest Redis error kept for `status` and the heartbeat.
const ERROR_CHARS: usize = 200;

/// How a round of writes failed.
enum Failure {
    /// No answer (connection refused, dropped, timed out): Redis may have
    /// restarted meanwhile, so everything is rewritten from MongoDB if it
    /// answers as another server (a new `run_id`); the same server gets
    /// what waited.
    Connection(RedisError),
    /// Redis answered but refused `n` writes (out of memory, a read-only
    /// replica, a missing permission...): retried at each check, nothing
    /// reread.
    Refused(RedisError, usize),
}

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
    /// Those whose refresher stopped: dropped from `latest` once written.
    withdrawn: HashSet<Key>,
    /// The highest lease term each credential was offered under: a
    /// withdrawal by an earlier term's refresher is ignored.
    terms: HashMap<Key, i64>,
    /// The `run_id` of the Redis server last seen; a first one or another
    /// one (a restart, a failover) means everything is rewritten from
    /// MongoDB. Kept across failures: a Redis that comes back as itself
    /// lost nothing (what was offered meanwhile is still to be written).
    run_id: Option<String>,
    /// Redis answered the last check and took the script.
    connected: bool,
    /// Redis refused writes the last time (it answers, but out of memory,
    /// read-only, without a permission...).
    refusing: bool,
    /// A failure was logged; logged again only after Redis took writes.
    failing: bool,
    /// The waits between checks while failing ([`Self::next_check_in`]).
    retry: Backoff,
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
        let retry = Backoff::new(RETRY_FIRST, settings.check_interval);
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
            withdrawn: HashSet::new(),
            terms: HashMap::new(),
            run_id: None,
            connected: false,
            refusing: false,
            failing: false,
            retry,
            health,
        })
    }

    /// Runs until `stop` is cancelled (after the refreshers stopped), then
    /// writes what they offered last, for at most [`LAST_FLUSH`].
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let span = tracing::info_span!("mirror", mirror = %self.settings.name);
        tracing::Instrument::instrument(
            async move {
                self.run_until(&stop).await;
                self.take_offers();
                let last = async {
                    if !self.connected {
                        self.check().await;
                    }
                    self.flush().await;
                };
                let finished = tokio::time::timeout(LAST_FLUSH, last).await.is_ok();
                if !finished || !self.unwritten.is_empty() {
                    tracing::warn!(
                        unwritten = self.unwritten.len(),
                        "stopping before every last credential was written to Redis"
                    );
                }
            },
            span,
        )
        .await;
    }

    async fn run_until(&mut self, stop: &CancellationToken) {
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
                    next_check = now + self.next_check_in();
                    if now >= next_repair && self.connected {
                        // Every key of everything held is compared.
                        self.unwritten.extend(self.latest.keys().cloned());
                        next_repair = now + self.settings.repair_interval;
                    }
                }
            }
            self.take_offers();
            let failing = self.failing;
            self.flush().await;
            if self.failing && !failing {
                // A write found Redis failing: retry as soon as a check would.
                next_check = next_check.min(Instant::now() + self.next_check_in());
            }
        }
    }

    /// The time to the next check: `check_interval`, or after a failure
    /// from [`RETRY_FIRST`], doubling up to it (jittered). A restarted
    /// Redis is back within a second or so, empty, and every SDK that looks
    /// before its keys are written again fetches a token of its own.
    fn next_check_in(&mut self) -> Duration {
        if self.failing {
            self.retry.next_delay()
        } else {
            self.retry.reset();
            self.settings.check_interval
        }
    }

    /// Takes what the refreshers offered and withdrew.
    fn take_offers(&mut self) {
        for (key, offer) in self.mailbox.take() {
            let known = self.terms.get(&key).copied().unwrap_or(0).max(offer.term);
            self.terms.insert(key.clone(), known);
            let offered = offer.credential.is_some();
            if let Some(credential) = offer.credential {
                self.take(credential);
            }
            match offer.withdrawn {
                Some(term) if term >= known => {
                    self.withdrawn.insert(key);
                }
                Some(_) => {}
                None if offered => {
                    self.withdrawn.remove(&key);
                }
                None => {}
            }
        }
        self.forget_withdrawn();
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

    /// Drops the withdrawn credentials that are written (or will not be).
    fn forget_withdrawn(&mut self) {
        let unwritten = &self.unwritten;
        let latest = &mut self.latest;
        self.withdrawn.retain(|key| {
            let keep = unwritten.contains(key) && latest.contains_key(key);
            if !keep {
                latest.remove(key);
            }
            keep
        });
        self.metrics
            .mirror_credentials(&self.settings.name, self.latest.len());
    }

    /// Asks Redis who it is: a first answer or another server (a restart,
    /// a failover) means everything is rewritten from MongoDB; the same
    /// server after a failure keeps what it had.
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
            Err(e) => return self.unreachable(&e),
        };
        if self.connected && self.run_id.as_deref() == Some(run_id.as_str()) {
            if !self.refusing {
                self.answered();
            }
            return;
        }
        if run_id.is_empty() && self.run_id.is_none() {
            tracing::warn!(
                "Redis's INFO names no run_id (a proxy?): a restart that empties it is noticed \
                 only by the next repair pass"
            );
        }
        // The pipelines send the script by its hash.
        if let Err(e) = self.script.load_async(&mut self.redis).await {
            return self.unreachable(&e);
        }
        self.connected = true;
        let known = self.run_id.replace(run_id.clone());
        if !self.refusing {
            self.answered();
        }
        match known {
            Some(known) if known == run_id => {
                tracing::info!("Redis answers again (the same server); writing what waits");
            }
            Some(_) => {
                tracing::warn!("Redis restarted or was replaced; rewriting every key");
                self.resync().await;
            }
            None => {
                tracing::info!("Redis answers; writing every held credential");
                self.resync().await;
            }
        }
    }

    /// Writes everything held at once, then rereads the newest valid
    /// credential of each from MongoDB ([`RESYNC_READS`] at a time) and
    /// marks the newer ones for writing (a failed read keeps what was
    /// offered).
    async fn resync(&mut self) {
        self.metrics.mirror_resynced(&self.settings.name);
        // What is held first: Redis may be empty, and an SDK that finds no
        // key fetches a token of its own. MongoDB's newer ones follow.
        self.unwritten.extend(self.latest.keys().cloned());
        self.flush().await;
        let keys: Vec<Key> = self.latest.keys().cloned().collect();
        let (store, metrics) = (&self.store, &self.metrics);
        let reads: Vec<_> = stream::iter(keys)
            .map(|(account, kind)| async move {
                let now = store.clock().now();
                let read = store.credentials().newest_valid(kind, &account, now);
                let read = metrics.observe(Operation::MirrorResync, read).await;
                ((account, kind), read)
            })
            .buffer_unordered(RESYNC_READS)
            .collect()
            .await;
        for ((account, kind), read) in reads {
            match read {
                // What was just written, or is still to be, stands unless
                // MongoDB has a newer generation.
                Ok(Some(stored))
                    if self
                        .latest
                        .get(&(account.clone(), kind))
                        .is_none_or(|held| held.generation < stored.generation) =>
                {
                    self.take(stored.into());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(
                        error = %e, %account, %kind,
                        "cannot reread the credential from MongoDB; writing the one held"
                    );
                }
            }
        }
    }

    /// Writes what is not in Redis yet (or is to be compared), while Redis
    /// answers, [`PIPELINE`] credentials per round trip. A script Redis
    /// lost (a restart or `SCRIPT FLUSH` the check has not seen yet) is
    /// loaded again and those writes sent once more.
    async fn flush(&mut self) {
        if !self.connected {
            return;
        }
        if self.unwritten.is_empty() {
            // What Redis refused is gone (expired, withdrawn).
            if self.refusing {
                self.refusing = false;
                self.answered();
            }
            return;
        }
        let mut tally = MirrorTally::default();
        let keys: Vec<Key> = self.unwritten.iter().cloned().collect();
        let mut result = self.send(&keys, &mut tally).await;
        if let Ok(lost) = &result {
            if !lost.is_empty() {
                tracing::debug!("Redis lost the script; loading it again");
                result = match self.script.load_async(&mut self.redis).await {
                    Ok(_) => self.send(&lost.clone(), &mut tally).await,
                    Err(e) => Err(Failure::from(e)),
                };
            }
        }
        // Keys the script still lacks count as refused.
        let result = result.and_then(|lost| match lost.first() {
            None => Ok(()),
            Some(_) => Err(Failure::Refused(
                RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT")),
                lost.len(),
            )),
        });
        self.metrics.mirror_tally(&self.settings.name, tally);
        if tally.repaired > 0 {
            tracing::warn!(
                keys = tally.repaired,
                "SDK keys were missing or held another value or TTL in Redis; written again"
            );
        }
        if tally.written + tally.repaired > 0 {
            let now = self.store.clock().now();
            update(&self.health, |h| h.last_write = Some(now));
        }
        self.forget_withdrawn();
        match result {
            Ok(()) => {
                self.refusing = false;
                self.answered();
            }
            Err(failure) => self.failed(&failure),
        }
    }

    /// One pass over `keys`: returns those Redis answered `NOSCRIPT` for.
    async fn send(&mut self, keys: &[Key], tally: &mut MirrorTally) -> Result<Vec<Key>, Failure> {
        let mut lost = Vec::new();
        let mut refused: Option<(RedisError, usize)> = None;
        for chunk in keys.chunks(PIPELINE) {
            // Per chunk: the TTL is counted from just before its sending.
            let now = self.store.clock().now();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
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
            let answers: Vec<redis::RedisResult<(i64, u64)>> =
                pipe.query_async(&mut self.redis).await?;
            for (key, answer) in sent.into_iter().zip(answers) {
                match answer {
                    Ok((outcome, set)) => {
                        self.unwritten.remove(key);
                        self.count(key, outcome, set, tally);
                    }
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        lost.push(key.clone());
                    }
                    Err(e) if is_reply(&e) => match &mut refused {
                        Some((_, n)) => *n += 1,
                        None => refused = Some((e, 1)),
                    },
                    Err(e) => return Err(Failure::Connection(e)),
                }
            }
        }
        match refused {
            Some((e, n)) => Err(Failure::Refused(e, n)),
            None => Ok(lost),
        }
    }

    fn count(&mut self, key: &Key, outcome: i64, set: u64, tally: &mut MirrorTally) {
        match outcome {
            1 => tally.written += 1,
            0 => tally.repaired += set,
            _ => {
                // Another replica mirrors a newer one: stop repairing this
                // one.
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

    /// Redis answered and took what was asked.
    fn answered(&mut self) {
        if self.failing {
            tracing::info!("Redis takes writes again");
        }
        self.failing = false;
        self.metrics.mirror_state(&self.settings.name, Ok(()));
        update(&self.health, |h| h.up = true);
    }

    /// A check found Redis not answering, or answering with an error.
    fn unreachable(&mut self, error: &RedisError) {
        self.connected = false;
        self.report(&short(error));
    }

    fn failed(&mut self, failure: &Failure) {
        match failure {
            Failure::Connection(e) => {
                self.connected = false;
                self.report(&short(e));
            }
            Failure::Refused(e, n) => {
                self.refusing = true;
                self.report(&format!("{n} writes refused: {}", short(e)));
            }
        }
    }

    /// Counts a failure, shows it in `status`, and logs it once until
    /// Redis takes writes again.
    fn report(&mut self, said: &str) {
        self.metrics.mirror_state(&self.settings.name, Err(()));
        update(&self.health, |h| {
            h.up = false;
            h.errors += 1;
            h.last_error = Some(said.to_owned());
        });
        if self.failing {
            tracing::debug!(error = %said, "Redis still fails; retrying");
        } else {
            tracing::warn!(
                error = %said,
                retry_from_s = RETRY_FIRST.as_secs_f32(),
                retry_max_s = self.settings.check_interval.as_secs_f32(),
                "cannot write to Redis; the SDKs keep the keys they have until they expire"
            );
        }
        self.failing = true;
    }
}

/// Redis's own words (its error code and message, never a value), cut at
/// [`ERROR_CHARS`].
fn short(error: &RedisError) -> String {
    let mut said = error.to_string();
    if let Some(cut) = said.char_indices().nth(ERROR_CHARS).map(|(at, _)| at) {
        said.truncate(cut);
        said.push('…');
    }
    said
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        if is_reply(&e) {
            Failure::Refused(e, 1)
        } else {
            Failure::Connection(e)
        }
    }
}

/// Whether Redis itself answered with this error (as opposed to no
/// answer at all).
fn is_reply(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
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
