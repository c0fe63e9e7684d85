//! The edge: bridges the bus and an MQTT broker. It holds no execution state.
//!
//! - Device updates (`.../executions/<id>/response/{json,cbor}`) are parsed, sent to the
//!   owner of the target's shard, and answered on `/accepted` or `/rejected`. The update's
//!   PUBACK is sent only after the owner answered, so an update the broker considers
//!   delivered has been appended (or refused).
//! - Deliveries from the dispatcher are published QoS 1 with the MQTT 5 content type and a
//!   message expiry equal to the remaining execution timeout.
//! - Projected status changes are published on `<root>/events/commandExecution/<cmd>/<status>`.
//!
//! Updates are processed in lanes keyed by target, so one device's updates keep their order
//! while different devices proceed in parallel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::device::{self, StatusEvent};
use fleetcmd_domain::error::{Rejection, RejectionCode};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{command_arn, target_arn};
use fleetcmd_domain::ports::{Bus, Clock, PortError};
use fleetcmd_domain::protocol::{
    DELIVER_SUBJECT, EDGE_QUEUE_GROUP, EVENTS_ALL, ShardReply, ShardRequest,
};
use fleetcmd_domain::shard::hash_key;
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_service_kit::{CallError, ShardClient};
use fleetcmd_telemetry::context as trace_context;
use fleetcmd_telemetry::metrics::{self, DeliveryOutcome};
use futures::StreamExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, Span};

/// Most QoS 1 publishes the edge keeps unacknowledged (the broker may grant fewer).
const EDGE_MAX_INFLIGHT: u16 = 1024;

/// Edge settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub broker_host: String,
    pub broker_port: u16,
    /// MQTT client id of this edge instance (unique per instance; the session is persistent).
    pub client_id: String,
    pub topic_root: TopicRoot,
    /// Parallel update lanes (updates of one target always share a lane).
    pub lanes: usize,
    /// Region and account used in ARNs of status events.
    pub arn_region: String,
    pub arn_account: String,
    /// Split of device updates across edge instances: this instance handles targets whose
    /// hash modulo `instances` equals `instance` (1/0: handles all).
    pub instances: u32,
    pub instance: u32,
    /// How long a device update keeps being retried while its shard has no owner (a shard
    /// moving after a dispatcher died): the device is waiting for its reply meanwhile.
    pub update_retry_budget: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            broker_host: "127.0.0.1".into(),
            broker_port: 1883,
            client_id: "fleetcmd-edge-0".into(),
            topic_root: TopicRoot::default(),
            lanes: 64,
            arn_region: "local".into(),
            arn_account: "000000000000".into(),
            instances: 1,
            instance: 0,
            update_retry_budget: Duration::from_secs(30),
        }
    }
}

/// The engines the edge works with.
#[derive(Clone)]
pub struct EdgeDeps {
    pub bus: Arc<dyn Bus>,
    pub shards: ShardClient,
    pub clock: Arc<dyn Clock>,
    /// Where the broker can say whether a topic has subscribers (the embedded one can):
    /// status events nobody subscribes to are then not published at all, which changes
    /// nothing anyone can observe and spares two publishes per execution. `None` (an
    /// external broker): every status event is published.
    pub event_subscribers: Option<Arc<dyn SubscriberProbe>>,
}

/// Tells whether a publish to a topic would reach any subscriber.
#[async_trait::async_trait]
pub trait SubscriberProbe: Send + Sync {
    /// True when some session (online, or persistent and offline) subscribes to a filter
    /// matching `topic`; true as well when the answer is not known.
    async fn has_subscribers(&self, topic: &str) -> bool;
}

/// The MQTT connection's state, for readiness probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
}

/// Runs the edge until `shutdown` turns true. Returns a watch of the MQTT link state.
pub async fn run(
    config: EdgeConfig,
    deps: EdgeDeps,
    shutdown: watch::Receiver<bool>,
) -> Result<watch::Receiver<LinkState>, PortError> {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.broker_host.clone(),
        config.broker_port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_manual_acks(true)
        .set_max_packet_size(Some(1024 * 1024))
        // rumqttc's v5 default upper limit (65535) allocates a slot per possible packet id
        // up front, ~16 MiB; brokers grant far fewer (the embedded one 256, Mosquitto 20 by
        // default), so a bounded window costs nothing.
        .set_outgoing_inflight_upper_limit(EDGE_MAX_INFLIGHT);
    let mut net = options.network_options();
    net.set_tcp_nodelay(true);
    options.set_network_options(net);
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    let (link_tx, link_rx) = watch::channel(LinkState::Connecting);
    let config = Arc::new(config);

    // Update lanes.
    let mut update_shards = deps.shards.clone();
    update_shards.retry_budget = config.update_retry_budget;
    let mut lanes = Vec::with_capacity(config.lanes.max(1));
    for _ in 0..config.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<Publish>(1024);
        lanes.push(tx);
        tokio::spawn(lane(
            rx,
            client.clone(),
            config.clone(),
            update_shards.clone(),
        ));
    }

    // Deliveries and events from the bus.
    let deliveries = deps
        .bus
        .subscribe(DELIVER_SUBJECT, Some(EDGE_QUEUE_GROUP))
        .await?;
    tokio::spawn(forward_deliveries(
        deliveries,
        client.clone(),
        deps.clock.clone(),
    ));
    let events = deps.bus.subscribe(EVENTS_ALL, Some("edge-events")).await?;
    tokio::spawn(forward_events(
        events,
        client.clone(),
        config.clone(),
        deps.event_subscribers.clone(),
    ));

    tokio::spawn(async move {
        mqtt_loop(eventloop, client.clone(), config, lanes, link_tx, shutdown).await;
        let _ = client.disconnect().await;
    });
    Ok(link_rx)
}

