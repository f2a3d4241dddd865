//! What operators see: health, readiness, Prometheus metrics, `health`
//! for container checks, and logs that name accounts and hide secrets.

use std::time::Duration;

use fake_wechat::Fault;

use crate::support::metrics::Metrics;
use crate::support::scenario::ScenarioBuilder;
use crate::support::{eventually, Scenario, TestAccount, TestDaemon, WAIT};

const GOOD: &str = "wx0000000000opsgood";
const BAD: &str = "wx00000000000opsbad";

/// `GOOD` fails twice (transient) then works; `BAD` is refused (40164).
fn good_and_bad() -> ScenarioBuilder {
    Scenario::new()
        .account(TestAccount::new(GOOD, "ops-good-secret-01"))
        .account(TestAccount::new(BAD, "ops-bad-secret-002"))
        .faults(GOOD, [Fault::Errcode(-1), Fault::Http(502)])
        .sticky_fault(BAD, Fault::Errcode(40164))
}

/// Waits until the good account's token is stored and the bad one was refused.
async fn settled(daemon: &TestDaemon) -> Metrics {
    daemon
        .wait_metrics("the good token stored and the bad account refused", |m| {
            m.generation(GOOD) == Some(1) && refusals_settled(m)
        })
        .await
}

/// The bad account was refused at least once and its last refusal is
/// counted: a call's latency is recorded when the call ends, its outcome a
/// moment later, so a scrape in between sees one more call than outcomes.
fn refusals_settled(m: &Metrics) -> bool {
    let bad = m.refreshes(BAD, "permanent");
    bad >= 1 && m.access_token_calls_ended() == 3 + bad
}

/// By default only the series the alert rules use name an account: at
/// 10,000 accounts each one more is 10,000 more lines per scrape.
#[tokio::test]
async fn by_default_accounts_are_named_only_in_the_series_alerts_use() {
    let s = good_and_bad()
        .config(|c| c.account_series = "alerting")
        .build()
        .await;
    let m = s
        .daemon()
        .wait_metrics("the good token stored and the bad account refused", |m| {
            // The outcome is counted when WeChat answers, the token's
            // series once it is stored.
            m.token("wxtokend_token_seconds_until_expiry", GOOD)
                .is_some()
                && refusals_settled(m)
        })
        .await;
    let mut named: Vec<&str> = m
        .text()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(GOOD))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    named.sort_unstable();
    named.dedup();
    assert_eq!(
        named,
        [
            "wxtokend_lease_held",
            "wxtokend_quota_calls_today",
            "wxtokend_refresh_total",
            "wxtokend_token_seconds_until_expiry",
        ],
        "{}",
        m.text()
    );
    // The latency histograms are per kind: `refusals_settled` found every
    // call of both accounts in the one `kind` series.
}

#[tokio::test]
async fn metrics_match_what_happened() {
    let s = good_and_bad().build().await;
    let m = settled(s.daemon()).await;
    let left = m
        .token("wxtokend_token_seconds_until_expiry", GOOD)
        .expect("time left");
    assert!((7000.0..=7200.0).contains(&left), "{left}");
    let age = m.token("wxtokend_token_age_seconds", GOOD).expect("age");
    assert!(age < 60.0, "{age}");
    assert_eq!(m.refreshes(GOOD, "transient"), 2);
    assert_eq!(m.refreshes(GOOD, "success"), 1);
    assert_eq!(m.refreshes(BAD, "permanent"), 1);
    assert_eq!(m.upstream_calls(GOOD), 3);
    // Latency per kind, both accounts together (3 calls for the good one and
    // the bad one's refusals): `settled` waited for that.
    assert_eq!(s.fake.token_calls(GOOD), 3);
    assert_eq!(
        m.quota("wxtokend_quota_calls_today", GOOD, "token"),
        Some(3.0)
    );
    // Ceilings per WeChat API, and a stop series only for a stopped API.
    let limit = |api| m.get("wxtokend_quota_daily_call_limit", &[("api", api)]);
    assert_eq!(limit("token"), Some(1800.0));
    assert_eq!(limit("jsapi_ticket"), Some(1800.0));
    assert_eq!(m.quota("wxtokend_quota_exhausted", GOOD, "token"), None);
    assert!(m.lease_held(GOOD));
    assert_eq!(m.mongodb_ops("insert_credential"), 1);
    assert!(m.mongodb_ops("permit") >= 4, "{}", m.text());
    // No token series for an account that never had one.
    assert_eq!(m.generation(BAD), None);
    // Nor any Open Platform series without `[open_platform]`.
    let open_platform = m
        .text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with("wxtokend_open_platform"));
    assert_eq!(open_platform, None, "{}", m.text());
    for secret in [&s.accounts[0].secret, &s.accounts[1].secret] {
        assert!(!m.text().contains(secret.as_str()));
    }
}

