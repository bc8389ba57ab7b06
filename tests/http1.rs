//! The gateway's own HTTP/1.1 server codec (`gateway/src/server/h1.rs`) end to end, on the wire:
//! keep-alive, pipelining, HTTP/1.0, bodiless answers, `Expect: 100-continue`, head limits and
//! malformed heads, chunked bodies both ways, the lingering close, graceful shutdown and `Date`.
//! Every exchange is raw bytes on a loopback socket, so framing mistakes cannot be hidden by a
//! forgiving client.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{any, get};
use bytes::Bytes;
use common::{dead_url, gateway, serve};
use gateway::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::timeout;

/// The longest any single wait may take: a broken behaviour fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(5);
/// A `Date` the backend sets on `/app/dated` (RFC 2616's example: 784887151 s after the epoch).
const OLD_DATE: &str = "Tue, 15 Nov 1994 08:12:31 GMT";

// ---------------------------------------------------------------------------------------------
// The backend and the gateway in front of it.
// ---------------------------------------------------------------------------------------------

/// Holds a request inside the backend: `arrived` fires when it gets there, and it is answered
/// once `release` fires.
#[derive(Default)]
struct Hold {
    arrived: Notify,
    release: Notify,
}

/// The pieces `/app/stream` sends, each its own frame, with no length known up front.
fn streamed_pieces() -> Vec<Bytes> {
    let filler: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    vec![
        Bytes::from_static(b"alpha,"),
        Bytes::from_static(b"beta,"),
        Bytes::from(filler),
        Bytes::from_static(b",omega"),
    ]
}

fn streamed_body() -> Vec<u8> {
    streamed_pieces().concat()
}

/// `/app/hello` (fixed length), `/app/say/{word}` (`?delay_ms=N` waits first), `/app/echo` (the
/// body back, its length in `x-body-len`), `/app/stream` (unknown length), `/app/empty` (204),
/// `/app/dated` (its own `Date`) and `/app/hold` (see [`Hold`]).
fn backend(hold: Arc<Hold>) -> Router {
    Router::new()
        .route("/app/hello", get(|| async { "hello world" }))
        .route("/app/say/{word}", any(say))
        .route("/app/echo", any(echo))
        .route(
            "/app/stream",
            get(|| async {
                let pieces = streamed_pieces().into_iter().map(Ok::<_, std::io::Error>);
                Body::from_stream(futures_util::stream::iter(pieces))
            }),
        )
        .route("/app/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/app/dated",
            get(|| async { ([(header::DATE, OLD_DATE)], "old") }),
        )
        .route(
            "/app/hold",
            get(move || {
                let hold = hold.clone();
                async move {
                    hold.arrived.notify_one();
                    hold.release.notified().await;
                    "released"
                }
            }),
        )
}

