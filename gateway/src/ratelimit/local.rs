//! The in-process limiter of one quota: governor's keyed GCRA over a `DashMap`, keyed by a
//! 64-bit hash of the client, with a background task that forgets idle clients.

use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use nohash_hasher::BuildNoHashHasher;

use super::Verdict;
use super::clock::LimiterClock;
use crate::config::RateQuota;
use crate::snapshot::{StartOnce, spawn_background};

/// Keys are already uniformly distributed hashes (see `ClientKey::local`), so the map uses them
/// as they are instead of hashing them a second time.
type Keyed = RateLimiter<
    u64,
    DashMapStateStore<u64, BuildNoHashHasher<u64>>,
    LimiterClock,
    StateInformationMiddleware,
>;

/// How often idle clients are dropped from memory.
const RETAIN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LocalLimiter {
    limiter: Arc<Keyed>,
    quota: RateQuota,
    clock: LimiterClock,
    started: StartOnce,
}

impl LocalLimiter {
    pub fn new(quota: RateQuota, clock: LimiterClock) -> Self {
        let limiter = RateLimiter::dashmap_with_clock_and_hasher(
            governor_quota(&quota),
            clock.clone(),
            BuildNoHashHasher::default(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Self {
            limiter: Arc::new(limiter),
            quota,
            clock,
            started: StartOnce::default(),
        }
    }

    /// Counts one request of `key`.
    pub fn check(&self, key: u64) -> Verdict {
        let quota = &self.quota;
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Verdict::Allowed {
                    remaining,
                    // The bucket is full again after the used part has refilled (an upper bound
                    // by less than one interval: governor does not expose the exact time).
                    reset: quota.interval() * (quota.burst.get() - remaining.min(quota.burst.get())),
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                Verdict::Denied {
                    retry_after,
                    reset: retry_after + quota.interval() * (quota.burst.get() - 1),
                }
            }
        }
    }

    /// Clients currently remembered.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Starts forgetting idle clients (those whose quota is full again, indistinguishable from
    /// new ones) every few seconds, for as long as this limiter lives: without it, every client
    /// ever seen would stay in memory.
    pub fn start(&self) {
        if self.started.first() {
            spawn_background(retain_loop(Arc::downgrade(&self.limiter)));
        }
    }
}

async fn retain_loop(limiter: Weak<Keyed>) {
    let mut tick = tokio::time::interval(RETAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else { return };
        // Both walk every shard under its write lock; off the async workers so requests on this
        // thread are not held up by a million-key sweep.
        let _ = tokio::task::spawn_blocking(move || {
            let before = limiter.len();
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if before.saturating_sub(limiter.len()) >= RELEASE_AFTER_FORGETTING {
                release_freed_memory();
            }
        })
        .await;
    }
}

/// Forgetting this many clients at once is worth handing the freed pages back to the OS.
const RELEASE_AFTER_FORGETTING: usize = 10_000;

/// Allocators keep freed memory for reuse; after a large sweep that memory (tens of MiB for a
/// million clients) would otherwise stay in the RSS until the next burst of new clients. The
/// `gateway` binary allocates with mimalloc; tests and other embedders with glibc's malloc.
fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own pages (and does nothing much when the global
    // allocator is another one); it has no preconditions.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn governor_quota(quota: &RateQuota) -> Quota {
    // Validation guarantees a non-zero interval; the fallback is never used.
    Quota::with_period(quota.interval())
        .unwrap_or_else(|| Quota::per_second(quota.requests))
        .allow_burst(quota.burst)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(requests: u32, per: Duration, burst: u32) -> RateQuota {
        RateQuota {
            requests: NonZeroU32::new(requests).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn burst_then_one_per_interval() {
        let (clock, fake) = LimiterClock::fake();
        let q = quota(1, Duration::from_secs(60), 5);
        let limiter = LocalLimiter::new(q, clock);
        let allowed = (0..10)
            .filter(|_| matches!(limiter.check(7), Verdict::Allowed { .. }))
            .count();
        assert_eq!(allowed, 5);
        let Verdict::Denied { retry_after, reset } = limiter.check(7) else {
            panic!("over the burst")
        };
        assert_eq!(retry_after, Duration::from_secs(60));
        assert_eq!(reset, Duration::from_secs(300));
        // Another client is unaffected.
        assert!(matches!(limiter.check(8), Verdict::Allowed { remaining: 4, .. }));

        fake.advance(Duration::from_secs(59));
        assert!(matches!(limiter.check(7), Verdict::Denied { .. }));
        fake.advance(Duration::from_secs(1));
        assert!(matches!(limiter.check(7), Verdict::Allowed { remaining: 0, .. }));
        assert!(matches!(limiter.check(7), Verdict::Denied { .. }));
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let (clock, fake) = LimiterClock::fake();
        let q = quota(10, Duration::from_secs(1), 10);
        let limiter = LocalLimiter::new(q, clock);
        for key in 0..1000 {
            limiter.check(key);
        }
        assert_eq!(limiter.len(), 1000);
        fake.advance(Duration::from_secs(2));
        limiter.limiter.retain_recent();
        assert_eq!(limiter.len(), 0);
    }
}
