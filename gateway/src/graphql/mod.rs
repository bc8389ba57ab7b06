//! The GraphQL handler: the backend-for-frontend. Clients send one operation; its fields are
//! resolved by concurrent calls to the services through the same upstream layer as REST routes.
//!
//! - `sdl`: `schema/*.graphql` → executable schema (async-graphql `dynamic`), `directives` and
//!   `template` read `@http`/`@auth`/`@from`;
//! - `resolve`: the field resolvers, with `fetch` (one backend call), `cache` (reuse and
//!   single-flight) and `prefetch` (starting calls early; one call for sibling parents);
//! - `limits`: what is refused before anything runs;
//! - this module: GraphQL over HTTP (GET/POST, media types, status codes, CSRF, batches);
//! - `playground`: GraphiQL for browsers.

pub mod cache;
pub mod directives;
mod fetch;
mod limits;
mod nulls;
pub mod playground;
mod prefetch;
mod resolve;
mod sdl;
mod template;

use std::sync::Arc;

use async_graphql::Variables;
use async_graphql::dynamic::Schema;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use axum::body::Body as HttpBody;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{ConfigError, GraphqlConfig};
use crate::edge::RequestContext;
use crate::edge::request_id::X_REQUEST_ID;
use crate::error::GatewayError;
use crate::ratelimit::Policy;
use crate::server::RequestBody;
use crate::snapshot::Snapshot;
use crate::telemetry::trace::{TRACEPARENT, span};
use crate::upstream::Upstream;
use cache::CallCache;
use resolve::{Engine, RequestScope};
use tracing::Instrument;

pub use directives::DECLARATIONS;

/// Headers a backend call carries from the client's request (besides identity, the request id
/// and `traceparent`, which it always gets).
const PASSED_ON: [HeaderName; 2] = [
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("idempotency-key"),
];

/// Headers that prove a request was preflighted (or sent by a non-browser client).
const PREFLIGHT_HEADERS: [&str; 3] = [
    "apollo-require-preflight",
    "x-apollo-operation-name",
    "graphql-require-preflight",
];

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// The request header that asks for `extensions.calls` (with `expose_calls = true`).
const CALLS_HEADER: &str = "x-gateway-calls";

/// How much query text the parsed-document cache keeps.
const DOCUMENT_CACHE_BYTES: u64 = 4 << 20;

/// The endpoint: its settings and its executable schema.
pub struct GraphQL {
    config: GraphqlConfig,
    /// A digest of the schema files this was built from.
    source_digest: String,
    /// The backend response cache (a reload keeps it when neither the endpoint's settings nor
    /// any service changed).
    cache: Arc<CallCache>,
    schema: Schema,
    types: nulls::Types,
    /// Parsed documents that passed the limits, by query text (at most `DOCUMENT_CACHE_BYTES` of
    /// query text).
    documents: moka::sync::Cache<Arc<str>, Arc<ExecutableDocument>>,
    /// The upstream headers `[auth.jwt.forward]` sets from the identity.
    identity_headers: Vec<HeaderName>,
}

