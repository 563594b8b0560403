//! Client-side balancing over discovered endpoints: tower's power of two choices on PeakEWMA,
//! with outlier ejection and a clear error when a service has no endpoint left.
//!
//! [`Balanced::new`] takes any source of [`Snapshot`]s (Consul, DNS SRV, a static list) and a
//! function that makes a service for one [`Endpoint`]. Each endpoint service is wrapped in an
//! [`Outlier`] detector, then in tower's [`PeakEwma`](tower::load::PeakEwma) load, and the set feeds tower's
//! [`Balance`](tower::balance::p2c::Balance) (p2c):
//!
//! ```text
//! Balanced ─► p2c::Balance ─► PeakEwma ─► Outlier ─► your endpoint service (breaker, timeout, client)
//! ```
//!
//! * **Outlier ejection.** An endpoint whose calls fail `consecutive_failures` times in a row,
//!   or that answers with a local rejection (its own circuit breaker is open), is removed from
//!   the balancer for a back-off period (`base_ejection`, doubled on each repeated ejection up to
//!   `max_ejection`) and then readmitted with a fresh service.
//! * **Never the last capacity.** At most `max_ejected_percent` of the endpoints (rounded down)
//!   are out at once: a service with one endpoint never loses it, and at least half of a
//!   service's endpoints (by default) always take traffic, whatever their failures say (Envoy's
//!   panic threshold serves the same end). An endpoint whose breaker is open but that may not
//!   be ejected answers with its breaker's refusal, a local rejection: the caller gets a `503`
//!   with `Retry-After` at once, and a retry layer does not ask again.
//! * **Overload is not failure.** A busy endpoint's request to back off (`503` with
//!   `Retry-After`, `429`) and a caller's own deadline running out are ignored by
//!   [`HttpStatus`] and [`ErrorsFail`]: callers slow down (an adaptive limit, the retry budget)
//!   rather than eject a healthy endpoint under a flash crowd.
//! * **Ejection is retryable.** The call that finds an endpoint unavailable fails with
//!   [`Ejected`], which is not a local rejection, so a retry layer above the balancer sends it
//!   again, and the balancer picks another endpoint.
//! * **Never a hang.** When a service has no endpoint at all, the balancer answers at once with
//!   [`NoEndpoints`], which names the service; it is a local rejection, so a retry layer above
//!   does not ask again.
//!
//! `Balanced` is not `Clone` (the balancer's state is one set); share it behind [`Shared`]
//! (a lock, no extra task) or `tower::buffer::Buffer`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready as ready_future};
use mainstay_resilience::rejection::NoEndpoint;
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::balance::p2c;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{BoxError, Service};

use crate::{Endpoint, Snapshot};

/// What one call says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered well.
    Success,
    /// The endpoint failed this call; enough of these in a row eject it.
    Failure,
    /// The endpoint is unavailable (its circuit breaker is open): eject it now.
    Unavailable,
    /// The call says nothing about the endpoint (the caller's deadline ran out): neither a
    /// success nor a failure.
    Ignore,
}

/// Judges calls for the outlier detector.
pub trait Classify<Res, E> {
    /// What `result` says about the endpoint that produced it.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

/// Every error is a failure, but a local rejection (an open circuit, a full bulkhead: see
/// [`mainstay_resilience::rejection`]) makes the endpoint unavailable, and a deadline that ran
/// out ([`DeadlineExceeded`](mainstay_resilience::deadline::DeadlineExceeded)) is the caller's
/// budget spent and is ignored. Every response is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsFail;

impl<Res, E: 'static> Classify<Res, E> for ErrorsFail {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => classify_error(error),
        }
    }
}

/// As [`ErrorsFail`], and `5xx` responses are failures too (Envoy's `consecutive_5xx`), but for
/// a `504` that says the caller's own deadline ran out
/// ([`DEADLINE_RAN_OUT`](mainstay_resilience::http::DEADLINE_RAN_OUT)) and an overloaded
/// endpoint's request to back off (`503` with `Retry-After`, see
/// [`overloaded`](mainstay_resilience::http::overloaded)), which are ignored: a busy endpoint is
/// slowed down by its callers, not ejected.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatus;

