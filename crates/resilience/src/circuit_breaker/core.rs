//! The breaker's state machine: lock-free, allocation-free, and independent of any runtime (time
//! comes in as closures, so loom and paused tokio time can both drive it).
//!
//! The whole state is one word: `until_ms (40 bits) | generation (20 bits) | state (4 bits)`.
//! A transition is one CAS that bumps the generation, so every admission knows which era it
//! belongs to and an outcome from an older era (a slow call admitted before the circuit opened)
//! is ignored. Opening and stamping the reopen time happen in that same CAS; no reader can see an
//! open circuit without its deadline.
//!
//! Half-open probes are counted in a second word, tagged with the low bits of the generation so
//! it restarts by itself when a new half-open period begins:
//! `generation (16) | slow (12) | failures (12) | done (12) | in flight (12)`.

use std::sync::Arc;

use super::State;
use super::window::{FAILED, RECORDED, SLOW, Snapshot, Window};
use crate::sync::CachePadded;
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const STATE_BITS: u32 = 4;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const GEN_BITS: u32 = 20;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const UNTIL_SHIFT: u32 = STATE_BITS + GEN_BITS;
/// `until` value meaning "no deadline".
pub(crate) const UNTIL_NEVER: u64 = (1 << (64 - UNTIL_SHIFT)) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const DISABLED: u64 = 3;
const FORCED_OPEN: u64 = 4;
const METRICS_ONLY: u64 = 5;

const HO_BITS: u32 = 12;
const HO_MASK: u64 = (1 << HO_BITS) - 1;
const HO_GEN_SHIFT: u32 = 4 * HO_BITS;
/// The most half-open permits the packed word can count.
pub(crate) const MAX_HALF_OPEN_PERMITS: u32 = (1 << HO_BITS) - 1;

/// Rates are compared as integers in basis points (1/100 of a percent).
pub(crate) const BASIS: u64 = 10_000;

#[inline]
fn pack(state: u64, generation: u64, until_ms: u64) -> u64 {
    (until_ms.min(UNTIL_NEVER) << UNTIL_SHIFT) | ((generation & GEN_MASK) << STATE_BITS) | state
}

#[inline]
fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

#[inline]
fn generation_of(word: u64) -> u64 {
    (word >> STATE_BITS) & GEN_MASK
}

/// The generation of `word`, as carried by an [`Admit`].
#[inline]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the generation is masked to 20 bits"
)]
fn era_of(word: u64) -> u32 {
    generation_of(word) as u32
}

#[inline]
fn until_of(word: u64) -> u64 {
    word >> UNTIL_SHIFT
}

fn public_state(state: u64) -> State {
    match state {
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        DISABLED => State::Disabled,
        FORCED_OPEN => State::ForcedOpen,
        METRICS_ONLY => State::MetricsOnly,
        _ => State::Closed,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HalfOpenCounts {
    generation: u64,
    in_flight: u64,
    done: u64,
    failures: u64,
    slow: u64,
}

impl HalfOpenCounts {
    fn unpack(word: u64) -> Self {
        Self {
            in_flight: word & HO_MASK,
            done: (word >> HO_BITS) & HO_MASK,
            failures: (word >> (2 * HO_BITS)) & HO_MASK,
            slow: (word >> (3 * HO_BITS)) & HO_MASK,
            generation: word >> HO_GEN_SHIFT,
        }
    }

    fn pack(self) -> u64 {
        self.in_flight
            | (self.done << HO_BITS)
            | (self.failures << (2 * HO_BITS))
            | (self.slow << (3 * HO_BITS))
            | (self.generation << HO_GEN_SHIFT)
    }
}

/// Thresholds and durations, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) failure_rate_bp: u64,
    pub(crate) slow_rate_bp: u64,
    pub(crate) minimum_calls: u64,
    pub(crate) half_open_permits: u32,
    pub(crate) half_open_max_ms: Option<u64>,
    pub(crate) open_base_ms: u64,
    pub(crate) open_multiplier: f64,
    pub(crate) open_max_ms: u64,
    pub(crate) slow_call_nanos: Option<u64>,
    pub(crate) initial: State,
}

/// Called after every state change, from the thread that made it.
pub(crate) type Listener = Arc<dyn Fn(State, State) + Send + Sync>;

/// What `try_acquire` granted: the era a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Counted in the sliding window of generation `0`.
    Closed(u32),
    /// One of the half-open probes of generation `0`.
    HalfOpen(u32),
    /// Not recorded (disabled breaker).
    Untracked,
}

