//! The one upstream client layer: every call to a backend service, from the REST proxy now and the
//! GraphQL resolvers later, goes through [`Upstream::send`]. Timeouts live here, and retries,
//! circuit breakers, bulkheads, load balancing and health will too, so they are written once.
//!
//! One `reqwest::Client` per service: its own keep-alive pool and connect timeout, redirects
//! passed back to the client rather than followed, and no system proxy (`HTTP_PROXY` in the
//! environment must not silently reroute backend traffic).

use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use http_body_util::LengthLimitError;
use reqwest::{Body, Client, Url};
use tokio::time::Instant;

use crate::config::ServiceConfig;
use crate::error::GatewayError;

/// A service's instances and the client that reaches them.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    client: Client,
    /// Base URLs without a trailing slash: the request path is appended as is.
    instances: Vec<String>,
    next: AtomicUsize,
    timeout: Duration,
}

/// What to send: the path is already normalized and carries the query.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Option<Body>,
}

impl Upstream {
    pub fn new(config: &ServiceConfig) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            // Between body chunks: a backend that stalls mid-body is cut off, a long stream that
            // keeps flowing (SSE, downloads) is not.
            .read_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // reqwest adds `accept: */*` by default; a proxy must send what the client sent.
            .default_headers(HeaderMap::new())
            .build()?;
        let instances = config
            .urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect();
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
    /// The attempt ends at the service's `timeout` or the request's `deadline`, whichever is first.
    pub async fn send(
        &self,
        request: UpstreamRequest,
        deadline: Instant,
    ) -> Result<http::Response<Body>, GatewayError> {
        let url = self.url(&request.path_and_query)?;
        let mut outgoing = reqwest::Request::new(request.method, url);
        *outgoing.headers_mut() = request.headers;
        *outgoing.body_mut() = request.body;
        let attempt_deadline = deadline.min(Instant::now() + self.timeout);
        match tokio::time::timeout_at(attempt_deadline, self.client.execute(outgoing)).await {
            Ok(Ok(response)) => Ok(response.into()),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => {
                tracing::warn!(service = %self.name, "upstream timed out");
                Err(GatewayError::UpstreamTimeout)
            }
        }
    }

    fn url(&self, path_and_query: &str) -> Result<Url, GatewayError> {
        // Round robin; load balancing strategies arrive with the resilience issue.
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len().max(1);
        let base = self.instances.get(i).ok_or(GatewayError::UpstreamUnavailable)?;
        // `Url::parse` turns an empty path (a stripped route on a base without a path) into `/`.
        let mut url = String::with_capacity(base.len() + path_and_query.len());
        url.push_str(base);
        url.push_str(path_and_query);
        Url::parse(&url).map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))
    }

    fn classify(&self, e: &reqwest::Error) -> GatewayError {
        if has_source::<LengthLimitError>(e) {
            return GatewayError::PayloadTooLarge { limit: 0 };
        }
        if e.is_timeout() {
            tracing::warn!(service = %self.name, error = %e, "upstream timed out");
            return GatewayError::UpstreamTimeout;
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
