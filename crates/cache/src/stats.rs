//! Counters of a cache, readable at any time and exportable to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, entries: u64) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale_served: self.stale.load(Relaxed),
            loads: self.loads.load(Relaxed),
            load_errors: self.load_errors.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            l2_hits: self.l2_hits.load(Relaxed),
            l2_errors: self.l2_errors.load(Relaxed),
            entries,
        }
    }
}

/// What a cache has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups answered by a fresh first-tier entry.
    pub hits: u64,
    /// Lookups that found nothing usable in the first tier.
    pub misses: u64,
    /// Lookups answered by a stale entry while a refresh ran.
    pub stale_served: u64,
    /// Loader calls (one per single-flight load that reached the loader).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Entries evicted for size (not expiry, not invalidation).
    pub evictions: u64,
    /// Loads answered by the second tier.
    pub l2_hits: u64,
    /// Second-tier operations that failed or timed out (the cache went on without it).
    pub l2_errors: u64,
    /// Entries in the first tier (approximate: moka counts lazily).
    pub entries: u64,
}

#[cfg(feature = "metrics")]
mod collector {
    use std::fmt;

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    use super::Stats;

    /// A prometheus-client [`Collector`] of one cache's [`Stats`], labelled `cache="<name>"`.
    /// Register it with `Registry::register_collector` (or mainstay-telemetry's
    /// `Metrics::register_collector`).
    pub struct CacheCollector {
        name: String,
        stats: Box<dyn Fn() -> Stats + Send + Sync>,
    }

    impl fmt::Debug for CacheCollector {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CacheCollector")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }

    impl CacheCollector {
        /// A collector reading `stats` at each scrape.
        pub fn new(
            name: impl Into<String>,
            stats: impl Fn() -> Stats + Send + Sync + 'static,
        ) -> Self {
            Self {
                name: name.into(),
                stats: Box::new(stats),
            }
        }
    }

    impl Collector for CacheCollector {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
            let stats = (self.stats)();
            let labels = [("cache", self.name.as_str())];
            let counters = [
                (
                    "cache_hits",
                    "Lookups answered by a fresh entry",
                    stats.hits,
                ),
                (
                    "cache_misses",
                    "Lookups that found nothing usable",
                    stats.misses,
                ),
                (
                    "cache_stale_served",
                    "Lookups answered by a stale entry during a refresh",
                    stats.stale_served,
                ),
                ("cache_loads", "Loader calls", stats.loads),
                (
                    "cache_load_errors",
                    "Loader calls that failed",
                    stats.load_errors,
                ),
                (
                    "cache_evictions",
                    "Entries evicted for size",
                    stats.evictions,
                ),
                (
                    "cache_l2_hits",
                    "Loads answered by the second tier",
                    stats.l2_hits,
                ),
                (
                    "cache_l2_errors",
                    "Second-tier operations that failed or timed out",
                    stats.l2_errors,
                ),
            ];
            for (name, help, value) in counters {
                let counter = ConstCounter::new(value);
                let mut metric =
                    encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(metric.encode_family(&labels)?)?;
            }
            let gauge = ConstGauge::new(i64::try_from(stats.entries).unwrap_or(i64::MAX));
            let mut metric = encoder.encode_descriptor(
                "cache_entries",
                "Entries in the first tier",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric.encode_family(&labels)?)?;
            Ok(())
        }
    }
}

#[cfg(feature = "metrics")]
pub use collector::CacheCollector;
