//! Metrics, logs and traces of the real binary (each in a process of its own, so counts are
//! exact).
//!
//! Traces end to end: the real binary with `[telemetry] otlp_endpoint` pointed at a collector
//! that is a small OTLP/HTTP (protobuf) receiver in the test. Spans arrive with the expected
//! names, kinds and parent links, joined to the client's `traceparent`, and the backend's
//! `traceparent` names the gateway's upstream span; a collector that never answers does not hold
//! up requests.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use common::graphql::{graphql_table, post_with, schema_dir};
use common::process::{Proc, START_DEADLINE, TempConfig, free_addr, run_command};
use common::{client, eventually, send_in_time, serve};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";
/// A trace for the streamed response, whose spans must last until its body ends.
const STREAM_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
/// How long the test backend's `/stream` waits before its last chunk.
const STREAM_PAUSE: Duration = Duration::from_millis(400);

/// An OTLP/HTTP receiver: every span of every export, and the `service.name` they came with.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    async fn start() -> (Self, String) {
        let collector = Self::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let url = serve(app).await;
        (collector, url)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .map(|(_, span)| span)
            .filter(|s| hex::encode(&s.trace_id) == trace_id)
            .collect()
    }
}

async fn receive(State(collector): State<Collector>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = collector.spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push((service.clone(), span));
            }
        }
    }
    Vec::new()
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|a| Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?)))
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        let names: Vec<_> = spans.iter().map(|s| &s.name).collect();
        panic!("no span `{name}` among {names:?}")
    })
}

/// A backend that answers JSON and keeps the `traceparent` of every request, by path.
/// `/fail` answers 503 and `/slow` after a second.
async fn backend() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Default::default();
    let record = seen.clone();
    let app = Router::new()
        .route(
            "/fail",
            get(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
        )
        .route(
            "/stream",
            get(|| async {
                // Headers and a first chunk at once, the rest after STREAM_PAUSE.
                let chunks = futures_util::stream::unfold(0, |n| async move {
                    match n {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first,")), 1)),
                        1 => {
                            tokio::time::sleep(STREAM_PAUSE).await;
                            Some((Ok(Bytes::from_static(b"last")), 2))
                        }
                        _ => None,
                    }
                });
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "late"
            }),
        )
        .route(
            "/items/{id}",
            get(
                move |axum::extract::Path(id): axum::extract::Path<String>, headers: HeaderMap| {
                    let record = record.clone();
                    async move {
                        let parent = headers
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        record.lock().unwrap().push((id.clone(), parent));
                        axum::Json(json!({"id": id}))
                    }
                },
            ),
        );
    (serve(app).await, seen)
}

fn config(backend: &str, otlp: &str, extra: &str) -> String {
    format!(
        r#"[telemetry]
otlp_endpoint = "{otlp}"
service_name = "edge-gateway"

[services.svc]
urls = ["{backend}"]
timeout = "5s"

[rate_limits.traced]
requests = 1000
per = "1m"
key = "ip"

[[routes]]
path = "/items/{{id}}"
service = "svc"
auth = "none"
rate_limit = "traced"

[[routes]]
path = "/stream"
service = "svc"
auth = "none"
{extra}"#
    )
}

/// The value of the first sample of `text` that starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

