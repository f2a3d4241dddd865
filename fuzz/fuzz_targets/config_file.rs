//! Any text as a config file: no panic, and a secret never shows in errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxtokend::{EnvSource, Settings};

struct Env;

impl EnvSource for Env {
    fn var(&self, name: &str) -> Option<String> {
        (name == "S").then(|| "fuzz-secret-value".to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Settings::load_from_str(text, &Env) {
            assert!(!e.to_string().contains("fuzz-secret-value"));
        }
    }
});
