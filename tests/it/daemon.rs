//! The daemon as operators run it: the real binary, a real MongoDB-protocol
//! server, and a fake WeChat that rotates tokens like the real one.

use std::time::{Duration, SystemTime};

use fake_wechat::{AppConfig, Fault};
use mongodb::bson::{Bson, Document};
use wxtokend::coordination::quota::next_quota_reset;
use wxtokend::Api;

use crate::support::scenario::ScenarioBuilder;
use crate::support::{eventually, Scenario, TestAccount, WAIT};

const ID: &str = "wx00000000000test1";

/// One Official Account, one daemon.
fn one_account() -> ScenarioBuilder {
    Scenario::new().account(TestAccount::new(ID, "secret-of-test1-abcdef"))
}

fn date(doc: &Document, field: &str) -> SystemTime {
    doc.get_datetime(field).expect(field).to_system_time()
}

fn generations(docs: &[Document]) -> Vec<i64> {
    docs.iter()
        .map(|d| d.get_i64("generation").expect("generation"))
        .collect()
}

#[tokio::test]
async fn first_fetch_stores_one_complete_document() {
    let s = one_account().build().await;
    let docs = s.wait_for_tokens(1).await;
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    let issued = s.fake.issued_tokens(ID);
    assert_eq!(doc.get_str("app_id"), Ok(ID));
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
        !format!("{doc:?}").contains(&s.accounts[0].secret),
        "secret stored"
    );
    assert_eq!(s.fake.token_calls(ID), 1);
    s.daemon().assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn indexes_are_created_at_startup() {
    use futures_util::TryStreamExt;
    let s = one_account().build().await;
    s.wait_for_tokens(1).await;
    let indexes: Vec<_> =
        s.db.db()
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
    let s = one_account()
        .app(|app| {
            app.expires_in(Duration::from_secs(6))
                .overlap(Duration::from_secs(2))
        })
        .config(|c| c.margin = "3s")
        .build()
        .await;
    s.wait_for_tokens(1).await;
    // Watching is the test: 13 s are four 3-second refresh cycles.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(13);
    let mut samples = 0;
    while tokio::time::Instant::now() < deadline {
        let token = s
            .reader
            .latest(&s.account_id())
            .await
            .expect("a valid token at every moment");
        assert!(
            s.fake.is_accepted(token.secret()),
            "generation {} is stored as newest but WeChat rejects it",
            token.generation
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let docs = s.tokens().await;
    let generations = generations(&docs);
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
    let calls = s.fake.token_calls(ID) as usize;
    assert!(
        calls == docs.len() || calls == docs.len() + 1,
        "{calls} calls for {} generations",
        docs.len()
    );
    assert!(samples > 50);
    s.daemon().assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn restart_reuses_the_stored_token_without_calling_wechat() {
    let mut s = one_account().build().await;
    s.wait_for_tokens(1).await;
    assert!(s.daemon_mut().terminate(WAIT).success());

    let second = s.spawn("test-instance");
    second
        .wait_metrics("the restarted daemon holding the stored token", |m| {
            m.lease_held(ID) && m.generation(ID) == Some(1)
        })
        .await;
    // Its chance to fetch anyway: two lease renewals after it loaded the token.
    s.wait_for_renewals(ID, 2).await;
    assert_eq!(second.metrics().await.upstream_calls(ID), 0);
    assert_eq!(s.fake.token_calls(ID), 1);
    assert_eq!(s.tokens().await.len(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_until_a_token_is_stored() {
    let s = one_account()
        .faults(
            ID,
            [
                Fault::Errcode(-1),
                Fault::Http(502),
                Fault::Body("<html>Bad Gateway</html>".into()),
                Fault::Errcode(45011),
                Fault::Body(r#"{"access_token":"x","expires_in":0}"#.into()),
                Fault::Body(format!(r#"{{"padding":"{}"}}"#, "x".repeat(100_000))),
                Fault::Delay(Duration::from_secs(3)), // longer than request_timeout
            ],
        )
        .config(|c| c.request_timeout = "1s")
        .build()
        .await;
    let daemon = s.daemon();
    let docs = s.wait_for_tokens(1).await;
    assert_eq!(docs.len(), 1);
    assert_eq!(s.fake.token_calls(ID), 8);
    let m = daemon.metrics().await;
    assert_eq!(m.refreshes(ID, "transient"), 7);
    assert_eq!(m.refreshes(ID, "success"), 1);
    assert_eq!(m.upstream_calls(ID), 8);
    // Operators see one warning per failed attempt, naming the account and
    // the cause, and each retry within the configured bounds.
    let retries: Vec<_> = daemon
        .logs()
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l["kind"] == "access_token")
        .collect();
    assert_eq!(retries.len(), 7, "one warning per failed attempt");
    assert!(retries.iter().all(|l| l["account"] == ID));
    let error = |i: usize| retries[i]["error"].as_str().unwrap_or_default();
    assert!(error(0).contains("errcode -1"), "{}", error(0));
    assert!(error(5).contains("larger than 65536 bytes"), "{}", error(5));
    assert!(error(6).contains("timeout"), "{}", error(6));
    let delays: Vec<u64> = retries
        .iter()
        .map(|l| l["retry_in_s"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert!(
        delays.iter().all(|d| *d == 0),
        "retry_max is 400ms: {delays:?}"
    );
    daemon.assert_logs_free_of(&s.secrets());
}

/// "One loud log": the error line is the behaviour under test.
#[tokio::test]
async fn permanent_error_logs_once_and_stores_nothing() {
    let s = one_account()
        .sticky_fault(ID, Fault::Errcode(40164))
        .config(|c| c.permanent_error_retry = "300ms")
        .build()
        .await;
    let daemon = s.daemon();
    eventually(WAIT, "three refused attempts", || async {
        (s.fake.token_calls(ID) >= 3).then_some(())
    })
    .await;
    let m = daemon
        .wait_metrics("three refusals counted", |m| {
            m.refreshes(ID, "permanent") >= 3
        })
        .await;
    // Every attempt was a refusal: none counted as transient (which would
    // retry within a second), none succeeded.
    assert_eq!(m.refreshes(ID, "transient"), 0);
    assert_eq!(m.refreshes(ID, "success"), 0);
    let lease = s.lease(ID).await.expect("lease");
    assert_eq!(
        lease.last_error.as_deref(),
        Some("WeChat errcode 40164 (caller IP is not whitelisted: add this server's IP (in WeChat's errmsg) to the account's IP whitelist (mp.weixin.qq.com: 设置与开发 → 基本配置 → IP白名单)): injected by fake WeChat rid: fake")
    );
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
    assert_eq!(line["account"], ID);
    assert!(line["error"]
        .as_str()
        .is_some_and(|e| e.contains("40164") && e.contains("not whitelisted")));
    assert!(line["message"]
        .as_str()
        .is_some_and(|m| m.contains("configuration")));
    assert!(
        s.tokens().await.is_empty(),
        "a failed fetch wrote a document"
    );
    daemon.assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn a_failing_refresh_keeps_serving_the_last_good_token() {
    let s = one_account()
        .app(|app| app.expires_in(Duration::from_secs(4)))
        .config(|c| c.margin = "2s")
        .build()
        .await;
    let docs = s.wait_for_tokens(1).await;
    let good = docs[0].get_str("access_token").expect("token").to_string();
    s.fake.set_sticky_fault(ID, Some(Fault::Errcode(40001)));
    s.wait_for_lease(ID, "a refused refresh", |l| l.last_error.is_some())
        .await;
    let served = s
        .reader
        .latest(&s.account_id())
        .await
        .expect("the last good token is still valid");
    assert_eq!(served.secret(), good);
    assert_eq!(s.tokens().await.len(), 1);
}

#[tokio::test]
async fn daily_quota_stops_fetching() {
    let s = one_account().app(|app| app.daily_quota(0)).build().await;
    let daemon = s.daemon();
    s.wait_for_lease(ID, "WeChat's 45009 recorded", |l| l.exhausted(Api::Token))
        .await;
    // The alert is a log line: it is the behaviour under test here.
    let alert = daemon
        .wait_for_line("the daily quota alert", |l| l["level"] == "ERROR")
        .await;
    assert_eq!(alert["account"], ID);
    assert!(
        alert["error"].as_str().is_some_and(|e| e.contains("45009")),
        "{alert}"
    );
    // The next attempt waits for Beijing midnight, plus up to a minute of
    // spread.
    let logged_at = alert["timestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .expect("timestamp");
    let until_reset = next_quota_reset(logged_at)
        .duration_since(logged_at)
        .expect("the reset is ahead")
        .as_secs();
    let retry_in = alert["resets_in_s"].as_u64().expect("resets_in_s");
    assert!(
        (until_reset.saturating_sub(1)..=until_reset + 60).contains(&retry_in),
        "retry in {retry_in} s, the quota resets in {until_reset} s"
    );
    let before = daemon.metrics().await;
    assert_eq!(before.refreshes(ID, "daily_quota"), 1);
    // Its chance to call again: two lease renewals.
    s.wait_for_renewals(ID, 2).await;
    let after = daemon.metrics().await;
    assert_eq!(after.mongodb_ops("permit"), before.mongodb_ops("permit"));
    assert_eq!(s.fake.token_calls(ID), 1);
    assert!(s.tokens().await.is_empty());
}

#[tokio::test]
async fn sigterm_stops_the_daemon_cleanly() {
    let mut s = one_account().build().await;
    s.wait_for_tokens(1).await;
    let held = s.lease(ID).await.expect("lease");
    assert!(held.valid);
    let status = s.daemon_mut().terminate(WAIT);
    assert!(status.success(), "exit status {status}");
    // The lease is released at once, not left to expire.
    let released = s.lease(ID).await.expect("lease");
    assert_eq!(released.holder, "test-instance");
    assert_eq!(released.term, held.term);
    assert!(!released.valid, "the lease is still held after SIGTERM");
}

#[tokio::test]
async fn accounts_are_refreshed_independently() {
    let good = TestAccount::new("wx0000000000000good", "good-secret-0123");
    let bad = TestAccount::new("wx00000000000000bad", "bad-secret-0123");
    let s = Scenario::new()
        .account(good.clone())
        .account(bad.clone())
        // WeChat knows the bad account under another secret.
        .app_for(&bad.id, |app| AppConfig {
            secret: "the-real-secret-differs".into(),
            ..app
        })
        .build()
        .await;
    s.daemon()
        .wait_metrics("the good token stored and the bad account refused", |m| {
            m.generation(&good.id) == Some(1) && m.refreshes(&bad.id, "permanent") == 1
        })
        .await;
    let docs = s.tokens().await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_str("app_id"), Ok(good.id.as_str()));
    s.daemon().assert_logs_free_of(&[good.secret, bad.secret]);
}