impl std::fmt::Debug for GraphQL {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphQL")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl GraphQL {
    /// Reads and checks the schema directory and builds the executable schema over `upstreams`.
    pub fn build(
        config: &GraphqlConfig,
        upstreams: &[Arc<Upstream>],
        identity_headers: Vec<HeaderName>,
        cache: Option<Arc<CallCache>>,
    ) -> Result<Self, Vec<ConfigError>> {
        let (files, mut errors) = sdl::read(&config.schema_dir, &config.schema_location)?;
        let engine = Arc::new(Engine {
            upstreams: upstreams
                .iter()
                .map(|u| (u.name().to_owned(), u.clone()))
                .collect(),
            cache: cache
                .unwrap_or_else(|| Arc::new(CallCache::new(config.cache_max_entries, config.stale_grace))),
            plans: Default::default(),
        });
        let services: Vec<&str> = upstreams.iter().map(|u| u.name()).collect();
        let options = sdl::Options {
            introspection: config.introspection,
            suggestions: config.suggestions,
            max_depth: config.max_depth,
            max_complexity: config.max_complexity,
        };
        let built = sdl::build(&files, &services, &engine, &options);
        let (schema, types) =
            match built {
                Ok(built) if errors.is_empty() => built,
                Ok(_) => return Err(errors),
                // Errors in the files that parsed; a type defined in a file that did not parse is
                // reported as unknown, which says nothing new.
                Err(more) if !errors.is_empty() => {
                    errors.extend(more.into_iter().filter(|e| {
                        !e.message.contains("unknown type") && !e.message.contains("has no `type")
                    }));
                    return Err(errors);
                }
                Err(more) => return Err(more),
            };
        Ok(Self {
            config: config.clone(),
            source_digest: files.digest.clone(),
            cache: engine.cache.clone(),
            schema,
            types,
            documents: moka::sync::Cache::builder()
                .weigher(|query: &Arc<str>, _| u32::try_from(query.len()).unwrap_or(u32::MAX))
                .max_capacity(DOCUMENT_CACHE_BYTES)
                .build(),
            identity_headers,
        })
    }

    /// A digest of the schema files: whether a reload changed them.
    pub fn source_digest(&self) -> &str {
        &self.source_digest
    }

    /// The backend response cache.
    pub fn cache(&self) -> Arc<CallCache> {
        self.cache.clone()
    }

    /// The schema in SDL, as clients see it.
    pub fn sdl(&self) -> String {
        self.schema.sdl()
    }

