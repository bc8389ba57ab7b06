//! The time source of the in-process limiters, injected so tests can move time by hand
//! (governor's `FakeRelativeClock`) instead of sleeping through a window.

use governor::clock::{Clock, FakeRelativeClock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;

/// A monotonic clock: quanta's (cheap, TSC-based) in production, or a fake one a test advances.
#[derive(Debug, Clone)]
pub enum LimiterClock {
    Real {
        clock: QuantaClock,
        start: QuantaInstant,
    },
    Fake(FakeRelativeClock),
}

impl LimiterClock {
    /// The real clock.
    pub fn real() -> Self {
        let clock = QuantaClock::default();
        let start = clock.now();
        Self::Real { clock, start }
    }

    /// A clock that only moves when the returned handle's `advance` is called.
    pub fn fake() -> (Self, FakeRelativeClock) {
        let fake = FakeRelativeClock::default();
        (Self::Fake(fake.clone()), fake)
    }
}

impl Default for LimiterClock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock for LimiterClock {
    // One instant type for both clocks: nanoseconds since the clock was made.
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            Self::Real { clock, start } => clock.now().duration_since(*start),
            Self::Fake(fake) => fake.now(),
        }
    }
}
