//! Which requests are traced, decided before any span exists.
//!
//! [`ServerLayer`](crate::ServerLayer) decides whether a request is sampled as soon as it has
//! read `traceparent`, and builds a span only for a sampled request: an unsampled one creates
//! no `tracing` span, so neither the OpenTelemetry layer (span data) nor a log formatter (span
//! fields) spends anything on it. It still counts in the RED metrics, still has its request id,
//! and still passes its trace id and the "not sampled" flag on to the services it calls, so
//! that the whole trace is kept or dropped as one.
//!
//! The decision is OpenTelemetry's `parentbased_traceidratio` (or one of its siblings, from
//! [`OTEL_TRACES_SAMPLER`](SAMPLER_ENV)): a request whose parent was sampled is sampled, one
//! whose parent was not is not, and a request that starts a trace is sampled when its trace id
//! falls in the ratio (the same test as the SDK's `TraceIdRatioBased`).
//!
//! The SDK's sampler must agree with the layer: with the `init` feature,
//! [`Sampling::sdk_sampler`] is the sampler for the tracer provider ([`Config::init`] installs
//! it). It samples every span the layer has already decided to sample, and applies the same
//! ratio to spans that start a trace elsewhere (a background job's).
//!
//! [`Config::init`]: crate::Config::init
//!
//! # Example
//!
//! ```
//! use mainstay_telemetry::{Metrics, ServerLayer};
//! use mainstay_telemetry::sampling::Sampling;
//!
//! // One request in ten that start a trace is traced; callers' decisions are followed.
//! let sampling = Sampling::parent_based_ratio(0.1);
//! let layer = ServerLayer::new(&Metrics::new()).sampling(sampling);
//! # let _ = layer;
//! ```

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};

/// OpenTelemetry's sampler variable: `always_on`, `always_off`, `traceidratio`,
/// `parentbased_always_on`, `parentbased_always_off` or `parentbased_traceidratio`.
pub const SAMPLER_ENV: &str = "OTEL_TRACES_SAMPLER";
/// The ratio of the `traceidratio` samplers, between 0 and 1.
pub const SAMPLER_ARG_ENV: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Which traces are recorded and exported. The default is OpenTelemetry's:
/// `parentbased_always_on`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    ratio: f64,
    parent_based: bool,
}

// The ratio is never NaN (`clamp` maps NaN to 0), so equality is an equivalence.
impl Eq for Sampling {}

impl Default for Sampling {
    fn default() -> Self {
        Self::parent_based_ratio(1.0)
    }
}

/// A sampler setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: expected {expected}")]
pub struct SamplingError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

impl Sampling {
    /// Follows the caller's decision; samples `ratio` (0 to 1, clamped) of the traces that
    /// start here.
    #[must_use]
    pub fn parent_based_ratio(ratio: f64) -> Self {
        Self {
            ratio: clamp(ratio),
            parent_based: true,
        }
    }

    /// Samples `ratio` (0 to 1, clamped) of all traces by their trace id, whatever the caller
    /// decided (OpenTelemetry's `traceidratio`).
    #[must_use]
    pub fn ratio(ratio: f64) -> Self {
        Self {
            ratio: clamp(ratio),
            parent_based: false,
        }
    }

    /// From [`SAMPLER_ENV`] and [`SAMPLER_ARG_ENV`]; `default` when the sampler is not set.
    ///
    /// # Errors
    ///
    /// An unknown sampler, or a ratio that is not a number between 0 and 1.
    pub fn from_env_or(default: Self) -> Result<Self, SamplingError> {
        Self::from_vars(
            std::env::var(SAMPLER_ENV).ok().as_deref(),
            std::env::var(SAMPLER_ARG_ENV).ok().as_deref(),
            default,
        )
    }

    /// [`from_env_or`](Self::from_env_or) over given values of the two variables.
    ///
    /// # Errors
    ///
    /// An unknown sampler, or a ratio that is not a number between 0 and 1.
    pub fn from_vars(
        sampler: Option<&str>,
        arg: Option<&str>,
        default: Self,
    ) -> Result<Self, SamplingError> {
        let ratio = || -> Result<f64, SamplingError> {
            let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0); // the specification's default ratio
            };
            arg.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| SamplingError {
                    var: SAMPLER_ARG_ENV,
                    value: arg.to_owned(),
                    expected: "a ratio between 0 and 1",
                })
        };
        let Some(sampler) = sampler.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(default);
        };
        Ok(match sampler {
            "always_on" => Self::ratio(1.0),
            "always_off" => Self::ratio(0.0),
            "traceidratio" => Self::ratio(ratio()?),
            "parentbased_always_on" => Self::parent_based_ratio(1.0),
            "parentbased_always_off" => Self::parent_based_ratio(0.0),
            "parentbased_traceidratio" => Self::parent_based_ratio(ratio()?),
            other => {
                return Err(SamplingError {
                    var: SAMPLER_ENV,
                    value: other.to_owned(),
                    expected: "always_on, always_off, traceidratio, parentbased_always_on, \
                               parentbased_always_off or parentbased_traceidratio",
                });
            }
        })
    }

    /// The ratio of traces sampled where no parent decides.
    #[must_use]
    pub fn sample_ratio(&self) -> f64 {
        self.ratio
    }

    /// Whether a sampled or unsampled parent decides.
    #[must_use]
    pub fn is_parent_based(&self) -> bool {
        self.parent_based
    }

    /// Decides for a request whose extracted context is `parent`: the span context of the
    /// request (the parent's trace, or a new one) and whether it is sampled.
    pub(crate) fn decide(&self, parent: &SpanContext) -> (TraceId, bool) {
        if parent.is_valid() {
            let trace_id = parent.trace_id();
            let sampled = if self.parent_based {
                parent.is_sampled()
            } else {
                self.ratio_allows(trace_id)
            };
            return (trace_id, sampled);
        }
        let trace_id = new_trace_id();
        (trace_id, self.ratio_allows(trace_id))
    }

    /// OpenTelemetry's `TraceIdRatioBased` test: the trace id's low 63 bits under the ratio.
    fn ratio_allows(&self, trace_id: TraceId) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        // The ratio is in [0, 1): the product fits in 63 bits, and truncation is the SDK's.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bound = (self.ratio * (1u64 << 63) as f64) as u64;
        let bytes = trace_id.to_bytes();
        let low = u64::from_be_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
        ]);
        (low >> 1) < bound
    }
}

