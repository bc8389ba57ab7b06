//! Shared end-to-end harness: a real gateway (the library's own listener and pipeline) and real
//! backends, all on 127.0.0.1:0.
#![allow(dead_code)]

pub mod graphql;
pub mod process;
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gateway::config::{Source, parse};
use gateway::demo::backends::{self, DemoService, RunningBackend};
use gateway::snapshot::Deps;
use gateway::{Gateway, RunningServer, Snapshot};
use tokio::net::TcpListener;

/// A gateway serving `toml` (with `{NAME}` placeholders already filled in by the caller).
pub async fn gateway(toml: &str) -> RunningServer {
    gateway_with(toml, &Deps::default()).await
}

/// [`gateway`] with injected dependencies, like a fake rate-limiter clock
/// (`gateway::ratelimit::LimiterClock::fake()`).
pub async fn gateway_with(toml: &str, deps: &Deps) -> RunningServer {
    let source = Source::new("routes.toml", toml);
    let config = parse(&source, &|_| None)
        .and_then(|checked| checked.into_result())
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let snapshot =
        Snapshot::build_with(config, deps).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    RunningServer::start(Gateway::new(snapshot), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A demo backend (its `/echo` reports what it received).
pub async fn demo(service: DemoService) -> RunningBackend {
    backends::spawn(service, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Serves an axum router on a free port and returns its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A fresh, empty directory under the system temp dir named `gateway-{name}-…`, removed when
/// the returned guard drops.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("gateway-{name}-"))
        .tempdir()
        .unwrap()
}

/// A URL nothing listens on: bind, read the port, close.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// One service named `svc` at `url` and one all-method, no-auth prefix route to it.
pub fn one_route(url: &str, route_extra: &str) -> String {
    format!(
        r#"
[services.svc]
urls = ["{url}"]
timeout = "2s"

[[routes]]
prefix = "/"
service = "svc"
auth = "none"
{route_extra}
"#
    )
}

/// A client that neither follows redirects nor uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// The JSON error body of a gateway-produced error, checked against SPEC.md's shape.
pub async fn error_body(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "unexpected status");
    assert_eq!(response.headers()["content-type"], "application/json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{body}");
    body
}

/// Sends raw bytes and returns everything the server answers until it closes or goes quiet.
/// Blocking I/O, so call it from `spawn_blocking` (or a plain test).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(quiet)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw bytes and reads until the server closes the connection, for tests that a server
/// hangs up on a client: `Err` when it is still open after 30 s (or was reset).
pub async fn until_closed(addr: SocketAddr, sent: &'static [u8]) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(sent).unwrap();
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .map(|_| String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .unwrap()
}

/// The status code of the first response in a raw exchange.
pub fn first_status(raw: &str) -> u16 {
    raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let request = request.as_bytes().to_vec();
    tokio::task::spawn_blocking(move || raw_exchange(addr, &request, Duration::from_secs(2)))
        .await
        .unwrap()
}

pub const USERS: DemoService = DemoService::Users;

/// Polls `check` every 50 ms until it holds, failing after 10 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let polled = tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting for {what}");
}

/// Sends `request` and returns the response, failing the test if the gateway takes over 10 s to
/// answer (a hang is a failure, not a stuck test) or the request fails.
pub async fn send_in_time(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("the gateway did not answer in time")
        .unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

/// A response header as text, if present.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Seconds since the Unix epoch, for `iat` and `exp`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token signed with `secret` under key id `kid`, with `claims` as given.
pub fn hs256_token(secret: &str, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token as the demo config accepts it (its default secret, issuer, audience and key id): user
/// `u1` holding `scope`, valid ten minutes.
pub fn demo_token(scope: &str) -> String {
    let claims = serde_json::json!({
        "sub": "u1", "scope": scope, "iss": "gateway-demo", "aud": "gateway", "exp": unix_now() + 600,
    });
    hs256_token("demo-only-secret-change-me-0123456789", "demo", &claims)
}

/// xorshift64*: a fixed sequence, so a failure replays exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
