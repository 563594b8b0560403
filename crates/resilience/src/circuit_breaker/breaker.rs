//! The shared breaker handle and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::core::{Admit, BASIS, Core, MAX_HALF_OPEN_PERMITS, Refused, Settings, UNTIL_NEVER};
use super::error::{ConfigError, Open};
use super::window::{
    CountWindow, FAILED, MAX_BUCKETS, MAX_COUNT_WINDOW, RECORDED, SLOW, Snapshot, TimeWindow,
    Window,
};
use super::{Outcome, State};
use crate::clock::{Clock, duration_millis_ceil, duration_nanos};

/// A circuit breaker's shared state: cheap to clone, every clone is the same breaker.
///
/// Build one with [`Breaker::builder`], give it to a [`CircuitBreakerLayer`] and keep a clone to
/// read its [`state`](Breaker::state) and [`metrics`](Breaker::metrics) or to switch it by hand.
/// Because the state lives here and not in the layer, every service the layer makes (axum calls
/// `Layer::layer` once per route and clones services per request) shares one breaker.
///
/// [`CircuitBreakerLayer`]: super::CircuitBreakerLayer
#[derive(Clone)]
pub struct Breaker {
    shared: Handle,
}

/// How a [`Breaker`] reaches its state: counted, or living for the rest of the process (see
/// [`Breaker::into_static`]). Every admitted call clones the handle into its response future,
/// so the static form saves an atomic increment and decrement per call.
#[derive(Clone)]
enum Handle {
    Counted(Arc<Shared>),
    Static(&'static Shared),
}

impl std::ops::Deref for Handle {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            Self::Counted(shared) => shared,
            Self::Static(shared) => shared,
        }
    }
}

struct Shared {
    core: Core,
    clock: Clock,
}

/// A handle that does not keep its breaker alive: a metrics registry holds breakers this way,
/// so that one dropped with its endpoint leaves the registry at the next scrape.
#[cfg(feature = "metrics")]
#[derive(Clone)]
pub(crate) struct WeakBreaker(WeakHandle);

#[cfg(feature = "metrics")]
#[derive(Clone)]
enum WeakHandle {
    Counted(std::sync::Weak<Shared>),
    Static(&'static Shared),
}

#[cfg(feature = "metrics")]
impl WeakBreaker {
    pub(crate) fn upgrade(&self) -> Option<Breaker> {
        let shared = match &self.0 {
            WeakHandle::Counted(weak) => Handle::Counted(weak.upgrade()?),
            WeakHandle::Static(shared) => Handle::Static(shared),
        };
        Some(Breaker { shared })
    }
}

impl Breaker {
    #[cfg(feature = "metrics")]
    pub(crate) fn downgrade(&self) -> WeakBreaker {
        match &self.shared {
            Handle::Counted(shared) => WeakBreaker(WeakHandle::Counted(Arc::downgrade(shared))),
            Handle::Static(shared) => WeakBreaker(WeakHandle::Static(shared)),
        }
    }

