//! The edge: bridges the bus and the devices' MQTT broker, through an [`MqttLink`] (the
//! embedded broker's own API in `fleetcmd serve`, an MQTT client of an external broker in a
//! cluster). It holds no execution state.
//!
//! - Device updates (`.../executions/<id>/response/{json,cbor}`) are parsed, sent to the
//!   owner of the target's shard, and answered on `/accepted` or `/rejected`. The update is
//!   acknowledged (PUBACK) only after the owner answered, so an update the broker considers
//!   delivered has been appended (or refused); and `/accepted` is sent only once the update
//!   is readable (`projection`), so a device that reads its execution right after sees it.
//! - Deliveries from the dispatcher are published QoS 1 with the MQTT 5 content type and a
//!   message expiry of the remaining execution timeout.
//! - Status changes are published on `<root>/events/commandExecution/<cmd>/<status>`, unless
//!   the link can tell nobody subscribes.
//! - Where the broker reports subscriptions (the embedded one), a device that subscribes to
//!   its requests gets every execution still waiting for it: the edge asks the owner of its
//!   shard to deliver them again, in start order, whatever the device's MQTT session.
//!
//! Updates are processed in lanes keyed by target, so one device's updates keep their order
//! while different devices proceed in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::device::{self, StatusEvent};
use fleetcmd_domain::error::{Rejection, RejectionCode};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{Target, command_arn, target_arn};
use fleetcmd_domain::ports::{
    BoxStream, Bus, BusMessage, Clock, DeviceMessage, MqttLink, MqttMessage, PortError,
    SessionEvent,
};
use fleetcmd_domain::protocol::{
    DELIVER_SUBJECT, EDGE_QUEUE_GROUP, EVENTS_ALL, ShardReply, ShardRequest,
};
use fleetcmd_domain::shard::hash_key;
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_service_kit::presence::Presence;
use fleetcmd_service_kit::{CallError, ProjectionWatch, ShardClient, await_projection};
use fleetcmd_telemetry::context as trace_context;
use fleetcmd_telemetry::metrics::{self, DeliveryOutcome};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, Span};

/// Edge settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
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
    pub link: Arc<dyn MqttLink>,
    /// Where an accepted update's write becomes readable, when that lags the owner's answer
    /// (a cluster: the projector writes the read model): `/accepted` waits for it. `None`
    /// when the owner's answer means readable (the embedded store projects inline).
    pub projection: Option<Arc<ProjectionWatch>>,
    /// Where device presence is kept, for whoever answers connectivity queries.
    pub presence: Arc<Presence>,
}

/// Runs the edge until `shutdown` turns true.
pub async fn run(
    config: EdgeConfig,
    deps: EdgeDeps,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PortError> {
    let config = Arc::new(config);
    let mut update_shards = deps.shards.clone();
    update_shards.retry_budget = config.update_retry_budget;
    let mut lanes = Vec::with_capacity(config.lanes.max(1));
    for _ in 0..config.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<DeviceMessage>(1024);
        lanes.push(tx);
        tokio::spawn(lane(
            rx,
            deps.link.clone(),
            config.clone(),
            update_shards.clone(),
            deps.projection.clone(),
        ));
    }
    let updates = deps
        .link
        .device_messages(config.topic_root.update_filters().to_vec())
        .await?;
    tokio::spawn(route_updates(
        updates,
        config.clone(),
        lanes,
        shutdown.clone(),
    ));

    let deliveries = deps
        .bus
        .subscribe(DELIVER_SUBJECT, Some(EDGE_QUEUE_GROUP))
        .await?;
    tokio::spawn(forward_deliveries(
        deliveries,
        deps.link.clone(),
        deps.clock.clone(),
    ));
    let events = deps.bus.subscribe(EVENTS_ALL, Some("edge-events")).await?;
    tokio::spawn(forward_events(events, deps.link.clone(), config.clone()));
    if let Some(sessions) = deps.link.session_events().await? {
        tokio::spawn(follow_sessions(
            sessions,
            config.clone(),
            deps.shards.clone(),
            deps.link.clone(),
            deps.presence.clone(),
        ));
    }
    tokio::spawn(report_link(deps.link.clone(), shutdown));
    Ok(())
}