async fn say(Path(word): Path<String>, uri: Uri) -> String {
    let delay = uri
        .query()
        .and_then(|q| q.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    word
}

async fn echo(request: Request) -> Response {
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    Response::builder()
        .header("x-body-len", body.len())
        .body(Body::from(body))
        .unwrap()
}

/// A gateway with `server` as its `[server]` section: `/app` goes to the test backend, `/dead`
/// to a port nothing listens on, and anything else is a 404.
async fn start(server: &str) -> (RunningServer, Arc<Hold>) {
    let hold = Arc::new(Hold::default());
    let app = serve(backend(hold.clone())).await;
    let dead = dead_url();
    let gw = gateway(&format!(
        r#"
[server]
{server}

[services.app]
urls = ["{app}"]
timeout = "10s"

[services.dead]
urls = ["{dead}"]

[[routes]]
prefix = "/app"
service = "app"
auth = "none"

[[routes]]
prefix = "/dead"
service = "dead"
auth = "none"
"#
    ))
    .await;
    (gw, hold)
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client that checks the framing of what it reads.
// ---------------------------------------------------------------------------------------------

/// One client connection: bytes written as given, answers parsed strictly from what is read.
struct Wire {
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    /// Read and not yet parsed.
    buf: Vec<u8>,
}

/// A parsed answer.
struct Answer {
    status: u16,
    /// Names in lower case, in the order sent.
    headers: Vec<(String, String)>,
    /// Decoded (de-chunked) body.
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    /// The head, and the body's length and start (a body can be 300 KB).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body_start", &start)
            .finish()
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The gateway's JSON error body (SPEC.md), checked for its shape; returns its code.
    fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let body: serde_json::Value =
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()));
        let error = &body["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(
            error["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        error["code"].as_str().unwrap_or_default().to_owned()
    }
}

impl Wire {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (rd, wr) = stream.into_split();
        Self {
            rd,
            wr: Some(wr),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let wr = self.wr.as_mut().expect("the write half was taken");
        timeout(PATIENCE, wr.write_all(bytes.as_ref()))
            .await
            .expect("the gateway did not take the request in time")
            .unwrap();
    }

    /// The write half, for a task of its own that keeps sending while this one reads.
    fn take_writer(&mut self) -> OwnedWriteHalf {
        self.wr.take().expect("the write half was taken")
    }

    /// Reads what arrives next: how many bytes, 0 at the end of the stream.
    async fn more(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(64 * 1024);
        timeout(PATIENCE, self.rd.read_buf(&mut self.buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing arrived in time; unparsed so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            })
    }

    /// Reads until `buf` holds `n` bytes; the stream must not end before.
    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            let read = self.more().await.expect("the connection failed");
            assert!(
                read > 0,
                "the connection ended after {} of {n} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// One line (without its CRLF); a bare LF is refused.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.take(end + 1);
                let line = line
                    .strip_suffix(b"\r\n")
                    .unwrap_or_else(|| panic!("a line not ended by CRLF: {line:?}"));
                return String::from_utf8(line.to_vec()).expect("a line that is not text");
            }
            let have = self.buf.len();
            self.need(have + 1).await;
        }
    }

    /// An answer's head: its status and headers.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().await;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// The next answer, its body read as its framing says (to the end of the stream when it
    /// has neither a length nor chunked coding).
    async fn answer(&mut self) -> Answer {
        let (status, headers) = self.head().await;
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if status < 200 || status == 204 || status == 304 {
            return answer;
        }
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if chunked {
            assert!(
                answer.header("content-length").is_none(),
                "chunked with a length: {answer:?}"
            );
            answer.body = self.chunked_body().await;
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("a Content-Length that is a number");
            self.need(length).await;
            answer.body = self.take(length);
        } else {
            answer.body = self.rest().await;
        }
        answer
    }

    /// An answer to `HEAD` (or another that carries no body): the head only.
    async fn bodiless_answer(&mut self) -> Answer {
        let (status, headers) = self.head().await;
        Answer {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// A chunked body, decoded strictly: hex sizes, CRLF after each chunk, the last chunk and
    /// an (empty or not) trailer section.
    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let digits = line.split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(digits, 16)
                .unwrap_or_else(|_| panic!("not a chunk-size line: {line:?}"));
            if size == 0 {
                while !self.line().await.is_empty() {}
                return body;
            }
            self.need(size + 2).await;
            body.extend(self.take(size));
            assert_eq!(self.take(2), b"\r\n", "a chunk not followed by CRLF");
        }
    }

    /// Everything until the server closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        while self.more().await.expect("the connection was reset") > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// The next answer refuses the request (`status`, the SPEC.md JSON error `BAD_REQUEST`), and
    /// the server then closes the connection.
    async fn expect_refused(&mut self, status: u16) {
        let answer = self.answer().await;
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.error_code(), "BAD_REQUEST");
        self.expect_closed().await;
    }

    /// The server closed the connection (a FIN, not a reset) and sent nothing more.
    async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let read = self.more().await.expect("the connection was reset, not closed");
        assert_eq!(
            read,
            0,
            "more bytes instead of the end: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), if it is one.
fn imf_fixdate(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu,", "Fri,", "Sat,", "Sun,", "Mon,", "Tue,", "Wed,"];
    let parts: Vec<&str> = text.split(' ').collect();
    let [weekday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if text.len() != 29 || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else {
        return None;
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (WEEKDAYS[days.rem_euclid(7) as usize] == weekday).then_some(days * 86_400 + h * 3600 + m * 60 + s)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// Keep-alive: one connection carries several requests; the client's `Connection: close` gets
/// its answer (saying `close`), then the end of the connection.
#[tokio::test]
async fn keep_alive_carries_requests_until_the_client_says_close() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    for word in ["one", "two", "three"] {
        wire.send(get_request(&format!("/app/say/{word}"))).await;
        let answer = wire.answer().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, word));
        assert_eq!(answer.header("connection"), None, "{answer:?}");
    }
    wire.send("GET /app/say/last HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await;
    let answer = wire.answer().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "last"));
    assert_eq!(answer.header("connection"), Some("close"));
    wire.expect_closed().await;
}

