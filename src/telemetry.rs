//! Logging: human-readable or JSON lines on stderr, filtered by `log.level`
//! (parsed with the rest of the configuration). Nothing in this crate logs a
//! secret or a token; `Debug` of every type that holds one prints `****` or
//! `[REDACTED]`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(settings: &LogSettings) {
    let filter = settings
        .directives
        .iter()
        .cloned()
        .fold(EnvFilter::default(), EnvFilter::add_directive);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Human => builder.init(),
        // Span fields (the refresher's `account` and `kind`) come under `span`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .init(),
    }
}