/// A call refused by the breaker, with how long until it may admit calls again when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) retry_after_ms: Option<u64>,
    pub(crate) state: State,
}

/// The lock-free breaker.
pub(crate) struct Core {
    /// Read by every call, written only on transitions: on its own lines, away from the window's
    /// write position and from the `Arc` reference count next to this struct.
    state: CachePadded<AtomicU64>,
    half_open: AtomicU64,
    consecutive_opens: AtomicU32,
    refused: AtomicU64,
    window: Window,
    settings: Settings,
    listener: Option<Listener>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("state", &self.state())
            .field("window", &self.window)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(window: Window, settings: Settings, listener: Option<Listener>) -> Self {
        let initial = match settings.initial {
            State::Disabled => DISABLED,
            State::ForcedOpen => FORCED_OPEN,
            State::MetricsOnly => METRICS_ONLY,
            State::Closed | State::Open | State::HalfOpen => CLOSED,
        };
        Self {
            state: CachePadded(AtomicU64::new(pack(initial, 0, 0))),
            half_open: AtomicU64::new(0),
            consecutive_opens: AtomicU32::new(0),
            refused: AtomicU64::new(0),
            window,
            settings,
            listener,
        }
    }

    #[inline]
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn window(&self) -> &Window {
        &self.window
    }

    pub(crate) fn state(&self) -> State {
        public_state(state_of(self.state.load(Ordering::Acquire)))
    }

    pub(crate) fn refused_calls(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Decides whether one call may proceed. The clock is read only when the circuit is not
    /// closed, so the closed path costs one atomic load.
    #[inline]
    pub(crate) fn try_acquire(&self, now_ms: impl Fn() -> u64) -> Result<Admit, Refused> {
        let word = self.state.load(Ordering::Acquire);
        match state_of(word) {
            CLOSED | METRICS_ONLY => Ok(Admit::Closed(era_of(word))),
            DISABLED => Ok(Admit::Untracked),
            _ => self.try_acquire_slow(word, now_ms),
        }
    }

    #[cold]
    fn try_acquire_slow(&self, mut word: u64, now_ms: impl Fn() -> u64) -> Result<Admit, Refused> {
        let now = now_ms();
        loop {
            match state_of(word) {
                CLOSED | METRICS_ONLY => return Ok(Admit::Closed(era_of(word))),
                DISABLED => return Ok(Admit::Untracked),
                FORCED_OPEN => return Err(self.refuse(None, State::ForcedOpen)),
                OPEN => {
                    let until = until_of(word);
                    if now < until {
                        let wait = (until != UNTIL_NEVER).then(|| until - now);
                        return Err(self.refuse(wait, State::Open));
                    }
                    self.transition(word, HALF_OPEN, now);
                }
                _ => {
                    if now >= until_of(word) {
                        // The probes did not all finish in time: back to open.
                        self.transition(word, OPEN, now);
                    } else if let Some(admit) = self.try_probe(era_of(word)) {
                        return Ok(admit);
                    } else {
                        return Err(self.refuse(None, State::HalfOpen));
                    }
                }
            }
            word = self.state.load(Ordering::Acquire);
        }
    }

    fn refuse(&self, retry_after_ms: Option<u64>, state: State) -> Refused {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Refused {
            retry_after_ms,
            state,
        }
    }

    /// Takes one half-open permit of `generation`, if any is left.
    fn try_probe(&self, generation: u32) -> Option<Admit> {
        let tag = u64::from(generation) & ((1 << 16) - 1);
        let permits = u64::from(self.settings.half_open_permits);
        let mut word = self.half_open.load(Ordering::Acquire);
        loop {
            let mut counts = HalfOpenCounts::unpack(word);
            if counts.generation != tag {
                counts = HalfOpenCounts {
                    generation: tag,
                    in_flight: 0,
                    done: 0,
                    failures: 0,
                    slow: 0,
                };
            }
            if counts.in_flight + counts.done >= permits {
                return None;
            }
            counts.in_flight += 1;
            match self.half_open.compare_exchange_weak(
                word,
                counts.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Admit::HalfOpen(generation)),
                Err(seen) => word = seen,
            }
        }
    }

    /// Records the outcome of an admitted call. `outcome` is `0` for an ignored call.
    #[inline]
    pub(crate) fn record(&self, admit: Admit, outcome: u8, now_nanos: impl Fn() -> u64) {
        match admit {
            Admit::Closed(generation) => self.record_closed(generation, outcome, now_nanos),
            Admit::HalfOpen(generation) => self.record_probe(generation, Some(outcome), now_nanos),
            Admit::Untracked => {}
        }
    }

