//! Connections to a service's instances: the connector that opens them (TCP with the service's
//! connect timeout and `TCP_NODELAY`, rustls when the URL is `https`), and per instance the idle
//! HTTP/1.1 connections kept alive between requests, or the one HTTP/2 connection when TLS
//! negotiated `h2`.
//!
//! HTTP/1.1 goes through the gateway's own client codec ([`super::h1`]), driven by the request's
//! task; HTTP/2 (negotiated by ALPN over TLS) through hyper's, on one shared connection. An
//! HTTP/1.1 connection goes back to its instance's idle list the moment the response body that
//! used it has ended ([`Http1Body`]), and a request takes the most recently used one (so surplus
//! connections age out) after checking, without waiting, that the backend has not closed it. A
//! request's head (method, target, headers) is lent to the attempt, never copied, and a connect
//! failure hands the body back unread, so the request can go to another instance whatever its
//! body; so does a pooled connection that failed before any of the request was written.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use super::h1::{self, Failure};
use super::{SetHeaders, UpstreamBody, X_REQUEST_TIMEOUT_MS};
use crate::edge::headers::number_value;

/// How long an idle connection is kept before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// A connection as the HTTP/1.1 codec reads and writes it.
type Stream = TokioIo<Io>;
/// Boxed: with its TLS state a connection is over a kilobyte, and it moves in and out of the
/// idle list.
type Http1 = Box<h1::Connection<Stream>>;
type BoxError = Box<dyn StdError + Send + Sync>;

/// Opens connections to a service's instances.
#[derive(Debug, Clone)]
pub struct Connector {
    tcp_tls: HttpsConnector<HttpConnector>,
}

/// Where one instance is, and the connections to it that are not in use.
#[derive(Debug)]
pub struct Address {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `authority` as the `Host` header HTTP/1.1 requests carry.
    host: HeaderValue,
    idle: Arc<Mutex<Idle>>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Most recently released last; a request takes the last one.
    http1: Vec<(Http1, Instant)>,
    http2: Option<http2::SendRequest<UpstreamBody>>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; nothing was sent, and the body comes back unread.
    Connect(BoxError, UpstreamBody),
    /// The request was (or may have been) sent and then failed.
    Failed(BoxError),
    /// The deadline passed before the response head was in (or before a connection was made).
    TimedOut,
}

/// What a request is sent with, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    /// The request target in origin form (path and query).
    pub target: &'a PathAndQuery,
    /// The request's headers; `Host` is the instance's whatever they say.
    pub headers: &'a HeaderMap,
    /// Sent after `headers`.
    pub set: SetHeaders<'a>,
    /// Sent as `x-request-timeout-ms`, replacing any in `headers`.
    pub timeout_ms: Option<u64>,
}

