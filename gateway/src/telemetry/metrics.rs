//! Prometheus metrics through the `metrics` facade and `metrics-exporter-prometheus`, rendered by
//! the admin listener's `GET /metrics`. Names follow OpenTelemetry's HTTP semantic conventions
//! where one exists (`http_server_request_duration_seconds`, `http_client_request_duration_seconds`
//! with `http_request_method`, `http_route`, `http_response_status_code`).
//!
//! The recorder is process-wide (the `metrics` facade has one); it is installed the first time the
//! admin API is built, and recording before that (or without an admin API) costs almost nothing.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::time::Instant;

use crate::upstream::ServiceStatus;
use crate::upstream::breaker::BreakerState;

/// Seconds: from a cache hit to a slow backend.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often queued histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Whether a recorder is installed (the admin listener is on). Without one the metric calls below
/// return at once, since building their labels would cost every request allocations for nothing,
/// and callers skip measuring what nobody records.
pub fn recording() -> bool {
    HANDLE.get().is_some_and(Option::is_some)
}

/// The process's Prometheus handle, installing the recorder the first time.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(&BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    // Histogram samples queue up until drained into their buckets: without this,
                    // a gateway nobody scrapes would keep every sample (memory growing with each
                    // request, and fresh pages to fault in).
                    let upkeep = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        });
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text of every metric, with the service gauges brought up to date first.
pub fn render(services: &[ServiceStatus]) -> String {
    for s in services {
        let state = match s.breaker {
            None | Some(BreakerState::Closed) => 0.0,
            Some(BreakerState::HalfOpen) => 1.0,
            Some(BreakerState::Open) => 2.0,
        };
        gauge!("gateway_upstream_breaker_state", "service" => s.name.clone()).set(state);
        let healthy = s.instances.iter().filter(|i| i.available).count();
        gauge!("gateway_upstream_healthy_instances", "service" => s.name.clone()).set(healthy as f64);
        gauge!("gateway_upstream_in_flight", "service" => s.name.clone()).set(s.in_flight as f64);
    }
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// One request the gateway answered.
pub fn server_request(method: &str, route: &str, status: u16, took: Duration) {
    if !recording() {
        return;
    }
    let method = method_label(method);
    series(0, method, route, status, || {
        histogram!(
            "http_server_request_duration_seconds",
            "http_request_method" => method,
            "http_route" => route.to_owned(),
            "http_response_status_code" => status.to_string(),
        )
    })
    .record(took.as_secs_f64());
}

/// Requests being served (+1 when one starts, -1 when it is answered).
pub fn active_requests(delta: f64) {
    // Not skipped without a recorder (it builds no labels), so a recorder installed while
    // requests are in flight never sees their decrement without their increment.
    static ACTIVE: OnceLock<metrics::Gauge> = OnceLock::new();
    match ACTIVE.get() {
        Some(gauge) => gauge.increment(delta),
        None if recording() => ACTIVE
            .get_or_init(|| gauge!("http_server_active_requests"))
            .increment(delta),
        None => gauge!("http_server_active_requests").increment(delta),
    }
}

/// One attempt to a backend that began at `started`: `outcome` is ok, timeout, connect_error,
/// reset, 5xx, 4xx... The clock is read only when a recorder will keep the duration.
pub fn client_request(service: &str, outcome: &'static str, started: Instant) {
    if !recording() {
        return;
    }
    let took = started.elapsed();
    series(1, service, outcome, 0, || {
        histogram!(
            "http_client_request_duration_seconds",
            "service" => service.to_owned(),
            "outcome" => outcome,
        )
    })
    .record(took.as_secs_f64());
}

/// OpenTelemetry's rule for `http.request.method`: the standard methods, else `_OTHER` (a client
/// inventing methods must not grow the label set).
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("_OTHER")
}

/// The histogram of one series (`kind` tells the metric apart, then its label values), kept per
/// thread once made: a request then costs one hash of its label values, where `histogram!` would
/// copy them into a key and look it up in the registry under a lock.
fn series(kind: u8, a: &str, b: &str, n: u16, make: impl FnOnce() -> Histogram) -> Histogram {
    use std::cell::RefCell;
    use std::hash::BuildHasher;
    type Entry = (u8, Box<str>, Box<str>, u16, Histogram);
    thread_local! {
        static CACHE: RefCell<foldhash::HashMap<u64, Vec<Entry>>> = RefCell::default();
    }
    let hash = foldhash::fast::FixedState::with_seed(0).hash_one((kind, a, b, n));
    CACHE.with_borrow_mut(|cache| {
        let entries = cache.entry(hash).or_default();
        if let Some(e) = entries
            .iter()
            .find(|e| e.0 == kind && &*e.1 == a && &*e.2 == b && e.3 == n)
        {
            return e.4.clone();
        }
        let histogram = make();
        entries.push((kind, a.into(), b.into(), n, histogram.clone()));
        histogram
    })
}

/// A request refused before any attempt: circuit_open, overloaded (bulkhead), no_healthy.
pub fn client_rejected(service: &str, reason: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_upstream_rejections_total", "service" => service.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn retry(service: &str) {
    if !recording() {
        return;
    }
    counter!("gateway_upstream_retries_total", "service" => service.to_owned()).increment(1);
}

pub fn auth_failure(reason: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_auth_failures_total", "reason" => reason).increment(1);
}

pub fn rate_limit(policy: &str, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_rate_limit_decisions_total", "policy" => policy.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A cacheable GraphQL backend call: hit, miss or stale.
pub fn cache(result: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_graphql_cache_total", "cache" => "graphql", "result" => result).increment(1);
}

pub fn degraded_field(reason: &str, fallback: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_graphql_degraded_fields_total", "reason" => reason.to_owned(), "fallback" => fallback)
        .increment(1);
}

/// A GraphQL operation: its name (bounded, see [`operation_label`]) and ok / partial / failed.
pub fn graphql_operation(name: Option<&str>, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_graphql_operations_total", "operation" => operation_label(name), "outcome" => outcome)
        .increment(1);
}

pub fn reload(result: &'static str) {
    if !recording() {
        return;
    }
    counter!("gateway_config_reloads_total", "result" => result).increment(1);
}

/// Operation names come from clients: the first 200 well-formed ones are labels, the rest
/// `other`, so a client inventing names cannot grow the metrics without bound.
fn operation_label(name: Option<&str>) -> String {
    const MAX: usize = 200;
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name else {
        return "anonymous".into();
    };
    let well_formed = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !well_formed {
        return "other".into();
    }
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if seen.contains(name) || seen.len() < MAX && seen.insert(name.to_owned()) {
        name.to_owned()
    } else {
        "other".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("FOO"), "_OTHER");
        assert_eq!(method_label("get"), "_OTHER");
    }

    #[test]
    fn operation_labels_are_bounded() {
        assert_eq!(operation_label(None), "anonymous");
        assert_eq!(operation_label(Some("GetUser")), "GetUser");
        assert_eq!(operation_label(Some("bad name")), "other");
        assert_eq!(operation_label(Some(&"x".repeat(65))), "other");
        for i in 0..300 {
            let _ = operation_label(Some(&format!("op{i}")));
        }
        assert_eq!(operation_label(Some("op299")), "other");
        assert_eq!(
            operation_label(Some("GetUser")),
            "GetUser",
            "a name seen before stays"
        );
    }
}
