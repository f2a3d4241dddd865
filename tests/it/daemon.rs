//! The daemon as operators run it: the real binary, a real MongoDB-protocol
//! server, and a fake WeChat that rotates tokens like the real one.

use std::time::{Duration, SystemTime};

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat, Fault};
use mongodb::bson::{Bson, Document};

const WAIT: Duration = Duration::from_secs(20);

struct World {
    db: TestDb,
    fake: FakeWechat,
    account: TestAccount,
}

impl World {
    async fn new(test: &str, app: impl FnOnce(AppConfig) -> AppConfig) -> World {
        let db = TestDb::new(test).await;
        let fake = FakeWechat::start().await.expect("fake WeChat");
        let account = TestAccount::new("wx00000000000test1", "secret-of-test1-abcdef");
        fake.add_app(app(AppConfig::new(&account.id, &account.secret)));
        World { db, fake, account }
    }

    fn config(&self) -> TestConfig {
        TestConfig::new(
            &self.db.uri,
            &self.db.name,
            &self.fake.url(),
            std::slice::from_ref(&self.account),
        )
    }

    async fn tokens(&self) -> Vec<Document> {
        self.db.docs("access_tokens").await
    }

    async fn wait_for_generation(&self, generation: usize) -> Vec<Document> {
        eventually(WAIT, &format!("generation {generation} stored"), || async {
            let docs = self.tokens().await;
            (docs.len() >= generation).then_some(docs)
        })
        .await
    }

    /// The secret and every token the fake issued: none may appear in a log.
    fn secrets(&self) -> Vec<String> {
        let mut all = self.fake.issued_tokens(&self.account.id);
        all.push(self.account.secret.clone());
        all
    }
}

fn date(doc: &Document, field: &str) -> SystemTime {
    doc.get_datetime(field).expect(field).to_system_time()
}

#[tokio::test]
async fn first_fetch_stores_one_complete_document() {
    let world = World::new("first_fetch", |a| a).await;
    let daemon = TestDaemon::spawn(&world.config());
    let docs = world.wait_for_generation(1).await;
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    let issued = world.fake.issued_tokens(&world.account.id);
    assert_eq!(doc.get_str("app_id"), Ok(world.account.id.as_str()));
    assert_eq!(doc.get_str("access_token"), Ok(issued[0].as_str()));
    assert_eq!(doc.get("expires_in"), Some(&Bson::Int32(7200)));
    assert_eq!(doc.get("generation"), Some(&Bson::Int64(1)));
    assert_eq!(doc.get_str("reason"), Ok("startup"));
    assert_eq!(doc.get_str("fetched_by"), Ok("test-instance"));
    let fetched_at = date(doc, "fetched_at");
    assert_eq!(
        date(doc, "expires_at"),
        fetched_at + Duration::from_secs(7200)
    );
    let age = SystemTime::now()
        .duration_since(fetched_at)
        .expect("fetched in the past");
    assert!(age < WAIT, "fetched_at is not the fetch time: {age:?} ago");
    let fields: Vec<&str> = doc.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "_id",
            "app_id",
            "access_token",
            "expires_in",
            "fetched_at",
            "expires_at",
            "generation",
            "reason",
            "fetched_by"
        ]
    );
    assert!(
        !format!("{doc:?}").contains(&world.account.secret),
        "secret stored"
    );
    assert_eq!(world.fake.token_calls(&world.account.id), 1);
    daemon.assert_logs_free_of(&world.secrets());
}

#[tokio::test]
async fn indexes_are_created_at_startup() {
    use futures_util::TryStreamExt;
    let world = World::new("indexes", |a| a).await;
    let _daemon = TestDaemon::spawn(&world.config());
    world.wait_for_generation(1).await;
    let indexes: Vec<_> = world
        .db
        .db()
        .collection::<Document>("access_tokens")
        .list_indexes()
        .await
        .expect("list indexes")
        .try_collect()
        .await
        .expect("collect");
    let unique = indexes
        .iter()
        .find(|i| i.keys == mongodb::bson::doc! { "app_id": 1, "generation": -1 })
        .expect("generation index");
    assert_eq!(unique.options.as_ref().and_then(|o| o.unique), Some(true));
    let ttl = indexes
        .iter()
        .find(|i| i.keys == mongodb::bson::doc! { "expires_at": 1 })
        .expect("TTL index");
    assert_eq!(
        ttl.options.as_ref().and_then(|o| o.expire_after),
        Some(Duration::from_secs(7 * 86_400))
    );
}

