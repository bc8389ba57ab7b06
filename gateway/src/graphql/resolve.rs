//! Field resolvers. A field with `@http` makes a backend call (cached, batched, with its own
//! timeout and fallback); any other field reads its parent's JSON by name (or `@from` key). Both
//! check `@auth` first. Failures become GraphQL errors with `extensions.code`, and every field
//! answered by a fallback (or left null by a failure) is listed in `extensions.degraded`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::dynamic::{FieldFuture, FieldValue, ResolverContext};
use async_graphql::{Error, ErrorExtensions};
use futures_util::FutureExt;
use http::HeaderMap;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::batch::Batcher;
use super::cache::CallCache;
use super::directives::{Fallback, HttpCall};
use super::fetch::{CallError, Rendered};
use super::template::{Scope, select, text_of};
use crate::auth::Identity;
use crate::upstream::Upstream;

/// What every resolver of a schema shares: the services and the response cache.
#[derive(Debug)]
pub struct Engine {
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub cache: Arc<CallCache>,
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
}

/// A successful call: its document, and whether it is a stale stand-in (and why).
#[derive(Debug, Clone)]
pub struct Got {
    value: Arc<Value>,
    stale_because: Option<&'static str>,
}

type Outcome = Result<Got, CallError>;

/// Per-request facts the resolvers read (async-graphql request data).
pub struct RequestScope {
    pub identity: Option<Arc<Identity>>,
    /// The request's deadline: every call ends by then, whatever its own timeout.
    pub deadline: Instant,
    /// Sent on every call: request id, trace context, Idempotency-Key.
    pub headers: HeaderMap,
    /// `headers` plus the caller's identity headers (and Authorization when forwarded).
    pub identity_headers: HeaderMap,
    pub batcher: Batcher<Outcome>,
    pub degraded: Mutex<Vec<Value>>,
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
            batcher: Batcher::default(),
            degraded: Mutex::new(Vec::new()),
        }
    }

    /// The `extensions.degraded` list, if anything degraded.
    pub fn take_degraded(&self) -> Option<Value> {
        let list = std::mem::take(&mut *self.degraded.lock().unwrap_or_else(|e| e.into_inner()));
        (!list.is_empty()).then_some(Value::Array(list))
    }

    fn degrade(&self, ctx: &ResolverContext<'_>, reason: &str, fallback: &str) {
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
    let args = Value::Object(
        ctx.args
            .as_index_map()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into_json().unwrap_or(Value::Null)))
            .collect(),
    );
    let parent = ctx.parent_value.downcast_ref::<Value>().unwrap_or(&Value::Null);
    let scope = Scope {
        args: &args,
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
    // A path placeholder without a value (a null parent id): there is nothing to ask for.
    let Some(mut rendered) = Rendered::new(call, upstream, &scope, headers) else {
        return Ok(None);
    };
    let ttl = call.cache;
    let keep_stale = call.fallback == Fallback::Stale;
    let outcome = match &call.batch {
        None => cached_call(&engine.cache, rendered, ttl, keep_stale, deadline).await,
        Some(batch) => {
            let Some(value) = batch.parent.lookup(&scope).and_then(text_of) else {
                return Ok(None);
            };
            let group: Arc<str> = format!("{}\n{}", plan.id, rendered.cache_key()).into();
            let (param, separator) = (batch.param.clone(), batch.separator.clone());
            let engine_cache = engine.cache.clone();
            let outcome = request
                .batcher
                .load(group, value.clone(), move |values| {
                    rendered.add_batch(&param, separator.as_deref(), &values);
                    async move { cached_call(&engine_cache, rendered, ttl, keep_stale, deadline).await }
                        .boxed()
                })
                .await;
            outcome.and_then(|got| {
                let items = select_all(&got.value, &call.select);
                let Value::Array(items) = items else {
                    return Err(CallError::Invalid("a batched call must answer a JSON array"));
                };
                let mine = items.iter().filter(|item| {
                    select(item, &batch.key).and_then(text_of).as_deref() == Some(value.as_str())
                });
                let picked = match plan.shape {
                    Shape::List(_) => Value::Array(mine.cloned().collect()),
                    _ => mine.into_iter().next().cloned().unwrap_or(Value::Null),
                };
                Ok(Got {
                    value: Arc::new(picked),
                    stale_because: got.stale_because,
                })
            })
        }
    };
    let batched = call.batch.is_some();
    match outcome {
        Ok(got) => {
            if let Some(reason) = got.stale_because {
                request.degrade(ctx, reason, "stale");
            }
            let value = if batched {
                (*got.value).clone()
            } else {
                select_all(&got.value, &call.select)
            };
            to_field_value(value, &plan.shape)
        }
        Err(e) if e.falls_back() => match &call.fallback {
            Fallback::Value(v) => {
                request.degrade(ctx, e.code(), "literal");
                to_field_value(v.clone(), &plan.shape)
            }
            Fallback::Stale | Fallback::None => {
                request.degrade(ctx, e.code(), "none");
                Err(error(e.code(), e.message(), e.status()))
            }
        },
        Err(e) => Err(error(e.code(), e.message(), e.status())),
    }
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
        return rendered.send(deadline).await.map(|value| Got {
            value,
            stale_because: None,
        });
    }
    let key = rendered.cache_key();
    if ttl.is_some()
        && let Some(value) = cache.fresh(&key)
    {
        return Ok(Got {
            value,
            stale_because: None,
        });
    }
    // Without `cache`, a response is still kept (never fresh) for the stale fallback.
    let store_for = Some(ttl.unwrap_or(Duration::ZERO));
    let shared = cache.single_flight(key.clone(), store_for, rendered.send(deadline));
    // A waiter whose own deadline is shorter than the call's stops waiting at its deadline.
    let result = tokio::time::timeout_at(deadline, shared)
        .await
        .unwrap_or_else(|_| Err(crate::error::GatewayError::UpstreamTimeout.into()));
    match result {
        Ok(value) => Ok(Got {
            value,
            stale_because: None,
        }),
        Err(e) if keep_stale && e.falls_back() => match cache.stale(&key) {
            Some(value) => Ok(Got {
                value,
                stale_because: Some(e.code()),
            }),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn select_all(value: &Value, path: &[String]) -> Value {
    select(value, path).cloned().unwrap_or(Value::Null)
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
fn authorize(scopes: Option<&[String]>, identity: Option<&Identity>) -> Result<(), Error> {
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
