//! Faults and hostile input: WeChat misbehaving in every way we know of,
//! MongoDB killed or frozen, and the daemon itself killed at random moments.
//! Through all of it: no panic, no bad document, the last good token stays
//! readable, and refreshing resumes when the fault ends.

use std::time::{Duration, Instant};

use fake_wechat::Fault;
use mongodb::bson::Document;

use crate::support::{Scenario, TestAccount};

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
    let s = Scenario::new()
        .account(TestAccount::new("wx00000000000chaos1", "chaos-secret-0001"))
        .config(|c| {
            c.request_timeout = "1s";
            c.permanent_error_retry = "1s";
        })
        .build()
        .await;
    let (id, daemon) = (s.id(), s.daemon());
    s.wait_for_tokens(1).await;

    for (name, fault, expected, class) in upstream_faults() {
        let stored = s.tokens().await.len();
        let good = s
            .reader
            .latest(&s.account_id())
            .await
            .expect("a good token before the fault");
        let before = daemon.metrics().await;
        s.fake.set_sticky_fault(id, Some(fault));
        let (code, _, err) = s.run(&["refresh", id]);
        assert_eq!(code, 0, "{err}");
        // The error reaches the lease document, which `status` shows.
        s.wait_for_lease(id, &format!("the error of {name}"), |l| {
            l.last_error
                .as_deref()
                .is_some_and(|e| e.contains(expected))
        })
        .await;
        let after = daemon.metrics().await;
        let other = if class == "transient" {
            "permanent"
        } else {
            "transient"
        };
        assert!(
            after.refreshes(id, class) > before.refreshes(id, class),
            "{name}: not counted as {class}"
        );
        assert_eq!(
            after.refreshes(id, other),
            before.refreshes(id, other),
            "{name}: counted as {other}"
        );
        assert_eq!(
            s.tokens().await.len(),
            stored,
            "{name}: a failed fetch wrote a document"
        );
        let served = s
            .reader
            .latest(&s.account_id())
            .await
            .expect("the last good token is still served");
        assert_eq!(served.secret(), good.secret(), "{name}");
        assert!(s.fake.is_accepted(served.secret()), "{name}");

        s.fake.set_sticky_fault(id, None);
        s.wait_for_lease(id, &format!("recovery after {name}"), |l| {
            l.last_error.is_none()
        })
        .await;
        assert_eq!(s.tokens().await.len(), stored + 1, "{name}");
    }
    let faults = upstream_faults();
    let m = daemon.metrics().await;
    assert_eq!(m.refreshes(id, "success"), (faults.len() + 1) as u64);
    let docs = s.tokens().await;
    let gens: Vec<i64> = docs
        .iter()
        .map(|d| d.get_i64("generation").expect("gen"))
        .collect();
    assert_eq!(gens, (1..=docs.len() as i64).collect::<Vec<_>>());
    daemon.assert_logs_free_of(&s.secrets());
}

/// An answer living less than `wechat.min_expires_in` is refused like any
/// invalid answer: nothing stored, a transient outcome retried with
/// backoff, the setting named in the error; once WeChat answers normally,
/// the token is stored.
#[tokio::test]
async fn an_expires_in_below_the_configured_floor_is_refused_and_retried() {
    let id = "wx0000000chaosflr1";
    let s = Scenario::new()
        .account(TestAccount::new(id, "chaos-floor-secret-1"))
        .app(|app| app.expires_in(Duration::from_secs(59)))
        .config(|c| c.min_expires_in = "60s")
        .build()
        .await;
    let daemon = s.daemon();
    let m = daemon
        .wait_metrics("three answers refused as transient", |m| {
            m.refreshes(id, "transient") >= 3
        })
        .await;
    assert_eq!(m.refreshes(id, "success"), 0);
    assert_eq!(m.refreshes(id, "permanent"), 0);
    assert!(s.fake.tokens_issued(id) >= 3, "WeChat answered each call");
    assert!(s.tokens().await.is_empty(), "a refused answer was stored");
    let expected = "WeChat's answer is not valid: expires_in 59 is below wechat.min_expires_in \
                    (1m); such a credential would be refreshed every few seconds";
    s.wait_for_lease(id, "the refusal noted", |l| {
        l.last_error.as_deref() == Some(expected)
    })
    .await;
    assert!(
        daemon.raw_lines().iter().any(|l| l.contains(expected)),
        "the refusal is logged"
    );

    s.fake.set_expires_in(id, Duration::from_secs(7200));
    let docs = s.wait_for_tokens(1).await;
    assert_eq!(docs[0].get_i32("expires_in"), Ok(7200));
    let served = s.reader.latest(&s.account_id()).await.expect("a token");
    assert!(s.fake.is_accepted(served.secret()));
    s.wait_for_lease(id, "the error cleared", |l| l.last_error.is_none())
        .await;
    assert!(daemon.metrics().await.refreshes(id, "success") >= 1);
    daemon.assert_logs_free_of(&s.secrets());
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
    let mut s = Scenario::new()
        .account(TestAccount::new(
            "wx00000000chaosmdb1",
            "chaos-mongo-secret",
        ))
        .app(|app| {
            app.expires_in(Duration::from_secs(6))
                .overlap(Duration::from_secs(30))
        })
        .config(|c| {
            c.margin = "3s";
            c.lease_duration = "6s";
            c.lease_renew_interval = "1s";
        })
        .private_mongo()
        .build()
        .await;
    s.wait_for_tokens(1).await;

    // The sleeps below are the faults themselves: how long MongoDB stays
    // up, dead or frozen, at moments that vary with the round.
    for round in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(700 + 600 * round)).await;
        s.mongo().signal("KILL");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.mongo().restart();
        // (At least 0 documents: the first read once MongoDB answers.)
        let before = s.wait_for_tokens(0).await.len();
        s.wait_for_tokens(before + 1).await;
    }
    // Frozen (slow) MongoDB: every request hangs for 3 s.
    s.mongo().signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.mongo().signal("CONT");
    let before = s.wait_for_tokens(0).await.len();
    let docs = s.wait_for_tokens(before + 1).await;
    let id = s.id();
    let issued = s.fake.issued_tokens(id);
    assert_sound(&docs, &issued);
    assert_eq!(
        s.fake.token_calls(id) as usize,
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
    assert!(s.fake.is_accepted(newest));
    assert!(s
        .daemon()
        .raw_lines()
        .iter()
        .all(|l| !l.contains("panicked")));
}

