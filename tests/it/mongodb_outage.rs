//! MongoDB goes away and comes back: the daemon keeps what it fetched in
//! memory, writes it when MongoDB returns, never fetches twice for it, and
//! never calls WeChat without a permit from MongoDB.

use std::time::{Duration, SystemTime};

use fake_wechat::Fault;

use crate::support::{eventually, Scenario, TestAccount, WAIT};

#[tokio::test]
async fn token_fetched_as_mongodb_dies_is_stored_when_it_returns() {
    let mut s = Scenario::new()
        .account(TestAccount::new("wx000000000outage1", "outage-secret-0123"))
        .app(|app| {
            app.expires_in(Duration::from_secs(12))
                .overlap(Duration::from_secs(3))
        })
        .config(|c| {
            c.margin = "6s";
            // Longer than the 3 s answer below; the lease and the shutdown
            // grace must outlast such a call.
            c.request_timeout = "4s";
            c.lease_duration = "10s";
            c.shutdown_timeout = "6s";
        })
        .private_mongo()
        .build()
        .await;
    let id = s.id().to_owned();
    s.wait_for_tokens(1).await;

    // The scheduled refresh (6 s after the first fetch) gets its permit, then
    // WeChat takes 3 s to answer, and MongoDB dies meanwhile.
    s.fake
        .push_faults(&id, [Fault::Delay(Duration::from_secs(3))]);
    eventually(WAIT, "the refresh call to start", || async {
        (s.fake.token_calls(&id) == 2).then_some(())
    })
    .await;
    s.mongo().stop();
    let daemon = s.daemon();
    daemon
        .wait_metrics("a failed write of the fetched token", |m| {
            m.mongodb_errors("insert_credential") >= 1
        })
        .await;
    // It keeps the token and tries to write it again, instead of fetching
    // another one.
    daemon
        .wait_metrics("a second write attempt", |m| {
            m.mongodb_errors("insert_credential") >= 2
        })
        .await;
    assert_eq!(
        s.fake.token_calls(&id),
        2,
        "fetched again instead of waiting for MongoDB"
    );

    s.mongo().restart();
    s.wait_for_tokens(2).await;
    // On a slow machine the token fetched during the outage may already be
    // due when MongoDB returns (it is stamped with its send time), and its
    // scheduled successor may follow at once: every token WeChat issued is
    // stored, in order, the one fetched during the outage as generation 2.
    let issued = s.fake.issued_tokens(&id);
    let docs = s.wait_for_tokens(issued.len()).await;
    let stored: Vec<&str> = docs
        .iter()
        .map(|d| d.get_str("access_token").expect("token"))
        .collect();
    assert_eq!(
        stored[..issued.len()],
        issued.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(docs[1].get_i64("generation"), Ok(2));
    s.daemon().assert_logs_free_of(&s.secrets());
}

#[tokio::test]
async fn no_wechat_call_while_mongodb_is_down() {
    let mut s = Scenario::new()
        .account(TestAccount::new("wx00000000nocall01", "nocall-secret-0123"))
        .app(|app| app.expires_in(Duration::from_secs(4)))
        .config(|c| c.margin = "2s")
        .private_mongo()
        .build()
        .await;
    let id = s.id().to_owned();
    s.wait_for_tokens(1).await;
    s.mongo().stop();
    // The refresh falls due during the outage: without a permit from MongoDB
    // (lease and quota) the daemon must not call WeChat, since another
    // replica that can reach MongoDB may hold the account by now. Two failed
    // permit requests: it tried, and kept trying without calling.
    s.daemon()
        .wait_metrics("two failed permit requests", |m| {
            m.mongodb_errors("permit") >= 2
        })
        .await;
    assert_eq!(s.fake.token_calls(&id), 1);
    s.mongo().restart();
    let docs = s.wait_for_tokens(2).await;
    assert_eq!(docs[1].get_i64("generation"), Ok(2));
    assert_eq!(s.fake.token_calls(&id), 2);
}

#[tokio::test]
async fn daemon_started_while_mongodb_is_down_waits_instead_of_fetching_blindly() {
    let mut s = Scenario::new()
        .account(TestAccount::new("wx00000000downstart", "down-secret-0123"))
        .private_mongo()
        .replicas(0)
        .build()
        .await;
    s.mongo().stop();
    let daemon = s.spawn("test-instance");
    // Readiness says why it is not ready.
    eventually(WAIT, "/readyz to blame MongoDB", || async {
        let (status, body) = daemon.get("/readyz").await;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 503 && body["mongodb"].is_string()).then_some(())
    })
    .await;
    // Its chance to fetch blindly: startup tried MongoDB twice. Nothing but
    // this warning shows that (MongoDB is down and no metric covers startup).
    eventually(
        WAIT,
        "a second failed attempt to create the indexes",
        || async {
            let attempts = daemon
                .logs()
                .into_iter()
                .filter(|l| {
                    l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("cannot create indexes"))
                })
                .count();
            (attempts >= 2).then_some(())
        },
    )
    .await;
    // Without MongoDB it cannot know whether a valid token is stored: a fetch
    // now could rotate a token that services are using.
    assert_eq!(s.fake.token_calls(s.id()), 0);

    s.mongo().restart();
    let docs = s.wait_for_tokens(1).await;
    assert_eq!(docs[0].get_str("reason"), Ok("startup"));
    assert_eq!(s.fake.token_calls(s.id()), 1);
}

