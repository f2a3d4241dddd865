//! Reads the WeChat credentials that the `wxtokend` daemon keeps fresh in
//! MongoDB. This is the crate a business service depends on: it compiles the
//! MongoDB driver and a few small crates, nothing of the daemon.
//!
//! ```no_run
//! use wxtokend_reader::{AccountId, Reader};
//!
//! # async fn demo() -> Result<(), wxtokend_reader::ReadError> {
//! let reader = Reader::connect("mongodb://127.0.0.1:27017", "wechat")
//!     .await?
//!     .with_cache(std::time::Duration::from_secs(30));
//! let token = reader.latest(&AccountId::new("wx1234567890abcdef")).await?;
//! let url = format!(
//!     "https://api.weixin.qq.com/cgi-bin/getcallbackip?access_token={}",
//!     token.secret()
//! );
//! # let _ = url;
//! # Ok(())
//! # }
//! ```
//!
//! The query is the one every language runs (see the README):
//! `find({app_id, expires_at: {$gt: now}}).sort({generation: -1}).limit(1)`;
//! for the token an Open Platform component holds for an account that
//! authorized it, the same with `component_appid` too
//! ([`Reader::latest_authorizer`]).
//!
//! - [`Reader`]: the newest valid credential of an account or an
//!   authorizer, cached or not; reports of rejected tokens; JS-SDK
//!   signatures.
//! - [`Credentials`]: the queries on the credential collections, for tools
//!   that want them without the reader's cache.
//! - [`document`] and [`requests`]: the shape of the documents, in one place
//!   (the daemon writes what this crate reads).
//! - [`jssdk`]: the JS-SDK signature algorithm.

mod connect;
mod credentials;
pub mod document;
mod domain;
pub mod jssdk;
mod reader;
mod refused;
pub mod requests;

pub use connect::{client_options, connect, connection_hint, open, ConnectError, ConnectOptions};
pub use credentials::{Credentials, QueryError};
pub use domain::{AccountId, Credential, CredentialKind, Generation, Owner, RefreshReason};
pub use jssdk::JsSdkConfig;
pub use reader::{ReadError, Reader, HANDOVER_WAIT, MAX_CACHE_AGE};
pub use refused::Refused;
