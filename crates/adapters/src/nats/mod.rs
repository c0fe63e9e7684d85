//! The NATS bus: [`NatsBus`] implements the [`Bus`] port on core NATS (async-nats 0.51).
//!
//! How the port maps onto NATS:
//! - Subjects, `*`/`>` wildcards and queue groups are NATS's own; subjects are checked here
//!   with the same rules as the in-process bus, so a bad subject fails the same way on both.
//! - `BusMessage.reply` is the NATS reply subject; `BusMessage.headers` are NATS headers.
//!   async-nats keeps headers in a hash map and trims values on receipt, so: received headers
//!   come sorted by name (values of a repeated name keep their order), and a header that would
//!   not survive the trip (empty name, a name that is not printable ASCII or holds `:`, a value
//!   with CR/LF or leading/trailing whitespace) is refused with [`PortError::Backend`] before
//!   anything is sent.
//! - Requests use one wildcard inbox subscription per bus (`_INBOX.<random>.*`) and a table of
//!   pending requests, removed when each request ends in any way. (async-nats's own `request`
//!   leaves an entry behind for every request that times out.) The server answers a request
//!   nobody listens to with a 503 status, which becomes [`PortError::NoResponders`].
//! - [`Bus::subscribe`] returns once the server has the subscription (a round trip through the
//!   inbox), so a message another connection publishes after that is delivered to it.
//!
//! Connection: async-nats reconnects forever with backoff (at most 4 s between attempts) and
//! sets TCP_NODELAY on every connection (`connector.rs`: `tcp_stream.set_nodelay(true)`), so a
//! request/reply costs no Nagle delay. Subscriptions survive a reconnect (the client subscribes
//! again); messages published while they were away are lost to them (at-most-once, as the port
//! says). While the connection is down, `publish`, `subscribe` and `request` fail at once with
//! [`PortError::Unavailable`], and a request waiting for its reply when the connection drops
//! fails with it too: callers retry with backoff. [`NatsBus::connection_state`] is the
//! readiness signal.
//!
//! Backpressure: NATS cannot slow a publisher down for a slow subscriber. Each subscription
//! buffers up to [`NatsBusOptions::subscription_capacity`] messages; past that the client drops
//! messages for it (a slow consumer, logged as a warning), and the server disconnects a client
//! that does not read its socket. Keep subscription handlers fast or hand work off.

mod inbox;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use fleetcmd_domain::ports::{BoxStream, Bus, BusMessage, PortError, PortResult};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::inbox::{Inbox, dispatch_replies};
use self::wire::{
    check_filter, check_queue_group, check_subject, connect_error, from_nats, on_event,
    parse_servers, publish_error, redact_url, subscribe_error, to_headers,
};

/// How many messages each subscription buffers by default before the client drops messages
/// for it (the async-nats default).
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Settings of a [`NatsBus`] beyond its server and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBusOptions {
    /// Messages each subscription buffers; when it is full, further messages for it are
    /// dropped (and a slow consumer is logged). At least 1.
    pub subscription_capacity: usize,
    /// Bound on one connection attempt (TCP, handshake), on [`NatsBus::connect`] and on the
    /// round trip `subscribe` makes.
    pub connection_timeout: Duration,
    /// How often the client pings the server; a connection that misses two answers is
    /// considered dead and re-established, so a silently broken link is found within about
    /// three intervals.
    pub ping_interval: Duration,
}

impl Default for NatsBusOptions {
    fn default() -> Self {
        Self {
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            connection_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// The state of a bus's connection to NATS, for readiness probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connected: operations go to the server.
    Connected,
    /// The connection is lost and the client is reconnecting in the background; operations
    /// fail with [`PortError::Unavailable`] until it is back.
    Disconnected,
    /// The bus was shut down (or its client closed); it will not reconnect.
    Closed,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Closed => "closed",
        })
    }
}

/// A [`Bus`] on a NATS server or cluster. Share it as `Arc<NatsBus>`: one connection serves
/// every publisher, subscriber and requester of a process. Dropping the last reference (or
/// [`NatsBus::shutdown`]) drains the connection: every subscription ends.
pub struct NatsBus {
    client: async_nats::Client,
    /// Follows the client's connection events; every operation checks it first, and waits
    /// race against it so a lost connection ends them at once.
    state: watch::Receiver<ConnectionState>,
    inbox: Arc<Inbox>,
    /// Routes inbox messages to pending requests; aborted when the bus is dropped.
    dispatcher: JoinHandle<()>,
    options: NatsBusOptions,
}

