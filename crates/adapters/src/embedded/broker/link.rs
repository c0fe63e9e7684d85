//! The edge's link to the embedded broker, without an MQTT client of its own: publishes are
//! handed to the broker's router directly (`SessionState::forwards`, as if a client had
//! published them), and device updates are taken from the broker's publish path by a hook.
//! Nothing goes through a socket, the MQTT codec or a session of fleetcmd's, and no client
//! id exists that a device could take over.
//!
//! Updates are taken in the `MessagePublishCheckAcl` hook, which runs for every client
//! publish after any handler of a higher priority (where access checks belong: a publish an
//! earlier handler refused is not taken): the hook hands the update to the edge and holds the publish until the
//! edge acknowledges it, so the device's PUBACK follows the owner's decision, as with an
//! external broker. The publish then goes on to the router, where no fleetcmd session
//! subscribes to updates (another subscriber, such as a monitoring application allowed to,
//! still gets it).
//!
//! Session events come from the `SessionSubscribed` hook, which runs once the broker added a
//! subscription and before its SUBACK (a publish made after the event reaches the device),
//! and from the `ClientConnected` and `ClientDisconnected` hooks (presence).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::ports::{
    BoxStream, DeviceMessage, MqttLink, MqttMessage, PortError, PortResult, SessionEvent,
};
use fleetcmd_domain::presence::{DisconnectReason, Lifecycle};
use rmqtt::codec::v5::PublishProperties;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, Priority, ReturnType, Type};
use rmqtt::session::SessionState;
use rmqtt::types::{ClientId, CodecPublish, From, Id, Publish, QoS, Reason};
use tokio::sync::{mpsc, oneshot};

use super::Subscriptions;

/// Device messages queued for the edge before the hook waits (back-pressure on devices).
const QUEUE: usize = 16_384;
/// Session events queued for the edge before the hook waits (back-pressure on subscribers).
const SESSION_QUEUE: usize = 16_384;
/// The longest a device's publish is held for the edge's acknowledgement; the edge answers
/// well before (it gives up on an owner after 30 s and rejects).
const ACK_WAIT: Duration = Duration::from_secs(40);
/// Priority of the capture among the publish ACL handlers: below the identity checks.
pub const CAPTURE_PRIORITY: Priority = 10;

/// The embedded broker as an [`MqttLink`].
pub struct EmbeddedLink {
    scx: ServerContext,
    runtime: tokio::runtime::Handle,
    /// The identity publishes are made under (no session has it).
    from: From,
    subscriptions: Subscriptions,
    capturing: AtomicBool,
    watching_sessions: AtomicBool,
}

impl EmbeddedLink {
    pub(super) fn new(
        scx: ServerContext,
        runtime: tokio::runtime::Handle,
        subscriptions: Subscriptions,
    ) -> Self {
        let from = From::from_system(Id::new(
            scx.node.id(),
            0,
            None,
            None,
            ClientId::from("fleetcmd"),
            None,
        ));
        Self {
            scx,
            runtime,
            from,
            subscriptions,
            capturing: AtomicBool::new(false),
            watching_sessions: AtomicBool::new(false),
        }
    }

    fn to_publish(message: MqttMessage) -> Publish {
        let properties = PublishProperties {
            content_type: message.content_type.map(Into::into),
            message_expiry_interval: message
                .message_expiry_secs
                .and_then(std::num::NonZeroU32::new),
            user_properties: message
                .user_properties
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..PublishProperties::default()
        };
        let codec = CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: message.topic.into(),
            packet_id: None,
            payload: message.payload,
            properties: Some(properties),
        };
        Publish::new(Box::new(codec), None, None, Some(now_ms()))
    }
}

impl EmbeddedLink {
    /// Registers `handler` for `kind`. Registering touches the hook manager: on the broker's
    /// own runtime.
    async fn register(
        &self,
        kind: Type,
        priority: Priority,
        handler: impl Handler + 'static,
    ) -> PortResult<()> {
        let scx = self.scx.clone();
        self.runtime
            .spawn(async move {
                let register = scx.extends.hook_mgr().register();
                register
                    .add_priority(kind, priority, Box::new(handler))
                    .await;
                register.start().await;
            })
            .await
            .map_err(|e| PortError::Backend(format!("registering a broker hook: {e}")))
    }
}

/// The hook that reports granted subscriptions, connects and disconnects.
struct Sessions {
    tx: mpsc::Sender<SessionEvent>,
}

#[async_trait::async_trait]
impl Handler for Sessions {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let event = match param {
            Parameter::SessionSubscribed(session, subscribe) => SessionEvent::Subscribed {
                client_id: session.id.client_id.to_string(),
                filter: subscribe.topic_filter.to_string(),
            },
            Parameter::ClientConnected(session) => {
                SessionEvent::Lifecycle(lifecycle(&session.id, None))
            }
            Parameter::ClientDisconnected(session, reason) => {
                SessionEvent::Lifecycle(lifecycle(&session.id, Some(disconnect_reason(reason))))
            }
            _ => return (true, acc),
        };
        // The edge gone (shutting down): nobody to tell.
        let _ = self.tx.send(event).await;
        (true, acc)
    }
}

fn lifecycle(id: &Id, disconnect: Option<DisconnectReason>) -> Lifecycle {
    let port = id.remote_addr.map_or(0, |a| a.port());
    Lifecycle {
        client_id: id.client_id.to_string(),
        // The connection's identity, as the guard keys it: its start and its remote port.
        session_id: format!("{:x}{port:04x}", id.create_time),
        principal: id
            .username
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        at: now_ms(),
        disconnect,
    }
}

