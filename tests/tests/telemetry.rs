//! Telemetry end to end, against an in-process `fleetcmd serve`:
//! - one execution is one connected trace: the caller's gRPC `traceparent` → the API's server
//!   span → the shard request over the bus → the shard owner → the delivery → the edge's MQTT
//!   publish (whose `traceparent` user property the device sees) → the device's update (which
//!   the owner joins to the execution's trace) → the projection of each event;
//! - JSON log lines carry the active trace's ids;
//! - `/metrics` exposes every documented series with plausible values.
//!
//! This binary installs the process-wide subscriber with an in-memory span exporter, so it
//! lives in a test file of its own.

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, ensure};
use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::{Device, EXPECT_TIMEOUT, Topics};
use fleetcmd_e2e::{Env, eventually, static_json_command, thing, within};
use fleetcmd_telemetry::TelemetryConfig;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The caller's context: every span of the execution must be in this trace.
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN_ID: &str = "eee19b7ec3c1b174";

/// Log lines written by the subscriber (JSON), kept for assertions.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Logs {
    type Writer = Logs;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

/// The tests of this binary share the process-wide metrics (a stopping server drops its
/// partitions' lag series): they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Installed {
    spans: InMemorySpanExporter,
    logs: Logs,
    _telemetry: fleetcmd_telemetry::Telemetry,
}

/// Installs telemetry once for this process (every test shares it).
fn telemetry() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let logs = Logs::default();
        let telemetry = fleetcmd_telemetry::init_with_exporter(
            &TelemetryConfig {
                service_name: "fleetcmd-e2e".into(),
                log_json: true,
                otlp_endpoint: None,
            },
            spans.clone(),
            logs.clone(),
        );
        assert!(
            telemetry.tracing(),
            "the test subscriber must be the global one"
        );
        Installed {
            spans,
            logs,
            _telemetry: telemetry,
        }
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().to_string(),
            other => other.to_string(),
        })
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} span={} parent={} event={:?}",
                s.name,
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id,
                attr(s, "event"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `pick` finds what it needs among the finished spans of `trace`.
async fn wait_for_spans<T>(
    trace: TraceId,
    mut pick: impl FnMut(&[SpanData]) -> Option<T>,
) -> anyhow::Result<(T, Vec<SpanData>)> {
    let mut last = Vec::new();
    let found = eventually(format!("the expected spans of trace {trace}"), || {
        let spans = finished_spans(trace);
        let found = spans.as_ref().ok().and_then(|s| pick(s));
        if let Ok(spans) = spans {
            last = spans;
        }
        async move { Ok(found) }
    })
    .await
    .with_context(|| format!("got:\n{}", describe(&last)))?;
    Ok((found, finished_spans(trace)?))
}

/// The finished spans of `trace`.
fn finished_spans(trace: TraceId) -> anyhow::Result<Vec<SpanData>> {
    Ok(telemetry()
        .spans
        .get_finished_spans()
        .context("reading the exported spans")?
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect())
}

fn one<'a>(spans: &'a [SpanData], name: &str, event: Option<&str>) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.name == name && event.is_none_or(|e| attr(s, "event").as_deref() == Some(e)))
}

/// The trace id of a `traceparent` value.
fn trace_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

