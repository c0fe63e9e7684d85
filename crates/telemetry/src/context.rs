//! W3C trace context (`traceparent`) across fleetcmd's hops: gRPC metadata, bus headers, the
//! event envelope's `trace` field and MQTT 5 user properties all carry the same string,
//! `00-<trace id>-<span id>-<flags>`.
//!
//! Everything here is free when trace export is off ([`enabled`] is false): no span context
//! is read, no string is formatted, nothing is added to a message. Services therefore create
//! their hop spans only when [`enabled`] (or when a message carries a context), and callers
//! never pay for tracing they did not ask for.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header, metadata key and MQTT user property that carries the context.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OpenTelemetry layer is installed).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The `traceparent` of `span`, when export is on and the span is recorded.
///
/// Reading a span's context starts it: set its parent ([`set_parent`]) first.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format(&sc))
}

/// The `traceparent` of the current span (see [`traceparent`]).
pub fn current() -> Option<String> {
    if !enabled() {
        return None;
    }
    traceparent(&Span::current())
}

/// Formats a span context as a `traceparent` value.
pub fn format(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Parses a `traceparent` value (version `00`, or a later version's first four fields);
/// `None` for anything malformed or all-zero.
pub fn parse(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2)
        || version.eq_ignore_ascii_case("ff")
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Makes the remote context `traceparent` the parent of `span`. Does nothing when export is
/// off, when the value is malformed, or when the span has already started.
pub fn set_parent(span: &Span, traceparent: &str) {
    if !enabled() || span.is_disabled() {
        return;
    }
    if let Some(sc) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Adds a link from `span` to the context `traceparent` (a related trace that is not its
/// parent, e.g. the request that carried a device update).
pub fn add_link(span: &Span, traceparent: &str) {
    if !enabled() || span.is_disabled() {
        return;
    }
    if let Some(sc) = parse(traceparent) {
        span.add_link(sc);
    }
}

/// The `traceparent` among `(name, value)` headers or user properties.
pub fn find(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
        .map(|(_, v)| v.as_str())
}

/// Adds `span`'s context to `(name, value)` headers (nothing when export is off).
pub fn inject(span: &Span, headers: &mut Vec<(String, String)>) {
    if let Some(tp) = traceparent(span) {
        headers.push((TRACEPARENT.to_string(), tp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse(v).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert_eq!(format(&sc), v);
        let unsampled =
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.is_sampled());
        // A later version may append fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn find_is_case_insensitive_and_inject_is_free_when_off() {
        let headers = vec![
            ("x".to_string(), "y".to_string()),
            ("TraceParent".to_string(), "v".to_string()),
        ];
        assert_eq!(find(&headers), Some("v"));
        assert_eq!(find(&[]), None);
        let mut out = Vec::new();
        inject(&Span::current(), &mut out);
        assert!(out.is_empty(), "export is off in unit tests");
        assert_eq!(current(), None);
    }
}
