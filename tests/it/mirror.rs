//! Redis mirrors (`[[mirrors]]`): an SDK pointed at the mirror reads the
//! daemon's credentials exactly where and how it looks for its own (key,
//! value encoding, TTL rule), across refreshes, a daemon restart, a Redis
//! outage and a Redis restart; the MongoDB path never waits for Redis.
//!
//! Tests on the shared Redis use account ids no other test uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_wechat::{AppConfig, Endpoint, Fault, Mode};
use mongodb::bson::doc;
use secrecy::ExposeSecret;
use wxtokend_reader::{AccountId, Credential, CredentialKind, Credentials};

use crate::support::redis::{shared_url, PrivateRedis, RedisView};
use crate::support::{eventually, Scenario, TestAccount, TestConfig, TestDaemon, WAIT};

fn mirror(url: &str, layouts: &[&str]) -> String {
    let layouts: Vec<String> = layouts.iter().map(|l| format!("{l:?}")).collect();
    format!(
        "\n[[mirrors]]\nname = \"sdk\"\nurl = \"{url}\"\nlayouts = [{}]\ncheck_interval = \"200ms\"\n",
        layouts.join(", ")
    )
}

/// WxJava's `getAccessToken()` behind `isAccessTokenExpired()`
/// (`WxMpRedisConfigImpl`): a key without TTL or with under 2 s left is
/// expired. `None`: no usable value (or Redis does not answer).
async fn wxjava_reads(redis: &RedisView, key: &str) -> Option<String> {
    let ttl = redis.ttl(key).await?;
    if ttl < 2 {
        return None;
    }
    redis.get(key).await?
}

/// silenceper's `cache.Get`: the value as stored, whatever its TTL.
async fn silenceper_reads(redis: &RedisView, key: &str) -> Option<String> {
    redis.get(key).await?
}

/// wechatpy's `RedisStorage.get` (`json.loads`) of the value and of its
/// `…_expires_at` companion.
async fn wechatpy_reads(redis: &RedisView, key: &str) -> Option<(String, Option<u64>)> {
    let raw = redis.get(key).await??;
    let value: String = serde_json::from_str(&raw).expect("wechatpy's values are JSON");
    let expires_at = redis
        .get(&format!("{key}_expires_at"))
        .await?
        .map(|raw| serde_json::from_str(&raw).expect("a JSON number"));
    Some((value, expires_at))
}

