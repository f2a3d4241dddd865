//! Faults and hostile input: WeChat misbehaving in every way we know of,
//! MongoDB killed or frozen, and the daemon itself killed at random moments.
//! Through all of it: no panic, no bad document, the last good token stays
//! readable, and refreshing resumes when the fault ends.

use std::time::{Duration, Instant};

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::{tokens_at, unique_db, PrivateMongo, TestDb};
use fake_wechat::{AppConfig, FakeWechat, Fault};
use mongodb::bson::Document;
use wxtokend::domain::{AccountId, CredentialKind, RefreshReason};
use wxtokend::reader::Reader;

const WAIT: Duration = Duration::from_secs(30);

/// A fault, a word the error must contain, and its metric outcome.
fn upstream_faults() -> Vec<(&'static str, Fault, &'static str, &'static str)> {
    let huge = format!(r#"{{"x":"{}"}}"#, "y".repeat(10 * 1024 * 1024));
    let long_token = format!(
        r#"{{"access_token":"{}","expires_in":7200}}"#,
        "t".repeat(600)
    );
    vec![
        ("busy", Fault::Errcode(-1), "errcode -1", "transient"),
        (
            "minute quota",
            Fault::Errcode(45011),
            "errcode 45011",
            "transient",
        ),
        ("HTTP 500", Fault::Http(500), "HTTP 500", "transient"),
        ("HTTP 502", Fault::Http(502), "HTTP 502", "transient"),
        (
            "HTML page",
            Fault::Body("<html><body>502 Bad Gateway</body></html>".into()),
            "not the expected JSON",
            "transient",
        ),
        (
            "truncated JSON",
            Fault::Body(r#"{"access_token":"abc","expi"#.into()),
            "not the expected JSON",
            "transient",
        ),
        ("10 MB body", Fault::Body(huge), "larger than", "transient"),
        (
            "token over 512",
            Fault::Body(long_token),
            "more than 512",
            "transient",
        ),
        (
            "expires_in 0",
            Fault::Body(r#"{"access_token":"T","expires_in":0}"#.into()),
            "expires_in 0 is outside",
            "transient",
        ),
        (
            "expires_in negative",
            Fault::Body(r#"{"access_token":"T","expires_in":-7200}"#.into()),
            "is outside",
            "transient",
        ),
        (
            "expires_in huge",
            Fault::Body(r#"{"access_token":"T","expires_in":99999999999}"#.into()),
            "is outside",
            "transient",
        ),
        (
            "missing token",
            Fault::Body(r#"{"expires_in":7200}"#.into()),
            "access_token is missing",
            "transient",
        ),
        (
            "timeout",
            Fault::Delay(Duration::from_secs(3)),
            "did not answer",
            "transient",
        ),
        (
            "connection reset",
            Fault::Reset,
            "cannot reach WeChat",
            "transient",
        ),
        (
            "IP not whitelisted",
            Fault::Errcode(40164),
            "not whitelisted",
            "permanent",
        ),
    ]
}

#[tokio::test]
async fn every_upstream_fault_keeps_the_good_token_and_recovers() {
    let db = TestDb::new("chaos_upstream").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx00000000000chaos1", "chaos-secret-0001");
    fake.add_app(AppConfig::new(&account.id, &account.secret));
    let mut config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.request_timeout = "1s";
    config.permanent_error_retry = "1s";
    let daemon = TestDaemon::spawn(&config);
    let addr = daemon.admin_addr().await;
    let store = db.store().await;
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let id = AccountId::new(&account.id);
    eventually(WAIT, "generation 1", || async {
        (db.docs("access_tokens").await.len() == 1).then_some(())
    })
    .await;

    for (name, fault, expected, _) in upstream_faults() {
        let stored = db.docs("access_tokens").await.len();
        let good = reader
            .latest(&id)
            .await
            .expect("a good token before the fault");
        let seen = daemon.raw_lines().len();
        fake.set_sticky_fault(&account.id, Some(fault));
        store
            .file_request(
                &id,
                CredentialKind::AccessToken,
                RefreshReason::Manual,
                None,
                "chaos",
            )
            .await
            .expect("request");
        let line = eventually(WAIT, &format!("the error line for {name}"), || async {
            daemon.raw_lines()[seen..]
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["error"].as_str().is_some_and(|e| e.contains(expected)))
        })
        .await;
        assert_eq!(line["account"], account.id.as_str(), "{name}");
        assert_eq!(
            db.docs("access_tokens").await.len(),
            stored,
            "{name}: a failed fetch wrote a document"
        );
        let served = reader
            .latest(&id)
            .await
            .expect("the last good token is still served");
        assert_eq!(served.secret(), good.secret(), "{name}");
        assert!(fake.is_accepted(served.secret()), "{name}");

        fake.set_sticky_fault(&account.id, None);
        eventually(WAIT, &format!("recovery after {name}"), || async {
            (db.docs("access_tokens").await.len() == stored + 1).then_some(())
        })
        .await;
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let count = |outcome: &str| -> f64 {
        let series = format!(
            r#"wxtokend_refresh_total{{account="{}",kind="access_token",outcome="{outcome}"}} "#,
            account.id
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0)
    };
    let faults = upstream_faults();
    let transient = faults.iter().filter(|f| f.3 == "transient").count() as f64;
    assert!(count("transient") >= transient, "{metrics}");
    assert!(count("permanent") >= 1.0);
    assert_eq!(count("success"), (faults.len() + 1) as f64);
    let docs = db.docs("access_tokens").await;
    let gens: Vec<i64> = docs
        .iter()
        .map(|d| d.get_i64("generation").expect("gen"))
        .collect();
    assert_eq!(gens, (1..=docs.len() as i64).collect::<Vec<_>>());
    let mut secrets = fake.issued_tokens(&account.id);
    secrets.push(account.secret.clone());
    daemon.assert_logs_free_of(&secrets);
}

/// The stored history is sound: generations strictly increase, no token is
/// stored twice, and every stored token is one WeChat issued.
fn assert_sound(docs: &[Document], issued: &[String]) {
    let gens: Vec<i64> = docs
        .iter()
        .map(|d| d.get_i64("generation").expect("gen"))
        .collect();
    assert!(gens.windows(2).all(|w| w[0] < w[1]), "generations {gens:?}");
    let mut values: Vec<&str> = docs
        .iter()
        .map(|d| d.get_str("access_token").expect("token"))
        .collect();
    assert!(
        values.iter().all(|v| issued.iter().any(|i| i == v)),
        "a stored token WeChat never issued"
    );
    values.sort();
    values.dedup();
    assert_eq!(values.len(), docs.len(), "a token stored twice");
}

#[tokio::test]
async fn mongodb_killed_or_frozen_mid_run_loses_nothing() {
    let mut mongo = PrivateMongo::start();
    let db = unique_db("chaos_mongo");
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx00000000chaosmdb1", "chaos-mongo-secret");
    fake.add_app(
        AppConfig::new(&account.id, &account.secret)
            .expires_in(Duration::from_secs(6))
            .overlap(Duration::from_secs(30)),
    );
    let mut config = TestConfig::new(
        &mongo.uri(),
        &db,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "3s";
    config.lease_duration = "6s";
    config.lease_renew_interval = "1s";
    let daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "generation 1", || async {
        tokens_at(&mongo.uri(), &db).await.filter(|d| !d.is_empty())
    })
    .await;

    for round in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(700 + 600 * round)).await;
        mongo.signal("KILL");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        mongo.restart();
        let before = tokens_at(&mongo.uri(), &db).await.map_or(0, |d| d.len());
        eventually(WAIT, "a new generation after the restart", || async {
            tokens_at(&mongo.uri(), &db)
                .await
                .filter(|d| d.len() > before)
        })
        .await;
    }
    // Frozen (slow) MongoDB: every request hangs for 3 s.
    mongo.signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    mongo.signal("CONT");
    let before = tokens_at(&mongo.uri(), &db).await.map_or(0, |d| d.len());
    let docs = eventually(WAIT, "refreshing after the freeze", || async {
        tokens_at(&mongo.uri(), &db)
            .await
            .filter(|d| d.len() > before)
    })
    .await;
    let issued = fake.issued_tokens(&account.id);
    assert_sound(&docs, &issued);
    assert_eq!(
        fake.token_calls(&account.id) as usize,
        issued.len(),
        "every call issued a token"
    );
    // Each issued token was stored, except possibly one still in flight.
    assert!(
        issued.len() <= docs.len() + 1,
        "{} issued, {} stored",
        issued.len(),
        docs.len()
    );
    let newest = docs
        .last()
        .expect("newest")
        .get_str("access_token")
        .expect("token");
    assert!(fake.is_accepted(newest));
    assert!(daemon.raw_lines().iter().all(|l| !l.contains("panicked")));
}

#[tokio::test]
async fn killing_the_daemon_at_random_moments_never_leaves_a_dead_token_newest() {
    let db = TestDb::new("chaos_kill9").await;
    let fake = FakeWechat::start().await.expect("fake");
    let account = TestAccount::new("wx0000000chaoskill1", "chaos-kill-secret1");
    // WeChat's proportions, shrunk: the old token outlives a restart.
    fake.add_app(
        AppConfig::new(&account.id, &account.secret)
            .expires_in(Duration::from_secs(8))
            .overlap(Duration::from_secs(30)),
    );
    let mut config = TestConfig::new(
        &db.uri,
        &db.name,
        &fake.url(),
        std::slice::from_ref(&account),
    );
    config.margin = "4s";
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let id = AccountId::new(&account.id);
    let mut rng_state = 0x9e37_79b9_u64;
    let mut next_pause = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        Duration::from_millis(300 + rng_state % 2500)
    };
    let mut samples = 0;
    let started = Instant::now();
    for round in 0..8 {
        let mut c = config.clone();
        c.instance_id = format!("kill9-{round}");
        let daemon = TestDaemon::spawn(&c);
        let deadline = Instant::now() + next_pause();
        while Instant::now() < deadline {
            if let Ok(token) = reader.latest(&id).await {
                assert!(
                    fake.is_accepted(token.secret()),
                    "round {round}: the newest stored token is dead"
                );
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        daemon.signal("KILL");
        drop(daemon);
    }
    let docs = db.docs("access_tokens").await;
    assert!(!docs.is_empty());
    assert_sound(&docs, &fake.issued_tokens(&account.id));
    eprintln!(
        "kill -9 loop: 8 kills in {:?}, {samples} samples, {} generations, {} WeChat calls",
        started.elapsed(),
        docs.len(),
        fake.token_calls(&account.id)
    );
}
