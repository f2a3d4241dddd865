//! What operators see: health, readiness, Prometheus metrics, `health`
//! for container checks, and logs that name accounts and hide secrets.

use std::time::Duration;

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat, Fault};

const WAIT: Duration = Duration::from_secs(30);

struct Ops {
    db: TestDb,
    fake: FakeWechat,
    good: TestAccount,
    bad: TestAccount,
}

impl Ops {
    /// `good` fails twice (transient) then works; `bad` is refused (40164).
    async fn new(test: &str) -> Ops {
        let db = TestDb::new(test).await;
        let fake = FakeWechat::start().await.expect("fake");
        let good = TestAccount::new("wx0000000000opsgood", "ops-good-secret-01");
        let bad = TestAccount::new("wx00000000000opsbad", "ops-bad-secret-002");
        fake.add_app(AppConfig::new(&good.id, &good.secret));
        fake.add_app(AppConfig::new(&bad.id, &bad.secret));
        fake.push_faults(&good.id, [Fault::Errcode(-1), Fault::Http(502)]);
        fake.set_sticky_fault(&bad.id, Some(Fault::Errcode(40164)));
        Ops {
            db,
            fake,
            good,
            bad,
        }
    }

    fn config(&self) -> TestConfig {
        TestConfig::new(
            &self.db.uri,
            &self.db.name,
            &self.fake.url(),
            &[self.good.clone(), self.bad.clone()],
        )
    }

    async fn wait_until_settled(&self, daemon: &TestDaemon) {
        eventually(WAIT, "the good account's token", || async {
            (!self.db.docs("access_tokens").await.is_empty()).then_some(())
        })
        .await;
        daemon.wait_for_log("refused by WeChat", WAIT).await;
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("admin answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

#[tokio::test]
async fn metrics_match_what_happened() {
    let ops = Ops::new("admin_metrics").await;
    let daemon = TestDaemon::spawn(&ops.config());
    let addr = daemon.admin_addr().await;
    ops.wait_until_settled(&daemon).await;
    let (status, m) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let good = format!(r#"account="{}",kind="access_token""#, ops.good.id);
    let bad = format!(r#"account="{}",kind="access_token""#, ops.bad.id);
    assert_eq!(
        sample(&m, &format!("wxtokend_token_generation{{{good}}}")),
        1.0
    );
    let left = sample(
        &m,
        &format!("wxtokend_token_seconds_until_expiry{{{good}}}"),
    );
    assert!((7000.0..=7200.0).contains(&left), "{left}");
    assert!(sample(&m, &format!("wxtokend_token_age_seconds{{{good}}}")) < 60.0);
    assert_eq!(
        sample(
            &m,
            &format!(r#"wxtokend_refresh_total{{{good},outcome="transient"}}"#)
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"wxtokend_refresh_total{{{good},outcome="success"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"wxtokend_refresh_total{{{bad},outcome="permanent"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(&m, &format!("wxtokend_upstream_calls_total{{{good}}}")),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("wxtokend_upstream_duration_seconds_count{{{good}}}")
        ),
        3.0
    );
    assert_eq!(f64::from(ops.fake.token_calls(&ops.good.id)), 3.0);
    assert_eq!(
        sample(
            &m,
            &format!(r#"wxtokend_quota_calls_today{{account="{}"}}"#, ops.good.id)
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"wxtokend_lease_held{{account="{}"}}"#, ops.good.id)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"wxtokend_mongodb_duration_seconds_count{operation="insert_credential"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            r#"wxtokend_mongodb_duration_seconds_count{operation="permit"}"#
        ) >= 4.0
    );
    // No token series for an account that never had one.
    assert!(!m.contains(&format!("wxtokend_token_generation{{{bad}}}")));
    for secret in [&ops.good.secret, &ops.bad.secret] {
        assert!(!m.contains(secret.as_str()));
    }
}

#[tokio::test]
async fn readiness_waits_for_every_account_and_health_command_reports_it() {
    let ops = Ops::new("admin_ready").await;
    let mut config = ops.config();
    config.permanent_error_retry = "1s";
    let daemon = TestDaemon::spawn(&config);
    let addr = daemon.admin_addr().await;
    ops.wait_until_settled(&daemon).await;

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["without_valid_token"], serde_json::json!([ops.bad.id]));

    let dir = tempfile::tempdir().expect("tempdir");
    let health = |ready: bool| {
        let mut args = vec!["health"];
        if ready {
            args.push("--ready");
        }
        let mut cmd = config.command(&dir, &args);
        cmd.env("WXTOKEND__ADMIN__LISTEN", addr.to_string());
        cmd.output().expect("run health")
    };
    assert!(health(false).status.success());
    let not_ready = health(true);
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains(&ops.bad.id));

    // The operator fixes the account (here: WeChat accepts it again).
    ops.fake.set_sticky_fault(&ops.bad.id, None);
    eventually(WAIT, "/readyz to turn 200", || async {
        (get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert!(health(true).status.success());
}

#[tokio::test]
async fn human_logs_name_the_account_and_never_show_secrets_or_tokens() {
    let ops = Ops::new("admin_logs").await;
    let mut config = ops.config();
    config.log_format = "human";
    config.margin = "1s";
    // Several cycles for the good account: short tokens.
    ops.fake
        .add_app(AppConfig::new(&ops.good.id, &ops.good.secret).expires_in(Duration::from_secs(2)));
    let mut daemon = TestDaemon::spawn(&config);
    eventually(WAIT, "a few generations", || async {
        (ops.db.docs("access_tokens").await.len() >= 3).then_some(())
    })
    .await;
    assert!(daemon.terminate(WAIT).success());
    let lines = daemon.raw_lines();
    assert!(lines.len() > 5);
    let mut secrets = ops.fake.issued_tokens(&ops.good.id);
    secrets.extend([ops.good.secret.clone(), ops.bad.secret.clone()]);
    assert!(secrets.len() >= 5);
    daemon.assert_logs_free_of(&secrets);
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
