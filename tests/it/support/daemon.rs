//! The real `wxtokend` binary as a child process, as an operator runs it:
//! its configuration, its captured log lines, and its admin endpoints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fake_wechat::AppConfig;
use serde_json::Value;

use super::metrics::Metrics;
use super::{eventually, WAIT};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wxtokend")
}

/// Runs a command to its end: exit code, stdout, stderr.
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run wxtokend");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One account of a test configuration; its secret is passed in the
/// environment variable `secret_env`.
#[derive(Clone)]
pub struct TestAccount {
    pub id: String,
    pub secret: String,
    pub platform: &'static str,
    pub endpoint: &'static str,
    pub tickets: Vec<&'static str>,
}

impl TestAccount {
    /// An Official Account using `/cgi-bin/token`.
    pub fn new(id: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
            platform: "official_account",
            endpoint: "token",
            tickets: Vec::new(),
        }
    }

    /// The `n`-th of a set of interchangeable Official Accounts.
    pub fn numbered(n: usize) -> Self {
        Self::new(
            &format!("wxnumbered{n:08}"),
            &format!("numbered-secret-{n:04}"),
        )
    }

    /// How the fake WeChat registers this account.
    pub fn app(&self) -> AppConfig {
        match self.platform {
            "wecom" => AppConfig::wecom(&self.id, &self.secret),
            _ => AppConfig::new(&self.id, &self.secret),
        }
    }

    pub fn platform(mut self, platform: &'static str) -> Self {
        self.platform = platform;
        self
    }

    pub fn endpoint(mut self, endpoint: &'static str) -> Self {
        self.endpoint = endpoint;
        self
    }

    pub fn tickets(mut self, tickets: &[&'static str]) -> Self {
        self.tickets = tickets.to_vec();
        self
    }

    pub fn secret_env(&self) -> String {
        let id: String = self
            .id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("WXT_SECRET_{id}")
    }
}