async fn newest_valid(s: &Scenario, account: &str, kind: CredentialKind) -> Option<Credential> {
    Credentials::new(s.db.db())
        .newest_valid(kind, &AccountId::new(account), SystemTime::now())
        .await
        .ok()?
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// The keys each SDK reads for one credential, and how it decodes them.
#[derive(Clone, Copy)]
enum Sdk {
    Wxjava,
    Silenceper,
    Wechatpy,
}

/// Where each SDK reads one credential.
type SdkKeys = Vec<(Sdk, String)>;

/// Whether `sdk` reads `expected` at `key`, with the TTL rule held: the key
/// never outlives the credential, and is not cut short either.
async fn reads(redis: &RedisView, sdk: Sdk, key: &str, expected: &Credential) -> bool {
    let value = expected.value.expose_secret();
    let got = match sdk {
        Sdk::Wxjava => wxjava_reads(redis, key).await,
        Sdk::Silenceper => silenceper_reads(redis, key).await,
        Sdk::Wechatpy => match wechatpy_reads(redis, key).await {
            Some((v, Some(at))) if at == unix(expected.expires_at) => Some(v),
            _ => None,
        },
    };
    if got.as_deref() != Some(value) {
        return false;
    }
    let left = || {
        expected
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs_f64()
    };
    let before = left();
    let Some(ttl) = redis.ttl(key).await else {
        return false;
    };
    let after = left();
    let ttl = ttl as f64;
    // Slack: Redis rounds TTL to the second, and the daemon's clock is
    // MongoDB's as measured over a loaded test machine (about a second).
    assert!(
        ttl <= before + 2.5 && ttl >= after - 3.0,
        "{key}: TTL {ttl} s, but the credential has {after:.1}..{before:.1} s left"
    );
    true
}

/// Waits until every (sdk, key) reads the newest valid `kind` of `account`
/// in MongoDB; returns its generation.
async fn wait_mirrored(
    s: &Scenario,
    redis: &RedisView,
    account: &str,
    kind: CredentialKind,
    keys: &[(Sdk, String)],
) -> i64 {
    eventually(WAIT, &format!("{account} {kind} in Redis"), || async {
        let newest = newest_valid(s, account, kind).await?;
        for (sdk, key) in keys {
            if !reads(redis, *sdk, key, &newest).await {
                return None;
            }
        }
        Some(newest.generation.0)
    })
    .await
}

#[tokio::test]
async fn each_sdk_reads_the_newest_token_and_tickets_where_it_looks_across_refreshes() {
    let oa = "wxmirrorlayouts0001";
    let mp = "wxmirrorlayouts0002";
    let wecom = "wwmirrorlayouts0003/1000002";
    let s = Scenario::new()
        .account(TestAccount::new(oa, "mirror-secret-0001").tickets(&["jsapi", "wx_card"]))
        .account(TestAccount::new(mp, "mirror-secret-0002").platform("mini_program"))
        .account(
            TestAccount::new(wecom, "mirror-secret-0003")
                .platform("wecom")
                .tickets(&["jsapi", "agent_config"]),
        )
        .app(|app| {
            app.expires_in(Duration::from_secs(6))
                .ticket_expires_in(Duration::from_secs(6))
        })
        .config(|c| {
            c.margin = "3s";
            c.extra_toml = mirror(&shared_url(), &["wxjava", "silenceper", "wechatpy"]);
        })
        .build()
        .await;
    let redis = RedisView::new(&shared_url());
    use CredentialKind::*;
    use Sdk::*;
    let expected: Vec<(&str, CredentialKind, SdkKeys)> = vec![
        (
            oa,
            AccessToken,
            vec![
                (Wxjava, format!("wx:access_token:{oa}")),
                (
                    Silenceper,
                    format!("gowechat_officialaccount__access_token_{oa}"),
                ),
                (Wechatpy, format!("wechatpy:{oa}_access_token")),
            ],
        ),
        (
            oa,
            JsapiTicket,
            vec![
                (Wxjava, format!("wx:ticket:key:{oa}:jsapi")),
                (
                    Silenceper,
                    format!("gowechat_officialaccount__jsapi_ticket_{oa}"),
                ),
                (Wechatpy, format!("wechatpy:{oa}_jsapi_ticket")),
            ],
        ),
        (
            oa,
            WxCardTicket,
            vec![
                (Wxjava, format!("wx:ticket:key:{oa}:wx_card")),
                (Wechatpy, format!("wechatpy:{oa}_jsapi_card_ticket")),
            ],
        ),
        (
            mp,
            AccessToken,
            vec![
                (Wxjava, format!("wa:access_token:{mp}")),
                (
                    Silenceper,
                    format!("gowechat_miniprogram__access_token_{mp}"),
                ),
                (Wechatpy, format!("wechatpy:{mp}_access_token")),
            ],
        ),
        (
            wecom,
            AccessToken,
            vec![(
                Wxjava,
                "wx:cp:wechat_cp_access_token_key:wwmirrorlayouts0003:1000002".into(),
            )],
        ),
        (
            wecom,
            JsapiTicket,
            vec![(
                Wxjava,
                "wx:cp:wechat_cp_jsapi_ticket_key:wwmirrorlayouts0003:1000002".into(),
            )],
        ),
        (
            wecom,
            AgentConfigTicket,
            vec![(
                Wxjava,
                "wx:cp:wechat_cp_agent_jsapi_ticket_key:wwmirrorlayouts0003:1000002".into(),
            )],
        ),
    ];
    // Three generations of every token: each one is in Redis, in every
    // layout, once MongoDB has it.
    for round in 1..=3 {
        for (account, kind, keys) in &expected {
            let generation = wait_mirrored(&s, &redis, account, *kind, keys).await;
            if *kind == AccessToken {
                assert!(generation >= round, "{account}: generation {generation}");
            }
        }
        let next = round + 1;
        eventually(WAIT, "the next generation of every token", || async {
            for account in [oa, mp, wecom] {
                let newest = newest_valid(&s, account, AccessToken).await?;
                (newest.generation.0 >= next).then_some(())?;
            }
            Some(())
        })
        .await;
    }
    // WeCom has no silenceper or wechatpy key (theirs lack the agent id or
    // hold part of the secret).
    assert_eq!(
        redis
            .get("gowechat_work__access_token_wwmirrorlayouts0003")
            .await,
        Some(None)
    );
    s.daemon().assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn a_restarted_daemon_rewrites_the_keys_from_mongodb_without_fetching() {
    let id = "wxmirrorrestart0001";
    let mut s = Scenario::new()
        .account(TestAccount::new(id, "mirror-restart-secret"))
        .config(|c| c.extra_toml = mirror(&shared_url(), &["wxjava", "silenceper", "wechatpy"]))
        .build()
        .await;
    let redis = RedisView::new(&shared_url());
    let keys = vec![
        (Sdk::Wxjava, format!("wx:access_token:{id}")),
        (
            Sdk::Silenceper,
            format!("gowechat_officialaccount__access_token_{id}"),
        ),
        (Sdk::Wechatpy, format!("wechatpy:{id}_access_token")),
    ];
    wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;
    s.daemon_mut().terminate(WAIT);
    // What an SDK does on 40001 (WxJava's expireAccessToken), or a Redis
    // that lost its keys while wxtokend was down.
    let mut all: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
    all.push(format!("wechatpy:{id}_access_token_expires_at"));
    redis.del(&all).await;
    s.daemons = vec![TestDaemon::spawn(&s.config)];
    let generation = wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;
    assert_eq!(generation, 1);
    assert_eq!(s.fake.tokens_issued(id), 1, "a restart fetches nothing");
}

#[tokio::test]
async fn after_a_redis_outage_and_a_restart_redis_holds_the_newest_token_again() {
    let id = "wxmirroroutage00001";
    let mut redis_server = PrivateRedis::start();
    let url = redis_server.url();
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-outage-secret"))
        .config({
            let toml = mirror(&url, &["wxjava", "wechatpy"]);
            move |c| c.extra_toml = toml
        })
        .build()
        .await;
    let redis = RedisView::new(&url);
    let keys = vec![
        (Sdk::Wxjava, format!("wx:access_token:{id}")),
        (Sdk::Wechatpy, format!("wechatpy:{id}_access_token")),
    ];
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        1
    );

    // Redis goes away; a refresh lands in MongoDB meanwhile.
    redis_server.stop();
    let sdk = [("mirror", "sdk")];
    s.daemon()
        .wait_metrics("the mirror down", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(0.0)
                && m.get("wxtokend_mirror_errors_total", &sdk)
                    .is_some_and(|n| n >= 1.0)
        })
        .await;
    // `status --mirrors --json` shows it too (from the replica's
    // heartbeat), without the URL...
    let out = eventually(WAIT, "status to show the mirror failing", || async {
        let (code, out, err) = s.run(&["status", "--mirrors", "--json"]);
        assert_eq!(code, 0, "{err}");
        let lines: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let line = &lines[0];
        (line["errors"].as_u64().is_some_and(|n| n >= 1)).then(|| {
            assert_eq!(lines.as_array().map(Vec::len), Some(1), "{out}");
            assert_eq!(line["mirror"], "sdk", "{out}");
            assert_eq!(line["up"], false, "{out}");
            assert!(line["last_error"].is_string(), "{out}");
            assert!(line["last_write_age_s"].is_u64(), "{out}");
            out
        })
    })
    .await;
    assert!(!out.contains(&url), "{out}");
    // ... and `status`, after the accounts.
    let (code, shown, err) = s.run(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("sdk ") && l.contains("DOWN")),
        "{shown}"
    );
    assert!(!shown.contains(&url), "{shown}");
    let (code, _, err) = s.run(&["refresh", id]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_tokens(2).await;

    // It comes back empty: the newest token is written again, no fetch.
    redis_server.restart();
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        2
    );
    s.daemon()
        .wait_metrics("the mirror up", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(1.0)
        })
        .await;
    eventually(WAIT, "status to show the mirror up", || async {
        let (_, out, _) = s.run(&["status"]);
        out.lines()
            .any(|l| l.starts_with("sdk ") && l.contains(" up "))
            .then_some(())
    })
    .await;

    // A restart with nothing refreshed since: every key is back.
    redis_server.restart();
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        2
    );
    assert_eq!(s.fake.tokens_issued(id), 2);
}

