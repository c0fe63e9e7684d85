//! A simulated device that speaks the Commands device protocol (`docs/device-protocol.md`)
//! over real MQTT, for `fleetcmd device simulate`, the end-to-end tests and the load generator.
//!
//! [`run`] drives one device until a shutdown future resolves or it has handled
//! `max_executions`; [`SimulatedDevice`] wraps it in a task with an event channel. Many
//! devices can run in one process: each event names its device, and all of them may share
//! one channel.
//!
//! Shape: one loop owns the MQTT event loop (it must be polled without pause, or publishes
//! stall), and each request gets a small responder task that waits the configured delay,
//! publishes its update(s) and waits for the `/accepted` or `/rejected` reply the loop
//! routes to it. The loop never waits on a responder, so a full request channel cannot
//! deadlock it. Updates for one execution are serialised (IN_PROGRESS, then SUCCEEDED
//! only after IN_PROGRESS was accepted), as AWS asks of devices (`docs/device-protocol.md`,
//! Status updates).

mod cli;
mod link;
pub mod protocol;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::Target;
use fleetcmd_domain::topics::{RequestFormat, TopicRoot};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

pub use cli::{DeviceCmd, SimulateArgs, run_cli};
use link::{LinkEvent, Publisher};
use protocol::{Inbound, Update};

/// How the device answers each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Behavior {
    /// SUCCEEDED with result `{"ok": {"b": true}}`.
    Succeed,
    /// FAILED with reason code SIMULATED_FAILURE.
    Fail,
    /// REJECTED.
    Reject,
    /// IN_PROGRESS, then (once that is accepted) SUCCEEDED.
    Progress,
    /// No answer at all (the execution times out in the cloud).
    Silent,
}

impl Behavior {
    fn updates(self) -> &'static [Update] {
        match self {
            Self::Succeed => &[Update::Succeeded],
            Self::Fail => &[Update::Failed],
            Self::Reject => &[Update::Rejected],
            Self::Progress => &[Update::InProgress, Update::Succeeded],
            Self::Silent => &[],
        }
    }
}

/// The MQTT protocol version the device connects with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (no content type or message expiry on requests).
    #[value(name = "3", alias = "3.1.1", alias = "4")]
    V3,
    /// MQTT 5.
    #[value(name = "5")]
    V5,
}

/// Everything one simulated device needs. [`DeviceOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Who the device is; the MQTT client id is the thing name or the client id.
    pub target: Target,
    pub broker_host: String,
    pub broker_port: u16,
    pub mqtt_version: MqttVersion,
    pub behavior: Behavior,
    /// Wait this long after a request before the first update.
    pub delay: Duration,
    /// Stop after handling this many executions (answered, or canceled while pending).
    pub max_executions: Option<u64>,
    pub topic_root: TopicRoot,
    /// MQTT 5 session expiry: how long the broker keeps the session, and queues requests,
    /// while the device is offline. (3.1.1 sessions last until the broker drops them.)
    pub session_expiry: Duration,
    /// MQTT keep-alive, at least 5 s.
    pub keep_alive: Duration,
    /// How long to wait for `/accepted` or `/rejected` after an update.
    pub reply_timeout: Duration,
    /// Connect over TLS with this configuration (the server's CA, and the device's
    /// certificate when it has one).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Log in with this password (the username is the device's identity, `things/<name>`
    /// or `clients/<id>`).
    pub password: Option<String>,
}

impl DeviceOptions {
    /// Defaults: MQTT 5, succeed at once, no limit, `$aws`, 1 h session expiry, 30 s
    /// keep-alive, 10 s reply timeout.
    pub fn new(target: Target, broker_host: impl Into<String>, broker_port: u16) -> Self {
        Self {
            target,
            broker_host: broker_host.into(),
            broker_port,
            mqtt_version: MqttVersion::V5,
            behavior: Behavior::Succeed,
            delay: Duration::ZERO,
            max_executions: None,
            topic_root: TopicRoot::default(),
            session_expiry: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(10),
            tls: None,
            password: None,
        }
    }

