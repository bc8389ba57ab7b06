//! Edge hygiene end to end (SPEC.md Headers and Paths): request ids, X-Forwarded-*, hop-by-hop
//! headers, path normalization, body limits, upstream failures, streaming, slow clients and
//! request smuggling.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::any;
use bytes::Bytes;
use common::{
    USERS, client, dead_url, demo, error_body, first_status, gateway, one_route, raw, serve, until_closed,
};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

async fn echo_json(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_generated_otherwise_and_sent_upstream() {
    let users = demo(USERS).await;
    let gw = gateway(&one_route(&users.url(), "")).await;
    let c = client();
    let r = c
        .get(format!("{}/echo", gw.url()))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    assert_eq!(echo_json(r).await["headers"]["x-request-id"][0], "trace-abc.123");

    let r = c
        .get(format!("{}/echo", gw.url()))
        .header("x-request-id", "bad id <script>")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "bad id <script>");
    assert_eq!(id.len(), 36);
    assert_eq!(echo_json(r).await["headers"]["x-request-id"][0], id.as_str());
}

/// The backend joins the client's trace (its valid `traceparent`, passed on unchanged), or one
/// the gateway starts for the request when the client sent none or an invalid one.
#[tokio::test]
async fn backends_get_the_clients_traceparent_or_a_new_one() {
    let users = demo(USERS).await;
    let gw = gateway(&one_route(&users.url(), "")).await;
    let c = client();
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(format!("{}/echo", gw.url()))
        .header("traceparent", given)
        .send()
        .await
        .unwrap();
    assert_eq!(echo_json(r).await["headers"]["traceparent"][0], given);
    let mut seen = Vec::new();
    for sent in [None, Some("not-a-trace")] {
        let mut request = c.get(format!("{}/echo", gw.url()));
        if let Some(sent) = sent {
            request = request.header("traceparent", sent);
        }
        let echo = echo_json(request.send().await.unwrap()).await;
        let got = echo["headers"]["traceparent"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let parts: Vec<&str> = got.split('-').collect();
        assert_eq!(parts.len(), 4, "{got}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01"),
            "{got}"
        );
        seen.push(got);
    }
    assert_ne!(seen[0], seen[1], "each request starts its own trace");
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_replaced() {
    let users = demo(USERS).await;
    let gw = gateway(&one_route(&users.url(), "")).await;
    let r = client()
        .get(format!("{}/echo", gw.url()))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let h = &echo_json(r).await["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], gw.addr.to_string());
    assert!(
        h.get("forwarded").is_none() && h.get("x-real-ip").is_none(),
        "{h}"
    );
    // Host is the upstream's own authority.
    assert_eq!(h["host"][0], users.url().trim_start_matches("http://"));
}

#[tokio::test]
async fn trusted_proxies_have_their_chain_extended() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    let r = client()
        .get(format!("{}/echo", gw.url()))
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "shop.example")
        .send()
        .await
        .unwrap();
    let h = &echo_json(r).await["headers"];
    assert_eq!(h["x-forwarded-for"][0], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-host"][0], "shop.example");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    // A backend that reports the request headers it saw and answers with hop-by-hop headers.
    let app = Router::new().route(
        "/",
        any(|req: Request| async move {
            let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            Response::builder()
                .header("connection", "x-internal")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-visible", "yes")
                .body(Body::from(seen.join(",")))
                .unwrap()
        }),
    );
    let backend = serve(app).await;
    let gw = gateway(&one_route(&backend, "")).await;
    let reply = raw(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, x-drop-me\r\nX-Drop-Me: 1\r\nKeep-Alive: 300\r\n\
         TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nX-Keep: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(first_status(&reply), 200, "{reply}");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let seen: Vec<&str> = body.split(',').collect();
    assert!(seen.contains(&"x-keep"), "{body}");
    for gone in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!seen.contains(&gone), "{gone} reached the upstream: {body}");
    }
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-visible: yes"), "{head}");
    for gone in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(!head.contains(gone), "{gone} reached the client: {head}");
    }
}

