//! Shared test helpers.
//!
//! - [`scenario`]: a whole setup in one expression: database, fake WeChat,
//!   running daemons, a reader.
//! - [`mongo`]: the test MongoDB-protocol server and fresh databases on it.
//! - [`daemon`]: the real `wxtokend` binary as a child process, its
//!   configuration, and its admin endpoints.
//! - [`metrics`]: the daemon's `/metrics`, parsed.
//! - [`store`]: the only file that uses the daemon's internal store API.
//! - [`redis`]: the test Redis server (the mirror tests) and a view of it.
//! - [`served`]: a test server run by its script, shared or a test's own.
//! - [`tls`]: a throwaway CA and certificates; [`notify`]: systemd's
//!   notification socket.

pub mod daemon;
pub mod metrics;
pub mod mongo;
pub mod notify;
pub mod redis;
pub mod scenario;
pub mod served;
pub mod store;
pub mod tls;

use std::time::{Duration, Instant};

pub use daemon::{TestAccount, TestConfig, TestDaemon};
pub use scenario::Scenario;

/// How long a wait may take before the test fails: a liveness bound for a
/// loaded 2-core CI machine, not a performance goal.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`
/// with `what`.
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