    /// Whether a handle other than this one exists (a call in flight, or a caller holding a
    /// clone): a keyed registry must not replace it.
    pub(crate) fn is_shared(&self) -> bool {
        match &self.shared {
            Handle::Counted(shared) => Arc::strong_count(shared) > 1,
            Handle::Static(_) => true,
        }
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// Counters read from a breaker at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current state.
    pub state: State,
    /// Calls recorded in the sliding window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls refused since the breaker was built.
    pub refused: u64,
}

impl Metrics {
    /// Failures as a fraction of the calls in the window (0 when the window is empty).
    #[must_use]
    pub fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Slow calls as a fraction of the calls in the window (0 when the window is empty).
    #[must_use]
    pub fn slow_call_rate(&self) -> f64 {
        rate(self.slow_calls, self.calls)
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Breaker {
    /// A builder with the defaults: a count window of the last 100 calls, open at a 50 % failure
    /// rate once at least 10 calls were seen, stay open 30 s, then let 5 probes through (judged by
    /// the same rate, and given at most 30 s to finish).
    #[must_use]
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This breaker, kept alive for the rest of the process so that calls skip reference
    /// counting.
    ///
    /// Every admitted call carries a handle to the breaker in its response future, to record the
    /// outcome when the call ends. A counted handle costs an atomic increment when the call starts
    /// and a decrement when it ends, which is most of a closed breaker's cost when atomics are
    /// slow; the handle this returns is a plain reference and costs neither (see
    /// `BENCHMARKS.md`). The state is shared with `self` and its clones: both switch and count
    /// together.
    ///
    /// The breaker's memory (a few cache lines plus a byte per slot of a count window) is never
    /// freed, so call this for breakers built once at startup, not for one per request or per key:
    /// [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer) evicts breakers and keeps
    /// counted ones.
    ///
    /// ```
    /// use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer};
    ///
    /// let breaker = Breaker::builder().build()?.into_static();
    /// let layer = CircuitBreakerLayer::new(breaker.clone());
    /// # let _ = layer;
    /// # Ok::<_, mainstay_resilience::circuit_breaker::error::ConfigError>(())
    /// ```
    #[must_use]
    pub fn into_static(self) -> Self {
        match self.shared {
            Handle::Static(_) => self,
            Handle::Counted(shared) => {
                // Leaking one counted reference keeps `Shared` alive forever; no `unsafe` needed.
                let forever: &'static Arc<Shared> = Box::leak(Box::new(shared));
                Self {
                    shared: Handle::Static(forever),
                }
            }
        }
    }

    /// The current state.
    ///
    /// An open circuit whose open period has passed reports [`State::Open`] until the next call
    /// arrives and moves it to half-open.
    #[must_use]
    pub fn state(&self) -> State {
        self.shared.core.state()
    }

    /// The window's counts and the number of refused calls.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        let core = &self.shared.core;
        let Snapshot {
            calls,
            failures,
            slow,
        } = core.window().snapshot(self.shared.clock.now_nanos());
        Metrics {
            state: core.state(),
            calls,
            failures,
            slow_calls: slow,
            refused: core.refused_calls(),
        }
    }

    /// Refuses every call until [`reset`](Self::reset) or another manual switch.
    pub fn force_open(&self) {
        self.force(State::ForcedOpen);
    }

    /// Lets every call through without recording anything.
    pub fn disable(&self) {
        self.force(State::Disabled);
    }

    /// Records outcomes and reports rates but never refuses a call: a way to watch a new
    /// threshold in production before enforcing it.
    pub fn metrics_only(&self) {
        self.force(State::MetricsOnly);
    }

    /// Closes the circuit with an empty window.
    pub fn reset(&self) {
        self.force(State::Closed);
    }

    /// Opens the circuit now, for the configured open duration.
    pub fn trip(&self) {
        self.force(State::Open);
    }

    fn force(&self, state: State) {
        self.shared
            .core
            .force(state, self.shared.clock.now_millis());
    }

    #[inline]
    pub(crate) fn acquire(&self) -> Result<Admit, Open> {
        let shared: &Shared = &self.shared;
        let clock = &shared.clock;
        shared.core.try_acquire(|| clock.now_millis()).map_err(
            |Refused {
                 retry_after_ms,
                 state,
             }| Open {
                retry_after: retry_after_ms.map(Duration::from_millis),
                state,
            },
        )
    }

    /// When an admitted call starts: read only when slow calls are detected and the call is
    /// recorded at all.
    #[inline]
    pub(crate) fn started_nanos(&self, admit: Admit) -> u64 {
        let shared: &Shared = &self.shared;
        if admit != Admit::Untracked && shared.core.settings().slow_call_nanos.is_some() {
            shared.clock.now_nanos()
        } else {
            0
        }
    }

    /// Records how an admitted call ended. The clock is read at most once, and only when the
    /// window or slow-call detection needs it.
    #[inline]
    pub(crate) fn finish(&self, admit: Admit, outcome: Outcome, started_nanos: u64) {
        let shared: &Shared = &self.shared;
        let core = &shared.core;
        let clock = &shared.clock;
        let bits = match outcome {
            Outcome::Success => RECORDED,
            Outcome::Failure => RECORDED | FAILED,
            Outcome::Ignore => 0,
        };
        match core.settings().slow_call_nanos {
            Some(threshold) if bits != 0 => {
                let now = clock.now_nanos();
                let slow = if now.saturating_sub(started_nanos) >= threshold {
                    SLOW
                } else {
                    0
                };
                core.record(admit, bits | slow, || now);
            }
            _ => core.record(admit, bits, || clock.now_nanos()),
        }
    }

    #[inline]
    pub(crate) fn cancel(&self, admit: Admit) {
        self.shared.core.cancel(admit);
    }
}

#[derive(Debug, Clone, Copy)]
enum WindowSpec {
    Count(usize),
    Time { length: Duration, buckets: usize },
}

/// Configures a [`Breaker`]. Every setting is checked by [`build`](Builder::build).
#[derive(Clone)]
pub struct Builder {
    window: WindowSpec,
    failure_rate: f64,
    slow_call: Option<(Duration, f64)>,
    minimum_calls: u64,
    half_open_permits: u32,
    half_open_max_wait: Option<Duration>,
    open_for: Duration,
    open_backoff: Option<(f64, Duration)>,
    initial: State,
    listener: Option<super::core::Listener>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("slow_call", &self.slow_call)
            .field("minimum_calls", &self.minimum_calls)
            .field("half_open_permits", &self.half_open_permits)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("open_for", &self.open_for)
            .field("open_backoff", &self.open_backoff)
            .field("initial", &self.initial)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            window: WindowSpec::Count(100),
            failure_rate: 0.5,
            slow_call: None,
            minimum_calls: 10,
            half_open_permits: 5,
            half_open_max_wait: Some(Duration::from_secs(30)),
            open_for: Duration::from_secs(30),
            open_backoff: None,
            initial: State::Closed,
            listener: None,
        }
    }
}

impl Builder {
    /// Judge the last `calls` calls (default 100; from 1 to 1,048,575, 2^20 - 1, the most the
    /// packed counters hold). Exact: each new call pushes out the oldest.
    #[must_use]
    pub fn count_window(mut self, calls: usize) -> Self {
        self.window = WindowSpec::Count(calls);
        self
    }

