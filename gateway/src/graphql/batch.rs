//! Batching (`@http(batch: {key:})`), the DataLoader pattern: the calls one batched field would
//! make for each of its sibling parents become ONE backend call carrying every parent's value.
//!
//! A request's resolvers all run in one task, and async-graphql polls sibling fields and list
//! items in the same pass. Each batched resolver adds its value to the open batch of its field and
//! yields; by the time the first of them runs again, every sibling reachable in that pass has
//! joined. That one closes the batch and starts the call, which every member then awaits (a
//! shared future: it completes even if the resolver that started it is dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// How many times a member yields before the batch closes: one pass of the request's futures
/// suffices with `join_all`; the second covers `FuturesUnordered`, which may end a pass early.
const JOIN_PASSES: usize = 2;

struct Open<T: Clone> {
    values: Mutex<Vec<String>>,
    fetch: OnceLock<Shared<BoxFuture<'static, T>>>,
}

/// A request's open batches, by field and rendered call (everything but the batched values).
pub struct Batcher<T: Clone> {
    open: Mutex<HashMap<Arc<str>, Arc<Open<T>>>>,
}

impl<T: Clone> Default for Batcher<T> {
    fn default() -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Batcher<T> {
    /// Adds `value` to the open batch `group` and waits for the batch's call, which `start`
    /// makes from the batch's values (deduplicated and sorted, so the same set of parents makes
    /// the same URL, and the cache can answer it).
    pub async fn load<F>(&self, group: Arc<str>, value: String, start: F) -> T
    where
        F: FnOnce(Vec<String>) -> BoxFuture<'static, T>,
    {
        let open = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let batch = open.entry(group.clone()).or_insert_with(|| {
                Arc::new(Open {
                    values: Mutex::new(Vec::new()),
                    fetch: OnceLock::new(),
                })
            });
            batch.values.lock().unwrap_or_else(|e| e.into_inner()).push(value);
            batch.clone()
        };
        for _ in 0..JOIN_PASSES {
            tokio::task::yield_now().await;
        }
        let fetch = open
            .fetch
            .get_or_init(|| {
                // Close the batch: later values start a new one.
                let mut map = self.open.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&group).is_some_and(|b| Arc::ptr_eq(b, &open)) {
                    map.remove(&group);
                }
                drop(map);
                let mut values = std::mem::take(&mut *open.values.lock().unwrap_or_else(|e| e.into_inner()));
                values.sort_unstable();
                values.dedup();
                start(values).boxed().shared()
            })
            .clone();
        fetch.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn siblings_polled_together_share_one_call() {
        let batcher = Batcher::<Result<Arc<Value>, ()>>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let loads = (0..20).map(|i| {
            let (calls, seen) = (calls.clone(), seen.clone());
            batcher.load("g".into(), format!("p{}", i % 10), move |values| {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap().extend(values);
                    Ok(Arc::new(Value::from(1)))
                }
                .boxed()
            })
        });
        let results = futures_util::future::join_all(loads).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(seen.lock().unwrap().len(), 10, "values are deduplicated");
        // A later load starts a new batch.
        batcher
            .load("g".into(), "x".into(), |_| {
                async { Ok(Arc::new(Value::Null)) }.boxed()
            })
            .await
            .unwrap();
    }
}
