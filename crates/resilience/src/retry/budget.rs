//! A retry budget: retries as a share of requests, plus a floor, over a sliding time window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, duration_nanos};

const BUCKETS: usize = 10;
/// A retry costs this many milli-tokens; a request deposits `ratio × COST`. Integer arithmetic,
/// so fractional ratios are exact (tower's `TpsBudget` truncates them, tower#857).
const COST: i64 = 1_000;

const EPOCH_BITS: u32 = 24;
const VALUE_BITS: u32 = 64 - EPOCH_BITS;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const VALUE_BIAS: i64 = 1 << (VALUE_BITS - 1);

/// Limits retries to a share of recent requests, as Finagle, Linkerd and Envoy do, so a failing
/// dependency sees at most `1 + ratio` times its normal load instead of `max_attempts` times.
///
/// Every request deposits `ratio` of a token, every retry withdraws one; deposits and withdrawals
/// count for `ttl`. On top, `min_per_second × ttl` retries are always allowed, so a quiet
/// service can still retry. Clones share one budget.
///
/// ```
/// use std::time::Duration;
/// use mainstay_resilience::retry::RetryBudget;
///
/// // 20 % of requests may be retried, plus 10 retries per second, over a 10 s window.
/// let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
/// # let _ = budget;
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clock: Clock,
    bucket_nanos: u64,
    deposit: i64,
    reserve: i64,
    /// `epoch << 40 | (balance + 2^39)` per bucket.
    buckets: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// `ratio` of requests may be retried (clamped to 0..=1000), plus `min_per_second` retries
    /// per second, counted over `ttl` (clamped to 1 s ..= 60 s).
    #[must_use]
    pub fn new(ttl: Duration, min_per_second: u32, ratio: f64) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1_000.0)
        } else {
            0.0
        };
        Self {
            shared: Arc::new(Shared {
                clock: Clock::new(),
                bucket_nanos: duration_nanos(ttl) / BUCKETS as u64,
                deposit: (ratio * COST as f64).round() as i64,
                reserve: i64::from(min_per_second) * ttl.as_secs().cast_signed() * COST,
                // An untouched bucket must read as zero, i.e. the bias.
                buckets: std::array::from_fn(|_| AtomicU64::new(VALUE_BIAS as u64)),
            }),
        }
    }

    /// Records a request (called by the retry layer for every first attempt).
    pub fn deposit(&self) {
        let s = &*self.shared;
        if s.deposit > 0 {
            s.add(s.deposit);
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    #[must_use = "a `false` means the retry must not be made"]
    pub fn withdraw(&self) -> bool {
        let s = &*self.shared;
        if s.balance() < COST {
            return false;
        }
        s.add(-COST);
        true
    }

    /// Retries the budget would allow right now.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        u64::try_from(self.shared.balance() / COST).unwrap_or(0)
    }
}

impl Shared {
    fn epoch(&self) -> u64 {
        self.clock.now_nanos() / self.bucket_nanos
    }

    fn add(&self, amount: i64) {
        let epoch = self.epoch();
        let tag = (epoch & ((1 << EPOCH_BITS) - 1)) << VALUE_BITS;
        let bucket = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let value = if current & !VALUE_MASK == tag {
                (current & VALUE_MASK).cast_signed() - VALUE_BIAS
            } else {
                0
            };
            let next_value = (value + amount).clamp(-VALUE_BIAS, VALUE_BIAS - 1);
            let next = tag | (next_value + VALUE_BIAS) as u64;
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    fn balance(&self) -> i64 {
        let epoch = self.epoch();
        let live: i64 = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .filter(|word| {
                let age = epoch.wrapping_sub(word >> VALUE_BITS) & ((1 << EPOCH_BITS) - 1);
                age < BUCKETS as u64
            })
            .map(|word| (word & VALUE_MASK).cast_signed() - VALUE_BIAS)
            .sum();
        self.reserve + live
    }
}