/// Pipelining: requests in one write (the first slow, the second with a body) are answered in
/// order on the same connection; one saying `Connection: Close` is the last served.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!(
        "{}POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\ntwo{}",
        get_request("/app/say/one?delay_ms=300"),
        get_request("/app/say/three"),
    ))
    .await;
    for expected in ["one", "two", "three"] {
        let answer = wire.answer().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, expected));
    }
    wire.send(format!(
        "{}GET /app/say/five HTTP/1.1\r\nHost: gw\r\nConnection: Close\r\n\r\n{}",
        get_request("/app/say/four"),
        get_request("/app/say/never"),
    ))
    .await;
    for expected in ["four", "five"] {
        let answer = wire.answer().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, expected));
    }
    // Nothing after the request that said close is served (RFC 9112 §9.6).
    wire.expect_closed().await;
}

/// A server SHOULD ignore an empty line before a request line (RFC 9112 §2.2), as some clients
/// send one after a POST body.
#[tokio::test]
async fn an_empty_line_before_a_request_line_is_ignored() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!(
        "POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\none\r\n{}",
        get_request("/app/say/two")
    ))
    .await;
    assert_eq!(wire.answer().await.text(), "one");
    assert_eq!(wire.answer().await.text(), "two");
}

/// HTTP/1.0 without `Connection: keep-alive`: the answer, then the end of the connection.
#[tokio::test]
async fn http10_closes_after_the_answer_by_default() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send("GET /app/hello HTTP/1.0\r\nHost: gw\r\n\r\n").await;
    let answer = wire.answer().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello world"));
    assert_ne!(answer.header("connection"), Some("keep-alive"), "{answer:?}");
    wire.expect_closed().await;
}

/// HTTP/1.0 with `Connection: keep-alive`: the answer says `connection: keep-alive` and the
/// connection carries the next request.
#[tokio::test]
async fn http10_keep_alive_is_honoured_and_announced() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    for word in ["one", "two"] {
        wire.send(format!(
            "GET /app/say/{word} HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let answer = wire.answer().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, word));
        assert_eq!(answer.header("connection"), Some("keep-alive"), "{answer:?}");
    }
    // The last one, without keep-alive, ends it.
    wire.send("GET /app/say/last HTTP/1.0\r\nHost: gw\r\n\r\n").await;
    assert_eq!(wire.answer().await.text(), "last");
    wire.expect_closed().await;
}

/// An answer of unknown length to an HTTP/1.0 client is not chunked (HTTP/1.0 has no chunked
/// coding): it has no length and runs until the connection closes.
#[tokio::test]
async fn http10_gets_an_unknown_length_body_delimited_by_the_close() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send("GET /app/stream HTTP/1.0\r\nHost: gw\r\n\r\n").await;
    let answer = wire.answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("transfer-encoding"), None, "{answer:?}");
    assert_eq!(answer.header("content-length"), None, "{answer:?}");
    assert_ne!(answer.header("connection"), Some("keep-alive"), "{answer:?}");
    assert!(answer.body == streamed_body(), "the body differs");
}

/// The same to an HTTP/1.0 client that asked for keep-alive: the body still runs to the close,
/// so the answer must not announce `connection: keep-alive` (the connection cannot persist).
#[tokio::test]
async fn http10_close_delimited_answer_does_not_announce_keep_alive() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send("GET /app/stream HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let answer = wire.answer().await;
    assert_eq!(answer.status, 200);
    assert!(answer.body == streamed_body(), "the body differs");
    assert_ne!(answer.header("connection"), Some("keep-alive"), "{answer:?}");
}

