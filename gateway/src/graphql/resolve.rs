//! Field resolvers. A field with `@http` makes a backend call (cached, batched, with its own
//! timeout and fallback); any other field reads its parent's JSON by name (or `@from` key). Both
//! check `@auth` first. Failures become GraphQL errors with `extensions.code`, and every field
//! answered by a fallback (or left null by a failure) is listed in `extensions.degraded`.
//!
//! A call is made in three steps: [`prepare`] renders it from the field's arguments and parent
//! (synchronously), [`run`] sends it (cached, batched), and [`finish`] turns its outcome into the
//! field's value (select, batch pick, fallback). Splitting them lets `prefetch` start the calls
//! of an object's fields as soon as the object's JSON arrives: async-graphql's dynamic executor
//! resolves the fields of nested objects one after another, so without it sibling calls below
//! the root would wait for each other.

use foldhash::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_graphql::dynamic::{FieldFuture, FieldValue, ResolverContext};
use async_graphql::{Error, ErrorExtensions};
use http::HeaderMap;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::cache::CallCache;
use super::directives::{Fallback, HttpCall};
use super::fetch::{CallError, Rendered};
use super::prefetch::{self, Pending};
use super::template::{Scope, select, text_of};
use crate::auth::Identity;
use crate::telemetry::metrics;
use crate::telemetry::trace::span;
use crate::upstream::Upstream;
use tracing::Instrument;

/// What every resolver of a schema shares: the services, the response cache, and every field's
/// plan (for prefetching; set once the schema is built).
#[derive(Debug)]
pub struct Engine {
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub cache: Arc<CallCache>,
    pub plans: OnceLock<Plans>,
}

/// Field plans by object type and field name.
#[derive(Debug, Default)]
pub struct Plans {
    pub types: HashMap<String, HashMap<String, Arc<FieldPlan>>>,
}

impl Plans {
    pub fn field(&self, type_name: &str, field: &str) -> Option<&Arc<FieldPlan>> {
        self.types.get(type_name)?.get(field)
    }
}

/// How a field's JSON becomes its GraphQL value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A scalar or enum.
    Leaf,
    /// An object type: its JSON object is the parent of its fields.
    Object,
    List(Box<Shape>),
}

/// Where a field's value comes from.
#[derive(Debug)]
pub enum Source {
    Http(Box<HttpCall>),
    /// The parent's JSON at this path (the field's name, or its `@from` key).
    Parent(Vec<String>),
}

/// Everything a field's resolver needs, fixed when the schema is built.
#[derive(Debug)]
pub struct FieldPlan {
    /// `Type.field`, which also tells batches of different fields apart.
    pub id: String,
    pub source: Source,
    pub shape: Shape,
    /// `@auth` scopes of the field or its type; `None`: public.
    pub scopes: Option<Vec<String>>,
    /// The named type the field returns (its element type for lists).
    pub type_name: String,
    /// Arguments' default values, for calls prepared before the field's resolver runs.
    pub arg_defaults: Vec<(String, Value)>,
}

/// A successful call: its document, and whether it is a stale stand-in (and why).
#[derive(Debug, Clone)]
pub struct Got {
    value: Arc<Value>,
    stale_because: Option<&'static str>,
    /// Answered from the cache, without a backend call.
    cached: bool,
}

impl Got {
    /// A live answer.
    pub fn fresh(value: Arc<Value>) -> Self {
        Self {
            value,
            stale_because: None,
            cached: false,
        }
    }

    /// A fresh cached answer.
    pub fn cached(value: Arc<Value>) -> Self {
        Self {
            cached: true,
            ..Self::fresh(value)
        }
    }
}

pub type Outcome = Result<Got, CallError>;

/// A call rendered for one field, not yet made.
pub struct Prepared {
    pub rendered: Rendered,
    pub ttl: Option<Duration>,
    pub keep_stale: bool,
    pub deadline: Instant,
    /// For a batched field: its value of the batched parameter and its batch (field and call).
    pub batch: Option<BatchMember>,
    /// When it was prepared (the call starts right after).
    pub started: Instant,
    /// `Type.field`, for the call's span.
    pub field: String,
}

pub struct BatchMember {
    pub value: String,
    pub group: Arc<str>,
    pub param: String,
    pub separator: Option<String>,
}

