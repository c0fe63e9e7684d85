//! Device identity on the embedded broker: who may connect, as whom, and what each identity
//! may subscribe to and publish (the rules of `fleetcmd_domain::device_acl`).
//!
//! A device authenticates with a client certificate (on the TLS listener: the proxy records
//! the verified certificate of each inner connection in the [`PeerRegistry`], looked up here
//! by the connection's address) or with a password (MQTT username = its identity: a thing
//! name or `things/<name>`, or `clients/<id>`). Either way the credential registry is asked at every
//! CONNECT, so a revoked certificate or a replaced password stops working at once. Only the
//! identity that holds a client id may take it over. The edge is not a client (it works
//! inside the broker), so nothing here can impersonate or refuse it.
//!
//! The checks run as rmqtt hooks at [`GUARD_PRIORITY`], before the edge's update capture
//! (`link.rs`), which therefore never sees a publish the guard refused. Sessions are never
//! marked superuser: rmqtt skips the ACL hooks (and so the capture) for superusers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use fleetcmd_domain::device_acl::{
    identity_string, is_event_filter, is_own_update, may_subscribe, may_use_client_id, own_prefix,
    parse_identity,
};
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::ports::DeviceCredentials;
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_identity::PeerRegistry;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::hook::{Handler, HookResult, Parameter, Priority, ReturnType};
use rmqtt::types::{AuthResult, ConnectInfo, Id, PublishAclResult, SubscribeAclResult};

/// Above the update capture's priority: refusals come first.
pub const GUARD_PRIORITY: Priority = 100;

/// One authenticated connection.
#[derive(Debug, Clone)]
struct Connection {
    identity: Target,
    /// The identity's topic prefix, kept so a publish is checked without allocating.
    prefix: String,
    /// MQTT 3.1.1 has no PUBACK reason codes: a refused publish ends the connection there.
    v5: bool,
}

/// The connection key: an address is unique among live connections, and the creation time
/// tells a new connection from an old one that reused the port.
type ConnectionKey = (Option<SocketAddr>, i64);

fn key(id: &Id) -> ConnectionKey {
    (id.remote_addr, id.create_time)
}

#[derive(Default)]
struct State {
    connections: HashMap<ConnectionKey, Connection>,
    /// Which identity holds each client id, and the creation time of the connection that
    /// took it (so only the end of that session frees it).
    client_ids: HashMap<String, (Target, i64)>,
}

/// The hooks' shared state and dependencies.
#[derive(Clone)]
pub struct DeviceGuard {
    root: TopicRoot,
    peers: PeerRegistry,
    credentials: Arc<dyn DeviceCredentials>,
    /// Identities the operator allows to read `<root>/events/...` (dashboards, services).
    event_readers: Arc<std::collections::HashSet<Target>>,
    state: Arc<Mutex<State>>,
}

/// Why a CONNECT is refused (logged; the device sees only the CONNACK code).
#[derive(Debug)]
enum Refusal {
    BadCredentials(String),
    NotAuthorized(String),
}

impl Refusal {
    fn why(&self) -> &str {
        match self {
            Self::BadCredentials(why) | Self::NotAuthorized(why) => why,
        }
    }
}

impl DeviceGuard {
    pub fn new(
        root: TopicRoot,
        peers: PeerRegistry,
        credentials: Arc<dyn DeviceCredentials>,
    ) -> Self {
        Self {
            root,
            peers,
            credentials,
            event_readers: Arc::default(),
            state: Arc::default(),
        }
    }