#[tokio::test]
async fn paths_are_normalized_before_matching_and_forwarded_normalized() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        r#"
[services.svc]
urls = ["{u}"]
[[routes]]
prefix = "/echo/public"
service = "svc"
auth = "none"
"#,
        u = users.url()
    ))
    .await;
    let get = |path: &str| {
        raw(
            gw.addr,
            Box::leak(
                format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").into_boxed_str(),
            ),
        )
    };
    // Dot segments, encoded dots and double slashes resolve to the same route and path.
    for path in [
        "/echo/public/../public/a",
        "/echo/public/%2e/a",
        "//echo//public///a",
        "/echo/%70ublic/a",
    ] {
        let reply = get(path).await;
        assert_eq!(first_status(&reply), 200, "{path}: {reply}");
        assert!(
            reply.contains(r#""path":"/echo/public/a""#),
            "{path} forwarded as: {reply}"
        );
    }
    // Escaping the prefix with dot segments lands outside it: no route.
    for path in [
        "/echo/public/../private",
        "/echo/public/%2e%2e/private",
        "/echo/public/%2E%2E/private",
    ] {
        assert_eq!(first_status(&get(path).await), 404, "{path}");
    }
    // Encoded separators, backslashes and climbing above the root are refused outright.
    for path in [
        "/echo/public/..%2Fprivate",
        "/echo/public%2fa",
        "/echo/public/%5C..",
        "/echo/public/a\\b",
        "/../etc/passwd",
        "/%2e%2e/x",
        "/echo/public/%zz",
    ] {
        let reply = get(path).await;
        assert_eq!(first_status(&reply), 400, "{path}: {reply}");
        assert!(reply.contains(r#""code":"BAD_REQUEST""#), "{reply}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_chunked() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nmax_body_size = \"1KiB\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    let c = client();
    let r = c
        .post(format!("{}/upload", gw.url()))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(echo_json(r).await["bytes"], 1024, "exactly the limit passes");
    let r = c
        .post(format!("{}/upload", gw.url()))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    error_body(r, 413, "PAYLOAD_TOO_LARGE").await;
    // Chunked: no Content-Length, so the limit is enforced while streaming.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256]))));
    let r = c
        .post(format!("{}/upload", gw.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    error_body(r, 413, "PAYLOAD_TOO_LARGE").await;
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256]))));
    let r = c
        .post(format!("{}/upload", gw.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(echo_json(r).await["bytes"], 1024);
}

#[tokio::test]
async fn unreachable_upstreams_are_502_and_slow_ones_504() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        r#"
[server]
request_timeout = "5s"
[services.dead]
urls = ["{dead}"]
connect_timeout = "500ms"
[services.slow]
urls = ["{u}"]
timeout = "300ms"
[[routes]]
prefix = "/dead"
service = "dead"
auth = "none"
[[routes]]
prefix = "/echo"
service = "slow"
auth = "none"
"#,
        dead = dead_url(),
        u = users.url()
    ))
    .await;
    let c = client();
    let r = c.get(format!("{}/dead/x", gw.url())).send().await.unwrap();
    let body = error_body(r, 502, "UPSTREAM_UNAVAILABLE").await;
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no upstream addresses in messages: {body}"
    );
    let r = c
        .get(format!("{}/echo?delay_ms=3000", gw.url()))
        .send()
        .await
        .unwrap();
    error_body(r, 504, "UPSTREAM_TIMEOUT").await;
    // Upstream errors pass through untouched.
    let r = c.get(format!("{}/echo?fail=503", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "injected failure");
}

#[tokio::test]
async fn the_request_timeout_bounds_the_whole_request() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nrequest_timeout = \"200ms\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    let r = client()
        .get(format!("{}/echo?delay_ms=3000", gw.url()))
        .send()
        .await
        .unwrap();
    error_body(r, 504, "UPSTREAM_TIMEOUT").await;
}

/// An upload reaches the backend while the client is still sending: the backend sees the first
/// chunk before the client sends the rest, which it only does after hearing the backend got it.
#[tokio::test]
async fn request_bodies_stream_to_the_upstream() {
    let (first_seen_tx, mut first_seen) = mpsc::channel::<()>(1);
    let app = Router::new().route(
        "/",
        any(move |req: Request| {
            let first_seen_tx = first_seen_tx.clone();
            async move {
                let mut body = req.into_body().into_data_stream();
                let mut total = 0usize;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.unwrap();
                    if total == 0 && !chunk.is_empty() {
                        let _ = first_seen_tx.send(()).await;
                    }
                    total += chunk.len();
                }
                total.to_string()
            }
        }),
    );
    let backend = serve(app).await;
    let gw = gateway(&one_route(&backend, "")).await;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let request = tokio::spawn(
        client()
            .post(gw.url())
            .body(reqwest::Body::wrap_stream(tokio_stream(rx)))
            .send(),
    );
    tx.send(Ok(Bytes::from_static(b"first chunk;"))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), first_seen.recv())
        .await
        .expect("the backend never saw the first chunk: the gateway buffers request bodies");
    tx.send(Ok(Bytes::from(vec![b'z'; 100_000]))).await.unwrap();
    drop(tx);
    let r = request.await.unwrap().unwrap();
    assert_eq!(r.text().await.unwrap(), (12 + 100_000).to_string());
}

