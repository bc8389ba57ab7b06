//! The one upstream client layer: every call to a backend service, from the REST proxy now and the
//! GraphQL resolvers later, goes through [`Upstream::send`]. Timeouts, retries (`retry`), the
//! circuit breaker (`breaker`), the bulkhead, load balancing with outlier ejection and active
//! health checks (`balance`) live here, so they are written once.
//!
//! Requests go out on the connections `pool` keeps per instance: HTTP/1.1 through the gateway's
//! own client codec (`h1`), driven by the request's task, and HTTP/2 (ALPN over TLS) through
//! hyper's. The service's connect timeout, http and https (rustls; the trusted roots are `tls`'s),
//! redirects passed back to the client rather than followed, and no system proxy (`HTTP_PROXY`
//! in the environment must not silently reroute backend traffic). Neither reqwest nor a pooled
//! client is on this path: reqwest parses a URL and copies the header map for its redirect
//! bookkeeping on every request, hyper-util's pooled client hashes a pool key and spawns a task
//! per request, and hyper's own HTTP/1.1 connection runs in a task of its own that every request
//! and response crosses channels to reach; all of them cost measured throughput (see
//! bench/README.md).

use std::error::Error as StdError;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub mod balance;
pub mod breaker;
pub mod h1;
mod idle_timeout;
pub mod pool;
pub mod retry;
mod tls;
mod window;

use crate::body::Holding;
use crate::config::{HealthCheckConfig, ServiceConfig};
use crate::error::GatewayError;
use crate::http1::content_length;
use crate::snapshot::{StartOnce, spawn_background};
use crate::telemetry::metrics;
use crate::telemetry::trace::{self, SpanBody, span};
use balance::{Balancer, InFlight, Instance, InstanceStatus};
use breaker::{Breaker, BreakerState};
pub use idle_timeout::{IdleTimeout, IdleTimeoutError};
use pool::{Connector, ResponseBody, SendError};
use retry::{Outcome, RetryPolicy};
use tracing::Instrument;

/// Sent upstream with every attempt: the milliseconds this attempt has left (the smaller of the
/// service's `timeout` and what remains of the client's deadline), so a backend can give up when
/// nobody will wait for its answer any more.
pub static X_REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// An error reading the client's request body (a malformed chunk, a dropped upload): the
/// client's fault, so it is a 400 and never counts against the backend.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed: {0}")]
pub struct ClientBodyError(#[source] pub Box<dyn StdError + Send + Sync>);

/// Any request body the gateway sends upstream (a client's streamed body, or one it built).
pub type UpstreamBody = UnsyncBoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

/// A streamed upstream response body, cut off when the backend stalls between chunks and polled
/// inside the attempt's span (which so ends with it). It holds the request's bulkhead slot and
/// its instance's in-flight count until it is done.
pub type UpstreamResponseBody = Guarded<SpanBody<IdleTimeout<ResponseBody>>>;

/// A service's instances and the client that reaches them, with everything that keeps a slow or
/// failing service from taking others down: bulkhead, circuit breaker, retries within a budget,
/// load balancing with outlier ejection, and active health checks.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    connector: Connector,
    balancer: Arc<Balancer>,
    timeout: Duration,
    bulkhead: Arc<Semaphore>,
    max_concurrent: usize,
    breaker: Option<Arc<Breaker>>,
    retry: RetryPolicy,
    health_check: Option<HealthCheckConfig>,
    started: StartOnce,
}

/// What to send: the path is already normalized; the query goes as it came.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    pub method: Method,
    /// The path under the instance's base path ("" for the base path itself).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Headers the gateway sets, sent after `headers` (which must not carry these names).
    pub set: SetHeaders<'a>,
    /// `path` and `query` as the client's request target already spells them, when it does:
    /// forwarded as they are to an instance without a base path, without building a copy.
    pub as_given: Option<PathAndQuery>,
    pub headers: HeaderMap,
    pub body: Option<UpstreamBody>,
}

