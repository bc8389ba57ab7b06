//! Logs: `tracing` events to stderr as text (terminals) or one JSON object per line (machines),
//! filtered by RUST_LOG or `[telemetry] log_level`. Lines are written by a background thread
//! (`tracing-appender`), so a slow terminal or pipe never stalls a request; when the thread
//! falls far behind, lines are dropped rather than requests delayed.
//!
//! Every request gets one line of target `access` (method, route pattern, status, duration,
//! request id, client): `RUST_LOG=info,access=off` turns them off. Nothing logs credentials.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the process's logger; keep the guard until exit (it flushes the last lines).
pub fn init(config: &TelemetryConfig) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.is_ok().then_some(guard)
}