    /// Judge the calls of the last `length`, kept in `buckets` slices; the window slides one
    /// slice at a time (`length / buckets`). Memory and per-call cost do not grow with traffic.
    #[must_use]
    pub fn time_window(mut self, length: Duration, buckets: usize) -> Self {
        self.window = WindowSpec::Time { length, buckets };
        self
    }

    /// Open when at least this fraction of the window failed (default 0.5).
    #[must_use]
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate;
        self
    }

    /// Count calls slower than `threshold` as slow, and open when at least `rate` of the window
    /// was slow. Off by default.
    #[must_use]
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_call = Some((threshold, rate));
        self
    }

    /// Do not judge the window until it holds this many calls (default 10). With a count
    /// window, a larger number is taken as the window's size (as resilience4j does): a window
    /// never holds more calls than its size, so the breaker would never open.
    #[must_use]
    pub fn minimum_calls(mut self, calls: u64) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Let this many probes through when half-open (default 5); once all have finished, their
    /// failure and slow rates decide between closing and reopening.
    #[must_use]
    pub fn half_open_permits(mut self, permits: u32) -> Self {
        self.half_open_permits = permits;
        self
    }

    /// Reopen if the probes have not all finished within this time (default 30 s); `None` waits
    /// for them forever.
    #[must_use]
    pub fn half_open_max_wait(mut self, wait: Option<Duration>) -> Self {
        self.half_open_max_wait = wait;
        self
    }

    /// How long the circuit stays open before probing (default 30 s).
    #[must_use]
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self
    }

    /// Grow the open period by `multiplier` each time probing fails and the circuit reopens, up
    /// to `max`; it returns to the base duration when the circuit closes.
    #[must_use]
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_backoff = Some((multiplier, max));
        self
    }

    /// Start in another state: [`State::Disabled`], [`State::ForcedOpen`] or
    /// [`State::MetricsOnly`] (open and half-open start closed).
    #[must_use]
    pub fn initial_state(mut self, state: State) -> Self {
        self.initial = state;
        self
    }

    /// Call `listener(from, to)` after every state change, on the thread that made it. Keep it
    /// short: it runs inside a request.
    #[must_use]
    pub fn on_state_change(
        mut self,
        listener: impl Fn(State, State) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the settings and builds the breaker.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] names the first setting that is out of range.
    pub fn build(self) -> Result<Breaker, ConfigError> {
        Ok(self.validate()?.make())
    }

    /// Checks the settings once; the result makes any number of breakers (one per key).
    pub(crate) fn validate(self) -> Result<Validated, ConfigError> {
        let failure_rate_bp = rate_bp("failure rate", self.failure_rate)?;
        let (slow_call_nanos, slow_rate_bp) = match self.slow_call {
            Some((threshold, rate)) => {
                if threshold.is_zero() {
                    return Err(ConfigError::ZeroDuration {
                        name: "slow call threshold",
                    });
                }
                (
                    Some(duration_nanos(threshold)),
                    rate_bp("slow call rate", rate)?,
                )
            }
            None => (None, BASIS + 1),
        };
        count(
            "half-open permits",
            u64::from(self.half_open_permits),
            u64::from(MAX_HALF_OPEN_PERMITS),
        )?;
        if self.open_for.is_zero() {
            return Err(ConfigError::ZeroDuration {
                name: "open duration",
            });
        }
        if self.half_open_max_wait.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::ZeroDuration {
                name: "half-open max wait",
            });
        }
        let open_base_ms = duration_millis_ceil(self.open_for);
        let (open_multiplier, open_max_ms) = match self.open_backoff {
            Some((multiplier, max)) => {
                if !multiplier.is_finite() || multiplier < 1.0 {
                    return Err(ConfigError::Multiplier(multiplier));
                }
                (multiplier, duration_millis_ceil(max).max(open_base_ms))
            }
            None => (1.0, open_base_ms),
        };
        let mut minimum_calls = self.minimum_calls;
        let window = match self.window {
            WindowSpec::Count(calls) => {
                count("count window", calls as u64, MAX_COUNT_WINDOW as u64)?;
                minimum_calls = minimum_calls.min(calls as u64);
                WindowSpec::Count(calls)
            }
            WindowSpec::Time { length, buckets } => {
                count("time window buckets", buckets as u64, MAX_BUCKETS as u64)?;
                let bucket = duration_nanos(length) / buckets as u64;
                if bucket == 0 {
                    return Err(ConfigError::ZeroDuration {
                        name: "time window bucket",
                    });
                }
                WindowSpec::Time {
                    length: Duration::from_nanos(bucket),
                    buckets,
                }
            }
        };
        let settings = Settings {
            failure_rate_bp,
            slow_rate_bp,
            minimum_calls,
            half_open_permits: self.half_open_permits,
            half_open_max_ms: self
                .half_open_max_wait
                .map(|w| duration_millis_ceil(w).min(UNTIL_NEVER - 1)),
            open_base_ms,
            open_multiplier,
            open_max_ms,
            slow_call_nanos,
            initial: self.initial,
        };
        Ok(Validated {
            window,
            settings,
            listener: self.listener,
        })
    }
}

/// Settings that passed [`Builder::validate`]: every breaker made from them is valid.
#[derive(Clone)]
pub(crate) struct Validated {
    /// For a time window, `length` holds the bucket length.
    window: WindowSpec,
    settings: Settings,
    listener: Option<super::core::Listener>,
}

impl fmt::Debug for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("window", &self.window)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Validated {
    /// A new breaker with these settings.
    pub(crate) fn make(&self) -> Breaker {
        let window = match self.window {
            WindowSpec::Count(calls) => Window::Count(CountWindow::new(calls)),
            WindowSpec::Time { length, buckets } => {
                Window::Time(TimeWindow::new(duration_nanos(length), buckets))
            }
        };
        Breaker {
            shared: Handle::Counted(Arc::new(Shared {
                core: Core::new(window, self.settings.clone(), self.listener.clone()),
                clock: Clock::new(),
            })),
        }
    }
}

fn rate_bp(name: &'static str, value: f64) -> Result<u64, ConfigError> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(ConfigError::Rate { name, value });
    }
    Ok((value * BASIS as f64).round() as u64)
}

fn count(name: &'static str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value == 0 || value > max {
        return Err(ConfigError::Count { name, value, max });
    }
    Ok(())
}