    /// The MQTT client id: the thing name for a thing, the client id for a client.
    pub fn client_id(&self) -> &str {
        &self.target.id
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.keep_alive >= Duration::from_secs(5),
            "keep-alive must be at least 5 seconds, got {:?}",
            self.keep_alive
        );
        anyhow::ensure!(
            !self.broker_host.is_empty(),
            "broker host must not be empty"
        );
        anyhow::ensure!(
            self.max_executions != Some(0),
            "max executions must be at least 1 when set"
        );
        Ok(())
    }
}

/// Something the device saw or did, stamped when it happened.
#[derive(Debug, Clone)]
pub struct DeviceEvent {
    pub at: Instant,
    /// The device's client id.
    pub device: Arc<str>,
    pub kind: DeviceEventKind,
}

/// A request as it arrived: a struct of its own because printing, JSON and the tests each
/// read most of its fields, which a six-field variant would make every one of them list.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    pub execution_id: String,
    pub format: RequestFormat,
    pub payload: Bytes,
    pub content_type: Option<String>,
    pub message_expiry_secs: Option<u32>,
    /// A redelivery of an execution already seen, which is not answered again.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEventKind {
    /// CONNACK received; subscriptions follow.
    Connected {
        session_present: bool,
    },
    /// SUBACK received: the device is ready for requests.
    Subscribed {
        granted: usize,
        refused: usize,
    },
    /// The connection failed or dropped; the device reconnects after `retry_in`.
    ConnectionLost {
        error: String,
        retry_in: Duration,
    },
    /// A request arrived.
    Request(RequestEvent),
    /// An update was handed to the MQTT client.
    Responded {
        execution_id: String,
        status: &'static str,
    },
    Accepted {
        execution_id: String,
    },
    Rejected {
        execution_id: String,
        error: Option<String>,
        message: Option<String>,
    },
    /// No reply within the reply timeout; the responder gives up on this execution.
    ReplyTimedOut {
        execution_id: String,
    },
    /// fleetcmd told the device the execution was canceled; pending work for it stops.
    Canceled {
        execution_id: String,
        reason_code: Option<String>,
    },
    /// A message on a topic the device does not understand.
    Unexpected {
        topic: String,
    },
}

/// Counts for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub requests: u64,
    pub duplicates: u64,
    /// Executions answered (the final update's reply arrived or timed out), seen by a
    /// silent device, or canceled while pending.
    pub handled: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub canceled: u64,
}

/// Sends events if someone listens. Sending waits when the channel is full (backpressure);
/// a dropped receiver just means nobody is listening.
#[derive(Clone)]
struct Emitter {
    device: Arc<str>,
    tx: Option<mpsc::Sender<DeviceEvent>>,
}

impl Emitter {
    async fn emit(&self, kind: DeviceEventKind) {
        if let Some(tx) = &self.tx {
            let event = DeviceEvent {
                at: Instant::now(),
                device: self.device.clone(),
                kind,
            };
            let _ = tx.send(event).await;
        }
    }
}

/// A reply routed from the loop to the responder of its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Accepted,
    /// `retryable`: the error code says the same update may succeed later
    /// (`docs/device-protocol.md`, Replies).
    Rejected {
        retryable: bool,
    },
}

/// How often one update is sent again after retryable rejections (InternalError while a
/// shard moves, DataConflict), with exponential backoff: together ~15 s, longer than a
/// shard hand-over.
const UPDATE_RETRIES: u32 = 10;

fn update_retry_backoff(retry: u32) -> Duration {
    Duration::from_millis((100u64 << retry.min(5)).min(2_000))
}

/// What responders share.
struct Responders {
    publisher: Publisher,
    emitter: Emitter,
    root: TopicRoot,
    target: Target,
    behavior: Behavior,
    delay: Duration,
    reply_timeout: Duration,
}

/// A responder still working on an execution.
struct Pending {
    abort: AbortHandle,
    replies: mpsc::Sender<Reply>,
}