/// Resolves once the connection is not [`ConnectionState::Connected`] (or its events stop).
async fn connection_lost(mut state: watch::Receiver<ConnectionState>) {
    // An error means the client's event task ended: the client is gone.
    let _ = state.wait_for(|s| *s != ConnectionState::Connected).await;
}

impl NatsBus {
    /// Connects to `url` (`nats://host:port`, or several separated by commas for a cluster)
    /// as client `name` (shown by the server's monitoring), with [`NatsBusOptions::default`].
    ///
    /// The first connection must succeed: an unreachable server gives
    /// [`PortError::Unavailable`] (retry with backoff), a malformed URL or refused credentials
    /// [`PortError::Backend`]. After that the bus reconnects by itself, forever.
    pub async fn connect(url: &str, name: &str) -> PortResult<Arc<Self>> {
        Self::connect_with(url, name, NatsBusOptions::default()).await
    }

    /// [`NatsBus::connect`] with explicit options.
    #[tracing::instrument(skip_all, fields(url = %redact_url(url), client = %name), err(level = "warn"))]
    pub async fn connect_with(
        url: &str,
        name: &str,
        options: NatsBusOptions,
    ) -> PortResult<Arc<Self>> {
        let servers = parse_servers(url)?;
        let (state_tx, state_rx) = watch::channel(ConnectionState::Disconnected);
        let state_tx = Arc::new(state_tx);
        let events_tx = Arc::clone(&state_tx);
        let client_name = name.to_owned();
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(options.connection_timeout)
            .ping_interval(options.ping_interval)
            .subscription_capacity(options.subscription_capacity.max(1))
            .event_callback(move |event| {
                let state = Arc::clone(&events_tx);
                let name = client_name.clone();
                async move { on_event(&state, &name, event) }
            })
            .connect(servers)
            .await
            .map_err(|e| connect_error(url, &e))?;
        // The Connected event of this first connection may still be on its way: start from
        // what the client says now (later events keep the watch current).
        state_tx.send_replace(match client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            _ => ConnectionState::Disconnected,
        });

