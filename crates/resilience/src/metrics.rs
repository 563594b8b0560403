//! The state of the resilience layers as Prometheus metrics (feature `metrics`).
//!
//! [`ResilienceCollector`] is a prometheus-client [`Collector`]: register the components a
//! stack is built from (breakers, bulkheads, retry budgets, adaptive limits, rate limiters)
//! under the upstream service (and, for breakers, the endpoint) they guard, and register the
//! collector once with a prometheus-client registry, such as mainstay-telemetry's
//! `Metrics::register_collector`. Every value is read at scrape time from state the layers
//! keep anyway; the only cost on the request path is one relaxed increment per refused call.
//!
//! | metric | type | labels | what it says |
//! | --- | --- | --- | --- |
//! | `resilience_circuit_breaker_state` | gauge | `service`, `endpoint`, `state` | 1 for the breaker's state, 0 for the others (`closed`, `open`, `half_open`, `forced_open`, `disabled`, `metrics_only`) |
//! | `resilience_circuit_breaker_refused_calls_total` | counter | `service`, `endpoint` | calls refused because the circuit was open |
//! | `resilience_circuit_breaker_window_calls` | gauge | `service`, `endpoint` | calls in the sliding window |
//! | `resilience_circuit_breaker_window_failed_calls` | gauge | `service`, `endpoint` | failed calls in the sliding window |
//! | `resilience_bulkhead_in_flight_calls` | gauge | `service` | calls holding a slot |
//! | `resilience_bulkhead_capacity_calls` | gauge | `service` | slots in all |
//! | `resilience_bulkhead_rejected_calls_total` | counter | `service` | calls refused for want of a slot |
//! | `resilience_retry_budget_remaining_retries` | gauge | `service` | retries the budget allows now |
//! | `resilience_retry_budget_exhausted_total` | counter | `service` | retries refused because the budget was spent |
//! | `resilience_adaptive_limit_calls` | gauge | `service` | the current concurrency limit |
//! | `resilience_adaptive_in_flight_calls` | gauge | `service` | calls in flight under the limit |
//! | `resilience_adaptive_shed_calls_total` | counter | `service` | calls shed at the limit |
//! | `resilience_rate_limit_refused_calls_total` | counter | `limiter` | calls refused by the limiter |
//! | `resilience_rate_limit_tracked_keys` | gauge | `limiter` | keys a keyed limiter tracks |
//!
//! Labels are bounded: they come from the registrations, never from requests, and each family
//! holds at most [`MAX_SERIES`] series (later registrations are ignored). Registering the same
//! labels again replaces the earlier component, so an endpoint that leaves and comes back has
//! one series. A breaker is held weakly: when the balancer drops an endpoint's stack, its
//! series leave at the next scrape.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::bulkhead::BulkheadLayer;
//! use mainstay_resilience::circuit_breaker::Breaker;
//! use mainstay_resilience::metrics::ResilienceCollector;
//! use mainstay_resilience::retry::RetryBudget;
//! use prometheus_client::registry::Registry;
//!
//! let collector = ResilienceCollector::new();
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(collector.clone()));
//!
//! let breaker = Breaker::builder().build()?;
//! collector.breaker("catalog", "10.0.0.7:8080", &breaker);
//! collector.bulkhead("catalog", &BulkheadLayer::new(64));
//! collector.retry_budget("catalog", &RetryBudget::new(Duration::from_secs(10), 10, 0.2));
//!
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! assert!(text.contains(
//!     r#"resilience_circuit_breaker_state{service="catalog",endpoint="10.0.0.7:8080",state="closed"} 1"#
//! ));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

// With `metrics` but none of the components it exports, there is nothing to write.
#![cfg_attr(
    not(any(
        feature = "circuit-breaker",
        feature = "bulkhead",
        feature = "retry",
        feature = "adaptive",
        feature = "rate-limit"
    )),
    allow(dead_code, unused_imports)
)]

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The most series a family holds; registrations beyond it are ignored.
pub const MAX_SERIES: usize = 4096;

/// Collects the state of registered resilience components at each scrape; cheap to clone (the
/// clones share the registrations). See the [module docs](self).
#[derive(Clone, Default)]
pub struct ResilienceCollector {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for ResilienceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceCollector")
            .finish_non_exhaustive()
    }
}

#[cfg(any(feature = "adaptive", feature = "rate-limit"))]
type Probe<T> = Box<dyn Fn() -> T + Send + Sync>;
/// Components by their label values.
type Rows<const N: usize, T> = Vec<([String; N], T)>;

