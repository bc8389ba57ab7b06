//! Traces. W3C Trace Context always: every backend call carries a `traceparent`, the client's
//! trace when it sent a valid one, otherwise one started for the request, so backends' logs and
//! traces join the gateway's (and the access log names the trace).
//!
//! With `[telemetry] otlp_endpoint` set, the gateway also makes OpenTelemetry spans (through
//! `tracing` and `tracing-opentelemetry`) and exports them with OTLP over HTTP: one span for the
//! request (`GET /api/users/{id}`, kind server), `auth`, `rate_limit`, the GraphQL operation
//! (`query Name`), one per GraphQL field that calls a backend (`resolve Query.user`), and one
//! per upstream attempt (`GET`, kind client, whose id is the `traceparent` parent the backend
//! sees). Spans go to a bounded queue that a thread of the SDK's batch processor exports from:
//! a slow or dead collector never delays a request (when the queue is full, spans are dropped).
//!
//! Without an endpoint no span is made at all: the spans' target, `gateway::span`, is enabled for
//! the exporter only (the log formatter never sees it), so each span macro is one cached check.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;
use crate::edge::headers::shared_value;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The target of every span meant for the exporter.
pub const TARGET: &str = "gateway::span";

/// How long one export may take before the batch processor gives up on it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// A span for the exporter (target [`TARGET`]); a disabled no-op without an OTLP endpoint.
macro_rules! span {
    ($name:literal $(, $($fields:tt)*)?) => {
        tracing::info_span!(target: "gateway::span", $name $(, $($fields)*)?)
    };
}
pub(crate) use span;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are being made and exported.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// The exporting layer for the process's subscriber, when `config` names a collector. The
/// exporter is built here (not connected: a collector that is down now may be up later).
pub fn layer<S>(
    config: &TelemetryConfig,
) -> Result<Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    // The exporter's client takes TLS from the process's rustls provider (an https:// collector).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("gateway");
    if PROVIDER.set(provider).is_err() {
        return Err("the OTLP exporter is already set up".into());
    }
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false),
    ))
}

/// Exports the spans still queued (at exit), waiting a bounded time for the collector.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// A request's trace: its span (a no-op when not exporting) and the `traceparent` its backend
/// calls carry (each upstream attempt replaces the parent id with its own span's when exporting).
pub struct RequestTrace {
    pub span: Span,
    pub traceparent: HeaderValue,
    /// The request's method as spans name it (`_OTHER` outside the standard set).
    method: &'static str,
}

impl RequestTrace {
    /// Starts the trace of a request: the client's when its `traceparent` is valid, else a new one.
    pub fn start(method: &Method, path: &str, headers: &HeaderMap) -> Self {
        let given = headers.get(&TRACEPARENT).filter(|v| is_traceparent(v.as_bytes()));
        let method = super::metrics::method_label(method.as_str());
        if !exporting() {
            return Self {
                span: Span::none(),
                traceparent: given.cloned().unwrap_or_else(new_traceparent),
                method,
            };
        }
        let span = span!(
            "request",
            otel.name = method,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            url.path = path,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        if given.is_some() {
            let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
            let _ = span.set_parent(parent);
        }
        let traceparent = traceparent_of(&span)
            .or_else(|| given.cloned())
            .unwrap_or_else(new_traceparent);
        Self {
            span,
            traceparent,
            method,
        }
    }

    /// Names the request's span by its route's pattern, as the HTTP conventions ask.
    pub fn route(&self, pattern: &str) {
        if !self.span.is_disabled() {
            // Started already (its context made the traceparent), so renamed on the OTel span.
            self.span
                .context()
                .span()
                .update_name(format!("{} {pattern}", self.method));
            self.span.record("http.route", pattern);
        }
    }

    /// Records the answer; a 5xx marks the span as failed.
    pub fn finish(&self, status: u16, error: Option<&str>) {
        if self.span.is_disabled() {
            return;
        }
        self.span.record("http.response.status_code", status);
        if status >= 500 {
            self.span.record("otel.status_code", "error");
            self.span.record("error.type", error.unwrap_or("5xx"));
        }
    }

    /// The trace id, for the access log.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .map_or("", |t| t.get(3..35).unwrap_or(""))
    }
}

/// Sets `span`'s context as the `traceparent` of a request going upstream, when exporting (the
/// request's own `traceparent` is there already otherwise).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    if let Some(value) = traceparent_of(span) {
        headers.insert(TRACEPARENT, value);
    }
}

/// `span`'s context as a `traceparent`; `None` when it has none (not exporting).
fn traceparent_of(span: &Span) -> Option<HeaderValue> {
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some(traceparent(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    ))
}

/// `00-{trace id}-{parent id}-{flags}` in lower-case hex, written into one buffer (no formatter:
/// every request makes one).
fn traceparent(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // The slices are exactly twice the bytes' length, so encoding cannot fail.
    let _ = hex::encode_to_slice(trace_id, &mut text[3..35]);
    let _ = hex::encode_to_slice(parent_id, &mut text[36..52]);
    let _ = hex::encode_to_slice([flags], &mut text[53..]);
    shared_value(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

/// `version-traceid-parentid-flags`: lower-case hex, ids not all zero, version not `ff`.
pub fn is_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..])
}

fn new_traceparent() -> HeaderValue {
    traceparent(
        fastrand::u128(1..).to_be_bytes(),
        fastrand::u64(1..).to_be_bytes(),
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        assert!(is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(is_traceparent(new_traceparent().as_bytes()));
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_an_invalid_one_replaced() {
        let mut h = HeaderMap::new();
        let given = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.insert(TRACEPARENT, given.clone());
        let kept = RequestTrace::start(&Method::GET, "/", &h);
        assert_eq!(kept.traceparent, given);
        assert_eq!(kept.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let new = RequestTrace::start(&Method::GET, "/", &h).traceparent;
        assert!(is_traceparent(new.as_bytes()));
        assert_ne!(new, given);
    }
}

/// A response body polled inside a span, so the span of a request lasts as long as its answer:
/// a streamed download or a slow backend body counts, not just the time to the response
/// headers. (`tracing-opentelemetry` ends a span at its last exit.)
#[derive(Debug)]
pub struct SpanBody<B> {
    body: B,
    span: Span,
}

impl<B> SpanBody<B> {
    pub fn new(body: B, span: Span) -> Self {
        Self { body, span }
    }
}

impl<B: Body + Unpin> Body for SpanBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let _inside = this.span.enter();
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