    /// Serves a request under the endpoint's path: an operation, the playground or its assets.
    pub async fn serve(
        &self,
        snapshot: &Snapshot,
        policy: Option<&Policy>,
        path: &str,
        request: Request<Limited<RequestBody>>,
        ctx: &RequestContext,
        deadline: Instant,
    ) -> Result<Response<HttpBody>, GatewayError> {
        let (parts, body) = request.into_parts();
        let method = &parts.method;
        let headers = &parts.headers;
        if path != self.config.path {
            return self.asset(method, path).await;
        }
        let has_query = parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("query=")));
        if *method == Method::GET && !has_query && self.config.playground && accepts_html(headers) {
            return Ok(self.playground());
        }
        if *method != Method::GET && *method != Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
                allow: HeaderValue::from_static("GET, POST"),
            });
        }
        if self.config.csrf && !preflighted(headers) {
            return Err(GatewayError::CsrfRejected);
        }
        let media = response_media_type(headers)?;
        let operations = if *method == Method::GET {
            Ok(Operations::One(params_from_query(
                parts.uri.query().unwrap_or(""),
            )))
        } else {
            if !is_json(headers) {
                return Err(GatewayError::UnsupportedMediaType);
            }
            let bytes = body
                .collect()
                .await
                .map_err(|e| match crate::upstream::client_body_error(&*e) {
                    Some(GatewayError::PayloadTooLarge { .. }) | None => GatewayError::PayloadTooLarge {
                        limit: ctx.max_body_size,
                    },
                    Some(other) => other,
                })?
                .to_bytes();
            params_from_body(&bytes, self.config.batching, self.config.max_batch)
        };
        let operations = match operations {
            Ok(ops) => ops,
            Err(message) => {
                return Ok(respond(
                    StatusCode::BAD_REQUEST,
                    media,
                    request_error("BAD_REQUEST", &message),
                ));
            }
        };
        // Each operation of a batch past the first counts against the rate limit, before any runs.
        if let (Operations::Many(ops), Some(policy)) = (&operations, policy) {
            for _ in 1..ops.len() {
                snapshot
                    .rate_limits
                    .check(policy, ctx.identity.as_deref(), &ctx.client)
                    .await?;
            }
        }
        let (plain, with_identity) = self.upstream_headers(headers, ctx);
        let get = *method == Method::GET;
        let timings = self.config.expose_calls && headers.contains_key(CALLS_HEADER);
        let run = |params: Result<Params, String>| {
            let scope = RequestScope::new(
                ctx.identity.clone(),
                deadline,
                plain.clone(),
                with_identity.clone(),
            );
            let scope = if timings { scope.with_call_timings() } else { scope };
            async move {
                match params {
                    Ok(params) => self.execute(params, scope, get).await,
                    Err(message) => Executed::Malformed(request_error("BAD_REQUEST", &message)),
                }
            }
        };
        match operations {
            Operations::One(params) => match run(params).await {
                Executed::Done(body) => Ok(respond(StatusCode::OK, media, body)),
                Executed::RequestError(body) => {
                    // GraphQL over HTTP: a request error is a 400 in the new media type; legacy
                    // `application/json` clients get 200 with `errors`.
                    let status = if media == GRAPHQL_RESPONSE {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::OK
                    };
                    Ok(respond(status, media, body))
                }
                Executed::Malformed(body) => Ok(respond(StatusCode::BAD_REQUEST, media, body)),
                Executed::MutationOverGet => Err(GatewayError::MethodNotAllowed {
                    method: Method::GET,
                    path: path.to_owned(),
                    allow: HeaderValue::from_static("POST"),
                }),
            },
            Operations::Many(ops) => {
                let results = futures_util::future::join_all(ops.into_iter().map(|p| run(Ok(p)))).await;
                let bodies: Vec<String> = results
                    .into_iter()
                    .map(|r| match r {
                        Executed::Done(body) | Executed::RequestError(body) | Executed::Malformed(body) => {
                            body
                        }
                        Executed::MutationOverGet => request_error("BAD_REQUEST", "mutations need POST"),
                    })
                    .collect();
                Ok(respond(StatusCode::OK, media, format!("[{}]", bodies.join(","))))
            }
        }
    }

    /// The parsed document of `query`, once it passed the limits that need no execution; the
    /// error response otherwise. Documents that passed are kept (clients send the same few
    /// queries over and over), so most requests skip the size, token, parse and alias work.
    fn document(&self, query: &str) -> Result<Arc<ExecutableDocument>, String> {
        if let Some(doc) = self.documents.get(query) {
            return Ok(doc);
        }
        let c = &self.config;
        if query.len() > c.max_query_size {
            return Err(request_error(
                "QUERY_TOO_LARGE",
                &format!("the query is larger than {} bytes", c.max_query_size),
            ));
        }
        limits::check_tokens(query, c.max_tokens).map_err(|e| request_error(e.code, &e.message))?;
        let doc = async_graphql::parser::parse_query(query).map_err(|e| {
            let locations: Vec<Value> = e
                .positions()
                .map(|p| json!({"line": p.line, "column": p.column}))
                .collect();
            let mut error = json!({
                "message": format!("syntax error: {}", sdl::parse_error_message(&e)),
                "extensions": {"code": "GRAPHQL_PARSE_FAILED"},
            });
            if !locations.is_empty() {
                error["locations"] = Value::Array(locations);
            }
            json!({"errors": [error]}).to_string()
        })?;
        limits::check_document(&doc, c.max_aliases, c.max_root_fields)
            .map_err(|e| request_error(e.code, &e.message))?;
        let doc = Arc::new(doc);
        self.documents.insert(query.into(), doc.clone());
        Ok(doc)
    }

    /// Runs one operation after the limits that need no execution.
    async fn execute(&self, params: Params, scope: RequestScope, over_get: bool) -> Executed {
        let Some(query) = params.query else {
            return Executed::Malformed(request_error("BAD_REQUEST", "the request has no `query`"));
        };
        let doc = match self.document(&query) {
            Ok(doc) => doc,
            Err(body) => return Executed::RequestError(body),
        };
        let operation_ty = nulls::operation(&doc, params.operation_name.as_deref()).map(|op| op.node.ty);
        if over_get && operation_ty == Some(OperationType::Mutation) {
            return Executed::MutationOverGet;
        }
        let scope = Arc::new(scope);
        let mut request =
            async_graphql::Request::new(query).variables(Variables::from_json(params.variables.clone()));
        if let Some(name) = &params.operation_name {
            request = request.operation_name(name);
        }
        request.set_parsed_query((*doc).clone());
        let operation_type = match operation_ty {
            Some(OperationType::Mutation) => "mutation",
            Some(OperationType::Subscription) => "subscription",
            _ => "query",
        };
        // The operation's name: the one asked for, or that of the document's only operation.
        let operation_name = params.operation_name.as_deref().or(match &doc.operations {
            DocumentOperations::Multiple(ops) if ops.len() == 1 => ops.keys().next().map(|n| n.as_str()),
            _ => None,
        });
        let operation_span = span!(
            "graphql",
            otel.name = span_name(operation_type, operation_name).as_str(),
            graphql.operation.type = operation_type,
            graphql.operation.name = operation_name,
            otel.status_code = tracing::field::Empty,
        );
        let mut response = self
            .schema
            .execute(request.data(scope.clone()))
            .instrument(operation_span.clone())
            .await;

        // A response without data and without a field path is a request error: the operation
        // did not run (validation, depth, complexity, an unknown operation name).
        let request_failed = response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(|e| e.path.is_empty());
        if request_failed {
            for e in &mut response.errors {
                e.extensions
                    .get_or_insert_with(Default::default)
                    .set("code", "GRAPHQL_VALIDATION_FAILED");
            }
        } else if !response.errors.is_empty() {
            // Only a failed field can be missing; without errors there is nothing to fix.
            nulls::propagate(
                &self.types,
                &doc,
                params.operation_name.as_deref(),
                &params.variables,
                &mut response.data,
            );
            // A failed non-null field already has its error; async-graphql adds a second one.
            let failed: Vec<_> = response
                .errors
                .iter()
                .filter(|e| e.extensions.is_some())
                .map(|e| e.path.clone())
                .collect();
            response
                .errors
                .retain(|e| !(e.message.starts_with("internal: non-null types") && failed.contains(&e.path)));
        }
        let mut extensions = serde_json::Map::new();
        if let Some(degraded) = scope.take_degraded() {
            extensions.insert("degraded".into(), degraded);
        }
        if let Some(calls) = scope.take_calls() {
            extensions.insert("calls".into(), calls);
        }
        let body = Body {
            data: (!request_failed).then_some(&response.data),
            errors: &response.errors,
            extensions: (!extensions.is_empty()).then_some(Value::Object(extensions)),
        };
        let degraded = body
            .extensions
            .as_ref()
            .is_some_and(|e| e.get("degraded").is_some());
        let json = serde_json::to_string(&body).unwrap_or_default();
        // `degraded`: complete, but a fallback stands in for a failed call somewhere.
        let outcome = match (request_failed, response.errors.is_empty(), degraded) {
            (true, _, _) => "failed",
            (false, false, _) => "partial",
            (false, true, true) => "degraded",
            (false, true, false) => "ok",
        };
        crate::telemetry::metrics::graphql_operation(operation_name, outcome);
        if outcome != "ok" {
            operation_span.record("otel.status_code", "error");
        }
        if request_failed {
            Executed::RequestError(json)
        } else {
            Executed::Done(json)
        }
    }

    /// The headers every backend call of this request carries: without and with the caller's
    /// identity (the edge already replaced the client's identity headers with verified ones).
    fn upstream_headers(&self, headers: &HeaderMap, ctx: &RequestContext) -> (HeaderMap, HeaderMap) {
        let mut plain = HeaderMap::new();
        plain.insert(&X_REQUEST_ID, ctx.request_id.clone());
        // Every call joins the client's trace, or one trace of this request's own.
        plain.insert(TRACEPARENT, ctx.traceparent.clone());
        for name in &PASSED_ON {
            if let Some(v) = headers.get(name) {
                plain.insert(name.clone(), v.clone());
            }
        }
        let mut with_identity = plain.clone();
        for name in self.identity_headers.iter().chain([&AUTHORIZATION]) {
            if let Some(v) = headers.get(name) {
                with_identity.insert(name.clone(), v.clone());
            }
        }
        (plain, with_identity)
    }

    fn playground(&self) -> Response<HttpBody> {
        let base = format!("{}/assets", self.config.path);
        let assets = match &self.config.playground_assets {
            Some(_) => playground::Assets::Local { base: &base },
            None => playground::Assets::Cdn,
        };
        let html = playground::page(&self.config.path, assets, self.config.example_query.as_deref());
        let mut response = Response::new(HttpBody::from(html));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        response
    }

    /// `<path>/assets/...`: the playground's local scripts.
    async fn asset(&self, method: &Method, path: &str) -> Result<Response<HttpBody>, GatewayError> {
        let not_found = || GatewayError::RouteNotFound {
            method: method.clone(),
            path: path.to_owned(),
        };
        let rest = path
            .strip_prefix(self.config.path.as_str())
            .and_then(|p| p.strip_prefix("/assets/"))
            .ok_or_else(not_found)?;
        let dir = self.config.playground_assets.as_ref().ok_or_else(not_found)?;
        if *method != Method::GET && *method != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
                allow: HeaderValue::from_static("GET, HEAD"),
            });
        }
        let (content_type, bytes) = playground::asset(dir, rest).await.ok_or_else(not_found)?;
        let mut response = Response::new(HttpBody::from(bytes));
        response.headers_mut().insert(CONTENT_TYPE, content_type);
        Ok(response)
    }
}

