//! The edge: everything every request goes through before its route's handler, in ONE function
//! ([`Gateway::pipeline`]) with the reason for each step beside it. Later concerns (authentication,
//! rate limiting, tracing) slot in here at the marked places.

pub mod forwarded;
pub mod headers;
pub mod path;
pub mod request_id;

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::Limited;
use tokio::time::Instant;

use crate::auth::Identity;
use crate::body::Holding;
use crate::error::GatewayError;
use crate::proxy;
use crate::ratelimit::RateLimitHeaders;
use crate::routing::Handler;
use crate::server::RequestBody;
use crate::snapshot::Snapshot;
use crate::telemetry::trace::{RequestTrace, SpanBody, span};
use crate::telemetry::{access, metrics};
use forwarded::ClientAddr;
use headers::strip_hop_by_hop;
use request_id::X_REQUEST_ID;
use tracing::Instrument;

/// Per-request facts the edge established, handed to the handler.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub client: ClientAddr,
    pub max_body_size: u64,
    /// The verified caller; `None` on public routes and for anonymous callers of optional ones.
    pub identity: Option<Arc<Identity>>,
    /// The W3C `traceparent` backend calls carry (see `telemetry::trace`).
    pub traceparent: HeaderValue,
}

/// The gateway's shared state: the active snapshot, swapped whole on reload.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// Set when shutdown begins: `/readyz` fails so load balancers stop sending.
    draining: std::sync::atomic::AtomicBool,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        snapshot.start();
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            draining: Default::default(),
        })
    }

    /// The active snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Marks the gateway as shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes `snapshot` active for requests that arrive from now on.
    pub fn swap(&self, snapshot: Snapshot) {
        snapshot.start();
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Serves one request: the pipeline's answer, or its error in the SPEC.md format, always
    /// carrying the request id. `guard` lives as long as the answer's body (the listener counts
    /// the requests it serves with it).
    ///
    /// This is the listener's service future itself, and it pins the pipeline where it is made:
    /// the request's future is kilobytes, and every future wrapped around it, or moved into an
    /// `.await`, would be copied once more per request.
    pub async fn handle<G>(
        self: Arc<Self>,
        peer: SocketAddr,
        request: Request<RequestBody>,
        guard: G,
    ) -> Result<Response<Holding<Body, G>>, Infallible> {
        let started = Instant::now();
        metrics::active_requests(1.0);
        let request_id = request_id::from_request(request.headers());
        let method = request.method().clone();
        let trace = RequestTrace::start(&method, request.uri().path(), request.headers());
        let mut seen = Seen::default();
        let answer = {
            let mut pipeline = pin!(self.pipeline(peer, started, &request_id, &trace, request, &mut seen));
            // What `Instrument` does, without moving the pipeline into a wrapper.
            poll_fn(|cx| {
                let _entered = trace.span.enter();
                pipeline.as_mut().poll(cx)
            })
            .await
        };
        let mut error_code = None;
        let mut response = match answer {
            Ok(response) => response,
            Err(e) => {
                error_code = Some(e.code());
                tracing::debug!(%method, status = e.status().as_u16(), code = e.code(), request_id = ?request_id, "gateway error");
                // An error can come before the request body was read (a 401 or 429 to an
                // upload): the HTTP/1.1 codec then says `Connection: close` unless the rest of
                // the body is already in its buffer.
                e.to_response(&request_id)
            }
        };
        // A counted request reports its quota whatever the answer (a 429, or a 502 from upstream).
        if let Some(headers) = seen.rate_limit {
            headers.apply(response.headers_mut());
        }
        // Metrics and the access log name the route by its pattern (never the raw path).
        let route = seen.route.as_ref().map_or("unmatched", |r| r.pattern());
        let status = response.status().as_u16();
        trace.finish(status, error_code);
        // The request's span ends with its response body (only when spans are exported).
        if !trace.span.is_disabled() {
            let span = trace.span.clone();
            response = response.map(|body| Body::new(SpanBody::new(body, span)));
        }
        metrics::active_requests(-1.0);
        // The clock is read for the duration only when something keeps it.
        if metrics::recording() || access::enabled() {
            let took = started.elapsed();
            metrics::server_request(method.as_str(), route, status, took);
            access::record(&access::Entry {
                method: method.as_str(),
                route,
                status,
                took,
                request_id: request_id.to_str().unwrap_or_default(),
                trace_id: trace.trace_id(),
                client: seen.identity.as_ref().map(|i| i.subject.as_str()),
            });
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        Ok(response.map(|body| Holding::new(body, guard)))
    }

    async fn pipeline(
        &self,
        peer: SocketAddr,
        start: Instant,
        request_id: &HeaderValue,
        trace: &RequestTrace,
        request: Request<RequestBody>,
        seen: &mut Seen,
    ) -> Result<Response<Body>, GatewayError> {
        // One snapshot for the whole request: a reload mid-request never mixes two configs.
        let snapshot = self.snapshot.load_full();
        let server = &snapshot.config.server;

        // The deadline covers everything from the request's arrival (`start`) to the response
        // headers, retries included (its length is the route's `timeout` or the server's
        // `request_timeout`).

        // Who is calling: the TCP peer, or the client behind trusted proxies. Computed before any
        // header is touched so spoofed X-Forwarded-For from an untrusted peer is never believed.
        let client = ClientAddr::new(peer.ip(), request.headers(), &server.trusted_proxies);

        // Request smuggling: a body whose framing could be read two ways is refused rather than
        // reinterpreted, so the upstream (which gets a re-framed body) and we always agree.
        let declared = framing(request.headers())?;

        // Body limit: a declared length over the limit is refused before a byte is read; a
        // chunked body is cut off (and answered with 413) when it crosses the limit.
        let max_body_size = server.max_body_size;
        if declared.is_some_and(|len| len > max_body_size) {
            return Err(GatewayError::PayloadTooLarge { limit: max_body_size });
        }
        let limit = usize::try_from(max_body_size).unwrap_or(usize::MAX);
        let request = request.map(|body| Limited::new(body, limit));

        // Path normalization, once: the same path is matched, authorized and forwarded.
        let uri = request.uri().clone();
        let path = path::normalize(uri.path())?;

        // Route match against this snapshot's table: 404 / 405 come from here.
        let route = snapshot.routes.lookup(request.method(), &path)?;
        seen.route = Some(route.clone());
        trace.route(route.pattern());
        let deadline = start + route.config.timeout.unwrap_or(server.request_timeout);

        // Authentication per the route's `auth` and `scopes`, before anything reaches a backend.
        // The client's copies of identity headers are dropped on every route, so only the
        // gateway can set them.
        let auth_span = span!("auth", "error.type" = tracing::field::Empty);
        let identity = snapshot
            .auth
            .authenticate(&route.config, request.headers(), deadline)
            .instrument(auth_span.clone())
            .await
            .inspect_err(|e| {
                metrics::auth_failure(e.code());
                auth_span.record("error.type", e.code());
            })?;
        // Who, for the access log: a token's subject or an API key's id; never the credential.
        seen.identity = identity.clone();
        // Rate limiting, per the route's policy and keyed on the identity (or the client address
        // established above): a 429 here never reaches a backend or costs it anything.
        if let Some(policy) = &route.rate_limit {
            let limit_span = span!(
                "rate_limit",
                gateway.rate_limit.policy = policy.name(),
                gateway.rate_limit.outcome = tracing::field::Empty,
            );
            let decision = snapshot
                .rate_limits
                .check(policy, identity.as_deref(), &client)
                .instrument(limit_span.clone())
                .await;
            let outcome = if decision.is_ok() { "allowed" } else { "limited" };
            limit_span.record("gateway.rate_limit.outcome", outcome);
            metrics::rate_limit(policy.name(), outcome);
            seen.rate_limit = decision?;
        }

        let mut request = request;
        // Hop-by-hop headers (and any the client named in Connection) were for this hop only:
        // dropped after authentication read the request as sent, and before the gateway adds its
        // own headers, so `Connection: x-user-id` cannot remove the identity set below.
        strip_hop_by_hop(request.headers_mut());
        snapshot
            .auth
            .prepare_upstream(request.headers_mut(), identity.as_deref());

        let ctx = RequestContext {
            request_id: request_id.clone(),
            client,
            max_body_size,
            identity,
            traceparent: trace.traceparent.clone(),
        };
        match (&route.handler, &snapshot.graphql) {
            (Handler::Proxy(upstream), _) => {
                pin!(proxy::forward(route, upstream, &path, request, &ctx, deadline)).await
            }
            // Boxed: an operation's future is large, and the plain proxy route's request future
            // (moved a few times per request) would otherwise be as large.
            (Handler::GraphQL, Some(graphql)) => {
                Box::pin(graphql.serve(
                    &snapshot,
                    route.rate_limit.as_deref(),
                    &path,
                    request,
                    &ctx,
                    deadline,
                ))
                .await
            }
            // A GraphQL route exists only in a snapshot with a GraphQL endpoint.
            (Handler::GraphQL, None) => Err(GatewayError::RouteNotFound {
                method: request.method().clone(),
                path: path.into_owned(),
            }),
        }
    }
}

/// What the pipeline learned that `handle` reports after the answer.
#[derive(Default)]
struct Seen {
    /// The `RateLimit` headers of a counted request.
    rate_limit: Option<RateLimitHeaders>,
    route: Option<Arc<crate::routing::Route>>,
    /// The authenticated caller.
    identity: Option<Arc<Identity>>,
}

/// The HTTP/1.1 codec (`server::h1`) already refuses these framings, and hyper's HTTP/2 one
/// allows no transfer-coding at all; this check stays as the pipeline's own guarantee, whatever
/// the listener: a repeated Content-Length (even with equal values) and transfer-codings other
/// than a plain `chunked`, whose body would otherwise reach the upstream still coded and
/// unlabeled, are refused, as is a Content-Length that is not a plain number. Returns the length
/// the request declares.
fn framing(headers: &HeaderMap) -> Result<Option<u64>, GatewayError> {
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = te.next()
        && (te.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(GatewayError::BadRequest(
            "only the chunked transfer-coding is accepted",
        ));
    }
    let cl = headers.get_all(CONTENT_LENGTH).iter().count();
    if cl > 1 || (cl == 1 && headers.contains_key(TRANSFER_ENCODING)) {
        return Err(GatewayError::BadRequest(
            "a request must carry one Content-Length or Transfer-Encoding: chunked",
        ));
    }
    crate::http1::content_length(headers).map_err(GatewayError::BadRequest)
}