/// Bodiless answers (to `HEAD`, and `204`) carry no body bytes even where the `GET` has a
/// body: the next answers in the same pipelined write parse right after their heads.
#[tokio::test]
async fn bodiless_answers_leave_no_stray_bytes() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!(
        "HEAD /app/hello HTTP/1.1\r\nHost: gw\r\n\r\n\
         HEAD /app/stream HTTP/1.1\r\nHost: gw\r\n\r\n\
         HEAD /nope HTTP/1.1\r\nHost: gw\r\n\r\n{}{}",
        get_request("/app/empty"),
        get_request("/app/say/after"),
    ))
    .await;
    let hello = wire.bodiless_answer().await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.header("content-length"), Some("11"), "{hello:?}");
    let stream = wire.bodiless_answer().await;
    assert_eq!(stream.status, 200);
    let head_not_found = wire.bodiless_answer().await;
    assert_eq!(head_not_found.status, 404);
    // A length is announced (the error body a GET gets), but no byte of it follows.
    assert!(
        head_not_found
            .header("content-length")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 0),
        "{head_not_found:?}"
    );
    let empty = wire.answer().await;
    assert_eq!(empty.status, 204);
    assert_eq!(empty.header("content-length"), None, "{empty:?}");
    assert_eq!(empty.header("transfer-encoding"), None, "{empty:?}");
    let after = wire.answer().await;
    assert_eq!((after.status, after.text().as_str()), (200, "after"));
}

/// A `HEAD` answer may only carry a `Content-Length` equal to what the `GET` would send (RFC
/// 9110 §8.6): for a body of unknown length, none at all.
#[tokio::test]
async fn head_of_an_unknown_length_answer_claims_no_length() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send("HEAD /app/stream HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let answer = wire.bodiless_answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), None, "{answer:?}");
}

/// `Expect: 100-continue`: `100 Continue` comes before the client sends its body, the final
/// answer after it; each request on the connection gets its own.
#[tokio::test]
async fn expect_continue_gets_100_before_the_body() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    for body in ["hello world", "second body"] {
        wire.send(format!(
            "POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        ))
        .await;
        // Nothing of the body is sent before this arrives.
        let (status, headers) = wire.head().await;
        assert_eq!((status, headers), (100, Vec::new()));
        wire.send(body).await;
        let answer = wire.answer().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, body));
        assert_eq!(answer.header("x-body-len"), Some(body.len().to_string().as_str()));
    }
}

/// No `100 Continue` when the gateway answers without reading the body (413 on the declared
/// length, 404 on the route): the final answer comes first, then the connection closes.
#[tokio::test]
async fn expect_continue_gets_no_100_when_the_body_is_refused() {
    let (gw, _) = start("max_body_size = \"1KiB\"").await;
    for (request, status, code) in [
        (
            "POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "POST /nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
            404,
            "ROUTE_NOT_FOUND",
        ),
    ] {
        let mut wire = Wire::open(gw.addr).await;
        wire.send(request).await;
        let answer = wire.answer().await;
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.error_code(), code);
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        wire.expect_closed().await;
    }
}

/// A request head over the limit (~417 KB, or over 100 headers) gets a JSON 431, then the
/// connection closes; a large head under it (100 KB) still passes.
#[tokio::test]
async fn an_oversized_head_gets_431_and_the_connection_closes() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    let fits = "b".repeat(100 * 1024);
    wire.send(format!(
        "GET /app/hello HTTP/1.1\r\nHost: gw\r\nX-Big: {fits}\r\n\r\n"
    ))
    .await;
    assert_eq!(wire.answer().await.text(), "hello world");

    let too_big = "a".repeat(500 * 1024);
    let many: String = (0..120).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    for head in [
        format!("GET /app/hello HTTP/1.1\r\nHost: gw\r\nX-Big: {too_big}\r\n\r\n"),
        format!("GET /app/hello HTTP/1.1\r\nHost: gw\r\n{many}\r\n"),
    ] {
        let mut wire = Wire::open(gw.addr).await;
        wire.send(head).await;
        wire.expect_refused(431).await;
    }
}

