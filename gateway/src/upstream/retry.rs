//! When a failed attempt may be tried again, how long to wait first, and the budget that keeps
//! retries from multiplying the load on a backend that is already failing.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::window::Window;
use crate::config::RetryConfig;

/// How an attempt ended, as far as retrying and health are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection could be made: the request was never sent.
    Connect,
    /// The connection failed after the request may have been sent, before a response.
    Reset,
    /// No response headers within the attempt's time.
    Timeout,
    Status(StatusCode),
}

impl Outcome {
    /// The `outcome` label of `http_client_request_duration_seconds`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Connect => "connect_error",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Status(s) if s.is_server_error() => "5xx",
            Outcome::Status(s) if s.is_client_error() => "4xx",
            Outcome::Status(_) => "ok",
        }
    }

    /// Counts against the instance and the breaker.
    pub fn is_failure(self) -> bool {
        match self {
            Self::Status(s) => s.is_server_error(),
            _ => true,
        }
    }
}

/// Methods RFC 9110 calls idempotent: sending them twice means the same as once.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub config: RetryConfig,
    /// Requests (first count) and retries (second) over the last 10 s.
    budget: Mutex<Window>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryPolicy {
    pub fn new(config: RetryConfig) -> Self {
        Self {
            config,
            budget: Mutex::new(Window::new(BUDGET_WINDOW)),
        }
    }

    /// Whether `outcome` is one the config retries.
    pub fn retries(&self, outcome: Outcome) -> bool {
        let on = &self.config.on;
        match outcome {
            Outcome::Connect => on.connect,
            Outcome::Reset => on.reset,
            Outcome::Timeout => on.timeout,
            Outcome::Status(s) => on.statuses.contains(&s.as_u16()),
        }
    }

    /// Counts a request (arriving at `now`) towards the budget.
    pub fn deposit(&self, now: Instant) {
        if self.config.attempts > 1 {
            let mut w = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            w.add(now, 1, 0);
        }
    }

    /// Takes one retry from the budget, if there is one left: at most `budget` × the recent
    /// requests, plus `min_retries_per_second`.
    pub fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut w = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let (requests, retries) = w.totals(now);
        let floor = u64::from(self.config.min_retries_per_second) * w.length().as_secs();
        let allowed = floor as f64 + self.config.budget * requests as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        w.add(now, 0, 1);
        true
    }

    /// Exponential backoff with full jitter: a random wait up to base × 2^(retry − 1), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .config
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

/// An upstream's `Retry-After` in seconds (the HTTP-date form is not honoured).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let policy = RetryPolicy::new(RetryConfig {
            budget: 0.2,
            min_retries_per_second: 0,
            ..RetryConfig::default()
        });
        for _ in 0..50 {
            policy.deposit(Instant::now());
        }
        let granted = (0..50).filter(|_| policy.withdraw()).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn backoff_is_capped() {
        let policy = RetryPolicy::new(RetryConfig::default());
        for retry in 1..20 {
            assert!(policy.backoff(retry) <= Duration::from_secs(1));
        }
    }
}
