//! The REST handler: forwards a matched request to its route's upstream and streams the answer
//! back. Bodies are never buffered: the client's body streams into the upstream request (capped
//! by `max_body_size`) and the upstream's body streams into the response, so SSE and chunked
//! responses flow as they arrive.

use std::pin::pin;

use axum::body::Body;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::edge::RequestContext;
use crate::edge::forwarded::forwarded_headers;
use crate::edge::headers::strip_hop_by_hop;
use crate::error::GatewayError;
use crate::routing::Route;
use crate::server::RequestBody;
use crate::telemetry::trace::TRACEPARENT;
use crate::upstream::{ClientBodyError, Upstream, UpstreamRequest};

/// Forwards `request` to `route`'s service; `path` is the normalized request path.
pub async fn forward(
    route: &Route,
    upstream: &Upstream,
    path: &str,
    request: Request<Limited<RequestBody>>,
    ctx: &RequestContext,
    deadline: Instant,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = request.into_parts();

    // Hop-by-hop headers were removed by the edge, before the identity headers were set.
    let headers = &mut parts.headers;
    // The upstream's own authority goes in Host (the upstream layer writes it); the client's is
    // kept in X-Forwarded-Host. The gateway's own headers are sent after the client's, not
    // inserted into their map: a custom name is hashed byte by byte on every insert.
    let set = forwarded_headers(headers, &ctx.client, &parts.uri, ctx.request_id.clone());
    // The backend joins the client's trace, or one of this request's own (an attempt's span
    // replaces it when traces are exported).
    headers.insert(TRACEPARENT, ctx.traceparent.clone());

    // No body at all (most GETs) means no chunked framing upstream either.
    // Its errors are marked as the client's, so the upstream layer answers 400 (or 413) and does
    // not blame the backend.
    let body = (!body.is_end_stream()).then(|| {
        body.map_err(|e| Box::new(ClientBodyError(e)) as Box<dyn std::error::Error + Send + Sync>)
            .boxed_unsync()
    });
    let forwarded = route.forward_path(path);
    let outgoing = UpstreamRequest {
        method: parts.method,
        path: forwarded,
        query: parts.uri.query(),
        set: &set,
        // Most requests go on with the path they came with (normalized already, not stripped).
        as_given: parts
            .uri
            .path_and_query()
            .filter(|given| given.path() == forwarded && forwarded.starts_with('/'))
            .cloned(),
        headers: parts.headers,
        body,
    };
    // Pinned where it is made: see `Gateway::handle`.
    let response = pin!(upstream.send(outgoing, deadline))
        .await
        .map_err(|e| match e {
            GatewayError::PayloadTooLarge { .. } => GatewayError::PayloadTooLarge {
                limit: ctx.max_body_size,
            },
            other => other,
        })?;

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}
