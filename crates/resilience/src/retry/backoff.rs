//! Backoff between attempts: exponential with jitter, or any iterator of durations.

use std::time::Duration;

/// Makes a fresh backoff sequence for each request.
///
/// Implemented by [`ExponentialBackoff`] and by closures returning any
/// `Iterator<Item = Duration>`, so crates such as `backon` plug in:
/// `RetryLayer::new().backoff(|| backon::ExponentialBuilder::default().with_jitter().build())`.
pub trait MakeBackoff {
    /// The sequence of delays of one request.
    type Backoff: Iterator<Item = Duration>;

    /// Starts a new sequence.
    fn make_backoff(&self) -> Self::Backoff;
}

impl<F, I> MakeBackoff for F
where
    F: Fn() -> I,
    I: Iterator<Item = Duration>,
{
    type Backoff = I;

    fn make_backoff(&self) -> I {
        self()
    }
}

/// How randomness spreads the delays of many clients (AWS, "Exponential Backoff And Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// `min(cap, base × 2ⁿ)`: no randomness. Synchronised clients retry in waves.
    None,
    /// A uniform draw in `[0, min(cap, base × 2ⁿ)]`.
    Full,
    /// Half of `min(cap, base × 2ⁿ)` plus a uniform draw over the other half.
    Equal,
    /// `min(cap, uniform(base, previous × 3))`: grows like exponential backoff without
    /// clustering (the default).
    #[default]
    Decorrelated,
}

/// Exponential backoff from `base` up to `cap`, with [`Jitter`] (decorrelated by default).
///
/// Every request draws its own random sequence, and no delay ever exceeds `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Default for ExponentialBackoff {
    /// 50 ms base, 5 s cap, decorrelated jitter.
    fn default() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

impl ExponentialBackoff {
    /// Delays start around `base` and never exceed `cap` (which is raised to `base` if lower).
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            jitter: Jitter::Decorrelated,
        }
    }

    /// Chooses the jitter.
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }
}

impl MakeBackoff for ExponentialBackoff {
    type Backoff = ExponentialDelays;

    fn make_backoff(&self) -> ExponentialDelays {
        ExponentialDelays {
            config: *self,
            attempt: 0,
            previous: self.base,
            // Seeded from the thread's generator, which advances on every call: each request
            // gets its own sequence (tower's maker clones one seeded RNG into every request).
            rng: fastrand::Rng::new(),
        }
    }
}

/// The delays of one request, made by [`ExponentialBackoff`]. Endless; the retry layer stops it.
#[derive(Debug, Clone)]
pub struct ExponentialDelays {
    config: ExponentialBackoff,
    attempt: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

impl ExponentialDelays {
    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        let (low, high) = (nanos(low), nanos(high));
        Duration::from_nanos(self.rng.u64(low..=high))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Iterator for ExponentialDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ExponentialBackoff { base, cap, jitter } = self.config;
        let exponential = base
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(cap)
            .min(cap);
        self.attempt = self.attempt.saturating_add(1);
        let delay = match jitter {
            Jitter::None => exponential,
            Jitter::Full => self.uniform(Duration::ZERO, exponential),
            Jitter::Equal => {
                let half = exponential / 2;
                half + self.uniform(Duration::ZERO, exponential - half)
            }
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3).min(cap);
                let delay = self.uniform(base, high);
                self.previous = delay;
                delay
            }
        };
        Some(delay.min(cap))
    }
}
