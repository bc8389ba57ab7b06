//! The upstream resilience layer end to end (`gateway/src/upstream/`): retries (which requests,
//! how many, where to, how long to wait, the budget), passive outlier ejection and active health
//! checks, the circuit breaker, the bulkhead, timeouts and deadlines, load balancing, and what a
//! client sees when a backend breaks mid-answer.
//!
//! Every backend here records what reaches it, so "the backend was not touched", "it was tried
//! exactly three times" and "the retry came a second later" are measured where they happen. Waits
//! are causal (a gate the test opens, a backend that signals an arrival, `eventually`); the only
//! sleeps wait out a configured short duration (a breaker's `open_for`).

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use common::{client, eventually, gateway};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

/// Any request that gets no answer within this long fails its test.
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Backends that record what reaches them

/// One request as a backend saw it.
#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    method: String,
    path: String,
    /// The gateway's `x-request-timeout-ms`.
    timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
    /// The client's `x-tag`, which every attempt must carry.
    tag: Option<String>,
    body: Bytes,
}

/// An HTTP backend that records every request but its health checks (`GET /health`, answered
/// 200 or 503 as `set_healthy` says) and answers the n-th (from 1) with `answer(n)`.
#[derive(Clone)]
struct Backend {
    url: String,
    log: Arc<Mutex<Vec<Arrival>>>,
    healthy: Arc<AtomicBool>,
}

impl Backend {
    async fn start<F, Fut>(answer: F) -> Self
    where
        F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, answer)
    }

    /// [`Backend::start`] on a listener the test already holds (to come back on a known port).
    fn start_on<F, Fut>(listener: TcpListener, answer: F) -> Self
    where
        F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(AtomicBool::new(true));
        let (log2, healthy2) = (log.clone(), healthy.clone());
        let app = Router::new().fallback(move |request: Request| {
            let (log, healthy, answer) = (log2.clone(), healthy2.clone(), answer.clone());
            async move {
                if request.uri().path() == "/health" {
                    let ok = healthy.load(Ordering::SeqCst);
                    return reply(if ok { 200 } else { 503 }, "health");
                }
                let (parts, body) = request.into_parts();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let arrival = Arrival {
                    at: Instant::now(),
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    timeout_ms: header("x-request-timeout-ms").and_then(|v| v.parse().ok()),
                    idempotency_key: header("idempotency-key"),
                    tag: header("x-tag"),
                    body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(arrival);
                    log.len()
                };
                answer(n).await
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, log, healthy }
    }

    fn hits(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.log.lock().unwrap().clone()
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

fn reply(status: u16, body: &'static str) -> Response {
    Response::builder().status(status).body(Body::from(body)).unwrap()
}

/// Holds backend answers until the test opens it.
struct Gate(watch::Sender<bool>);

impl Gate {
    fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// A future that resolves once the gate is open (immediately if it already is).
    fn passed(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut open = self.0.subscribe();
        async move {
            let _ = open.wait_for(|&open| open).await;
        }
    }

    fn open(&self) {
        self.0.send_replace(true);
    }
}

/// A TCP backend for what a well-behaved HTTP server never does: for each connection it reads the
/// request head, counts it, and hands the stream to `then`.
async fn tcp_backend<F, Fut>(then: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(then(stream));
        }
    });
    (url, requests)
}

/// Closes the connection: with a TCP reset when `rst`, else with a FIN.
fn hang_up(stream: TcpStream, rst: bool) {
    if rst {
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
}

// ---------------------------------------------------------------------------------------------
// What a client sees

#[derive(Debug)]
struct Answer {
    status: u16,
    /// The gateway's error code; `None` for an answer that came from a backend.
    code: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.code.as_deref() == Some(code)
    }

    /// A backend's own answer, passed through.
    fn is_backend(&self, status: u16, body: &str) -> bool {
        self.status == status && self.code.is_none() && self.body == body
    }
}

/// Sends `request` and reads the whole answer. A gateway error (JSON: the test backends only ever
/// answer plain text) is checked against the SPEC.md shape.
async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = common::send_in_time(request).await;
    let header = |name: &str| common::header(&response, name);
    let status = response.status().as_u16();
    let retry_after = header("retry-after");
    let json = header("content-type").as_deref() == Some("application/json");
    let request_id = header("x-request-id").expect("every answer has an x-request-id");
    let body = tokio::time::timeout(TIMEOUT, response.text())
        .await
        .expect("the body did not arrive in time")
        .unwrap();
    let code = json.then(|| {
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert_eq!(error["error"]["request_id"], request_id.as_str(), "{error}");
        assert!(
            !body.contains("127.0.0.1"),
            "no upstream addresses in messages: {body}"
        );
        error["error"]["code"].as_str().unwrap().to_owned()
    });
    Answer {
        status,
        code,
        retry_after,
        body,
    }
}

/// `n` concurrent GETs of `url`, answers in completion order.
async fn concurrent_gets(url: &str, n: usize) -> Vec<Answer> {
    let http = client();
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(send(http.get(url)));
    }
    let mut answers = Vec::new();
    while let Some(answer) = set.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