/// Per-request facts the resolvers read (async-graphql request data).
pub struct RequestScope {
    pub identity: Option<Arc<Identity>>,
    /// The request's deadline: every call ends by then, whatever its own timeout.
    pub deadline: Instant,
    /// Sent on every call: request id, trace context, Idempotency-Key.
    pub headers: HeaderMap,
    /// `headers` plus the caller's identity headers (and Authorization when forwarded).
    pub identity_headers: HeaderMap,
    pub degraded: Mutex<Vec<Value>>,
    /// Calls started ahead of their fields' resolvers, by response path.
    pub prefetched: Mutex<HashMap<String, Pending>>,
    /// Those calls' tasks: aborted when the request is over.
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// When the operation started, and the backend calls made, when the client asked for them.
    calls: Option<(Instant, Mutex<Vec<Value>>)>,
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl RequestScope {
    pub fn new(
        identity: Option<Arc<Identity>>,
        deadline: Instant,
        headers: HeaderMap,
        identity_headers: HeaderMap,
    ) -> Self {
        Self {
            identity,
            deadline,
            headers,
            identity_headers,
            degraded: Mutex::new(Vec::new()),
            prefetched: Mutex::new(HashMap::default()),
            tasks: Mutex::new(Vec::new()),
            calls: None,
        }
    }

    /// Records every backend call for `extensions.calls`.
    pub fn with_call_timings(mut self) -> Self {
        self.calls = Some((Instant::now(), Mutex::new(Vec::new())));
        self
    }

    /// The `extensions.calls` list, when asked for.
    pub fn take_calls(&self) -> Option<Value> {
        let (_, calls) = self.calls.as_ref()?;
        Some(Value::Array(std::mem::take(
            &mut *calls.lock().unwrap_or_else(|e| e.into_inner()),
        )))
    }

    fn record_call(&self, path: &str, call: &HttpCall, outcome: &Outcome, started: Instant, ended: Instant) {
        let Some((t0, calls)) = &self.calls else { return };
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let (result, cache) = match outcome {
            Ok(got) if got.stale_because.is_some() => ("stale", "stale"),
            Ok(got) => (
                "ok",
                if got.cached {
                    "hit"
                } else if call.cache.is_some() {
                    "miss"
                } else {
                    "none"
                },
            ),
            Err(e) => (e.code(), "none"),
        };
        calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(serde_json::json!({
                "path": path,
                "service": call.service,
                "method": call.method.as_str(),
                "batched": call.batch.is_some(),
                "start_ms": ms(started.saturating_duration_since(*t0)),
                "duration_ms": ms(ended.saturating_duration_since(started)),
                "result": result,
                "cache": cache,
            }));
    }

    /// The `extensions.degraded` list, if anything degraded.
    pub fn take_degraded(&self) -> Option<Value> {
        let list = std::mem::take(&mut *self.degraded.lock().unwrap_or_else(|e| e.into_inner()));
        (!list.is_empty()).then_some(Value::Array(list))
    }

    fn degrade(&self, ctx: &ResolverContext<'_>, reason: &str, fallback: &'static str) {
        metrics::degraded_field(reason, fallback);
        if fallback == "stale" {
            metrics::cache("stale");
        }
        let path = ctx
            .path_node
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok())
            .unwrap_or(Value::Null);
        let mut entry = Map::new();
        entry.insert("path".into(), path);
        entry.insert("reason".into(), reason.into());
        entry.insert("fallback".into(), fallback.into());
        self.degraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Value::Object(entry));
    }
}

/// The resolver of one field.
pub fn resolver<'a>(
    engine: &Arc<Engine>,
    plan: &Arc<FieldPlan>,
    ctx: ResolverContext<'a>,
) -> FieldFuture<'a> {
    match (&plan.source, &plan.scopes) {
        // The common case, answered without a future: a public field read from its parent.
        (Source::Parent(path), None) => {
            FieldFuture::Value(or_null(&ctx, from_parent(&ctx, path, &plan.shape)))
        }
        _ => {
            let (engine, plan) = (engine.clone(), plan.clone());
            FieldFuture::new(async move {
                let result = resolve(&engine, &plan, &ctx).await;
                Ok::<_, Error>(or_null(&ctx, result))
            })
        }
    }
}

