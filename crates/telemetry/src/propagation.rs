//! W3C Trace Context and Baggage across HTTP headers and message headers.
//!
//! One trace crosses services over HTTP and over the broker: the server layer
//! ([`crate::ServerLayer`]) extracts `traceparent`, `tracestate` and `baggage` from requests,
//! the client layer ([`crate::ClientLayer`]) injects them into outbound requests, and
//! [`inject_message`] / [`extract_message`] do the same for message headers (the outbox and
//! NATS), so a consumer's span is a child of the producer's.
//!
//! The propagator is this module's own (Trace Context plus Baggage); nothing depends on
//! `opentelemetry::global`.
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//! use mainstay_telemetry::propagation::{extract_message, inject_message};
//!
//! // Producer: stamp the current span's context on the message.
//! let mut headers: HashMap<String, String> = HashMap::new();
//! inject_message(&tracing::Span::current(), &mut headers);
//!
//! // Consumer: continue the producer's trace.
//! let span = tracing::info_span!("consume");
//! extract_message(&span, &headers);
//! ```

use std::sync::LazyLock;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

/// Reads the context carried by request or response headers.
#[must_use]
pub fn extract_headers(headers: &HeaderMap) -> Context {
    PROPAGATOR.extract(&HeaderExtractor(headers))
}

/// Writes `context` into headers as `traceparent`, `tracestate` and `baggage`.
pub fn inject_headers(context: &Context, headers: &mut HeaderMap) {
    PROPAGATOR.inject_context(context, &mut HeaderInjector(headers));
}

/// Writes the context of `span` into a message's headers (any [`Injector`], such as a
/// `HashMap<String, String>`). Nothing is written when `span` has no valid trace context
/// (no OpenTelemetry layer is installed, or the span is disabled).
pub fn inject_message(span: &tracing::Span, carrier: &mut dyn Injector) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        PROPAGATOR.inject_context(&context, carrier);
    }
}

/// Makes `span` a child of the context carried by a message's headers (any [`Extractor`]).
/// Returns whether the headers carried a valid trace context.
pub fn extract_message(span: &tracing::Span, carrier: &dyn Extractor) -> bool {
    let context = PROPAGATOR.extract(carrier);
    let valid = context.span().span_context().is_valid();
    if valid {
        // Fails only when no OpenTelemetry layer is installed, and then there is nothing to join.
        let _ = span.set_parent(context);
    }
    valid
}

/// The trace id of `span` in the W3C hex form, when it has one.
#[must_use]
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Reads headers for the propagator.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes headers for the propagator; values that are not valid header values are skipped.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
