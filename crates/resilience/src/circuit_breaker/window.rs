//! Sliding windows of call outcomes: lock-free, allocation-free and O(1) per call.
//!
//! Two kinds share one contract: `record` adds an outcome, `snapshot` returns the calls, failures
//! and slow calls currently inside the window, `reset` empties it.
//!
//! * [`CountWindow`] keeps the last `n` outcomes in a ring of bytes. Aggregates are updated only
//!   when the outcome written differs from the one it replaces, so a success that lands on a
//!   success costs one `fetch_add` and one load.
//! * [`TimeWindow`] keeps per-bucket counters whose words carry their own bucket number, so a
//!   bucket from an older period is recognised and restarted inside the same CAS that records into
//!   it: there is no separate rotation step that could race with writers.

use crate::sync::CachePadded;
use crate::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The call completed.
pub(crate) const RECORDED: u8 = 0b001;
/// The call counted as a failure.
pub(crate) const FAILED: u8 = 0b010;
/// The call took longer than the slow-call threshold.
pub(crate) const SLOW: u8 = 0b100;

/// The largest count window: every aggregate must fit its packed field, which holds values up
/// to its bias, 2^20 (see `FIELD_BITS`), less one.
pub(crate) const MAX_COUNT_WINDOW: usize = (1 << 20) - 1;
const _: () = assert!(MAX_COUNT_WINDOW as u64 == FIELD_BIAS - 1);
/// The most buckets a time window may have.
pub(crate) const MAX_BUCKETS: usize = 1024;

/// Calls, failures and slow calls inside a window at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Snapshot {
    #[cfg(test)]
    fn add(&mut self, outcome: u8) {
        self.calls += u64::from(outcome & RECORDED);
        self.failures += u64::from((outcome & FAILED) >> 1);
        self.slow += u64::from((outcome & SLOW) >> 2);
    }
}

/// Either kind of window.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per breaker; the count window's padding is deliberate and boxing it would add an indirection to every call"
)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one outcome; returns `true` when it is a failure or a slow call, the only outcomes
    /// after which the thresholds are checked (a success cannot raise either rate).
    #[inline]
    pub(crate) fn record(&self, outcome: u8, now_nanos: u64) -> bool {
        match self {
            Window::Count(w) => w.record(outcome),
            Window::Time(w) => w.record(outcome, now_nanos),
        }
    }

    pub(crate) fn snapshot(&self, now_nanos: u64) -> Snapshot {
        match self {
            Window::Count(w) => w.snapshot(),
            Window::Time(w) => w.snapshot(now_nanos),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    /// Whether recording needs the current time.
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

// ---------------------------------------------------------------------------------------------
// Count window
// ---------------------------------------------------------------------------------------------

/// Aggregates of a count window packed in one word: three 21-bit fields (calls, failures, slow).
///
/// Each field holds its true value plus a bias of 2^20. The word is only ever changed by adding the
/// difference between a new and an old slot value, and a field's true value can dip below zero for
/// a moment (a writer that wraps around the ring may subtract an outcome before the writer that put
/// it there has added it). The bias keeps such a dip inside its field, so it never borrows from a
/// neighbour, and the word is exact again as soon as both writers are done.
const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const FIELD_BIAS: u64 = 1 << (FIELD_BITS - 1);
const PACKED_BIAS: u64 = FIELD_BIAS | (FIELD_BIAS << FIELD_BITS) | (FIELD_BIAS << (2 * FIELD_BITS));

/// The packed aggregate contribution of one slot value.
#[inline]
fn packed(outcome: u8) -> u64 {
    u64::from(outcome & RECORDED)
        | (u64::from((outcome & FAILED) >> 1) << FIELD_BITS)
        | (u64::from((outcome & SLOW) >> 2) << (2 * FIELD_BITS))
}

fn unpack_field(word: u64, index: u32) -> u64 {
    let raw = (word >> (index * FIELD_BITS)) & FIELD_MASK;
    // A transiently negative field reads as zero.
    raw.saturating_sub(FIELD_BIAS)
}

/// The last `n` outcomes, exactly.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// Position of the next write; wraps at 2^32 (one slot is reused early once every 4 billion
    /// calls when `n` is not a power of two).
    head: CachePadded<AtomicU32>,
    /// Lemire's fast-modulo constant for `slots.len()`.
    modulo: u64,
    totals: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        let divisor = size as u64;
        Self {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            head: CachePadded(AtomicU32::new(0)),
            modulo: (u64::MAX / divisor).wrapping_add(1),
            totals: AtomicU64::new(PACKED_BIAS),
        }
    }

    #[inline]
    fn index(&self, position: u32) -> usize {
        // `position % len` without a division: https://arxiv.org/abs/1902.01961
        let low = self.modulo.wrapping_mul(u64::from(position));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    pub(crate) fn record(&self, outcome: u8) -> bool {
        let position = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[self.index(position)];
        // A failure that replaces a failure leaves the counts alone but is still judged: the
        // window may have reached its minimum number of calls on a success since.
        let judge = outcome & (FAILED | SLOW) != 0;
        // The common case (a success replacing a success) changes nothing else.
        if slot.load(Ordering::Relaxed) == outcome {
            return judge;
        }
        let old = slot.swap(outcome, Ordering::AcqRel);
        if old != outcome {
            self.totals
                .fetch_add(packed(outcome).wrapping_sub(packed(old)), Ordering::AcqRel);
        }
        judge
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let word = self.totals.load(Ordering::Acquire);
        let size = self.slots.len() as u64;
        Snapshot {
            calls: unpack_field(word, 0).min(size),
            failures: unpack_field(word, 1).min(size),
            slow: unpack_field(word, 2).min(size),
        }
    }

    pub(crate) fn reset(&self) {
        for slot in &*self.slots {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.totals
                    .fetch_add(0u64.wrapping_sub(packed(old)), Ordering::AcqRel);
            }
        }
    }

    /// Sum of the ring, for tests that compare it with the aggregates.
    #[cfg(test)]
    pub(crate) fn recount(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for slot in &*self.slots {
            snapshot.add(slot.load(Ordering::Acquire));
        }
        snapshot
    }
}