#[tokio::test]
async fn an_older_generation_never_replaces_a_newer_one_in_redis() {
    let id = "wxmirrorguard000001";
    let redis = RedisView::new(&shared_url());
    // Another replica already wrote generation 7 (this daemon will store 1).
    redis
        .set(&format!("wxtokend:generation:{id}:access_token"), "7", 600)
        .await;
    redis
        .set(&format!("wx:access_token:{id}"), "generation-7-token", 600)
        .await;
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-guard-secret"))
        .config(|c| c.extra_toml = mirror(&shared_url(), &["wxjava", "silenceper"]))
        .build()
        .await;
    s.wait_for_tokens(1).await;
    s.daemon()
        .wait_metrics("a mirror write refused", |m| {
            m.get("wxtokend_mirror_stale_total", &[("mirror", "sdk")]) == Some(1.0)
        })
        .await;
    assert_eq!(
        redis.get(&format!("wx:access_token:{id}")).await,
        Some(Some("generation-7-token".into()))
    );
    // All or nothing: no layout got the older one.
    assert_eq!(
        redis
            .get(&format!("gowechat_officialaccount__access_token_{id}"))
            .await,
        Some(None)
    );
}

/// A Redis that hangs (SIGSTOP) delays no refresh; when it answers again
/// as the same server (same `run_id`, its keys kept) it gets the newest
/// token without a reread of MongoDB.
#[tokio::test]
async fn a_frozen_redis_never_delays_refreshes_and_gets_the_newest_token_when_it_thaws() {
    let id = "wxmirrorfrozen00001";
    let redis_server = PrivateRedis::start();
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-frozen-secret"))
        .app(|app| app.expires_in(Duration::from_secs(2)))
        .config({
            let toml = mirror(&redis_server.url(), &["wxjava"]);
            move |c| {
                c.margin = "1s";
                c.extra_toml = toml;
            }
        })
        .build()
        .await;
    let sdk = [("mirror", "sdk")];
    s.daemon()
        .wait_metrics("the mirror's first contact", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(1.0)
                && m.get("wxtokend_mirror_resyncs_total", &sdk) == Some(1.0)
        })
        .await;
    redis_server.signal("STOP");
    let before = s.tokens().await.len();
    // Every refresh is on time (one a second) although each Redis call
    // hangs until its timeout (2 s): a refresher that waited for Redis
    // would take about 9 s for three refreshes.
    let tokens = s.wait_for_tokens(before + 4).await;
    let at = |i: usize| {
        tokens[before + i]
            .get_datetime("fetched_at")
            .expect("fetched_at")
            .to_system_time()
    };
    let spread = at(3).duration_since(at(0)).expect("in order");
    assert!(
        spread < Duration::from_secs(7),
        "three refreshes took {spread:?}"
    );
    s.daemon()
        .wait_metrics("the mirror down", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(0.0)
        })
        .await;
    redis_server.signal("CONT");
    let redis = RedisView::new(&redis_server.url());
    let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{id}"))];
    wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;
    let m = s
        .daemon()
        .wait_metrics("the mirror up again", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.get("wxtokend_mirror_resyncs_total", &sdk),
        Some(1.0),
        "the same server answering again is not reread from MongoDB: {}",
        m.text()
    );
}

