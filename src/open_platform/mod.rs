//! WeChat Open Platform (第三方平台): a platform ("component") that holds
//! credentials on behalf of the accounts that authorized it.
//!
//! - [`crypto`]: WeChat's message encryption (消息加解密), with which the
//!   platform's callback URL receives `component_verify_ticket` and the
//!   authorization events.
//! - [`event`]: those pushes, checked and read without I/O
//!   ([`event::verify`]).
//!
//! Nothing here is wired into the daemon yet (issue 15, later steps).

pub mod crypto;
pub mod event;

pub use crypto::{CryptoError, KeyRole, MessageCrypto};
pub use event::{verify, CallbackQuery, Event, Reject};