/// The last N execution ids seen, to recognise QoS 1 redeliveries.
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// `false` when the id was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

fn reconnect_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_millis(ms.min(5_000))
}

/// Runs one device until `shutdown` resolves or `max_executions` are handled, then
/// disconnects cleanly (the broker keeps the session). Connection failures are reported
/// as [`DeviceEventKind::ConnectionLost`] and retried with backoff, never returned;
/// the error case is invalid options.
pub async fn run<F>(
    opts: DeviceOptions,
    events: Option<mpsc::Sender<DeviceEvent>>,
    shutdown: F,
) -> anyhow::Result<Summary>
where
    F: Future<Output = ()> + Send,
{
    opts.validate()?;
    let emitter = Emitter {
        device: Arc::from(opts.client_id()),
        tx: events,
    };
    let (publisher, mut link) = link::open(&opts);
    let responders = Arc::new(Responders {
        publisher: publisher.clone(),
        emitter: emitter.clone(),
        root: opts.topic_root.clone(),
        target: opts.target.clone(),
        behavior: opts.behavior,
        delay: opts.delay,
        reply_timeout: opts.reply_timeout,
    });
    let filters = protocol::subscriptions(&opts.topic_root, &opts.target);

    let mut summary = Summary::default();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut seen = RecentIds::new(100_000);
    let mut failures = 0u32;
    tokio::pin!(shutdown);

    let done = |s: &Summary| opts.max_executions.is_some_and(|max| s.handled >= max);
    while !done(&summary) {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok(execution_id) => {
                    if pending.remove(&execution_id).is_some() {
                        summary.handled += 1;
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => anyhow::bail!("responder task failed: {e}"),
            },
            polled = link.poll() => match polled {
                Ok(LinkEvent::ConnAck { session_present }) => {
                    failures = 0;
                    emitter.emit(DeviceEventKind::Connected { session_present }).await;
                    // Always (re)subscribe: harmless with a present session, needed without.
                    // From a task: the loop must keep polling for the request to go out.
                    let publisher = publisher.clone();
                    let filters = filters.clone();
                    tokio::spawn(async move {
                        if let Err(e) = publisher.subscribe(filters).await {
                            tracing::debug!(error = %e, "subscribe not queued");
                        }
                    });
                }
                Ok(LinkEvent::SubAck { granted, refused }) => {
                    emitter.emit(DeviceEventKind::Subscribed { granted, refused }).await;
                }
                Ok(LinkEvent::Publish(message)) => {
                    match protocol::classify(&opts.topic_root, &opts.target, &message.topic) {
                        Some(Inbound::Request { execution_id, format }) => {
                            summary.requests += 1;
                            let first = seen.insert(&execution_id);
                            if !first {
                                summary.duplicates += 1;
                            }
                            emitter
                                .emit(DeviceEventKind::Request(RequestEvent {
                                    execution_id: execution_id.clone(),
                                    format,
                                    payload: message.payload,
                                    content_type: message.content_type,
                                    message_expiry_secs: message.message_expiry_secs,
                                    duplicate: !first,
                                }))
                                .await;
                            if first {
                                if opts.behavior == Behavior::Silent {
                                    summary.handled += 1;
                                } else {
                                    let (tx, rx) = mpsc::channel(4);
                                    let abort = tasks.spawn(respond(
                                        responders.clone(),
                                        execution_id.clone(),
                                        rx,
                                    ));
                                    pending.insert(execution_id, Pending { abort, replies: tx });
                                }
                            }
                        }
                        Some(Inbound::Accepted { execution_id }) => {
                            summary.accepted += 1;
                            if let Some(p) = pending.get(&execution_id) {
                                let _ = p.replies.try_send(Reply::Accepted);
                            }
                            emitter.emit(DeviceEventKind::Accepted { execution_id }).await;
                        }
                        Some(Inbound::Rejected { execution_id }) => {
                            summary.rejected += 1;
                            let (error, message) = protocol::parse_rejected(&message.payload);
                            if let Some(p) = pending.get(&execution_id) {
                                let retryable = protocol::is_retryable_error(error.as_deref());
                                let _ = p.replies.try_send(Reply::Rejected { retryable });
                            }
                            emitter
                                .emit(DeviceEventKind::Rejected { execution_id, error, message })
                                .await;
                        }
                        Some(Inbound::Cancel { execution_id }) => {
                            summary.canceled += 1;
                            if let Some(p) = pending.remove(&execution_id) {
                                p.abort.abort();
                                summary.handled += 1;
                            }
                            let reason_code = protocol::parse_cancel_reason(&message.payload);
                            emitter
                                .emit(DeviceEventKind::Canceled { execution_id, reason_code })
                                .await;
                        }
                        None => {
                            emitter
                                .emit(DeviceEventKind::Unexpected { topic: message.topic })
                                .await;
                        }
                    }
                }
                Ok(LinkEvent::Disconnected | LinkEvent::Other) => {}
                Err(error) => {
                    let retry_in = reconnect_backoff(failures);
                    failures = failures.saturating_add(1);
                    emitter.emit(DeviceEventKind::ConnectionLost { error, retry_in }).await;
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            },
        }
    }

    tasks.abort_all();
    link.close(&publisher, Duration::from_secs(2)).await;
    Ok(summary)
}

/// One execution: wait, publish each update, and wait for its reply before the next. An
/// update rejected with a retryable error is sent again after a backoff, as AWS asks of
/// devices. Returns the execution id (for the loop's bookkeeping).
async fn respond(
    ctx: Arc<Responders>,
    execution_id: String,
    mut replies: mpsc::Receiver<Reply>,
) -> String {
    if !ctx.delay.is_zero() {
        tokio::time::sleep(ctx.delay).await;
    }
    let topic = protocol::response_topic(&ctx.root, &ctx.target, &execution_id);
    for update in ctx.behavior.updates() {
        let mut retry = 0;
        loop {
            if let Err(e) = ctx.publisher.publish(topic.clone(), update.body()).await {
                tracing::debug!(error = %e, execution_id, "update not queued");
                return execution_id;
            }
            ctx.emitter
                .emit(DeviceEventKind::Responded {
                    execution_id: execution_id.clone(),
                    status: update.status(),
                })
                .await;
            match tokio::time::timeout(ctx.reply_timeout, replies.recv()).await {
                Ok(Some(Reply::Accepted)) => break,
                Ok(Some(Reply::Rejected { retryable: true })) if retry < UPDATE_RETRIES => {
                    tokio::time::sleep(update_retry_backoff(retry)).await;
                    retry += 1;
                }
                // Rejected for good: the next update would be refused too (or is not ours
                // to send).
                Ok(Some(Reply::Rejected { .. }) | None) => return execution_id,
                Err(_) => {
                    ctx.emitter
                        .emit(DeviceEventKind::ReplyTimedOut {
                            execution_id: execution_id.clone(),
                        })
                        .await;
                    return execution_id;
                }
            }
        }
    }
    execution_id
}

/// A device running in its own task, with its events on a channel.
///
/// Drain [`events`](Self::events) (or use the `wait_*` helpers): a device whose event
/// channel is full waits. Dropping the handle stops the device.
pub struct SimulatedDevice {
    events: mpsc::Receiver<DeviceEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<Summary>>,
}

impl SimulatedDevice {
    /// Starts the device; events are buffered up to 1024.
    pub fn spawn(opts: DeviceOptions) -> Self {
        let (tx, events) = mpsc::channel(1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(opts, Some(tx), async move {
            // A dropped handle counts as a stop.
            let _ = stopped.await;
        }));
        Self {
            events,
            stop: Some(stop),
            task,
        }
    }

    pub fn events(&mut self) -> &mut mpsc::Receiver<DeviceEvent> {
        &mut self.events
    }

    /// The next event matching `predicate`, skipping others; an error on timeout or when
    /// the device has stopped.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut predicate: impl FnMut(&DeviceEventKind) -> bool,
    ) -> anyhow::Result<DeviceEvent> {
        let found = tokio::time::timeout(within, async {
            while let Some(event) = self.events.recv().await {
                if predicate(&event.kind) {
                    return Some(event);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(event)) => Ok(event),
            Ok(None) => anyhow::bail!("the simulated device stopped before the awaited event"),
            Err(_) => anyhow::bail!("no such event from the simulated device within {within:?}"),
        }
    }

    /// Waits until the device is connected and subscribed (ready for requests).
    pub async fn wait_subscribed(&mut self, within: Duration) -> anyhow::Result<()> {
        let event = self
            .wait_for(within, |k| matches!(k, DeviceEventKind::Subscribed { .. }))
            .await?;
        if let DeviceEventKind::Subscribed { refused, .. } = event.kind {
            anyhow::ensure!(refused == 0, "the broker refused {refused} subscription(s)");
        }
        Ok(())
    }

    /// Stops the device (clean disconnect, session kept) and returns its counts.
    pub async fn stop(mut self) -> anyhow::Result<Summary> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits for the device to end by itself (`max_executions`), draining its events.
    pub async fn join(mut self) -> anyhow::Result<Summary> {
        let mut open = true;
        loop {
            tokio::select! {
                joined = &mut self.task => return joined?,
                event = self.events.recv(), if open => open = event.is_some(),
            }
        }
    }
}

#[cfg(test)]
mod broker_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_have_documented_defaults_and_are_checked() {
        let opts = DeviceOptions::new(Target::thing("lamp").unwrap(), "127.0.0.1", 1883);
        assert_eq!(opts.client_id(), "lamp");
        assert_eq!(opts.mqtt_version, MqttVersion::V5);
        assert_eq!(opts.behavior, Behavior::Succeed);
        assert_eq!(opts.topic_root.as_str(), "$aws");
        assert!(opts.validate().is_ok());
        let mut bad = opts.clone();
        bad.keep_alive = Duration::from_secs(1);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("keep-alive")
        );
        let mut bad = opts;
        bad.max_executions = Some(0);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn behaviors_map_to_update_sequences() {
        assert_eq!(Behavior::Succeed.updates(), &[Update::Succeeded]);
        assert_eq!(
            Behavior::Progress.updates(),
            &[Update::InProgress, Update::Succeeded]
        );
        assert!(Behavior::Silent.updates().is_empty());
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut ids = RecentIds::new(2);
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        assert!(ids.insert("b"));
        assert!(ids.insert("c"));
        assert!(ids.insert("a"), "a was evicted");
        assert!(!ids.insert("c"));
    }

    #[test]
    fn update_retry_backoff_grows_and_is_capped() {
        assert_eq!(update_retry_backoff(0), Duration::from_millis(100));
        assert_eq!(update_retry_backoff(3), Duration::from_millis(800));
        assert_eq!(update_retry_backoff(9), Duration::from_secs(2));
    }

    #[test]
    fn reconnect_backoff_is_capped() {
        assert_eq!(reconnect_backoff(0), Duration::from_millis(100));
        assert_eq!(reconnect_backoff(2), Duration::from_millis(400));
        assert_eq!(reconnect_backoff(30), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_and_stop_still_works() {
        // Port 9 on loopback: nothing listens, connections are refused at once.
        let mut opts = DeviceOptions::new(Target::client("sim-1").unwrap(), "127.0.0.1", 9);
        opts.mqtt_version = MqttVersion::V3;
        let mut device = SimulatedDevice::spawn(opts);
        let event = device
            .wait_for(Duration::from_secs(10), |k| {
                matches!(k, DeviceEventKind::ConnectionLost { .. })
            })
            .await
            .unwrap();
        assert_eq!(&*event.device, "sim-1");
        let summary = tokio::time::timeout(Duration::from_secs(10), device.stop())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary, Summary::default());
    }
}
