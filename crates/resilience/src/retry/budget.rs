//! A retry budget: retries as a share of requests, plus a floor, over a sliding time window.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, duration_nanos};
use crate::sync::atomic::{AtomicU64, Ordering};

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
/// A withdrawal is one compare-and-swap that checks the balance it takes from, so concurrent
/// retries never overdraw the budget (within one tenth of `ttl`, where every caller writes the
/// same word; a caller still on the previous tenth as it ends can take one token more).
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
    /// Withdrawals refused: retries the budget did not allow.
    exhausted: AtomicU64,
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
                exhausted: AtomicU64::new(0),
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
        let granted = self.shared.take(COST);
        if !granted {
            self.shared.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// Retries the budget would allow right now.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        u64::try_from(self.shared.balance() / COST).unwrap_or(0)
    }

    /// Retries refused since the budget was built, because it was spent.
    #[must_use]
    pub fn exhausted(&self) -> u64 {
        self.shared.exhausted.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn epoch(&self) -> u64 {
        self.clock.now_nanos() / self.bucket_nanos
    }

    fn add(&self, amount: i64) {
        self.update(amount, false);
    }

    /// Withdraws `amount` if the balance holds it, in the same compare-and-swap that writes it.
    fn take(&self, amount: i64) -> bool {
        self.update(-amount, true)
    }

    /// Adds `amount` to the current bucket; with `checked`, only if the balance stays at or
    /// above zero. Every write of this tenth of the window goes to the same word, and the check
    /// reads that word's value from the very compare-and-swap that replaces it, so two
    /// withdrawals cannot both spend the last token.
    fn update(&self, amount: i64, checked: bool) -> bool {
        let epoch = self.epoch();
        let tag = (epoch & ((1 << EPOCH_BITS) - 1)) << VALUE_BITS;
        let index = (epoch % BUCKETS as u64) as usize;
        let bucket = &self.buckets[index];
        // The other buckets only change when this tenth ends; read them once.
        let others = if checked {
            self.reserve + self.live_sum(epoch, Some(index))
        } else {
            0
        };
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let value = if current & !VALUE_MASK == tag {
                (current & VALUE_MASK).cast_signed() - VALUE_BIAS
            } else {
                0
            };
            if checked && others + value + amount < 0 {
                return false;
            }
            let next_value = (value + amount).clamp(-VALUE_BIAS, VALUE_BIAS - 1);
            let next = tag | (next_value + VALUE_BIAS) as u64;
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// The sum of the buckets still inside the window, but for `skip`.
    fn live_sum(&self, epoch: u64, skip: Option<usize>) -> i64 {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, b)| b.load(Ordering::Acquire))
            .filter(|word| {
                let age = epoch.wrapping_sub(word >> VALUE_BITS) & ((1 << EPOCH_BITS) - 1);
                age < BUCKETS as u64
            })
            .map(|word| (word & VALUE_MASK).cast_signed() - VALUE_BIAS)
            .sum()
    }

    fn balance(&self) -> i64 {
        self.reserve + self.live_sum(self.epoch(), None)
    }
}

#[cfg(all(test, not(mainstay_loom)))]
mod tests {
    use super::*;

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        // 100 retries in reserve (10 per second over 10 s), no deposits.
        let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.0);
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        if budget.withdraw() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 100);
        assert_eq!(budget.remaining(), 0);
    }
}

/// Every interleaving of two retries racing for the last token, explored by loom (see
/// `circuit_breaker::core` for the command).
#[cfg(all(test, mainstay_loom))]
mod loom_tests {
    use super::*;

    #[test]
    fn loom_two_retries_never_both_take_the_last_token() {
        loom::model(|| {
            // One retry in reserve (one per second over one second), no deposits.
            let budget = RetryBudget::new(Duration::from_secs(1), 1, 0.0);
            let other = budget.clone();
            let racer = loom::thread::spawn(move || other.withdraw());
            let mine = budget.withdraw();
            let theirs = racer.join().unwrap();
            assert!(mine ^ theirs, "granted: {mine} and {theirs}");
        });
    }
}