#[derive(Default)]
struct Inner {
    #[cfg(feature = "circuit-breaker")]
    breakers: Rows<2, crate::circuit_breaker::WeakBreaker>,
    #[cfg(feature = "bulkhead")]
    bulkheads: Rows<1, crate::bulkhead::BulkheadLayer>,
    #[cfg(feature = "retry")]
    budgets: Rows<1, crate::retry::RetryBudget>,
    /// Limit, in flight, shed.
    #[cfg(feature = "adaptive")]
    limits: Rows<1, Probe<(usize, usize, u64)>>,
    /// Refused, tracked keys (keyed limiters only).
    #[cfg(feature = "rate-limit")]
    rate_limits: Rows<1, Probe<(u64, Option<usize>)>>,
}

/// Puts `value` under `labels`, replacing what was there, within [`MAX_SERIES`].
fn upsert<L: PartialEq, T>(entries: &mut Vec<(L, T)>, labels: L, value: T) {
    if let Some(entry) = entries.iter_mut().find(|(l, _)| *l == labels) {
        entry.1 = value;
    } else if entries.len() < MAX_SERIES {
        entries.push((labels, value));
    }
}

impl ResilienceCollector {
    /// A collector with nothing registered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // The lock guards plain vectors: a panic while holding it leaves them consistent.
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Exports `breaker`, the breaker of `endpoint` of `service`, while it lives.
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    pub fn breaker(
        &self,
        service: &str,
        endpoint: &str,
        breaker: &crate::circuit_breaker::Breaker,
    ) {
        let labels = [service.to_owned(), endpoint.to_owned()];
        let weak = breaker.downgrade();
        self.with(|inner| upsert(&mut inner.breakers, labels, weak));
    }

    /// Every registered breaker still alive, with its service and endpoint, in the order they
    /// were registered: for an operator's console that shows them and switches them
    /// ([`Breaker::force_open`](crate::circuit_breaker::Breaker::force_open),
    /// [`Breaker::reset`](crate::circuit_breaker::Breaker::reset), …).
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    #[must_use]
    pub fn breakers(&self) -> Vec<(String, String, crate::circuit_breaker::Breaker)> {
        self.with(|inner| {
            inner
                .breakers
                .iter()
                .filter_map(|([service, endpoint], weak)| {
                    Some((service.clone(), endpoint.clone(), weak.upgrade()?))
                })
                .collect()
        })
    }

    /// Exports the bulkhead of `service`.
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    pub fn bulkhead(&self, service: &str, bulkhead: &crate::bulkhead::BulkheadLayer) {
        let labels = [service.to_owned()];
        let bulkhead = bulkhead.clone();
        self.with(|inner| upsert(&mut inner.bulkheads, labels, bulkhead));
    }

    /// Exports the retry budget of `service`.
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    pub fn retry_budget(&self, service: &str, budget: &crate::retry::RetryBudget) {
        let labels = [service.to_owned()];
        let budget = budget.clone();
        self.with(|inner| upsert(&mut inner.budgets, labels, budget));
    }

    /// Exports the adaptive limit of `service`.
    #[cfg(feature = "adaptive")]
    #[cfg_attr(docsrs, doc(cfg(feature = "adaptive")))]
    pub fn adaptive_limit<A, C>(
        &self,
        service: &str,
        limit: &crate::adaptive::AdaptiveLimitLayer<A, C>,
    ) where
        A: Send + Sync + 'static,
        C: Clone + Send + Sync + 'static,
    {
        let labels = [service.to_owned()];
        let limit = limit.clone();
        let probe: Probe<_> = Box::new(move || (limit.limit(), limit.in_flight(), limit.shed()));
        self.with(|inner| upsert(&mut inner.limits, labels, probe));
    }

    /// Exports a rate limiter under the name `limiter`.
    #[cfg(feature = "rate-limit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    pub fn rate_limit<H>(&self, limiter: &str, layer: &crate::rate_limit::RateLimitLayer<H>)
    where
        H: Clone + Send + Sync + 'static,
    {
        let labels = [limiter.to_owned()];
        let layer = layer.clone();
        let probe: Probe<_> = Box::new(move || (layer.refused(), None));
        self.with(|inner| upsert(&mut inner.rate_limits, labels, probe));
    }