/// Several short token lifetimes: at every moment the newest stored token is
/// valid and WeChat accepts it, and each cycle costs exactly one fetch.
#[tokio::test]
async fn refreshes_ahead_of_expiry_with_no_moment_without_a_valid_token() {
    let world = World::new("cycles", |a| {
        a.expires_in(Duration::from_secs(6))
            .overlap(Duration::from_secs(2))
    })
    .await;
    let mut config = world.config();
    config.margin = "3s";
    let daemon = TestDaemon::spawn(&config);
    world.wait_for_generation(1).await;
    let reader = wxtokend::reader::Reader::connect(&world.db.uri, &world.db.name)
        .await
        .expect("reader");
    let account = wxtokend::domain::AccountId::new(&world.account.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(13);
    let mut samples = 0;
    while tokio::time::Instant::now() < deadline {
        let token = reader
            .latest(&account)
            .await
            .expect("a valid token at every moment");
        assert!(
            world.fake.is_accepted(token.secret()),
            "generation {} is stored as newest but WeChat rejects it",
            token.generation
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let docs = world.tokens().await;
    let generations: Vec<i64> = docs
        .iter()
        .map(|d| d.get_i64("generation").expect("i64"))
        .collect();
    assert!(
        docs.len() >= 4,
        "expected at least 4 cycles in 13 s, got {generations:?}"
    );
    assert_eq!(generations, (1..=docs.len() as i64).collect::<Vec<_>>());
    let reasons: Vec<&str> = docs
        .iter()
        .map(|d| d.get_str("reason").expect("reason"))
        .collect();
    assert_eq!(reasons[0], "startup");
    assert!(
        reasons[1..].iter().all(|r| *r == "scheduled"),
        "{reasons:?}"
    );
    // Exactly one upstream call per stored generation (maybe one in flight).
    let calls = world.fake.token_calls(&world.account.id) as usize;
    assert!(
        calls == docs.len() || calls == docs.len() + 1,
        "{calls} calls for {} generations",
        docs.len()
    );
    assert!(samples > 50);
    daemon.assert_logs_free_of(&world.secrets());
}

#[tokio::test]
async fn restart_reuses_the_stored_token_without_calling_wechat() {
    let world = World::new("restart", |a| a).await;
    let config = world.config();
    let mut first = TestDaemon::spawn(&config);
    world.wait_for_generation(1).await;
    assert!(first.terminate(WAIT).success());
    first.wait_for_log("wxtokend stopped", WAIT).await;

    let second = TestDaemon::spawn(&config);
    let reuse = second
        .wait_for_log("reusing the stored access_token", WAIT)
        .await;
    assert_eq!(reuse["account"], world.account.id.as_str());
    assert_eq!(reuse["generation"], "1");
    // Give a wrongly eager daemon time to fetch anyway.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(world.fake.token_calls(&world.account.id), 1);
    assert_eq!(world.tokens().await.len(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_until_a_token_is_stored() {
    let world = World::new("transient", |a| a).await;
    world.fake.push_faults(
        &world.account.id,
        [
            Fault::Errcode(-1),
            Fault::Http(502),
            Fault::Body("<html>Bad Gateway</html>".into()),
            Fault::Errcode(45011),
            Fault::Body(r#"{"access_token":"x","expires_in":0}"#.into()),
            Fault::Body(format!(r#"{{"padding":"{}"}}"#, "x".repeat(100_000))),
            Fault::Delay(Duration::from_secs(3)), // longer than request_timeout
        ],
    );
    let mut config = world.config();
    config.request_timeout = "1s";
    let daemon = TestDaemon::spawn(&config);
    let docs = world.wait_for_generation(1).await;
    assert_eq!(docs.len(), 1);
    assert_eq!(world.fake.token_calls(&world.account.id), 8);
    let retries = daemon.logs_with("access_token fetch failed; retrying");
    assert_eq!(retries.len(), 7, "one warning per failed attempt");
    assert!(retries
        .iter()
        .all(|l| l["level"] == "WARN" && l["account"] == world.account.id.as_str()));
    assert!(retries[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("errcode -1")));
    assert!(retries[5]["error"]
        .as_str()
        .is_some_and(|e| e.contains("larger than 65536 bytes")));
    assert!(retries[6]["error"]
        .as_str()
        .is_some_and(|e| e.contains("timeout")));
    // Every retry waits within the configured bounds.
    let delays: Vec<u64> = retries
        .iter()
        .map(|l| l["retry_in_s"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        delays.iter().all(|d| *d <= 1),
        "retry_max is 400ms: {delays:?}"
    );
    daemon.assert_logs_free_of(&world.secrets());
}

#[tokio::test]
async fn permanent_error_logs_once_and_stores_nothing() {
    let world = World::new("permanent", |a| a).await;
    world
        .fake
        .set_sticky_fault(&world.account.id, Some(Fault::Errcode(40164)));
    let mut config = world.config();
    config.permanent_error_retry = "300ms";
    let daemon = TestDaemon::spawn(&config);
    let calls = eventually(WAIT, "three refused attempts", || async {
        let calls = world.fake.token_calls(&world.account.id);
        (calls >= 3).then_some(calls)
    })
    .await;
    assert!(calls >= 3);
    let errors: Vec<_> = daemon
        .logs()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one clear error line, not one per attempt: {errors:?}"
    );
    let line = &errors[0];
    assert_eq!(line["account"], world.account.id.as_str());
    assert!(line["error"]
        .as_str()
        .is_some_and(|e| e.contains("40164") && e.contains("not whitelisted")));
    assert!(line["message"]
        .as_str()
        .is_some_and(|m| m.contains("configuration")));
    assert!(
        world.tokens().await.is_empty(),
        "a failed fetch wrote a document"
    );
    daemon.assert_logs_free_of(&world.secrets());
}

#[tokio::test]
async fn a_failing_refresh_keeps_serving_the_last_good_token() {
    let world = World::new("keep_good", |a| a.expires_in(Duration::from_secs(4))).await;
    let mut config = world.config();
    config.margin = "2s";
    let _daemon = TestDaemon::spawn(&config);
    let docs = world.wait_for_generation(1).await;
    let good = docs[0].get_str("access_token").expect("token").to_string();
    world
        .fake
        .set_sticky_fault(&world.account.id, Some(Fault::Errcode(40001)));
    eventually(WAIT, "a refused refresh", || async {
        (world.fake.token_calls(&world.account.id) >= 2).then_some(())
    })
    .await;
    let reader = wxtokend::reader::Reader::connect(&world.db.uri, &world.db.name)
        .await
        .expect("reader");
    let served = reader
        .latest(&wxtokend::domain::AccountId::new(&world.account.id))
        .await
        .expect("the last good token is still valid");
    assert_eq!(served.secret(), good);
    assert_eq!(world.tokens().await.len(), 1);
}

#[tokio::test]
async fn daily_quota_stops_fetching() {
    let world = World::new("quota", |a| a.daily_quota(0)).await;
    let daemon = TestDaemon::spawn(&world.config());
    let line = daemon.wait_for_log("daily quota", WAIT).await;
    assert_eq!(line["level"], "ERROR");
    // The next attempt waits for Beijing midnight: at least minutes away.
    assert!(line["retry_in_s"].as_u64().is_some_and(|s| s > 0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(world.fake.token_calls(&world.account.id), 1);
    assert!(world.tokens().await.is_empty());
}

#[tokio::test]
async fn sigterm_stops_the_daemon_cleanly() {
    let world = World::new("sigterm", |a| a).await;
    let mut daemon = TestDaemon::spawn(&world.config());
    world.wait_for_generation(1).await;
    let status = daemon.terminate(WAIT);
    assert!(status.success(), "exit status {status}");
    assert!(!daemon.logs_with("wxtokend stopped").is_empty());
}

#[tokio::test]
async fn accounts_are_refreshed_independently() {
    let db = TestDb::new("two_accounts").await;
    let fake = FakeWechat::start().await.expect("fake");
    let good = TestAccount::new("wx0000000000000good", "good-secret-0123");
    let bad = TestAccount::new("wx00000000000000bad", "bad-secret-0123");
    fake.add_app(AppConfig::new(&good.id, &good.secret));
    fake.add_app(AppConfig::new(&bad.id, "the-real-secret-differs"));
    let config = TestConfig::new(&db.uri, &db.name, &fake.url(), &[good.clone(), bad.clone()]);
    let daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "the good account's token", || async {
        let docs = db.docs("access_tokens").await;
        (!docs.is_empty()).then_some(())
    })
    .await;
    daemon.wait_for_log("refused by WeChat", WAIT).await;
    let docs = db.docs("access_tokens").await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_str("app_id"), Ok(good.id.as_str()));
    daemon.assert_logs_free_of(&[good.secret, bad.secret]);
}