/// Creates a command, starts one execution of it on `thing/<device>` with `traceparent`
/// metadata, lets an MQTT 5 device answer SUCCEEDED, and waits for the SUCCEEDED status
/// event. Returns the execution id, the request the device received and the status event.
async fn run_one_execution(
    env: &mut Env,
    command_id: &str,
    device: &str,
    traceparent: &str,
) -> anyhow::Result<(
    String,
    fleetcmd_e2e::device::Message,
    fleetcmd_e2e::device::Message,
)> {
    env.create(static_json_command(command_id, r#"{"op":"reboot"}"#))
        .await?;
    let topics = Topics::thing(device);
    let mut dev = env.device(device, &topics).await?;
    let mut observer = env.observer(&[command_id]).await?;

    let mut start = tonic::Request::new(pb::StartCommandExecutionRequest {
        target: Some(thing(device)),
        command_id: command_id.into(),
        execution_timeout_seconds: 60,
        ..Default::default()
    });
    start
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii metadata"));
    let execution_id = env
        .dispatcher
        .start_command_execution(start)
        .await
        .context("StartCommandExecution")?
        .into_inner()
        .execution_id;

    let request = dev.expect_request(&topics, EXPECT_TIMEOUT).await?;
    ensure!(
        request.execution_id() == Some(execution_id.as_str()),
        "request for another execution: {request:?}"
    );
    let reply = dev
        .report_json(&topics, &execution_id, &json!({"status": "SUCCEEDED"}))
        .await?;
    ensure!(
        reply.accepted,
        "the update was rejected: {:?}",
        reply.message
    );
    let event = observer
        .expect_topic(
            &format!("$aws/events/commandExecution/{command_id}/SUCCEEDED"),
            EXPECT_TIMEOUT,
        )
        .await?;
    Ok((execution_id, request, event))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_execution_is_one_connected_trace() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let installed = telemetry();
    let mut env = Env::start("telemetry-trace").await?;
    let (execution_id, request, event) = run_one_execution(
        &mut env,
        "traced-reboot",
        "traced-device",
        &format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),
    )
    .await?;

    // The device sees the execution's trace on the request, and observers on the status event.
    let request_tp = fleetcmd_telemetry::context::find(&request.user_properties)
        .with_context(|| format!("no traceparent user property on the request: {request:?}"))?
        .to_string();
    assert_eq!(trace_of(&request_tp), Some(TRACE_ID), "{request_tp}");
    let event_tp = fleetcmd_telemetry::context::find(&event.user_properties)
        .with_context(|| format!("no traceparent user property on the status event: {event:?}"))?;
    assert_eq!(trace_of(event_tp), Some(TRACE_ID), "{event_tp}");

    let trace = TraceId::from_hex(TRACE_ID)?;
    let (_, spans) = wait_for_spans(trace, |spans| {
        let hops = [
            ("fleetcmd.v1.CommandDispatcher/StartCommandExecution", None),
            ("shard.request", None),
            ("shard.owner start", None),
            ("shard.deliver", None),
            ("edge.deliver", None),
            ("edge.status_event", None),
            ("shard.owner report", None),
            ("shard.project", Some("ExecutionStarted")),
            ("shard.project", Some("StatusReported")),
        ]
        .iter()
        .all(|(name, event)| one(spans, name, *event).is_some());
        // The status event's own span too: an execution has a status event per status, and
        // the SUCCEEDED one may be exported after the others.
        let status_event = spans
            .iter()
            .any(|s| fleetcmd_telemetry::context::format(&s.span_context) == event_tp);
        (hops && status_event).then_some(())
    })
    .await?;
    let get = |name: &str, event: Option<&str>| {
        one(&spans, name, event).with_context(|| format!("no {name} span:\n{}", describe(&spans)))
    };
    let api = get("fleetcmd.v1.CommandDispatcher/StartCommandExecution", None)?;
    let request_span = get("shard.request", None)?;
    let owner_start = get("shard.owner start", None)?;
    let deliver = get("shard.deliver", None)?;
    let publish = get("edge.deliver", None)?;
    let owner_report = get("shard.owner report", None)?;
    let projected_start = get("shard.project", Some("ExecutionStarted"))?;
    let projected_report = get("shard.project", Some("StatusReported"))?;

    // One parent chain from the caller's span to every hop.
    let parent_of = |child: &SpanData, parent: &SpanData, what: &str| {
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{what}: {} must be a child of {}\n{}",
            child.name,
            parent.name,
            describe(&spans)
        );
    };
    assert_eq!(
        api.parent_span_id,
        SpanId::from_hex(CALLER_SPAN_ID)?,
        "the API span continues the caller's gRPC traceparent"
    );
    assert!(api.parent_span_is_remote);
    parent_of(request_span, api, "gRPC → bus request");
    parent_of(owner_start, request_span, "bus headers → shard owner");
    parent_of(deliver, owner_start, "shard owner → delivery");
    parent_of(publish, deliver, "bus headers → edge MQTT publish");
    parent_of(projected_start, owner_start, "envelope trace → projection");
    parent_of(
        owner_report,
        owner_start,
        "stored execution trace → device update",
    );
    parent_of(
        projected_report,
        owner_report,
        "envelope trace → projection",
    );
    assert_eq!(
        Some(request_tp.as_str()),
        Some(fleetcmd_telemetry::context::format(&publish.span_context).as_str()),
        "the device's traceparent names the edge's publish span"
    );
    let event_span = spans
        .iter()
        .find(|s| fleetcmd_telemetry::context::format(&s.span_context) == event_tp)
        .context("the status event's traceparent names an exported span")?;
    assert_eq!(event_span.name, "edge.status_event");
    parent_of(
        event_span,
        projected_report,
        "envelope trace → status event",
    );
    for name in [
        "shard.request",
        "shard.owner start",
        "shard.deliver",
        "edge.deliver",
    ] {
        assert_eq!(
            spans.iter().filter(|s| s.name == name).count(),
            1,
            "one {name} span per execution:\n{}",
            describe(&spans)
        );
    }
    assert_eq!(
        attr(owner_report, "execution_id").as_deref(),
        Some(execution_id.as_str())
    );
    assert_eq!(
        attr(api, "rpc.grpc.status_code").as_deref(),
        Some("0"),
        "the API span records the gRPC status"
    );

    // The device's update arrived without context: the edge's span has its own trace, and
    // the owner's span links it.
    let links: Vec<_> = owner_report.links.iter().collect();
    assert_eq!(links.len(), 1, "the owner's update span links the edge's");
    let edge_trace = links[0].span_context.trace_id();
    assert_ne!(edge_trace, trace);
    let (edge_update, _) =
        wait_for_spans(edge_trace, |spans| one(spans, "edge.update", None).cloned()).await?;
    let edge_request = telemetry()
        .spans
        .get_finished_spans()?
        .into_iter()
        .find(|s| s.span_context.span_id() == links[0].span_context.span_id())
        .context("the linked span was exported")?;
    assert_eq!(edge_request.name, "shard.request");
    assert_eq!(
        edge_request.parent_span_id,
        edge_update.span_context.span_id()
    );

    // Every span of the trace hangs off the caller's span.
    for s in &spans {
        let mut cur = s;
        let mut hops = 0;
        while cur.parent_span_id != SpanId::from_hex(CALLER_SPAN_ID)? {
            cur = spans
                .iter()
                .find(|p| p.span_context.span_id() == cur.parent_span_id)
                .with_context(|| {
                    format!(
                        "{} has a parent outside the trace:\n{}",
                        s.name,
                        describe(&spans)
                    )
                })?;
            hops += 1;
            ensure!(hops < 32, "parent cycle at {}", s.name);
        }
    }

    // JSON log lines carry the active trace.
    let span = tracing::info_span!(target: "fleetcmd_e2e", "e2e.check");
    let tp = fleetcmd_telemetry::context::traceparent(&span).context("the test span is traced")?;
    let ours = trace_of(&tp).expect("well-formed").to_string();
    span.in_scope(|| tracing::info!(target: "fleetcmd_e2e", marker = "json-trace-ids", "inside a traced span"));
    let line = installed
        .logs
        .text()
        .lines()
        .find(|l| l.contains("json-trace-ids"))
        .map(str::to_string)
        .context("the log line was written")?;
    let parsed: serde_json::Value = serde_json::from_str(&line).context("a JSON log line")?;
    assert_eq!(parsed["trace_id"], json!(ours), "{line}");
    assert_eq!(parsed["span_id"].as_str().map(str::len), Some(16), "{line}");
    assert_eq!(
        parsed["fields"]["marker"],
        json!("json-trace-ids"),
        "{line}"
    );
    let _ = std::io::stderr().flush();

    env.stop().await
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let response = within(format!("GET /metrics from {addr}"), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: fleetcmd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    })
    .await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(head.contains("text/plain; version=0.0.4"), "{head}");
    Ok(body.to_string())
}

