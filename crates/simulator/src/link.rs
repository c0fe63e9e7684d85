//! One MQTT connection, 3.1.1 or 5, behind one small interface: rumqttc has a separate
//! client and event loop per protocol version, and the device logic should not care.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as PacketV5};
use rumqttc::{NetworkOptions, Outgoing};

use super::{DeviceOptions, MqttVersion};

/// The largest packet accepted either way: commands are at most 32 KB, with headroom.
const MAX_PACKET_BYTES: usize = 256 * 1024;
/// Unacknowledged QoS 1 publishes of one device (MQTT 5; 3.1.1 clients default to 100).
const MAX_INFLIGHT: u16 = 64;
/// Requests (publishes, subscribes) buffered between the device logic and the event loop.
const REQUEST_CHANNEL_CAPACITY: usize = 128;

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 only.
    pub content_type: Option<String>,
    /// MQTT 5 only: seconds left before the broker would have dropped it.
    pub message_expiry_secs: Option<u32>,
}

/// What one turn of the event loop produced, reduced to what the device needs.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    ConnAck { session_present: bool },
    SubAck { granted: usize, refused: usize },
    Publish(Message),
    Disconnected,
    Other,
}

impl LinkEvent {
    /// The SUBACK of one filter per return code, counted by `granted`.
    fn sub_ack<C>(codes: &[C], granted: impl Fn(&C) -> bool) -> Self {
        let granted = codes.iter().filter(|c| granted(c)).count();
        Self::SubAck {
            granted,
            refused: codes.len() - granted,
        }
    }
}

/// The sending half; cheap to clone, usable from any task.
#[derive(Clone)]
pub enum Publisher {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The connection itself; must be polled continuously (it also reconnects).
pub enum Link {
    V3(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

fn network_options() -> NetworkOptions {
    let mut network = NetworkOptions::new();
    // Nagle plus delayed ACKs cost ~40 ms per QoS 1 round trip (docs/engines.md).
    network.set_tcp_nodelay(true);
    network
}

/// Builds the client and its event loop; nothing is dialed until the first poll. The
/// session is persistent (clean session / clean start off) so that requests published
/// while the device is offline are queued by the broker and delivered on reconnect.
pub fn open(opts: &DeviceOptions) -> (Publisher, Link) {
    use fleetcmd_domain::device_acl::identity_string;
    let client_id = opts.target.id.clone();
    match opts.mqtt_version {
        MqttVersion::V3 => {
            let mut o = rumqttc::MqttOptions::new(client_id, &opts.broker_host, opts.broker_port);
            o.set_clean_session(false)
                .set_keep_alive(opts.keep_alive)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
                .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
            if let Some(tls) = &opts.tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            if let Some(password) = &opts.password {
                o.set_credentials(identity_string(&opts.target), password);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, REQUEST_CHANNEL_CAPACITY);
            eventloop.set_network_options(network_options());
            (Publisher::V3(client), Link::V3(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(client_id, &opts.broker_host, opts.broker_port);
            o.set_clean_start(false)
                .set_session_expiry_interval(Some(
                    u32::try_from(opts.session_expiry.as_secs()).unwrap_or(u32::MAX),
                ))
                .set_keep_alive(opts.keep_alive)
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY)
                // rumqttc's v5 default (65535) pre-allocates ~16 MiB of packet slots per
                // client; a device has a few updates in flight at most.
                .set_outgoing_inflight_upper_limit(MAX_INFLIGHT)
                .set_network_options(network_options());
            if let Some(tls) = &opts.tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            if let Some(password) = &opts.password {
                o.set_credentials(identity_string(&opts.target), password);
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, REQUEST_CHANNEL_CAPACITY);
            (Publisher::V5(client), Link::V5(Box::new(eventloop)))
        }
    }
}

impl Publisher {
    /// QoS 1 publish. Resolves once the event loop has taken the request, not on PUBACK.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::V3(c) => {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await?
            }
            Self::V5(c) => {
                c.publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?
            }
        }
        Ok(())
    }

    /// One SUBSCRIBE with every filter at QoS 1.
    pub async fn subscribe(&self, filters: Vec<String>) -> anyhow::Result<()> {
        match self {
            Self::V3(c) => {
                c.subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, rumqttc::QoS::AtLeastOnce)),
                )
                .await?
            }
            Self::V5(c) => {
                c.subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| Filter::new(f, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)),
                )
                .await?
            }
        }
        Ok(())
    }

    /// Queues a clean DISCONNECT (the broker keeps the session).
    async fn disconnect(&self) -> anyhow::Result<()> {
        match self {
            Self::V3(c) => c.disconnect().await?,
            Self::V5(c) => c.disconnect().await?,
        }
        Ok(())
    }
}

impl Link {
    /// One turn of the event loop. An error means the connection is down; polling again
    /// reconnects.
    pub async fn poll(&mut self) -> Result<LinkEvent, String> {
        match self {
            Self::V3(el) => {
                use rumqttc::{Event, Packet, SubscribeReasonCode};
                // 3.1.1 refuses a filter with its one failure code.
                let granted = |c: &SubscribeReasonCode| !matches!(c, SubscribeReasonCode::Failure);
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(ack)) => Ok(LinkEvent::ConnAck {
                        session_present: ack.session_present,
                    }),
                    Event::Incoming(Packet::SubAck(ack)) => {
                        Ok(LinkEvent::sub_ack(&ack.return_codes, granted))
                    }
                    Event::Incoming(Packet::Publish(p)) => Ok(LinkEvent::Publish(Message {
                        topic: p.topic,
                        payload: p.payload,
                        content_type: None,
                        message_expiry_secs: None,
                    })),
                    Event::Incoming(Packet::Disconnect) | Event::Outgoing(Outgoing::Disconnect) => {
                        Ok(LinkEvent::Disconnected)
                    }
                    _ => Ok(LinkEvent::Other),
                }
            }
            Self::V5(el) => {
                use rumqttc::v5::Event;
                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                // MQTT 5 refuses with one of many reasons and grants with a QoS.
                let granted =
                    |c: &SubscribeReasonCode| matches!(c, SubscribeReasonCode::Success(_));
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(PacketV5::ConnAck(ack)) => Ok(LinkEvent::ConnAck {
                        session_present: ack.session_present,
                    }),
                    Event::Incoming(PacketV5::SubAck(ack)) => {
                        Ok(LinkEvent::sub_ack(&ack.return_codes, granted))
                    }
                    Event::Incoming(PacketV5::Publish(p)) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let (content_type, message_expiry_secs) = match p.properties {
                            Some(props) => (props.content_type, props.message_expiry_interval),
                            None => (None, None),
                        };
                        Ok(LinkEvent::Publish(Message {
                            topic,
                            payload: p.payload,
                            content_type,
                            message_expiry_secs,
                        }))
                    }
                    Event::Incoming(PacketV5::Disconnect(_))
                    | Event::Outgoing(Outgoing::Disconnect) => Ok(LinkEvent::Disconnected),
                    _ => Ok(LinkEvent::Other),
                }
            }
        }
    }

    /// Sends a clean DISCONNECT and polls until it is out (or the connection is gone), at
    /// most `within`. Polling while queueing matters: the request channel may be full.
    pub async fn close(&mut self, publisher: &Publisher, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            let disconnect = publisher.disconnect();
            tokio::pin!(disconnect);
            let mut queued = false;
            loop {
                tokio::select! {
                    result = &mut disconnect, if !queued => {
                        queued = true;
                        if result.is_err() {
                            break;
                        }
                    }
                    event = self.poll() => match event {
                        Ok(LinkEvent::Disconnected) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
        })
        .await;
    }
}