/// Headers the gateway sets on a request (X-Forwarded-*, x-request-id), sent after the request's
/// own map rather than inserted into it: an insert hashes a custom name byte by byte, and most
/// requests carry none of these names (their senders remove any that are there).
pub type SetHeaders<'a> = &'a [(&'static HeaderName, HeaderValue)];

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot load the certificates that verify https backends: {0}")]
    TrustStore(String),
    #[error("\"{0}\" is not usable as an upstream address")]
    BadUrl(String),
}

/// A service's state for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    /// `None` when the service has no breaker.
    pub breaker: Option<BreakerState>,
    /// Requests in flight (bulkhead slots taken) and the limit.
    pub in_flight: usize,
    pub max_concurrent: usize,
    pub instances: Vec<InstanceStatus>,
}

/// A request body as the attempts see it: nothing, kept bytes (sendable again), or a stream
/// (sendable once).
enum Payload {
    Empty,
    Kept(Bytes),
    Stream(Option<UpstreamBody>),
}

impl Payload {
    fn replayable(&self) -> bool {
        !matches!(self, Payload::Stream(_))
    }

    /// Takes back a body that was never sent (no connection could be made).
    fn unsent(&mut self, body: UpstreamBody) {
        if let Payload::Stream(slot @ None) = self {
            *slot = Some(body);
        }
    }

    fn next(&mut self) -> UpstreamBody {
        match self {
            Payload::Kept(bytes) => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
            Payload::Stream(body) => body.take().unwrap_or_else(empty),
            Payload::Empty => empty(),
        }
    }
}

/// What one attempt produced: response headers, or how it failed.
// Not boxed: every proxied request makes one `Ok`, and a box would be an allocation per request
// for a value that only lives inside `Upstream::send`.
#[allow(clippy::large_enum_variant)]
enum Attempted {
    /// With the attempt's span, which ends with the body.
    Ok(Response<ResponseBody>, tracing::Span),
    Err(Outcome),
}

fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

