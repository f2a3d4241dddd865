//! Logging: human-readable or JSON lines on stderr, filtered by `RUST_LOG`
//! when it is set and not blank, else by `log.level` (parsed with the rest of
//! the configuration). Nothing in this crate logs a secret or a token;
//! `Debug` of every type that holds one prints `****` or `[REDACTED]`.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::filter::Directive;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// The environment variable that, set and not blank, replaces `log.level`.
pub const RUST_LOG: &str = "RUST_LOG";

/// Installs the global subscriber. Call once, early in `main`. An invalid
/// `RUST_LOG` is reported on stderr and `log.level` applies instead.
pub fn init(settings: &LogSettings) {
    let directives =
        directives(settings, std::env::var_os(RUST_LOG).as_deref()).unwrap_or_else(|problem| {
            eprintln!("warning: {problem}");
            settings.directives.clone()
        });
    let filter = directives
        .into_iter()
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

/// The filter directives in force: those of `rust_log` (the value of
/// `RUST_LOG`) when it is set and not blank, else those of `log.level`.
/// `Err` says why `rust_log` is unusable and that `log.level` applies.
fn directives(settings: &LogSettings, rust_log: Option<&OsStr>) -> Result<Vec<Directive>, String> {
    let Some(value) = rust_log else {
        return Ok(settings.directives.clone());
    };
    let fallback = || {
        let level: Vec<String> = settings
            .directives
            .iter()
            .map(Directive::to_string)
            .collect();
        format!("using log.level ({:?}) instead", level.join(","))
    };
    let Some(text) = value.to_str() else {
        return Err(format!("{RUST_LOG} is not valid UTF-8; {}", fallback()));
    };
    if text.trim().is_empty() {
        return Ok(settings.directives.clone());
    }
    text.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<Directive>().map_err(|e| {
                format!(
                    "{RUST_LOG}: `{d}` is not a valid filter directive ({e}); {}",
                    fallback()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: &str) -> LogSettings {
        LogSettings {
            format: LogFormat::Human,
            directives: level
                .split(',')
                .map(|d| d.parse().expect("a valid directive"))
                .collect(),
        }
    }

    fn shown(directives: &[Directive]) -> Vec<String> {
        directives.iter().map(Directive::to_string).collect()
    }

    #[test]
    fn rust_log_replaces_log_level_when_set_and_not_blank() {
        let level = settings("info");
        let chosen = |rust_log: Option<&str>| {
            directives(&level, rust_log.map(OsStr::new)).map(|d| shown(&d))
        };
        assert_eq!(chosen(None), Ok(vec!["info".to_string()]));
        assert_eq!(chosen(Some("")), Ok(vec!["info".to_string()]));
        assert_eq!(chosen(Some("  ")), Ok(vec!["info".to_string()]));
        assert_eq!(
            chosen(Some("wxtokend=debug, warn")),
            Ok(vec!["wxtokend=debug".to_string(), "warn".to_string()])
        );
    }

    #[test]
    fn an_invalid_rust_log_says_so_and_that_log_level_applies() {
        let level = settings("wxtokend=debug,info");
        let problem =
            directives(&level, Some(OsStr::new("info,wxtokend=loud"))).expect_err("invalid");
        assert!(
            problem.starts_with("RUST_LOG: `wxtokend=loud` is not a valid filter directive ("),
            "{problem}"
        );
        assert!(
            problem.ends_with("; using log.level (\"wxtokend=debug,info\") instead"),
            "{problem}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_rust_log_that_is_not_utf8_says_so() {
        use std::os::unix::ffi::OsStrExt;
        let problem =
            directives(&settings("info"), Some(OsStr::from_bytes(b"\xff"))).expect_err("not UTF-8");
        assert_eq!(
            problem,
            "RUST_LOG is not valid UTF-8; using log.level (\"info\") instead"
        );
    }
}
