//! Starting the calls of an object's fields as soon as the object's JSON arrives.
//!
//! async-graphql's dynamic executor resolves the fields of a nested object one after another
//! (only the root's are concurrent), so `user { orders recommendations }` would wait for the
//! orders before asking for the recommendations. Instead, when a field's answer arrives, this
//! walks the operation's selection below it: every `@http` field found (through plain fields and
//! list items, not through other `@http` fields, whose own answers start their children) is
//! prepared from its arguments and parent and started at once in its own task; batched fields of
//! the same batch become one call. The field's resolver later takes its call by response path.

use foldhash::HashMap;
use std::sync::Arc;

use async_graphql::SelectionField;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde_json::Value;
use tokio::time::Instant;

use super::fetch::CallError;
use super::resolve::{Engine, Got, Outcome, Plans, Prepared, RequestScope, Source, authorize, prepare};
use super::template::select;

/// A call started ahead of its field's resolver.
pub struct Pending {
    /// The call's outcome and when it arrived.
    pub outcome: Shared<BoxFuture<'static, (Outcome, Instant)>>,
    pub started: Instant,
    /// A batch member's own value (its items are picked from the batch's answer).
    pub batch_value: Option<String>,
}

/// Starts the calls of the fields selected below `value` (of type `type_name`, at `path`).
pub fn start(
    engine: &Engine,
    plans: &Plans,
    request: &RequestScope,
    value: &Value,
    type_name: &str,
    selection: SelectionField<'_>,
    path: &str,
) {
    let mut walk = Walk {
        engine,
        plans,
        request,
        batches: HashMap::default(),
    };
    walk.value(value, type_name, selection, path);
    for (mut prepared, members) in walk.batches.into_values() {
        let mut values: Vec<String> = members.iter().map(|(_, v)| v.clone()).collect();
        values.sort_unstable();
        values.dedup();
        if let Some(batch) = prepared.batch.take() {
            prepared
                .rendered
                .add_batch(&batch.param, batch.separator.as_deref(), &values);
        }
        let prepared_at = prepared.started;
        let outcome = spawn(request, prepared.call(engine.cache.clone()));
        let mut pending = request.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        for (path, value) in members {
            pending.insert(
                path,
                Pending {
                    outcome: outcome.clone(),
                    started: prepared_at,
                    batch_value: Some(value),
                },
            );
        }
    }
}

struct Walk<'a> {
    engine: &'a Engine,
    plans: &'a Plans,
    request: &'a RequestScope,
    batches: HashMap<Arc<str>, (Prepared, Vec<Member>)>,
}

/// A batch member's response path and batched value. A batch is kept as its first member's
/// prepared call (without the batched parameter) and every member.
type Member = (String, String);

impl Walk<'_> {
    fn value(&mut self, value: &Value, type_name: &str, selection: SelectionField<'_>, path: &str) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(item, type_name, selection, &format!("{path}.{i}"));
                }
            }
            Value::Object(_) => {
                for child in selection.selection_set() {
                    if included(&child) {
                        self.field(value, type_name, child, path);
                    }
                }
            }
            _ => {}
        }
    }

    fn field(&mut self, parent: &Value, type_name: &str, child: SelectionField<'_>, path: &str) {
        let Some(plan) = self.plans.field(type_name, child.name()) else {
            return;
        };
        let key = child.alias().unwrap_or(child.name());
        match &plan.source {
            Source::Parent(from) => {
                // Only objects can hold fields with calls; scalars are the common case.
                if !self.plans.types.contains_key(&plan.type_name) {
                    return;
                }
                let allowed = authorize(plan.scopes.as_deref(), self.request.identity.as_deref()).is_ok();
                if allowed && let Some(value) = select(parent, from) {
                    self.value(value, &plan.type_name, child, &format!("{path}.{key}"));
                }
            }
            Source::Http(call) => {
                // Anything that keeps the call from being prepared here (an argument error, a
                // missing scope) is left to the field's resolver, which reports it.
                let Some(args) = arguments(&child, &plan.arg_defaults) else {
                    return;
                };
                let Ok(Some(prepared)) = prepare(self.engine, plan, call, self.request, &args, parent) else {
                    return;
                };
                let path = format!("{path}.{key}");
                match prepared
                    .batch
                    .as_ref()
                    .map(|b| (b.group.clone(), b.value.clone()))
                {
                    None => {
                        let started = prepared.started;
                        // A fresh cached answer needs no task.
                        let fresh = prepared
                            .ttl
                            .and_then(|_| self.engine.cache.fresh(&prepared.rendered.cache_key()));
                        let outcome = match fresh {
                            Some(value) => {
                                crate::telemetry::metrics::cache("hit");
                                futures_util::future::ready((Ok(Got::cached(value)), Instant::now()))
                                    .boxed()
                                    .shared()
                            }
                            None => spawn(self.request, prepared.call(self.engine.cache.clone())),
                        };
                        self.request
                            .prefetched
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(
                                path,
                                Pending {
                                    outcome,
                                    started,
                                    batch_value: None,
                                },
                            );
                    }
                    Some((group, value)) => {
                        let entry = self
                            .batches
                            .entry(group)
                            .or_insert_with(|| (prepared, Vec::new()));
                        entry.1.push((path, value));
                    }
                }
            }
        }
    }
}

/// Runs a call in its own task (so it progresses while the executor is busy elsewhere), aborted
/// with the request.
fn spawn(
    request: &RequestScope,
    call: impl Future<Output = Outcome> + Send + 'static,
) -> Shared<BoxFuture<'static, (Outcome, Instant)>> {
    let task = tokio::spawn(async move {
        let outcome = call.await;
        (outcome, Instant::now())
    });
    request
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(task.abort_handle());
    task.map(|joined| {
        joined.unwrap_or_else(|_| {
            let cancelled = CallError::Gateway {
                code: "INTERNAL",
                message: "the call was cancelled".into(),
            };
            (Err(cancelled), Instant::now())
        })
    })
    .boxed()
    .shared()
}

/// A selected field's arguments as JSON, defaults filled in; `None` when they cannot be read.
fn arguments(field: &SelectionField<'_>, defaults: &[(String, Value)]) -> Option<Value> {
    let mut args: serde_json::Map<String, Value> = field
        .arguments()
        .ok()?
        .into_iter()
        .map(|(name, value)| Some((name.to_string(), value.into_json().ok()?)))
        .collect::<Option<_>>()?;
    for (name, value) in defaults {
        args.entry(name.clone()).or_insert_with(|| value.clone());
    }
    Some(Value::Object(args))
}

/// `@skip(if: true)` and `@include(if: false)` leave a field out.
fn included(field: &SelectionField<'_>) -> bool {
    let Ok(directives) = field.directives() else {
        return true;
    };
    directives.iter().all(|d| {
        let cond = d
            .get_argument("if")
            .map(|v| matches!(v.node, async_graphql::Value::Boolean(true)));
        super::nulls::keeps(d.name.node.as_str(), cond)
    })
}
