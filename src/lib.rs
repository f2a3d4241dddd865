//! wxtokend keeps WeChat credentials fresh in MongoDB so that every business
//! service reads a valid token with one indexed query, and only one process
//! ever talks to WeChat's token endpoint.
//!
//! The crate is both the daemon and the small library business code imports:
//!
//! - [`domain`]: the vocabulary: account ids, credential kinds, generations, reasons.
//! - [`config`]: typed settings, loaded in layers and validated with key names.
//! - [`wechat`]: the upstream HTTP client and the one errcode classification table.
//! - [`store`]: MongoDB documents, indexes and queries (the only module that speaks MongoDB).
//! - [`refresh`]: one task per held account: when to refresh, retries and backoff.
//! - [`coordinator`]: leases: which replica refreshes which account.
//! - [`daemon`]: wires the parts together and owns shutdown.
//! - [`reader`]: what Rust business code uses to read the newest valid token.
//! - [`jssdk`]: JS-SDK signatures for pages inside WeChat.
//! - [`status`]: the per-account overview behind `wxtokend status`.
//! - [`admin`]: the admin HTTP server: health, readiness, metrics.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: logging setup.

pub mod admin;
pub mod config;
pub mod coordinator;
pub mod daemon;
pub mod domain;
pub mod jssdk;
pub mod metrics;
pub mod reader;
pub mod refresh;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod wechat;

/// Property-test case count: `default`, or `PROPTEST_CASES` for a longer,
/// still bounded run.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