        let prefix = format!("{}.", client.new_inbox());
        let subscription = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| subscribe_error("the request inbox", &e))?;
        let inbox = Arc::new(Inbox {
            prefix,
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
        });
        let dispatcher = tokio::spawn(dispatch_replies(subscription, Arc::clone(&inbox)));
        let bus = Arc::new(Self {
            client,
            state: state_rx,
            inbox,
            dispatcher,
            options,
        });
        // One round trip: the server has the inbox subscription and answers.
        bus.ping(bus.options.connection_timeout).await?;
        tracing::info!("connected to NATS");
        Ok(bus)
    }

    /// The connection's current state: [`ConnectionState::Connected`] means ready.
    pub fn connection_state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// A receiver that sees every change of [`NatsBus::connection_state`] (e.g. to flip a
    /// readiness probe, or to wait for a reconnect).
    pub fn watch_connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// A round trip to the server through this bus's inbox; returns how long it took. When it
    /// returns `Ok`, the server has processed everything this bus sent before it.
    pub async fn ping(&self, timeout: Duration) -> PortResult<Duration> {
        let start = Instant::now();
        self.exchange("ping", None, Bytes::new(), None, timeout)
            .await?;
        Ok(start.elapsed())
    }

    /// Drains the connection: every subscription ends (after the messages already received),
    /// requests still waiting fail with [`PortError::Unavailable`], and later operations fail
    /// with it too. Returns without waiting for the server.
    pub async fn shutdown(&self) -> PortResult<()> {
        self.client
            .drain()
            .await
            .map_err(|e| PortError::Unavailable(format!("nats: drain: {e}")))
    }

    fn ensure_connected(&self, op: &str, subject: &str) -> PortResult<()> {
        match self.connection_state() {
            ConnectionState::Connected => Ok(()),
            ConnectionState::Disconnected => Err(PortError::Unavailable(format!(
                "nats: {op} {subject}: not connected to the server (reconnecting)"
            ))),
            ConnectionState::Closed => Err(PortError::Unavailable(format!(
                "nats: {op} {subject}: the bus is shut down"
            ))),
        }
    }

    /// Publishes to a fresh inbox subject (to `subject`, or to the inbox itself for a ping)
    /// and waits for the first message on it, the timeout or the loss of the connection.
    async fn exchange(
        &self,
        what: &str,
        subject: Option<&str>,
        payload: Bytes,
        headers: Option<HeaderMap>,
        timeout: Duration,
    ) -> PortResult<async_nats::Message> {
        let target = subject.unwrap_or("the server");
        self.ensure_connected(what, target)?;
        let (pending, rx) = self.inbox.register();
        let reply = pending.reply_subject();
        let send_and_wait = async {
            let sent = match subject {
                // A ping is a message to our own inbox: it comes back to `rx`.
                None => self.client.publish(reply, payload).await,
                Some(s) => match headers {
                    Some(h) => {
                        self.client
                            .publish_with_reply_and_headers(s.to_owned(), reply, h, payload)
                            .await
                    }
                    None => {
                        self.client
                            .publish_with_reply(s.to_owned(), reply, payload)
                            .await
                    }
                },
            };
            sent.map_err(|e| publish_error(target, &e))?;
            rx.await.map_err(|_| {
                PortError::Unavailable(format!(
                    "nats: {what} {target}: the bus shut down while waiting for the reply"
                ))
            })
        };
        let answer = tokio::select! {
            biased;
            answer = send_and_wait => answer?,
            () = tokio::time::sleep(timeout) => {
                return Err(PortError::Timeout(format!(
                    "nats: {what} {target}: no reply within {timeout:?}"
                )));
            }
            () = connection_lost(self.state.clone()) => {
                return Err(PortError::Unavailable(format!(
                    "nats: {what} {target}: the connection to the server was lost while waiting for the reply"
                )));
            }
        };
        drop(pending);
        match answer.status {
            None => Ok(answer),
            Some(StatusCode::NO_RESPONDERS) => Err(PortError::NoResponders(target.to_owned())),
            Some(status) => Err(PortError::Backend(format!(
                "nats: {what} {target}: the server answered with status {status} {}",
                answer.description.as_deref().unwrap_or("")
            ))),
        }
    }

    /// Runs `op` unless the connection is lost first (then [`PortError::Unavailable`]).
    async fn unless_lost<T>(
        &self,
        what: &str,
        subject: &str,
        op: impl Future<Output = PortResult<T>>,
    ) -> PortResult<T> {
        tokio::select! {
            biased;
            r = op => r,
            () = connection_lost(self.state.clone()) => Err(PortError::Unavailable(format!(
                "nats: {what} {subject}: the connection to the server was lost"
            ))),
        }
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.dispatcher.abort();
        // Ends every subscription of this client (they hold the connection open otherwise).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                // Already closed: nothing left to drain.
                let _ = client.drain().await;
            });
        }
    }
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.connection_state())
            .field("inbox", &self.inbox.prefix)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: BusMessage) -> PortResult<()> {
        check_subject(&message.subject)?;
        if let Some(reply) = &message.reply {
            check_subject(reply)?;
        }
        let headers = to_headers(&message.headers)?;
        self.ensure_connected("publish", &message.subject)?;
        let BusMessage {
            subject,
            reply,
            payload,
            ..
        } = message;
        let send = async {
            let client = &self.client;
            let target = subject.clone();
            let sent = match (reply, headers) {
                (None, None) => client.publish(target, payload).await,
                (None, Some(h)) => client.publish_with_headers(target, h, payload).await,
                (Some(r), None) => client.publish_with_reply(target, r, payload).await,
                (Some(r), Some(h)) => {
                    client
                        .publish_with_reply_and_headers(target, r, h, payload)
                        .await
                }
            };
            sent.map_err(|e| publish_error(&subject, &e))
        };
        self.unless_lost("publish", &subject, send).await
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> PortResult<BoxStream<BusMessage>> {
        check_filter(subject)?;
        if let Some(g) = queue_group {
            check_queue_group(g)?;
        }
        self.ensure_connected("subscribe", subject)?;
        let subscribe = async {
            let subscription = match queue_group {
                None => self.client.subscribe(subject.to_owned()).await,
                Some(g) => {
                    self.client
                        .queue_subscribe(subject.to_owned(), g.to_owned())
                        .await
                }
            };
            subscription.map_err(|e| subscribe_error(subject, &e))
        };
        let subscription = self.unless_lost("subscribe", subject, subscribe).await?;
        // The server reads this connection in order: once the ping is back, it has the
        // subscription (if the ping fails, dropping `subscription` unsubscribes).
        self.ping(self.options.connection_timeout).await?;
        Ok(Box::pin(subscription.filter_map(|m| {
            // Status messages (flow control and the like) are not bus messages.
            futures::future::ready(m.status.is_none().then(|| from_nats(m)))
        })))
    }

    async fn request(&self, message: BusMessage, timeout: Duration) -> PortResult<BusMessage> {
        check_subject(&message.subject)?;
        let headers = to_headers(&message.headers)?;
        let answer = self
            .exchange(
                "request",
                Some(&message.subject),
                message.payload,
                headers,
                timeout,
            )
            .await?;
        Ok(from_nats(answer))
    }
}