/// An insert that lands but whose answer is lost (cut off by the operation
/// timeout) is found stored when retried: that token is the newest in
/// MongoDB, so it reaches Redis and the metrics too, instead of Redis
/// keeping nothing (or the token before it) for a whole refresh cycle.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_token_whose_insert_answer_was_lost_reaches_redis_and_the_metrics() {
    let id = "wxmirrorlostanswer1";
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-lost-answer-secret"))
        .config(|c| {
            c.extra_toml = mirror(&shared_url(), &["wxjava"]);
            c.env
                .push(("FAILPOINTS", "insert-answer-lost=1*return->off".into()));
        })
        .build()
        .await;
    let redis = RedisView::new(&shared_url());
    let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{id}"))];
    let generation = wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;
    assert_eq!(
        generation, 1,
        "stored once, by the write whose answer was lost"
    );
    assert_eq!(s.fake.tokens_issued(id), 1);
    s.daemon()
        .wait_metrics("the stored token's series", |m| {
            m.generation(id) == Some(1)
                && m.token("wxtokend_token_seconds_until_expiry", id)
                    .is_some_and(|left| left > 0.0)
        })
        .await;
}

/// A configuration with a mirror fails to start with the key named when
/// its URL cannot be read; it never prints the URL.
#[test]
fn a_mirror_url_problem_names_the_key_and_never_the_url() {
    let mut config = TestConfig::new(
        "mongodb://127.0.0.1:9/",
        "unused",
        "http://127.0.0.1:9",
        &[TestAccount::new(
            "wxmirrorconfig00001",
            "mirror-config-secret",
        )],
    );
    config.extra_toml = mirror("rediss://:hunter2@cache:6380/0", &["wxjava"]);
    let (code, out, err) = config.run(&["check"]);
    assert_ne!(code, 0);
    assert!(err.contains("mirrors[0].url"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
}

/// The python of a virtualenv with `sdk` `version` from PyPI
/// (scripts/sdk-venv.sh builds it once, with apt's python3-venv if needed).
fn sdk_python(sdk: &str, version: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sdk-venv.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args([sdk, version])
        .output()
        .expect("run scripts/sdk-venv.sh");
    assert!(
        out.status.success(),
        "cannot build the {sdk} {version} virtualenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

/// What wechatpy used over a proof run: the access tokens, then the JS-SDK
/// tickets, each in the order it first saw them.
struct Used {
    tokens: Vec<String>,
    tickets: Vec<String>,
}

impl Used {
    /// At least `n` tokens and `n` tickets: the proof spanned refreshes.
    fn saw_at_least(&self, n: usize) {
        assert!(
            self.tokens.len() >= n && self.tickets.len() >= n,
            "wechatpy saw {} tokens and {} tickets, fewer than {n}",
            self.tokens.len(),
            self.tickets.len()
        );
    }
}

/// Runs tests/sdk/wechatpy_proof.py with wechatpy `version` for `seconds`
/// against the scenario's fake and mirror, then checks that every token and
/// ticket it used came from the daemon and that it fetched none itself.
async fn wechatpy_proof(s: &Scenario, version: &str, seconds: u64) -> Used {
    let id = s.id().to_owned();
    let python = sdk_python("wechatpy", version);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/wechatpy_proof.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .env("REDIS_URL", shared_url())
        .env("FAKE_WECHAT_URL", s.fake.url())
        .env("APPID", &id)
        .env("APPSECRET", &s.accounts[0].secret)
        .env("PROOF_SECONDS", seconds.to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run python");
    assert!(
        out.status.success(),
        "wechatpy {version} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the proof's JSON line");
    let strings = |field: &str| -> Vec<String> {
        seen[field]
            .as_array()
            .expect(field)
            .iter()
            .map(|t| t.as_str().expect("a string").to_owned())
            .collect()
    };
    let used = Used {
        tokens: strings("tokens"),
        tickets: strings("tickets"),
    };
    // Every token and ticket WeChat issued was fetched and stored by the
    // daemon: none by wechatpy.
    for (collection, field, endpoint, used) in [
        (
            "access_tokens",
            "access_token",
            Endpoint::Token,
            &used.tokens,
        ),
        (
            "jsapi_tickets",
            "ticket",
            Endpoint::GetTicket,
            &used.tickets,
        ),
    ] {
        let what = format!("every {field} the fake issued stored by the daemon");
        let stored = eventually(WAIT, &what, || async {
            let stored: Vec<String> =
                s.db.try_find(collection, doc! { "app_id": &id })
                    .await?
                    .iter()
                    .map(|d| d.get_str(field).expect("a value").to_owned())
                    .collect();
            (stored.len() == s.fake.issued_on(&id, endpoint).len()).then_some(stored)
        })
        .await;
        assert_eq!(
            stored,
            s.fake.issued_on(&id, endpoint),
            "wechatpy fetched a {field} of its own"
        );
        for value in used {
            assert!(
                stored.contains(value),
                "wechatpy used a {field} the daemon did not store"
            );
        }
    }
    used
}

/// The fake issues a new JS-SDK ticket at every call, living as long as the
/// tokens, so that the daemon refreshes tickets ahead of expiry like tokens
/// and wechatpy sees them change.
fn rotating_tickets(app: AppConfig, life: Duration) -> AppConfig {
    app.expires_in(life)
        .ticket_expires_in(life)
        .behaviour(Endpoint::GetTicket, |b| b.mode = Mode::NewEveryCall)
}

#[tokio::test]
async fn wechatpy_1_8_itself_uses_the_daemons_tokens_and_fetches_none() {
    let s = Scenario::new()
        .account(TestAccount::new("wxmirrorwechatpy0018", "wechatpy-18-secret").tickets(&["jsapi"]))
        .app(|app| rotating_tickets(app, Duration::from_secs(6)))
        .config(|c| {
            c.margin = "3s";
            c.extra_toml = mirror(&shared_url(), &["wechatpy"]);
        })
        .build()
        .await;
    let redis = RedisView::new(&shared_url());
    let token = vec![(Sdk::Wechatpy, format!("wechatpy:{}_access_token", s.id()))];
    let ticket = vec![(Sdk::Wechatpy, format!("wechatpy:{}_jsapi_ticket", s.id()))];
    wait_mirrored(&s, &redis, s.id(), CredentialKind::AccessToken, &token).await;
    wait_mirrored(&s, &redis, s.id(), CredentialKind::JsapiTicket, &ticket).await;
    // About four refresh cycles.
    wechatpy_proof(&s, "1.8.18", 12).await.saw_at_least(3);
}

/// wechatpy 2 also reads `…_access_token_expires_at` and fetches on its own
/// once 60 s or less are left: tokens live 150 s here, refreshed with 75 s
/// left (the daemon's margin is at most half a lifetime), 15 s of room
/// above wechatpy's 60 s on a loaded machine; three refreshes in 240 s.
#[tokio::test]
async fn wechatpy_2_itself_uses_the_daemons_tokens_and_fetches_none() {
    let s = Scenario::new()
        .account(TestAccount::new("wxmirrorwechatpy0020", "wechatpy-20-secret").tickets(&["jsapi"]))
        .app(|app| rotating_tickets(app, Duration::from_secs(150)))
        .config(|c| {
            c.margin = "75s";
            c.extra_toml = mirror(&shared_url(), &["wechatpy"]);
        })
        .build()
        .await;
    let redis = RedisView::new(&shared_url());
    let token = vec![(Sdk::Wechatpy, format!("wechatpy:{}_access_token", s.id()))];
    let ticket = vec![(Sdk::Wechatpy, format!("wechatpy:{}_jsapi_ticket", s.id()))];
    wait_mirrored(&s, &redis, s.id(), CredentialKind::AccessToken, &token).await;
    wait_mirrored(&s, &redis, s.id(), CredentialKind::JsapiTicket, &ticket).await;
    // At least three refreshes in 240 s.
    wechatpy_proof(&s, "2.0.0a26", 240).await.saw_at_least(4);
}

#[tokio::test]
async fn the_redis_password_shows_nowhere() {
    let id = "wxmirrorpassword001";
    let password = "s3cret-redis-password";
    let redis_server = PrivateRedis::start_with(&["--requirepass", password]);
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("redis_url");
    std::fs::write(
        &url_file,
        format!("{}\n", redis_server.url_with_password(password)),
    )
    .expect("write the URL file");
    let mut s = Scenario::new()
        .account(TestAccount::new(id, "mirror-password-secret"))
        .config({
            let toml = format!(
                "\n[[mirrors]]\nname = \"sdk\"\nurl_file = {:?}\nlayouts = [\"wxjava\"]\ncheck_interval = \"200ms\"\n",
                url_file.display().to_string()
            );
            move |c| {
                c.log_level_debug = true;
                c.extra_toml = toml;
            }
        })
        .build()
        .await;
    let redis = RedisView::new(&redis_server.url_with_password(password));
    let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{id}"))];
    wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;

    // The password changes under the daemon: every write is refused.
    let mut c = redis::Client::open(redis_server.url_with_password(password))
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("another-redis-password")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    // Connections already open stay authenticated: close the daemon's.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut c)
        .await
        .expect("CLIENT KILL");
    let (code, _, err) = s.run(&["refresh", id]);
    assert_eq!(code, 0, "{err}");
    s.daemon()
        .wait_metrics("the mirror refused", |m| {
            m.get("wxtokend_mirror_up", &[("mirror", "sdk")]) == Some(0.0)
        })
        .await;
    let status = eventually(WAIT, "status to show the mirror down", || async {
        let (_, out, _) = s.run(&["status"]);
        out.lines()
            .any(|l| l.starts_with("sdk ") && l.contains("DOWN"))
            .then_some(out)
    })
    .await;
    let (_, shown, _) = s.run(&["config"]);
    let metrics = s.daemon().metrics().await;
    s.daemon_mut().terminate(WAIT);
    let mut secrets = s.secrets();
    secrets.push(password.to_owned());
    secrets.push("another-redis-password".to_owned());
    s.daemon().assert_logs_free_of(&secrets);
    for text in [status.as_str(), shown.as_str(), metrics.text()] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret leaked: {text}");
        }
    }
}

/// A mirror that compares every key with what it should hold every
/// 500 ms.
fn repairing_mirror(url: &str, layouts: &[&str]) -> String {
    format!("{}repair_interval = \"500ms\"\n", mirror(url, layouts))
}

#[tokio::test]
async fn keys_deleted_changed_or_flushed_are_written_again_without_a_refresh() {
    let id = "wxmirrorrepair00001";
    let redis_server = PrivateRedis::start();
    let url = redis_server.url();
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-repair-secret"))
        .config({
            let toml = repairing_mirror(&url, &["wxjava", "wechatpy"]);
            move |c| c.extra_toml = toml
        })
        .build()
        .await;
    let redis = RedisView::new(&url);
    let wxjava = format!("wx:access_token:{id}");
    let wechatpy = format!("wechatpy:{id}_access_token");
    let keys = vec![
        (Sdk::Wxjava, wxjava.clone()),
        (Sdk::Wechatpy, wechatpy.clone()),
    ];
    let generation = wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;

    let sdk = [("mirror", "sdk")];
    let count = |name: &'static str| {
        move |m: &crate::support::metrics::Metrics| m.get(name, &sdk).unwrap_or(0.0)
    };
    let repairs = count("wxtokend_mirror_repairs_total");
    let writes = count("wxtokend_mirror_writes_total");
    let written = 1.0;
    s.daemon()
        .wait_metrics("the first write counted", |m| writes(m) == written)
        .await;

    // WxJava deletes its key on 40001; wechatpy writes a token it fetched
    // itself (and its expiry) over the daemon's.
    redis.del(std::slice::from_ref(&wxjava)).await;
    redis.set(&wechatpy, "\"a-token-of-its-own\"", 7200).await;
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        generation
    );
    s.daemon()
        .wait_metrics("both keys repaired", |m| repairs(m) == 2.0)
        .await;

    // A key loses its TTL (WxJava then counts it as expired); another
    // becomes a hash.
    redis.command(&["PERSIST", &wechatpy]).await;
    redis.replace_with_hash(&wxjava).await;
    s.daemon()
        .wait_metrics("two more keys repaired", |m| repairs(m) == 4.0)
        .await;
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        generation
    );

    // The generation key becomes a hash: the credential is written as new.
    let generation_key = format!("wxtokend:generation:{id}:access_token");
    redis.replace_with_hash(&generation_key).await;
    s.daemon()
        .wait_metrics("written again", |m| writes(m) == written + 1.0)
        .await;

    // Everything flushed, on the same server (no restart to notice): the
    // generation key went too, so it counts as a write, not a repair.
    redis.flush_all().await;
    s.daemon()
        .wait_metrics("written again after the flush", |m| {
            writes(m) == written + 2.0
        })
        .await;
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        generation
    );

    // Redis forgets the script (`SCRIPT FLUSH`): loaded again, no error.
    redis.command(&["SCRIPT", "FLUSH"]).await;
    redis.del(std::slice::from_ref(&wxjava)).await;
    let m = s
        .daemon()
        .wait_metrics("repaired without the script", |m| repairs(m) == 5.0)
        .await;
    assert_eq!(
        count("wxtokend_mirror_errors_total")(&m),
        0.0,
        "{}",
        m.text()
    );
    assert_eq!(
        count("wxtokend_mirror_resyncs_total")(&m),
        1.0,
        "{}",
        m.text()
    );
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        generation
    );
    // The token was not refreshed for any of it: MongoDB's stands.
    assert_eq!(s.fake.tokens_issued(id), 1);
}

