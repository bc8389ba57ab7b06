//! A rolling window of counts, in ten buckets: what the circuit breaker measures its failure rate
//! over and the retry budget its recent requests over. Old buckets are reset as time reaches them
//! again, so nothing runs in the background.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct Window {
    start: Instant,
    bucket_len: Duration,
    /// Per bucket: which tick it holds, and its two counts.
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Window {
    pub fn new(length: Duration) -> Self {
        Self {
            start: Instant::now(),
            bucket_len: (length / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(0, 0, 0); BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years; a u128 division would cost more on every call.
        now.saturating_duration_since(self.start).as_nanos() as u64 / self.bucket_len.as_nanos() as u64
    }

    /// Adds to the current bucket's counts.
    pub fn add(&mut self, now: Instant, a: u64, b: u64) {
        let tick = self.tick(now);
        let bucket = &mut self.buckets[(tick % BUCKETS as u64) as usize];
        if bucket.0 != tick {
            *bucket = (tick, 0, 0);
        }
        bucket.1 += a;
        bucket.2 += b;
    }

    /// Both counts over the window ending now.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let tick = self.tick(now);
        self.buckets
            .iter()
            .filter(|(t, _, _)| tick.saturating_sub(*t) < BUCKETS as u64 && *t <= tick)
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    pub fn length(&self) -> Duration {
        self.bucket_len * BUCKETS as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_fall_out_of_the_window() {
        let mut w = Window::new(Duration::from_secs(10));
        w.add(Instant::now(), 3, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.add(Instant::now(), 2, 2);
        assert_eq!(w.totals(Instant::now()), (5, 3));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(w.totals(Instant::now()), (2, 2));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.totals(Instant::now()), (0, 0));
    }
}
