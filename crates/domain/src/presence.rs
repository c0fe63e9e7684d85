//! Presence: when devices connect and disconnect, as AWS IoT's lifecycle events tell it
//! (`<root>/events/presence/{connected,disconnected}/<clientId>`, with AWS's JSON fields), and
//! each client id's connectivity. A thing's connectivity is that of the client id equal to
//! its name, a bare client's that of its client id: AWS's convention too (its fleet index
//! matches a thing's connectivity by client id = thing name).
//!
//! A client id's lifecycle events carry a `versionNumber` that grows by one at each connect
//! of that client id, so a reader can order them; a disconnect of a session that another one
//! already took over (same client id) says so (`DUPLICATE_CLIENTID`) and leaves the client id
//! connected.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::TimestampMs;
use crate::topics::TopicRoot;

/// Why a connection ended, in AWS's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    ClientInitiatedDisconnect,
    ConnectionLost,
    MqttKeepAliveTimeout,
    DuplicateClientId,
    ForbiddenAccess,
    ClientError,
    ServerInitiatedDisconnect,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientInitiatedDisconnect => "CLIENT_INITIATED_DISCONNECT",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::MqttKeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            Self::DuplicateClientId => "DUPLICATE_CLIENTID",
            Self::ForbiddenAccess => "FORBIDDEN_ACCESS",
            Self::ClientError => "CLIENT_ERROR",
            Self::ServerInitiatedDisconnect => "SERVER_INITIATED_DISCONNECT",
        }
    }
}

/// A connect or a disconnect the broker reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub client_id: String,
    /// Unique per connection.
    pub session_id: String,
    /// Who the client authenticated as (`things/<name>`, `clients/<id>`), or its MQTT user
    /// name; empty when anonymous.
    pub principal: String,
    pub at: TimestampMs,
    /// `None`: connected.
    pub disconnect: Option<DisconnectReason>,
}

/// A client id's connectivity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connectivity {
    pub connected: bool,
    /// When it last connected or disconnected.
    pub since: TimestampMs,
    pub last_disconnect_reason: Option<DisconnectReason>,
}

impl Connectivity {
    /// As a thing carries it (and the API and the query language read it).
    pub fn to_thing(&self) -> crate::thing::Connectivity {
        crate::thing::Connectivity {
            connected: self.connected,
            since: self.since,
            disconnect_reason: self.last_disconnect_reason.map(|r| r.as_str().to_owned()),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    connectivity: Connectivity,
    /// The connection that holds the client id (while connected).
    session_id: String,
    /// Connects of the client id so far.
    connects: u64,
}

/// Every client id's connectivity, folded from lifecycle events in the order the broker
/// reported them.
#[derive(Debug, Default)]
pub struct PresenceBoard {
    clients: HashMap<String, Entry>,
    connected: usize,
}

/// What folding one lifecycle event changed: the event to publish, and the connectivity
/// that changed (none for the disconnect of a session taken over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub payload: LifecyclePayload,
    pub changed: Option<Connectivity>,
}

/// AWS's lifecycle event body (field names as AWS spells them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecyclePayload {
    pub client_id: String,
    pub timestamp: TimestampMs,
    pub event_type: &'static str,
    pub session_identifier: String,
    pub principal_identifier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_initiated_disconnect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<&'static str>,
    pub version_number: u64,
}

