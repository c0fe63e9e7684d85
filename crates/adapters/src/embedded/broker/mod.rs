//! The embedded MQTT broker: rmqtt on a dedicated thread with its own tokio runtime.
//!
//! rmqtt has no shutdown API, so the broker gets a runtime of its own: stopping means
//! shutting that runtime down, which drops the listener and every connection task. This
//! also keeps the broker's work off the caller's runtime.
//!
//! Defaults changed from rmqtt's (see docs/engines.md): TCP_NODELAY on (otherwise every QoS 1
//! round trip waits on Nagle and delayed ACKs), per-session queues of
//! [`MAX_SESSION_QUEUE`] messages (rmqtt's 1000 silently drops the excess after PUBACK),
//! no busy check (it refuses connections under load), packets up to [`MAX_PACKET_BYTES`],
//! [`MAX_INFLIGHT`] unacknowledged messages per session instead of 16, and shared
//! subscriptions (`$share/<group>/<filter>`, also on `$aws/...`) served round
//! robin among the group's online members.
//!
//! rmqtt defaults kept: a queued message without a message-expiry property expires after 5
//! minutes, and a persistent session of a client that states no session expiry (MQTT 3.1.1
//! with `clean_session=false`) is kept 2 hours after it disconnects.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fleetcmd_domain::ports::PortError;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};
use tokio::sync::oneshot;

use crate::error::Error;

pub mod guard;
pub mod link;

/// Messages queued per session (offline or slow clients) before rmqtt drops new ones.
pub const MAX_SESSION_QUEUE: usize = 100_000;
/// The largest MQTT packet the broker accepts.
pub const MAX_PACKET_BYTES: u32 = 1024 * 1024;
/// Unacknowledged QoS 1/2 messages in flight to one session (capped by a v5 client's
/// receive maximum). rmqtt's 16 would throttle a bridge session (the edge) that carries
/// every device's traffic.
pub const MAX_INFLIGHT: u16 = 256;
/// Worker threads of the broker's runtime.
const BROKER_THREADS: usize = 2;
/// How long shutdown waits for the broker's tasks to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running embedded MQTT broker (MQTT 3.1.1 and 5 over TCP). Stops on [`Self::shutdown`]
/// or drop.
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    subscriptions: Subscriptions,
    scx: ServerContext,
    /// The broker's runtime, for work that must run there (registering hooks).
    runtime: tokio::runtime::Handle,
    /// Dropping or firing it makes the broker thread shut its runtime down.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A read-only view of the broker's subscriptions, usable from any runtime.
#[derive(Clone)]
pub struct Subscriptions {
    scx: ServerContext,
    /// The identity a lookup runs under (no session has it, so MQTT 5 "no local" never
    /// hides a subscriber).
    asker: Id,
}

impl Subscriptions {
    fn new(scx: ServerContext) -> Self {
        let asker = Id::new(
            scx.node.id(),
            0,
            None,
            None,
            ClientId::from("fleetcmd-subscription-probe"),
            None,
        );
        Self { scx, asker }
    }

    /// Whether any session — online, or persistent and offline — subscribes to a filter
    /// that matches `topic`: exactly when a publish to `topic` would reach someone. A topic
    /// the router cannot parse counts as having subscribers (the publish then decides).
    pub async fn has_subscribers(&self, topic: &str) -> bool {
        let router = self.scx.extends.router().await;
        match router
            .matches(self.asker.clone(), &TopicName::from(topic))
            .await
        {
            Ok(map) => map.values().any(|relations| !relations.is_empty()),
            Err(e) => {
                tracing::debug!(topic, error = %e, "subscription lookup failed");
                true
            }
        }
    }
}

impl EmbeddedBroker {
    /// Binds `addr` (port 0 picks a free port) and starts serving anyone (no
    /// authentication, every topic open). Returns once the listener is bound; blocks the
    /// calling thread for that short while.
    pub fn start(addr: SocketAddr) -> Result<EmbeddedBroker, PortError> {
        Self::start_inner(addr, true).map_err(PortError::from)
    }