/// `["a", "b"]` as a TOML array.
fn urls(urls: &[&str]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Service `svc` at `instances` (`service` holds its keys and sub-tables) and one public
/// catch-all route to it with `route` keys.
fn config(instances: &[&str], service: &str, route: &str) -> String {
    format!(
        r#"
[services.svc]
urls = {urls}
{service}

[[routes]]
prefix = "/"
service = "svc"
auth = "none"
{route}
"#,
        urls = urls(instances)
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Passive outlier ejection, and the way back through the health check

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_ejected_and_takes_traffic_again_once_its_health_check_passes() {
    let live = Backend::start(|_| async { reply(200, "live") }).await;
    // The dead instance's port is bound but not listening: connections are refused (a connect
    // failure, the request never sent), and nobody else can take the port before the instance
    // comes back on it below.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}", socket.local_addr().unwrap());

    // Round robin starts every request on the dead instance until it is ejected. The budget
    // allows 10 retries in all, so 40 answers of 200 are only possible if, after its 5 failures
    // in a row, the dead instance stopped being tried. The active check never takes an instance
    // out (`unhealthy_after`), so that is passive ejection's doing alone.
    let toml = config(
        &[&dead, &live.url],
        r#"
timeout = "2s"
load_balancing = "round_robin"
[services.svc.health_check]
path = "/health"
interval = "100ms"
unhealthy_after = 1000
healthy_after = 1
[services.svc.retry]
attempts = 2
budget = 0.0
min_retries_per_second = 1
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    // No ejection can have started before this instant, so none can end before it + 10 s.
    let before_any_ejection = Instant::now();
    for i in 0..40 {
        let a = send(http.get(format!("{}/item", gw.url()))).await;
        assert!(a.is_backend(200, "live"), "request {i}: {a:?}");
    }
    assert_eq!(live.hits(), 40);

    // The instance comes back on its port; its first good health check ends the ejection (10 s
    // otherwise) and round robin shares the traffic again.
    let revived = Backend::start_on(socket.listen(128).unwrap(), |_| async { reply(200, "revived") });
    eventually("the revived instance gets requests", async || {
        let a = send(http.get(format!("{}/item", gw.url()))).await;
        assert_eq!(a.status, 200, "{a:?}");
        revived.hits() > 0
    })
    .await;
    let first = revived.arrivals()[0].at;
    assert!(
        first < before_any_ejection + Duration::from_secs(10),
        "the health check, not the ejection's end, brought the instance back"
    );
    let (live_before, revived_before) = (live.hits(), revived.hits());
    for _ in 0..10 {
        let a = send(http.get(format!("{}/item", gw.url()))).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert_eq!(live.hits() - live_before, 5);
    assert_eq!(revived.hits() - revived_before, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_never_takes_out_more_than_half_of_the_instances() {
    let a = Backend::start(|_| async { reply(500, "a") }).await;
    let b = Backend::start(|_| async { reply(500, "b") }).await;
    let toml = config(
        &[&a.url, &b.url],
        r#"
timeout = "2s"
load_balancing = "round_robin"
[services.svc.circuit_breaker]
enabled = false
[services.svc.retry]
attempts = 1
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    // Round robin alternates until A's fifth 500 in a row ejects it (request 9); B's fifth comes
    // next, but ejecting it too would leave nothing, so B keeps serving (its 500s pass through).
    for i in 0..20 {
        let answer = send(http.get(format!("{}/x", gw.url()))).await;
        assert!(
            answer.status == 500 && answer.code.is_none(),
            "request {i}: {answer:?}"
        );
    }
    assert_eq!((a.hits(), b.hits()), (5, 15));
}

/// The instance the health check left is the last one: its own 5xx answers must not take the
/// whole service out. (Here they do: for 10 s, and longer with each repeat, every request gets
/// NO_HEALTHY_UPSTREAM although B passes every health check and answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn passive_ejection_never_takes_out_the_last_instance_the_health_check_left() {
    let a = Backend::start(|_| async { reply(200, "a") }).await;
    let b_failing = Arc::new(AtomicBool::new(false));
    let b = {
        let b_failing = b_failing.clone();
        Backend::start(move |_| {
            let failing = b_failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    reply(500, "b failing")
                } else {
                    reply(200, "b")
                }
            }
        })
        .await
    };
    let toml = config(
        &[&a.url, &b.url],
        r#"
timeout = "2s"
load_balancing = "round_robin"
[services.svc.health_check]
path = "/health"
interval = "100ms"
unhealthy_after = 1
healthy_after = 1
[services.svc.circuit_breaker]
enabled = false
[services.svc.retry]
attempts = 1
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let url = format!("{}/x", gw.url());
    a.set_healthy(false);
    eventually("A out of rotation", async || {
        let before = a.hits();
        for _ in 0..2 {
            assert_eq!(send(http.get(&url)).await.status, 200);
        }
        a.hits() == before
    })
    .await;

    // B, the one instance left, starts failing its requests (not its health checks).
    b_failing.store(true, Ordering::SeqCst);
    let b_before = b.hits();
    for i in 0..10 {
        let answer = send(http.get(&url)).await;
        assert!(answer.is_backend(500, "b failing"), "request {i}: {answer:?}");
    }
    assert_eq!(b.hits() - b_before, 10);
}

// ---------------------------------------------------------------------------------------------
// 2. Circuit breaker: open, fail fast, half-open probes, closed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_probes_and_closes() {
    let failing = Arc::new(AtomicBool::new(true));
    let gate = Arc::new(Gate::new());
    let backend = {
        let (failing, gate) = (failing.clone(), gate.clone());
        Backend::start(move |_| {
            let failing = failing.load(Ordering::SeqCst);
            let passed = gate.passed();
            async move {
                if failing {
                    reply(500, "broken")
                } else {
                    passed.await;
                    reply(200, "fine")
                }
            }
        })
        .await
    };
    let open_for = Duration::from_millis(500);
    let toml = config(
        &[&backend.url],
        r#"
timeout = "5s"
[services.svc.circuit_breaker]
failure_rate = 0.5
min_requests = 5
open_for = "500ms"
half_open_requests = 2
[services.svc.retry]
attempts = 1
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let url = format!("{}/x", gw.url());
    let get = async || send(http.get(&url)).await;
    let circuit_open = |a: &Answer| a.is(503, "CIRCUIT_OPEN") && a.retry_after.as_deref() == Some("1");

    // Closed: failures pass through until min_requests calls have been made, all failing.
    for i in 0..5 {
        let a = get().await;
        assert!(a.is_backend(500, "broken"), "request {i}: {a:?}");
    }
    // Open: fail fast, the backend untouched.
    for _ in 0..3 {
        let a = get().await;
        assert!(circuit_open(&a), "{a:?}");
    }
    assert_eq!(backend.hits(), 5);

    // After open_for a probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(open_for).await;
    let a = get().await;
    assert!(a.is_backend(500, "broken"), "{a:?}");
    assert_eq!(backend.hits(), 6);
    let a = get().await;
    assert!(circuit_open(&a), "{a:?}");
    assert_eq!(backend.hits(), 6);

    // The backend recovers. After open_for, exactly half_open_requests probes go through (held at
    // the backend here); a third caller meanwhile fails fast.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(open_for).await;
    let probes: Vec<_> = (0..2).map(|_| tokio::spawn(send(http.get(&url)))).collect();
    eventually("both probes at the backend", async || backend.hits() == 8).await;
    let a = get().await;
    assert!(circuit_open(&a), "{a:?}");
    assert_eq!(backend.hits(), 8);
    gate.open();
    for probe in probes {
        let a = probe.await.unwrap();
        assert!(a.is_backend(200, "fine"), "{a:?}");
    }
    // Both probes succeeded: closed.
    for _ in 0..10 {
        let a = get().await;
        assert!(a.is_backend(200, "fine"), "{a:?}");
    }
    assert_eq!(backend.hits(), 18);
}

// ---------------------------------------------------------------------------------------------
// 3. Which requests are retried, and how often

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_with_an_idempotency_key_and_its_body_is_replayed() {
    let backend = Backend::start(|_| async { reply(503, "unavailable") }).await;
    let toml = config(
        &[&backend.url],
        r#"
timeout = "2s"
[services.svc.circuit_breaker]
enabled = false
[services.svc.retry]
attempts = 3
backoff = "1ms"
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let url = format!("{}/orders", gw.url());

    let a = send(http.post(&url).body("order-1")).await;
    assert!(a.is_backend(503, "unavailable"), "{a:?}");
    assert_eq!(backend.hits(), 1, "a POST without Idempotency-Key is sent once");

    let a = send(http.post(&url).header("idempotency-key", "k-2").body("order-2")).await;
    assert!(a.is_backend(503, "unavailable"), "{a:?}");
    let arrivals = backend.arrivals();
    assert_eq!(
        arrivals.len(),
        4,
        "a POST with Idempotency-Key is tried `attempts` times"
    );
    for arrival in &arrivals[1..] {
        assert_eq!(arrival.method, "POST");
        assert_eq!(
            arrival.body, "order-2",
            "the body is sent again with every attempt"
        );
        assert_eq!(arrival.idempotency_key.as_deref(), Some("k-2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_on_another_instance_for_safe_requests_only() {
    for rst in [true, false] {
        let (resetter, resets) = tcp_backend(move |stream| async move { hang_up(stream, rst) }).await;
        let live = Backend::start(|_| async { reply(200, "live") }).await;
        // Round robin: each request's first attempt goes to the resetter.
        let toml = config(
            &[&resetter, &live.url],
            r#"
timeout = "2s"
load_balancing = "round_robin"
[services.svc.retry]
attempts = 3
"#,
            "",
        );
        let gw = gateway(&toml).await;
        let http = client();
        let url = format!("{}/orders", gw.url());
        let case = if rst { "reset" } else { "closed" };

        let a = send(http.get(&url)).await;
        assert!(a.is_backend(200, "live"), "{case}: {a:?}");
        assert_eq!((resets.load(Ordering::SeqCst), live.hits()), (1, 1), "{case}");

        // The POST may have been acted on before the connection broke: not repeated.
        let a = send(http.post(&url).body("order")).await;
        assert!(a.is(502, "UPSTREAM_UNAVAILABLE"), "{case}: {a:?}");
        assert_eq!((resets.load(Ordering::SeqCst), live.hits()), (2, 1), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_method_is_retried_when_the_connection_could_not_be_made() {
    let live = Backend::start(|_| async { reply(201, "created") }).await;
    let toml = config(
        &[&common::dead_url(), &live.url],
        r#"
timeout = "2s"
load_balancing = "round_robin"
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let a = send(client().post(format!("{}/orders", gw.url())).body("order")).await;
    assert!(a.is_backend(201, "created"), "{a:?}");
    let arrivals = live.arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].body, "order");

    // A body that is never kept for replay (streamed, of unknown length) comes back unsent from
    // a failed connect too, and goes whole to the next instance.
    for round in 0..2 {
        let chunks = ["first chunk, ", "second chunk"]
            .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes())));
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let a = send(client().post(format!("{}/orders", gw.url())).body(body)).await;
        assert!(a.is_backend(201, "created"), "round {round}: {a:?}");
    }
    let arrivals = live.arrivals();
    assert_eq!(arrivals.len(), 3);
    assert!(
        arrivals[1..]
            .iter()
            .all(|a| a.body == "first chunk, second chunk"),
        "{arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_never_exceed_the_configured_number() {
    let backend = Backend::start(|_| async { reply(502, "bad gateway from the backend") }).await;
    let toml = config(
        &[&backend.url],
        r#"
timeout = "2s"
[services.svc.retry]
attempts = 3
backoff = "1ms"
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let a = send(client().get(format!("{}/x", gw.url())).header("x-tag", "kept")).await;
    // The last attempt's answer is passed through as it came.
    assert!(a.is_backend(502, "bad gateway from the backend"), "{a:?}");
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 3);
    for arrival in &arrivals {
        let ms = arrival
            .timeout_ms
            .expect("every attempt carries x-request-timeout-ms");
        assert!(0 < ms && ms <= 2000, "{arrival:?}");
        // Every attempt carries the client's headers, not only the first.
        assert_eq!(arrival.tag.as_deref(), Some("kept"), "{arrival:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_instance() {
    let (resetter, resets) = tcp_backend(|stream| async move { hang_up(stream, true) }).await;
    let live = Backend::start(|_| async { reply(200, "live") }).await;
    // Least requests (the default) picks between two idle instances at random: a retry that could
    // land on the instance that just failed would do so half the time.
    let toml = config(&[&resetter, &live.url], "timeout = \"2s\"", "");
    let gw = gateway(&toml).await;
    let http = client();
    for i in 0..20 {
        let a = send(http.get(format!("{}/x", gw.url()))).await;
        assert!(a.is_backend(200, "live"), "request {i}: {a:?}");
    }
    assert!(
        resets.load(Ordering::SeqCst) > 0,
        "the resetter was tried first sometimes"
    );
    assert_eq!(live.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodies_kept_for_replay_are_retried() {
    let backend = Backend::start(|_| async { reply(503, "unavailable") }).await;
    let toml = config(
        &[&backend.url],
        r#"
timeout = "2s"
[services.svc.retry]
attempts = 2
backoff = "1ms"
max_body = "1KiB"
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let url = format!("{}/doc", gw.url());

    let a = send(http.put(&url).body(vec![b'x'; 1024])).await;
    assert!(a.is_backend(503, "unavailable"), "{a:?}");
    assert_eq!(
        backend.hits(),
        2,
        "a PUT of max_body bytes is kept and sent again"
    );

    let a = send(http.put(&url).body(vec![b'x'; 1025])).await;
    assert!(a.is_backend(503, "unavailable"), "{a:?}");
    assert_eq!(backend.hits(), 3, "a larger one streams, once");

    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"small"))]);
    let a = send(http.put(&url).body(reqwest::Body::wrap_stream(chunks))).await;
    assert!(a.is_backend(503, "unavailable"), "{a:?}");
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 4, "so does one of unknown length");
    assert_eq!(arrivals[3].body, "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_elsewhere_when_configured() {
    let hanging = Backend::start(|_| std::future::pending::<Response>()).await;
    let live = Backend::start(|_| async { reply(200, "live") }).await;
    let toml = config(
        &[&hanging.url, &live.url],
        r#"
timeout = "200ms"
load_balancing = "round_robin"
[services.svc.retry]
on = ["timeout"]
"#,
        "timeout = \"5s\"",
    );
    let gw = gateway(&toml).await;
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(200, "live"), "{a:?}");
    assert_eq!((hanging.hits(), live.hits()), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// 4. The retry budget

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget() {
    let backend = Backend::start(|_| async { reply(503, "unavailable") }).await;
    // budget 0.2 of the requests of the last 10 s and no floor: retry k is granted when the k×5-th
    // request fails, and only one per request (a second would exceed the share), so 50 requests
    // make exactly 10 retries.
    let toml = config(
        &[&backend.url],
        r#"
timeout = "2s"
[services.svc.circuit_breaker]
enabled = false
[services.svc.retry]
attempts = 3
backoff = "1ms"
budget = 0.2
min_retries_per_second = 0
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    for i in 0..50 {
        let a = send(http.get(format!("{}/x", gw.url()))).await;
        assert!(a.is_backend(503, "unavailable"), "request {i}: {a:?}");
    }
    assert_eq!(backend.hits(), 60);
}

// ---------------------------------------------------------------------------------------------
// 5. Timeouts: the service's per attempt, the route's overall

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_a_504_within_the_attempt_and_route_deadlines() {
    let hanging = Backend::start(|_| std::future::pending::<Response>()).await;
    let toml = format!(
        r#"
[services.short]
urls = ["{url}"]
timeout = "300ms"
[services.short.retry]
attempts = 1

[services.long]
urls = ["{url}"]
timeout = "5s"

[[routes]]
prefix = "/short"
service = "short"
auth = "none"

[[routes]]
prefix = "/long"
service = "long"
auth = "none"
timeout = "500ms"
"#,
        url = hanging.url
    );
    let gw = gateway(&toml).await;
    let http = client();

    let a = send(http.get(format!("{}/short", gw.url()))).await;
    assert!(a.is(504, "UPSTREAM_TIMEOUT"), "{a:?}");
    // The backend never answers, so only the gateway's clock ended the request: the attempt was
    // told its time was the service's timeout.
    let arrivals = hanging.arrivals();
    assert_eq!(arrivals.len(), 1);
    let ms = arrivals[0].timeout_ms.unwrap();
    assert!(0 < ms && ms <= 300, "{:?}", arrivals[0]);

    // The route's deadline comes first: the attempt gets what is left of it, not the service's
    // 5 s, and the answer arrives long before those 5 s.
    let started = Instant::now();
    let a = send(http.get(format!("{}/long", gw.url()))).await;
    assert!(a.is(504, "UPSTREAM_TIMEOUT"), "{a:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let arrivals = hanging.arrivals();
    assert_eq!(arrivals.len(), 2, "a timeout is not retried by default");
    assert_eq!(arrivals[1].path, "/long");
    let ms = arrivals[1].timeout_ms.unwrap();
    assert!(0 < ms && ms <= 500, "{:?}", arrivals[1]);
}

// ---------------------------------------------------------------------------------------------
// 6. Bulkhead

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_concurrent_requests_fail_fast_with_503() {
    let gate = Arc::new(Gate::new());
    let backend = {
        let gate = gate.clone();
        Backend::start(move |_| {
            let passed = gate.passed();
            async move {
                passed.await;
                reply(200, "slow")
            }
        })
        .await
    };
    let toml = config(
        &[&backend.url],
        r#"
timeout = "5s"
max_concurrent = 4
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..10 {
        let (request, done_tx) = (http.get(format!("{}/x", gw.url())), done_tx.clone());
        tokio::spawn(async move { done_tx.send(send(request).await) });
    }

    // Six answers arrive while the backend still holds the other four (the gate is closed): they
    // did not wait for a slot.
    for _ in 0..6 {
        let a = tokio::time::timeout(TIMEOUT, done.recv()).await.unwrap().unwrap();
        assert!(a.is(503, "UPSTREAM_OVERLOADED"), "{a:?}");
        assert_eq!(a.retry_after.as_deref(), Some("1"), "{a:?}");
    }
    eventually("four requests at the backend", async || backend.hits() == 4).await;
    gate.open();
    for _ in 0..4 {
        let a = tokio::time::timeout(TIMEOUT, done.recv()).await.unwrap().unwrap();
        assert!(a.is_backend(200, "slow"), "{a:?}");
    }
    assert_eq!(backend.hits(), 4);
}

// ---------------------------------------------------------------------------------------------
// 7. One hanging service does not slow another

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_service_does_not_slow_another() {
    let hanging = Backend::start(|_| std::future::pending::<Response>()).await;
    let fast = Backend::start(|_| async { reply(200, "fast") }).await;
    let toml = format!(
        r#"
[services.a]
urls = ["{hanging}"]
timeout = "2s"

[services.b]
urls = ["{fast}"]
timeout = "2s"

[[routes]]
prefix = "/a"
service = "a"
auth = "none"

[[routes]]
prefix = "/b"
service = "b"
auth = "none"
"#,
        hanging = hanging.url,
        fast = fast.url
    );
    let gw = gateway(&toml).await;
    let http = client();

    let a_done = Arc::new(AtomicUsize::new(0));
    let mut a_requests = JoinSet::new();
    for _ in 0..20 {
        let (request, a_done) = (http.get(format!("{}/a", gw.url())), a_done.clone());
        a_requests.spawn(async move {
            let a = send(request).await;
            a_done.fetch_add(1, Ordering::SeqCst);
            a
        });
    }
    eventually("20 requests pending at A", async || hanging.hits() == 20).await;

    for b in concurrent_gets(&format!("{}/b", gw.url()), 20).await {
        assert!(b.is_backend(200, "fast"), "{b:?}");
    }
    assert_eq!(fast.hits(), 20);
    assert_eq!(
        a_done.load(Ordering::SeqCst),
        0,
        "B finished while A's requests were pending"
    );

    while let Some(a) = a_requests.join_next().await {
        let a = a.unwrap();
        assert!(a.is(504, "UPSTREAM_TIMEOUT"), "{a:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. A backend that breaks mid-answer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_upstream_is_never_a_complete_answer() {
    let cases: [(&str, &'static [u8], bool); 4] = [
        ("Content-Length, reset", b"Content-Length: 100\r\n\r\nhello", true),
        (
            "Content-Length, closed",
            b"Content-Length: 100\r\n\r\nhello",
            false,
        ),
        (
            "chunked, reset",
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            true,
        ),
        (
            "chunked, closed",
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            false,
        ),
    ];
    for (case, rest, rst) in cases {
        // The backend sends the head and five bytes, and breaks the connection once the client
        // has the response head (so the break cannot overtake what was sent before it).
        let go = Arc::new(Notify::new());
        let (url, requests) = {
            let go = go.clone();
            tcp_backend(move |mut stream| {
                let go = go.clone();
                async move {
                    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
                    answer.extend_from_slice(rest);
                    stream.write_all(&answer).await.unwrap();
                    go.notified().await;
                    hang_up(stream, rst);
                }
            })
            .await
        };
        let gw = gateway(&config(&[&url], "timeout = \"2s\"", "")).await;
        let response = tokio::time::timeout(TIMEOUT, client().get(format!("{}/x", gw.url())).send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200, "{case}");
        let declared = response.content_length();
        go.notify_one();
        let body = tokio::time::timeout(TIMEOUT, response.bytes()).await.unwrap();
        match body {
            Err(_) => {}
            // Only acceptable when the client can tell it is short.
            Ok(body) => assert!(
                declared.is_some_and(|len| (body.len() as u64) < len),
                "{case}: the client got a complete-looking body {body:?} (declared {declared:?})"
            ),
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "{case}: answers are never retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_before_the_response_head_is_a_502() {
    for rst in [true, false] {
        let (url, requests) = tcp_backend(move |stream| async move { hang_up(stream, rst) }).await;
        let gw = gateway(&config(&[&url], "timeout = \"2s\"", "")).await;
        let a = send(client().get(format!("{}/x", gw.url()))).await;
        assert!(a.is(502, "UPSTREAM_UNAVAILABLE"), "rst {rst}: {a:?}");
        // A GET is retried once by default.
        assert_eq!(requests.load(Ordering::SeqCst), 2, "rst {rst}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_every_connection_it_accepts_is_a_502_not_a_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let gw = gateway(&config(&[&url], "timeout = \"5s\"", "")).await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let before = accepted.load(Ordering::SeqCst);
        let a = send(
            client()
                .request(method.clone(), format!("{}/x", gw.url()))
                .body("b"),
        )
        .await;
        assert!(a.is(502, "UPSTREAM_UNAVAILABLE"), "{method}: {a:?}");
        // Whether the close came before the request was written (as a failed connect, retried
        // for any method) or after (retried only for a GET): at most the default two attempts.
        let tried = accepted.load(Ordering::SeqCst) - before;
        assert!((1..=2).contains(&tried), "{method}: {tried} connections");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Keep-alive connections to a backend

/// An HTTP/1.1 backend that answers every request on a connection until it has been idle for
/// `idle_close`, then closes it (as nginx's `keepalive_timeout` does). It counts connections and
/// requests, and `closed` wakes when it has closed one.
struct KeepAliveBackend {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<Notify>,
}

impl KeepAliveBackend {
    async fn start(idle_close: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Notify::new());
        let (c, r, done) = (connections.clone(), requests.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (r, done) = (r.clone(), done.clone());
                tokio::spawn(async move {
                    serve_keep_alive(stream, idle_close, &r).await;
                    done.notify_one();
                });
            }
        });
        Self {
            url,
            connections,
            requests,
            closed,
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

/// Answers `200 ok` to each request head (and its Content-Length body) on `stream` until it is
/// idle for `idle_close` or the peer closes it.
async fn serve_keep_alive(mut stream: TcpStream, idle_close: Duration, requests: &AtomicUsize) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tokio::time::timeout(idle_close, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while pending.len() < head_end + body_len {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        pending.drain(..head_end + body_len);
        requests.fetch_add(1, Ordering::SeqCst);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// On one thread, as the gateway runs with `worker_threads = 1`: a connection is ready for the
/// next request by the time its response body ends, so reuse is exact. (On a multi-threaded
/// runtime a connection can come back a moment after the next request looked for one.)
#[tokio::test(flavor = "current_thread")]
async fn backend_connections_are_reused_and_replaced_once_the_backend_closes_them() {
    let backend = KeepAliveBackend::start(Duration::from_secs(1)).await;
    let gw = gateway(&config(&[&backend.url], "timeout = \"2s\"", "")).await;
    let http = client();
    let url = format!("{}/x", gw.url());

    // One after another, every method, bodies or not: one connection carries them all.
    for i in 0..10 {
        let request = match i % 3 {
            0 => http.get(&url),
            1 => http.post(&url).body("a body"),
            _ => http.delete(&url),
        };
        let a = send(request).await;
        assert!(a.is_backend(200, "ok"), "request {i}: {a:?}");
    }
    assert_eq!(backend.counts(), (1, 10));

    // The backend closes the idle connection. The next request, a POST (never retried once it
    // may have been sent), goes out on a new connection rather than into the closed one.
    tokio::time::timeout(TIMEOUT, backend.closed.notified())
        .await
        .expect("the backend closes an idle connection");
    let a = send(http.post(&url).body("after the close")).await;
    assert!(a.is_backend(200, "ok"), "{a:?}");
    assert_eq!(backend.counts(), (2, 11));

    // Requests at once get connections of their own, which are kept for the next ones.
    let batch = || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let sends = (0..4).map(|_| send(http.get(&url)));
            for a in futures_util::future::join_all(sends).await {
                assert!(a.is_backend(200, "ok"), "{a:?}");
            }
        }
    };
    for _ in 0..6 {
        batch().await;
    }
    // Never more connections than requests in flight at once: the one closed, then four.
    let (connections, _) = backend.counts();
    assert!(
        connections <= 1 + 4,
        "later batches reuse the kept connections: {connections} opened"
    );
    assert_eq!(backend.counts().1, 11 + 6 * 4);
}

// ---------------------------------------------------------------------------------------------
// 10. The upstream's Retry-After

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_retry_after_is_waited_for_when_it_fits_the_deadline() {
    let answer = |n: usize| async move {
        if n == 1 {
            Response::builder()
                .status(503)
                .header("retry-after", "1")
                .body(Body::from("later"))
                .unwrap()
        } else {
            reply(200, "now")
        }
    };
    let service = r#"
timeout = "5s"
[services.svc.retry]
attempts = 2
"#;

    let backend = Backend::start(answer).await;
    let gw = gateway(&config(&[&backend.url], service, "timeout = \"5s\"")).await;
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(200, "now"), "{a:?}");
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 2);
    let waited = arrivals[1].at - arrivals[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "the retry came after {waited:?}"
    );
    // The retry has what is left of the route's 5 s, a second less.
    let ms = arrivals[1].timeout_ms.unwrap();
    assert!(0 < ms && ms <= 4000, "{:?}", arrivals[1]);

    // A second does not fit in a 500 ms deadline: the 503 is the answer, Retry-After included.
    let backend = Backend::start(answer).await;
    let gw = gateway(&config(&[&backend.url], service, "timeout = \"500ms\"")).await;
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(503, "later"), "{a:?}");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(backend.hits(), 1);
}

/// A backend's absurd `Retry-After` is just a wait that does not fit: the answer passes through
/// (it once overflowed the clock and, with `panic = "abort"`, would have killed the gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_upstream_retry_after_passes_through_without_a_retry() {
    let backend = Backend::start(|_| async {
        Response::builder()
            .status(503)
            .header("retry-after", "9300000000000000000")
            .body(Body::from("much later"))
            .unwrap()
    })
    .await;
    let service = "timeout = \"2s\"\n[services.svc.retry]\nattempts = 2\n";
    let gw = gateway(&config(&[&backend.url], service, "")).await;
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(503, "much later"), "{a:?}");
    assert_eq!(backend.hits(), 1);
    // And the gateway is still there.
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(503, "much later"), "{a:?}");
}

/// The attempt that opens the breaker does not turn into CIRCUIT_OPEN on its own retry: the
/// client gets the backend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_refused_by_the_breaker_returns_the_backends_answer() {
    let backend = Backend::start(|_| async { reply(503, "down") }).await;
    let service = r#"
timeout = "2s"
[services.svc.circuit_breaker]
min_requests = 1
failure_rate = 0.5
open_for = "1m"
[services.svc.retry]
attempts = 2
backoff = "1ms"
"#;
    let gw = gateway(&config(&[&backend.url], service, "")).await;
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(503, "down"), "{a:?}");
    assert_eq!(backend.hits(), 1);
    // Now open: the next request fails fast.
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is(503, "CIRCUIT_OPEN"), "{a:?}");
    assert_eq!(backend.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 11. Least requests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_more_to_the_instance_that_answers_sooner() {
    let fast = Backend::start(|_| async { reply(200, "fast") }).await;
    // The slow instance holds its requests until the test opens the gate, and tells of each.
    let gate = Arc::new(Gate::new());
    let arrived = Arc::new(Notify::new());
    let slow = {
        let (gate, arrived) = (gate.clone(), arrived.clone());
        Backend::start(move |_| {
            arrived.notify_one();
            let passed = gate.passed();
            async move {
                passed.await;
                reply(200, "slow")
            }
        })
        .await
    };
    let toml = config(
        &[&slow.url, &fast.url],
        r#"
timeout = "5s"
load_balancing = "least_requests"
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();

    // 20 requests, each sent once the previous one is answered (fast) or held (slow): all the slow
    // ones stay in flight together with the rest.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut request = tokio::spawn(send(http.get(format!("{}/x", gw.url()))));
        let at_slow = tokio::time::timeout(TIMEOUT, async {
            tokio::select! {
                a = &mut request => {
                    let a = a.unwrap();
                    assert!(a.is_backend(200, "fast"), "{a:?}");
                    false
                }
                () = arrived.notified() => true,
            }
        })
        .await
        .expect("the request neither completed nor reached the slow instance");
        if at_slow {
            held.push(request);
        }
    }
    let (fast_hits, slow_hits) = (fast.hits(), slow.hits());
    assert_eq!(fast_hits + slow_hits, 20);
    // Sent one after another, a fast request is over before the next is picked (give or take
    // the gateway releasing it), so only a tie sends one to the slow instance, holding on to
    // its first: at most a couple. (Random choice would give the slow one about half.)
    assert!(slow_hits <= 3, "fast {fast_hits}, slow {slow_hits}");
    assert!(fast_hits > slow_hits, "fast {fast_hits}, slow {slow_hits}");
    assert_eq!(held.len(), slow_hits);

    gate.open();
    for request in held {
        let a = request.await.unwrap();
        assert!(a.is_backend(200, "slow"), "{a:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Active health checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_instances_out_and_all_failing_is_503() {
    let a = Backend::start(|_| async { reply(200, "a") }).await;
    let b = Backend::start(|_| async { reply(200, "b") }).await;
    let toml = config(
        &[&a.url, &b.url],
        r#"
timeout = "2s"
load_balancing = "round_robin"
[services.svc.health_check]
path = "/health"
interval = "100ms"
unhealthy_after = 1
healthy_after = 1
"#,
        "",
    );
    let gw = gateway(&toml).await;
    let http = client();
    let url = format!("{}/x", gw.url());
    let get = async || send(http.get(&url)).await;

    // Round robin: two requests in a row reach both instances while both are available.
    for _ in 0..2 {
        assert_eq!(get().await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (1, 1));

    a.set_healthy(false);
    eventually("A out of rotation", async || {
        let before = a.hits();
        for _ in 0..2 {
            let answer = get().await;
            assert_eq!(answer.status, 200, "{answer:?}");
        }
        a.hits() == before
    })
    .await;
    let (a_before, b_before) = (a.hits(), b.hits());
    for _ in 0..20 {
        let answer = get().await;
        assert!(answer.is_backend(200, "b"), "{answer:?}");
    }
    assert_eq!((a.hits(), b.hits()), (a_before, b_before + 20));

    // Every instance failing its health check: fail fast, no backend touched.
    b.set_healthy(false);
    eventually("no healthy instance", async || {
        let answer = get().await;
        answer.is(503, "NO_HEALTHY_UPSTREAM")
    })
    .await;
    let hits = (a.hits(), b.hits());
    for _ in 0..5 {
        let answer = get().await;
        assert!(answer.is(503, "NO_HEALTHY_UPSTREAM"), "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
    }
    assert_eq!((a.hits(), b.hits()), hits);

    // And back.
    a.set_healthy(true);
    eventually("A back in rotation", async || {
        let answer = get().await;
        answer.is_backend(200, "a")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 13. A client's own failure is not the backend's

/// A client whose upload breaks (here: a malformed chunk) is the client's fault, not the
/// backend's: it must not count against the instance or the breaker. (Here each one is answered
/// 502 UPSTREAM_UNAVAILABLE and recorded as a failed call, so with the default breaker 20 bad
/// uploads from anyone open the circuit for every client for 30 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_broken_client_upload_does_not_count_against_the_backend() {
    let backend = Backend::start(|_| async { reply(200, "ok") }).await;
    let gw = gateway(&config(&[&backend.url], "timeout = \"2s\"", "")).await;
    let malformed = "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
    for i in 0..20 {
        let answer = common::raw(gw.addr, malformed).await;
        assert_eq!(common::first_status(&answer), 400, "upload {i}: {answer}");
    }
    let a = send(client().get(format!("{}/x", gw.url()))).await;
    assert!(a.is_backend(200, "ok"), "{a:?}");
}