/// The holder is frozen (SIGSTOP) with its credential mirrored; another
/// replica takes the lease and mirrors a newer token (a refresh request);
/// the old holder thaws with its older token still valid: it neither puts
/// it back (the generation guard, or its refresher's withdrawal, whichever
/// comes first) nor keeps mirroring the credential.
#[tokio::test]
async fn a_former_holder_never_puts_its_older_token_back_in_redis() {
    let id = "wxmirrorhandover001";
    let redis = RedisView::new(&shared_url());
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-handover-secret"))
        .config(|c| c.extra_toml = repairing_mirror(&shared_url(), &["wxjava", "silenceper"]))
        .replicas(2)
        .build()
        .await;
    let keys = vec![
        (Sdk::Wxjava, format!("wx:access_token:{id}")),
        (
            Sdk::Silenceper,
            format!("gowechat_officialaccount__access_token_{id}"),
        ),
    ];
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        1
    );
    let holder = s.wait_for_lease(id, "a holder", |l| l.valid).await.holder;
    s.replica(&holder).signal("STOP");
    let taker = s
        .wait_for_lease(id, "the other replica holding", |l| {
            l.valid && l.holder != holder
        })
        .await
        .holder;
    assert_eq!(s.run(&["refresh", id]).0, 0);
    eventually(WAIT, "generation 2 stored", || async {
        let newest = newest_valid(&s, id, CredentialKind::AccessToken).await?;
        (newest.generation.0 == 2).then_some(())
    })
    .await;
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        2
    );
    let sdk = [("mirror", "sdk")];
    let count = |name: &'static str| {
        move |m: &crate::support::metrics::Metrics| m.get(name, &sdk).unwrap_or(0.0)
    };
    let (writes, repairs) = (
        count("wxtokend_mirror_writes_total"),
        count("wxtokend_mirror_repairs_total"),
    );
    // The taker wrote generation 2 (generation 1, which it reused when it
    // took the lease, was there already).
    let taker_writes = s
        .replica(&taker)
        .wait_metrics("the taker's write counted", |m| writes(m) >= 1.0)
        .await;
    let taker_writes = writes(&taker_writes);

    s.replica(&holder).signal("CONT");
    s.replica(&holder)
        .wait_metrics("the thawed replica mirroring nothing", |m| {
            !m.lease_held(id) && m.get("wxtokend_mirror_credentials", &sdk) == Some(0.0)
        })
        .await;
    // The taker's repair passes run (a key removed is put back); had the
    // thawed replica put generation 1 back, the taker would have repaired
    // more than that one key, or Redis would hold generation 1.
    let wxjava = format!("wx:access_token:{id}");
    redis.del(std::slice::from_ref(&wxjava)).await;
    let m = s
        .replica(&taker)
        .wait_metrics("the taker's repair", |m| repairs(m) >= 1.0)
        .await;
    assert_eq!(repairs(&m), 1.0, "{}", m.text());
    assert_eq!(writes(&m), taker_writes, "{}", m.text());
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        2
    );
}

