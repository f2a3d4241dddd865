//! Any query string and body as a push to the Open Platform callback
//! receiver (the input's first line is the query string, the rest the
//! body): no panic, no reject that quotes the token, and no event unless
//! `msg_signature` is the platform's signature, computed here, over the
//! `timestamp`, `nonce` and `Encrypt` the push carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use wxtokend::fuzzing::{callback_encrypt, split_callback_input, verify_callback, CALLBACK_TOKEN};

/// The first value of `name` in `query`, as the receiver reads it (no
/// percent-decoding: WeChat's values are digits, hex and `aes`).
fn parameter<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (n, value) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(value)
    })
}

/// WeChat's `msg_signature`: the SHA-1 of the four values sorted
/// byte-wise and joined, in lower-case hex.
fn signature(timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [CALLBACK_TOKEN, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let digest = Sha1::digest(parts.concat().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = split_callback_input(data);
    // A request line's query is text.
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    match verify_callback(query, body) {
        Ok(_) => {
            let encrypt = callback_encrypt(body).expect("an accepted push has one Encrypt");
            let timestamp =
                parameter(query, "timestamp").expect("an accepted push has a timestamp");
            let nonce = parameter(query, "nonce").expect("an accepted push has a nonce");
            assert_eq!(
                parameter(query, "msg_signature"),
                Some(signature(timestamp, nonce, &encrypt).as_str()),
                "accepted without a valid signature"
            );
        }
        Err(reject) => assert!(!reject.to_string().contains(CALLBACK_TOKEN)),
    }
});
