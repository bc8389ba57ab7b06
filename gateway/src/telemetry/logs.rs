//! Logs: `tracing` events to stderr as text (terminals) or one JSON object per line (machines),
//! filtered by RUST_LOG or `[telemetry] log_level`. Lines are written by a background thread
//! (`tracing-appender`), so a slow terminal or pipe never stalls a request; when the thread
//! falls far behind, lines are dropped rather than requests delayed.
//!
//! Every request gets one line of target `access` (method, route pattern, status, duration,
//! request id, trace id, client), written by `access` rather than through the formatter here:
//! `RUST_LOG=info,access=off` turns them off. Nothing logs credentials.
//!
//! The same subscriber carries the span exporter of `trace` when `[telemetry] otlp_endpoint` is
//! set. Each layer has its own filter: the spans (target `gateway::span`) reach the exporter
//! only, and warnings reach it as events of the span they happened in.

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::trace;
use crate::config::{LogFormat, TelemetryConfig};

/// Flushes the last lines (of the logger and the access log) and spans when dropped: keep it
/// until exit.
pub struct LogGuard {
    _logger: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // The access lines first: the exporter may wait for a collector that is down.
        super::access::flush();
        trace::shutdown();
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the process's logger (and span exporter); keep the guard until exit.
pub fn init(config: &TelemetryConfig) -> Option<LogGuard> {
    let given = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok());
    let directives = given.as_deref().unwrap_or(&config.log_level);
    let mut filter = EnvFilter::new(directives);
    // Spans are for the exporter; the log shows them only when asked for by name.
    if !directives.contains(trace::TARGET)
        && let Ok(off) = format!("{}=off", trace::TARGET).parse()
    {
        filter = filter.add_directive(off);
    }
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let mut layers: Vec<BoxedLayer> = vec![match config.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    }];
    let exporter = trace::layer::<Registry>(config);
    let problem = match exporter {
        Ok(Some(otel)) => {
            let wanted = Targets::new()
                .with_target(trace::TARGET, Level::INFO)
                .with_target("gateway", Level::WARN);
            layers.push(otel.with_filter(wanted).boxed());
            None
        }
        Ok(None) => None,
        Err(problem) => Some(problem),
    };
    if tracing_subscriber::registry().with(layers).try_init().is_err() {
        return None;
    }
    if let Some(problem) = problem {
        tracing::error!("{problem}; spans are not exported");
    }
    if !super::access::init(config.log_format) {
        tracing::warn!("cannot start the access-log writer; requests are not logged");
    }
    Some(LogGuard { _logger: guard })
}
