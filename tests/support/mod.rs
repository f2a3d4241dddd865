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