impl<B, E: 'static> Classify<http::Response<B>, E> for HttpStatus {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(response)
                if mainstay_resilience::http::deadline_ran_out(response.headers())
                    || mainstay_resilience::http::overloaded(response) =>
            {
                Outcome::Ignore
            }
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(error) => classify_error(error),
        }
    }
}

/// As [`HttpStatus`], and a timeout is no failure either: only what says an endpoint is
/// **broken** (transport errors, `5xx` other than an overloaded endpoint's request to back off)
/// counts towards its ejection. Slowness is the balancer's to weigh (PeakEWMA sends less to a
/// slow endpoint, and nearly nothing to a hung one) and an adaptive limit's to back off from:
/// under a flash crowd every endpoint is slow, and ejecting some would only load the rest more.
/// Pairs with mainstay-resilience's `http::BrokenOnly` for the endpoint's breaker.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokenOnly;

impl<B, E: 'static> Classify<http::Response<B>, E> for BrokenOnly {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Err(error) if mainstay_resilience::timeout::error::timed_out(error) => Outcome::Ignore,
            other => HttpStatus.classify(other),
        }
    }
}

fn classify_error<E: 'static>(error: &E) -> Outcome {
    if mainstay_resilience::rejection::local_rejection_of(error).is_some() {
        Outcome::Unavailable
    } else if mainstay_resilience::deadline::deadline_exceeded_of(error).is_some() {
        Outcome::Ignore
    } else {
        Outcome::Failure
    }
}

/// When endpoints are ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierOptions {
    /// Failures in a row that eject an endpoint (default 5).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts (default 10 s); each repeated ejection doubles it ...
    pub base_ejection: Duration,
    /// ... up to this (default 5 minutes). An endpoint that then serves this long without
    /// being ejected starts again from `base_ejection`.
    pub max_ejection: Duration,
    /// The most endpoints out at once, in percent of those discovered, rounded down (default
    /// 50): a service with a single endpoint never loses it.
    pub max_ejected_percent: u8,
}

