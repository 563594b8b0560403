//! A lock-free latency histogram over rotating periods, for percentile-driven hedging.
//!
//! Latencies go into log-linear buckets (four per power of two of microseconds, so each bucket
//! is at most 25 % wide, from 1 µs to over an hour). Two bucket sets alternate: one records the
//! current period while the other holds the last complete one. When a period ends, the first
//! writer to notice computes the percentile of the finished period once and caches it, so
//! reading the delay on the hot path is one atomic load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, duration_nanos};

const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = 128;
/// No delay known yet (too few samples in the last period).
const UNKNOWN: u64 = u64::MAX;

fn bucket_of(nanos: u64) -> usize {
    let micros = (nanos >> 10).max(1);
    let octave = 63 - micros.leading_zeros(); // floor(log2)
    let index = if octave < SUB_BITS {
        micros
    } else {
        let sub = (micros >> (octave - SUB_BITS)) & (SUB - 1);
        u64::from(octave - SUB_BITS + 1) * SUB + sub
    };
    (index as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in nanoseconds (the delay a percentile in it maps to).
fn upper_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    let micros = if bucket < SUB {
        bucket + 1
    } else {
        let octave = bucket / SUB - 1 + u64::from(SUB_BITS);
        let sub = bucket % SUB;
        ((SUB + sub + 1) << (octave - u64::from(SUB_BITS))).min(1 << 42)
    };
    micros << 10
}

#[derive(Debug)]
pub(crate) struct RotatingHistogram {
    clock: Clock,
    period_nanos: u64,
    percentile: f64,
    min_samples: u32,
    epoch: AtomicU64,
    sets: [Box<[AtomicU32]>; 2],
    delay_nanos: AtomicU64,
}

impl RotatingHistogram {
    pub(crate) fn new(period: Duration, percentile: f64, min_samples: u32) -> Self {
        let empty = || {
            (0..BUCKETS)
                .map(|_| AtomicU32::new(0))
                .collect::<Box<[_]>>()
        };
        Self {
            clock: Clock::new(),
            period_nanos: duration_nanos(period).max(1),
            percentile: percentile.clamp(0.0, 1.0),
            min_samples: min_samples.max(1),
            epoch: AtomicU64::new(0),
            sets: [empty(), empty()],
            delay_nanos: AtomicU64::new(UNKNOWN),
        }
    }

    /// The percentile of the last complete period, if it had enough samples.
    pub(crate) fn delay(&self) -> Option<Duration> {
        self.rotate(self.clock.now_nanos() / self.period_nanos);
        match self.delay_nanos.load(Ordering::Relaxed) {
            UNKNOWN => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let epoch = self.clock.now_nanos() / self.period_nanos;
        self.rotate(epoch);
        let set = &self.sets[(epoch % 2) as usize];
        set[bucket_of(duration_nanos(latency))].fetch_add(1, Ordering::Relaxed);
    }

    /// Moves to `epoch` if it is new: caches the finished period's percentile and empties the
    /// set the new period will write. Samples racing with the switch may land in either period;
    /// a percentile does not need them exact.
    fn rotate(&self, epoch: u64) {
        let seen = self.epoch.load(Ordering::Acquire);
        if epoch <= seen
            || self
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let delay = if epoch == seen + 1 {
            self.percentile_of(&self.sets[(seen % 2) as usize])
        } else {
            UNKNOWN // an idle gap: the last period with data is too old to trust
        };
        self.delay_nanos.store(delay, Ordering::Relaxed);
        for bucket in &*self.sets[(epoch % 2) as usize] {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    fn percentile_of(&self, set: &[AtomicU32]) -> u64 {
        let counts: Vec<u64> = set
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total < u64::from(self.min_samples) {
            return UNKNOWN;
        }
        let rank = ((total as f64) * self.percentile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(bucket);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_a_bucket_whose_upper_bound_covers_it() {
        for micros in (1..5_000u64).chain([10_000, 123_456, 3_600_000_000]) {
            let nanos = micros << 10;
            let bucket = bucket_of(nanos);
            assert!(
                upper_bound(bucket) >= nanos,
                "{micros} µs in bucket {bucket}"
            );
            if bucket > 0 && bucket < BUCKETS - 1 {
                assert!(
                    upper_bound(bucket - 1) <= nanos,
                    "{micros} µs belongs lower than {bucket}"
                );
                // Buckets are at most 25 % wide (plus one µs of rounding).
                assert!(
                    upper_bound(bucket) <= nanos + nanos / 4 + 1024,
                    "{micros} µs: bound {}",
                    upper_bound(bucket)
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_the_percentile_of_the_last_complete_period() {
        let histogram = RotatingHistogram::new(Duration::from_secs(1), 0.9, 10);
        for ms in 1..=100u64 {
            histogram.record(Duration::from_millis(ms));
        }
        assert_eq!(histogram.delay(), None, "the first period is not complete");
        tokio::time::advance(Duration::from_secs(1)).await;
        let p90 = histogram.delay().unwrap();
        assert!(
            p90 >= Duration::from_millis(90) && p90 <= Duration::from_millis(113),
            "{p90:?}"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            histogram.delay(),
            None,
            "an idle period forgets the old percentile"
        );
    }
}