/// The GraphQL request parameters.
#[derive(Debug, Default)]
struct Params {
    query: Option<String>,
    variables: serde_json::Value,
    operation_name: Option<String>,
}

enum Operations {
    One(Result<Params, String>),
    Many(Vec<Params>),
}

/// A serialized response (field order is the query's, so it is serialized from async-graphql's
/// ordered values, not through `serde_json::Value`).
enum Executed {
    Done(String),
    RequestError(String),
    /// Not a GraphQL request at all (no `query`, parameters of the wrong type): 400 whatever
    /// the media type.
    Malformed(String),
    MutationOverGet,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a async_graphql::Value>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [async_graphql::ServerError],
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<Value>,
}

/// `?query=&variables=&operationName=&extensions=`.
fn params_from_query(query: &str) -> Result<Params, String> {
    let mut params = Params::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "query" => params.query = Some(value.into_owned()),
            "operationName" => params.operation_name = Some(value.into_owned()).filter(|v| !v.is_empty()),
            "variables" if !value.is_empty() => {
                params.variables =
                    serde_json::from_str(&value).map_err(|_| "`variables` is not JSON".to_owned())?;
                if !params.variables.is_object() && !params.variables.is_null() {
                    return Err("`variables` must be a JSON object".into());
                }
            }
            "extensions" if !value.is_empty() => {
                let ext: Value =
                    serde_json::from_str(&value).map_err(|_| "`extensions` is not JSON".to_owned())?;
                if !ext.is_object() && !ext.is_null() {
                    return Err("`extensions` must be a JSON object".into());
                }
            }
            _ => {}
        }
    }
    Ok(params)
}