#[tokio::test]
async fn killing_the_daemon_at_random_moments_never_leaves_a_dead_token_newest() {
    // WeChat's proportions, shrunk: the old token outlives a restart.
    let s = Scenario::new()
        .account(TestAccount::new(
            "wx0000000chaoskill1",
            "chaos-kill-secret1",
        ))
        .app(|app| {
            app.expires_in(Duration::from_secs(8))
                .overlap(Duration::from_secs(30))
        })
        .config(|c| c.margin = "4s")
        .replicas(0)
        .build()
        .await;
    let id = s.id();
    let mut rng_state = 0x9e37_79b9_u64;
    let mut next_pause = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        Duration::from_millis(300 + rng_state % 2500)
    };
    const KILLS: usize = 8;
    let mut samples = 0;
    let started = Instant::now();
    for round in 0..KILLS {
        let daemon = s.spawn(&format!("kill9-{round}"));
        let deadline = Instant::now() + next_pause();
        while Instant::now() < deadline {
            if let Ok(token) = s.reader.latest(&s.account_id()).await {
                assert!(
                    s.fake.is_accepted(token.secret()),
                    "round {round}: the newest stored token is dead"
                );
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        daemon.signal("KILL");
        drop(daemon);
    }
    let docs = s.tokens().await;
    let issued = s.fake.issued_tokens(id);
    assert_sound(&docs, &issued);
    // Nothing WeChat issued went missing, except at most the one token a
    // daemon had fetched but not yet stored when it was killed.
    let lost = issued.len() - docs.len();
    assert!(
        lost <= KILLS,
        "{lost} issued tokens never stored after {KILLS} kills"
    );
    // And what is newest now is alive.
    let newest = docs
        .last()
        .expect("at least one token stored")
        .get_str("access_token")
        .expect("token");
    assert!(
        s.fake.is_accepted(newest),
        "the newest stored token is dead"
    );
    eprintln!(
        "kill -9 loop: {KILLS} kills in {:?}, {samples} samples, {} generations, {} WeChat calls",
        started.elapsed(),
        docs.len(),
        s.fake.token_calls(id)
    );
}

/// Every refusal in WeChat's errcode family from `shared/design.md` §1 is
/// classified (a permanent outcome, nothing stored, one call) and the error
/// an operator sees in `status` names what fixes it.
#[tokio::test]
async fn every_refusal_is_classified_and_names_its_fix() {
    let cases: [(i64, &str); 9] = [
        (40243, "unfreeze it"),
        (40164, "IP白名单"),
        (61004, "IP白名单"),
        (89501, "retrying every 5 minutes"),
        (89506, "no call from it for 24 hours"),
        (89507, "no call from it for an hour"),
        (48001, "not authorized for the API"),
        (50002, "restricted by WeChat"),
        (61024, "not allowed for this account"),
    ];
    let mut builder = Scenario::new();
    for (code, _) in cases {
        let id = format!("wxrefused{code:09}");
        builder = builder
            .account(TestAccount::new(&id, &format!("refused-secret-{code}")))
            .sticky_fault(&id, Fault::Errcode(code));
    }
    let s = builder.build().await;
    for (code, fix) in cases {
        let id = format!("wxrefused{code:09}");
        let lease = s
            .wait_for_lease(&id, &format!("the refusal {code} noted"), |l| {
                l.last_error.is_some()
            })
            .await;
        let error = lease.last_error.expect("noted");
        assert!(error.contains(&code.to_string()), "{error}");
        assert!(error.contains(fix), "{code}: {error}");
        assert_eq!(s.fake.token_calls(&id), 1, "{code} was retried at once");
        assert!(s.tokens_of(&id).await.is_empty(), "{code} stored something");
    }
    let m = s.daemon().metrics().await;
    for (code, _) in cases {
        let id = format!("wxrefused{code:09}");
        assert_eq!(m.refreshes(&id, "permanent"), 1, "{code}");
        assert_eq!(m.refreshes(&id, "transient"), 0, "{code}");
    }
}