/// Every failed MongoDB operation is counted, the coordinator's too: an
/// operator's alert on `wxtokend_mongodb_errors_total` fires while MongoDB
/// is down even when no token is due.
#[tokio::test]
async fn every_failed_mongodb_operation_is_counted() {
    let mut s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .private_mongo()
        .build()
        .await;
    s.wait_for_tokens(1).await;
    s.mongo().stop();
    s.daemon()
        .wait_metrics("renewal and heartbeat failures counted", |m| {
            m.mongodb_errors("renew") >= 1 && m.mongodb_errors("heartbeat") >= 1
        })
        .await;
}

/// MongoDB gives this replica a lease but the answer never comes back (an
/// injected fault): the taking is cut off after the operation timeout, and
/// at the next turn the replica finds the lease held in its name, gives it
/// back and takes it properly, instead of leaving the account without a
/// refresher until the lease expires (20 s here).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_lease_taken_whose_answer_was_lost_is_given_back_at_once() {
    let started = SystemTime::now();
    let s = Scenario::new()
        .account(TestAccount::new(
            "wx00000000stranded",
            "stranded-secret-0123",
        ))
        .config(|c| {
            c.lease_duration = "20s";
            c.env
                .push(("FAILPOINTS", "acquire-answer-lost=1*return->off".into()));
        })
        .build()
        .await;
    let docs = s.wait_for_tokens(1).await;
    let fetched = docs[0]
        .get_datetime("fetched_at")
        .expect("fetched_at")
        .to_system_time();
    let waited = fetched.duration_since(started).unwrap_or_default();
    assert!(
        waited < Duration::from_secs(15),
        "the first token came {waited:?} after the start: the lease taken in the lost answer \
         was left to expire"
    );
    let lease = s.lease(s.id()).await.expect("the lease");
    assert!(
        lease.term >= 2,
        "taken once in the lost answer, then again: {lease:?}"
    );
}

/// A refresher's MongoDB operation that never ends (here its first permit,
/// hung by an injected fault) is cut off and retried like a failed one: the
/// account gets its token, instead of a refresher stuck for good while the
/// coordinator keeps renewing its lease.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_refresher_operation_that_hangs_is_cut_off_and_retried() {
    let s = Scenario::new()
        .account(TestAccount::new(
            "wx0000000permithang",
            "permit-hang-secret-0123",
        ))
        .config(|c| {
            c.env
                .push(("FAILPOINTS", "permit-hang=1*return->off".into()));
        })
        .build()
        .await;
    s.wait_for_tokens(1).await;
    let metrics = s.daemon().metrics().await;
    assert!(
        metrics.mongodb_errors("permit") >= 1,
        "the hung permit was not cut off"
    );
}