#[tokio::test]
async fn readiness_waits_for_every_account_and_health_command_reports_it() {
    let s = good_and_bad()
        .config(|c| c.permanent_error_retry = "1s")
        .build()
        .await;
    let daemon = s.daemon();
    settled(daemon).await;

    assert_eq!(daemon.get("/healthz").await.0, 200);
    // Readiness is checked every renew interval: wait for a check that
    // saw the good token.
    let expected = serde_json::json!({ "ready": false, "without_valid_token": [BAD] });
    eventually(WAIT, "readiness to name only the bad account", || async {
        let (status, body) = daemon.get("/readyz").await;
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status == 503 && body == expected).then_some(())
    })
    .await;

    let addr = daemon.admin_addr().await.to_string();
    let health = |ready: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["health"];
        if ready {
            args.push("--ready");
        }
        let mut cmd = s.config.command(&dir, &args);
        cmd.env("WXTOKEND__ADMIN__LISTEN", &addr);
        crate::support::daemon::output(&mut cmd)
    };
    assert_eq!(health(false).0, 0);
    let (code, _, err) = health(true);
    assert_eq!(code, 1);
    assert!(err.contains(BAD), "{err}");

    // The operator fixes the account (here: WeChat accepts it again).
    s.fake.set_sticky_fault(BAD, None);
    eventually(WAIT, "/readyz to turn 200", || async {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(health(true).0, 0);
}

/// The log itself is the subject here: human-readable lines that name the
/// account and never show a secret or a token.
#[tokio::test]
async fn human_logs_name_the_account_and_never_show_secrets_or_tokens() {
    // Several cycles for the good account: short tokens.
    let mut s = good_and_bad()
        .app_for(GOOD, |app| app.expires_in(Duration::from_secs(2)))
        .config(|c| {
            c.log_format = "human";
            c.margin = "1s";
        })
        .build()
        .await;
    s.wait_for_tokens(3).await;
    assert!(s.daemon_mut().terminate(WAIT).success());
    let stored = s.tokens().await.len();
    let lines = s.daemon().raw_lines();
    s.daemon().assert_logs_free_of(&s.secrets());
    // One line per stored token, naming its account.
    let announced: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("stored a new access_token"))
        .collect();
    assert_eq!(announced.len(), stored, "{lines:#?}");
    for line in announced {
        assert!(line.contains(&format!("account={GOOD}")), "{line}");
    }
    for line in &lines {
        if line.contains("access_token") && !line.contains("starting") {
            assert!(
                line.contains("account="),
                "a line about a token without its account: {line}"
            );
        }
    }
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI colours in a non-terminal log"
    );
}

/// Probes are answered from memory: with MongoDB frozen, a burst of
/// `/readyz` answers at once with the last check; once the check is older
/// than a lease period, the daemon says it is not ready, and when MongoDB
/// answers again it is ready again.
#[tokio::test]
async fn readiness_is_answered_from_memory_and_goes_stale_without_mongodb() {
    let mut s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(3600)))
        .private_mongo()
        .build()
        .await;
    eventually(WAIT, "ready", || async {
        (s.daemon().get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    s.mongo().signal("STOP");
    for _ in 0..20 {
        let (status, body) = s.daemon().get("/readyz").await;
        assert_eq!(status, 200, "a probe waited for MongoDB: {body}");
    }
    let body = eventually(WAIT, "readiness to go stale", || async {
        let (status, body) = s.daemon().get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("no readiness check"), "{body}");
    s.mongo().signal("CONT");
    eventually(WAIT, "ready again", || async {
        (s.daemon().get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}

/// A client that never finishes its request headers is disconnected.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Scenario::new().accounts(1).build().await;
    let addr = s.daemon().admin_addr().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: wxtokend\r\n")
        .await
        .expect("write");
    // Whatever it answers (perhaps 408), the server then closes the connection.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was still open after {WAIT:?}");
}
