//! The one upstream client layer: every call to a backend service, from the REST proxy now and the
//! GraphQL resolvers later, goes through [`Upstream::send`]. Timeouts live here, and retries,
//! circuit breakers, bulkheads, load balancing and health will too, so they are written once.
//!
//! One pooled hyper-util client per service (the layer reqwest is built on, used directly): its
//! own keep-alive pool and connect timeout, http and https (rustls, webpki roots), redirects passed
//! back to the client rather than followed, and no system proxy (`HTTP_PROXY` in the environment
//! must not silently reroute backend traffic). reqwest itself is not on this path: for every
//! request it parses a URL and copies the header map for its redirect bookkeeping, which a proxy
//! never uses and which cost a measured third of the proxy's throughput (see bench/README.md).

use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, LengthLimitError};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

mod idle_timeout;

use crate::config::ServiceConfig;
use crate::error::GatewayError;
pub use idle_timeout::{IdleTimeout, IdleTimeoutError};

/// Any request body the gateway sends upstream (a client's streamed body, or one it built).
pub type UpstreamBody = UnsyncBoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

/// A streamed upstream response body, cut off when the backend stalls between chunks.
pub type UpstreamResponseBody = IdleTimeout<Incoming>;

/// A service's instances and the client that reaches them.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    instances: Vec<Instance>,
    next: AtomicUsize,
    timeout: Duration,
}

/// One instance's URL, pre-split so a request only appends its path.
#[derive(Debug)]
struct Instance {
    scheme: Scheme,
    authority: Authority,
    /// The instance URL's path without its trailing slash ("" for none).
    base_path: String,
}

/// What to send: the path is already normalized; the query goes as it came.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    pub method: Method,
    /// The path under the instance's base path ("" for the base path itself).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: HeaderMap,
    pub body: Option<UpstreamBody>,
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("\"{0}\" is not usable as an upstream address")]
    BadUrl(String),
}

impl Upstream {
    pub fn new(config: &ServiceConfig) -> Result<Self, BuildError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let instances = config
            .urls
            .iter()
            .map(|url| {
                let bad = || BuildError::BadUrl(url.to_string());
                let authority = url[url::Position::BeforeHost..url::Position::AfterPort]
                    .parse()
                    .map_err(|_| bad())?;
                Ok(Instance {
                    scheme: url.scheme().parse().map_err(|_| bad())?,
                    authority,
                    base_path: url.path().trim_end_matches('/').to_owned(),
                })
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Self {
            name: config.name.clone(),
            client,
            instances,
            next: AtomicUsize::new(0),
            timeout: config.timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request and returns the response once its headers arrive; the body streams.
    ///
    /// The attempt ends at the service's `timeout` or the request's `deadline`, whichever is
    /// first; afterwards the body may pause at most `timeout` between chunks, so long streams
    /// (SSE, downloads) live on while a backend that stalls mid-body is cut off.
    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
        deadline: Instant,
    ) -> Result<Response<UpstreamResponseBody>, GatewayError> {
        let uri = self.uri(request.path, request.query)?;
        let body = request
            .body
            .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed_unsync());
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = request.method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = request.headers;
        let attempt_deadline = deadline.min(Instant::now() + self.timeout);
        match tokio::time::timeout_at(attempt_deadline, self.client.request(outgoing)).await {
            Ok(Ok(response)) => Ok(response.map(|body| IdleTimeout::new(body, self.timeout))),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => {
                tracing::warn!(service = %self.name, "upstream timed out");
                Err(GatewayError::UpstreamTimeout)
            }
        }
    }

    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        // Round robin; load balancing strategies arrive with the resilience issue.
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len().max(1);
        let instance = self.instances.get(i).ok_or(GatewayError::UpstreamUnavailable)?;
        let query_len = query.map_or(0, |q| q.len() + 1);
        let mut pq = String::with_capacity(instance.base_path.len() + path.len() + query_len + 1);
        pq.push_str(&instance.base_path);
        if !path.starts_with('/') && pq.is_empty() {
            // A stripped route with nothing left, on an instance without a base path.
            pq.push('/');
        }
        pq.push_str(path);
        if let Some(query) = query {
            pq.push('?');
            pq.push_str(query);
        }
        let pq = PathAndQuery::from_maybe_shared(Bytes::from(pq))
            .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))?;
        Uri::builder()
            .scheme(instance.scheme.clone())
            .authority(instance.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))
    }

    fn classify(&self, e: &hyper_util::client::legacy::Error) -> GatewayError {
        if has_source::<LengthLimitError>(e) {
            return GatewayError::PayloadTooLarge { limit: 0 };
        }
        tracing::warn!(service = %self.name, error = %ErrorChain(e), "upstream request failed");
        GatewayError::UpstreamUnavailable
    }
}

fn has_source<E: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<E>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Displays an error with its causes, for logs.
struct ErrorChain<'a>(&'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
