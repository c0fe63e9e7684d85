//! The bench's device fleet: lean MQTT 5 devices on rumqttc, one task each, speaking the
//! device protocol through the simulator's [`protocol`] helpers.
//!
//! Leaner than [`fleetcmd_simulator::SimulatedDevice`] on purpose: no task or event per
//! request and no event channel, so thousands of devices and tens of thousands of
//! requests per second fit beside the server on two cores. Each device answers from its
//! event-loop task with `try_publish` (falling back to a spawned publish when the client's
//! request channel is full, so the loop never waits on itself) and reports each request's
//! arrival time to the collector.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::Target;
use fleetcmd_domain::topics::TopicRoot;
use rumqttc::NetworkOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, watch};

use super::collector::Note;
use fleetcmd_simulator::protocol::{self, Inbound, Update};

/// How a device answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Behavior {
    /// SUCCEEDED at once.
    Succeed,
    /// IN_PROGRESS, then SUCCEEDED once IN_PROGRESS was accepted.
    Progress,
    /// SUCCEEDED after `--delay-ms`.
    Delay,
    /// Never answers (the execution stays CREATED until its timeout).
    Silent,
}

impl Behavior {
    pub fn name(self) -> &'static str {
        match self {
            Self::Succeed => "succeed",
            Self::Progress => "progress",
            Self::Delay => "delay",
            Self::Silent => "silent",
        }
    }
}

/// Unacknowledged publishes a bench client keeps in flight. rumqttc's v5 default (65535)
/// makes every client allocate a slot table of that many `Option<Publish>` (megabytes per
/// client) before the broker lowers it in CONNACK.
pub const DEVICE_INFLIGHT: u16 = 64;
/// Requests queued between a device's logic and its event loop.
const DEVICE_REQUEST_CAPACITY: usize = 256;

/// MQTT 5 options of a bench client: clean start (a fresh session per run), TCP_NODELAY,
/// a bounded in-flight window.
pub fn mqtt_options(client_id: &str, host: &str, port: u16, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    let mut net = NetworkOptions::new();
    // Nagle plus delayed ACKs cost ~40 ms per QoS 1 round trip (docs/engines.md).
    net.set_tcp_nodelay(true);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(256 * 1024))
        .set_outgoing_inflight_upper_limit(inflight)
        .set_network_options(net);
    o
}

/// What the fleet needs to know.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub host: String,
    pub port: u16,
    /// Device `i` is the thing `<prefix>-<i>`.
    pub prefix: String,
    pub count: usize,
    pub behavior: Behavior,
    pub delay: Duration,
    pub root: TopicRoot,
    /// Per device (by index), TLS with its own client certificate; `None`: plain MQTT.
    pub tls: Option<Vec<Arc<rustls::ClientConfig>>>,
}

impl FleetSpec {
    pub fn thing(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, i % self.count.max(1))
    }
}

