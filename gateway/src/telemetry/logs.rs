//! Logs: `tracing` events to stderr as text (terminals) or one JSON object per line (machines),
//! filtered by RUST_LOG or `[telemetry] log_level`. Lines are written by a background thread
//! (`tracing-appender`), so a slow terminal or pipe never stalls a request; when the thread
//! falls far behind, lines are dropped rather than requests delayed.
//!
//! Every request gets one line of target `access` (method, route pattern, status, duration,
//! request id, client), written by `access` rather than through the formatter here:
//! `RUST_LOG=info,access=off` turns them off. Nothing logs credentials.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Flushes the last lines (of the logger and the access log) when dropped: keep it until exit.
pub struct LogGuard {
    _logger: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        super::access::flush();
    }
}

/// Installs the process's logger; keep the guard until exit.
pub fn init(config: &TelemetryConfig) -> Option<LogGuard> {
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
    if installed.is_err() {
        return None;
    }
    if !super::access::init(config.log_format) {
        tracing::warn!("cannot start the access-log writer; requests are not logged");
    }
    Some(LogGuard { _logger: guard })
}