/// Follows the broker's session events.
///
/// - A connect or disconnect is folded into `presence` and published as AWS's lifecycle
///   event (in the order the broker reported them).
/// - When a device subscribes to its own requests, the owner of its shard is asked to
///   deliver what waits for it. Each target's calls run in a task of their own (a slow shard
///   holds up no other device), one at a time: the subscriptions a device makes while its
///   call runs (one per filter of one SUBSCRIBE, typically) are answered by a single call
///   after it, so they cost two deliveries at most, and none is missed.
async fn follow_sessions(
    mut sessions: BoxStream<SessionEvent>,
    config: Arc<EdgeConfig>,
    shards: ShardClient,
    link: Arc<dyn MqttLink>,
    presence: Arc<Presence>,
) {
    // Targets with a call running; true when another subscription came meanwhile.
    let running: Arc<std::sync::Mutex<HashMap<Target, bool>>> = Arc::default();
    while let Some(event) = sessions.next().await {
        let (client_id, filter) = match event {
            SessionEvent::Subscribed { client_id, filter } => (client_id, filter),
            SessionEvent::Lifecycle(lifecycle) => {
                let payload = presence.fold(&lifecycle).payload;
                let message = MqttMessage {
                    topic: payload.topic(&config.topic_root),
                    payload: Bytes::from(payload.to_json()),
                    content_type: Some("application/json".into()),
                    message_expiry_secs: None,
                    user_properties: Vec::new(),
                };
                if let Err(e) = link.publish(message).await {
                    tracing::warn!(client_id = %lifecycle.client_id, error = %e, "could not publish a lifecycle event");
                }
                continue;
            }
        };
        let Some(target) = config.topic_root.request_subscriber(&filter) else {
            continue;
        };
        let key = format!("{}/{}", target.kind.topic_segment(), target.id);
        if !handles(&config, &key) {
            continue;
        }
        {
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = running.get_mut(&target) {
                *again = true;
                continue;
            }
            running.insert(target.clone(), false);
        }
        let (shards, running) = (shards.clone(), running.clone());
        tokio::spawn(async move {
            loop {
                deliver_pending(&shards, &target, &client_id).await;
                let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
                match running.get_mut(&target) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&target);
                        return;
                    }
                }
            }
        });
    }
}

async fn deliver_pending(shards: &ShardClient, target: &Target, client_id: &str) {
    let request = ShardRequest::DeliverPending {
        target: target.clone(),
    };
    match shards.call(&request).await {
        Ok(ShardReply::DeliveredPending { count }) => {
            tracing::debug!(client_id, %target, count, "delivered waiting executions on subscribe");
        }
        Ok(other) => {
            tracing::warn!(client_id, reply = ?other, "unexpected answer to a delivery of waiting executions");
        }
        Err(e) => {
            tracing::warn!(client_id, error = %e, "could not deliver waiting executions on subscribe; they wait for the next subscription");
        }
    }
}

/// Keeps the MQTT link gauge in step with the link.
async fn report_link(link: Arc<dyn MqttLink>, mut shutdown: watch::Receiver<bool>) {
    let mut gauge = metrics::MqttLink::default();
    loop {
        gauge.set(link.is_ready());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return; }
            }
        }
    }
}

/// Hands each device update to its target's lane (acknowledging at once the ones another
/// edge instance handles).
async fn route_updates(
    mut updates: BoxStream<DeviceMessage>,
    config: Arc<EdgeConfig>,
    lanes: Vec<mpsc::Sender<DeviceMessage>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            m = updates.next() => m,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        let Some(message) = message else { return };
        let key = target_key(&message.topic);
        if !handles(&config, &key) {
            // Another edge instance handles this target.
            (message.ack)();
            continue;
        }
        let lane = (hash_key(&key) % lanes.len() as u64) as usize;
        if let Err(e) = lanes[lane].send(message).await {
            tracing::error!(error = %e, "update lane closed");
        }
    }
}

/// Whether this edge instance handles the target of `key` (its `<kind>/<id>` topic segments).
fn handles(config: &EdgeConfig, key: &str) -> bool {
    config.instances <= 1
        || hash_key(key) % u64::from(config.instances) == u64::from(config.instance)
}

/// The `<kind>/<id>` segments after `<root>/commands/`: lanes and edge shares are chosen by
/// it, so one device's updates stay in order on one instance and lane.
fn target_key(topic: &str) -> String {
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
    mut rx: mpsc::Receiver<DeviceMessage>,
    link: Arc<dyn MqttLink>,
    config: Arc<EdgeConfig>,
    shards: ShardClient,
    projection: Option<Arc<ProjectionWatch>>,
) {
    while let Some(message) = rx.recv().await {
        // Devices send no trace context: this span starts a trace of its own, and the shard
        // owner links it from the execution's trace, which the update joins.
        let span = if trace_context::enabled() {
            tracing::info_span!("edge.update", otel.kind = "consumer", topic = %message.topic)
        } else {
            Span::none()
        };
        handle_update(
            &message,
            link.as_ref(),
            &config,
            &shards,
            projection.as_deref(),
        )
        .instrument(span)
        .await;
        (message.ack)();
    }
}