/// A replica that gives a lease back (a second replica joins) stops
/// mirroring that account: only its new holder keeps it written.
#[tokio::test]
async fn a_lease_given_back_is_mirrored_by_its_new_holder_only() {
    let ids = ["wxmirrorgiveback001", "wxmirrorgiveback002"];
    let redis = RedisView::new(&shared_url());
    let mut s = Scenario::new()
        .account(TestAccount::new(ids[0], "mirror-giveback-secret-1"))
        .account(TestAccount::new(ids[1], "mirror-giveback-secret-2"))
        .config(|c| c.extra_toml = repairing_mirror(&shared_url(), &["wxjava"]))
        .build()
        .await;
    let sdk = [("mirror", "sdk")];
    let first = "test-instance";
    for id in ids {
        let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{id}"))];
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await;
    }
    s.replica(first)
        .wait_metrics("both mirrored", |m| {
            m.get("wxtokend_mirror_credentials", &sdk) == Some(2.0)
        })
        .await;
    s.daemons.push(s.spawn("second"));
    let moved = eventually(WAIT, "one account moved to the second replica", || async {
        let holders = s.holders().await;
        ids.into_iter()
            .find(|id| holders.get(*id).map(String::as_str) == Some("second"))
    })
    .await;
    for replica in [first, "second"] {
        s.replica(replica)
            .wait_metrics("one credential mirrored by each", |m| {
                m.get("wxtokend_mirror_credentials", &sdk) == Some(1.0)
            })
            .await;
    }
    // Its key removed: the second replica puts it back, the first does not.
    redis.del(&[format!("wx:access_token:{moved}")]).await;
    let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{moved}"))];
    wait_mirrored(&s, &redis, moved, CredentialKind::AccessToken, &keys).await;
    let repairs = |replica: &str| {
        let replica = s.replica(replica);
        async move {
            replica
                .metrics()
                .await
                .get("wxtokend_mirror_repairs_total", &sdk)
                .unwrap_or(0.0)
        }
    };
    s.replica("second")
        .wait_metrics("the second replica's repair", |m| {
            m.get("wxtokend_mirror_repairs_total", &sdk) == Some(1.0)
        })
        .await;
    assert_eq!(repairs(first).await, 0.0);
}