async fn mqtt_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    config: Arc<EdgeConfig>,
    lanes: Vec<mpsc::Sender<Publish>>,
    link: watch::Sender<LinkState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected = metrics::MqttLink::default();
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                link.send_replace(LinkState::Connected);
                connected.set(true);
                tracing::info!(client_id = %config.client_id, "edge connected to the MQTT broker");
                let filters: Vec<Filter> = config
                    .topic_root
                    .update_filters()
                    .into_iter()
                    .map(|f| Filter::new(f, QoS::AtLeastOnce))
                    .collect();
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::error!(error = %e, "subscribing to device updates failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let key = target_key(&publish.topic);
                if config.instances > 1
                    && hash_key(&key) % u64::from(config.instances) != u64::from(config.instance)
                {
                    // Another edge instance handles this target.
                    if let Err(e) = client.ack(&publish).await {
                        tracing::warn!(error = %e, "acknowledging a device update failed");
                    }
                    continue;
                }
                let lane = (hash_key(&key) % lanes.len() as u64) as usize;
                if let Err(e) = lanes[lane].send(publish).await {
                    tracing::error!(error = %e, "update lane closed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                link.send_replace(LinkState::Connecting);
                connected.set(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => { if *shutdown.borrow() { return; } }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The `<kind>/<id>` segments after `<root>/commands/`: lanes and edge shares are chosen by
/// it, so one device's updates stay in order on one instance and lane.
fn target_key(topic: &[u8]) -> String {
    let topic = String::from_utf8_lossy(topic);
    let mut parts = topic
        .split("/commands/")
        .nth(1)
        .unwrap_or("")
        .splitn(3, '/');
    format!(
        "{}/{}",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    )
}

async fn lane(
    mut rx: mpsc::Receiver<Publish>,
    client: AsyncClient,
    config: Arc<EdgeConfig>,
    shards: ShardClient,
) {
    while let Some(publish) = rx.recv().await {
        // Devices send no trace context: this span starts a trace of its own, and the shard
        // owner links it from the execution's trace, which the update joins.
        let span = if trace_context::enabled() {
            tracing::info_span!(
                "edge.update",
                otel.kind = "consumer",
                topic = %String::from_utf8_lossy(&publish.topic),
            )
        } else {
            Span::none()
        };
        handle_update(&publish, &client, &config, &shards)
            .instrument(span)
            .await;
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "acknowledging a device update failed");
        }
    }
}

async fn handle_update(
    publish: &Publish,
    client: &AsyncClient,
    config: &EdgeConfig,
    shards: &ShardClient,
) {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        tracing::debug!("device update on a non-UTF-8 topic ignored");
        return;
    };
    let (target, execution_id, format) = match config.topic_root.parse_update(topic) {
        Ok(parsed) => parsed,
        Err(rejection) => {
            // Our filters only match well-formed prefixes; a bad id cannot be answered on a valid topic.
            tracing::debug!(%topic, %rejection, "device update on an invalid topic ignored");
            return;
        }
    };
    let reply = |accepted: bool| {
        config
            .topic_root
            .reply(&target, &execution_id, accepted, format)
    };
    let update = match device::parse_update(format, &publish.payload) {
        Ok(u) => u,
        Err(rejection) => {
            let body = device::encode_rejected(
                format,
                execution_id.as_str(),
                device::peek_client_token(format, &publish.payload).as_deref(),
                &rejection,
            );
            metrics::device_update_rejected(rejection.code.device_code());
            publish_reply(client, reply(false), body).await;
            return;
        }
    };
    let token = update.client_token.clone();
    let request = ShardRequest::Execution {
        execution_id: execution_id.clone(),
        target: target.clone(),
        input: ExecutionInput::Report {
            status: update.status,
            status_reason: update.status_reason,
            result: update.result,
        },
    };
    let (accepted, body) = match shards.call(&request).await {
        Ok(ShardReply::Execution { .. }) => {
            metrics::device_update_accepted();
            (
                true,
                device::encode_accepted(format, &execution_id, token.as_deref()),
            )
        }
        Ok(ShardReply::Rejected(r)) => {
            metrics::device_update_rejected(r.code.device_code());
            (
                false,
                device::encode_rejected(format, execution_id.as_str(), token.as_deref(), &r),
            )
        }
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected shard reply to a device update");
            let r = Rejection::new(RejectionCode::InternalError, "unexpected reply; retry");
            metrics::device_update_rejected(r.code.device_code());
            (
                false,
                device::encode_rejected(format, execution_id.as_str(), token.as_deref(), &r),
            )
        }
        Err(
            e @ (CallError::Unavailable { .. }
            | CallError::Timeout { .. }
            | CallError::Internal { .. }),
        ) => {
            tracing::warn!(error = %e, "device update could not reach its shard");
            let r = Rejection::new(RejectionCode::InternalError, format!("{e}"));
            metrics::device_update_rejected(r.code.device_code());
            (
                false,
                device::encode_rejected(format, execution_id.as_str(), token.as_deref(), &r),
            )
        }
    };
    publish_reply(client, reply(accepted), body).await;
}

