//! The log set-up of every kube-mtls binary, in one place, so that the three
//! behave alike: `--log-format` (json, text or auto) and `--log-level` (a
//! tracing filter, `KUBE_MTLS_LOG_LEVEL`), logs on stderr, and colour only
//! when stderr is a terminal: text logs written to a file or a pipe carry no
//! ANSI escape codes.
//!
//! The filter is tracing-subscriber's `Targets` (`info`,
//! `warn,kube_mtls_sidecar=debug`): the same grammar as `RUST_LOG` less span
//! and field filters, which would pull a regular-expression engine into every
//! binary (about 10% of the sidecar's code, resident in every pod).

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use kube_mtls_contract::LogFormat;

/// Logging cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "--log-level (KUBE_MTLS_LOG_LEVEL): {value:?} is not a log filter ({reason}). Fix: write a level such as info or debug, or a filter such as kube_mtls_sidecar=debug"
    )]
    Filter { value: String, reason: String },
    #[error("logging was already set up in this process")]
    AlreadySet,
}

/// How the log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// One JSON object per line (for log collectors) rather than text.
    pub json: bool,
    /// ANSI colour codes in text lines.
    pub colour: bool,
}

/// The style for `format` when the logs go to a terminal (`terminal`) or not.
pub fn style(format: LogFormat, terminal: bool) -> Style {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    Style {
        json,
        colour: !json && terminal,
    }
}

/// Installs the process's log subscriber: `format` and the filter `level`,
/// on stderr, coloured only when stderr is a terminal.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = parse_filter(level)?;
    let style = style(format, std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(style.colour);
    let installed = if style.json {
        builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init()
    } else {
        builder.finish().with(filter).try_init()
    };
    installed.map_err(|_| TelemetryError::AlreadySet)
}

/// `--log-level` as a filter, or the error that names the flag. A bare word
/// must be a level: `Targets` would read `verbose` as a crate name and log
/// nothing, which looks like a quiet binary rather than a typo.
fn parse_filter(level: &str) -> Result<Targets, TelemetryError> {
    let error = |reason: String| TelemetryError::Filter {
        value: level.to_owned(),
        reason,
    };
    for directive in level.split(',').map(str::trim) {
        if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
            return Err(error(format!(
                "{directive:?} is neither a level (trace, debug, info, warn, error, off) nor crate=level"
            )));
        }
    }
    level.trim().parse().map_err(|e| error(format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal() {
        let cases = [
            (
                LogFormat::Text,
                true,
                Style {
                    json: false,
                    colour: true,
                },
            ),
            (
                LogFormat::Text,
                false,
                Style {
                    json: false,
                    colour: false,
                },
            ),
            (
                LogFormat::Json,
                true,
                Style {
                    json: true,
                    colour: false,
                },
            ),
            (
                LogFormat::Json,
                false,
                Style {
                    json: true,
                    colour: false,
                },
            ),
            (
                LogFormat::Auto,
                true,
                Style {
                    json: false,
                    colour: true,
                },
            ),
            (
                LogFormat::Auto,
                false,
                Style {
                    json: true,
                    colour: false,
                },
            ),
        ];
        for (format, terminal, want) in cases {
            assert_eq!(
                style(format, terminal),
                want,
                "{format:?} terminal={terminal}"
            );
        }
    }

    #[test]
    fn a_bad_filter_names_the_flag() {
        let err = init(LogFormat::Json, "info,=[").unwrap_err().to_string();
        assert!(
            err.contains("--log-level") && err.contains("KUBE_MTLS_LOG_LEVEL"),
            "{err}"
        );
    }

    #[test]
    fn a_filter_sets_levels_per_crate() {
        use tracing::Level;
        let filter = parse_filter("warn,kube_mtls_sidecar=debug").expect("a valid filter");
        assert!(filter.would_enable("kube_mtls_sidecar::proxy", &Level::DEBUG));
        assert!(!filter.would_enable("hyper::proto", &Level::INFO));
        assert!(filter.would_enable("hyper::proto", &Level::WARN));
        for bad in ["loud", "info,=[", "kube_mtls_sidecar=chatty"] {
            assert!(parse_filter(bad).is_err(), "{bad} was taken");
        }
    }
}