// ---------------------------------------------------------------------------------------------
// Time window
// ---------------------------------------------------------------------------------------------

/// Bits of a bucket word that hold the bucket number (the rest hold a count).
const EPOCH_BITS: u32 = 24;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_BITS: u32 = 64 - EPOCH_BITS;
/// Each count saturates here: 2^40 - 1 calls in one bucket, about 10^12, which no service
/// reaches. Calls, failures and slow calls each have a word of their own, so that they saturate
/// together and a failure rate stays right however busy a bucket is.
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

#[derive(Debug)]
struct Bucket {
    /// `epoch << 40 | calls`
    calls: AtomicU64,
    /// `epoch << 40 | failures`
    failures: AtomicU64,
    /// `epoch << 40 | slow calls`
    slow: AtomicU64,
}

/// Outcomes of the last `buckets × bucket_nanos` nanoseconds, in `buckets` slices.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

impl TimeWindow {
    pub(crate) fn new(bucket_nanos: u64, buckets: usize) -> Self {
        let buckets = buckets.clamp(1, MAX_BUCKETS);
        Self {
            buckets: (0..buckets)
                .map(|_| Bucket {
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
            bucket_nanos: bucket_nanos.max(1),
        }
    }

    #[inline]
    fn epoch(&self, now_nanos: u64) -> u64 {
        now_nanos / self.bucket_nanos
    }

    /// Adds one to `word`'s count, restarting it first when it belongs to an older bucket.
    /// Saturates instead of overflowing into the epoch.
    #[inline]
    fn bump(word: &AtomicU64, epoch: u64) {
        let tag = (epoch & EPOCH_MASK) << COUNT_BITS;
        let mut current = word.load(Ordering::Relaxed);
        loop {
            let count = if current & !COUNT_MASK == tag {
                current & COUNT_MASK
            } else {
                0
            };
            let next = tag | (count + 1).min(COUNT_MASK);
            match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    #[inline]
    pub(crate) fn record(&self, outcome: u8, now_nanos: u64) -> bool {
        if outcome & RECORDED == 0 {
            return false;
        }
        let epoch = self.epoch(now_nanos);
        let bucket = &self.buckets[(epoch % self.buckets.len() as u64) as usize];
        Self::bump(&bucket.calls, epoch);
        if outcome & FAILED != 0 {
            Self::bump(&bucket.failures, epoch);
        }
        if outcome & SLOW != 0 {
            Self::bump(&bucket.slow, epoch);
        }
        outcome & (FAILED | SLOW) != 0
    }

    pub(crate) fn snapshot(&self, now_nanos: u64) -> Snapshot {
        let epoch = self.epoch(now_nanos);
        let span = self.buckets.len() as u64;
        let live = |word: u64| {
            // How many buckets ago this word was written, modulo the epoch field's width.
            let age = (epoch.wrapping_sub(word >> COUNT_BITS)) & EPOCH_MASK;
            age < span
        };
        let mut snapshot = Snapshot::default();
        let count = |word: &AtomicU64| {
            let word = word.load(Ordering::Acquire);
            if live(word) { word & COUNT_MASK } else { 0 }
        };
        for bucket in &*self.buckets {
            snapshot.calls += count(&bucket.calls);
            snapshot.failures += count(&bucket.failures);
            snapshot.slow += count(&bucket.slow);
        }
        snapshot
    }

    pub(crate) fn reset(&self) {
        for bucket in &*self.buckets {
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(mainstay_loom)))]
mod tests {
    use super::*;

    const OK: u8 = RECORDED;
    const FAIL: u8 = RECORDED | FAILED;

    #[test]
    fn the_largest_count_window_counts_every_failure() {
        let window = CountWindow::new(MAX_COUNT_WINDOW);
        for _ in 0..MAX_COUNT_WINDOW {
            window.record(FAIL);
        }
        let snapshot = window.snapshot();
        assert_eq!(snapshot.calls, MAX_COUNT_WINDOW as u64);
        assert_eq!(snapshot.failures, MAX_COUNT_WINDOW as u64);
        assert_eq!(snapshot, window.recount());
    }

    #[test]
    fn a_busy_time_bucket_keeps_its_failure_rate() {
        // More than 2^20 calls in one bucket, half of them failures: the old packed word held
        // 2^20 - 1 failures and read this as under half.
        let window = TimeWindow::new(1_000_000_000, 1);
        let n = (1u64 << 20) + 10;
        for _ in 0..n {
            window.record(OK, 5);
            window.record(FAIL | SLOW, 5);
        }
        let snapshot = window.snapshot(5);
        assert_eq!(snapshot.calls, 2 * n);
        assert_eq!(snapshot.failures, n);
        assert_eq!(snapshot.slow, n);
    }

    #[test]
    fn count_window_fast_modulo_matches_remainder() {
        for size in [1usize, 2, 3, 7, 10, 100, 1000, 4097] {
            let window = CountWindow::new(size);
            for position in (0..10_000u32).chain([u32::MAX - 3, u32::MAX - 1, u32::MAX]) {
                assert_eq!(
                    window.index(position),
                    position as usize % size,
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn count_window_slides_one_call_at_a_time() {
        let window = CountWindow::new(4);
        for _ in 0..10 {
            window.record(OK);
        }
        assert_eq!(
            window.snapshot(),
            Snapshot {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        assert!(window.record(FAIL));
        assert!(window.record(FAIL));
        assert_eq!(window.snapshot().failures, 2);
        // Two successes push both failures out.
        window.record(OK);
        window.record(OK);
        assert_eq!(
            window.snapshot().failures,
            2,
            "failures are still the newest two"
        );
        window.record(OK);
        window.record(OK);
        assert_eq!(
            window.snapshot(),
            Snapshot {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_reset_empties_it() {
        let window = CountWindow::new(3);
        window.record(FAIL | SLOW);
        window.record(OK);
        window.reset();
        assert_eq!(window.snapshot(), Snapshot::default());
        assert_eq!(window.recount(), Snapshot::default());
    }

    #[test]
    fn time_window_forgets_buckets_older_than_the_window() {
        let second = 1_000_000_000;
        let window = TimeWindow::new(second, 10);
        window.record(FAIL, 0);
        window.record(OK, second / 2);
        window.record(OK, 3 * second);
        assert_eq!(
            window.snapshot(9 * second),
            Snapshot {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        // Bucket 0 leaves the window when bucket 10 begins.
        assert_eq!(
            window.snapshot(10 * second),
            Snapshot {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // Writing into a reused slot restarts it rather than adding to stale counts.
        window.record(OK, 10 * second);
        assert_eq!(
            window.snapshot(10 * second),
            Snapshot {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
    }

    mod model {
        //! The windows against the obvious reference: keep every outcome, count the recent ones.
        use std::collections::VecDeque;

        use proptest::prelude::*;

        use super::super::*;

        fn outcome() -> impl Strategy<Value = u8> {
            prop_oneof![
                Just(RECORDED),
                Just(RECORDED | FAILED),
                Just(RECORDED | SLOW),
                Just(RECORDED | FAILED | SLOW),
            ]
        }

        fn count(outcomes: impl IntoIterator<Item = u8>) -> Snapshot {
            let mut snapshot = Snapshot::default();
            for o in outcomes {
                snapshot.add(o);
            }
            snapshot
        }

        proptest! {
            #[test]
            fn count_window_matches_the_last_n_outcomes(
                size in 1usize..40,
                outcomes in proptest::collection::vec(outcome(), 0..300),
                reset_at in proptest::option::of(0usize..300),
            ) {
                let window = CountWindow::new(size);
                let mut model: VecDeque<u8> = VecDeque::new();
                for (i, &o) in outcomes.iter().enumerate() {
                    if reset_at == Some(i) {
                        window.reset();
                        model.clear();
                    }
                    let judge = window.record(o);
                    model.push_back(o);
                    if model.len() > size {
                        model.pop_front();
                    }
                    let expected = count(model.iter().copied());
                    prop_assert_eq!(window.snapshot(), expected);
                    prop_assert_eq!(window.recount(), expected);
                    // Every failure and slow call is judged, whatever it replaced.
                    prop_assert_eq!(judge, o & (FAILED | SLOW) != 0);
                }
            }

            #[test]
            fn time_window_matches_the_outcomes_of_the_last_buckets(
                buckets in 1usize..12,
                bucket_nanos in 1u64..50,
                steps in proptest::collection::vec((0u64..40, outcome()), 0..200),
            ) {
                let window = TimeWindow::new(bucket_nanos, buckets);
                let mut now = 0u64;
                let mut model: Vec<(u64, u8)> = Vec::new();
                for (gap, o) in steps {
                    now += gap;
                    let judge = window.record(o, now);
                    model.push((now, o));
                    let epoch = now / bucket_nanos;
                    let live = model
                        .iter()
                        .filter(|(t, _)| epoch - t / bucket_nanos < buckets as u64)
                        .map(|&(_, o)| o);
                    prop_assert_eq!(window.snapshot(now), count(live));
                    prop_assert_eq!(judge, o & (FAILED | SLOW) != 0);
                }
            }
        }
    }
}