/// The value of the sample named exactly `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_exposes_the_documented_series() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    telemetry();
    let mut env = Env::start("telemetry-metrics").await?;
    let (execution_id, _, _) = run_one_execution(
        &mut env,
        "metered-reboot",
        "metered-device",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    .await?;
    // A second update of a terminal execution is rejected with a device error code.
    let topics = Topics::thing("metered-device");
    let mut dev = Device::v5(env.port(), "metered-device-again").await?;
    dev.subscribe(&topics.reply_filters()).await?;
    let reply = dev
        .report_json(&topics, &execution_id, &json!({"status": "FAILED"}))
        .await?;
    ensure!(
        !reply.accepted,
        "an update after SUCCEEDED must be rejected"
    );
    // An unknown execution is NOT_FOUND.
    let missing = env
        .registry
        .get_command_execution(pb::GetCommandExecutionRequest {
            execution_id: "0190c0de-0000-7000-8000-000000000000".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown execution");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let text = scrape(env.server.running.metrics_addr).await?;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    for name in fleetcmd_telemetry::metrics::ALL {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not exposed:\n{text}"
        );
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} is missing from the README's table of series"
        );
    }
    let at_least = |series: &str, min: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no sample {series}:\n{text}"));
        assert!(v >= min, "{series} = {v}, expected at least {min}");
        v
    };
    let start = "method=\"fleetcmd.v1.CommandDispatcher/StartCommandExecution\"";
    at_least(
        &format!("fleetcmd_grpc_requests_total{{code=\"OK\",{start}}}"),
        1.0,
    );
    at_least(
        &format!("fleetcmd_grpc_request_duration_seconds_count{{code=\"OK\",{start}}}"),
        1.0,
    );
    let took = at_least(
        &format!("fleetcmd_grpc_request_duration_seconds_sum{{code=\"OK\",{start}}}"),
        0.0,
    );
    assert!(took < 60.0, "a start took {took} s");
    at_least(
        "fleetcmd_grpc_requests_total{code=\"NOT_FOUND\",method=\"fleetcmd.v1.CommandRegistry/GetCommandExecution\"}",
        1.0,
    );
    at_least(
        "fleetcmd_execution_transitions_total{status=\"CREATED\"}",
        1.0,
    );
    at_least(
        "fleetcmd_execution_transitions_total{status=\"SUCCEEDED\"}",
        1.0,
    );
    at_least("fleetcmd_shards_owned", 4.0);
    let lag = at_least("fleetcmd_projector_lag_records{partition=\"0\"}", 0.0);
    assert!(lag < 1000.0, "lag {lag}");
    assert_eq!(sample(&text, "fleetcmd_mqtt_connected"), Some(1.0));
    at_least(
        "fleetcmd_device_updates_total{code=\"\",outcome=\"accepted\"}",
        1.0,
    );
    at_least(
        "fleetcmd_device_updates_total{code=\"TerminalStateReached\",outcome=\"rejected\"}",
        1.0,
    );
    at_least("fleetcmd_deliveries_total{outcome=\"published\"}", 1.0);

    env.stop().await
}
