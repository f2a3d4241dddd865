//! Shared test helpers: a real MongoDB-protocol server, the real `wxtokend`
//! binary as a child process, and the fake WeChat (crate `fake-wechat`).

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
    store: &wxtokend::store::Store,
    account: &str,
    value: &str,
    age: Duration,
    lifetime: Duration,
) -> wxtokend::domain::Generation {
    use wxtokend::domain::{AccountId, CredentialKind, FetchedCredential, RefreshReason};
    use wxtokend::store::{Inserted, NewFetch};
    let id = AccountId::new(account);
    let holder = "test-writer";
    let grant = store
        .try_acquire(&id, holder, Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("the lease is free");
    let fetched = FetchedCredential {
        value: secrecy::SecretString::from(value.to_owned()),
        expires_in: lifetime,
        fetched_at: std::time::SystemTime::now() - age,
    };
    let new = NewFetch {
        kind: CredentialKind::AccessToken,
        app_id: &id,
        fetched: &fetched,
        reason: RefreshReason::Scheduled,
    };
    let inserted = store
        .insert_fenced(&new, holder, grant)
        .await
        .expect("insert");
    store.release(&id, holder, grant).await.expect("release");
    match inserted {
        Inserted::Stored(generation) => generation,
        Inserted::Fenced => panic!("fenced although the lease was just taken"),
    }
}
