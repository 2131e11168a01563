//! Log set-up: `tracing` to stderr, as logfmt or JSON.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber. Logs go to stderr; dependencies log at warn
/// and above unless the level is debug or trace.
pub fn init(level: LogLevel, format: LogFormat) {
    let level = level.as_tracing();
    let deps = if level >= tracing::Level::DEBUG {
        level
    } else {
        tracing::Level::WARN
    };
    // rustls logs every refused certificate at error level, once per try; the
    // exporter's own `refresh failed` line already says it (reason `tls`), so
    // the library speaks only at debug.
    let tls_library = if level >= tracing::Level::DEBUG {
        LevelFilter::from_level(level)
    } else {
        LevelFilter::OFF
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::from_level(deps))
        .with_target("rustls", tls_library)
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::from_level(level));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .with_target(false)
                    .with_span_name(false)
                    .with_span_path(false)
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}
