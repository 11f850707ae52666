//! What every process reports about itself: its Prometheus metrics (one
//! registry per process, rendered at `/metrics`), and the W3C trace context
//! that follows a message from its HTTP request through the queue to the
//! provider call.
//!
//! Metric names follow Prometheus conventions (`kurir_…_total` counters,
//! `_seconds` histograms) and no label takes unbounded values: routes are
//! templates (`/v1/users/{id}`), codes are the provider's error codes,
//! never a message or user id. [`describe`] lists them all.

use std::{fmt, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every `_seconds` metric: 1 ms to 5 minutes.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's registry, installed as the `metrics` recorder on first
/// use (a process that runs the API and a worker, `kurir dev`, has one).
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .map(PrometheusBuilder::build_recorder);
        match recorder {
            Ok(recorder) => {
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_ok() {
                    describe();
                }
                handle
            }
            // Only an empty bucket list fails, and ours is not empty.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// The text exposition of every metric, for `/metrics`.
pub fn render() -> String {
    let handle = prometheus();
    handle.run_upkeep();
    handle.render()
}

/// Every metric kurir reports, with its help text.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "kurir_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "kurir_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route template and method"
    );
    describe_counter!(
        "kurir_accepted_total",
        "Messages and status updates stored (202), by kind"
    );
    describe_counter!(
        "kurir_deliveries_total",
        "Delivery attempts, by kind, outcome (sent, retry, failed) and provider error code"
    );
    describe_histogram!(
        "kurir_provider_duration_seconds",
        Unit::Seconds,
        "Provider call latency, by provider and kind"
    );
    describe_histogram!(
        "kurir_accept_to_sent_seconds",
        Unit::Seconds,
        "From a message's acceptance to the provider taking it"
    );
    describe_gauge!(
        "kurir_backlog",
        "Rows waiting, by kind and what they wait for: due (queued, unpublished, due now), retry (a retry waiting for its time), published (queued and published, not yet delivered); counted up to 1,000,000"
    );
    describe_counter!(
        "kurir_leases_recovered_total",
        "Rows given back after the worker delivering them died (expired lease)"
    );
    describe_counter!(
        "kurir_republished_total",
        "Rows published again by the guard (still queued long after a publish)"
    );
    describe_counter!(
        "kurir_relay_published_total",
        "Rows the relay published (retries due, rows the API did not publish)"
    );
    describe_gauge!(
        "kurir_queue_messages",
        "Envelopes in RabbitMQ, by queue (deliveries, dead)"
    );
    describe_gauge!(
        "kurir_db_pool_connections",
        "Postgres connections of this process's pool, by state (in_use, idle)"
    );
    describe_gauge!(
        "kurir_db_pool_waiting",
        "Tasks waiting for a Postgres connection of this process's pool"
    );
    describe_histogram!(
        "kurir_db_pool_wait_seconds",
        Unit::Seconds,
        "Time to get a Postgres connection from the pool"
    );
    describe_counter!(
        "kurir_receipts_total",
        "WhatsApp status receipts received, by result (changed, unchanged, unknown)"
    );
    describe_counter!(
        "kurir_webhook_refused_total",
        "WhatsApp webhook POSTs refused for their signature"
    );
}

/// A W3C trace context (`traceparent`): which trace a request belongs to
/// and which span is its parent. Carried on the row and in the AMQP
/// headers, so one trace follows a message from its request to the provider.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// The header's name.
    pub const HEADER: &'static str = "traceparent";

    /// A new trace (for a request that came without one).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand::random()),
            span_id: nonzero(rand::random()),
            sampled: true,
        }
    }

    /// The same trace, a new span (the next hop).
    pub fn child(self) -> Self {
        Self {
            span_id: nonzero(rand::random()),
            ..self
        }
    }

    /// Reads `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; `None`
    /// for anything else (an invalid header starts a new trace).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four parts; later versions may add more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let hex = |s: &str, n: usize| {
            (s.len() == n * 2
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| hex::decode(s).ok())
            .flatten()
        };
        let trace_id: [u8; 16] = hex(trace, 16)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span, 8)?.try_into().ok()?;
        let flags = hex(flags, 1)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags.first().is_some_and(|f| f & 1 == 1),
        })
    }

    /// The 32 hex digits that name the trace (what logs show as `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// Makes `span` a child of `context` in the exported trace (a no-op
/// unless OpenTelemetry export is on: `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn join(span: &tracing::Span, context: TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let flags = if context.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(context.trace_id),
        SpanId::from_bytes(context.span_id),
        flags,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The context the next hop should carry: the current span's, when
/// OpenTelemetry export is on (so the worker's spans hang under the
/// request's), else a new span of `fallback`'s trace.
pub fn next_hop(fallback: TraceContext) -> TraceContext {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let current = tracing::Span::current().context();
    let span = current.span();
    let context = span.span_context();
    if context.is_valid() && context.trace_id().to_bytes() == fallback.trace_id {
        TraceContext {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            sampled: context.is_sampled(),
        }
    } else {
        fallback.child()
    }
}

/// An id of all zeros is invalid; a random one almost never is.
fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    if bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header's value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.to_string(), header);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled);
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn the_registry_renders_what_was_recorded() {
        prometheus();
        metrics::counter!("kurir_accepted_total", "kind" => "test_kind").increment(2);
        let text = render();
        assert!(
            text.contains("kurir_accepted_total{kind=\"test_kind\"} 2"),
            "{text}"
        );
    }
}
