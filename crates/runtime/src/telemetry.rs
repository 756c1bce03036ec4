//! Structured logs: level from RUST_LOG, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Installs the global subscriber; a second call (e.g. in tests) is a no-op.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