/// AWS's name for why rmqtt ended a connection.
fn disconnect_reason(reason: &Reason) -> DisconnectReason {
    match reason {
        Reason::ConnectDisconnect(_) => DisconnectReason::ClientInitiatedDisconnect,
        Reason::ConnectReadWriteTimeout
        | Reason::ConnectReadWriteError
        | Reason::ConnectRemoteClose
        | Reason::Unknown => DisconnectReason::ConnectionLost,
        Reason::ConnectKeepaliveTimeout => DisconnectReason::MqttKeepAliveTimeout,
        // Kicked by a new session of the same client id (not by an admin).
        Reason::ConnectKicked(false) => DisconnectReason::DuplicateClientId,
        Reason::PublishResult(_) | Reason::SubscribeRefused | Reason::DelayedPublishRefused => {
            DisconnectReason::ForbiddenAccess
        }
        Reason::ProtocolError(_) | Reason::MqttError(_) | Reason::SubscribeFailed(_) => {
            DisconnectReason::ClientError
        }
        Reason::Reasons(all) => all
            .first()
            .map_or(DisconnectReason::ConnectionLost, disconnect_reason),
        _ => DisconnectReason::ServerInitiatedDisconnect,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl MqttLink for EmbeddedLink {
    async fn publish(&self, message: MqttMessage) -> PortResult<()> {
        let publish = Self::to_publish(message);
        // Routing only hands the message to the sessions' channels: it needs no runtime of
        // the broker's and runs right here.
        SessionState::forwards(&self.scx, self.from.clone(), publish, false, None)
            .await
            .map_err(|e| PortError::Unavailable(format!("embedded broker: {e}")))
    }

    async fn device_messages(&self, filters: Vec<String>) -> PortResult<BoxStream<DeviceMessage>> {
        if self.capturing.swap(true, Ordering::AcqRel) {
            return Err(PortError::Backend(
                "the embedded link already delivers device messages".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let capture = Capture {
            filters: filters
                .iter()
                .map(|f| f.split('/').map(str::to_owned).collect())
                .collect(),
            tx,
        };
        self.register(Type::MessagePublishCheckAcl, CAPTURE_PRIORITY, capture)
            .await?;
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn session_events(&self) -> PortResult<Option<BoxStream<SessionEvent>>> {
        if self.watching_sessions.swap(true, Ordering::AcqRel) {
            return Err(PortError::Backend(
                "the embedded link already delivers session events".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        for kind in [
            Type::SessionSubscribed,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            self.register(kind, 0, Sessions { tx: tx.clone() }).await?;
        }
        Ok(Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))))
    }

    fn is_ready(&self) -> bool {
        // In process: up as long as the broker is.
        true
    }

    async fn has_subscribers(&self, topic: &str) -> bool {
        self.subscriptions.has_subscribers(topic).await
    }
}

/// The hook that takes device updates off the publish path.
struct Capture {
    /// The filters, split into levels.
    filters: Vec<Vec<String>>,
    tx: mpsc::Sender<DeviceMessage>,
}

impl Capture {
    fn wanted(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| matches_filter(f, topic))
    }
}

/// MQTT filter matching (`+` one level, a trailing `#` any number, including none).
fn matches_filter(filter: &[String], topic: &str) -> bool {
    let mut levels = topic.split('/');
    for (i, f) in filter.iter().enumerate() {
        match f.as_str() {
            "#" => return i == filter.len() - 1,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[async_trait::async_trait]
impl Handler for Capture {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublishCheckAcl(session, publish) = param else {
            return (true, acc);
        };
        // An earlier handler (the identity checks) refused it: not an update to handle.
        if let Some(HookResult::PublishAclResult(r)) = &acc
            && r.is_rejected()
        {
            return (false, acc);
        }
        if !self.wanted(&publish.topic) {
            return (true, acc);
        }
        let (acked, wait) = oneshot::channel::<()>();
        let message = DeviceMessage {
            topic: publish.topic.to_string(),
            payload: Bytes::clone(&publish.payload),
            client_id: session.id.client_id.to_string(),
            ack: Box::new(move || {
                let _ = acked.send(());
            }),
        };
        if self.tx.send(message).await.is_ok() {
            // Answered, dropped unanswered (the edge stopped), or too slow: go on either way.
            let _ = tokio::time::timeout(ACK_WAIT, wait).await;
        }
        (true, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<String> {
        s.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn filters_match_as_mqtt_does() {
        let updates = f("$aws/commands/things/+/executions/+/response/json");
        assert!(matches_filter(
            &updates,
            "$aws/commands/things/t/executions/e/response/json"
        ));
        assert!(!matches_filter(
            &updates,
            "$aws/commands/things/t/executions/e/response/cbor"
        ));
        assert!(!matches_filter(
            &updates,
            "$aws/commands/things/t/executions/e/response"
        ));
        assert!(!matches_filter(
            &updates,
            "$aws/commands/things/t/executions/e/response/json/x"
        ));
        let all = f("$aws/commands/#");
        assert!(matches_filter(&all, "$aws/commands/things/t"));
        assert!(matches_filter(&all, "$aws/commands"));
        assert!(!matches_filter(&all, "$aws/events/x"));
    }
}