enum Conn {
    Http1(Http1),
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Connector {
    /// `tls` is the client's TLS settings for `https` instances (ALPN is set here).
    pub fn new(connect_timeout: Duration, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tcp_tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self { tcp_tls }
    }

    /// Sends a request with `head` (borrowed: the caller keeps it for a retry) and `body` to
    /// `address` on an idle connection or a new one, and returns the response once its head is
    /// in; the body streams.
    ///
    /// `now` is the caller's reading of the clock, just taken: idle connections older than
    /// [`IDLE_TIMEOUT`] by then are not used. At `deadline` the attempt ends with
    /// [`SendError::TimedOut`], whatever it was doing.
    pub async fn send(
        &self,
        address: &Address,
        head: Head<'_>,
        mut body: UpstreamBody,
        now: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, SendError> {
        loop {
            let (conn, pooled) = match address.take_idle(now) {
                Some(conn) => (conn, true),
                // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is a large future, and
                // every request's future would be as large, moved whole a few times per request.
                None => match tokio::time::timeout_at(deadline, Box::pin(self.connect(address))).await {
                    Ok(Ok(conn)) => (conn, false),
                    Ok(Err(e)) => return Err(SendError::Connect(e, body)),
                    Err(_) => return Err(SendError::TimedOut),
                },
            };
            // A connection that failed before the request was written to it hands the body
            // back. A pooled one (the backend ended an idle keep-alive connection just now): try
            // the next one. A new one (a backend that closes what it accepts): as a failed
            // connect, so it never loops.
            match conn {
                Conn::Http1(conn) => {
                    let outgoing = h1::Outgoing {
                        method: head.method,
                        target: head.target.as_str(),
                        host: &address.host,
                        headers: head.headers,
                        set: head.set,
                        timeout_ms: head.timeout_ms,
                    };
                    // The connection keeps the deadline's timer (made once, moved lazily), rather
                    // than a timer registered and removed for every request.
                    match conn.send(outgoing, body, deadline).await {
                        Ok(response) => {
                            let home = address.idle.clone();
                            return Ok(response.map(|body| {
                                Either::Left(Http1Body {
                                    body,
                                    home,
                                    used: now,
                                })
                            }));
                        }
                        Err(Failure::Unsent(h1::Error::TimedOut, _) | Failure::Sent(h1::Error::TimedOut)) => {
                            return Err(SendError::TimedOut);
                        }
                        Err(Failure::Unsent(_, unsent)) if pooled => body = unsent,
                        Err(Failure::Unsent(e, unsent)) => return Err(SendError::Connect(e.into(), unsent)),
                        Err(Failure::Sent(e)) => return Err(SendError::Failed(e.into())),
                    }
                }
                Conn::Http2(mut sender) => {
                    let mut request = Request::new(body);
                    *request.method_mut() = head.method.clone();
                    let headers = request.headers_mut();
                    *headers = head.headers.clone();
                    for (name, value) in head.set {
                        headers.insert(*name, value.clone());
                    }
                    if let Some(ms) = head.timeout_ms {
                        headers.insert(&X_REQUEST_TIMEOUT_MS, number_value(ms));
                    }
                    // HTTP/2 names the target in :scheme and :authority, never in Host.
                    headers.remove(HOST);
                    match address.absolute(head.target) {
                        Ok(uri) => *request.uri_mut() = uri,
                        Err(e) => return Err(SendError::Connect(e.into(), request.into_body())),
                    }
                    let mut failed =
                        match tokio::time::timeout_at(deadline, sender.try_send_request(request)).await {
                            Ok(Ok(response)) => return Ok(response.map(Either::Right)),
                            Ok(Err(e)) => e,
                            Err(_) => return Err(SendError::TimedOut),
                        };
                    match failed.take_message() {
                        Some(unsent) if pooled => body = unsent.into_body(),
                        Some(unsent) => {
                            return Err(SendError::Connect(failed.into_error().into(), unsent.into_body()));
                        }
                        None => return Err(SendError::Failed(failed.into_error().into())),
                    }
                }
            }
        }
    }

    async fn connect(&self, address: &Address) -> Result<Conn, BoxError> {
        let target = Uri::builder()
            .scheme(address.scheme.clone())
            .authority(address.authority.clone())
            .path_and_query("/")
            .build()?;
        let io = self.tcp_tls.clone().oneshot(target).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(drive(connection));
            lock(&address.idle).http2 = Some(sender.clone());
            return Ok(Conn::Http2(sender));
        }
        Ok(Conn::Http1(Box::new(h1::Connection::new(TokioIo::new(io)))))
    }
}

/// Runs an HTTP/2 connection until it closes; its errors reach the requests that were using it.
async fn drive<F: Future<Output = hyper::Result<()>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "upstream connection closed");
    }
}

impl Address {
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            scheme,
            authority,
            host,
            idle: Arc::default(),
        }
    }

    /// Closes idle connections that the backend closed or that waited longer than
    /// [`IDLE_TIMEOUT`].
    pub fn sweep(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        idle.http1
            .retain_mut(|(conn, since)| now.duration_since(*since) < IDLE_TIMEOUT && conn.is_usable());
        if idle.http2.as_ref().is_some_and(|c| c.is_closed()) {
            idle.http2 = None;
        }
    }

    fn take_idle(&self, now: Instant) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        if let Some(sender) = &idle.http2 {
            if sender.is_ready() {
                return Some(Conn::Http2(sender.clone()));
            }
            if sender.is_closed() {
                idle.http2 = None;
            }
        }
        // Each is stamped with the start of the request that last used it, so they are not in
        // the order of their stamps: an old one among them goes alone.
        while let Some((mut conn, since)) = idle.http1.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && conn.is_usable() {
                return Some(Conn::Http1(conn));
            }
        }
        None
    }

    fn absolute(&self, target: &PathAndQuery) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target.clone())
            .build()
    }
}

/// A response body from either protocol: `Left`, HTTP/1.1 through our codec; `Right`, HTTP/2.
pub type ResponseBody = Either<Http1Body, Incoming>;

/// An HTTP/1.1 response body that gives its connection back to the instance's idle list as soon
/// as it ends (or, if nobody read it to the end but it had ended, when it is dropped).
#[derive(Debug)]
pub struct Http1Body {
    body: h1::ResponseBody<Stream>,
    home: Arc<Mutex<Idle>>,
    /// When the attempt that uses the connection began: its idle time counts from there, not
    /// from a clock reading of its own per request. A connection that served a long response
    /// thus looks idle for longer than it was, and is closed that much sooner.
    used: Instant,
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = h1::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if this.body.is_end_stream() {
            this.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Http1Body {
    fn release(&mut self) {
        if let Some(conn) = self.body.into_reusable() {
            lock(&self.home).http1.push((conn, self.used));
        }
    }
}

impl Drop for Http1Body {
    fn drop(&mut self) {
        self.release();
    }
}

fn lock(idle: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    // The lists hold no invariant a panicking holder could break.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