    /// Like [`Self::start`], but every client must authenticate through `guard` and is
    /// confined to its own topics. The guard is in place before the listener accepts.
    pub fn start_guarded(
        addr: SocketAddr,
        guard: guard::DeviceGuard,
    ) -> Result<EmbeddedBroker, PortError> {
        let broker = Self::start_inner(addr, false).map_err(PortError::from)?;
        let scx = broker.scx.clone();
        let (done, registered) = std::sync::mpsc::sync_channel(1);
        // Registering touches the hook manager: on the broker's own runtime. Until it is
        // done an unauthenticated client is refused (anonymous logins are off).
        broker.runtime.spawn(async move {
            let register = scx.extends.hook_mgr().register();
            for typ in [
                Type::ClientAuthenticate,
                Type::ClientSubscribeCheckAcl,
                Type::MessagePublishCheckAcl,
                Type::ClientDisconnected,
                Type::SessionTerminated,
            ] {
                register
                    .add_priority(typ, guard::GUARD_PRIORITY, Box::new(guard.clone()))
                    .await;
            }
            register.start().await;
            let _ = done.send(());
        });
        registered
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| PortError::Backend("registering the device guard timed out".into()))?;
        Ok(broker)
    }

    /// The address the broker listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The broker as the edge's [`MqttLink`](fleetcmd_domain::ports::MqttLink): publishes go
    /// straight to its router, device updates come from its publish hook.
    pub fn link(&self) -> link::EmbeddedLink {
        link::EmbeddedLink::new(
            self.scx.clone(),
            self.runtime.clone(),
            self.subscriptions.clone(),
        )
    }

    /// The broker's subscriptions, to ask whether a topic has subscribers.
    pub fn subscriptions(&self) -> Subscriptions {
        self.subscriptions.clone()
    }

    /// Stops the broker and waits (briefly) for its thread to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may already be gone (it failed); nothing to stop then.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the embedded MQTT broker thread panicked");
        }
    }

    fn start_inner(addr: SocketAddr, allow_anonymous: bool) -> Result<EmbeddedBroker, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BROKER_THREADS)
            .thread_name("fleetcmd-mqtt")
            .enable_all()
            .build()
            .map_err(|e| Error::Broker(format!("building the broker runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (ready_tx, ready_rx) =
            std::sync::mpsc::sync_channel::<Result<(SocketAddr, ServerContext), Error>>(1);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fleetcmd-mqtt-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let server = match build_server(addr, allow_anonymous).await {
                        Ok((server, local, scx)) => {
                            let _ = ready_tx.send(Ok((local, scx)));
                            server
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let serve = tokio::spawn(async move {
                        if let Err(e) = server.run().await {
                            tracing::error!(error = %e, "the embedded MQTT broker stopped");
                        }
                    });
                    // Ends on `shutdown()` or when the handle is dropped (sender gone).
                    let _ = stop_rx.await;
                    serve.abort();
                });
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(|e| Error::Broker(format!("spawning the broker thread: {e}")))?;
        let (local_addr, scx) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Broker("the broker thread ended during start".into()));
            }
        };
        tracing::info!(%local_addr, "embedded MQTT broker listening");
        Ok(EmbeddedBroker {
            local_addr,
            subscriptions: Subscriptions::new(scx.clone()),
            scx,
            runtime: handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Builds the server context and binds the listener (inside the broker runtime: binding
/// registers the socket with that runtime's reactor).
async fn build_server(
    addr: SocketAddr,
    allow_anonymous: bool,
) -> Result<(MqttServer, SocketAddr, ServerContext), Error> {
    let scx = ServerContext::new().busy_check_enable(false).build().await;
    *scx.extends.shared_subscription_mut().await = Box::new(RoundRobinShared::default());
    let listener = Builder::new()
        .name("fleetcmd/tcp")
        .laddr(addr)
        .nodelay(true)
        .reuseaddr(Some(true))
        // Off: a client without a username then reaches the guard's authentication hook
        // (a certificate login sends none).
        .allow_anonymous(allow_anonymous)
        .max_mqueue_len(MAX_SESSION_QUEUE)
        .max_packet_size(MAX_PACKET_BYTES)
        .max_inflight(NonZeroU16::new(MAX_INFLIGHT).unwrap_or(NonZeroU16::MIN))
        // A QoS 1 message not acknowledged within this is sent again (DUP). rmqtt's default is
        // 20 s; on a session that just resumed, an in-flight message otherwise waits that long.
        .message_retry_interval(std::time::Duration::from_secs(3))
        .bind()
        .map_err(|e| Error::Broker(format!("binding {addr}: {e}")))?
        .tcp()
        .map_err(|e| Error::Broker(format!("TCP listener on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Broker(format!("listener address: {e}")))?;
    // The listener id must be unique within this server; there is one listener.
    let server = MqttServer::new(scx.clone())
        .listener_by_id(listener, 1)
        .build();
    Ok((server, local, scx))
}

/// Shared subscriptions: each message goes to one member of the group, round robin over
/// the online members (an offline persistent member is chosen only when none is online,
/// and then queues the message).
#[derive(Default)]
struct RoundRobinShared {
    next: AtomicUsize,
}

#[async_trait::async_trait]
impl SharedSubscription for RoundRobinShared {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher_id: &Id,
        _topic: &TopicName,
        ncs: &[(
            NodeId,
            ClientId,
            SubscriptionOptions,
            Option<Vec<SubscriptionIdentifier>>,
            Option<IsOnline>,
        )],
    ) -> Option<(usize, IsOnline)> {
        if ncs.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..ncs.len())
            .map(|i| (start + i) % ncs.len())
            .find(|&i| ncs[i].4.unwrap_or(true))
            .map(|i| (i, true))
            .or(Some((start % ncs.len(), false)))
    }
}