async fn handle_update(
    message: &DeviceMessage,
    link: &dyn MqttLink,
    config: &EdgeConfig,
    shards: &ShardClient,
    projection: Option<&ProjectionWatch>,
) {
    let topic = message.topic.as_str();
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
    let update = match device::parse_update(format, &message.payload) {
        Ok(u) => u,
        Err(rejection) => {
            let body = device::encode_rejected(
                format,
                execution_id.as_str(),
                device::peek_client_token(format, &message.payload).as_deref(),
                &rejection,
            );
            metrics::device_update_rejected(rejection.code.device_code());
            publish_reply(link, reply(false), body).await;
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
        Ok(ShardReply::Execution { position, .. }) => {
            // Readable before the device hears "accepted".
            if let Some(projection) = projection {
                await_projection(projection, position).await;
            }
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
    publish_reply(link, reply(accepted), body).await;
}

async fn publish_reply(link: &dyn MqttLink, topic: String, body: Vec<u8>) {
    let message = MqttMessage {
        topic,
        payload: Bytes::from(body),
        ..MqttMessage::default()
    };
    if let Err(e) = link.publish(message).await {
        tracing::warn!(error = %e, "publishing a reply failed");
    }
}

/// The MQTT 5 message expiry of a request with `remaining_ms` left before its execution
/// times out (`None`: no time is left, the request is not sent).
///
/// The whole seconds left, rounded down as AWS does (a 10 s timeout arrives as 9, since some
/// milliseconds always pass before the publish), but at least 1 while any time remains: 0
/// would be no second at all, and an absent expiry would mean "never expires".
fn message_expiry_secs(remaining_ms: i64) -> Option<u32> {
    if remaining_ms <= 0 {
        return None;
    }
    Some(
        u32::try_from(remaining_ms / 1000)
            .unwrap_or(u32::MAX)
            .max(1),
    )
}

async fn forward_deliveries(
    mut sub: BoxStream<BusMessage>,
    link: Arc<dyn MqttLink>,
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
        let mut message = MqttMessage {
            content_type: Some(d.content_type),
            ..MqttMessage::default()
        };
        if let Some(expires_at) = d.expires_at {
            let Some(expiry_secs) = message_expiry_secs(expires_at - clock.now_ms()) else {
                tracing::debug!(topic = %d.topic, "delivery expired before it could be sent");
                metrics::delivery(DeliveryOutcome::Expired);
                continue;
            };
            message.message_expiry_secs = Some(expiry_secs);
        }
        // The device sees the execution's trace as the MQTT 5 user property `traceparent`.
        let span = publish_span("edge.deliver", &msg.headers, &d.topic);
        if let Some(tp) = trace_context::traceparent(&span) {
            message
                .user_properties
                .push((trace_context::TRACEPARENT.to_string(), tp));
        }
        message.topic = d.topic;
        message.payload = Bytes::from(d.payload);
        match link.publish(message).instrument(span).await {
            Ok(()) => metrics::delivery(DeliveryOutcome::Published),
            Err(e) => {
                metrics::delivery(DeliveryOutcome::Failed);
                tracing::warn!(error = %e, "publishing a delivery failed");
            }
        }
    }
}

async fn forward_events(
    mut sub: BoxStream<BusMessage>,
    link: Arc<dyn MqttLink>,
    config: Arc<EdgeConfig>,
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
        if !link.has_subscribers(&topic).await {
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
        let mut message = MqttMessage {
            topic,
            payload: Bytes::from(body),
            ..MqttMessage::default()
        };
        if let Some(tp) = trace_context::traceparent(&span) {
            message
                .user_properties
                .push((trace_context::TRACEPARENT.to_string(), tp));
        }
        if let Err(e) = link.publish(message).instrument(span).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_expiry_is_the_whole_seconds_left_but_never_zero() {
        // A 10 s timeout, published a few milliseconds after the start, arrives as 9.
        assert_eq!(message_expiry_secs(9_996), Some(9));
        assert_eq!(message_expiry_secs(10_000), Some(10), "exactly 10 s left");
        assert_eq!(message_expiry_secs(10_999), Some(10));
        assert_eq!(message_expiry_secs(29_990), Some(29));
        // Less than a second left: 1, never 0 (no time) or absent (never expires).
        assert_eq!(message_expiry_secs(1), Some(1));
        assert_eq!(message_expiry_secs(999), Some(1));
        assert_eq!(message_expiry_secs(1_000), Some(1));
        assert_eq!(message_expiry_secs(1_999), Some(1));
        assert_eq!(message_expiry_secs(2_000), Some(2));
        // No time left: not sent.
        assert_eq!(message_expiry_secs(0), None);
        assert_eq!(message_expiry_secs(-5), None);
        // The longest timeout (12 h) and beyond what MQTT can carry.
        assert_eq!(message_expiry_secs(43_200_000), Some(43_200));
        assert_eq!(message_expiry_secs(i64::MAX), Some(u32::MAX));
    }
}
