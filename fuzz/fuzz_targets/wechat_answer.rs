//! Any bytes as WeChat's answer to a token call: no panic, and whatever is
//! accepted follows WeChat's rules and the default `wechat.min_expires_in`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use wxtokend::fuzzing::{
    parse_token_answer, DEFAULT_MIN_EXPIRES_IN, MAX_EXPIRES_IN, MAX_TOKEN_LEN,
};

fuzz_target!(|body: &[u8]| {
    match parse_token_answer(body) {
        Ok(credential) => {
            let value = credential.value.expose_secret();
            assert!(!value.is_empty() && value.len() <= MAX_TOKEN_LEN);
            assert!(value.bytes().all(|b| b.is_ascii_graphic()));
            assert!(
                credential.expires_in >= DEFAULT_MIN_EXPIRES_IN
                    && credential.expires_in <= MAX_EXPIRES_IN
            );
        }
        Err(e) => assert!(!e.to_string().contains("fuzz-secret")),
    }
});
