//! The edge's link to an external MQTT broker (Mosquitto, EMQX, ...): one MQTT 5 client
//! (rumqttc) with a persistent session, QoS 1 both ways, manual acknowledgements (a device
//! update is acknowledged to the broker only once the edge handled it) and TCP_NODELAY.
//! It reconnects by itself with backoff and subscribes again on every connection; it is
//! ready once the broker acknowledged the subscription, not at CONNACK, since an update
//! published before the SUBACK would reach no one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::ports::{
    BoxStream, DeviceMessage, MqttLink, MqttMessage, PortError, PortResult,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Mutex, mpsc, watch};

/// Most QoS 1 publishes kept unacknowledged (the broker may grant fewer).
const MAX_INFLIGHT: u16 = 1024;
/// Device messages queued for the edge before the event loop waits.
const QUEUE: usize = 16_384;

/// Settings of an [`MqttClientLink`].
#[derive(Debug, Clone)]
pub struct MqttClientConfig {
    pub host: String,
    pub port: u16,
    /// Unique per edge instance: the session is persistent.
    pub client_id: String,
    /// User name and password, when the broker authenticates the edge by password.
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
}

impl MqttClientConfig {
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            credentials: None,
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// The filters to subscribe to on every connection, and where their messages go; `None`
/// until the edge asks for device messages.
type Wanted = Arc<Mutex<Option<(Vec<String>, mpsc::Sender<DeviceMessage>)>>>;

/// An external broker as an [`MqttLink`].
pub struct MqttClientLink {
    client: AsyncClient,
    ready: Arc<AtomicBool>,
    /// Filters to subscribe to on every connection, and where their messages go.
    wanted: Wanted,
    /// Wakes the event loop to subscribe now (the first `device_messages` call).
    subscribe_now: watch::Sender<u64>,
}

impl MqttClientLink {
    /// Starts the client (it connects in the background, retrying) until `shutdown` turns
    /// true.
    pub fn start(config: MqttClientConfig, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let mut options =
            MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_manual_acks(true)
            .set_max_packet_size(Some(1024 * 1024))
            // rumqttc's v5 default upper limit (65535) allocates a slot per possible packet
            // id up front, ~16 MiB; brokers grant far fewer (Mosquitto 20 by default).
            .set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
        if let Some((user, password)) = &config.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        let mut net = options.network_options();
        net.set_tcp_nodelay(true);
        options.set_network_options(net);
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (subscribe_now, subscribe_rx) = watch::channel(0);
        let link = Arc::new(Self {
            client: client.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            wanted: Arc::new(Mutex::new(None)),
            subscribe_now,
        });
        tokio::spawn(event_loop(
            eventloop,
            client,
            config.client_id,
            link.ready.clone(),
            link.wanted.clone(),
            subscribe_rx,
            shutdown,
        ));
        link
    }
}

async fn subscribe(client: &AsyncClient, filters: &[String]) {
    let filters: Vec<Filter> = filters
        .iter()
        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
        .collect();
    if let Err(e) = client.subscribe_many(filters).await {
        tracing::error!(error = %e, "subscribing to device updates failed");
    }
}

async fn event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    client_id: String,
    ready: Arc<AtomicBool>,
    wanted: Wanted,
    mut subscribe_now: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            changed = subscribe_now.changed() => {
                if changed.is_ok() && let Some((filters, _)) = wanted.lock().await.as_ref() {
                    subscribe(&client, filters).await;
                }
                continue;
            }
            changed = shutdown.changed() => {
                // A dropped sender is a shutdown too (otherwise this loop would spin).
                if changed.is_err() || *shutdown.borrow() {
                    ready.store(false, Ordering::Release);
                    let _ = client.disconnect().await;
                    return;
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(%client_id, "connected to the MQTT broker");
                if let Some((filters, _)) = wanted.lock().await.as_ref() {
                    subscribe(&client, filters).await;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => ready.store(true, Ordering::Release),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let tx = wanted.lock().await.as_ref().map(|(_, tx)| tx.clone());
                let Some(tx) = tx else {
                    let _ = client.try_ack(&publish);
                    continue;
                };
                let ack_client = client.clone();
                let acked = publish.clone();
                let message = DeviceMessage {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.clone(),
                    client_id: String::new(),
                    ack: Box::new(move || {
                        if let Err(e) = ack_client.try_ack(&acked) {
                            tracing::warn!(error = %e, "acknowledging a device update failed");
                        }
                    }),
                };
                if tx.send(message).await.is_err() {
                    let _ = client.try_ack(&publish);
                }
            }
            Ok(_) => {}
            Err(e) => {
                ready.store(false, Ordering::Release);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() { return; }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[async_trait::async_trait]
impl MqttLink for MqttClientLink {
    async fn publish(&self, message: MqttMessage) -> PortResult<()> {
        let properties = PublishProperties {
            content_type: message.content_type,
            message_expiry_interval: message.message_expiry_secs,
            user_properties: message.user_properties,
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                message.topic,
                QoS::AtLeastOnce,
                false,
                Bytes::clone(&message.payload),
                properties,
            )
            .await
            .map_err(|e| PortError::Unavailable(format!("MQTT publish: {e}")))
    }

    async fn device_messages(&self, filters: Vec<String>) -> PortResult<BoxStream<DeviceMessage>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        {
            let mut wanted = self.wanted.lock().await;
            if wanted.is_some() {
                return Err(PortError::Backend(
                    "the MQTT link already delivers device messages".into(),
                ));
            }
            *wanted = Some((filters, tx));
        }
        self.subscribe_now.send_modify(|n| *n += 1);
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