    /// Returns a permit whose call was dropped before it finished: cancellation is neither a
    /// success nor a failure, and the permit goes to the next probe.
    #[inline]
    pub(crate) fn cancel(&self, admit: Admit) {
        if let Admit::HalfOpen(generation) = admit {
            self.record_probe(generation, None, || 0);
        }
    }

    #[inline]
    fn record_closed(&self, generation: u32, outcome: u8, now_nanos: impl Fn() -> u64) {
        if outcome & RECORDED == 0 {
            return;
        }
        let word = self.state.load(Ordering::Acquire);
        let state = state_of(word);
        if era_of(word) != generation || !(state == CLOSED || state == METRICS_ONLY) {
            return;
        }
        let timed = self.window.needs_clock();
        let now = if timed { now_nanos() } else { 0 };
        if self.window.record(outcome, now) && state == CLOSED {
            // The clock is read for the count window only when the circuit actually opens.
            self.check_closed(word, now, || if timed { now } else { now_nanos() });
        }
    }

    #[cold]
    fn check_closed(&self, word: u64, window_now: u64, now_nanos: impl Fn() -> u64) {
        if self.exceeds(self.window.snapshot(window_now)) {
            self.transition(word, OPEN, now_nanos() / 1_000_000);
        }
    }

    /// Whether a window's rates reach either threshold.
    pub(crate) fn exceeds(&self, snapshot: Snapshot) -> bool {
        let s = &self.settings;
        snapshot.calls > 0
            && snapshot.calls >= s.minimum_calls
            && (snapshot.failures * BASIS >= s.failure_rate_bp * snapshot.calls
                || snapshot.slow * BASIS >= s.slow_rate_bp * snapshot.calls)
    }

    fn record_probe(&self, generation: u32, outcome: Option<u8>, now_nanos: impl Fn() -> u64) {
        let tag = u64::from(generation) & ((1 << 16) - 1);
        let permits = u64::from(self.settings.half_open_permits);
        let mut word = self.half_open.load(Ordering::Acquire);
        let counts = loop {
            let mut counts = HalfOpenCounts::unpack(word);
            if counts.generation != tag || counts.in_flight == 0 {
                return;
            }
            counts.in_flight -= 1;
            if let Some(outcome) = outcome.filter(|o| o & RECORDED != 0) {
                counts.done += 1;
                counts.failures += u64::from((outcome & FAILED) >> 1);
                counts.slow += u64::from((outcome & SLOW) >> 2);
            }
            match self.half_open.compare_exchange_weak(
                word,
                counts.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break counts,
                Err(seen) => word = seen,
            }
        };
        let finished = HalfOpenCounts::unpack(word).done < permits && counts.done == permits;
        if !finished {
            return;
        }
        // This call completed the last probe: judge the half-open period by its rates.
        let state = self.state.load(Ordering::Acquire);
        if state_of(state) != HALF_OPEN || era_of(state) != generation {
            return;
        }
        let judged = Snapshot {
            calls: counts.done,
            failures: counts.failures,
            slow: counts.slow,
        };
        let s = &self.settings;
        let failing = judged.failures * BASIS >= s.failure_rate_bp * judged.calls
            || judged.slow * BASIS >= s.slow_rate_bp * judged.calls;
        let now_ms = now_nanos() / 1_000_000;
        if failing {
            self.transition(state, OPEN, now_ms);
        } else {
            self.transition(state, CLOSED, now_ms);
        }
    }

    /// How long the next open period lasts: the base duration grown by the multiplier once per
    /// reopening since the circuit last closed, capped.
    fn open_duration_ms(&self) -> u64 {
        let s = &self.settings;
        let reopenings = self.consecutive_opens.load(Ordering::Relaxed);
        if reopenings == 0 || s.open_multiplier <= 1.0 {
            return s.open_base_ms.min(s.open_max_ms);
        }
        let grown =
            s.open_base_ms as f64 * s.open_multiplier.powi(reopenings.min(64).cast_signed());
        if grown >= s.open_max_ms as f64 {
            s.open_max_ms
        } else {
            grown as u64
        }
    }

