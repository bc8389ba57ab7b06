//! The one place gateway errors become responses: the SPEC.md JSON body
//! `{"error": {"code", "message", "request_id"}}` with the right status and headers.
//!
//! Modules fail with a named [`GatewayError`]; nothing else builds an error response. Messages are
//! for clients: they never carry upstream addresses, internal errors or key material.

use axum::body::Body;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};

use crate::ratelimit::RateLimitHeaders;

/// Everything the gateway itself can answer with instead of an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: HeaderValue,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("the upstream service is unavailable")]
    UpstreamUnavailable,
    #[error("the upstream service did not answer in time")]
    UpstreamTimeout,
    /// No credentials, or credentials that failed a check; the reason says which, in plain words.
    #[error("{reason}")]
    Unauthenticated { reason: AuthFailure },
    #[error("this route needs the scopes: {}", missing.join(" "))]
    Forbidden { missing: Vec<String> },
    /// The keys that would verify the token cannot be fetched right now (identity provider down
    /// since startup): the token may well be valid, so this is not a 401.
    #[error("the keys to verify this token are not available yet; retry shortly")]
    AuthUnavailable,
    /// The service's bulkhead is full: too many requests to it are in flight.
    #[error("the upstream service is overloaded; retry shortly")]
    UpstreamOverloaded,
    /// The service's circuit breaker is open after too many failures.
    #[error("the upstream service is failing; retry in {retry_after} s")]
    CircuitOpen { retry_after: u64 },
    /// Every instance of the service failed its health checks.
    #[error("no healthy instance of the upstream service; retry shortly")]
    NoHealthyUpstream,
    /// A GraphQL request a browser could have sent cross-site without a preflight.
    #[error(
        "this request could be a cross-site request forgery: send it with `content-type: application/json` or an `apollo-require-preflight` header"
    )]
    CsrfRejected,
    #[error("send the operation as `content-type: application/json`")]
    UnsupportedMediaType,
    #[error("the endpoint answers application/graphql-response+json or application/json; accept one of them")]
    NotAcceptable,
    /// The client is over its quota; it may retry after `retry_after` seconds.
    #[error("too many requests: retry in {retry_after} s")]
    RateLimited {
        retry_after: u64,
        headers: RateLimitHeaders,
    },
}

/// Why a caller is not authenticated. Never carries the token or any part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("this route needs credentials: a bearer token in Authorization or an API key")]
    Missing,
    #[error("send one Authorization header with one credential")]
    Ambiguous,
    #[error("the Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("the token is too large")]
    TooLarge,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token names a critical header extension the gateway does not support")]
    Critical,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token lacks a required claim or has a claim of the wrong type")]
    Claims,
    #[error("the API key is not valid")]
    ApiKey,
}

impl AuthFailure {
    /// RFC 6750 §3.1: a request without any credentials gets a challenge without an error code.
    fn challenge(self) -> HeaderValue {
        match self {
            Self::Missing => HeaderValue::from_static("Bearer realm=\"gateway\""),
            _ => HeaderValue::from_static("Bearer realm=\"gateway\", error=\"invalid_token\""),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::CsrfRejected => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamOverloaded | Self::CircuitOpen { .. } | Self::NoHealthyUpstream => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable, documented code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::CsrfRejected => "CSRF_REJECTED",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::NotAcceptable => "NOT_ACCEPTABLE",
            Self::RouteNotFound { .. } => "ROUTE_NOT_FOUND",
            Self::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::Unauthenticated { .. } => "UNAUTHENTICATED",
            Self::Forbidden { .. } => "FORBIDDEN",
            Self::AuthUnavailable => "AUTH_UNAVAILABLE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::UpstreamOverloaded => "UPSTREAM_OVERLOADED",
            Self::CircuitOpen { .. } => "CIRCUIT_OPEN",
            Self::NoHealthyUpstream => "NO_HEALTHY_UPSTREAM",
        }
    }

    /// The SPEC.md error response, tagged with the request's id.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<Body> {
        let mut message = self.to_string();
        // Paths come from clients; keep echoes of them short.
        if message.len() > 300 {
            let mut cut = 300;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": message,
                "request_id": request_id.to_str().unwrap_or_default(),
            }
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(ALLOW, allow.clone());
            }
            Self::Unauthenticated { reason } => {
                headers.insert(WWW_AUTHENTICATE, reason.challenge());
            }
            Self::Forbidden { missing } => {
                let challenge = format!(
                    "Bearer realm=\"gateway\", error=\"insufficient_scope\", scope=\"{}\"",
                    missing.join(" ")
                );
                if let Ok(v) = HeaderValue::try_from(challenge) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::AuthUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::UpstreamOverloaded | Self::NoHealthyUpstream => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::CircuitOpen { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from((*retry_after).max(1)));
            }
            Self::RateLimited {
                retry_after,
                headers: limit,
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                limit.apply(headers);
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_matches_the_spec() {
        let err = GatewayError::MethodNotAllowed {
            method: Method::DELETE,
            path: "/api/users".into(),
            allow: HeaderValue::from_static("GET, HEAD"),
        };
        let response = err.to_response(&HeaderValue::from_static("req-1"));
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "METHOD_NOT_ALLOWED");
        assert_eq!(json["error"]["message"], "DELETE is not allowed on /api/users");
        assert_eq!(json["error"]["request_id"], "req-1");
    }
}