/// A running fleet; [`Fleet::stop`] disconnects every device.
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connects `spec.count` devices and returns once all are subscribed (or fails after
/// `within`). `progress` is called with the number subscribed so far while waiting.
pub async fn start(
    spec: &FleetSpec,
    notes: mpsc::Sender<Note>,
    within: Duration,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Fleet> {
    let (stop, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Bodies {
        in_progress: Bytes::from(Update::InProgress.body()),
        succeeded: Bytes::from(Update::Succeeded.body()),
    });
    let mut tasks = Vec::with_capacity(spec.count);
    for i in 0..spec.count {
        let target = Target::thing(spec.thing(i))?;
        let device = Device {
            target,
            root: spec.root.clone(),
            behavior: spec.behavior,
            delay: spec.delay,
            notes: notes.clone(),
            bodies: bodies.clone(),
            ready: ready.clone(),
        };
        let mut options = mqtt_options(&device.target.id, &spec.host, spec.port, DEVICE_INFLIGHT);
        if let Some(tls) = spec.tls.as_ref().and_then(|t| t.get(i)) {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        tasks.push(tokio::spawn(device.run(options, stop_rx.clone())));
    }
    let fleet = Fleet { stop, tasks };
    let deadline = Instant::now() + within;
    loop {
        let n = ready.load(Ordering::Relaxed);
        progress(n);
        if n >= spec.count {
            return Ok(fleet);
        }
        if Instant::now() > deadline {
            fleet.stop().await;
            anyhow::bail!(
                "only {n} of {} devices subscribed within {within:?}",
                spec.count
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Fleet {
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

/// The execution ids a device acted on lately (the last [`Seen::CAPACITY`]).
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Seen {
    const CAPACITY: usize = 1024;

    /// True the first time `id` is seen (within the last [`Self::CAPACITY`]).
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

struct Bodies {
    in_progress: Bytes,
    succeeded: Bytes,
}

struct Device {
    target: Target,
    root: TopicRoot,
    behavior: Behavior,
    delay: Duration,
    notes: mpsc::Sender<Note>,
    bodies: Arc<Bodies>,
    ready: Arc<AtomicUsize>,
}

impl Device {
    async fn run(self, options: MqttOptions, mut stop: watch::Receiver<bool>) {
        let (client, mut eventloop) = AsyncClient::new(options, DEVICE_REQUEST_CAPACITY);
        let filters: Vec<Filter> = protocol::subscriptions(&self.root, &self.target)
            .into_iter()
            .map(|f| Filter::new(f, QoS::AtLeastOnce))
            .collect();
        // Executions waiting for IN_PROGRESS to be accepted (progress behavior).
        let mut in_progress: HashSet<String> = HashSet::new();
        // fleetcmd may send a request again (a new subscription, a failover): a device acts
        // on each execution id once, as the device protocol asks.
        let mut seen = Seen::default();
        let mut subscribed = false;
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.changed() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::debug!(error = %e, "bench device could not queue its subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !subscribed {
                        subscribed = true;
                        self.ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let Ok(topic) = std::str::from_utf8(&p.topic) else {
                        continue;
                    };
                    match protocol::classify(&self.root, &self.target, topic) {
                        Some(Inbound::Request { execution_id, .. }) => {
                            if !seen.first_time(&execution_id) {
                                continue;
                            }
                            let _ = self
                                .notes
                                .send(Note::Delivered {
                                    id: execution_id.clone(),
                                    at,
                                })
                                .await;
                            self.answer(&client, execution_id, &mut in_progress);
                        }
                        Some(Inbound::Accepted { execution_id }) => {
                            if in_progress.remove(&execution_id) {
                                let topic = protocol::response_topic(
                                    &self.root,
                                    &self.target,
                                    &execution_id,
                                );
                                publish(
                                    &client,
                                    topic,
                                    self.bodies.succeeded.clone(),
                                    Duration::ZERO,
                                );
                            }
                        }
                        Some(Inbound::Rejected { execution_id }) => {
                            in_progress.remove(&execution_id);
                            let _ = self
                                .notes
                                .send(Note::Incident {
                                    kind: "device_update_rejected".into(),
                                })
                                .await;
                        }
                        Some(Inbound::Cancel { .. }) | None => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(device = %self.target.id, error = %e, "bench device connection lost; reconnecting");
                    let _ = self
                        .notes
                        .send(Note::Incident {
                            kind: "device_connection_lost".into(),
                        })
                        .await;
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        // Best effort: a clean DISCONNECT, polled out briefly.
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(e) = eventloop.poll().await {
                    if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    fn answer(
        &self,
        client: &AsyncClient,
        execution_id: String,
        in_progress: &mut HashSet<String>,
    ) {
        let topic = || protocol::response_topic(&self.root, &self.target, &execution_id);
        match self.behavior {
            Behavior::Succeed => publish(
                client,
                topic(),
                self.bodies.succeeded.clone(),
                Duration::ZERO,
            ),
            Behavior::Delay => publish(client, topic(), self.bodies.succeeded.clone(), self.delay),
            Behavior::Progress => {
                publish(
                    client,
                    topic(),
                    self.bodies.in_progress.clone(),
                    Duration::ZERO,
                );
                in_progress.insert(execution_id);
            }
            Behavior::Silent => {}
        }
    }
}

/// QoS 1 publish from an event-loop task without waiting on that loop: `try_publish`, or
/// a spawned publish when the request channel is full or a delay is asked for.
pub fn publish(client: &AsyncClient, topic: String, body: Bytes, delay: Duration) {
    if delay.is_zero() {
        match client.try_publish(topic.clone(), QoS::AtLeastOnce, false, body.clone()) {
            Ok(()) => return,
            Err(rumqttc::v5::ClientError::TryRequest(_)) => {}
            Err(e) => {
                tracing::debug!(error = %e, "bench publish failed");
                return;
            }
        }
    }
    let client = client.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, body).await {
            tracing::debug!(error = %e, "bench publish failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_acts_on_an_execution_id_once_among_its_latest() {
        let mut seen = Seen::default();
        assert!(seen.first_time("e1"));
        assert!(!seen.first_time("e1"));
        for i in 0..Seen::CAPACITY {
            assert!(seen.first_time(&format!("x{i}")));
        }
        // e1 is older than the last CAPACITY ids: forgotten.
        assert!(seen.first_time("e1"));
        assert_eq!(seen.ids.len(), Seen::CAPACITY);
    }
}