impl Default for OutlierOptions {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// How a [`Balanced`] service balances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceOptions {
    /// Outlier ejection.
    pub outlier: OutlierOptions,
    /// The round-trip time assumed for an endpoint that has not answered yet (default 30 ms,
    /// at least 1 µs). An endpoint new to the balancer, or readmitted, gets calls once the
    /// others' load exceeds this.
    pub default_rtt: Duration,
    /// How fast PeakEWMA forgets a slow answer (default 10 s, at least 1 ms).
    pub decay: Duration,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self {
            outlier: OutlierOptions::default(),
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// The service had no endpoint to send the call to.
///
/// Its `source()` is mainstay-resilience's [`NoEndpoint`], a local rejection: a retry layer
/// above does not ask again, and the problem layer answers `503`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy endpoint for service `{service}`")]
pub struct NoEndpoints {
    /// The service's name.
    pub service: Arc<str>,
    #[source]
    rejection: NoEndpoint,
}

/// The endpoint was unavailable (its circuit breaker refused the call) and has been ejected;
/// another attempt goes to another endpoint.
///
/// On purpose, this error has no `source()`: the refusal it replaces was local to one endpoint,
/// and a retry layer must not mistake it for a refusal of the whole service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint `{endpoint}` of service `{service}` is unavailable ({reason}); ejected")]
pub struct Ejected {
    /// The service's name.
    pub service: Arc<str>,
    /// The endpoint's id.
    pub endpoint: String,
    /// What the endpoint's own layers said.
    pub reason: String,
}

/// What the discover stream learns from its source, its endpoints and its timers.
enum Event {
    Snapshot(Arc<Vec<Endpoint>>),
    Eject {
        id: String,
        generation: u64,
    },
    /// The end of the ejection of `id`'s service of `generation`: a timer of an earlier
    /// ejection (the endpoint left and came back meanwhile) ends nothing.
    Readmit {
        id: String,
        generation: u64,
    },
}

/// How many of a service's endpoints are out, shared by its endpoints (which decide to eject
/// themselves) and the discover stream (which readmits them and follows the source).
#[derive(Debug)]
struct Budget {
    known: AtomicUsize,
    out: AtomicUsize,
    max_percent: usize,
}

impl Budget {
    /// Takes one ejection from the budget; `false` when that would take out more than allowed.
    fn take(&self) -> bool {
        let allowed = self.known.load(Ordering::Acquire) * self.max_percent / 100;
        self.out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                (out < allowed).then_some(out + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let _ = self
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                out.checked_sub(1)
            });
    }
}

/// The shared health of one endpoint service, from insertion to removal.
struct Health {
    service: Arc<str>,
    id: String,
    generation: u64,
    threshold: u32,
    consecutive: AtomicU32,
    ejected: AtomicBool,
    budget: Arc<Budget>,
    events: mpsc::UnboundedSender<Event>,
}

impl Health {
    /// Ejects the endpoint if the budget allows; `true` when it is out (now or already).
    fn eject(&self) -> bool {
        if self.ejected.load(Ordering::Acquire) {
            return true;
        }
        if !self.budget.take() {
            tracing::debug!(service = %self.service, endpoint = %self.id, "outlier kept: no more endpoints may be out");
            return false;
        }
        if self.ejected.swap(true, Ordering::AcqRel) {
            self.budget.give_back(); // another call ejected it first
            return true;
        }
        let _ = self.events.send(Event::Eject {
            id: self.id.clone(),
            generation: self.generation,
        });
        true
    }

    /// Records a call's outcome; `false` when it asked for an ejection that was refused.
    fn record(&self, outcome: Outcome) -> bool {
        match outcome {
            // A read, not a write, on the common path: no cache line bounced between cores.
            Outcome::Success => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => {
                if self.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
                    return self.eject();
                }
            }
            Outcome::Unavailable => return self.eject(),
            Outcome::Ignore => {}
        }
        true
    }
}

/// One endpoint's service, watched for outliers. Made by [`Balanced`]; see the
/// [module docs](self).
pub struct Outlier<S, C> {
    inner: S,
    classify: C,
    health: Arc<Health>,
}

impl<S, C> fmt::Debug for Outlier<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outlier")
            .field("service", &self.health.service)
            .field("endpoint", &self.health.id)
            .field("consecutive_failures", &self.health.consecutive)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for Outlier<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = OutlierFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        OutlierFuture {
            inner: self.inner.call(request),
            classify: self.classify.clone(),
            health: Arc::clone(&self.health),
        }
    }
}

pin_project! {
    /// The future of an [`Outlier`] call.
    pub struct OutlierFuture<F, C> {
        #[pin]
        inner: F,
        classify: C,
        health: Arc<Health>,
    }
}

impl<F, C> fmt::Debug for OutlierFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierFuture")
            .field("endpoint", &self.health.id)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for OutlierFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let outcome = this.classify.classify(result.as_ref());
        let ejected = this.health.record(outcome);
        Poll::Ready(match result {
            Ok(response) => Ok(response),
            // Out of the balancer now: another attempt goes elsewhere.
            Err(error) if outcome == Outcome::Unavailable && ejected => {
                let error: BoxError = error.into();
                Err(Box::new(Ejected {
                    service: Arc::clone(&this.health.service),
                    endpoint: this.health.id.clone(),
                    reason: error.to_string(),
                }))
            }
            Err(error) => Err(error.into()),
        })
    }
}

/// An endpoint's ejection history.
struct Ejection {
    /// Ejections since the endpoint last served `max_ejection` without one.
    times: u32,
    /// Whether the endpoint is out now.
    out: bool,
    /// When it was last readmitted.
    readmitted: Option<Instant>,
    /// The generation of the service the current ejection took out.
    generation: u64,
}

