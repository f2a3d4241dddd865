//! Logging: human-readable or JSON lines on stderr, filtered by `log.level`.
//! Nothing in this crate logs a secret or a token; `Debug` of every type
//! that holds one prints `****` or `[REDACTED]`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Parses a `log.level` directive such as `info` or `wxtokend=debug,warn`.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(level).map_err(|e| e.to_string())
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(settings: &LogSettings) {
    // The level was validated with the rest of the configuration.
    let filter = parse_filter(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
