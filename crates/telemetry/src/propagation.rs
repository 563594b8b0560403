//! W3C Trace Context and Baggage across HTTP headers and message headers.
//!
//! One trace crosses services over HTTP and over the broker: the server layer
//! ([`crate::ServerLayer`]) extracts `traceparent`, `tracestate` and `baggage` from requests,
//! the client layer ([`crate::ClientLayer`]) injects them into outbound requests, and
//! [`inject_message`] / [`extract_message`] do the same for message headers (the outbox and
//! NATS), so a consumer's span is a child of the producer's.
//!
//! The propagator is this module's own [`W3cPropagator`] (Trace Context plus Baggage, on the
//! OpenTelemetry API alone); nothing depends on `opentelemetry::global`.
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

use std::str::FromStr;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use percent_encoding::percent_decode_str;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const BAGGAGE: &str = "baggage";
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_HEADER: HeaderName = HeaderName::from_static(TRACESTATE);
const BAGGAGE_HEADER: HeaderName = HeaderName::from_static(BAGGAGE);

/// `tracestate` longer than this is dropped (W3C Trace Context asks for at least 512
/// characters to be propagated; the cap keeps a client from making every hop parse kilobytes).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// `baggage` longer than this is dropped whole, as W3C Baggage allows (8192 bytes).
pub const MAX_BAGGAGE_BYTES: usize = 8192;
/// Baggage entries beyond this many are ignored (W3C Baggage: at least 64 must be kept).
pub const MAX_BAGGAGE_ENTRIES: usize = 64;

/// W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage (`baggage`) as one
/// [`TextMapPropagator`], so that the layers need the OpenTelemetry API only, not the SDK.
///
/// Extraction follows the specifications strictly and bounds what a client controls: only
/// lower-case hex ids, version `ff` and all-zero ids rejected, a version `00` header of exactly
/// 55 characters, later versions read by their version-`00` prefix; `tracestate` and `baggage`
/// over their caps ([`MAX_TRACESTATE_BYTES`], [`MAX_BAGGAGE_BYTES`]) ignored. A context that
/// does not parse is no context: the request starts a new trace. Install it process-wide with
/// `opentelemetry::global::set_text_map_propagator(W3cPropagator)` if other code uses the
/// global propagator.
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cPropagator;

/// `00-{trace id}-{span id}-{flags}` in lowercase hex, written byte by byte (every outbound
/// call writes one: no formatting machinery).
fn traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    fn push_hex(out: &mut String, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for byte in bytes {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &span_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &[flags.to_u8()]);
    out
}

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            injector.set(
                TRACEPARENT,
                traceparent(
                    span_context.trace_id(),
                    span_context.span_id(),
                    span_context.trace_flags() & TraceFlags::SAMPLED,
                ),
            );
            let state = span_context.trace_state().header();
            if !state.is_empty() {
                injector.set(TRACESTATE, state);
            }
        }
        let baggage = cx.baggage();
        if !baggage.is_empty() {
            // `Baggage`'s `Display` is the header form, values percent-encoded.
            injector.set(BAGGAGE, baggage.to_string());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let mut cx = match extractor.get(TRACEPARENT).and_then(parse_traceparent) {
            Some((trace_id, span_id, flags)) => {
                let state = extractor
                    .get(TRACESTATE)
                    .filter(|state| state.len() <= MAX_TRACESTATE_BYTES)
                    .and_then(|state| TraceState::from_str(state).ok())
                    .unwrap_or_default();
                cx.with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
            }
            None => cx.clone(),
        };
        if let Some(baggage) = extractor
            .get(BAGGAGE)
            .filter(|b| b.len() <= MAX_BAGGAGE_BYTES)
        {
            let entries: Vec<KeyValueMetadata> = baggage
                .split(',')
                .take(MAX_BAGGAGE_ENTRIES)
                .filter_map(parse_baggage_entry)
                .collect();
            if !entries.is_empty() {
                cx = cx.with_baggage(entries);
            }
        }
        cx
    }

    fn fields(&self) -> FieldIter<'_> {
        static NAMES: std::sync::LazyLock<[String; 3]> = std::sync::LazyLock::new(|| {
            [
                TRACEPARENT.to_owned(),
                TRACESTATE.to_owned(),
                BAGGAGE.to_owned(),
            ]
        });
        FieldIter::new(&*NAMES)
    }
}