fn clamp(ratio: f64) -> f64 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// The context an unsampled request passes on: its trace id, a span id standing for the
/// request, the "not sampled" flag, the caller's `tracestate` and baggage.
pub(crate) fn unsampled_context(parent: &Context, trace_id: TraceId) -> Context {
    let trace_state = parent.span().span_context().trace_state().clone();
    let span_context = SpanContext::new(
        trace_id,
        new_span_id(),
        TraceFlags::default(),
        false,
        trace_state,
    );
    parent.with_remote_span_context(span_context)
}

/// Marks a context whose span the server layer has already decided to sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampled;

#[cfg(feature = "init")]
mod sdk {
    use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

    use super::{Sampled, Sampling};

    /// The SDK sampler that agrees with [`Sampling`]: see [`Sampling::sdk_sampler`].
    #[derive(Debug, Clone)]
    pub struct SdkSampler {
        inner: Sampler,
    }

    impl Sampling {
        /// The sampler for an OpenTelemetry SDK tracer provider
        /// (`SdkTracerProvider::builder().with_sampler(…)`): it samples the spans the server
        /// layer decided to sample (without it, the SDK would apply its ratio a second time to
        /// traces that start at the layer), and decides for every other span as this setting
        /// says.
        #[must_use]
        pub fn sdk_sampler(&self) -> SdkSampler {
            let ratio = Sampler::TraceIdRatioBased(self.ratio);
            SdkSampler {
                inner: if self.parent_based {
                    Sampler::ParentBased(Box::new(ratio))
                } else {
                    ratio
                },
            }
        }
    }

    impl ShouldSample for SdkSampler {
        fn should_sample(
            &self,
            parent_context: Option<&Context>,
            trace_id: TraceId,
            name: &str,
            span_kind: &SpanKind,
            attributes: &[KeyValue],
            links: &[Link],
        ) -> SamplingResult {
            if let Some(parent) = parent_context.filter(|cx| cx.get::<Sampled>().is_some()) {
                return SamplingResult {
                    decision: SamplingDecision::RecordAndSample,
                    attributes: Vec::new(),
                    trace_state: if parent.has_active_span() {
                        parent.span().span_context().trace_state().clone()
                    } else {
                        TraceState::default()
                    },
                };
            }
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
        }
    }
}

#[cfg(feature = "init")]
pub use self::sdk::SdkSampler;

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceFlags, TraceState};

    use super::*;

    fn parent(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn a_parent_decides_when_parent_based() {
        let never = Sampling::parent_based_ratio(0.0);
        assert_eq!(never.decide(&parent(true)), (parent(true).trace_id(), true));
        let always = Sampling::parent_based_ratio(1.0);
        assert!(!always.decide(&parent(false)).1);
    }

    #[test]
    fn without_a_parent_the_ratio_decides_by_trace_id() {
        let tenth = Sampling::parent_based_ratio(0.1);
        let sampled = (0..20_000)
            .filter(|_| tenth.decide(&SpanContext::empty_context()).1)
            .count();
        // 2,000 expected; a binomial standard deviation is 42.
        assert!((1_750..=2_250).contains(&sampled), "{sampled} of 20,000");
        assert!((0..1_000).all(|_| {
            !Sampling::parent_based_ratio(0.0)
                .decide(&SpanContext::empty_context())
                .1
        }));
    }

    #[test]
    fn the_ratio_test_is_the_sdks() {
        // Low 64 bits 0x…_0000_0000_0000_0001 → 0 after the shift: sampled at any ratio > 0.
        let low = TraceId::from(1_u128 << 64 | 1);
        let high = TraceId::from(u128::from(u64::MAX));
        let ratio = Sampling::ratio(0.5);
        assert!(ratio.ratio_allows(low));
        assert!(!ratio.ratio_allows(high));
        // Not parent-based: an unsampled parent's trace in the ratio is sampled anyway.
        let mut unsampled = parent(false);
        unsampled = SpanContext::new(
            low,
            unsampled.span_id(),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        assert!(ratio.decide(&unsampled).1);
    }

    #[test]
    fn the_environment_names_opentelemetrys_samplers() {
        let default = Sampling::parent_based_ratio(0.25);
        assert_eq!(Sampling::from_vars(None, None, default), Ok(default));
        assert_eq!(
            Sampling::from_vars(Some("parentbased_traceidratio"), Some("0.1"), default),
            Ok(Sampling::parent_based_ratio(0.1))
        );
        assert_eq!(
            Sampling::from_vars(Some("traceidratio"), None, default),
            Ok(Sampling::ratio(1.0))
        );
        assert_eq!(
            Sampling::from_vars(Some("always_off"), None, default),
            Ok(Sampling::ratio(0.0))
        );
        assert!(Sampling::from_vars(Some("parentbased_traceidratio"), Some("2"), default).is_err());
        assert!(Sampling::from_vars(Some("jaeger_remote"), None, default).is_err());
    }
}