/// A configuration file for a test run, with fast timings.
#[derive(Clone)]
pub struct TestConfig {
    pub mongodb_uri: String,
    /// `mongodb.uri_file`: when set, the daemon reads its connection string
    /// there instead of `mongodb_uri`.
    pub mongodb_uri_file: Option<PathBuf>,
    pub database: String,
    pub wechat_url: String,
    pub accounts: Vec<TestAccount>,
    pub margin: &'static str,
    pub retry_initial: &'static str,
    pub retry_max: &'static str,
    pub permanent_error_retry: &'static str,
    pub request_timeout: &'static str,
    pub connect_timeout: &'static str,
    pub max_concurrent_calls: u32,
    /// `wechat.min_expires_in`: low, as test tokens live seconds.
    pub min_expires_in: &'static str,
    pub shutdown_timeout: &'static str,
    pub instance_id: String,
    pub lease_duration: &'static str,
    pub lease_renew_interval: &'static str,
    pub forced_min_interval: &'static str,
    /// `refresh.daily_call_limits`: every API's ceiling...
    pub daily_call_limit: u32,
    /// ...except these (API name, ceiling).
    pub api_call_limits: Vec<(&'static str, u32)>,
    /// Extra environment of the process (for example `FAILPOINTS`).
    pub env: Vec<(&'static str, String)>,
    /// `json` (parsed by the helpers) or `human`.
    pub log_format: &'static str,
    /// Log everything at debug, dependencies included (for the secrets audit).
    pub log_level_debug: bool,
    /// TOML appended after the accounts (`[[mirrors]]` tables).
    pub extra_toml: String,
    /// `admin.account_series`: `all` unless a test checks the default,
    /// as many tests watch a credential's generation and calls.
    pub account_series: &'static str,
}

impl TestConfig {
    pub fn new(
        mongodb_uri: &str,
        database: &str,
        wechat_url: &str,
        accounts: &[TestAccount],
    ) -> Self {
        Self {
            mongodb_uri: mongodb_uri.into(),
            mongodb_uri_file: None,
            database: database.into(),
            wechat_url: wechat_url.into(),
            accounts: accounts.to_vec(),
            margin: "10m",
            retry_initial: "100ms",
            retry_max: "400ms",
            permanent_error_retry: "1h",
            request_timeout: "2s",
            connect_timeout: "250ms",
            max_concurrent_calls: 16,
            min_expires_in: "1s",
            shutdown_timeout: "4s",
            instance_id: "test-instance".into(),
            lease_duration: "5s",
            lease_renew_interval: "500ms",
            forced_min_interval: "1s",
            daily_call_limit: 1800,
            api_call_limits: Vec::new(),
            env: Vec::new(),
            log_format: "json",
            log_level_debug: false,
            extra_toml: String::new(),
            account_series: "all",
        }
    }

    /// `refresh.daily_call_limits` as an inline TOML table's contents.
    fn daily_call_limits(&self) -> String {
        wxtokend::Api::ALL
            .iter()
            .map(|api| {
                let limit = self
                    .api_call_limits
                    .iter()
                    .find(|(name, _)| *name == api.as_str())
                    .map_or(self.daily_call_limit, |(_, limit)| *limit);
                format!("{api} = {limit}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn to_toml(&self) -> String {
        let mut toml = format!(
            r#"
[daemon]
instance_id = "{instance}"
shutdown_timeout = "{shutdown}"

[mongodb]
uri = "{uri}"
uri_file = {uri_file:?}
database = "{db}"
server_selection_timeout = "1s"

[wechat]
base_url = "{wechat}"
wecom_base_url = "{wechat}"
allow_http = true
request_timeout = "{request_timeout}"
connect_timeout = "{connect_timeout}"
max_concurrent_calls = {max_calls}
min_expires_in = "{min_expires_in}"

[refresh]
margin = "{margin}"
retry_initial = "{retry_initial}"
retry_max = "{retry_max}"
permanent_error_retry = "{permanent}"
request_poll_interval = "200ms"
forced_min_interval = "{forced}"
daily_call_limits = {{ {limits} }}

[lease]
duration = "{lease}"
renew_interval = "{renew}"

[admin]
listen = "127.0.0.1:0"
account_series = "{account_series}"

[log]
format = "{log_format}"
level = "{log_level}"
"#,
            instance = self.instance_id,
            uri = self.mongodb_uri,
            uri_file = self
                .mongodb_uri_file
                .as_deref()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            db = self.database,
            wechat = self.wechat_url,
            request_timeout = self.request_timeout,
            connect_timeout = self.connect_timeout,
            max_calls = self.max_concurrent_calls,
            min_expires_in = self.min_expires_in,
            shutdown = self.shutdown_timeout,
            margin = self.margin,
            retry_initial = self.retry_initial,
            retry_max = self.retry_max,
            permanent = self.permanent_error_retry,
            forced = self.forced_min_interval,
            limits = self.daily_call_limits(),
            lease = self.lease_duration,
            renew = self.lease_renew_interval,
            log_format = self.log_format,
            account_series = self.account_series,
            log_level = if self.log_level_debug {
                "trace"
            } else {
                "wxtokend=debug,info"
            },
        );
        for a in &self.accounts {
            let tickets: Vec<String> = a.tickets.iter().map(|t| format!("{t:?}")).collect();
            toml.push_str(&format!(
                "\n[[accounts]]\nid = \"{}\"\nplatform = \"{}\"\nendpoint = \"{}\"\nsecret_env = \"{}\"\ntickets = [{}]\n",
                a.id,
                a.platform,
                a.endpoint,
                a.secret_env(),
                tickets.join(", ")
            ));
        }
        toml.push_str(&self.extra_toml);
        toml
    }

    /// Writes the file and returns the command to run `wxtokend ARGS`.
    pub fn command(&self, dir: &tempfile::TempDir, args: &[&str]) -> Command {
        let path: PathBuf = dir.path().join("wxtokend.toml");
        std::fs::write(&path, self.to_toml()).expect("write config");
        let mut cmd = Command::new(binary());
        cmd.arg("--config").arg(&path).args(args);
        for a in &self.accounts {
            cmd.env(a.secret_env(), &a.secret);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `wxtokend ARGS` with this configuration: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        output(&mut self.command(&dir, args))
    }
}

/// A running `wxtokend run`.
pub struct TestDaemon {
    pub instance: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `lines` until the process exits.
    capture: Option<std::thread::JoinHandle<()>>,
    admin: OnceLock<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    pub fn spawn(config: &TestConfig) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = config
            .command(&dir, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wxtokend");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let capture = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        TestDaemon {
            instance: config.instance_id.clone(),
            child,
            lines,
            capture: Some(capture),
            admin: OnceLock::new(),
            _dir: dir,
        }
    }

    /// Resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Every stderr line so far.
    pub fn raw_lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// Every log line so far, parsed (lines that are not JSON are skipped),
    /// with the fields of its span (a refresher's `account` and `kind`)
    /// lifted beside its own, as an operator's log query would see them.
    pub fn logs(&self) -> Vec<Value> {
        self.raw_lines()
            .iter()
            .filter_map(|l| parse_log(l))
            .collect()
    }

    /// Waits for a JSON log line that `matches`. Only for tests whose
    /// subject is the log itself, and to learn the admin address: every other
    /// wait is on MongoDB, `/metrics` or the fake WeChat.
    pub async fn wait_for_line(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, &format!("a log line: {what}"), || async {
            self.logs().into_iter().find(|l| matches(l))
        })
        .await
    }

    /// The admin server's address (`admin.listen` is port 0), from the
    /// daemon's startup line: the one log wait every test shares.
    pub async fn admin_addr(&self) -> SocketAddr {
        if let Some(addr) = self.admin.get() {
            return *addr;
        }
        let line = self
            .wait_for_line("admin HTTP listening", |l| l["addr"].is_string())
            .await;
        let addr = line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("admin address");
        *self.admin.get_or_init(|| addr)
    }

    /// `GET path` on the admin server: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .await
            .unwrap_or_else(|| panic!("the admin server does not answer {path}"))
    }

    async fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.admin_addr().await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let response = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// `/metrics` now.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics answered {status}");
        Metrics::parse(&body)
    }

    /// Scrapes `/metrics` until `ready` holds, and returns that scrape.
    pub async fn wait_metrics(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        eventually(WAIT, &format!("/metrics to show {what}"), || async {
            let (_, body) = self.try_get("/metrics").await?;
            Some(Metrics::parse(&body)).filter(|m| ready(m))
        })
        .await
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`, `"TERM"`...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM and waits for the exit; every log line is captured then.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    /// Waits until the process exits by itself, and returns how.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(capture) = self.capture.take() {
                    capture.join().expect("stderr capture");
                }
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "wxtokend did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if any captured line contains one of `secrets`.
    pub fn assert_logs_free_of(&self, secrets: &[String]) {
        for line in self.raw_lines() {
            for secret in secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "a secret or token leaked into the log: {line}"
                );
            }
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON log line with its span's fields lifted to the top level.
pub fn parse_log(line: &str) -> Option<Value> {
    let mut value: Value = serde_json::from_str(line).ok()?;
    if let Some(Value::Object(span)) = value.get("span").cloned() {
        if let Value::Object(fields) = &mut value {
            for (key, field) in span {
                if key != "name" {
                    fields.entry(key).or_insert(field);
                }
            }
        }
    }
    Some(value)
}
