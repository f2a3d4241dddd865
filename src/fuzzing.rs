//! Entry points for the coverage-guided fuzz targets in `fuzz/` (see the
//! README, "Guarantees"), and for the property tests that run the same
//! checks in CI. Not part of the supported API.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

pub use crate::open_platform::{Event, Reject};
pub use crate::wechat::{
    parse_token_answer, DEFAULT_MIN_EXPIRES_IN, MAX_EXPIRES_IN, MAX_TOKEN_LEN,
};

use crate::open_platform::{event, receiver, MessageCrypto};

/// The message token of the platform every fuzzed push is sent to: that of
/// WeChat's official WXBizMsgCrypt sample (vector A in
/// `open_platform::crypto`'s tests), which also signed vector E, the seed
/// `fuzz/corpus/open_platform_callback/signed-verify-ticket`.
pub const CALLBACK_TOKEN: &str = "spamtest";

/// The platform's EncodingAESKey: vector A's.
pub const CALLBACK_ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// The key before a change, tried when the current one cannot decrypt
/// (vector D's key), so that the fuzzer reaches that path too.
pub const CALLBACK_PREVIOUS_ENCODING_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// The platform's appid: vector A's.
pub const CALLBACK_APPID: &str = "wx2c2769f8efd9abc2";

/// The receiver's clock, in Unix seconds: vector E's timestamp, so that its
/// push is fresh.
pub const CALLBACK_NOW_SECS: u64 = 1_413_192_605;

/// `open_platform.max_message_age`'s default.
pub const CALLBACK_MAX_AGE: Duration = Duration::from_secs(300);

/// The platform above.
pub fn callback_crypto() -> &'static MessageCrypto {
    static CRYPTO: OnceLock<MessageCrypto> = OnceLock::new();
    CRYPTO.get_or_init(|| {
        MessageCrypto::new(
            CALLBACK_TOKEN,
            CALLBACK_ENCODING_AES_KEY,
            Some(CALLBACK_PREVIOUS_ENCODING_AES_KEY),
            CALLBACK_APPID,
        )
        .expect("vectors A and D hold valid settings")
    })
}

/// A fuzzer's input as a push: the query string up to the first newline
/// (a request line holds none), the body after it.
pub fn split_callback_input(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// One push through the receiver's checks, as the receiver makes them:
/// `query` (the raw query string, without `?`) read as the receiver reads
/// it, then [`crate::open_platform::verify`] at [`CALLBACK_NOW_SECS`].
pub fn verify_callback(query: &str, body: &[u8]) -> Result<Event, Reject> {
    let now = UNIX_EPOCH + Duration::from_secs(CALLBACK_NOW_SECS);
    let query = receiver::parse_query(query);
    event::verify(callback_crypto(), &query, body, now, CALLBACK_MAX_AGE)
}

/// The `Encrypt` the receiver reads from `body`, which `msg_signature` must
/// cover; `None` when it reads none.
pub fn callback_encrypt(body: &[u8]) -> Option<String> {
    event::envelope(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds of `fuzz/corpus/open_platform_callback/`: each
    /// `signed-…` one is accepted, each `refused-{reason}…` one refused
    /// for that reason, so that the fuzzer starts on both sides of every
    /// check.
    #[test]
    fn the_callback_seeds_are_accepted_or_refused_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/open_platform_callback");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
            let path = entry.expect("a seed").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
            let data = std::fs::read(&path).expect("a seed");
            let (query, body) = split_callback_input(&data);
            let query = std::str::from_utf8(query).expect("a text query");
            let result = verify_callback(query, body);
            if name.starts_with("signed-") {
                assert!(result.is_ok(), "{name}: {result:?}");
            } else if let Some(rest) = name.strip_prefix("refused-") {
                let reason = rest.split('-').next().unwrap_or(rest);
                let got = result.as_ref().map_err(Reject::reason).err();
                assert_eq!(got, Some(reason), "{name}: {result:?}");
            } else {
                // Inputs the fuzzer found: kept for coverage.
                continue;
            }
            seen += 1;
        }
        assert!(seen >= 10, "{seen} named seeds in {}", dir.display());
    }
}