/// A JSON body: one operation, or with batching an array of them.
fn params_from_body(bytes: &Bytes, batching: bool, max_batch: usize) -> Result<Operations, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| "the request body is not JSON".to_owned())?;
    match value {
        Value::Array(items) => {
            if !batching {
                return Err("batched operations are not enabled on this endpoint".into());
            }
            if items.is_empty() || items.len() > max_batch {
                return Err(format!("a batch holds 1 to {max_batch} operations"));
            }
            items
                .into_iter()
                .map(params_of)
                .collect::<Result<_, _>>()
                .map(Operations::Many)
        }
        other => params_of(other).map(|p| Operations::One(Ok(p))),
    }
}

fn params_of(value: Value) -> Result<Params, String> {
    let Value::Object(mut map) = value else {
        return Err("the request body must be a JSON object".into());
    };
    let query = match map.remove("query") {
        Some(Value::String(q)) => Some(q),
        None | Some(Value::Null) => None,
        Some(_) => return Err("`query` must be a string".into()),
    };
    let variables = match map.remove("variables") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err("`variables` must be an object".into()),
    };
    let operation_name = match map.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`operationName` must be a string".into()),
    };
    match map.remove("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("`extensions` must be an object".into()),
    }
    Ok(Params {
        query,
        variables,
        operation_name,
    })
}