/// A request target longer than a URI can be here (65,534 bytes, `http::Uri`'s limit) gets a
/// JSON 414, then the connection closes; one of exactly that length reaches the backend.
#[tokio::test]
async fn an_overlong_target_gets_414_and_the_connection_closes() {
    let (gw, _) = start("").await;
    let target = |len: usize| {
        let prefix = "/app/hello?q=";
        format!("{prefix}{}", "a".repeat(len - prefix.len()))
    };
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!("GET {} HTTP/1.1\r\nHost: gw\r\n\r\n", target(65_534)))
        .await;
    assert_eq!(wire.answer().await.text(), "hello world");

    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!("GET {} HTTP/1.1\r\nHost: gw\r\n\r\n", target(65_535)))
        .await;
    wire.expect_refused(414).await;
}

/// A malformed request line or header (and a head the client leaves half-sent) gets the
/// SPEC.md JSON 400, then the connection closes.
#[tokio::test]
async fn a_malformed_head_gets_a_json_400_and_the_connection_closes() {
    let (gw, _) = start("").await;
    for head in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /app/hello HTTP/1.1\r\nHost gw\r\n\r\n",
        b"GET /app/hello HTTP/9.9\r\nHost: gw\r\n\r\n",
        // Whitespace before the colon, and an obsolete line folding (RFC 9112 §5.1, §5.2).
        b"GET /app/hello HTTP/1.1\r\nHost : gw\r\n\r\n",
        b"GET /app/hello HTTP/1.1\r\nHost: gw\r\nX-Folded: a\r\n b\r\n\r\n",
        // HTTP/1.1 needs exactly one Host (RFC 9112 §3.2).
        b"GET /app/hello HTTP/1.1\r\n\r\n",
        b"GET /app/hello HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n",
        b"GET /app/hello HTTP/1.0\r\nHost: gw\r\nHost: other\r\n\r\n",
    ] {
        let mut wire = Wire::open(gw.addr).await;
        wire.send(head).await;
        wire.expect_refused(400).await;
    }
    // Half a head, then the client's end of the stream.
    let mut wire = Wire::open(gw.addr).await;
    wire.send("GET /app/hello HTTP/1.1\r\nHost: g").await;
    wire.take_writer().shutdown().await.unwrap();
    wire.expect_refused(400).await;
}

/// `Transfer-Encoding` on an HTTP/1.0 request is a 400 (HTTP/1.0 has no chunked coding), and the
/// connection closes.
#[tokio::test]
async fn transfer_encoding_on_http10_is_a_400() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(
        "POST /app/echo HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    wire.expect_refused(400).await;
}

/// Chunked request bodies reach the backend intact: chunk extensions and trailers are
/// tolerated, hex sizes in either case, and the next request on the connection parses right
/// after the trailer section.
#[tokio::test]
async fn chunked_request_bodies_reach_the_backend_intact() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(
        "POST /app/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n6;name=\"quoted value\";flag\r\n world\r\n\
         0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n",
    )
    .await;
    let answer = wire.answer().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello world"));

    // A large body in chunks of odd sizes, sent in one write with the request after it.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut request = b"POST /app/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, chunk) in payload.chunks(7919).enumerate() {
        let size = if i % 2 == 0 {
            format!("{:X}", chunk.len())
        } else {
            format!("{:x}", chunk.len())
        };
        request.extend_from_slice(format!("{size}\r\n").as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request.extend_from_slice(get_request("/app/say/next").as_bytes());
    wire.send(request).await;
    let answer = wire.answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-body-len"), Some("300000"));
    assert!(answer.body == payload, "the body differs");
    assert_eq!(wire.answer().await.text(), "next");
}

/// A backend's answer of unknown length reaches an HTTP/1.1 client as valid chunked coding that
/// decodes to the backend's bytes, and the connection carries the next request.
#[tokio::test]
async fn unknown_length_answers_are_chunked_to_http11_clients() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(get_request("/app/stream")).await;
    let answer = wire.answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"), "{answer:?}");
    assert!(answer.body == streamed_body(), "the body differs");
    wire.send(get_request("/app/say/next")).await;
    assert_eq!(wire.answer().await.text(), "next");
}