impl Upstream {
    pub fn new(config: &ServiceConfig) -> Result<Self, BuildError> {
        let instances = config
            .urls
            .iter()
            .map(|url| {
                let bad = || BuildError::BadUrl(url.to_string());
                let authority = url[url::Position::BeforeHost..url::Position::AfterPort]
                    .parse()
                    .map_err(|_| bad())?;
                Ok(Instance::new(
                    url.scheme().parse().map_err(|_| bad())?,
                    authority,
                    url.path().trim_end_matches('/').to_owned(),
                    url.to_string(),
                ))
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Self {
            name: config.name.clone(),
            connector: Connector::new(
                config.connect_timeout,
                tls::client_config(config.urls.iter().any(|u| u.scheme() == "https"))?,
            ),
            balancer: Arc::new(Balancer::new(&config.name, config.load_balancing, instances)),
            timeout: config.timeout,
            bulkhead: Arc::new(Semaphore::new(config.max_concurrent)),
            max_concurrent: config.max_concurrent,
            breaker: config
                .circuit_breaker
                .clone()
                .map(|b| Arc::new(Breaker::new(b, &config.name))),
            retry: RetryPolicy::new(config.retry.clone()),
            health_check: config.health_check.clone(),
            started: StartOnce::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts closing stale idle connections, and the active health checks if configured, for
    /// as long as this upstream lives.
    pub fn start(self: &Arc<Self>) {
        if !self.started.first() {
            return;
        }
        spawn_background(sweep_loop(Arc::downgrade(self)));
        if self.health_check.is_some() {
            spawn_background(health_loop(Arc::downgrade(self)));
        }
    }

    /// Health, breaker state and load of the service and its instances.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name.clone(),
            breaker: self.breaker.as_ref().map(|b| b.state()),
            in_flight: self.max_concurrent - self.bulkhead.available_permits(),
            max_concurrent: self.max_concurrent,
            instances: self.balancer.status(),
        }
    }

    /// Sends one request and returns the response once its headers arrive; the body streams.
    ///
    /// In order: the bulkhead (a free slot, or 503 at once), the circuit breaker (closed, or 503
    /// at once), an instance (available, or 503 at once), then the attempt, which ends at the
    /// service's `timeout` or the request's `deadline`, whichever is first. A failed attempt is
    /// tried again on another instance when the failure is one `retry.on` names, the request is
    /// safe to repeat (idempotent method, `Idempotency-Key`, or never sent because no connection
    /// could be made), its body was kept, the budget allows, and the wait fits in the deadline.
    /// Once response headers are returned nothing is retried: the body streams to the client and
    /// may pause at most `timeout` between chunks.
    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
        deadline: Instant,
    ) -> Result<Response<UpstreamResponseBody>, GatewayError> {
        let permit = self.bulkhead.clone().try_acquire_owned().map_err(|_| {
            metrics::client_rejected(&self.name, "overloaded");
            GatewayError::UpstreamOverloaded
        })?;
        let UpstreamRequest {
            method,
            path,
            query,
            set,
            as_given,
            headers,
            body,
        } = request;
        // Once the request is done with (sent, or given up), its map serves another head.
        let mut headers = crate::http1::Recycled(headers);
        let idempotent = retry::is_idempotent(&method, &headers);
        let attempts = self.retry.config.attempts;
        // Only a request that is safe to repeat keeps its (small) body to send again. Any
        // request goes to another instance when no connection could be made: then its body
        // comes back unsent (the head is only ever lent to an attempt).
        let replay = idempotent && attempts > 1;
        let mut payload = self.payload(body, &headers, replay, deadline).await?;
        // One clock reading per attempt serves the breaker, the budget and the attempt's deadline.
        let mut started = Instant::now();
        self.retry.deposit(started);

        let mut avoid = None;
        let mut attempt = 0;
        // The failed attempt a retry would replace: what the client gets if the retry cannot be
        // made after all (breaker open, no instance, no time left), so a retry never turns the
        // backend's own answer into a gateway error.
        let mut previous: Option<(Attempted, InFlight)> = None;
        loop {
            attempt += 1;
            if attempt > 1 {
                started = Instant::now();
            }
            let attempt_deadline = deadline.min(started + self.timeout);
            if attempt_deadline <= started {
                // No time left: nothing is sent, and nothing counts against the backend.
                return self.finish(previous, permit, Attempted::Err(Outcome::Timeout));
            }
            let ticket = match &self.breaker {
                Some(breaker) => match breaker.admit(started) {
                    Ok(ticket) => Some(ticket),
                    Err(wait) if previous.is_none() => {
                        metrics::client_rejected(&self.name, "circuit_open");
                        return Err(GatewayError::CircuitOpen {
                            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                        });
                    }
                    Err(_) => return self.finish(previous, permit, Attempted::Err(Outcome::Connect)),
                },
                None => None,
            };
            let Some(in_flight) = self.balancer.pick(avoid) else {
                if previous.is_some() {
                    return self.finish(previous, permit, Attempted::Err(Outcome::Connect));
                }
                metrics::client_rejected(&self.name, "no_healthy_upstream");
                return Err(GatewayError::NoHealthyUpstream);
            };
            // The retry is under way: the failed attempt's answer is no longer needed.
            drop(previous.take());
            let may_repeat = attempt < attempts && idempotent && payload.replayable();
            // The header map is lent to each attempt, never copied: the trace parent is set on
            // it in place, and the time left is written after it.
            let left = attempt_deadline.saturating_duration_since(started).as_millis() as u64;
            // The attempt's span (a no-op unless traces are exported) is the backend's parent.
            let address = &in_flight.instance().address;
            let instance = &address.authority;
            let attempt_span = span!(
                "upstream",
                otel.name = metrics::method_label(method.as_str()),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                http.request.method = metrics::method_label(method.as_str()),
                server.address = instance.host(),
                server.port = instance.port_u16(),
                url.path = path,
                gateway.service = %self.name,
                http.request.resend_count = attempt - 1,
                http.response.status_code = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            trace::inject(&attempt_span, &mut headers);
            let base_path = &in_flight.instance().base_path;
            let target = match &as_given {
                Some(target) if base_path.is_empty() => target.clone(),
                _ => origin_form(base_path, path, query)?,
            };
            let head = pool::Head {
                method: &method,
                target: &target,
                headers: &headers,
                set,
                timeout_ms: Some(left),
            };

            // Pinned where it is made, not moved into the wrapper: see `Gateway::handle`.
            let (outcome, result) = match pin!(self.connector.send(
                address,
                head,
                payload.next(),
                started,
                attempt_deadline
            ))
            .instrument(attempt_span.clone())
            .await
            {
                Ok(response) => (
                    Outcome::Status(response.status()),
                    Attempted::Ok(response, attempt_span.clone()),
                ),
                Err(SendError::Connect(e, unsent)) => {
                    // Nothing went out: the body goes to the next attempt, if any.
                    payload.unsent(unsent);
                    tracing::warn!(service = %self.name, instance = %in_flight.instance().url, error = %ErrorChain(&*e), "upstream connect failed");
                    (Outcome::Connect, Attempted::Err(Outcome::Connect))
                }
                Err(SendError::Failed(e)) => {
                    if let Some(client_error) = client_body_error(&*e) {
                        return Err(client_error);
                    }
                    tracing::warn!(service = %self.name, instance = %in_flight.instance().url, error = %ErrorChain(&*e), "upstream attempt failed");
                    (Outcome::Reset, Attempted::Err(Outcome::Reset))
                }
                Err(SendError::TimedOut) => {
                    tracing::warn!(service = %self.name, instance = %in_flight.instance().url, "upstream attempt timed out");
                    (Outcome::Timeout, Attempted::Err(Outcome::Timeout))
                }
            };
            let failed = outcome.is_failure();
            metrics::client_request(&self.name, outcome.label(), started);
            if !attempt_span.is_disabled() {
                if let Outcome::Status(status) = outcome {
                    attempt_span.record("http.response.status_code", status.as_u16());
                }
                if failed {
                    attempt_span.record("otel.status_code", "error");
                    attempt_span.record("error.type", outcome.label());
                }
            }
            if let Some(ticket) = ticket {
                ticket.record(
                    failed || self.breaker.as_ref().is_some_and(|b| b.is_slow(started)),
                    started,
                );
            }
            self.balancer.record(in_flight.index(), failed);

            let retry = attempt < attempts
                && (may_repeat || outcome == Outcome::Connect)
                && self.retry.retries(outcome);
            if retry {
                let wait = match &result {
                    Attempted::Ok(r, ..) => retry::retry_after(r.headers()),
                    Attempted::Err(_) => None,
                }
                .unwrap_or_else(|| self.retry.backoff(attempt));
                // Compared as durations: a huge upstream Retry-After must not overflow an Instant.
                if wait < deadline.saturating_duration_since(Instant::now()) && self.retry.withdraw() {
                    tracing::debug!(service = %self.name, attempt, ?outcome, ?wait, "retrying");
                    metrics::retry(&self.name);
                    avoid = Some(in_flight.index());
                    previous = Some((result, in_flight));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return self.finish(Some((result, in_flight)), permit, Attempted::Err(outcome));
        }
    }

    /// The answer of the last attempt made (`fallback` when none was).
    fn finish(
        &self,
        last: Option<(Attempted, InFlight)>,
        permit: OwnedSemaphorePermit,
        fallback: Attempted,
    ) -> Result<Response<UpstreamResponseBody>, GatewayError> {
        let (result, in_flight) = match last {
            Some((result, in_flight)) => (result, Some(in_flight)),
            None => (fallback, None),
        };
        match (result, in_flight) {
            (Attempted::Ok(response, span), Some(in_flight)) => Ok(response.map(|body| {
                let body = SpanBody::new(IdleTimeout::new(body, self.timeout), span);
                Holding::new(body, (permit, in_flight))
            })),
            (Attempted::Err(Outcome::Timeout), _) => Err(GatewayError::UpstreamTimeout),
            _ => Err(GatewayError::UpstreamUnavailable),
        }
    }

    /// Keeps a small body of a request that may be repeated (`replay`); streams everything else.
    async fn payload(
        &self,
        body: Option<UpstreamBody>,
        headers: &HeaderMap,
        replay: bool,
        deadline: Instant,
    ) -> Result<Payload, GatewayError> {
        let Some(body) = body else {
            return Ok(Payload::Empty);
        };
        if !replay
            || content_length(headers)
                .ok()
                .flatten()
                .is_none_or(|len| len > self.retry.config.max_body)
        {
            return Ok(Payload::Stream(Some(body)));
        }
        match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(collected)) => Ok(Payload::Kept(collected.to_bytes())),
            // Reading the client's body is all that happened here, so any error is the client's.
            Ok(Err(e)) => Err(client_body_error(&*e).unwrap_or(CLIENT_BODY_UNREADABLE)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        }
    }
}

/// The request target as HTTP/1.1 sends it: the instance's base path, the path, the query.
fn origin_form(base_path: &str, path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
    let query_len = query.map_or(0, |q| q.len() + 1);
    // Exactly the length written: a vector with room to spare would cost `Bytes` a second
    // allocation.
    let slash = !path.starts_with('/') && base_path.is_empty();
    let mut pq = String::with_capacity(base_path.len() + usize::from(slash) + path.len() + query_len);
    pq.push_str(base_path);
    if slash {
        // A stripped route with nothing left, on an instance without a base path.
        pq.push('/');
    }
    pq.push_str(path);
    if let Some(query) = query {
        pq.push('?');
        pq.push_str(query);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(pq))
        .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))
}

/// Closes idle connections the backend closed or that waited too long, every half idle timeout.
async fn sweep_loop(upstream: Weak<Upstream>) {
    loop {
        tokio::time::sleep(pool::IDLE_TIMEOUT / 2).await;
        let Some(this) = upstream.upgrade() else { return };
        let now = Instant::now();
        for instance in this.balancer.instances() {
            instance.address.sweep(now);
        }
    }
}

/// Probes every instance each `interval`; `unhealthy_after` failures in a row take an instance
/// out, `healthy_after` successes bring it back (and end a passive ejection).
async fn health_loop(upstream: Weak<Upstream>) {
    let mut streaks: Vec<(u32, u32)> = Vec::new();
    loop {
        let Some(this) = upstream.upgrade() else { return };
        let Some(check) = this.health_check.clone() else {
            return;
        };
        let instances = this.balancer.instances();
        streaks.resize(instances.len(), (0, 0));
        let probes = instances.iter().map(|instance| this.probe(instance, &check));
        let results = futures_util::future::join_all(probes).await;
        for (i, ok) in results.into_iter().enumerate() {
            let (fails, oks) = &mut streaks[i];
            if ok {
                *fails = 0;
                *oks += 1;
                if *oks == check.healthy_after {
                    this.balancer.set_healthy(i, true);
                }
            } else {
                *oks = 0;
                *fails += 1;
                if *fails == check.unhealthy_after {
                    this.balancer.set_healthy(i, false);
                }
            }
        }
        drop(this);
        tokio::time::sleep(check.interval).await;
    }
}

impl Upstream {
    async fn probe(&self, instance: &Instance, check: &HealthCheckConfig) -> bool {
        // The path is from the instance's root, not under its base path: health endpoints
        // usually sit beside the API, not inside it.
        let Ok(target) = check.path.parse::<PathAndQuery>() else {
            return false;
        };
        let head = pool::Head {
            method: &Method::GET,
            target: &target,
            headers: &HeaderMap::new(),
            set: &[],
            timeout_ms: None,
        };
        let now = Instant::now();
        let probe = self
            .connector
            .send(&instance.address, head, empty(), now, now + check.timeout);
        matches!(probe.await, Ok(response) if response.status().is_success())
    }
}

/// A response body that holds on to what must last as long as the response does: the bulkhead
/// slot and the instance's in-flight count.
pub type Guarded<B> = Holding<B, (OwnedSemaphorePermit, InFlight)>;

const CLIENT_BODY_UNREADABLE: GatewayError = GatewayError::BadRequest("the request body could not be read");

/// The client's answer when `e` came from reading its request body (over the size limit: 413;
/// otherwise 400), so it is never blamed on the backend; `None` for the backend's own failures.
pub(crate) fn client_body_error(e: &(dyn StdError + 'static)) -> Option<GatewayError> {
    // A request body that yielded more or less than the length it declared is the client's too.
    let off_length = matches!(find_source::<h1::Error>(e), Some(h1::Error::BodyLength(_)));
    if find_source::<LengthLimitError>(e).is_some() {
        Some(GatewayError::PayloadTooLarge { limit: 0 })
    } else if find_source::<ClientBodyError>(e).is_some() || off_length {
        Some(CLIENT_BODY_UNREADABLE)
    } else {
        None
    }
}

/// The first error of type `E` in `e`'s chain of sources, `e` included.
fn find_source<'a, E: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        current = err.source();
    }
    None
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
