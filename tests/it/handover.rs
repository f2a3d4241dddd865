//! Leases under load: replicas joining and leaving while WeChat is slow and
//! each replica may have one call in flight. A call from a replica that does
//! not hold the account's lease at that moment rotates the token the holder
//! stored, and readers then get tokens WeChat rejects: neither may happen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake_wechat::Fault;
use wxtokend_reader::{AccountId, Reader};

use crate::support::{eventually, Scenario, TestDaemon};

const WAIT: Duration = Duration::from_secs(60);
const ACCOUNTS: usize = 10;

/// Reader samples: the README's query, then WeChat's verdict on the token.
#[derive(Default)]
struct Samples {
    taken: AtomicU64,
    missing: AtomicU64,
    /// Rejected because another call rotated it away.
    rejected: AtomicU64,
    /// Expired by WeChat's clock a moment before the stored `expires_at`
    /// (WeChat counts from issuing, the document from the answer).
    expired_at_the_edge: AtomicU64,
}

/// The stored tokens of `account`, each with the replica that wrote it.
async fn stored_tokens(s: &Scenario, account: &str) -> HashMap<String, String> {
    s.tokens_of(account)
        .await
        .iter()
        .map(|d| {
            (
                d.get_str("access_token").expect("token").to_owned(),
                d.get_str("fetched_by").expect("fetched_by").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joining_and_leaving_under_a_slow_wechat_never_call_without_the_lease() {
    let s = Arc::new(
        Scenario::new()
            .accounts(ACCOUNTS)
            .app(|app| {
                app.expires_in(Duration::from_secs(8))
                    .overlap(Duration::from_secs(3))
            })
            .replicas(0)
            .build()
            .await,
    );
    for a in &s.accounts {
        // Over a second per token call.
        s.fake
            .set_sticky_fault(&a.id, Some(Fault::Delay(Duration::from_millis(1200))));
    }
    // Each replica calls WeChat on a base URL of its own, so the fake can
    // say who made each call; one call in flight per replica.
    let replica = |name: &'static str| {
        let s = s.clone();
        async move {
            let mut config = s.config.clone();
            config.instance_id = name.into();
            config.wechat_url = s.fake.caller_url(name).await.expect("caller url");
            config.max_concurrent_calls = 1;
            config.lease_renew_interval = "1s";
            // Far above the 1.2 s answers, so a loaded machine never times
            // a call out (an issued token would then go unstored); the lease
            // outlasts two such calls, as the configuration requires.
            config.request_timeout = "5s";
            config.lease_duration = "12s";
            config.shutdown_timeout = "7s";
            TestDaemon::spawn(&config)
        }
    };

    let mut running = vec![("a", replica("a").await)];
    eventually(WAIT, "a token for every account", || async {
        let stored = s.tokens().await;
        let with_token: HashSet<_> = stored
            .iter()
            .filter_map(|d| d.get_str("app_id").ok())
            .collect();
        (with_token.len() == ACCOUNTS).then_some(())
    })
    .await;

    // From now on, readers sample every account continuously.
    let samples = Arc::new(Samples::default());
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, done, s) = (samples.clone(), done.clone(), s.clone());
        // Uncached: every sample runs the README's query.
        let reader = Reader::connect(&s.db.uri, &s.db.name)
            .await
            .expect("reader");
        let ids: Vec<AccountId> = s.accounts.iter().map(|a| AccountId::new(&a.id)).collect();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for id in &ids {
                    samples.taken.fetch_add(1, Ordering::Relaxed);
                    match reader.latest(id).await {
                        Ok(token) if s.fake.is_accepted(token.secret()) => {}
                        Ok(token) if s.fake.is_rotated_away(token.secret()) => {
                            samples.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            samples.expired_at_the_edge.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            samples.missing.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Two more replicas join a few seconds apart; later one leaves and a
    // fourth joins. Each change moves leases while calls are queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.push(("b", replica("b").await));
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.push(("c", replica("c").await));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, mut leaving) = running.remove(1);
    leaving.terminate(WAIT);
    running.push(("d", replica("d").await));
    tokio::time::sleep(Duration::from_secs(8)).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    for (_, daemon) in &mut running {
        daemon.terminate(WAIT);
    }

    // Every token WeChat issued went to the replica holding the lease at
    // that moment: it is stored, written by the replica that fetched it. A
    // call by a non-holder would show as a token issued but never stored.
    let (mut calls, mut by_non_holders) = (0, Vec::new());
    for a in &s.accounts {
        let stored = stored_tokens(&s, &a.id).await;
        for (token, caller) in s.fake.issued_by(&a.id) {
            calls += 1;
            if stored.get(&token) != Some(&caller) {
                by_non_holders.push(format!("{} by {caller}", a.id));
            }
        }
    }
    let taken = samples.taken.load(Ordering::Relaxed);
    let missing = samples.missing.load(Ordering::Relaxed);
    let rejected = samples.rejected.load(Ordering::Relaxed);
    let edge = samples.expired_at_the_edge.load(Ordering::Relaxed);
    eprintln!(
        "handover: {calls} token calls, {} by replicas not holding the lease; \
         {taken} reader samples, {missing} without a token, {rejected} rotated away, \
         {edge} expired at the edge",
        by_non_holders.len()
    );
    assert!(
        calls >= 2 * ACCOUNTS,
        "too few refreshes to mean anything: {calls}"
    );
    assert_eq!(
        by_non_holders,
        Vec::<String>::new(),
        "calls without the lease"
    );
    assert_eq!(rejected, 0, "readers got tokens another call rotated away");
    // `missing` and `edge` are reported, not asserted: one call slot per
    // replica at 1.2 s a call cannot keep ten 8 s tokens fresh (deliberately:
    // the overload is what queues calls behind permits), so some tokens
    // lapse before their refresh, and a reader may catch one in the few
    // milliseconds between WeChat's expiry and the stored one.
}

/// SIGTERM while one call to WeChat is in flight and another refresher waits
/// for the one call slot: the call in flight completes and its token is
/// stored; the waiting one is never sent.
// Multi-threaded: `terminate` blocks its thread while the fake WeChat,
// served from this runtime, must go on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_call_stores_that_token_and_sends_no_other() {
    let mut s = Scenario::new()
        .accounts(2)
        .config(|c| {
            c.max_concurrent_calls = 1;
            // Far above the 3 s answer below (see the test above).
            c.request_timeout = "5s";
            c.lease_duration = "12s";
            c.shutdown_timeout = "7s";
        })
        .replicas(0)
        .build()
        .await;
    for a in &s.accounts {
        s.fake
            .set_sticky_fault(&a.id, Some(Fault::Delay(Duration::from_secs(3))));
    }
    let ids: Vec<String> = s.accounts.iter().map(|a| a.id.clone()).collect();
    s.daemons.push(s.spawn("stopping"));
    let calls = |s: &Scenario| ids.iter().map(|id| s.fake.token_calls(id)).sum::<u32>();
    eventually(WAIT, "the first call to reach WeChat", || async {
        (calls(&s) >= 1).then_some(())
    })
    .await;
    let status = s.daemon_mut().terminate(WAIT);
    assert!(status.success(), "{status:?}");

    assert_eq!(calls(&s), 1, "a call was sent after SIGTERM");
    let issued: Vec<String> = ids.iter().flat_map(|id| s.fake.issued_tokens(id)).collect();
    let stored: Vec<String> = s
        .tokens()
        .await
        .iter()
        .map(|d| d.get_str("access_token").expect("token").to_owned())
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        stored, issued,
        "the token of the call in flight was not stored"
    );
}
