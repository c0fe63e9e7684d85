//! Prometheus metrics: every series fleetcmd exports, named here once, and the `/metrics`
//! endpoint that serves them.
//!
//! The series live in a registry of their own (not the `prometheus` crate's default one,
//! which embedded libraries may fill), created on first use. Recording is a label lookup
//! and an atomic add; nothing here allocates on the hot path except the first use of a
//! label combination.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// gRPC calls served, by `method` (`package.Service/Method`) and `code` (gRPC status name).
pub const GRPC_REQUESTS: &str = "fleetcmd_grpc_requests_total";
/// Time to answer a gRPC call (to the response headers: for streams, the time to open them),
/// by `method` and `code`.
pub const GRPC_REQUEST_DURATION: &str = "fleetcmd_grpc_request_duration_seconds";
/// Status transitions written by the shard owners, by the new `status` (`CREATED`,
/// `IN_PROGRESS`, `SUCCEEDED`, ...). Counted once, when the event is durable.
pub const EXECUTION_TRANSITIONS: &str = "fleetcmd_execution_transitions_total";
/// Shards this process owns and serves right now.
pub const SHARDS_OWNED: &str = "fleetcmd_shards_owned";
/// Records of a log `partition` not yet projected (log end offset − projected position),
/// sampled by the projector that owns the partition.
pub const PROJECTOR_LAG: &str = "fleetcmd_projector_lag_records";
/// Whether the edge's MQTT connection is up (1) or not (0); with several edges in one process
/// (tests), how many are connected.
pub const MQTT_CONNECTED: &str = "fleetcmd_mqtt_connected";
/// Device updates answered by the edge, by `outcome` (`accepted`, `rejected`) and the device
/// error `code` of a rejection (empty when accepted).
pub const DEVICE_UPDATES: &str = "fleetcmd_device_updates_total";
/// Deliveries (request and cancel publishes) handled by the edge, by `outcome`:
/// `published`, `expired` (the execution timed out before it could be sent) or `failed`.
pub const DELIVERIES: &str = "fleetcmd_deliveries_total";

/// Devices connected right now, as the broker reports connects and disconnects (the embedded
/// broker does; an external one tells nothing, and the gauge stays 0).
pub const DEVICES_CONNECTED: &str = "fleetcmd_devices_connected";

/// Every series name, in the order of the README's table.
pub const ALL: &[&str] = &[
    GRPC_REQUESTS,
    GRPC_REQUEST_DURATION,
    EXECUTION_TRANSITIONS,
    SHARDS_OWNED,
    PROJECTOR_LAG,
    MQTT_CONNECTED,
    DEVICE_UPDATES,
    DELIVERIES,
    DEVICES_CONNECTED,
];

/// Latency buckets in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Metrics {
    registry: Registry,
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
    transitions: IntCounterVec,
    shards_owned: IntGauge,
    projector_lag: IntGaugeVec,
    mqtt_connected: IntGauge,
    devices_connected: IntGauge,
    device_updates: IntCounterVec,
    deliveries: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let grpc_requests = counter(
            GRPC_REQUESTS,
            "gRPC calls served, by method and status code.",
            &["method", "code"],
        );
        let transitions = counter(
            EXECUTION_TRANSITIONS,
            "Execution status transitions made durable by the shard owners, by new status.",
            &["status"],
        );
        let device_updates = counter(
            DEVICE_UPDATES,
            "Device updates answered by the edge, by outcome and device error code.",
            &["outcome", "code"],
        );
        let deliveries = counter(
            DELIVERIES,
            "Deliveries handled by the edge, by outcome (published, expired, failed).",
            &["outcome"],
        );
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                GRPC_REQUEST_DURATION,
                "Time to answer a gRPC call (to the response headers), by method and status code.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "code"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(grpc_duration.clone()))
            .expect("unique name");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let shards_owned = gauge(SHARDS_OWNED, "Shards this process owns and serves.");
        let mqtt_connected = gauge(
            MQTT_CONNECTED,
            "Whether the edge's MQTT connection is up (1) or not (0).",
        );
        let devices_connected = gauge(
            DEVICES_CONNECTED,
            "Devices (client ids) connected to the broker, as it reports them.",
        );
        let projector_lag = IntGaugeVec::new(
            Opts::new(
                PROJECTOR_LAG,
                "Log records not yet projected (end offset minus projected position), per partition.",
            ),
            &["partition"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(projector_lag.clone()))
            .expect("unique name");
        Self {
            registry,
            grpc_requests,
            grpc_duration,
            transitions,
            shards_owned,
            projector_lag,
            mqtt_connected,
            devices_connected,
            device_updates,
            deliveries,
        }
    }
}