    /// Exports a keyed rate limiter under the name `limiter`.
    #[cfg(feature = "rate-limit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    pub fn keyed_rate_limit<M, K, H>(
        &self,
        limiter: &str,
        layer: &crate::rate_limit::KeyedRateLimitLayer<M, K, H>,
    ) where
        M: Clone + Send + Sync + 'static,
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
    {
        let labels = [limiter.to_owned()];
        let layer = layer.clone();
        let probe: Probe<_> = Box::new(move || (layer.refused(), Some(layer.tracked_keys())));
        self.with(|inner| upsert(&mut inner.rate_limits, labels, probe));
    }
}

/// One metric family: its descriptor once, then a series per label set. Nothing is written for
/// a family without series.
fn family<L, M, I>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: I,
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
    I: IntoIterator<Item = (L, M)>,
{
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(value: impl TryInto<i64>) -> ConstGauge {
    ConstGauge::new(value.try_into().unwrap_or(i64::MAX))
}

fn labels<'a, const N: usize>(
    names: [&'static str; N],
    values: &'a [String; N],
) -> [(&'static str, &'a str); N] {
    std::array::from_fn(|i| (names[i], values[i].as_str()))
}

impl Collector for ResilienceCollector {
    #[allow(clippy::too_many_lines)] // one block per component, each a table row or two
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let encoder = &mut encoder;
        self.with(|inner| {
            #[cfg(feature = "circuit-breaker")]
            {
                use crate::circuit_breaker::State;
                // Breakers dropped with their endpoints leave here.
                inner.breakers.retain(|(_, weak)| weak.upgrade().is_some());
                let live: Vec<_> = inner
                    .breakers
                    .iter()
                    .filter_map(|(l, weak)| {
                        Some((
                            labels(["service", "endpoint"], l),
                            weak.upgrade()?.metrics(),
                        ))
                    })
                    .collect();
                family(
                    encoder,
                    "resilience_circuit_breaker_state",
                    "The breaker's state: 1 for the current one",
                    live.iter().flat_map(|([service, endpoint], m)| {
                        State::ALL.iter().map(move |state| {
                            (
                                [*service, *endpoint, ("state", state.as_str())],
                                ConstGauge::new(i64::from(m.state == *state)),
                            )
                        })
                    }),
                )?;
                family(
                    encoder,
                    "resilience_circuit_breaker_refused_calls",
                    "Calls refused because the circuit was open",
                    live.iter().map(|(l, m)| (*l, ConstCounter::new(m.refused))),
                )?;
                family(
                    encoder,
                    "resilience_circuit_breaker_window_calls",
                    "Calls in the breaker's sliding window",
                    live.iter().map(|(l, m)| (*l, gauge(m.calls))),
                )?;
                family(
                    encoder,
                    "resilience_circuit_breaker_window_failed_calls",
                    "Failed calls in the breaker's sliding window",
                    live.iter().map(|(l, m)| (*l, gauge(m.failures))),
                )?;
            }
            #[cfg(feature = "bulkhead")]
            {
                let rows = || {
                    inner
                        .bulkheads
                        .iter()
                        .map(|(l, b)| (labels(["service"], l), b))
                };
                family(
                    encoder,
                    "resilience_bulkhead_in_flight_calls",
                    "Calls holding a bulkhead slot",
                    rows().map(|(l, b)| (l, gauge(b.capacity().saturating_sub(b.available())))),
                )?;
                family(
                    encoder,
                    "resilience_bulkhead_capacity_calls",
                    "Bulkhead slots in all",
                    rows().map(|(l, b)| (l, gauge(b.capacity()))),
                )?;
                family(
                    encoder,
                    "resilience_bulkhead_rejected_calls",
                    "Calls refused for want of a bulkhead slot",
                    rows().map(|(l, b)| (l, ConstCounter::new(b.rejected()))),
                )?;
            }
            #[cfg(feature = "retry")]
            {
                let rows = || {
                    inner
                        .budgets
                        .iter()
                        .map(|(l, b)| (labels(["service"], l), b))
                };
                family(
                    encoder,
                    "resilience_retry_budget_remaining_retries",
                    "Retries the budget allows now",
                    rows().map(|(l, b)| (l, gauge(b.remaining()))),
                )?;
                family(
                    encoder,
                    "resilience_retry_budget_exhausted",
                    "Retries refused because the budget was spent",
                    rows().map(|(l, b)| (l, ConstCounter::new(b.exhausted()))),
                )?;
            }
            #[cfg(feature = "adaptive")]
            {
                let rows: Vec<_> = inner
                    .limits
                    .iter()
                    .map(|(l, probe)| (labels(["service"], l), probe()))
                    .collect();
                family(
                    encoder,
                    "resilience_adaptive_limit_calls",
                    "The adaptive concurrency limit",
                    rows.iter().map(|(l, (limit, _, _))| (*l, gauge(*limit))),
                )?;
                family(
                    encoder,
                    "resilience_adaptive_in_flight_calls",
                    "Calls in flight under the adaptive limit",
                    rows.iter()
                        .map(|(l, (_, in_flight, _))| (*l, gauge(*in_flight))),
                )?;
                family(
                    encoder,
                    "resilience_adaptive_shed_calls",
                    "Calls shed at the adaptive limit",
                    rows.iter()
                        .map(|(l, (_, _, shed))| (*l, ConstCounter::new(*shed))),
                )?;
            }
            #[cfg(feature = "rate-limit")]
            {
                let rows: Vec<_> = inner
                    .rate_limits
                    .iter()
                    .map(|(l, probe)| (labels(["limiter"], l), probe()))
                    .collect();
                family(
                    encoder,
                    "resilience_rate_limit_refused_calls",
                    "Calls refused by the rate limiter",
                    rows.iter()
                        .map(|(l, (refused, _))| (*l, ConstCounter::new(*refused))),
                )?;
                family(
                    encoder,
                    "resilience_rate_limit_tracked_keys",
                    "Keys a keyed rate limiter tracks",
                    rows.iter()
                        .filter_map(|(l, (_, keys))| Some((*l, gauge((*keys)?)))),
                )?;
            }
            let _ = (&encoder, &inner);
            Ok(())
        })
    }
}

