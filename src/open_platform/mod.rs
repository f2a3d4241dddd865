//! WeChat Open Platform (第三方平台): a platform ("component") that holds
//! credentials on behalf of the accounts that authorized it.
//!
//! - [`crypto`]: WeChat's message encryption (消息加解密), with which the
//!   platform's callback URL receives `component_verify_ticket` and the
//!   authorization events.
//!
//! Nothing here is wired into the daemon yet (issue 15, later steps).

pub mod crypto;

pub use crypto::{CryptoError, KeyRole, MessageCrypto};