/// Aborts the source-forwarding task when the discover stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A [`tower::discover::Discover`] stream of endpoint services from a [`Snapshot`] source,
/// with outlier ejection. Built by [`Balanced::new`]; public for callers that want to feed
/// another balancer.
pub struct EndpointDiscover<M, S, C> {
    service: Arc<str>,
    make: M,
    classify: C,
    options: OutlierOptions,
    events: mpsc::UnboundedReceiver<Event>,
    sender: mpsc::UnboundedSender<Event>,
    known: HashMap<String, Endpoint>,
    /// Endpoints handed to the balancer, with the generation of their service.
    active: HashMap<String, u64>,
    ejections: HashMap<String, Ejection>,
    pending: VecDeque<Change<String, Outlier<S, C>>>,
    live: Arc<AtomicUsize>,
    budget: Arc<Budget>,
    generation: u64,
    _source: AbortOnDrop,
}

// The stream is never pinned structurally: every field is moved freely.
impl<M, S, C> Unpin for EndpointDiscover<M, S, C> {}

impl<M, S, C> fmt::Debug for EndpointDiscover<M, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointDiscover")
            .field("service", &self.service)
            .field("known", &self.known.len())
            .field("active", &self.active.len())
            .finish_non_exhaustive()
    }
}

impl<M, S, C> EndpointDiscover<M, S, C>
where
    M: FnMut(&Endpoint) -> S,
    C: Clone,
{
    /// Follows `source`, making a service per endpoint with `make`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (a task forwards the source's changes).
    pub fn new(
        service: impl Into<Arc<str>>,
        mut source: watch::Receiver<Snapshot>,
        make: M,
        classify: C,
        options: OutlierOptions,
    ) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        let first = Arc::clone(&source.borrow_and_update().endpoints);
        let forward = sender.clone();
        let task = tokio::spawn(async move {
            while source.changed().await.is_ok() {
                let endpoints = Arc::clone(&source.borrow_and_update().endpoints);
                if forward.send(Event::Snapshot(endpoints)).is_err() {
                    return;
                }
            }
        });
        let mut discover = Self {
            service: service.into(),
            make,
            classify,
            options,
            events,
            sender,
            known: HashMap::new(),
            active: HashMap::new(),
            ejections: HashMap::new(),
            pending: VecDeque::new(),
            live: Arc::new(AtomicUsize::new(0)),
            budget: Arc::new(Budget {
                known: AtomicUsize::new(0),
                out: AtomicUsize::new(0),
                max_percent: usize::from(options.max_ejected_percent.min(100)),
            }),
            generation: 0,
            _source: AbortOnDrop(task),
        };
        discover.handle(Event::Snapshot(first));
        discover
    }

    fn insert(&mut self, id: &str) {
        let Some(endpoint) = self.known.get(id) else {
            return;
        };
        self.generation += 1;
        let health = Arc::new(Health {
            service: Arc::clone(&self.service),
            id: id.to_owned(),
            generation: self.generation,
            threshold: self.options.consecutive_failures.max(1),
            consecutive: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            budget: Arc::clone(&self.budget),
            events: self.sender.clone(),
        });
        let service = Outlier {
            inner: (self.make)(endpoint),
            classify: self.classify.clone(),
            health,
        };
        self.active.insert(id.to_owned(), self.generation);
        self.pending
            .push_back(Change::Insert(id.to_owned(), service));
    }

    fn remove(&mut self, id: &str) {
        if self.active.remove(id).is_some() {
            self.pending.push_back(Change::Remove(id.to_owned()));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Snapshot(endpoints) => {
                let next: HashMap<String, Endpoint> = endpoints
                    .iter()
                    .map(|e| (e.id.clone(), e.clone()))
                    .collect();
                let gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|id| !next.contains_key(*id))
                    .cloned()
                    .collect();
                for id in &gone {
                    self.remove(id);
                    if self.ejections.remove(id).is_some_and(|e| e.out) {
                        self.budget.give_back();
                    }
                }
                self.budget.known.store(next.len(), Ordering::Release);
                let previous = std::mem::replace(&mut self.known, next);
                let mut ids: Vec<String> = self.known.keys().cloned().collect();
                ids.sort();
                for id in ids {
                    let out = self.ejections.get(&id).is_some_and(|e| e.out);
                    let changed = previous.get(&id) != self.known.get(&id);
                    if !out && (changed || !self.active.contains_key(&id)) {
                        self.insert(&id);
                    }
                }
            }
            Event::Eject { id, generation } => {
                if self.active.get(&id) != Some(&generation) {
                    // An older service of a readmitted or replaced endpoint: nothing is out.
                    self.budget.give_back();
                    return;
                }
                let options = self.options;
                let ejection = self.ejections.entry(id.clone()).or_insert(Ejection {
                    times: 0,
                    out: false,
                    readmitted: None,
                    generation,
                });
                if ejection
                    .readmitted
                    .is_some_and(|at| at.elapsed() >= options.max_ejection)
                {
                    ejection.times = 0;
                }
                let period = options
                    .base_ejection
                    .saturating_mul(1u32 << ejection.times.min(16))
                    .min(options.max_ejection);
                ejection.times += 1;
                ejection.out = true;
                ejection.generation = generation;
                tracing::warn!(service = %self.service, endpoint = %id, ?period, "endpoint ejected");
                self.remove(&id);
                let events = self.sender.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(period).await;
                    let _ = events.send(Event::Readmit { id, generation });
                });
            }
            Event::Readmit { id, generation } => {
                if let Some(ejection) = self.ejections.get_mut(&id) {
                    if !ejection.out || ejection.generation != generation {
                        return;
                    }
                    ejection.out = false;
                    self.budget.give_back();
                    ejection.readmitted = Some(Instant::now());
                    tracing::info!(service = %self.service, endpoint = %id, "endpoint readmitted");
                    self.insert(&id);
                }
            }
        }
        self.live.store(self.active.len(), Ordering::Release);
    }
}