#[cfg(all(test, not(mainstay_loom)))]
mod tests {
    use std::future::pending;
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::{MAX_SERIES, ResilienceCollector};
    use crate::adaptive::{AdaptiveLimitLayer, Aimd};
    use crate::bulkhead::BulkheadLayer;
    use crate::circuit_breaker::{Breaker, State};
    use crate::rate_limit::{KeyedRateLimitLayer, RateLimitLayer};
    use crate::retry::RetryBudget;

    fn scrape(collector: &ResilienceCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector.clone()));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn every_component_reports_its_state_and_prometheus_accepts_it() {
        let collector = ResilienceCollector::new();

        let breaker = Breaker::builder().build().unwrap();
        breaker.trip();
        let mut guarded = crate::circuit_breaker::CircuitBreakerLayer::new(breaker.clone())
            .layer(service_fn(|(): ()| async { Ok::<_, std::io::Error>(()) }));
        assert!(guarded.ready().await.unwrap().call(()).await.is_err());
        collector.breaker("catalog", "10.0.0.7:8080", &breaker);

        // One slot, held by a call that never ends; the next call is refused.
        let bulkhead = BulkheadLayer::new(1);
        let service = bulkhead.layer(service_fn(|(): ()| pending::<Result<(), std::io::Error>>()));
        let mut holder = service.clone();
        let held = holder.ready().await.unwrap().call(());
        let mut other = service.clone();
        assert!(other.ready().await.unwrap().call(()).await.is_err());
        collector.bulkhead("catalog", &bulkhead);

        let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.0);
        assert!(!budget.withdraw());
        collector.retry_budget("catalog", &budget);

        let limit = AdaptiveLimitLayer::new(Aimd::default().initial(1).min(1).max(1));
        let limited = limit.layer(service_fn(|(): ()| pending::<Result<(), std::io::Error>>()));
        let mut first = limited.clone();
        let in_flight = first.ready().await.unwrap().call(());
        let mut second = limited.clone();
        let shed = match second.ready().await {
            Ok(service) => service.call(()).await.is_err(),
            Err(_) => true,
        };
        assert!(shed);
        collector.adaptive_limit("catalog", &limit);

        let global = RateLimitLayer::new(1, Duration::from_secs(60)).unwrap();
        let mut once = global.layer(service_fn(|(): ()| async { Ok::<_, std::io::Error>(()) }));
        once.ready().await.unwrap().call(()).await.unwrap();
        assert!(once.ready().await.unwrap().call(()).await.is_err());
        collector.rate_limit("global", &global);
        let keyed = KeyedRateLimitLayer::<(), String>::new(1, Duration::from_secs(60), ()).unwrap();
        for key in ["a", "b", "a"] {
            let _ = keyed.check(&key.to_owned());
        }
        collector.keyed_rate_limit("per_client", &keyed);

        let text = scrape(&collector);
        let endpoint = r#"service="catalog",endpoint="10.0.0.7:8080""#;
        has(
            &text,
            &format!(r#"resilience_circuit_breaker_state{{{endpoint},state="open"}} 1"#),
        );
        has(
            &text,
            &format!(r#"resilience_circuit_breaker_state{{{endpoint},state="closed"}} 0"#),
        );
        has(
            &text,
            &format!("resilience_circuit_breaker_refused_calls_total{{{endpoint}}} 1"),
        );
        has(
            &text,
            r#"resilience_bulkhead_in_flight_calls{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_bulkhead_capacity_calls{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_bulkhead_rejected_calls_total{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_retry_budget_remaining_retries{service="catalog"} 0"#,
        );
        has(
            &text,
            r#"resilience_retry_budget_exhausted_total{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_adaptive_limit_calls{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_adaptive_in_flight_calls{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_adaptive_shed_calls_total{service="catalog"} 1"#,
        );
        has(
            &text,
            r#"resilience_rate_limit_refused_calls_total{limiter="global"} 1"#,
        );
        has(
            &text,
            r#"resilience_rate_limit_refused_calls_total{limiter="per_client"} 1"#,
        );
        has(
            &text,
            r#"resilience_rate_limit_tracked_keys{limiter="per_client"} 2"#,
        );
        assert!(!text.contains(r#"resilience_rate_limit_tracked_keys{limiter="global"}"#));
        // Prometheus's own check of this output, through mainstay-telemetry's `/metrics`, is in
        // crates/telemetry/tests/metrics_and_health.rs.
        drop((held, in_flight));
    }

    #[test]
    fn a_dropped_breaker_leaves_at_the_next_scrape() {
        let collector = ResilienceCollector::new();
        let kept = Breaker::builder().build().unwrap();
        let dropped = Breaker::builder().build().unwrap();
        collector.breaker("catalog", "a:1", &kept);
        collector.breaker("catalog", "b:1", &dropped);
        assert!(scrape(&collector).contains(r#"endpoint="b:1""#));
        drop(dropped);
        let text = scrape(&collector);
        assert!(!text.contains(r#"endpoint="b:1""#), "{text}");
        assert!(text.contains(r#"endpoint="a:1""#));
        // A static breaker lives for ever, and so does its series.
        let forever = Breaker::builder().build().unwrap().into_static();
        collector.breaker("catalog", "c:1", &forever);
        drop(forever);
        assert!(scrape(&collector).contains(r#"endpoint="c:1""#));
    }

    #[test]
    fn the_live_breakers_are_listed_and_switched_through_the_collector() {
        let collector = ResilienceCollector::new();
        let a = Breaker::builder().build().unwrap();
        let b = Breaker::builder().build().unwrap();
        collector.breaker("payments", "a:1", &a);
        collector.breaker("payments", "b:1", &b);
        drop(b);
        let listed = collector.breakers();
        let names: Vec<(&str, &str)> = listed
            .iter()
            .map(|(service, endpoint, _)| (service.as_str(), endpoint.as_str()))
            .collect();
        assert_eq!(
            names,
            [("payments", "a:1")],
            "the dropped one is not listed"
        );
        // The listed breaker is the registered one: switching it switches the original.
        listed[0].2.force_open();
        assert_eq!(a.state(), State::ForcedOpen);
        listed[0].2.reset();
        assert_eq!(a.state(), State::Closed);
    }

    #[test]
    fn the_same_labels_registered_again_make_one_series() {
        let collector = ResilienceCollector::new();
        let old = Breaker::builder().build().unwrap();
        let new = Breaker::builder().build().unwrap();
        new.trip();
        collector.breaker("catalog", "a:1", &old);
        collector.breaker("catalog", "a:1", &new);
        let text = scrape(&collector);
        let open =
            r#"resilience_circuit_breaker_state{service="catalog",endpoint="a:1",state="open"}"#;
        assert_eq!(text.matches(open).count(), 1, "{text}");
        has(&text, &format!("{open} 1"));
    }

    #[test]
    fn a_family_holds_at_most_max_series() {
        let collector = ResilienceCollector::new();
        let budget = RetryBudget::new(Duration::from_secs(1), 1, 0.0);
        for i in 0..=MAX_SERIES {
            collector.retry_budget(&format!("service-{i}"), &budget);
        }
        let text = scrape(&collector);
        assert_eq!(
            text.matches("resilience_retry_budget_exhausted_total{")
                .count(),
            MAX_SERIES
        );
        assert!(!text.contains(&format!(r#"service="service-{MAX_SERIES}""#)));
    }

    #[test]
    fn nothing_registered_writes_nothing() {
        assert_eq!(scrape(&ResilienceCollector::new()), "# EOF\n");
    }
}
