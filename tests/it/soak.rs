//! Soak (opt-in): 100 accounts with 4-second tokens for SOAK_SECONDS
//! (default 60): at least 1,000 refresh cycles. Every sample, every account's
//! newest stored token must be one WeChat accepts, and memory must stay flat.
//!
//!   SOAK_SECONDS=120 scripts/test.sh --test it soak:: -- --ignored --nocapture

use std::time::{Duration, Instant};

use crate::support::daemon::{TestAccount, TestConfig, TestDaemon};
use crate::support::eventually;
use crate::support::mongo::TestDb;
use fake_wechat::{AppConfig, FakeWechat};
use wxtokend::domain::AccountId;
use wxtokend::reader::Reader;

#[tokio::test]
#[ignore = "soak test: minutes long; run with --ignored"]
async fn a_hundred_accounts_for_a_thousand_cycles_without_a_gap() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let db = TestDb::new("soak").await;
    let fake = FakeWechat::start().await.expect("fake");
    let accounts: Vec<TestAccount> = (0..100)
        .map(|i| TestAccount::new(&format!("wxsoak{i:011}"), &format!("soak-secret-{i:04}")))
        .collect();
    for a in &accounts {
        fake.add_app(
            AppConfig::new(&a.id, &a.secret)
                .expires_in(Duration::from_secs(4))
                .overlap(Duration::from_secs(10)),
        );
    }
    let mut config = TestConfig::new(&db.uri, &db.name, &fake.url(), &accounts);
    config.margin = "2s";
    let daemon = TestDaemon::spawn(&config);
    let reader = Reader::connect(&db.uri, &db.name).await.expect("reader");
    let ids: Vec<AccountId> = accounts.iter().map(|a| AccountId::new(&a.id)).collect();
    eventually(
        Duration::from_secs(60),
        "every account's first token",
        || async {
            for id in &ids {
                reader.latest(id).await.ok()?;
            }
            Some(())
        },
    )
    .await;

    let started = Instant::now();
    let (mut samples, mut gaps) = (0u64, 0u64);
    let mut rss_after_warmup = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        for id in &ids {
            match reader.latest(id).await {
                Ok(token) if fake.is_accepted(token.secret()) => {}
                _ => gaps += 1,
            }
            samples += 1;
        }
        if rss_after_warmup.is_none() && started.elapsed() > Duration::from_secs(10) {
            rss_after_warmup = daemon.rss_kib();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let generations = db.docs("access_tokens").await.len();
    let calls: u32 = accounts.iter().map(|a| fake.token_calls(&a.id)).sum();
    let rss_end = daemon.rss_kib().expect("rss");
    let rss_warm = rss_after_warmup.expect("rss after warm-up");
    eprintln!(
        "soak: {seconds} s, 100 accounts, {generations} generations, {calls} WeChat calls, \
         {samples} samples, {gaps} gaps, RSS {rss_warm} KiB after 10 s -> {rss_end} KiB at the end"
    );
    assert_eq!(gaps, 0, "a moment without a valid token");
    assert!(
        generations >= 1000 || seconds < 60,
        "only {generations} cycles"
    );
    assert!(
        calls as usize <= generations + 100,
        "more calls than cycles"
    );
    assert!(
        rss_end <= rss_warm + rss_warm / 4,
        "memory grew: {rss_warm} -> {rss_end} KiB"
    );
}
