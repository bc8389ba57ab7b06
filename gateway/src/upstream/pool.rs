//! Connections to a service's instances: the connector that opens them (TCP with the service's
//! connect timeout and `TCP_NODELAY`, rustls when the URL is `https`), and per instance the idle
//! HTTP/1.1 connections kept alive between requests, or the one HTTP/2 connection when TLS
//! negotiated `h2`.
//!
//! Built on hyper's connection API instead of hyper-util's pooled client, which on every request
//! hashed a pool key, raced a checkout against a connect and spawned a task to wait for the
//! connection to come back. Here an HTTP/1.1 connection goes back to its instance's idle list when
//! the response body that used it is done ([`super::Guarded`]), and a request takes the most
//! recently used one (so surplus connections age out). A connect failure hands the request back
//! untouched, so it can go to another instance whatever its body; so does a pooled connection
//! found closed before anything was written to it.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use super::UpstreamBody;

/// How long an idle connection is kept before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
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
    /// Oldest first; a request takes the last one.
    http1: Vec<(http1::SendRequest<UpstreamBody>, Instant)>,
    http2: Option<http2::SendRequest<UpstreamBody>>,
}

/// An HTTP/1.1 connection lent to one request, given back to its [`Address`] with
/// [`Address::give_back`] once the response body is done.
pub type Lent = http1::SendRequest<UpstreamBody>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; nothing was sent, and the request comes back unchanged.
    Connect(BoxError, Box<Request<UpstreamBody>>),
    /// The request was (or may have been) sent and then failed.
    Failed(hyper::Error),
}

enum Conn {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tcp_tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self { tcp_tls })
    }

    /// Sends `request` (its URI only a path and query) to `address` on an idle connection or a
    /// new one. An HTTP/1.1 response comes with the connection it used, to give back when its
    /// body is done.
    pub async fn send(
        &self,
        address: &Address,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Option<Lent>), SendError> {
        loop {
            let (conn, pooled) = match address.take_idle() {
                Some(conn) => (conn, true),
                None => match self.connect(address).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(SendError::Connect(e, Box::new(request))),
                },
            };
            let sent = match conn {
                Conn::Http1(mut sender) => {
                    request.headers_mut().insert(HOST, address.host.clone());
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok((response, Some(sender))),
                        Err(e) => e,
                    }
                }
                Conn::Http2(mut sender) => {
                    // HTTP/2 names the target in :scheme and :authority, never in Host.
                    request.headers_mut().remove(HOST);
                    match address.absolute(request.uri()) {
                        Ok(uri) => *request.uri_mut() = uri,
                        Err(e) => return Err(SendError::Connect(e.into(), Box::new(request))),
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok((response, None)),
                        Err(e) => e,
                    }
                }
            };
            // A connection that closed before the request was written to it hands the request
            // back. A pooled one (the backend ended an idle keep-alive connection just now): try
            // the next one. A new one (a backend that closes what it accepts): as a failed
            // connect, so it never loops.
            let mut sent = sent;
            match sent.take_message() {
                Some(unsent) if pooled => request = unsent,
                Some(unsent) => return Err(SendError::Connect(sent.into_error().into(), Box::new(unsent))),
                None => return Err(SendError::Failed(sent.into_error())),
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
        let (sender, connection) = http1::handshake::<Io, UpstreamBody>(io).await?;
        tokio::spawn(drive(connection));
        Ok(Conn::Http1(sender))
    }
}

/// Runs a connection until it closes; its errors reach the request that was using it.
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

    /// Keeps an HTTP/1.1 connection for the next request if it is ready for one (its last
    /// response was read to the end); otherwise it is dropped, which closes it.
    pub fn give_back(&self, conn: Lent) {
        if conn.is_ready() {
            let now = Instant::now();
            lock(&self.idle).http1.push((conn, now));
        } else if !conn.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Still finishing its last response (on a multi-threaded runtime this can run before
            // the connection's task has taken in the end of the body): keep it once it is ready.
            let idle = self.idle.clone();
            let mut conn = conn;
            runtime.spawn(async move {
                if conn.ready().await.is_ok() {
                    lock(&idle).http1.push((conn, Instant::now()));
                }
            });
        }
    }

    /// Closes idle connections that the backend closed or that waited longer than
    /// [`IDLE_TIMEOUT`].
    pub fn sweep(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        idle.http1
            .retain(|(conn, since)| !conn.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        if idle.http2.as_ref().is_some_and(|c| c.is_closed()) {
            idle.http2 = None;
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        if let Some(sender) = &idle.http2 {
            if sender.is_ready() {
                return Some(Conn::Http2(sender.clone()));
            }
            if sender.is_closed() {
                idle.http2 = None;
            }
        }
        let now = Instant::now();
        while let Some((sender, since)) = idle.http1.pop() {
            if now.duration_since(since) >= IDLE_TIMEOUT {
                // The rest are older still.
                idle.http1.clear();
                break;
            }
            if sender.is_ready() {
                return Some(Conn::Http1(sender));
            }
        }
        None
    }

    fn absolute(&self, target: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = target
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

fn lock(idle: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    // The lists hold no invariant a panicking holder could break.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