/// A failed field is null, with its error (path included) in the response. async-graphql's
/// dynamic executor would drop the field and the error's path instead; `nulls` then makes a
/// non-null field's null propagate.
fn or_null<'a>(
    ctx: &ResolverContext<'a>,
    result: Result<Option<FieldValue<'a>>, Error>,
) -> Option<FieldValue<'a>> {
    result.unwrap_or_else(|e| {
        ctx.add_error(ctx.set_error_path(e.into_server_error(ctx.item.pos)));
        None
    })
}

async fn resolve<'a>(
    engine: &Engine,
    plan: &FieldPlan,
    ctx: &ResolverContext<'a>,
) -> Result<Option<FieldValue<'a>>, Error> {
    let request = ctx.data::<Arc<RequestScope>>()?;
    authorize(plan.scopes.as_deref(), request.identity.as_deref())?;
    let call = match &plan.source {
        Source::Parent(path) => return from_parent(ctx, path, &plan.shape),
        Source::Http(call) => call,
    };
    let path = ctx.path_node.as_ref().map(path_key).unwrap_or_default();
    let pending = request
        .prefetched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&path);
    let (outcome, batch_value, started, ended) = match pending {
        Some(pending) => {
            let (outcome, ended) = pending.outcome.await;
            (outcome, pending.batch_value, pending.started, ended)
        }
        None => {
            let args = Value::Object(
                ctx.args
                    .as_index_map()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone().into_json().unwrap_or(Value::Null)))
                    .collect(),
            );
            let parent = ctx.parent_value.downcast_ref::<Value>().unwrap_or(&Value::Null);
            // A placeholder without a value (a null parent id): there is nothing to ask for.
            let Some(prepared) = prepare(engine, plan, call, request, &args, parent)? else {
                return Ok(None);
            };
            let batch_value = prepared.batch.as_ref().map(|b| b.value.clone());
            let started = prepared.started;
            let outcome = prepared.call(engine.cache.clone()).await;
            (outcome, batch_value, started, Instant::now())
        }
    };
    request.record_call(&path, call, &outcome, started, ended);
    let value = finish(ctx, request, plan, call, outcome, batch_value.as_deref())?;
    if let Some(plans) = engine.plans.get()
        && plans.types.contains_key(&plan.type_name)
    {
        prefetch::start(
            engine,
            plans,
            request,
            &value,
            &plan.type_name,
            ctx.field(),
            &path,
        );
    }
    to_field_value(value, &plan.shape)
}

/// Renders `call` for a field with these arguments and parent; `None` when a placeholder it
/// needs has no value. Checks `@auth` first.
pub fn prepare(
    engine: &Engine,
    plan: &FieldPlan,
    call: &HttpCall,
    request: &RequestScope,
    args: &Value,
    parent: &Value,
) -> Result<Option<Prepared>, Error> {
    authorize(plan.scopes.as_deref(), request.identity.as_deref())?;
    let scope = Scope {
        args,
        parent,
        identity: request.identity.as_deref(),
    };
    let headers = if call.forward_identity {
        &request.identity_headers
    } else {
        &request.headers
    };
    let deadline = match call.timeout {
        Some(t) => request.deadline.min(Instant::now() + t),
        None => request.deadline,
    };
    let Some(upstream) = engine.upstreams.get(&call.service) else {
        return Err(error("INTERNAL", "the field's service is not configured", None));
    };
    let Some(rendered) = Rendered::new(call, upstream, &scope, headers) else {
        return Ok(None);
    };
    let batch = match &call.batch {
        None => None,
        Some(batch) => {
            let Some(value) = batch.parent.lookup(&scope).and_then(text_of) else {
                return Ok(None);
            };
            Some(BatchMember {
                value,
                group: format!("{}\n{}", plan.id, rendered.cache_key()).into(),
                param: batch.param.clone(),
                separator: batch.separator.clone(),
            })
        }
    };
    Ok(Some(Prepared {
        rendered,
        ttl: call.cache,
        keep_stale: call.fallback == Fallback::Stale,
        deadline,
        batch,
        started: Instant::now(),
        field: plan.id.clone(),
    }))
}

