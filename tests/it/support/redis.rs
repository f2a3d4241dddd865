//! The test Redis server (Debian's redis-server, for the mirror tests).
//! `REDIS_URL` (set by scripts/test.sh) is used when present; otherwise one
//! server for the test binary is started with scripts/test-redis.sh. Tests
//! share it by using account ids of their own; a test that restarts Redis
//! gets a [`PrivateRedis`].

use std::sync::{Mutex, OnceLock};

use super::served::{serve, Kind, PrivateServer, Served};

/// The test Redis server, as `scripts/test-redis.sh` runs it.
static REDIS: Kind = Kind {
    script: "scripts/test-redis.sh",
    scheme: "redis://",
    name: "Redis",
};

/// URL of the server shared by all tests.
pub fn shared_url() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    static KEEP: Mutex<Vec<(Served, tempfile::TempDir)>> = Mutex::new(Vec::new());
    SHARED
        .get_or_init(|| {
            if let Ok(url) = std::env::var("REDIS_URL") {
                return url;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let served = serve(&REDIS, dir.path(), 0, &[]);
            let url = served.address.clone();
            KEEP.lock().expect("lock").push((served, dir));
            url
        })
        .clone()
}

/// A server of this test's own, which it can stop and start again (empty:
/// no persistence) on the same port, or freeze (`STOP`, `CONT`).
pub struct PrivateRedis(PrivateServer);

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        Self::start_with(&[])
    }

    /// A server started with options of its own (`--requirepass PW`).
    pub fn start_with(args: &[&str]) -> PrivateRedis {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        PrivateRedis(PrivateServer::start(&REDIS, &args))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.0.port())
    }

    /// The URL with `password`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.0.port())
    }
}

impl std::ops::Deref for PrivateRedis {
    type Target = PrivateServer;
    fn deref(&self) -> &PrivateServer {
        &self.0
    }
}

impl std::ops::DerefMut for PrivateRedis {
    fn deref_mut(&mut self) -> &mut PrivateServer {
        &mut self.0
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // A frozen server must be thawed to stop.
        if self.0.is_running() {
            self.0.signal("CONT");
        }
    }
}

/// What a test reads from Redis, as the SDKs read it: one command at a
/// time, `None` while the server does not answer.
pub struct RedisView {
    client: redis::Client,
}

impl RedisView {
    pub fn new(url: &str) -> RedisView {
        RedisView {
            client: redis::Client::open(url).expect("Redis URL"),
        }
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_response_timeout(Some(std::time::Duration::from_secs(1)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .ok()
    }

    /// `GET key`: `Some(None)` when the key is absent.
    pub async fn get(&self, key: &str) -> Option<Option<String>> {
        let mut c = self.connection().await?;
        redis::cmd("GET").arg(key).query_async(&mut c).await.ok()
    }

    /// `TTL key` in seconds: -2 absent, -1 without expiry.
    pub async fn ttl(&self, key: &str) -> Option<i64> {
        let mut c = self.connection().await?;
        redis::cmd("TTL").arg(key).query_async(&mut c).await.ok()
    }

    /// `SET key value EX ttl`.
    pub async fn set(&self, key: &str, value: &str, ttl: u64) {
        let mut c = self.connection().await.expect("Redis answers");
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(ttl)
            .query_async(&mut c)
            .await
            .expect("SET");
    }

    pub async fn del(&self, keys: &[String]) {
        let mut c = self.connection().await.expect("Redis answers");
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .expect("DEL");
    }

    /// `FLUSHALL`: every key of every database gone, the server unchanged.
    pub async fn flush_all(&self) {
        let mut c = self.connection().await.expect("Redis answers");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("FLUSHALL");
    }

    /// Any command, for a test that changes the server (`CONFIG SET`,
    /// `SCRIPT FLUSH`, `HSET`...).
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let mut c = self.connection().await.expect("Redis answers");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut c).await.expect("the command")
    }

    /// Replaces `key` with a hash, atomically (a repair pass between a
    /// `DEL` and an `HSET` would make the `HSET` fail).
    pub async fn replace_with_hash(&self, key: &str) {
        self.command(&[
            "EVAL",
            "redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], 'field', 'value')",
            "1",
            key,
        ])
        .await;
    }
}
