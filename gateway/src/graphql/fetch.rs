//! One `@http` backend call: rendering the request from its templates, sending it through the
//! shared upstream layer (bulkhead, breaker, retries, load balancing: the same as REST routes),
//! and reading the JSON answer within the call's deadline.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::time::Instant;

use super::directives::HttpCall;
use super::template::{Encoding, Scope, encode_component};
use crate::error::GatewayError;
use crate::upstream::{Upstream, UpstreamRequest};

/// The largest backend response a resolver reads.
pub const MAX_RESPONSE: usize = 16 << 20;

/// Why a call gave no usable value. Cloneable: one failed call may answer many waiters.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The gateway's own failure (timeout, connect error, breaker open, overloaded...): the
    /// stable code of [`GatewayError`].
    Gateway { code: &'static str, message: String },
    /// The backend answered with a 5xx.
    Status(StatusCode),
    /// The backend refused the call (a 4xx other than 404): not something a fallback should hide.
    Rejected(StatusCode),
    /// The backend's answer is not JSON, or is too large.
    Invalid(&'static str),
}

impl CallError {
    /// The GraphQL error code (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Gateway { code, .. } => code,
            CallError::Status(_) => "UPSTREAM_UNAVAILABLE",
            CallError::Rejected(_) => "UPSTREAM_REJECTED",
            CallError::Invalid(_) => "UPSTREAM_INVALID_RESPONSE",
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Gateway { message, .. } => message.clone(),
            CallError::Status(s) => format!("the upstream service failed with status {}", s.as_u16()),
            CallError::Rejected(s) => {
                format!("the upstream service refused the call with status {}", s.as_u16())
            }
            CallError::Invalid(why) => format!("the upstream service's answer is unusable: {why}"),
        }
    }

    /// Whether the field's `fallback` stands in (everything but a refused call).
    pub fn falls_back(&self) -> bool {
        !matches!(self, CallError::Rejected(_))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status(s) | CallError::Rejected(s) => Some(s.as_u16()),
            _ => None,
        }
    }
}

impl From<GatewayError> for CallError {
    fn from(e: GatewayError) -> Self {
        CallError::Gateway {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// A rendered call, ready to send (and to key the cache by).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub upstream: Arc<Upstream>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// The answer of a call: its JSON document; null for a 404, a 204 or an empty body.
pub type Answer = Arc<Value>;

impl Rendered {
    /// Renders `call` for one field, all but a batched parameter (see [`Rendered::add_batch`]).
    /// `None` when a placeholder of the path has no value: there is nothing to ask.
    pub fn new(
        call: &HttpCall,
        upstream: &Arc<Upstream>,
        scope: &Scope<'_>,
        base_headers: &HeaderMap,
    ) -> Option<Self> {
        let path = call.path.render(scope, Encoding::Url)?;
        let mut query = String::new();
        for (name, template) in &call.query {
            if call.batch.as_ref().is_some_and(|b| &b.param == name) {
                continue;
            }
            // A parameter whose value is absent is left out rather than sent empty.
            if let Some(value) = template.render(scope, Encoding::Raw) {
                push_pair(&mut query, name, &value);
            }
        }
        let mut headers = base_headers.clone();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        for (name, template) in &call.headers {
            if let Some(value) = template
                .render(scope, Encoding::Raw)
                .and_then(|v| HeaderValue::try_from(v).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
        let body = call.body.as_ref().map(|t| {
            let json = t.render_json(scope).unwrap_or(Value::Null);
            Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
        });
        if let Some(body) = &body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // A declared length lets the upstream layer keep the body, so the call can be
            // retried when that is safe (an Idempotency-Key, or a connection never made).
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Some(Self {
            upstream: upstream.clone(),
            method: call.method.clone(),
            path,
            query: (!query.is_empty()).then_some(query),
            headers,
            body,
        })
    }

    /// Adds a batch's values: joined by `separator` in one `param`, or the parameter repeated.
    pub fn add_batch(&mut self, param: &str, separator: Option<&str>, values: &[String]) {
        let mut query = self.query.take().unwrap_or_default();
        match separator {
            Some(sep) => push_pair(&mut query, param, &values.join(sep)),
            None => values.iter().for_each(|v| push_pair(&mut query, param, v)),
        }
        self.query = Some(query);
    }

    /// The cache key: service, method, URL and every header sent (the identity headers among
    /// them when the call forwards identity, so one caller's answer never reaches another).
    pub fn cache_key(&self) -> Arc<str> {
        let mut key = format!(
            "{}\n{}\n{}?{}",
            self.upstream.name(),
            self.method,
            self.path,
            self.query.as_deref().unwrap_or("")
        );
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(name, _)| *name != "x-request-id" && *name != "traceparent" && *name != "tracestate")
            .collect();
        headers.sort_by(|a, b| {
            a.0.as_str()
                .cmp(b.0.as_str())
                .then(a.1.as_bytes().cmp(b.1.as_bytes()))
        });
        for (name, value) in headers {
            let _ = write!(key, "\n{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        key.into()
    }

    /// Sends the call and reads its JSON answer, all before `deadline`.
    pub async fn send(self, deadline: Instant) -> Result<Answer, CallError> {
        let Rendered {
            upstream,
            method,
            path,
            query,
            headers,
            body,
        } = self;
        let request = UpstreamRequest {
            method,
            path: &path,
            query: query.as_deref(),
            as_given: None,
            set: &[],
            headers,
            body: body.map(|b| Full::new(b).map_err(|never| match never {}).boxed_unsync()),
        };
        let exchange = async {
            let response = upstream.send(request, deadline).await?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND || status == StatusCode::NO_CONTENT {
                return Ok(Arc::new(Value::Null));
            }
            if status.is_server_error() {
                return Err(CallError::Status(status));
            }
            if !status.is_success() {
                return Err(CallError::Rejected(status));
            }
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        CallError::Invalid("larger than 16 MiB")
                    } else {
                        CallError::from(GatewayError::UpstreamUnavailable)
                    }
                })?
                .to_bytes();
            if bytes.is_empty() {
                return Ok(Arc::new(Value::Null));
            }
            serde_json::from_slice::<Value>(&bytes)
                .map(Arc::new)
                .map_err(|_| CallError::Invalid("not JSON"))
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or_else(|_| Err(GatewayError::UpstreamTimeout.into()))
    }
}

fn push_pair(query: &mut String, name: &str, value: &str) {
    if !query.is_empty() {
        query.push('&');
    }
    let _ = write!(query, "{}={}", encode_component(name), encode_component(value));
}
