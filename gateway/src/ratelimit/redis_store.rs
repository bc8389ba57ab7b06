//! Counters shared by every gateway instance: one GCRA decision per request, made atomically in
//! Redis by a Lua script that reads the time from Redis itself (so instances with skewed clocks
//! still agree), through the `redis` crate's `ConnectionManager` (which reconnects by itself).
//!
//! A dead or slow Redis must not stall requests: each call is cut off after `timeout`, and after a
//! failure Redis is not asked again for [`BACKOFF`], except by one probe request at a time; in the
//! meantime the caller applies `on_error`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Verdict;
use crate::config::{RateQuota, RedisUrl};

/// How long Redis is left alone after it failed, before one request probes it again.
const BACKOFF: Duration = Duration::from_millis(500);

/// GCRA in Redis. KEYS[1]: the client's theoretical arrival time (µs); ARGV[1]: the interval
/// one request costs (µs); ARGV[2]: the burst. Returns {allowed, remaining, retry_after_us,
/// reset_us}. The TAT is stored with `%d`: Lua's default number formatting would round it.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local capacity = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - capacity
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now + capacity - new_tat) / interval), 0, new_tat - now}
";

/// Redis could not decide in time (down, unreachable, slow, or backing off after that).
#[derive(Debug)]
pub struct Unavailable;

pub struct RedisStore {
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not asked; 0 while it is healthy.
    down_until: AtomicU64,
    probing: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Checks the URL; nothing connects until [`RedisStore::start`].
    pub fn new(url: &RedisUrl, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url.0.as_str())?,
            manager: OnceLock::new(),
            script: redis::Script::new(GCRA),
            timeout,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        })
    }

    /// Creates the connection manager (it needs the runtime). It connects on first use and
    /// reconnects by itself, so a gateway starts even while Redis is down.
    pub fn start(&self) {
        if self.manager.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(manager) => {
                let _ = self.manager.set(manager);
            }
            Err(e) => tracing::error!(error = %e, "cannot create the Redis connection manager"),
        }
    }

    /// One request of `key` against `quota`, decided by Redis.
    pub async fn check(&self, key: &str, quota: &RateQuota) -> Result<Verdict, Unavailable> {
        let Some(manager) = self.manager.get() else {
            return Err(Unavailable);
        };
        let now = self.epoch.elapsed().as_millis() as u64;
        let down_until = self.down_until.load(Ordering::Acquire);
        let _probe = if down_until == 0 {
            None
        } else if now < down_until || self.probing.swap(true, Ordering::AcqRel) {
            return Err(Unavailable);
        } else {
            Some(ProbeGuard(&self.probing))
        };

        let interval = u64::try_from(quota.interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = manager.clone();
        let mut invocation = self.script.key(key);
        invocation.arg(interval).arg(quota.burst.get());
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((allowed, remaining, retry_after, reset))) => {
                if down_until != 0 {
                    self.down_until.store(0, Ordering::Release);
                    tracing::info!("Redis answers again; rate limits are shared again");
                }
                let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
                Ok(if allowed == 1 {
                    Verdict::Allowed {
                        remaining: u32::try_from(remaining).unwrap_or(0),
                        reset: micros(reset),
                    }
                } else {
                    Verdict::Denied {
                        retry_after: micros(retry_after),
                        reset: micros(reset),
                    }
                })
            }
            failure => {
                if down_until == 0 {
                    match failure {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "Redis rate-limit call failed; applying `on_error`")
                        }
                        _ => {
                            tracing::warn!(timeout = ?self.timeout, "Redis did not answer in time; applying `on_error`")
                        }
                    }
                }
                let until = self.epoch.elapsed() + BACKOFF;
                self.down_until
                    .store((until.as_millis() as u64).max(1), Ordering::Release);
                Err(Unavailable)
            }
        }
    }
}

/// Lets the next request probe again, however the probe ended.
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
