//! OpenTelemetry export (OTLP over HTTP), on when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, off otherwise. The standard `OTEL_*` variables configure it
//! (endpoint, headers, `OTEL_BSP_SCHEDULE_DELAY`…). Spans join the
//! request's trace (`kurir_core::telemetry::join`): one trace per message,
//! from the client's request through the API and the queue to the worker's
//! provider call.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::registry::LookupSpan;

/// The exporter to flush at exit.
pub(crate) struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Sends what is buffered; waits a few seconds at most.
    pub(crate) fn finish(self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("warning: OpenTelemetry export did not flush: {err}");
        }
    }
}

/// What is exported: kurir's spans at info and above, whatever `RUST_LOG`
/// lets into the logs.
pub(crate) fn spans() -> tracing_subscriber::filter::Targets {
    let mut targets = tracing_subscriber::filter::Targets::new();
    for crate_name in [
        "kurir_api",
        "kurir_worker",
        "kurir_store",
        "kurir_bus",
        "kurir_core",
    ] {
        targets = targets.with_target(crate_name, tracing::Level::INFO);
    }
    targets
}

/// The tracing layer that exports spans as `service`, if export is asked for.
pub(crate) fn layer<S>(
    service: &'static str,
) -> Option<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
    Export,
)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("warning: OpenTelemetry export is off: {err} (OTEL_EXPORTER_OTLP_ENDPOINT)");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("kurir");
    Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Export { provider },
    ))
}