async fn publish_reply(client: &AsyncClient, topic: String, body: Vec<u8>) {
    if let Err(e) = client
        .publish(topic, QoS::AtLeastOnce, false, Bytes::from(body))
        .await
    {
        tracing::warn!(error = %e, "publishing a reply failed");
    }
}

async fn forward_deliveries(
    mut sub: fleetcmd_domain::ports::BoxStream<fleetcmd_domain::ports::BusMessage>,
    client: AsyncClient,
    clock: Arc<dyn Clock>,
) {
    while let Some(msg) = sub.next().await {
        let d = match fleetcmd_contracts::codec::decode_delivery(&msg.payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "malformed delivery");
                continue;
            }
        };
        let mut props = PublishProperties {
            content_type: Some(d.content_type.clone()),
            ..Default::default()
        };
        if let Some(expires_at) = d.expires_at {
            let remaining_ms = expires_at - clock.now_ms();
            if remaining_ms <= 0 {
                tracing::debug!(topic = %d.topic, "delivery expired before it could be sent");
                metrics::delivery(DeliveryOutcome::Expired);
                continue;
            }
            // Whole seconds left, rounded up here: brokers count down from it and round down
            // themselves, so a 10 s timeout arrives as 9 as with AWS, and a 1 s timeout is not
            // rounded away to "no expiry".
            props.message_expiry_interval = Some(((remaining_ms + 999) / 1000) as u32);
        }
        // The device sees the execution's trace as the MQTT 5 user property `traceparent`.
        let span = publish_span("edge.deliver", &msg.headers, &d.topic);
        if let Some(tp) = trace_context::traceparent(&span) {
            props
                .user_properties
                .push((trace_context::TRACEPARENT.to_string(), tp));
        }
        match client
            .publish_with_properties(
                d.topic,
                QoS::AtLeastOnce,
                false,
                Bytes::from(d.payload),
                props,
            )
            .instrument(span)
            .await
        {
            Ok(()) => metrics::delivery(DeliveryOutcome::Published),
            Err(e) => {
                metrics::delivery(DeliveryOutcome::Failed);
                tracing::warn!(error = %e, "publishing a delivery failed");
            }
        }
    }
}

async fn forward_events(
    mut sub: fleetcmd_domain::ports::BoxStream<fleetcmd_domain::ports::BusMessage>,
    client: AsyncClient,
    config: Arc<EdgeConfig>,
    subscribers: Option<Arc<dyn SubscriberProbe>>,
) {
    while let Some(msg) = sub.next().await {
        let c = match fleetcmd_contracts::codec::decode_changed(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "malformed status notification");
                continue;
            }
        };
        let topic = config.topic_root.event(c.command_id.as_str(), c.status);
        if let Some(probe) = &subscribers
            && !probe.has_subscribers(&topic).await
        {
            continue;
        }
        let command_arn = command_arn(&config.arn_region, &config.arn_account, &c.command_id);
        let target_arn = target_arn(&config.arn_region, &config.arn_account, &c.target);
        let body = device::encode_status_event(&StatusEvent {
            execution_id: c.execution_id.as_str(),
            status: c.status,
            status_reason: c.status_reason.as_ref(),
            command_arn: &command_arn,
            target_arn: &target_arn,
            timestamp: c.timestamp,
            result: (!c.result.is_empty()).then_some(&c.result),
        });
        let span = publish_span("edge.status_event", &msg.headers, &topic);
        let published = match trace_context::traceparent(&span) {
            None => {
                client
                    .publish(topic, QoS::AtLeastOnce, false, Bytes::from(body))
                    .await
            }
            Some(tp) => {
                let props = PublishProperties {
                    user_properties: vec![(trace_context::TRACEPARENT.to_string(), tp)],
                    ..Default::default()
                };
                client
                    .publish_with_properties(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        Bytes::from(body),
                        props,
                    )
                    .instrument(span)
                    .await
            }
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "publishing a status event failed");
        }
    }
}

/// The span of an MQTT publish on behalf of a traced bus message (none when untraced).
fn publish_span(name: &'static str, headers: &[(String, String)], topic: &str) -> Span {
    match trace_context::find(headers) {
        Some(parent) if trace_context::enabled() => {
            let span = tracing::info_span!(
                "edge.publish",
                otel.name = name,
                otel.kind = "producer",
                topic
            );
            trace_context::set_parent(&span, parent);
            span
        }
        _ => Span::none(),
    }
}
