//! Monotonic time as integers, read from tokio's clock so `tokio::time::pause()` drives every
//! middleware in tests.

use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock that reports nanoseconds since it was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since this clock was created (saturating at `u64::MAX`, about 584 years).
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        duration_nanos(Instant::now().saturating_duration_since(self.base))
    }

    /// Milliseconds since this clock was created.
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    pub(crate) fn now_millis(&self) -> u64 {
        self.now_nanos() / 1_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration as whole nanoseconds, saturating instead of overflowing.
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration as whole milliseconds, rounded up so a timer never fires early.
#[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
pub(crate) fn duration_millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}