impl Prepared {
    /// Sends the call, through the cache. A batch member sends its own value in the batched
    /// parameter unless the batch's values were added already (`prefetch` adds every sibling's;
    /// it reaches every batched field, so this is one parent's batch only when it did not).
    pub fn call(mut self, cache: Arc<CallCache>) -> impl Future<Output = Outcome> + Send + 'static {
        if let Some(member) = self.batch.take() {
            self.rendered
                .add_batch(&member.param, member.separator.as_deref(), &[member.value]);
        }
        // The call's span (a no-op unless traces are exported), a child of the current one.
        let span = span!(
            "resolve",
            otel.name = %format_args!("resolve {}", self.field),
            graphql.field = %self.field,
            gateway.service = self.rendered.upstream.name(),
            gateway.cache = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        let record = span.clone();
        async move {
            let outcome = cached_call(&cache, self.rendered, self.ttl, self.keep_stale, self.deadline).await;
            if !record.is_disabled() {
                match &outcome {
                    Ok(got) if got.stale_because.is_some() => record.record("gateway.cache", "stale"),
                    Ok(got) if got.cached => record.record("gateway.cache", "hit"),
                    Ok(_) => record.record("gateway.cache", if self.ttl.is_some() { "miss" } else { "none" }),
                    Err(e) => {
                        record.record("otel.status_code", "error");
                        record.record("error.type", e.code())
                    }
                };
            }
            outcome
        }
        .instrument(span)
    }
}

/// A call's outcome as the field's JSON: its part of the answer (for a batch member, its items),
/// or the fallback, or the error.
fn finish(
    ctx: &ResolverContext<'_>,
    request: &RequestScope,
    plan: &FieldPlan,
    call: &HttpCall,
    outcome: Outcome,
    batch_value: Option<&str>,
) -> Result<Value, Error> {
    let picked = outcome.and_then(|got| {
        let selected = select(&got.value, &call.select).unwrap_or(&Value::Null);
        let value = match (&call.batch, batch_value) {
            (Some(batch), Some(mine)) => {
                let Value::Array(items) = selected else {
                    return Err(CallError::Invalid("a batched call must answer a JSON array"));
                };
                let mut matching = items
                    .iter()
                    .filter(|item| select(item, &batch.key).and_then(text_of).as_deref() == Some(mine));
                match plan.shape {
                    Shape::List(_) => Value::Array(matching.cloned().collect()),
                    _ => matching.next().cloned().unwrap_or(Value::Null),
                }
            }
            _ => selected.clone(),
        };
        Ok((value, got.stale_because))
    });
    match picked {
        Ok((value, stale_because)) => {
            if let Some(reason) = stale_because {
                request.degrade(ctx, reason, "stale");
            }
            Ok(value)
        }
        Err(e) if e.falls_back() => match &call.fallback {
            Fallback::Value(v) => {
                request.degrade(ctx, e.code(), "literal");
                Ok(v.clone())
            }
            Fallback::Stale | Fallback::None => {
                request.degrade(ctx, e.code(), "none");
                Err(error(e.code(), e.message(), e.status()))
            }
        },
        Err(e) => Err(error(e.code(), e.message(), e.status())),
    }
}

/// A response path as a map key: `user.orders.0.items`.
pub fn path_key(node: &async_graphql::QueryPathNode<'_>) -> String {
    let mut segments = Vec::new();
    let mut current = Some(node);
    while let Some(n) = current {
        segments.push(match n.segment {
            async_graphql::QueryPathSegment::Name(name) => name.to_owned(),
            async_graphql::QueryPathSegment::Index(i) => i.to_string(),
        });
        current = n.parent;
    }
    segments.reverse();
    segments.join(".")
}