impl<M, S, C> futures_util::Stream for EndpointDiscover<M, S, C>
where
    M: FnMut(&Endpoint) -> S,
    C: Clone,
{
    type Item = Result<Change<String, Outlier<S, C>>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match ready!(self.events.poll_recv(cx)) {
                Some(event) => self.handle(event),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A balanced service over discovered endpoints; see the [module docs](self).
pub struct Balanced<M, S, C, Req>
where
    M: FnMut(&Endpoint) -> S,
    C: Clone,
{
    inner: p2c::Balance<PeakEwmaDiscover<EndpointDiscover<M, S, C>>, Req>,
    live: Arc<AtomicUsize>,
    service: Arc<str>,
    refuse: bool,
}

impl<M, S, C, Req> fmt::Debug for Balanced<M, S, C, Req>
where
    M: FnMut(&Endpoint) -> S,
    C: Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.service)
            .field("endpoints", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<M, S, C, Req> Balanced<M, S, C, Req>
where
    M: FnMut(&Endpoint) -> S,
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    /// Balances calls to `service` over the endpoints `source` publishes, making each
    /// endpoint's service with `make` and judging its calls with `classify`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(
        service: impl Into<Arc<str>>,
        source: watch::Receiver<Snapshot>,
        make: M,
        classify: C,
        options: BalanceOptions,
    ) -> Self {
        let service = service.into();
        let discover = EndpointDiscover::new(
            Arc::clone(&service),
            source,
            make,
            classify,
            options.outlier,
        );
        let live = Arc::clone(&discover.live);
        // tower panics on a zero RTT or decay.
        let discover = PeakEwmaDiscover::new::<Req>(
            discover,
            options.default_rtt.max(Duration::from_micros(1)),
            options.decay.max(Duration::from_millis(1)),
            CompleteOnResponse::default(),
        );
        Self {
            inner: p2c::Balance::new(discover),
            live,
            service,
            refuse: false,
        }
    }

    /// How many endpoints the balancer has now (discovered and not ejected).
    #[must_use]
    pub fn endpoints(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl<M, S, C, Req> Service<Req> for Balanced<M, S, C, Req>
where
    M: FnMut(&Endpoint) -> S,
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        Ready<Result<S::Response, BoxError>>,
        <p2c::Balance<PeakEwmaDiscover<EndpointDiscover<M, S, C>>, Req> as Service<Req>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(result) => {
                self.refuse = false;
                Poll::Ready(result)
            }
            // The balancer has drained discovery before it answers Pending, so `live` is up to
            // date: with no endpoint at all, waiting would be a hang.
            Poll::Pending if self.live.load(Ordering::Acquire) == 0 => {
                self.refuse = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.refuse = false;
                Poll::Pending
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if std::mem::take(&mut self.refuse) {
            return Either::Left(ready_future(Err(Box::new(NoEndpoints {
                service: Arc::clone(&self.service),
                rejection: NoEndpoint,
            }))));
        }
        Either::Right(self.inner.call(request))
    }
}

/// A service shared by its clones behind a lock, without `tower::buffer::Buffer`'s worker
/// task: each call takes the lock, waits for the service to be ready and calls it, all within
/// the caller's own poll. Meant for [`Balanced`], whose readiness and `call` are short and
/// synchronous.
///
/// Compared with `Buffer`, a call skips a channel send, a wake-up of the worker task and a
/// wake-up back; under load that is most of what sharing costs. The price is that while no
/// endpoint is ready, only the last caller to look is woken by the balancer itself, so every
/// waiting call also looks again every `repoll` (1 ms by default): none waits forever. The
/// lock is never held across an `.await`.
///
/// `poll_ready` is always ready; readiness is awaited inside the call.
pub struct Shared<S> {
    inner: Arc<std::sync::Mutex<S>>,
    repoll: Duration,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            repoll: self.repoll,
        }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("repoll", &self.repoll)
            .finish_non_exhaustive()
    }
}