/// `query Name`, or `query` for an anonymous operation (OpenTelemetry's GraphQL conventions).
fn span_name(operation_type: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{operation_type} {name}"),
        None => operation_type.to_owned(),
    }
}

fn request_error(code: &str, message: &str) -> String {
    json!({"errors": [{"message": message, "extensions": {"code": code}}]}).to_string()
}

fn respond(status: StatusCode, media: &'static str, body: String) -> Response<HttpBody> {
    let mut response = Response::new(HttpBody::from(body));
    *response.status_mut() = status;
    let content_type = if media == GRAPHQL_RESPONSE {
        "application/graphql-response+json; charset=utf-8"
    } else {
        "application/json; charset=utf-8"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Apollo Router's CSRF rule: a browser sends `text/plain`, form encodings, or no content type at
/// all cross-site without a preflight; anything else (or a custom header) was preflighted.
fn preflighted(headers: &HeaderMap) -> bool {
    if PREFLIGHT_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return true;
    }
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            !matches!(
                essence.as_str(),
                "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
            )
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let mut parts = ct.split(';');
            let essence = parts.next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
                && parts.all(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    !k.trim().eq_ignore_ascii_case("charset")
                        || v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                })
        })
}

/// The media types of the Accept header with their q-values.
fn accepted(headers: &HeaderMap) -> Vec<(String, f32)> {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            (media, q)
        })
        .filter(|(m, _)| !m.is_empty())
        .collect()
}

/// `application/graphql-response+json` when the client names it (and ranks it at least as high
/// as `application/json`); otherwise `application/json`, also for `*/*` and for no Accept header,
/// as the GraphQL over HTTP spec asks of servers that serve older clients.
fn response_media_type(headers: &HeaderMap) -> Result<&'static str, GatewayError> {
    let accepted = accepted(headers);
    if accepted.is_empty() {
        return Ok("application/json");
    }
    let q_of = |matches: &dyn Fn(&str) -> bool| {
        accepted
            .iter()
            .filter(|(m, _)| matches(m))
            .map(|(_, q)| *q)
            .fold(0.0f32, f32::max)
    };
    let new = q_of(&|m| m == GRAPHQL_RESPONSE);
    let legacy = q_of(&|m| m == "application/json" || m == "application/*" || m == "*/*");
    match (new > 0.0, legacy > 0.0) {
        (true, _) if new >= legacy => Ok(GRAPHQL_RESPONSE),
        (_, true) => Ok("application/json"),
        _ => Err(GatewayError::NotAcceptable),
    }
}

fn accepts_html(headers: &HeaderMap) -> bool {
    accepted(headers)
        .iter()
        .any(|(m, q)| m == "text/html" && *q > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn media_type_negotiation() {
        let pick = |accept| response_media_type(&headers(&[("accept", accept)])).ok();
        assert_eq!(
            response_media_type(&HeaderMap::new()).ok(),
            Some("application/json")
        );
        assert_eq!(pick("*/*"), Some("application/json"));
        assert_eq!(pick("application/graphql-response+json"), Some(GRAPHQL_RESPONSE));
        assert_eq!(
            pick("application/graphql-response+json, application/json;q=0.9"),
            Some(GRAPHQL_RESPONSE)
        );
        assert_eq!(
            pick("application/json, application/graphql-response+json;q=0.5"),
            Some("application/json")
        );
        assert_eq!(pick("text/html"), None);
    }

    #[test]
    fn csrf_needs_a_non_simple_content_type_or_a_preflight_header() {
        assert!(!preflighted(&HeaderMap::new()));
        assert!(!preflighted(&headers(&[(
            "content-type",
            "text/plain;charset=utf-8"
        )])));
        assert!(!preflighted(&headers(&[(
            "content-type",
            "multipart/form-data; boundary=x"
        )])));
        assert!(!preflighted(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(preflighted(&headers(&[("content-type", "application/json")])));
        assert!(preflighted(&headers(&[("apollo-require-preflight", "true")])));
    }
}
