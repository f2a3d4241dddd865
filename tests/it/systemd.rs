//! The daemon under systemd (`Type=notify`, `WatchdogSec=`), with the test
//! as systemd: it binds the notification socket, and reads `READY=1` and
//! `WATCHDOG=1` there. READY (and `/readyz`) come only once the indexes are
//! in place. The watchdog pings only while the coordinator loop makes
//! progress: a stalled loop stops them (systemd then restarts the replica);
//! a MongoDB outage does not (the daemon keeps what it fetched in memory
//! until MongoDB is back).

use std::time::{Duration, Instant};

use crate::support::notify::NotifySocket;
use crate::support::store::store_token;
use crate::support::{eventually, Scenario, TestAccount, WAIT};

/// `WATCHDOG_USEC`: pings every 1.5 s, none once the loop has made no
/// progress for 3 s (a failed MongoDB operation takes 1 s in the tests).
const WATCHDOG: Duration = Duration::from_secs(6);

fn account() -> TestAccount {
    TestAccount::new("wx000000000systemd", "systemd-secret-0123")
}

/// The longest time between two of `times`, and from the last to now.
fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .chain(times.last().map(Instant::elapsed))
        .max()
        .unwrap_or_default()
}

// Stalls the coordinator with an injected fault: `--features failpoints`.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn watchdog_pings_follow_ready_and_stop_when_the_coordinator_stalls() {
    let notify = NotifySocket::bind();
    let env = notify.env(Some(WATCHDOG));
    let s = Scenario::new()
        .account(account())
        .config(move |c| {
            c.env.extend(env);
            // Six turns of the loop (3 s), then it hangs for good.
            c.env
                .push(("FAILPOINTS", "coordinator-stall=6*off->return".into()));
        })
        .build()
        .await;
    let ready = notify.wait_for("READY=1", 1).await[0];
    let pings = notify.wait_for("WATCHDOG=1", 2).await;
    assert!(pings[0] >= ready, "{:?}", notify.messages());

    // No ping for a whole watchdog interval: systemd would kill it now.
    eventually(WAIT, "the pings to stop", || async {
        (longest_gap(&notify.times_of("WATCHDOG=1")) >= WATCHDOG).then_some(())
    })
    .await;
    let daemon = s.daemon();
    daemon
        .wait_for_line("the watchdog error", |l| {
            l["level"] == "ERROR"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no progress for half the watchdog interval"))
        })
        .await;
    // Without systemd, /healthz says so too (once the loop is stuck for
    // longer than a renew interval plus 5 s), for Kubernetes or Docker.
    let body = eventually(WAIT, "/healthz 503", || async {
        let (status, body) = daemon.get("/healthz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(
        body.starts_with("stuck: the coordinator loop has made no progress"),
        "{body}"
    );
    let warned = daemon.logs().into_iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("WatchdogSec is too short"))
    });
    assert!(warned, "no warning about a 6 s WatchdogSec");
}