/// An early answer (404, 502) to a large upload the gateway never reads arrives whole while the
/// client keeps sending megabytes, followed by a clean end of the stream rather than a reset.
#[tokio::test]
async fn an_early_answer_to_an_unread_upload_arrives_whole() {
    let (gw, _) = start("").await;
    for (path, status, code) in [
        ("/nope", 404, "ROUTE_NOT_FOUND"),
        ("/dead/upload", 502, "UPSTREAM_UNAVAILABLE"),
    ] {
        let mut wire = Wire::open(gw.addr).await;
        let mut writer = wire.take_writer();
        let head = format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 8000000\r\n\r\n");
        // Sends up to 4 MB; fails once the gateway gives up reading, which is fine.
        let sending = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            let piece = vec![b'u'; 64 * 1024];
            for _ in 0..64 {
                writer.write_all(&piece).await?;
            }
            Ok::<_, std::io::Error>(writer)
        });
        let answer = wire.answer().await;
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.error_code(), code);
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        // Then a clean end (the write side shut), not a reset that could have destroyed it.
        wire.expect_closed().await;
        // The sender is not left hanging either: the gateway reads on or closes.
        timeout(PATIENCE * 2, sending)
            .await
            .expect("the upload neither drained nor failed in time")
            .unwrap()
            .ok();
    }
}

/// Closing after an answer is a lingering close: the write side ends (a clean EOF, not a
/// reset) and what the client still sends is read, so its writes keep succeeding for a while.
#[tokio::test]
async fn a_closing_connection_lingers_reading_what_the_client_sends() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    let mut request = b"POST /nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 8000000\r\n\r\n".to_vec();
    request.extend(vec![b'u'; 64 * 1024]);
    wire.send(request).await;
    let answer = wire.answer().await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    wire.expect_closed().await;
    // Without the linger, the socket would be closed and these writes would meet a reset.
    for _ in 0..8 {
        wire.send(vec![b'u'; 32 * 1024]).await;
        tokio::task::yield_now().await;
    }
}

/// Graceful shutdown closes an idle keep-alive connection at once: `shutdown()` returns well
/// within `shutdown_timeout`, and the connection sees a clean end.
#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let (gw, _) = start("shutdown_timeout = \"60s\"").await;
    let mut idle = Wire::open(gw.addr).await;
    idle.send(get_request("/app/say/hi")).await;
    assert_eq!(idle.answer().await.text(), "hi");
    timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown waited on an idle connection")
        .unwrap();
    idle.expect_closed().await;
}

/// A connection that has not sent a byte has no request in flight: the drain closes it at once
/// rather than waiting for `header_read_timeout` (a minute here) to.
#[tokio::test]
async fn shutdown_closes_a_connection_that_never_spoke() {
    let (gw, _) = start("shutdown_timeout = \"60s\"\nheader_read_timeout = \"60s\"").await;
    let mut silent = Wire::open(gw.addr).await;
    // Accepted and waiting for its first bytes before the drain starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown waited on a connection that never spoke")
        .unwrap();
    silent.expect_closed().await;
}

/// A request in flight when shutdown begins still gets its answer, saying `connection: close`,
/// then its connection closes and shutdown completes.
#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_with_connection_close() {
    let (gw, hold) = start("shutdown_timeout = \"60s\"").await;
    // An idle connection: its end shows that the drain has begun.
    let mut idle = Wire::open(gw.addr).await;
    idle.send(get_request("/app/say/hi")).await;
    assert_eq!(idle.answer().await.text(), "hi");

    let mut busy = Wire::open(gw.addr).await;
    busy.send(get_request("/app/hold")).await;
    timeout(PATIENCE, hold.arrived.notified())
        .await
        .expect("the request did not reach the backend");
    let shutdown = tokio::spawn(gw.shutdown());
    idle.expect_closed().await;
    assert!(!shutdown.is_finished(), "shutdown did not wait for the request");

    hold.release.notify_one();
    let answer = busy.answer().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "released"));
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    busy.expect_closed().await;
    timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown did not complete after the last answer")
        .unwrap()
        .unwrap();
}

