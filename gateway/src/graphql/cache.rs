//! Backend responses reused across requests (`@http(cache: "30s")`), and single-flight: concurrent
//! identical calls share one backend call whether or not they are cached.
//!
//! An entry lives for its `cache` duration plus `stale_grace`: fresh entries answer at once,
//! expired ones only stand in for a failed call whose fallback is `"stale"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use moka::Expiry;
use serde_json::Value;

use super::fetch::CallError;

/// A response as it was received, and when.
#[derive(Debug)]
pub struct Entry {
    pub value: Arc<Value>,
    stored: Instant,
    ttl: Duration,
    keep: Duration,
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.ttl
    }
}

/// Each entry expires after its own `cache` duration plus the grace.
struct PerEntry;

impl Expiry<Arc<str>, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Arc<str>, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.keep)
    }
}

pub type CallResult = Result<Arc<Value>, CallError>;
type InFlight = Shared<BoxFuture<'static, CallResult>>;

/// The response cache and the calls in flight, shared by every request of a schema.
pub struct CallCache {
    entries: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    in_flight: Mutex<HashMap<Arc<str>, InFlight>>,
    grace: Duration,
}

impl std::fmt::Debug for CallCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCache")
            .field("entries", &self.entries.entry_count())
            .field("grace", &self.grace)
            .finish()
    }
}

impl CallCache {
    pub fn new(max_entries: u64, grace: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntry)
                .build(),
            in_flight: Mutex::new(HashMap::new()),
            grace,
        }
    }

    /// A fresh cached response.
    pub fn fresh(&self, key: &str) -> Option<Arc<Value>> {
        self.entries
            .get(key)
            .filter(|e| e.fresh(Instant::now()))
            .map(|e| e.value.clone())
    }

    /// The last response, however old (within the grace): the `"stale"` fallback.
    pub fn stale(&self, key: &str) -> Option<Arc<Value>> {
        self.entries.get(key).map(|e| e.value.clone())
    }

    /// Runs `call` unless an identical one is in flight, in which case its result is shared. A
    /// successful result is stored for `ttl` (zero: kept only as a stale fallback) when given.
    pub async fn single_flight(
        self: &Arc<Self>,
        key: Arc<str>,
        ttl: Option<Duration>,
        call: impl Future<Output = CallResult> + Send + 'static,
    ) -> CallResult {
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = in_flight.get(&key) {
                running.clone()
            } else {
                let cache = Arc::downgrade(self);
                let own_key = key.clone();
                // The call finishes whoever drives it (any waiter), then stores its result and
                // leaves the in-flight table, even if the request that started it is gone.
                let running = async move {
                    let result = call.await;
                    if let Some(cache) = cache.upgrade() {
                        if let (Ok(value), Some(ttl)) = (&result, ttl) {
                            cache.entries.insert(
                                own_key.clone(),
                                Arc::new(Entry {
                                    value: value.clone(),
                                    stored: Instant::now(),
                                    ttl,
                                    keep: ttl + cache.grace,
                                }),
                            );
                        }
                        cache
                            .in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&own_key);
                    }
                    result
                }
                .boxed()
                .shared();
                in_flight.insert(key, running.clone());
                running
            }
        };
        shared.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_identical_calls_share_one() {
        let cache = Arc::new(CallCache::new(100, Duration::from_secs(60)));
        let calls = Arc::new(AtomicUsize::new(0));
        let key: Arc<str> = "k".into();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls, key) = (cache.clone(), calls.clone(), key.clone());
                tokio::spawn(async move {
                    cache
                        .single_flight(key, Some(Duration::from_secs(30)), async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(Arc::new(Value::from(1)))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), Value::from(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.fresh("k").as_deref(), Some(&Value::from(1)));
    }

    #[tokio::test]
    async fn a_zero_ttl_entry_is_only_stale() {
        let cache = Arc::new(CallCache::new(100, Duration::from_secs(60)));
        cache
            .single_flight("k".into(), Some(Duration::ZERO), async {
                Ok(Arc::new(Value::from(2)))
            })
            .await
            .unwrap();
        assert!(cache.fresh("k").is_none());
        assert_eq!(cache.stale("k").as_deref(), Some(&Value::from(2)));
    }
}