    /// Lets these (authenticated) identities also subscribe below `<root>/events/`.
    pub fn with_event_readers(mut self, readers: impl IntoIterator<Item = Target>) -> Self {
        self.event_readers = Arc::new(readers.into_iter().collect());
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `check` of the connection `id` names (`None`: not an authenticated connection), under
    /// the lock and without copying it.
    fn with_connection<R>(&self, id: &Id, check: impl FnOnce(&Connection) -> R) -> Option<R> {
        self.state().connections.get(&key(id)).map(check)
    }

    /// Who the connecting client is, proven by its certificate or its password.
    async fn authenticate(&self, info: &ConnectInfo) -> Result<Target, Refusal> {
        let id = info.id();
        let peer = id.remote_addr.and_then(|a| self.peers.lookup(a));
        if let Some(certificate_id) = peer.as_ref().and_then(|p| p.certificate_id.clone()) {
            let owner = self
                .credentials
                .certificate_owner(&certificate_id)
                .await
                .map_err(|e| Refusal::NotAuthorized(format!("credential lookup failed: {e}")))?
                .ok_or_else(|| {
                    Refusal::NotAuthorized(format!(
                        "certificate {certificate_id} is not registered or is revoked"
                    ))
                })?;
            // A fleetcmd certificate names its identity; one registered from elsewhere may
            // not, and then the registry's owner is the identity.
            let claimed = peer
                .and_then(|p| p.common_name)
                .and_then(|cn| parse_identity(&cn));
            if claimed.is_some_and(|c| c != owner) {
                return Err(Refusal::NotAuthorized(format!(
                    "certificate {certificate_id} names another identity than its owner {}",
                    identity_string(&owner)
                )));
            }
            return Ok(owner);
        }
        let username = info
            .username()
            .map(|u| u.to_string())
            .ok_or_else(|| Refusal::NotAuthorized("no certificate and no username".into()))?;
        // `things/<name>` or `clients/<id>`; a bare name is a thing's, as on Mosquitto.
        let identity = parse_identity(&username)
            .or_else(|| Target::thing(username.as_str()).ok())
            .ok_or_else(|| {
                Refusal::BadCredentials(
                    "the username must be a thing name, things/<name> or clients/<id>".into(),
                )
            })?;
        let password = info
            .password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .ok_or_else(|| Refusal::BadCredentials("no password".into()))?;
        let hash = self
            .credentials
            .password_hash(&identity)
            .await
            .map_err(|e| Refusal::NotAuthorized(format!("credential lookup failed: {e}")))?
            .ok_or_else(|| Refusal::BadCredentials(format!("{username} has no password")))?;
        // argon2 costs milliseconds of CPU on purpose: off the broker's workers.
        let matches = tokio::task::spawn_blocking(move || {
            fleetcmd_identity::password::verify(&hash, &password)
        })
        .await
        .unwrap_or(false);
        if !matches {
            return Err(Refusal::BadCredentials(format!(
                "wrong password for {username}"
            )));
        }
        Ok(identity)
    }

    /// Records an authenticated connection, unless its client id belongs to another identity
    /// or the identity may not use it.
    fn admit(&self, info: &ConnectInfo, identity: Target) -> Result<(), Refusal> {
        let id = info.id();
        let client_id = id.client_id.to_string();
        if !may_use_client_id(&identity, &client_id) {
            return Err(Refusal::NotAuthorized(format!(
                "{} must connect with its own client id, not {client_id:?}",
                identity_string(&identity)
            )));
        }
        let mut state = self.state();
        if let Some((holder, _)) = state.client_ids.get(&client_id)
            && *holder != identity
        {
            return Err(Refusal::NotAuthorized(format!(
                "client id {client_id:?} belongs to {}",
                identity_string(holder)
            )));
        }
        state
            .client_ids
            .insert(client_id, (identity.clone(), id.create_time));
        state.connections.insert(
            key(id),
            Connection {
                prefix: own_prefix(&self.root, &identity),
                identity,
                v5: matches!(info, ConnectInfo::V5(..)),
            },
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl Handler for DeviceGuard {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let outcome = match self.authenticate(info).await {
                    Ok(identity) => self.admit(info, identity),
                    Err(r) => Err(r),
                };
                let result = match outcome {
                    Ok(()) => AuthResult::Allow(false, None),
                    Err(refusal) => {
                        tracing::info!(client_id = %info.id().client_id, remote = ?info.id().remote_addr, reason = refusal.why(), "MQTT connection refused");
                        match refusal {
                            Refusal::BadCredentials(_) => AuthResult::BadUsernameOrPassword,
                            Refusal::NotAuthorized(_) => AuthResult::NotAuthorized,
                        }
                    }
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let filter = subscribe.topic_filter.to_string();
                let allowed = self
                    .with_connection(&session.id, |c| {
                        may_subscribe(&self.root, &c.identity, &filter)
                            || (self.event_readers.contains(&c.identity)
                                && is_event_filter(&self.root, &filter))
                    })
                    .unwrap_or(false);
                if allowed {
                    return (true, acc);
                }
                tracing::info!(client_id = %session.id.client_id, %filter, "subscription refused");
                (
                    false,
                    Some(HookResult::SubscribeAclResult(
                        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized),
                    )),
                )
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let checked = self.with_connection(&session.id, |c| {
                    (is_own_update(&c.prefix, &publish.topic), c.v5)
                });
                if let Some((true, _)) = checked {
                    return (true, acc);
                }
                tracing::info!(client_id = %session.id.client_id, topic = %publish.topic, "publish refused");
                let disconnect = !checked.is_some_and(|(_, v5)| v5);
                (
                    false,
                    Some(HookResult::PublishAclResult(PublishAclResult::rejected(
                        disconnect,
                        Some("not authorized".into()),
                    ))),
                )
            }
            Parameter::ClientDisconnected(session, _) => {
                self.state().connections.remove(&key(&session.id));
                (true, acc)
            }
            Parameter::SessionTerminated(session, _) => {
                let mut state = self.state();
                let client_id = session.id.client_id.to_string();
                if state
                    .client_ids
                    .get(&client_id)
                    .is_some_and(|(_, created)| *created == session.id.create_time)
                {
                    state.client_ids.remove(&client_id);
                }
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}