impl<S> Shared<S> {
    /// Shares `service`.
    #[must_use]
    pub fn new(service: S) -> Self {
        Self {
            inner: Arc::new(std::sync::Mutex::new(service)),
            repoll: Duration::from_millis(1),
        }
    }

    /// How often a call waiting for readiness looks again (default 1 ms).
    #[must_use]
    pub fn repoll(mut self, every: Duration) -> Self {
        self.repoll = every.max(Duration::from_micros(100));
        self
    }
}

impl<S, Req> Service<Req> for Shared<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = SharedFuture<S, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        SharedFuture {
            state: SharedState::Waiting {
                inner: Arc::clone(&self.inner),
                request: Some(request),
                repoll: self.repoll,
                sleep: None,
            },
        }
    }
}

pin_project! {
    /// The future of a [`Shared`] call.
    pub struct SharedFuture<S: Service<Req>, Req> {
        #[pin]
        state: SharedState<S, Req>,
    }
}

pin_project! {
    #[project = SharedStateProj]
    enum SharedState<S: Service<Req>, Req> {
        Waiting {
            inner: Arc<std::sync::Mutex<S>>,
            request: Option<Req>,
            repoll: Duration,
            sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for SharedFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for SharedFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let called = match this.state.as_mut().project() {
                SharedStateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                SharedStateProj::Waiting {
                    inner,
                    request,
                    repoll,
                    sleep,
                } => {
                    let mut service = inner
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let Some(request) = request.take() else {
                                return Poll::Ready(Err(
                                    "a shared call was polled after it was sent".into(),
                                ));
                            };
                            service.call(request)
                        }
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                        Poll::Pending => {
                            drop(service);
                            let timer =
                                sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*repoll)));
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            *sleep = None; // look again now, and arm a new timer if still not ready
                            continue;
                        }
                    }
                }
            };
            this.state.set(SharedState::Called { future: called });
        }
    }
}
