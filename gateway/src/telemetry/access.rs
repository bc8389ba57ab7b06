//! The access log: one line per request, formatted by hand into a shared buffer that a thread of
//! its own writes out every `FLUSH_EVERY`. Going through `tracing` (its formatter, and a writer
//! thread woken for every line) cost about 7 µs of CPU per request on the proxy path, a third of
//! the gateway's own cost; here a request only formats its line under an uncontended lock, and
//! nothing wakes per line. When the buffer is full (the writer cannot keep up), lines are dropped
//! rather than requests delayed.
//!
//! It is on when the log filter enables target `access` at `info` (the default; decided at start);
//! `RUST_LOG=info,access=off` turns it off. Lines never hold credentials.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::LogFormat;

/// How often the writer writes what accumulated.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes waiting for the writer at most.
const BACKLOG: usize = 16 << 20;

struct Sink {
    format: LogFormat,
    buffer: Mutex<String>,
    /// The buffer being written out (held by the writer).
    spare: Mutex<String>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread (once per process, after the logger is installed) when the log
/// filter enables target `access`; `false` when it cannot be started.
pub fn init(format: LogFormat) -> bool {
    // Asked once: the filter does not change while the process runs, and asking per request
    // would cost every request a filter check (and, with per-layer filters, leave a stale
    // per-thread verdict behind for the next event).
    if SINK.get().is_some() || !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return true;
    }
    let sink = Sink {
        format,
        buffer: Mutex::new(String::new()),
        spare: Mutex::new(String::new()),
    };
    if SINK.set(sink).is_err() {
        return true;
    }
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            }
        })
        .is_ok()
}

/// Whether access lines are written (the log filter enables target `access`).
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Writes out every line so far (also called when the process ends).
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    // Two buffers take turns: requests fill one while the other is written, and both keep their
    // capacity, so a busy log never regrows (and copies) its buffer from empty.
    let mut spare = sink.spare.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::swap(
        &mut *spare,
        &mut *sink.buffer.lock().unwrap_or_else(|e| e.into_inner()),
    );
    if !spare.is_empty() {
        let mut out = std::io::stderr().lock();
        let _ = out.write_all(spare.as_bytes());
        let _ = out.flush();
        spare.clear();
    }
}

/// One answered request.
pub struct Entry<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub took: Duration,
    pub request_id: &'a str,
    /// The W3C trace id the request's backend calls carry.
    pub trace_id: &'a str,
    /// The caller's subject or API key id, when authenticated.
    pub client: Option<&'a str>,
}

#[derive(Serialize)]
struct Json<'a> {
    timestamp: &'a str,
    level: &'static str,
    target: &'static str,
    method: &'a str,
    route: &'a str,
    status: u16,
    duration_ms: f64,
    request_id: &'a str,
    trace_id: &'a str,
    client: &'a str,
}

/// Queues the line of `entry`, if the access log is on.
pub fn record(entry: &Entry<'_>) {
    let Some(sink) = SINK.get() else { return };
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    let duration_ms = (entry.took.as_secs_f64() * 1e6).round() / 1e3;
    let client = entry.client.unwrap_or("-");
    let mut buffer = sink.buffer.lock().unwrap_or_else(|e| e.into_inner());
    if buffer.len() > BACKLOG {
        return;
    }
    match sink.format {
        LogFormat::Json => {
            let json = Json {
                timestamp: &now.to_string(),
                level: "INFO",
                target: "access",
                method: entry.method,
                route: entry.route,
                status: entry.status,
                duration_ms,
                request_id: entry.request_id,
                trace_id: entry.trace_id,
                client,
            };
            if let Ok(text) = serde_json::to_string(&json) {
                buffer.push_str(&text);
            }
        }
        LogFormat::Text => {
            // Values that could hold spaces or quotes (a client id) are quoted.
            let _ = write!(
                buffer,
                "{now}  INFO access: method={} route={:?} status={} duration_ms={duration_ms} request_id={:?} trace_id={} client={:?}",
                entry.method, entry.route, entry.status, entry.request_id, entry.trace_id, client
            );
        }
    }
    buffer.push('\n');
}