/// The gateway's own answers (a 404, a 400) carry one valid, current `Date`; a backend's own
/// `Date` passes once, unchanged.
#[tokio::test]
async fn answers_carry_one_date() {
    assert_eq!(imf_fixdate(OLD_DATE), Some(784_887_151), "the test's date parser");
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(get_request("/nope")).await;
    let not_found = wire.answer().await;
    wire.send(get_request("/app/dated")).await;
    let dated = wire.answer().await;
    assert_eq!(dated.all("date"), vec![OLD_DATE]);

    let mut wire = Wire::open(gw.addr).await;
    wire.send("GARBAGE\r\n\r\n").await;
    let bad = wire.answer().await;
    for answer in [not_found, bad] {
        let dates = answer.all("date");
        assert_eq!(dates.len(), 1, "{answer:?}");
        let at = imf_fixdate(dates[0]).unwrap_or_else(|| panic!("not an IMF-fixdate: {dates:?}"));
        assert!((at - unix_now()).abs() < 600, "a date far from now: {dates:?}");
    }
}

/// The answer's `Content-Length` is enforced: a backend body that ends short of it closes the
/// connection (rather than leaving the client waiting for bytes that never come).
#[tokio::test]
async fn an_answer_shorter_than_its_length_closes_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
                    .await;
            });
        }
    });
    let gw = gateway(&common::one_route(&format!("http://{backend}"), "")).await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(get_request("/short")).await;
    let (status, headers) = wire.head().await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("content-length".to_owned(), "100".to_owned())),
        "{headers:?}"
    );
    let body = wire.rest().await;
    assert!(body.len() < 100, "{body:?}");
}

/// A client that leaves before its answer cancels the request: the backend's connection is
/// closed at once rather than kept until the backend answers (as hyper's server did too).
#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        // Never answers: waits for the gateway to give up on the request.
        let closed = matches!(timeout(PATIENCE, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)));
        let _ = closed_tx.send(closed);
    });
    let gw = gateway(&common::one_route(&format!("http://{backend}"), "")).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(get_request("/never").as_bytes()).await.unwrap();
    // Long enough for the request to reach the backend, then the client goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    assert!(
        closed_rx.await.unwrap(),
        "the backend's connection stayed open after the client left"
    );
}

/// An early answer to a small upload that is already in whole keeps the connection: the unread
/// rest of the body is skipped in the buffer, and the next request is answered.
#[tokio::test]
async fn an_early_answer_to_a_small_upload_keeps_the_connection() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!(
        "POST /nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello{}{}",
        "POST /nope HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        get_request("/app/say/after"),
    ))
    .await;
    for _ in 0..2 {
        let refused = wire.answer().await;
        assert_eq!(refused.status, 404);
        assert_eq!(refused.header("connection"), None, "{refused:?}");
    }
    let after = wire.answer().await;
    assert_eq!((after.status, after.text().as_str()), (200, "after"));
}

/// A client that pipelines requests and then closes its sending side still gets the answers to
/// the requests queued behind the one being served (they are in the buffer, so the close is not
/// watched for); the last one, once nothing else is buffered, sees the close and is cancelled,
/// as with hyper's default (`half_close(false)`) and nginx.
#[tokio::test]
async fn pipelined_requests_then_a_half_close() {
    let (gw, _) = start("").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send(format!(
        "{}{}",
        get_request("/app/say/one?delay_ms=300"),
        get_request("/app/say/two?delay_ms=300"),
    ))
    .await;
    wire.take_writer().shutdown().await.unwrap();
    let answer = wire.answer().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "one"));
    wire.expect_closed().await;
}

/// Empty lines before a request (here, trickled one at a time after a request with a body) are
/// skipped: the connection is idle again, and drains at once.
#[tokio::test]
async fn empty_lines_between_requests_leave_the_connection_idle() {
    let (mut gw, _) = start("shutdown_timeout = \"60s\"").await;
    let mut wire = Wire::open(gw.addr).await;
    wire.send("POST /app/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(wire.answer().await.status, 200);
    for _ in 0..3 {
        wire.send("\r\n").await;
    }
    // Still served after the empty lines.
    wire.send(get_request("/app/say/again")).await;
    assert_eq!(wire.answer().await.text(), "again");
    wire.send("\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.begin_shutdown();
    wire.expect_closed().await;
}
