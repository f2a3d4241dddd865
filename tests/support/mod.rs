//! Shared test helpers: a real MongoDB-protocol server, the real `wxtokend`
//! binary as a child process, and the fake WeChat (crate `fake-wechat`).
#![allow(dead_code)] // each test binary uses a different part

pub mod daemon;
pub mod mongo;

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`
/// with `what` (a liveness bound, not a performance goal).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores a token the way the daemon does (lease, fenced insert, release):
/// fetched `age` ago, living `lifetime`.
pub async fn store_token(
    store: &wxtokend::Store,
    account: &str,
    value: &str,
    age: Duration,
    lifetime: Duration,
) -> wxtokend_reader::Generation {
    use wxtokend::coordination::Inserted;
    use wxtokend_reader::{AccountId, CredentialKind, RefreshReason};
    let lease = store
        .leases()
        .acquire(
            &AccountId::new(account),
            &"test-writer".into(),
            Duration::from_secs(60),
        )
        .await
        .expect("acquire")
        .expect("the lease is free");
    let fetched = wxtokend::FetchedCredential {
        value: secrecy::SecretString::from(value.to_owned()),
        expires_in: lifetime,
        fetched_at: std::time::SystemTime::now() - age,
    };
    let inserted = lease
        .insert(
            CredentialKind::AccessToken,
            &fetched,
            RefreshReason::Scheduled,
        )
        .await
        .expect("insert");
    lease.release().await.expect("release");
    match inserted {
        Inserted::Stored(generation) => generation,
        Inserted::Fenced => panic!("fenced although the lease was just taken"),
    }
}