/// `version-traceid-parentid-flags`, each part lower-case hex (W3C Trace Context §3.2).
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let lower_hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !(lower_hex(&bytes[..2])
        && lower_hex(&bytes[3..35])
        && lower_hex(&bytes[36..52])
        && lower_hex(&bytes[53..55]))
    {
        return None;
    }
    // All checked bytes are ASCII, so these slices are on character boundaries.
    let version = u8::from_str_radix(&value[..2], 16).ok()?;
    let well_sized = match version {
        0xff => false,
        // Version 00 is exactly 55 characters; a later version may append `-` and more fields.
        0 => bytes.len() == 55,
        _ => bytes.len() == 55 || bytes[55] == b'-',
    };
    let trace_id = TraceId::from_hex(&value[3..35]).ok()?;
    let span_id = SpanId::from_hex(&value[36..52]).ok()?;
    let flags = u8::from_str_radix(&value[53..55], 16).ok()?;
    (well_sized && trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then(|| {
        (
            trace_id,
            span_id,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
        )
    })
}

/// `key=value;property;property=value`, value and properties percent-decoded (W3C Baggage).
fn parse_baggage_entry(entry: &str) -> Option<KeyValueMetadata> {
    let (pair, properties) = entry.split_once(';').unwrap_or((entry, ""));
    let (key, value) = pair.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let value = percent_decode_str(value.trim()).decode_utf8().ok()?;
    let properties = percent_decode_str(properties.trim()).decode_utf8().ok()?;
    Some(KeyValueMetadata::new(
        key.to_owned(),
        value.trim().to_owned(),
        properties.trim(),
    ))
}

/// Reads the context carried by request or response headers (a new context: nothing of the
/// current one is carried over).
#[must_use]
pub fn extract_headers(headers: &HeaderMap) -> Context {
    W3cPropagator.extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Writes `context` into headers as `traceparent`, `tracestate` and `baggage`.
pub fn inject_headers(context: &Context, headers: &mut HeaderMap) {
    W3cPropagator.inject_context(context, &mut HeaderInjector(headers));
}

/// Writes the context of `span` into a message's headers (any [`Injector`], such as a
/// `HashMap<String, String>`). When `span` has no valid trace context and the task is serving
/// a request the server layer did not sample, that request's context is written (so the
/// consumer does not sample either); otherwise nothing is (no OpenTelemetry layer is
/// installed, or the span is disabled).
pub fn inject_message(span: &tracing::Span, carrier: &mut dyn Injector) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        W3cPropagator.inject_context(&context, carrier);
    } else if let Some(context) = crate::request_id::unsampled_context() {
        W3cPropagator.inject_context(&context, carrier);
    }
}

