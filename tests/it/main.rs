//! Integration tests: the real `wxtokend` binary, a real MongoDB-protocol
//! server and a fake WeChat, seen as operators and business services see
//! them. One test binary; each module is one area of behaviour.
//!
//!   scripts/test.sh --test it                run them all
//!   scripts/test.sh --test it replicas::     one module

mod support;

mod admin;
mod chaos;
mod cli;
mod clock;
mod credentials;
mod daemon;
mod documents;
mod handover;
mod mirror;
mod modes;
mod mongo_auth;
mod mongodb_outage;
mod open_platform;
mod open_platform_connections;
mod open_platform_scale;
mod open_platform_store;
mod permits;
// Needs the daemon built with injected faults: `--features failpoints`
// (scripts/test.sh passes it).
#[cfg(feature = "failpoints")]
mod process;
mod quota;
mod reader;
mod replicas;
mod requests;
mod secrets;
mod soak;
mod systemd;