/// A Redis that answers but refuses writes (out of memory) shows the
/// mirror down, steadily, with Redis's words, and costs MongoDB nothing;
/// once it takes writes again, the keys are written.
#[tokio::test]
async fn a_redis_that_refuses_writes_shows_down_until_it_takes_them() {
    let id = "wxmirrorrefusing001";
    let redis_server = PrivateRedis::start();
    let url = redis_server.url();
    let redis = RedisView::new(&url);
    redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    redis.command(&["CONFIG", "SET", "maxmemory", "1"]).await;
    let s = Scenario::new()
        .account(TestAccount::new(id, "mirror-refusing-secret"))
        .config({
            let toml = repairing_mirror(&url, &["wxjava"]);
            move |c| c.extra_toml = toml
        })
        .build()
        .await;
    s.wait_for_tokens(1).await;
    let sdk = [("mirror", "sdk")];
    s.daemon()
        .wait_metrics("writes refused", |m| {
            m.get("wxtokend_mirror_errors_total", &sdk)
                .is_some_and(|n| n >= 3.0)
        })
        .await;
    // Steadily down (no flapping between checks), and no reread of
    // MongoDB per retry: one resync, at the first contact.
    for _ in 0..10 {
        let m = s.daemon().metrics().await;
        assert_eq!(m.get("wxtokend_mirror_up", &sdk), Some(0.0), "{}", m.text());
        assert_eq!(
            m.get("wxtokend_mirror_resyncs_total", &sdk),
            Some(1.0),
            "{}",
            m.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(WAIT, "status to show Redis's refusal", || async {
        let (code, out, err) = s.run(&["status", "--mirrors"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .any(|l| {
                l.starts_with("sdk ")
                    && l.contains("DOWN")
                    && l.contains("writes refused")
                    && l.contains("OOM")
            })
            .then_some(())
    })
    .await;
    assert!(redis.get(&format!("wx:access_token:{id}")).await == Some(None));

    redis.command(&["CONFIG", "SET", "maxmemory", "0"]).await;
    let keys = vec![(Sdk::Wxjava, format!("wx:access_token:{id}"))];
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        1
    );
    s.daemon()
        .wait_metrics("the mirror up", |m| {
            m.get("wxtokend_mirror_up", &sdk) == Some(1.0)
        })
        .await;
}

/// SIGTERM while a refresh's call is in flight: the token it brings is
/// stored in MongoDB as the daemon stops, and written to Redis too before
/// the mirror stops (else the SDKs would keep the replaced token).
// Multi-threaded: `terminate` blocks its thread while the fake WeChat,
// served from this runtime, must go on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_stored_while_stopping_reaches_redis_too() {
    let id = "wxmirrorstopping001";
    let redis = RedisView::new(&shared_url());
    let mut s = Scenario::new()
        .account(TestAccount::new(id, "mirror-stopping-secret"))
        .config(|c| {
            c.extra_toml = mirror(&shared_url(), &["silenceper"]);
            c.request_timeout = "5s";
            c.lease_duration = "12s";
            c.shutdown_timeout = "7s";
        })
        .build()
        .await;
    let keys = vec![(
        Sdk::Silenceper,
        format!("gowechat_officialaccount__access_token_{id}"),
    )];
    assert_eq!(
        wait_mirrored(&s, &redis, id, CredentialKind::AccessToken, &keys).await,
        1
    );
    s.fake
        .set_sticky_fault(id, Some(Fault::Delay(Duration::from_secs(3))));
    assert_eq!(s.run(&["refresh", id]).0, 0);
    eventually(WAIT, "the refresh's call to reach WeChat", || async {
        (s.fake.token_calls(id) >= 2).then_some(())
    })
    .await;
    let status = s.daemon_mut().terminate(WAIT);
    assert!(status.success(), "{status:?}");
    let newest = newest_valid(&s, id, CredentialKind::AccessToken)
        .await
        .expect("a token");
    assert_eq!(newest.generation.0, 2, "stored while stopping");
    assert_eq!(
        silenceper_reads(&redis, &keys[0].1).await.as_deref(),
        Some(newest.value.expose_secret()),
        "Redis kept the replaced token"
    );
}

#[tokio::test]
async fn check_says_whether_each_mirror_answers() {
    let mut down = PrivateRedis::start();
    let down_url = down.url();
    down.stop();
    let s = Scenario::new()
        .account(TestAccount::new(
            "wxmirrorcheck000001",
            "mirror-check-secret",
        ))
        .config(move |c| {
            c.extra_toml = format!(
                "{}\n[[mirrors]]\nname = \"gone\"\nurl = \"{down_url}\"\nlayouts = [\"wxjava\"]\n",
                mirror(&shared_url(), &["wxjava"])
            )
        })
        .replicas(0)
        .build()
        .await;
    let (code, out, err) = s.run(&["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("mirror sdk: Redis answers"), "{out}");
    assert!(err.contains("mirror gone: Redis does not answer"), "{err}");
    // No replica runs: `status --mirrors` says so.
    let (code, out, err) = s.run(&["status", "--mirrors"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "no live replica has a mirror");
}
