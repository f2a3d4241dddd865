//! The test Redis server (Debian's redis-server, for the mirror tests).
//! `REDIS_URL` (set by scripts/test.sh) is used when present; otherwise one
//! server for the test binary is started with scripts/test-redis.sh. Tests
//! share it by using account ids of their own; a test that restarts Redis
//! gets a [`PrivateRedis`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-redis.sh")
}

/// A server run by `test-redis.sh serve`: it stops when we close its stdin.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
}

fn serve(dir: &std::path::Path, port: u16, args: &[String]) -> Served {
    let mut child = Command::new("bash")
        .arg(script())
        .arg("serve")
        .arg(dir)
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run scripts/test-redis.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut url = String::new();
    BufReader::new(stdout)
        .read_line(&mut url)
        .expect("read the server URL");
    assert!(
        url.starts_with("redis://"),
        "test Redis did not start (see stderr above)"
    );
    Served {
        stdin: child.stdin.take(),
        child,
        url: url.trim().to_owned(),
    }
}

impl Served {
    fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

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
            let served = serve(dir.path(), 0, &[]);
            let url = served.url.clone();
            KEEP.lock().expect("lock").push((served, dir));
            url
        })
        .clone()
}

/// A server of this test's own, which it can stop and start again (empty:
/// no persistence) on the same port, or freeze.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    served: Option<Served>,
    /// The server's own options (`--requirepass`), kept for restarts.
    args: Vec<String>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        Self::start_with(&[])
    }

    /// A server started with options of its own (`--requirepass PW`).
    pub fn start_with(args: &[&str]) -> PrivateRedis {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let served = serve(dir.path(), 0, &args);
        let port = served
            .url
            .trim_start_matches("redis://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in URL");
        PrivateRedis {
            dir,
            port,
            served: Some(served),
            args,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The URL with `password`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(served) = self.served.take() {
            served.stop();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.served = Some(serve(self.dir.path(), self.port, &self.args));
    }

    /// Sends a signal to the server process itself (`STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("server.pid")).expect("server.pid");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.trim())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} of the test Redis failed");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // A frozen server must be thawed to stop.
        if self.served.is_some() {
            self.signal("CONT");
        }
        self.stop();
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
}
