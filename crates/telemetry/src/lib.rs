//! Telemetry for fleetcmd, in one place.
//!
//! `main` calls [`init`] once: logs go to stderr as text or JSON lines (filtered by
//! `RUST_LOG`, default `info`), and when an OTLP endpoint is configured the `tracing` spans of
//! fleetcmd's crates are exported to it as OpenTelemetry traces. `main` also serves
//! [`metrics::serve`] and wraps its gRPC servers in [`grpc::GrpcLayer`]. The services use only
//! the cheap parts: [`context`] to carry W3C trace context across the bus, the event log and
//! MQTT, and the [`metrics`] recorders. With export off, the trace-context helpers return at
//! once and the services create none of their hop spans.

pub mod context;
pub mod grpc;
mod json;
pub mod metrics;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer as _, Registry};

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,rmqtt=warn,rmqtt_net=warn";

/// Only fleetcmd's own spans are exported (libraries' spans would flood the traces).
const TRACE_TARGET: &str = "fleetcmd";

/// What [`init`] sets up.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME` wins when set).
    pub service_name: String,
    /// Log as JSON lines (with `trace_id` and `span_id` while a traced span is active).
    pub log_json: bool,
    /// OTLP/gRPC endpoint of a collector for traces, e.g. `http://localhost:4317`. When empty,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is used; with
    /// neither set (or `OTEL_SDK_DISABLED=true`), traces are not exported.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// The endpoint traces go to, if any: the configured one, else the standard variables.
    pub fn effective_endpoint(&self) -> Option<String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        self.otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP trace exporter for {endpoint}: {why}")]
    Exporter { endpoint: String, why: String },
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the span exporter (off the async threads: it blocks).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown() {
                    tracing::warn!(error = %e, "flushing traces at shutdown");
                }
            })
            .await;
        }
    }
}

/// Installs the global subscriber (once per process: later calls install nothing and
/// export nothing). Call it inside the Tokio runtime: the OTLP exporter's gRPC channel runs
/// on it.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, Error> {
    let provider = match config.effective_endpoint() {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| Error::Exporter {
                    endpoint: endpoint.clone(),
                    why: e.to_string(),
                })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource(&config.service_name))
                    .build(),
            )
        }
    };
    // Colours only for a person at a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(install(config.log_json, ansi, provider, std::io::stderr))
}

/// Installs the global subscriber with spans going synchronously to `exporter` and log
/// lines to `logs` (tests use an in-memory exporter and buffer).
pub fn init_with_exporter<E, W>(config: &TelemetryConfig, exporter: E, logs: W) -> Telemetry
where
    E: SpanExporter + 'static,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource(&config.service_name))
        .build();
    install(config.log_json, false, Some(provider), logs)
}

fn resource(service_name: &str) -> Resource {
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() || service_name.is_empty() {
        builder.build()
    } else {
        builder.with_service_name(service_name.to_string()).build()
    }
}

fn install<W>(log_json: bool, ansi: bool, provider: Option<SdkTracerProvider>, logs: W) -> Telemetry
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(logs)
        .with_ansi(ansi);
    let fmt = if log_json {
        fmt.json()
            .event_format(json::WithTraceIds(tracing_subscriber::fmt::format().json()))
            .with_filter(filter)
            .boxed()
    } else {
        fmt.compact().with_filter(filter).boxed()
    };
    // Spans reach the exporter by their own filter, so `RUST_LOG=warn` keeps the traces.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("fleetcmd"))
            .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::INFO))
    });
    let subscriber = Registry::default().with(fmt).with(otel);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        // Someone installed a subscriber first (a test harness, an earlier call): keep it.
        return Telemetry { provider: None };
    }
    context::set_enabled(provider.is_some());
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_config_first() {
        let c = TelemetryConfig {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            c.effective_endpoint().as_deref(),
            Some("http://collector:4317")
        );
        let blank = TelemetryConfig {
            otlp_endpoint: Some("  ".into()),
            ..TelemetryConfig::default()
        };
        // Blank means "not configured here" (the standard variables may still be set).
        assert_eq!(
            blank.effective_endpoint(),
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .ok()
                .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
                .filter(|v| !v.trim().is_empty())
        );
    }
}
