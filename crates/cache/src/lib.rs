//! Cache-aside for tower and tokio services that never stampedes.
//!
//! * [`Cache::get_or_load`]: single-flight loads on their own task (cancellation-safe),
//!   per-entry TTL, negative caching, stale-while-revalidate, a bound by count or weight.
//! * [`SecondTier`] and [`InvalidationBus`]: a shared tier behind the in-process one, and
//!   invalidations broadcast to every replica; `redis` implements both over Redis
//!   (feature `redis`).
#![cfg_attr(
    feature = "http",
    doc = "* [`http::ResponseCacheLayer`]: a tower layer caching GET and HEAD responses by `Cache-Control`, `Vary` and `ETag` (feature `http`)."
)]
//! * [`Stats`]: hits, misses, stale answers, loads, load errors, evictions, second-tier hits
//!   and errors (a prometheus-client collector with the `metrics` feature).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod stats;
mod tier;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use self::cache::{BoxError, Cache, CacheBuilder, CacheError};
#[cfg(feature = "metrics")]
pub use self::stats::CacheCollector;
pub use self::stats::Stats;
pub use self::tier::{InvalidationBus, SecondTier};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(all(doctest, feature = "redis", feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