/// Adds `delta` (+1 a connect, −1 a disconnect) to the connected devices.
pub fn devices_connected(delta: i64) {
    METRICS.devices_connected.add(delta);
}

/// Records one served gRPC call.
pub fn grpc_request(method: &str, code: &str, seconds: f64) {
    let m = &*METRICS;
    m.grpc_requests.with_label_values(&[method, code]).inc();
    m.grpc_duration
        .with_label_values(&[method, code])
        .observe(seconds);
}

/// Records a durable status transition to `status`.
pub fn execution_transition(status: &str) {
    METRICS.transitions.with_label_values(&[status]).inc();
}

/// Counts one owned shard while it lives (an owner holds one while it serves its shard).
#[must_use = "the shard counts as owned only while this guard lives"]
pub struct OwnedShard(());

impl OwnedShard {
    pub fn acquire() -> Self {
        METRICS.shards_owned.inc();
        Self(())
    }
}

impl Drop for OwnedShard {
    fn drop(&mut self) {
        METRICS.shards_owned.dec();
    }
}

/// Records the sampled lag of a partition.
pub fn projector_lag(partition: u32, records: u64) {
    METRICS
        .projector_lag
        .with_label_values(&[partition.to_string().as_str()])
        .set(i64::try_from(records).unwrap_or(i64::MAX));
}

/// Drops a partition's lag series (the projector no longer owns it).
pub fn forget_projector_partition(partition: u32) {
    let _ = METRICS
        .projector_lag
        .remove_label_values(&[partition.to_string().as_str()]);
}

/// One edge's MQTT link in [`MQTT_CONNECTED`]: counted while up, uncounted when dropped.
#[derive(Debug, Default)]
pub struct MqttLink {
    up: bool,
}

impl MqttLink {
    /// Records the link's state.
    pub fn set(&mut self, up: bool) {
        if up != self.up {
            self.up = up;
            if up {
                METRICS.mqtt_connected.inc();
            } else {
                METRICS.mqtt_connected.dec();
            }
        }
    }
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Records an accepted device update.
pub fn device_update_accepted() {
    METRICS
        .device_updates
        .with_label_values(&["accepted", ""])
        .inc();
}

/// Records a rejected device update with its device error code.
pub fn device_update_rejected(code: &str) {
    METRICS
        .device_updates
        .with_label_values(&["rejected", code])
        .inc();
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Published,
    Expired,
    Failed,
}

/// Records a delivery's outcome.
pub fn delivery(outcome: DeliveryOutcome) {
    let label = match outcome {
        DeliveryOutcome::Published => "published",
        DeliveryOutcome::Expired => "expired",
        DeliveryOutcome::Failed => "failed",
    };
    METRICS.deliveries.with_label_values(&[label]).inc();
}

/// Every series in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (HTTP/1.1) on `listener` until `shutdown` completes.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
    // Register every series before the first scrape, so all of them are listed from the start.
    LazyLock::force(&METRICS);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(handle);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(render()),
        ),
        (&Method::GET, _) => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: metrics are at /metrics\n"),
        ),
        _ => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET is served\n"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_registered_and_rendered() {
        grpc_request("fleetcmd.v1.Test/Call", "OK", 0.002);
        execution_transition("SUCCEEDED");
        let owned = OwnedShard::acquire();
        projector_lag(3, 7);
        let mut link = MqttLink::default();
        link.set(true);
        link.set(true);
        device_update_accepted();
        device_update_rejected("InvalidStateTransition");
        delivery(DeliveryOutcome::Published);
        let text = render();
        for name in ALL {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains(
            "fleetcmd_grpc_requests_total{code=\"OK\",method=\"fleetcmd.v1.Test/Call\"} 1"
        ));
        assert!(text.contains("fleetcmd_projector_lag_records{partition=\"3\"} 7"));
        assert!(text.contains("fleetcmd_mqtt_connected 1"));
        assert!(text.contains("fleetcmd_shards_owned 1"));
        drop(owned);
        drop(link);
        let text = render();
        assert!(text.contains("fleetcmd_shards_owned 0"));
        assert!(text.contains("fleetcmd_mqtt_connected 0"));
        forget_projector_partition(3);
        assert!(!render().contains("partition=\"3\""));
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_text_format() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async move {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains(&format!("# TYPE {SHARDS_OWNED} gauge")), "{ok}");
        let missing = get("/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let _ = stop.send(());
        server.await.expect("server stops");
    }
}