impl LifecyclePayload {
    /// `<root>/events/presence/{connected,disconnected}/<clientId>`.
    pub fn topic(&self, root: &TopicRoot) -> String {
        format!(
            "{}/events/presence/{}/{}",
            root.as_str(),
            self.event_type,
            self.client_id
        )
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain fields only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl PresenceBoard {
    /// Folds one lifecycle event.
    pub fn fold(&mut self, event: &Lifecycle) -> Folded {
        let entry = self
            .clients
            .entry(event.client_id.clone())
            .or_insert_with(|| Entry {
                connectivity: Connectivity {
                    connected: false,
                    since: event.at,
                    last_disconnect_reason: None,
                },
                session_id: String::new(),
                connects: 0,
            });
        let was_connected = entry.connectivity.connected;
        let changed = match event.disconnect {
            None => {
                entry.connects += 1;
                entry.session_id.clone_from(&event.session_id);
                entry.connectivity.connected = true;
                entry.connectivity.since = event.at;
                Some(entry.connectivity.clone())
            }
            // The connection that holds the client id ended.
            Some(reason) if was_connected && entry.session_id == event.session_id => {
                entry.connectivity = Connectivity {
                    connected: false,
                    since: event.at,
                    last_disconnect_reason: Some(reason),
                };
                Some(entry.connectivity.clone())
            }
            // An earlier connection, taken over by the current one: it stays connected.
            Some(_) => None,
        };
        match (was_connected, entry.connectivity.connected) {
            (false, true) => self.connected += 1,
            (true, false) => self.connected -= 1,
            _ => {}
        }
        let version_number = entry.connects.saturating_sub(1);
        Folded {
            payload: LifecyclePayload {
                client_id: event.client_id.clone(),
                timestamp: event.at,
                event_type: if event.disconnect.is_some() {
                    "disconnected"
                } else {
                    "connected"
                },
                session_identifier: event.session_id.clone(),
                principal_identifier: event.principal.clone(),
                client_initiated_disconnect: event
                    .disconnect
                    .map(|r| r == DisconnectReason::ClientInitiatedDisconnect),
                disconnect_reason: event.disconnect.map(DisconnectReason::as_str),
                version_number,
            },
            changed,
        }
    }

    /// The connectivity of `client_id`, if it ever connected.
    pub fn connectivity(&self, client_id: &str) -> Option<&Connectivity> {
        self.clients.get(client_id).map(|e| &e.connectivity)
    }

    /// How many client ids are connected now.
    pub fn connected(&self) -> usize {
        self.connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(session: &str, at: TimestampMs, disconnect: Option<DisconnectReason>) -> Lifecycle {
        Lifecycle {
            client_id: "lamp-1".into(),
            session_id: session.into(),
            principal: "things/lamp-1".into(),
            at,
            disconnect,
        }
    }

    #[test]
    fn connects_and_disconnects_follow_the_session_that_holds_the_client_id() {
        let mut board = PresenceBoard::default();
        assert_eq!(board.connectivity("lamp-1"), None);
        let first = board.fold(&event("s1", 10, None));
        assert_eq!(first.payload.version_number, 0);
        assert_eq!(first.payload.event_type, "connected");
        assert_eq!(board.connected(), 1);
        // A takeover: s2 connects, then s1's end is reported.
        let second = board.fold(&event("s2", 20, None));
        assert_eq!(second.payload.version_number, 1);
        let taken = board.fold(&event("s1", 21, Some(DisconnectReason::DuplicateClientId)));
        assert_eq!(taken.changed, None);
        assert_eq!(taken.payload.disconnect_reason, Some("DUPLICATE_CLIENTID"));
        assert_eq!(taken.payload.client_initiated_disconnect, Some(false));
        assert_eq!(
            board.connectivity("lamp-1"),
            Some(&Connectivity {
                connected: true,
                since: 20,
                last_disconnect_reason: None
            })
        );
        assert_eq!(board.connected(), 1);
        let gone = board.fold(&event(
            "s2",
            30,
            Some(DisconnectReason::ClientInitiatedDisconnect),
        ));
        assert_eq!(gone.payload.client_initiated_disconnect, Some(true));
        assert_eq!(
            gone.changed,
            Some(Connectivity {
                connected: false,
                since: 30,
                last_disconnect_reason: Some(DisconnectReason::ClientInitiatedDisconnect)
            })
        );
        assert_eq!(board.connected(), 0);
    }

    #[test]
    fn the_payload_has_awss_fields_and_topic() {
        let mut board = PresenceBoard::default();
        let connected = board.fold(&event("s1", 10, None)).payload;
        let json: serde_json::Value = serde_json::from_slice(&connected.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "clientId": "lamp-1", "timestamp": 10, "eventType": "connected",
                "sessionIdentifier": "s1", "principalIdentifier": "things/lamp-1",
                "versionNumber": 0
            })
        );
        assert_eq!(
            connected.topic(&TopicRoot::default()),
            "$aws/events/presence/connected/lamp-1"
        );
        let lost = board
            .fold(&event("s1", 11, Some(DisconnectReason::ConnectionLost)))
            .payload;
        let json: serde_json::Value = serde_json::from_slice(&lost.to_json()).unwrap();
        assert_eq!(json["eventType"], "disconnected");
        assert_eq!(json["disconnectReason"], "CONNECTION_LOST");
        assert_eq!(json["clientInitiatedDisconnect"], false);
    }
}