/// Makes `span` a child of the context carried by a message's headers (any [`Extractor`]).
/// Returns whether the headers carried a valid trace context.
pub fn extract_message(span: &tracing::Span, carrier: &dyn Extractor) -> bool {
    let context = W3cPropagator.extract(carrier);
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
        // The propagator's own names are looked up without parsing them again.
        let value = match key {
            TRACEPARENT => self.0.get(TRACEPARENT_HEADER),
            TRACESTATE => self.0.get(TRACESTATE_HEADER),
            BAGGAGE => self.0.get(BAGGAGE_HEADER),
            other => self.0.get(other),
        };
        value.and_then(|value| value.to_str().ok())
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
        // Our propagator's names without parsing them; the value's buffer kept, not copied.
        let name = match key {
            TRACEPARENT => Ok(TRACEPARENT_HEADER),
            TRACESTATE => Ok(TRACESTATE_HEADER),
            BAGGAGE => Ok(BAGGAGE_HEADER),
            other => HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Context, StringValue};
    use proptest::prelude::*;

    use super::W3cPropagator;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn extract(headers: &[(&str, &str)]) -> Context {
        let carrier: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        W3cPropagator.extract(&carrier)
    }

    fn remote(headers: &[(&str, &str)]) -> Option<SpanContext> {
        let cx = extract(headers);
        let span_context = cx.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }

    #[test]
    fn traceparent_is_read_as_the_specification_writes_it() {
        let sampled = remote(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]).unwrap();
        assert_eq!(sampled.trace_id().to_string(), TRACE);
        assert_eq!(sampled.span_id().to_string(), SPAN);
        assert!(sampled.is_sampled() && sampled.is_remote());
        // Unknown flags are not propagated; only `sampled` has a meaning.
        let flags = remote(&[("traceparent", &format!("00-{TRACE}-{SPAN}-fe"))]).unwrap();
        assert_eq!(flags.trace_flags(), TraceFlags::default());
        // A later version is read by its version-00 prefix.
        assert!(
            remote(&[(
                "traceparent",
                &format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds")
            )])
            .is_some()
        );
        assert!(remote(&[("traceparent", &format!(" 00-{TRACE}-{SPAN}-01\t"))]).is_some());

        for bad in [
            String::new(),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-01-"), // version 00 is exactly 55
            format!("cc-{TRACE}-{SPAN}-01x"), // later versions extend with `-`
            format!("ff-{TRACE}-{SPAN}-01"),  // version ff is invalid
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()), // lower-case only
            format!("00-+{}-{SPAN}-01", &TRACE[1..]), // from_str_radix would take `+`
            format!("00-{}-{SPAN}-01", "0".repeat(32)), // all-zero trace id
            format!("00-{TRACE}-{}-01", "0".repeat(16)), // all-zero parent id
            format!("00_{TRACE}_{SPAN}_01"),
            format!("0é-{TRACE}-{SPAN}-01"),
        ] {
            assert!(
                remote(&[("traceparent", &bad)]).is_none(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn what_is_injected_is_extracted_whole() {
        let cx = extract(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ("baggage", "user=alice%20b, tier = gold ;ttl=60,bad-entry"),
        ]);
        let mut carrier: HashMap<String, String> = HashMap::new();
        W3cPropagator.inject_context(&cx, &mut carrier);
        assert_eq!(carrier["traceparent"], format!("00-{TRACE}-{SPAN}-01"));
        assert_eq!(
            carrier["tracestate"],
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );

        let again = W3cPropagator.extract(&carrier);
        assert_eq!(again.span().span_context(), cx.span().span_context());
        assert_eq!(
            again.baggage().get("user"),
            Some(&StringValue::from("alice b"))
        );
        let (tier, metadata) = again.baggage().get_with_metadata("tier").unwrap();
        assert_eq!((tier.as_str(), metadata.as_str()), ("gold", "ttl=60"));
        assert_eq!(again.baggage().len(), 2, "an entry without `=` is dropped");
    }

    #[test]
    fn nothing_is_injected_without_a_context() {
        let mut carrier: HashMap<String, String> = HashMap::new();
        W3cPropagator.inject_context(&Context::new(), &mut carrier);
        assert!(carrier.is_empty());
    }

    #[test]
    fn client_controlled_state_and_baggage_are_bounded() {
        let parent = format!("00-{TRACE}-{SPAN}-01");
        let long_state = format!("a={}", "x".repeat(super::MAX_TRACESTATE_BYTES));
        let cx = remote(&[("traceparent", &parent), ("tracestate", &long_state)]).unwrap();
        assert_eq!(
            cx.trace_state().header(),
            "",
            "an oversized tracestate is dropped"
        );

        let long_baggage = format!("k={}", "v".repeat(super::MAX_BAGGAGE_BYTES));
        assert!(extract(&[("baggage", &long_baggage)]).baggage().is_empty());

        let many: Vec<String> = (0..200).map(|i| format!("k{i}=v")).collect();
        let cx = extract(&[("baggage", &many.join(","))]);
        assert_eq!(cx.baggage().len(), super::MAX_BAGGAGE_ENTRIES);
    }

    proptest! {
        /// On everything the SDK's propagator and the specification agree on (no `+`, no
        /// whitespace), ours reads the same context as the SDK's.
        #[test]
        fn agrees_with_the_opentelemetry_sdk(
            version in "(00|01|cc|ff|0A|[0-9a-fA-F]{2})",
            trace in "[0-9a-fA-F]{32}|0{32}|[0-9a-f]{31}|[0-9a-f]{33}",
            span in "[0-9a-fA-F]{16}|0{16}",
            flags in "[0-9a-fA-F]{2}",
            tail in "|-|-[0-9a-z]{1,4}",
        ) {
            let header = format!("{version}-{trace}-{span}-{flags}{tail}");
            let sdk = opentelemetry_sdk::propagation::TraceContextPropagator::new();
            let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), header.clone())]);
            let theirs = sdk.extract(&carrier).span().span_context().clone();
            let ours = W3cPropagator.extract(&carrier).span().span_context().clone();
            // The SDK reads `00-…-01-` (a trailing separator) as version 00; the specification
            // says a version-00 header is exactly 55 characters.
            let sdk_lenient = version == "00" && tail == "-";
            if !sdk_lenient {
                prop_assert_eq!(ours, theirs, "{}", header);
            }
        }

        /// What ours writes is what the SDK's propagator writes, for any ids and flags.
        #[test]
        fn writes_what_the_opentelemetry_sdk_writes(
            trace in 1..=u128::MAX,
            span in 1..=u64::MAX,
            flags in any::<u8>(),
        ) {
            let context = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let cx = Context::new().with_remote_span_context(context);
            let sdk = opentelemetry_sdk::propagation::TraceContextPropagator::new();
            let mut theirs: HashMap<String, String> = HashMap::new();
            sdk.inject_context(&cx, &mut theirs);
            let mut ours: HashMap<String, String> = HashMap::new();
            W3cPropagator.inject_context(&cx, &mut ours);
            prop_assert_eq!(&ours["traceparent"], &theirs["traceparent"]);
            prop_assert_eq!(ours["traceparent"].len(), 55);
        }
    }
}