/// Responses (SSE here) reach the client as they are produced: the backend sends its second
/// event only after the client has received the first.
#[tokio::test]
async fn response_bodies_and_sse_stream_to_the_client() {
    let client_got_first = Arc::new(Notify::new());
    let gate = client_got_first.clone();
    let app = Router::new().route(
        "/events",
        any(move || {
            let gate = gate.clone();
            async move {
                let events = async_stream(gate);
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(events))
                    .unwrap()
            }
        }),
    );
    let backend = serve(app).await;
    let gw = gateway(&one_route(&backend, "")).await;
    let r = client().get(format!("{}/events", gw.url())).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the first event never arrived: the gateway buffers responses")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    client_got_first.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: two\n\n");
}

fn async_stream(gate: Arc<Notify>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0, move |step| {
        let gate = gate.clone();
        async move {
            match step {
                0 => Some((Ok(Bytes::from_static(b"data: one\n\n")), 1)),
                1 => {
                    gate.notified().await;
                    Some((Ok(Bytes::from_static(b"data: two\n\n")), 2))
                }
                _ => None,
            }
        }
    })
}

fn tokio_stream(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_large_body_streams_both_ways() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nmax_body_size = \"64MiB\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    let c = client();
    let chunk = Bytes::from(vec![b'q'; 1 << 20]);
    let chunks = futures_util::stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = c
        .post(format!("{}/upload", gw.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(echo_json(r).await["bytes"], 64 << 20);
    let r = c
        .get(format!("{}/bytes?size={}", gw.url(), 64 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-length"], (64u64 << 20).to_string().as_str());
    let mut total = 0;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, 64 << 20);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nheader_read_timeout = \"300ms\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    // The connection is closed by the gateway long before the client's 30 s patience runs out.
    let reply = until_closed(gw.addr, b"GET /echo HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        .await
        .expect("the gateway kept the slow connection open");
    assert!(reply.is_empty() || first_status(&reply) == 408, "{reply}");
}

/// The head timer runs between requests too: a keep-alive connection that sends no next request is
/// closed after `header_read_timeout`. A request being served is never cut off by it, however long
/// its answer takes to start or to stream.
#[tokio::test]
async fn the_head_timer_closes_idle_connections_but_never_a_request_being_served() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nheader_read_timeout = \"300ms\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    let started = std::time::Instant::now();
    let reply = until_closed(gw.addr, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("the gateway closed the idle keep-alive connection");
    assert_eq!(first_status(&reply), 200, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );

    // An answer that starts after three timeouts, and one that streams for four.
    let c = client();
    let r = c
        .get(format!("{}/health?delay_ms=1000", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/events?n=4&interval_ms=350", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("the stream ran to its end");
    assert_eq!(text.matches("data:").count(), 4, "{text}");
}

/// Before its first byte the listener does not know HTTP/1 from h2c, and hyper's header timer has
/// not started: a client that sends nothing, or half of the HTTP/2 preface, is cut off all the same.
#[tokio::test]
async fn a_client_that_sends_nothing_or_half_a_preface_is_cut_off() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[server]\nheader_read_timeout = \"300ms\"\n{}",
        one_route(&users.url(), "")
    ))
    .await;
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let outcome = until_closed(gw.addr, sent).await;
        // Closed with unread bytes, the socket is reset: also cut off.
        let cut_off = match &outcome {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            cut_off,
            "the gateway kept a connection that sent {sent:?} open: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn request_smuggling_attempts_are_refused() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(any(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            format!("got {} bytes", body.len())
        }
    }));
    let backend = serve(app).await;
    let gw = gateway(&one_route(&backend, "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";

    // Different Content-Lengths, a signed one, and transfer-codings other than chunked: 400.
    for request in [
        "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".to_owned(),
        "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc".to_owned(),
        "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0x3\r\n\r\nabc".to_owned(),
        "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_owned(),
        "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_owned(),
        format!(
            "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ] {
        let reply = raw(gw.addr, &request).await;
        assert_eq!(first_status(&reply), 400, "{request:?} got {reply}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{request:?} got {reply}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a malformed request reached the backend"
    );

    // Content-Length and Transfer-Encoding together: chunked wins, the request with its 0-length
    // body is forwarded once, and the connection is closed, so the bytes hidden behind it (which
    // a CL-reading server would take for a second request) are never parsed as a request.
    for request in [
        format!(
            "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 42\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 42\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ] {
        let before = hits.load(Ordering::SeqCst);
        let reply = raw(gw.addr, &request).await;
        assert_eq!(first_status(&reply), 200, "{reply}");
        assert!(reply.contains("got 0 bytes"), "{reply}");
        assert_eq!(
            reply.matches("HTTP/1.1 ").count(),
            1,
            "a second response means the smuggled request ran: {reply}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    }
}
