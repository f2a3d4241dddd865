//! WeChat Open Platform (第三方平台): a platform ("component") that holds
//! credentials on behalf of the accounts that authorized it.
//!
//! - [`crypto`]: WeChat's message encryption (消息加解密), with which the
//!   platform's callback URL receives `component_verify_ticket` and the
//!   authorization events.
//! - [`event`]: those pushes, checked and read without I/O
//!   ([`event::verify`]).
//!
//! - [`secretbox`]: refresh tokens and authorization codes sealed at rest.
//!
//! - [`store`]: the platform's collections (so far the verify tickets);
//!   [`directory`]: the authorizers and their state (`authorizers`);
//!   [`secrets`]: their sealed refresh tokens and codes
//!   (`authorizer_secrets`).
//! - `receiver`: the callback receiver, an HTTP listener of its own.
//!
//! The daemon receives and stores verify tickets and keeps the component
//! token fresh (`crate::refresh`, under the component's lease); the
//! receiver keeps authorization events in the directory and the codes
//! sealed, but no authorizer token is fetched yet (issue 15, later steps).

pub mod crypto;
pub mod directory;
pub mod event;
pub(crate) mod receiver;
pub mod secretbox;
pub mod secrets;
pub mod store;

pub use crypto::{CryptoError, KeyRole, MessageCrypto};
pub use event::{verify, CallbackQuery, Event, Reject};
pub use secretbox::{Sealed, SecretBox, Unsealable};
