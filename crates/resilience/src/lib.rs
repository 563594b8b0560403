// The README is the front page; its examples run as doctests through `ReadmeDoctests` below,
// where they need the features they use.
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The error type of layers that add failure modes, as in tower: downcast to the leaf errors
/// (`circuit_breaker::error::Open`, `bulkhead::error::Full`, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(any(feature = "circuit-breaker", feature = "retry"))]
mod clock;
#[cfg(feature = "hedge")]
mod histogram;
#[cfg(any(feature = "circuit-breaker", feature = "retry"))]
mod sync;

mod builder;
pub mod deadline;
pub mod rejection;

pub use self::builder::ServiceBuilderExt;

#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub mod circuit_breaker;

#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub mod bulkhead;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;

#[cfg(feature = "timeout")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
pub mod timeout;

#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;

#[cfg(any(
    feature = "rate-limit",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
pub mod keyed;

#[cfg(feature = "fallback")]
#[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
pub mod fallback;

#[cfg(feature = "hedge")]
#[cfg_attr(docsrs, doc(cfg(feature = "hedge")))]
pub mod hedge;

#[cfg(feature = "adaptive")]
#[cfg_attr(docsrs, doc(cfg(feature = "adaptive")))]
pub mod adaptive;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(all(
    doctest,
    feature = "circuit-breaker",
    feature = "bulkhead",
    feature = "retry",
    feature = "timeout"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
