//! wxtokend keeps WeChat credentials fresh in MongoDB so that every business
//! service reads a valid token with one indexed query, and only one process
//! ever talks to WeChat's token endpoint. Business code reads with the
//! `wxtokend-reader` crate; this crate is the daemon and its command line.
//!
//! The map, top-down (see ARCHITECTURE.md):
//!
//! - `config`: typed settings, loaded in layers, validated with key names.
//! - `daemon`: wires the parts together and owns shutdown.
//! - `coordinator`: which replica refreshes which account (lease sharing).
//! - `refresh`: one refresher per credential of a held account: its decisions
//!   (`refresh::machine`, no I/O) and the loop that performs them.
//! - [`coordination`]: leases in MongoDB; a held [`Lease`] is the only way to
//!   get a permit for a WeChat call or to write a credential.
//! - [`store`]: the database handle, the server's clock (`clock`), indexes.
//! - `wechat`: the upstream HTTP client and the one errcode table.
//! - `mirror`: Redis mirrors, each stored credential written in the key
//!   layouts of the SDKs teams use (WxJava, silenceper, wechatpy).
//! - `status`, `admin`, `metrics`, `telemetry`: what operators see;
//!   `watchdog`: systemd's, pinged while the coordinator makes progress.
//! - [`quota`]: WeChat's own API quotas of an account, shown and cleared
//!   with a stored token (`wxtokend quota`).
//! - [`open_platform`]: WeChat Open Platform (第三方平台) support: the
//!   callback messages' crypto and events, the verify tickets in MongoDB and
//!   the callback receiver (authorization events not acted on yet).
//! - `http`: the accept loop the admin server and the callback receiver share.
//! - `fuzzing`: entry points for the fuzz targets in `fuzz/` (hidden, unsupported).

mod admin;
mod clock;
mod config;
pub mod coordination;
mod coordinator;
mod daemon;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod metrics;
mod mirror;
pub mod open_platform;
pub mod quota;
mod refresh;
mod status;
pub mod store;
mod subject;
mod telemetry;
mod watchdog;
mod wechat;

pub use admin::{probe, ProbeError};
pub use config::{
    effective as effective_config, ConfigError, ConfigFile, EnvSource, LogSettings, MongoSettings,
    Scope, Settings,
};
pub use coordination::{Lease, LeaseId, Leases};
pub use daemon::{
    all_indexes, check_store, connect_store, open_platform_privileges, privileges_needed,
    shutdown_signal, CheckedIndexes, Daemon, DaemonError,
};
pub use mirror::{ping as ping_mirror, Health as MirrorHealth};
pub use status::{
    collect as collect_status, mirror_lines, mirrors as mirror_status, render as render_status,
    render_mirrors, AccountStatus,
};
pub use store::{Store, StoreError};
pub use telemetry::init as init_logging;
pub use wechat::{Api, FetchedCredential};

/// A named place where the test suite can inject a fault (`FAILPOINTS`
/// environment variable, `failpoints` feature); nothing in other builds.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use failpoint;

/// A named place where the test suite can stall a task for good without
/// blocking its thread (`FAILPOINTS=name=return`, or `3*off->return` to
/// let three passes through first); nothing in other builds.
macro_rules! stall_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if (|| {
            fail::fail_point!($name, |_| true);
            false
        })() {
            std::future::pending::<()>().await;
        }
    };
}
pub(crate) use stall_point;

/// Reads `FAILPOINTS` (test builds with the `failpoints` feature only).
pub fn setup_failpoints() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Property-test case count: `default`, or `PROPTEST_CASES` for a longer,
/// still bounded run.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
