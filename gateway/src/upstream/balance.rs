//! A service's instances and which one gets the next attempt.
//!
//! An instance is available unless passive outlier detection ejected it (consecutive connect
//! errors or 5xx answers; the ejection grows with each repeat) or the active health check marked it
//! unhealthy. Passive ejection never takes out more than half of the instances, so a
//! single-instance service is never ejected and its circuit breaker protects it instead. The
//! active check can take out all of them: then the service fails fast.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use tokio::time::Instant;

use super::pool::Address;
use crate::config::LoadBalancing;

/// Consecutive failures that eject an instance.
const EJECT_AFTER: u32 = 5;
/// The first ejection; each repeat adds as much again, up to [`MAX_EJECTION`]. Every such period
/// without an ejection takes one repeat off again.
const BASE_EJECTION: Duration = Duration::from_secs(10);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// One instance's URL, pre-split so a request only appends its path, its state, and its idle
/// connections.
#[derive(Debug)]
pub struct Instance {
    pub address: Address,
    /// The instance URL's path without its trailing slash ("" for none).
    pub base_path: String,
    pub url: String,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the instance is ejected; 0 for none.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// Set by the active health check.
    healthy: AtomicBool,
}

impl Instance {
    pub fn new(scheme: Scheme, authority: Authority, base_path: String, url: String) -> Self {
        Self {
            address: Address::new(scheme, authority),
            base_path,
            url,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

/// What the admin API shows of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub url: String,
    /// Available for requests: not ejected and not failing its health check.
    pub available: bool,
    pub health_check_ok: bool,
    pub ejected: bool,
    pub in_flight: usize,
    pub ejections: u32,
}

#[derive(Debug)]
pub struct Balancer {
    service: String,
    strategy: LoadBalancing,
    instances: Vec<Instance>,
    next: AtomicUsize,
    epoch: Instant,
    /// Serializes ejection decisions, so two at once cannot exceed the half.
    ejecting: Mutex<()>,
}

/// An attempt in flight on an instance (for least-requests); released on drop.
#[derive(Debug)]
pub struct InFlight {
    balancer: Arc<Balancer>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.instances[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn instance(&self) -> &Instance {
        &self.balancer.instances[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

impl Balancer {
    pub fn new(service: &str, strategy: LoadBalancing, instances: Vec<Instance>) -> Self {
        Self {
            service: service.to_owned(),
            strategy,
            instances,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            ejecting: Mutex::new(()),
        }
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether instance `i` may take a request; `now_ms` is asked only about an ejected one.
    fn available(&self, i: usize, now_ms: impl Fn() -> u64) -> bool {
        let instance = &self.instances[i];
        let ejected_until = instance.ejected_until.load(Ordering::Relaxed);
        instance.healthy.load(Ordering::Relaxed) && (ejected_until == 0 || ejected_until <= now_ms())
    }

    /// The instance for the next attempt, avoiding `avoid` (the one that just failed) when any
    /// other is available; `None` when no instance is available at all.
    pub fn pick(self: &Arc<Self>, avoid: Option<usize>) -> Option<InFlight> {
        let n = self.instances.len();
        if n == 0 {
            return None;
        }
        // The clock is read only when an instance is ejected, once.
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(|| self.now_ms());
        // The first available instance from `start` on, other than `avoid`.
        let probe = |start: usize| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| Some(i) != avoid && self.available(i, now))
        };
        let chosen = match self.strategy {
            LoadBalancing::RoundRobin => probe(self.next.fetch_add(1, Ordering::Relaxed)),
            LoadBalancing::Random => probe(fastrand::usize(..n)),
            LoadBalancing::LeastRequests => {
                // Two distinct random candidates (when there are two).
                let a = probe(fastrand::usize(..n));
                let b = a.and_then(|a| probe(a + 1 + fastrand::usize(..n.max(2) - 1)));
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let load = |i: usize| self.instances[i].in_flight.load(Ordering::Relaxed);
                        Some(if load(b) < load(a) { b } else { a })
                    }
                    (a, b) => a.or(b),
                }
            }
        };
        let index = chosen.or(avoid.filter(|&i| self.available(i, now)))?;
        self.instances[index].in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            balancer: self.clone(),
            index,
        })
    }

    /// Passive outlier detection: a success resets the instance's failure streak; a connect
    /// error or 5xx extends it, and a long enough streak ejects the instance.
    pub fn record(&self, index: usize, failed: bool) {
        let instance = &self.instances[index];
        if !failed {
            instance.consecutive_failures.store(0, Ordering::Relaxed);
            // Each base period served well after an ejection makes the next one shorter again.
            let until = instance.ejected_until.load(Ordering::Relaxed);
            if until != 0 {
                let now = self.now_ms();
                // One step per period however many requests succeed at once: only the request
                // that moves `ejected_until` on takes the step, and a new ejection set meanwhile
                // makes the exchange fail instead of being overwritten.
                if now >= until + BASE_EJECTION.as_millis() as u64
                    && instance
                        .ejected_until
                        .compare_exchange(until, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    let _ = instance
                        .ejections
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
            }
            return;
        }
        let streak = instance.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < EJECT_AFTER {
            return;
        }
        let _guard = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        if instance.ejected_until.load(Ordering::Relaxed) > now {
            return;
        }
        // Out for any reason (ejected, or failing its health check): the cap is on what is left.
        let out = (0..self.instances.len())
            .filter(|&i| !self.available(i, || now))
            .count();
        if out + 1 > self.instances.len() / 2 {
            return;
        }
        let times = instance.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = (BASE_EJECTION * times).min(MAX_EJECTION);
        instance
            .ejected_until
            .store(now + duration.as_millis() as u64, Ordering::Relaxed);
        instance.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(service = %self.service, instance = %instance.url, ?duration, streak, "instance ejected after consecutive failures");
    }

    /// The active health check's verdict; a healthy verdict also ends a passive ejection.
    pub fn set_healthy(&self, index: usize, healthy: bool) {
        let instance = &self.instances[index];
        let was = instance.healthy.swap(healthy, Ordering::Relaxed);
        if healthy {
            // Ends a passive ejection, but keeps the clock that takes repeats off running.
            let ended = if instance.ejections.load(Ordering::Relaxed) > 0 {
                self.now_ms().max(1)
            } else {
                0
            };
            instance.ejected_until.store(ended, Ordering::Relaxed);
            instance.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if was != healthy {
            if healthy {
                tracing::info!(service = %self.service, instance = %instance.url, "instance healthy again");
            } else {
                tracing::warn!(service = %self.service, instance = %instance.url, "instance failed its health checks");
            }
        }
    }

    pub fn status(&self) -> Vec<InstanceStatus> {
        let now = self.now_ms();
        self.instances
            .iter()
            .enumerate()
            .map(|(i, instance)| InstanceStatus {
                url: instance.url.clone(),
                available: self.available(i, || now),
                health_check_ok: instance.healthy.load(Ordering::Relaxed),
                ejected: instance.ejected_until.load(Ordering::Relaxed) > now,
                in_flight: instance.in_flight.load(Ordering::Relaxed),
                ejections: instance.ejections.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(n: usize, strategy: LoadBalancing) -> Arc<Balancer> {
        let instances = (0..n)
            .map(|i| {
                Instance::new(
                    Scheme::HTTP,
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    String::new(),
                    format!("http://127.0.0.1:{}", 1000 + i),
                )
            })
            .collect();
        Arc::new(Balancer::new("svc", strategy, instances))
    }

    #[tokio::test]
    async fn a_single_instance_is_never_ejected() {
        let b = balancer(1, LoadBalancing::LeastRequests);
        for _ in 0..20 {
            b.record(0, true);
        }
        assert!(b.pick(None).is_some());
    }

    #[tokio::test]
    async fn at_most_half_of_the_instances_are_ejected() {
        let b = balancer(2, LoadBalancing::RoundRobin);
        for _ in 0..EJECT_AFTER {
            b.record(0, true);
            b.record(1, true);
        }
        let status = b.status();
        assert_eq!(status.iter().filter(|s| s.ejected).count(), 1, "{status:?}");
        // Every pick now goes to the one left.
        let left = status.iter().position(|s| !s.ejected).unwrap();
        for _ in 0..10 {
            assert_eq!(b.pick(None).unwrap().index(), left);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_grow_and_shrink_again() {
        let b = balancer(2, LoadBalancing::RoundRobin);
        let eject = |b: &Balancer| (0..EJECT_AFTER).for_each(|_| b.record(0, true));
        eject(&b);
        tokio::time::advance(BASE_EJECTION).await;
        eject(&b);
        assert_eq!(b.status()[0].ejections, 2);
        // Ejected for 20 s this time; then two quiet base periods of successes.
        tokio::time::advance(BASE_EJECTION * 3).await;
        b.record(0, false);
        assert_eq!(b.status()[0].ejections, 1);
        tokio::time::advance(BASE_EJECTION).await;
        b.record(0, false);
        assert_eq!(b.status()[0].ejections, 0);
        assert!(b.status()[0].available);
    }

    #[tokio::test]
    async fn least_requests_prefers_the_idle_instance() {
        let b = balancer(2, LoadBalancing::LeastRequests);
        let busy: Vec<_> = (0..5).map(|_| b.pick(Some(1)).unwrap()).collect();
        assert!(busy.iter().all(|g| g.index() == 0));
        for _ in 0..20 {
            assert_eq!(b.pick(None).unwrap().index(), 1);
        }
    }

    #[tokio::test]
    async fn unhealthy_everywhere_means_no_instance() {
        let b = balancer(2, LoadBalancing::Random);
        b.set_healthy(0, false);
        b.set_healthy(1, false);
        assert!(b.pick(None).is_none());
        b.set_healthy(1, true);
        assert_eq!(b.pick(None).unwrap().index(), 1);
    }
}