/// `GET /metrics` on the admin listener after known traffic: a 200 twice, a 429, a 404, a 504,
/// a GraphQL cache miss then hit, and a degraded field, each counted exactly, with routes named
/// by their patterns (never the raw path) and upstream attempts by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let (backend, _) = backend().await;
    let admin = free_addr();
    let schema = schema_dir(
        r#"type Query {
  cached: Item @http(service: "svc", path: "/items/c", cache: "60s")
  flaky: Item @http(service: "svc", path: "/fail", fallback: "null")
}
type Item { id: ID! }
"#,
    );
    // One worker: the current-thread runtime, which the benchmarks use, serves this test.
    let text = format!(
        r#"[server]
worker_threads = 1

[admin]
listen = "{admin}"

[services.svc]
urls = ["{backend}"]
timeout = "5s"

[services.slow]
urls = ["{backend}"]
timeout = "200ms"

[rate_limits.probe]
requests = 2
per = "1m"
burst = 2
key = "ip"

[[routes]]
path = "/items/{{id}}"
service = "svc"
auth = "none"
rate_limit = "probe"

[[routes]]
path = "/slow"
service = "slow"
auth = "none"
{}"#,
        graphql_table(schema.path(), "")
    );
    let file = TempConfig::new(&text);
    let (_proc, addr) = start(&file).await;
    let base = format!("http://{addr}");
    let client = client();
    let mut statuses = Vec::new();
    for path in ["/items/a", "/items/b", "/items/c", "/nope", "/slow"] {
        statuses.push(
            send_in_time(client.get(format!("{base}{path}")))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 404, 504]);
    for _ in 0..2 {
        let (status, _, body) = post_with(&client, &base, &json!({"query": "{ cached { id } }"}), &[]).await;
        assert_eq!(
            (status.as_u16(), &body["data"]["cached"]["id"]),
            (200, &json!("c")),
            "{body}"
        );
    }
    let (_, _, body) = post_with(
        &client,
        &base,
        &json!({"query": "query Flaky { flaky { id } }"}),
        &[],
    )
    .await;
    assert_eq!(
        body["extensions"]["degraded"][0]["path"],
        json!(["flaky"]),
        "{body}"
    );

    let metrics = send_in_time(client.get(format!("http://{admin}/metrics")))
        .await
        .text()
        .await
        .unwrap();
    let requests = |route: &str, status: u16| {
        sample(
            &metrics,
            &format!(
                r#"http_server_request_duration_seconds_count{{http_request_method="GET",http_route="{route}",http_response_status_code="{status}"}}"#
            ),
        )
    };
    assert_eq!(requests("/items/{id}", 200), 2.0);
    assert_eq!(requests("/items/{id}", 429), 1.0);
    assert_eq!(requests("unmatched", 404), 1.0);
    assert_eq!(requests("/slow", 504), 1.0);
    assert!(
        !metrics.contains("/items/a") && !metrics.contains("/nope"),
        "a raw path became a label"
    );
    let series = |s: &str| sample(&metrics, s);
    assert_eq!(
        series(r#"gateway_rate_limit_decisions_total{policy="probe",outcome="allowed"}"#),
        2.0
    );
    assert_eq!(
        series(r#"gateway_rate_limit_decisions_total{policy="probe",outcome="limited"}"#),
        1.0
    );
    assert_eq!(
        series(r#"http_client_request_duration_seconds_count{service="slow",outcome="timeout"}"#),
        1.0
    );
    // The 503 behind the degraded field was retried once (a GET is safe to repeat).
    assert_eq!(
        series(r#"http_client_request_duration_seconds_count{service="svc",outcome="5xx"}"#),
        2.0
    );
    assert_eq!(series(r#"gateway_upstream_retries_total{service="svc"}"#), 1.0);
    assert_eq!(
        series(r#"gateway_graphql_cache_total{cache="graphql",result="miss"}"#),
        1.0
    );
    assert_eq!(
        series(r#"gateway_graphql_cache_total{cache="graphql",result="hit"}"#),
        1.0
    );
    assert_eq!(series("gateway_graphql_degraded_fields_total{"), 1.0);
    assert_eq!(
        series(r#"gateway_graphql_operations_total{operation="Flaky",outcome="degraded"}"#),
        1.0
    );
    assert_eq!(series("http_server_active_requests"), 0.0);
}

/// Starts the binary on `config`; the batch processor exports every 100 ms so spans arrive soon.
async fn start(config: &TempConfig) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut cmd = run_command(config.path(), addr);
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn,access=info");
    let mut proc = Proc::spawn(cmd);
    proc.wait_ready(addr).await;
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_parent_links() {
    let (collector, otlp) = Collector::start().await;
    let (backend, seen) = backend().await;
    let schema = schema_dir(
        r#"type Query {
  item(id: ID!): Item @http(service: "svc", path: "/items/{args.id}")
}
type Item { id: ID! }
"#,
    );
    let file = TempConfig::new(&config(
        &backend,
        &format!("{otlp}/"),
        &graphql_table(schema.path(), ""),
    ));
    let (mut proc, addr) = start(&file).await;
    let base = format!("http://{addr}");
    let client = client();

    // REST, in the client's trace.
    let response = send_in_time(
        client
            .get(format!("{base}/items/rest"))
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01")),
    )
    .await;
    assert_eq!(response.status(), 200);
    eventually("the REST request's spans", async || {
        collector
            .trace(CLIENT_TRACE)
            .iter()
            .any(|s| s.name == "GET /items/{id}")
    })
    .await;
    let spans = collector.trace(CLIENT_TRACE);
    let request = named(&spans, "GET /items/{id}");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        hex::encode(&request.parent_span_id),
        CLIENT_PARENT,
        "the client's span is the parent"
    );
    let attrs = attributes(request);
    assert_eq!(attrs["http.route"], "/items/{id}");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["url.path"], "/items/rest");
    for child in ["auth", "rate_limit"] {
        assert_eq!(
            named(&spans, child).parent_span_id,
            request.span_id,
            "{child}'s parent"
        );
    }
    assert_eq!(
        attributes(named(&spans, "rate_limit"))["gateway.rate_limit.outcome"],
        "allowed"
    );
    let upstream = named(&spans, "GET");
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(upstream.parent_span_id, request.span_id);
    let attrs = attributes(upstream);
    assert_eq!(attrs["gateway.service"], "svc");
    assert_eq!(attrs["http.response.status_code"], "200");
    // The backend's parent is the gateway's attempt span, in the client's trace.
    let rest_parent = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == "rest")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        rest_parent,
        format!("00-{CLIENT_TRACE}-{}-01", hex::encode(&upstream.span_id))
    );
    assert!(
        collector
            .spans()
            .iter()
            .all(|(service, _)| service == "edge-gateway")
    );

    // A streamed answer: the request's span and the attempt's last until the body's end, not
    // just until the response headers (which came STREAM_PAUSE earlier).
    let response = send_in_time(
        client
            .get(format!("{base}/stream"))
            .header("traceparent", format!("00-{STREAM_TRACE}-{CLIENT_PARENT}-01")),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "first,last");
    eventually("the streamed request's spans", async || {
        let spans = collector.trace(STREAM_TRACE);
        ["GET /stream", "GET"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let spans = collector.trace(STREAM_TRACE);
    for name in ["GET /stream", "GET"] {
        let span = named(&spans, name);
        let lasted = Duration::from_nanos(span.end_time_unix_nano - span.start_time_unix_nano);
        assert!(lasted >= STREAM_PAUSE, "{name} lasted {lasted:?}");
    }

    // GraphQL, in a trace the gateway starts: operation, resolver call and its attempt.
    let (status, _, body) = post_with(
        &client,
        &base,
        &json!({"query": "query Fetch { item(id: \"gql\") { id } }"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["item"]["id"], "gql");
    let gql_parent = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == "gql")
        .unwrap()
        .1
        .clone();
    let trace_id = gql_parent[3..35].to_owned();
    assert_ne!(trace_id, CLIENT_TRACE);
    eventually("the GraphQL request's spans", async || {
        collector
            .trace(&trace_id)
            .iter()
            .any(|s| s.name == "POST /graphql")
    })
    .await;
    let spans = collector.trace(&trace_id);
    let request = named(&spans, "POST /graphql");
    assert!(request.parent_span_id.is_empty(), "a root span");
    let operation = named(&spans, "query Fetch");
    assert_eq!(operation.parent_span_id, request.span_id);
    assert_eq!(attributes(operation)["graphql.operation.name"], "Fetch");
    let resolve = named(&spans, "resolve Query.item");
    assert_eq!(resolve.parent_span_id, operation.span_id);
    assert_eq!(attributes(resolve)["gateway.service"], "svc");
    let attempt = named(&spans, "GET");
    assert_eq!(attempt.parent_span_id, resolve.span_id);
    assert_eq!(
        gql_parent,
        format!("00-{trace_id}-{}-01", hex::encode(&attempt.span_id))
    );

    // The access log names each request's trace.
    proc.terminate();
    assert!(
        proc.wait(START_DEADLINE).await.is_some(),
        "the gateway did not exit"
    );
    let stderr = proc.stderr();
    assert!(stderr.contains(&format!("trace_id={CLIENT_TRACE}")), "{stderr}");
    assert!(stderr.contains(&format!("trace_id={trace_id}")), "{stderr}");
}

/// A collector that accepts connections and never answers: every export hangs until the
/// exporter's own timeout (5 s). Requests still answer at once (each must within 2 s, while a
/// request that waited for an export would take 5), and the gateway still exits promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_hold_up_requests() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", silent.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(socket);
        }
    });
    let (backend, _) = backend().await;
    let file = TempConfig::new(&config(&backend, &otlp, ""));
    let (mut proc, addr) = start(&file).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://{addr}/items/x");
    // More spans than the exporter's queue holds (2048): it must drop, not wait.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..150 {
                    let response = client.get(&url).send().await.expect("an answer within 2 s");
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        connections.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the exporter never tried the collector"
    );
    proc.terminate();
    let exit = proc.wait(START_DEADLINE).await;
    assert!(
        exit.is_some(),
        "the gateway did not exit with the collector silent:\n{}",
        proc.stderr()
    );
}
