//! The circuit breaker of one service: closed → open → half-open → closed.
//!
//! Closed, it counts calls and failures over a rolling window; when at least `min_requests` calls
//! were made and `failure_rate` of them failed, it opens. Open, every call fails fast (503
//! CIRCUIT_OPEN) without touching the backend, for `open_for`. Then it lets `half_open_requests`
//! probe calls through: if they all succeed it closes, if one fails it opens again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;
use crate::config::BreakerConfig;

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    service: String,
    /// The state, and its period: bumped on every transition, so a call admitted in an earlier
    /// period cannot count in (or free a probe slot of) a later one.
    state: Mutex<(State, u64)>,
}

#[derive(Debug)]
enum State {
    Closed(Box<Window>),
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// What the admin API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A call the breaker let through; record its outcome with [`Ticket::record`]. Dropped without a
/// record (the caller went away), a half-open probe slot is simply given back.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    period: u64,
    recorded: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig, service: &str) -> Self {
        Self {
            state: Mutex::new((State::Closed(Box::new(Window::new(config.window))), 0)),
            config,
            service: service.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through at `now`, or says how long the breaker stays open.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Ticket, Duration> {
        let mut guard = self.lock();
        let (state, period) = &mut *guard;
        let probe = match state {
            State::Closed(_) => false,
            State::Open { until } if now < *until => return Err(*until - now),
            State::Open { .. } => {
                tracing::info!(service = %self.service, "circuit breaker half-open: probing");
                *state = State::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                };
                *period += 1;
                true
            }
            State::HalfOpen { in_flight, succeeded } => {
                if *in_flight + *succeeded >= self.config.half_open_requests {
                    // The probes are out; callers wait for their verdict, briefly.
                    return Err(Duration::from_secs(1));
                }
                *in_flight += 1;
                true
            }
        };
        Ok(Ticket {
            breaker: self.clone(),
            probe,
            period: *period,
            recorded: false,
        })
    }

    pub fn state(&self) -> BreakerState {
        match &self.lock().0 {
            State::Closed(_) => BreakerState::Closed,
            State::Open { until } if Instant::now() < *until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call that started at `started` counts as slow.
    pub fn is_slow(&self, started: Instant) -> bool {
        self.config.slow_call.is_some_and(|slow| started.elapsed() > slow)
    }

    fn transition(&self, state: &mut (State, u64), to: State) {
        state.0 = to;
        state.1 += 1;
    }

    fn open(&self, state: &mut (State, u64), now: Instant) {
        let until = now + self.config.open_for;
        self.transition(state, State::Open { until });
    }

    fn record(&self, probe: bool, period: u64, failed: bool, now: Instant) {
        let mut guard = self.lock();
        if guard.1 != period {
            // Admitted in a period that is over: its outcome says nothing about this one.
            return;
        }
        match &mut guard.0 {
            State::Closed(window) if !probe => {
                window.add(now, 1, u64::from(failed));
                // Only a failure can open the breaker, so only a failure sums the window.
                let (calls, failures) = if failed { window.totals(now) } else { (0, 0) };
                if failed
                    && calls >= u64::from(self.config.min_requests)
                    && failures as f64 >= self.config.failure_rate * calls as f64
                {
                    tracing::warn!(
                        service = %self.service, calls, failures, open_for = ?self.config.open_for,
                        "circuit breaker open: calls fail fast"
                    );
                    self.open(&mut guard, now);
                }
            }
            State::HalfOpen { in_flight, succeeded } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    tracing::warn!(service = %self.service, "circuit breaker open again: a probe failed");
                    self.open(&mut guard, now);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_requests {
                        tracing::info!(service = %self.service, "circuit breaker closed");
                        let closed = State::Closed(Box::new(Window::new(self.config.window)));
                        self.transition(&mut guard, closed);
                    }
                }
            }
            _ => {}
        }
    }

    /// A probe that ended without an outcome gives its slot back (in its own period only).
    fn release(&self, period: u64) {
        let mut guard = self.lock();
        if guard.1 != period {
            return;
        }
        if let State::HalfOpen { in_flight, .. } = &mut guard.0 {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl Ticket {
    /// The call's outcome; `now` places it in the window (the call's start is close enough).
    pub fn record(mut self, failed: bool, now: Instant) {
        self.breaker.record(self.probe, self.period, failed, now);
        self.recorded = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release(self.period);
        }
    }
}
