// The README is the front page; its examples run as doctests through `ReadmeDoctests` below,
// where they need the features they use.
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod health;
#[cfg(feature = "init")]
mod init;
#[cfg(feature = "init")]
mod json_fields;
pub mod metrics;
pub mod propagation;
pub mod request_id;
#[cfg(feature = "axum")]
mod routes;
pub mod sampling;
mod trace;

pub use self::health::{CheckOutcome, CheckResult, Health, Readiness};
#[cfg(feature = "init")]
pub use self::init::{
    Config, InitError, LogFormat, OTLP_ENDPOINT_ENV, OTLP_TRACES_ENDPOINT_ENV, TelemetryGuard,
    init, json_logs,
};
pub use self::metrics::{Metrics, RouteTemplate};
#[cfg(feature = "axum")]
pub use self::routes::routes;
pub use self::trace::{
    ClientFuture, ClientLayer, ClientTelemetry, MAX_REQUEST_ID_BYTES, SENSITIVE_HEADERS,
    ServerFuture, ServerLayer, ServerTelemetry,
};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(all(doctest, feature = "axum", feature = "init"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