/// One call: a fresh cached answer, or the backend's (shared with identical calls in flight),
/// or on failure the stale answer when the field's fallback asks for it.
async fn cached_call(
    cache: &Arc<CallCache>,
    rendered: Rendered,
    ttl: Option<Duration>,
    keep_stale: bool,
    deadline: Instant,
) -> Outcome {
    if ttl.is_none() && !keep_stale {
        return rendered.send(deadline).await.map(Got::fresh);
    }
    let key = rendered.cache_key();
    if ttl.is_some()
        && let Some(value) = cache.fresh(&key)
    {
        metrics::cache("hit");
        return Ok(Got::cached(value));
    }
    if ttl.is_some() {
        metrics::cache("miss");
    }
    // Without `cache`, a response is still kept (never fresh) for the stale fallback.
    let store_for = Some(ttl.unwrap_or(Duration::ZERO));
    // The shared call runs in its creator's span, whichever waiter happens to drive it: its
    // attempts (and the `traceparent` the backend sees) belong to the request that made it.
    let call = rendered.send(deadline).instrument(tracing::Span::current());
    let shared = cache.single_flight(key.clone(), store_for, call);
    // A waiter whose own deadline is shorter than the call's stops waiting at its deadline.
    let result = tokio::time::timeout_at(deadline, shared)
        .await
        .unwrap_or_else(|_| Err(crate::error::GatewayError::UpstreamTimeout.into()));
    match result {
        Ok(value) => Ok(Got::fresh(value)),
        Err(e) if keep_stale && e.falls_back() => match cache.stale(&key) {
            Some(value) => Ok(Got {
                value,
                stale_because: Some(e.code()),
                cached: true,
            }),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// A field read from its parent's JSON: borrowed, not copied (the parent outlives its fields).
fn from_parent<'a>(
    ctx: &ResolverContext<'a>,
    path: &[String],
    shape: &Shape,
) -> Result<Option<FieldValue<'a>>, Error> {
    match ctx
        .parent_value
        .downcast_ref::<Value>()
        .and_then(|p| select(p, path))
    {
        None => Ok(None),
        Some(v) => borrowed_field_value(v, shape),
    }
}

fn borrowed_field_value<'a>(value: &'a Value, shape: &Shape) -> Result<Option<FieldValue<'a>>, Error> {
    match (shape, value) {
        (_, Value::Null) => Ok(None),
        (Shape::Leaf, value) => Ok(Some(FieldValue::value(leaf(value)))),
        (Shape::Object, Value::Object(_)) => Ok(Some(FieldValue::borrowed_any(value))),
        (Shape::Object, _) => Err(invalid("expected a JSON object")),
        (Shape::List(inner), Value::Array(items)) => {
            let items = items
                .iter()
                .map(|item| borrowed_field_value(item, inner).map(|v| v.unwrap_or(FieldValue::NULL)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(FieldValue::list(items)))
        }
        (Shape::List(_), _) => Err(invalid("expected a JSON array")),
    }
}

/// A JSON value as a GraphQL leaf value (without a serde round trip).
fn leaf(value: &Value) -> async_graphql::Value {
    use async_graphql::Value as G;
    match value {
        Value::Null => G::Null,
        Value::Bool(b) => G::Boolean(*b),
        Value::Number(n) => G::Number(n.clone()),
        Value::String(s) => G::String(s.clone()),
        Value::Array(items) => G::List(items.iter().map(leaf).collect()),
        Value::Object(map) => G::Object(
            map.iter()
                .map(|(k, v)| (async_graphql::Name::new(k), leaf(v)))
                .collect(),
        ),
    }
}

/// `@auth`: no caller, or one without the scopes, gets FORBIDDEN for this field only.
pub fn authorize(scopes: Option<&[String]>, identity: Option<&Identity>) -> Result<(), Error> {
    let Some(required) = scopes else { return Ok(()) };
    match identity {
        None => Err(error(
            "FORBIDDEN",
            "this field needs an authenticated caller",
            None,
        )),
        Some(id) => {
            let missing = id.missing_scopes(required);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(error(
                    "FORBIDDEN",
                    format!("this field needs the scopes: {}", missing.join(" ")),
                    None,
                ))
            }
        }
    }
}

/// A backend document as a field's value, checked against the field's shape.
fn to_field_value<'a>(value: Value, shape: &Shape) -> Result<Option<FieldValue<'a>>, Error> {
    if value.is_null() {
        return Ok(None);
    }
    match (shape, value) {
        (Shape::Leaf, value) => Ok(Some(FieldValue::value(leaf(&value)))),
        (Shape::Object, value @ Value::Object(_)) => Ok(Some(FieldValue::owned_any(value))),
        (Shape::Object, _) => Err(invalid("expected a JSON object")),
        (Shape::List(inner), Value::Array(items)) => {
            let items = items
                .into_iter()
                .map(|item| to_field_value(item, inner).map(|v| v.unwrap_or(FieldValue::NULL)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(FieldValue::list(items)))
        }
        (Shape::List(_), _) => Err(invalid("expected a JSON array")),
    }
}

fn invalid(why: &str) -> Error {
    error(
        "UPSTREAM_INVALID_RESPONSE",
        format!("the upstream service's answer does not fit the schema: {why}"),
        None,
    )
}

/// A GraphQL error with `extensions.code` (and the backend's `status` when there is one).
fn error(code: &'static str, message: impl Into<String>, status: Option<u16>) -> Error {
    Error::new(message).extend_with(|_, ext| {
        ext.set("code", code);
        if let Some(status) = status {
            ext.set("status", status);
        }
    })
}