    /// Moves from exactly `from` to `to`. Returns whether this call made the change.
    fn transition(&self, from: u64, to: u64, now_ms: u64) -> bool {
        let until = match to {
            OPEN => now_ms.saturating_add(self.open_duration_ms()),
            HALF_OPEN => self
                .settings
                .half_open_max_ms
                .map_or(UNTIL_NEVER, |max| now_ms.saturating_add(max)),
            _ => 0,
        };
        if to == CLOSED {
            // Start the new closed period from an empty window. Done before the switch so no
            // call of the new generation can be judged on outcomes of the old one.
            self.window.reset();
        }
        let next = pack(to, generation_of(from) + 1, until);
        if self
            .state
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        match to {
            OPEN => {
                self.consecutive_opens.fetch_add(1, Ordering::Relaxed);
            }
            CLOSED => self.consecutive_opens.store(0, Ordering::Relaxed),
            _ => {}
        }
        if let Some(listener) = &self.listener {
            listener(public_state(state_of(from)), public_state(to));
        }
        true
    }

    /// Forces a state from outside (handle methods). Closed and metrics-only start from an empty
    /// window.
    pub(crate) fn force(&self, to: State, now_ms: u64) {
        let to = match to {
            State::Closed => CLOSED,
            State::Open => OPEN,
            State::HalfOpen => HALF_OPEN,
            State::Disabled => DISABLED,
            State::ForcedOpen => FORCED_OPEN,
            State::MetricsOnly => METRICS_ONLY,
        };
        if to == METRICS_ONLY {
            self.window.reset();
        }
        loop {
            let word = self.state.load(Ordering::Acquire);
            if self.transition(word, to, now_ms) {
                return;
            }
        }
    }
}

#[cfg(all(test, not(mainstay_loom)))]
mod tests {
    use super::*;
    use crate::circuit_breaker::window::CountWindow;

    const OK: u8 = RECORDED;
    const FAIL: u8 = RECORDED | FAILED;

    fn settings() -> Settings {
        Settings {
            failure_rate_bp: 5_000,
            slow_rate_bp: BASIS + 1,
            minimum_calls: 4,
            half_open_permits: 2,
            half_open_max_ms: None,
            open_base_ms: 1_000,
            open_multiplier: 2.0,
            open_max_ms: 3_000,
            slow_call_nanos: None,
            initial: State::Closed,
        }
    }

    fn core(settings: Settings) -> Core {
        Core::new(Window::Count(CountWindow::new(4)), settings, None)
    }

    fn open_it(core: &Core, now_ms: u64) {
        for _ in 0..4 {
            let admit = core.try_acquire(|| now_ms).expect("closed");
            core.record(admit, FAIL, || now_ms * 1_000_000);
        }
        assert_eq!(core.state(), State::Open);
    }

    #[test]
    fn open_duration_grows_per_reopening_and_is_capped() {
        let core = core(settings());
        open_it(&core, 0);
        assert_eq!(
            core.try_acquire(|| 999).unwrap_err().retry_after_ms,
            Some(1)
        );
        // Both half-open probes fail: the circuit reopens for twice the base duration.
        let first = core.try_acquire(|| 1_000).unwrap();
        let second = core.try_acquire(|| 1_000).unwrap();
        assert_eq!(core.state(), State::HalfOpen);
        core.record(first, FAIL, || 1_000_000_000);
        core.record(second, FAIL, || 1_000_000_000);
        assert_eq!(core.state(), State::Open);
        assert_eq!(
            core.try_acquire(|| 1_000).unwrap_err().retry_after_ms,
            Some(2_000)
        );
        // Again: 4 s, capped at 3 s.
        let first = core.try_acquire(|| 3_000).unwrap();
        let second = core.try_acquire(|| 3_000).unwrap();
        core.record(first, FAIL, || 3_000_000_000);
        core.record(second, OK, || 3_000_000_000);
        assert_eq!(
            core.state(),
            State::Open,
            "50% failures meets the 50% threshold"
        );
        assert_eq!(
            core.try_acquire(|| 3_000).unwrap_err().retry_after_ms,
            Some(3_000)
        );
    }

    #[test]
    fn half_open_word_round_trips() {
        let counts = HalfOpenCounts {
            generation: 0xABCD,
            in_flight: 4095,
            done: 7,
            failures: 3,
            slow: 1,
        };
        assert_eq!(HalfOpenCounts::unpack(counts.pack()), counts);
    }
}

/// Every interleaving of the atomic core, explored by loom:
/// `RUSTFLAGS="--cfg mainstay_loom" cargo test -p mainstay-resilience --features circuit-breaker,retry --lib --release loom`
#[cfg(all(test, mainstay_loom))]
mod loom_tests {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::*;
    use crate::circuit_breaker::window::CountWindow;