/// A MongoDB operation that never ends (the heartbeat, hung by an injected
/// fault from the third turn on) is cut off (after 5 s here) and counted as
/// failed: the loop goes on renewing the lease, the account keeps being
/// refreshed, the watchdog pings go on and `/healthz` stays 200.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_mongodb_operation_that_hangs_is_cut_off_and_the_loop_goes_on() {
    // What these settings need (2 x (5 s + 5 s)): pings every 5 s.
    let watchdog = Duration::from_secs(20);
    let notify = NotifySocket::bind();
    let env = notify.env(Some(watchdog));
    let s = Scenario::new()
        .account(account())
        .app(|app| app.expires_in(Duration::from_secs(8)))
        .config(move |c| {
            c.env.extend(env);
            c.margin = "5s";
            c.env
                .push(("FAILPOINTS", "heartbeat-hang=2*off->return".into()));
        })
        .build()
        .await;
    s.wait_for_tokens(1).await;
    let daemon = s.daemon();
    let hung = daemon
        .wait_metrics("two heartbeats cut off", |m| {
            m.mongodb_errors("heartbeat") >= 2
        })
        .await;
    let hung_at = Instant::now();
    let renewals = hung.mongodb_ops("renew");
    daemon
        .wait_metrics("two more renewals", |m| {
            m.mongodb_ops("renew") >= renewals + 2
        })
        .await;
    // Refreshes go on: a new token every 3 s (8 s lives, 5 s margin).
    let stored = s.db.count("access_tokens").await;
    s.wait_for_tokens(usize::try_from(stored).expect("count") + 1)
        .await;
    let pings: Vec<Instant> = std::iter::once(hung_at)
        .chain(
            notify
                .times_of("WATCHDOG=1")
                .into_iter()
                .filter(|t| *t > hung_at),
        )
        .collect();
    let gap = longest_gap(&pings);
    assert!(
        gap < watchdog / 2,
        "no ping for {gap:?} while the heartbeat hung"
    );
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let lease = s.lease(s.id()).await.expect("the lease");
    assert!(
        lease.valid && lease.holder == "test-instance",
        "lost: {lease:?}"
    );
    let warned = daemon.logs().into_iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("WatchdogSec is too short"))
    });
    assert!(
        !warned,
        "a warning about a WatchdogSec these settings allow"
    );
}

#[tokio::test]
async fn watchdog_pings_go_on_while_mongodb_is_down() {
    let notify = NotifySocket::bind();
    let env = notify.env(Some(WATCHDOG));
    let mut s = Scenario::new()
        .account(account())
        .config(move |c| c.env.extend(env))
        .private_mongo()
        .build()
        .await;
    notify.wait_for("READY=1", 1).await;
    s.wait_for_tokens(1).await;
    s.mongo().stop();
    let stopped = Instant::now();
    let daemon = s.daemon();
    daemon
        .wait_metrics("three failed lease renewals", |m| {
            m.get("wxtokend_mongodb_errors_total", &[("operation", "renew")])
                .unwrap_or_default()
                >= 3.0
        })
        .await;
    // Pings go on through the outage: six more, none late.
    let since = |times: Vec<Instant>| -> Vec<Instant> {
        std::iter::once(stopped)
            .chain(times.into_iter().filter(|t| *t > stopped))
            .collect()
    };
    eventually(WAIT, "six pings during the outage", || async {
        (since(notify.times_of("WATCHDOG=1")).len() > 6).then_some(())
    })
    .await;
    let gap = longest_gap(&since(notify.times_of("WATCHDOG=1")));
    assert!(
        gap < WATCHDOG,
        "no ping for {gap:?} while MongoDB was down: systemd would have killed the daemon"
    );
    assert_eq!(daemon.get("/healthz").await.0, 200);
}

/// Until its indexes are in place the daemon is neither READY for systemd
/// nor ready on `/readyz`, even with a valid token stored: here MongoDB is
/// down when it starts, and it retries the indexes until MongoDB is back.
#[tokio::test]
async fn no_ready_and_no_readyz_before_the_indexes_are_in_place() {
    let notify = NotifySocket::bind();
    let env = notify.env(None);
    let mut s = Scenario::new()
        .account(account())
        .config(move |c| c.env.extend(env))
        .private_mongo()
        .replicas(0)
        .build()
        .await;
    let id = s.id().to_owned();
    store_token(
        &s.db,
        &id,
        "STORED-TOKEN",
        Duration::ZERO,
        Duration::from_secs(7200),
    )
    .await;
    s.mongo().stop();

    let daemon = s.spawn("test-instance");
    daemon
        .wait_metrics("three failed attempts at the indexes", |m| {
            m.get(
                "wxtokend_mongodb_errors_total",
                &[("operation", "ensure_indexes")],
            )
            .unwrap_or_default()
                >= 3.0
        })
        .await;
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("indexes are created first"), "{body}");
    let said = notify.settle().await;
    assert!(!said.iter().any(|m| m.has("READY=1")), "{said:?}");

    s.mongo().restart();
    notify.wait_for("READY=1", 1).await;
    eventually(WAIT, "/readyz 200", || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}