    const OK: u8 = RECORDED;
    const FAIL: u8 = RECORDED | FAILED;

    /// Every interleaving with at most three preemptions (tokio's own loom suite uses two or
    /// three): enough for each race below, small enough to finish in seconds.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    fn core(window: usize, permits: u32, transitions: Arc<AtomicUsize>) -> Arc<Core> {
        let settings = Settings {
            failure_rate_bp: 5_000,
            slow_rate_bp: BASIS + 1,
            minimum_calls: window as u64,
            half_open_permits: permits,
            half_open_max_ms: None,
            open_base_ms: 10,
            open_multiplier: 1.0,
            open_max_ms: 10,
            slow_call_nanos: None,
            initial: State::Closed,
        };
        let listener: Listener = Arc::new(move |_, _| {
            transitions.fetch_add(1, Ordering::SeqCst);
        });
        Arc::new(Core::new(
            Window::Count(CountWindow::new(window)),
            settings,
            Some(listener),
        ))
    }

    fn recount(core: &Core) -> Snapshot {
        match core.window() {
            Window::Count(w) => w.recount(),
            Window::Time(_) => unreachable!(),
        }
    }

    /// Two threads record into a ring smaller than their writes: the aggregates always end equal
    /// to the ring, and the circuit opens exactly once.
    #[test]
    fn concurrent_records_keep_aggregates_exact_and_open_once() {
        model(|| {
            let transitions = Arc::new(AtomicUsize::new(0));
            let core = core(2, 1, transitions.clone());
            let writers: Vec<_> = [[FAIL, OK], [FAIL, FAIL]]
                .into_iter()
                .map(|outcomes| {
                    let core = core.clone();
                    thread::spawn(move || {
                        for o in outcomes {
                            if let Ok(admit) = core.try_acquire(|| 0) {
                                core.record(admit, o, || 0);
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            if core.state() == State::Closed {
                let ring = recount(&core);
                assert_eq!(core.window().snapshot(0), ring);
            }
            assert!(transitions.load(Ordering::SeqCst) <= 1);
        });
    }

    /// Three threads race for two half-open permits: never more than two probes, and the period
    /// ends in exactly one transition.
    #[test]
    fn half_open_permits_are_never_over_granted() {
        model(|| {
            let transitions = Arc::new(AtomicUsize::new(0));
            let core = core(1, 2, transitions.clone());
            core.force(State::Open, 0);
            let base = transitions.load(Ordering::SeqCst);
            let admitted = Arc::new(AtomicUsize::new(0));
            let probes: Vec<_> = (0..3)
                .map(|_| {
                    let core = core.clone();
                    let admitted = admitted.clone();
                    thread::spawn(move || {
                        if let Ok(admit) = core.try_acquire(|| 10) {
                            // A thread that arrives after both probes closed the circuit is an
                            // ordinary closed call; only probes are bounded.
                            if matches!(admit, Admit::HalfOpen(_)) {
                                admitted.fetch_add(1, Ordering::SeqCst);
                            }
                            core.record(admit, OK, || 10_000_000);
                        }
                    })
                })
                .collect();
            for p in probes {
                p.join().unwrap();
            }
            let admitted = admitted.load(Ordering::SeqCst);
            assert!((1..=2).contains(&admitted), "admitted {admitted} probes");
            if admitted == 2 {
                assert_eq!(core.state(), State::Closed);
                // open -> half-open -> closed
                assert_eq!(transitions.load(Ordering::SeqCst) - base, 2);
            }
        });
    }

    /// A probe cancelled while another completes: the permit comes back exactly once.
    #[test]
    fn cancelled_probe_returns_its_permit_once() {
        model(|| {
            let core = core(1, 1, Arc::new(AtomicUsize::new(0)));
            core.force(State::Open, 0);
            let admit = core.try_acquire(|| 10).unwrap();
            let canceller = {
                let core = core.clone();
                thread::spawn(move || core.cancel(admit))
            };
            let second = core.try_acquire(|| 10);
            canceller.join().unwrap();
            if let Ok(admit) = second {
                // It got the returned permit; a third must be refused until it finishes.
                assert!(core.try_acquire(|| 10).is_err());
                core.cancel(admit);
            }
            assert!(core.try_acquire(|| 10).is_ok(), "the permit is free again");
        });
    }
}
