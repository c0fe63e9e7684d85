//! The embedded rmqtt broker with real MQTT clients (rumqttc), 5 and 3.1.1.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fleetcmd_adapters::conformance::within;
use fleetcmd_adapters::embedded::broker::EmbeddedBroker;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, Publish as Publish5, PublishProperties};
use rumqttc::{NetworkOptions, QoS};
use tokio::sync::mpsc;

/// How many received packets a test client holds for the test (see [`forward`]).
const EVENTS: usize = 1024;

const REQUEST_FILTER: &str = "$aws/commands/things/x/executions/+/request/json";

fn start() -> EmbeddedBroker {
    let broker =
        EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0))).expect("start broker");
    assert_ne!(broker.local_addr().port(), 0, "the real port is reported");
    broker
}

fn nodelay() -> NetworkOptions {
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// A client's event loop, as [`forward`] polls it.
trait Events: Send + 'static {
    type Packet: Send + 'static;

    /// The next event: `Some(Some(packet))` for an incoming packet, `Some(None)` for one to
    /// skip (outgoing), `None` once the connection ended (an error, or our own DISCONNECT:
    /// dropping the event loop then closes the connection).
    fn next(&mut self) -> impl Future<Output = Option<Option<Self::Packet>>> + Send;
}

impl Events for v5::EventLoop {
    type Packet = Packet5;

    async fn next(&mut self) -> Option<Option<Packet5>> {
        match self.poll().await {
            Ok(v5::Event::Incoming(p)) => Some(Some(p)),
            Ok(v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => None,
            Ok(v5::Event::Outgoing(_)) => Some(None),
            Err(e) => {
                eprintln!("v5 client event loop ended: {e}");
                None
            }
        }
    }
}

impl Events for rumqttc::EventLoop {
    type Packet = rumqttc::Packet;

    async fn next(&mut self) -> Option<Option<rumqttc::Packet>> {
        match self.poll().await {
            Ok(rumqttc::Event::Incoming(p)) => Some(Some(p)),
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => None,
            Ok(rumqttc::Event::Outgoing(_)) => Some(None),
            Err(e) => {
                eprintln!("3.1.1 client event loop ended: {e}");
                None
            }
        }
    }
}

/// Polls `events` on a task of its own and hands every incoming packet to the returned
/// channel, which holds [`EVENTS`] packets. While it is full the task waits, so the event loop
/// is not polled: nothing moves on the socket, and `publish`/`subscribe` (which queue requests
/// for the event loop, 256 at most) stop returning once that queue is full too. A test must
/// therefore read a client's packets while it makes the client receive more than `EVENTS` of
/// them (PUBACKs count: see the offline-device test).
fn forward<E: Events>(mut events: E) -> mpsc::Receiver<E::Packet> {
    let (tx, rx) = mpsc::channel(EVENTS);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Some(p) = event
                && tx.send(p).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

/// A v5 client whose incoming packets arrive on the returned channel.
fn client5(id: &str, addr: SocketAddr) -> (v5::AsyncClient, mpsc::Receiver<Packet5>) {
    let mut opts = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_network_options(nodelay());
    let (client, events) = v5::AsyncClient::new(opts, 256);
    (client, forward(events))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    Clean,
    /// `clean_session=false`: the broker keeps the subscriptions and queues messages while
    /// the client is away.
    Persistent,
}

/// A 3.1.1 client whose incoming packets arrive on the returned channel.
fn client311(
    id: &str,
    addr: SocketAddr,
    session: Session,
) -> (rumqttc::AsyncClient, mpsc::Receiver<rumqttc::Packet>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(session == Session::Clean);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    events.set_network_options(nodelay());
    (client, forward(events))
}

/// Waits for the first packet `pick` accepts, skipping the others.
async fn wait_for<P, T>(
    what: &str,
    rx: &mut mpsc::Receiver<P>,
    mut pick: impl FnMut(P) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let p = rx
                .recv()
                .await
                .unwrap_or_else(|| panic!("{what}: the client's connection ended"));
            if let Some(t) = pick(p) {
                return t;
            }
        }
    })
    .await
}

/// Subscribes a v5 client to `filter` (QoS 1); returns the codes of its SUBACK.
async fn subscribe5(
    client: &v5::AsyncClient,
    rx: &mut mpsc::Receiver<Packet5>,
    filter: &str,
) -> String {
    within("subscribe", client.subscribe(filter, QoS5::AtLeastOnce))
        .await
        .expect("subscribe");
    let codes = wait_for("SUBACK", rx, |p| match p {
        Packet5::SubAck(s) => Some(s.return_codes),
        _ => None,
    })
    .await;
    assert_eq!(codes.len(), 1, "one filter, one code: {codes:?}");
    format!("{codes:?}")
}

/// Subscribes a 3.1.1 client to `filter` (QoS 1) and waits for its SUBACK.
async fn subscribe311(
    client: &rumqttc::AsyncClient,
    rx: &mut mpsc::Receiver<rumqttc::Packet>,
    filter: &str,
) {
    within("subscribe", client.subscribe(filter, QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    wait_for("SUBACK", rx, |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;
}

/// Publishes QoS 1 from a v5 client (returns once the client queued it, not on PUBACK).
async fn publish5(client: &v5::AsyncClient, topic: impl Into<String>, payload: impl Into<String>) {
    let payload: String = payload.into();
    within(
        "publish",
        client.publish(topic.into(), QoS5::AtLeastOnce, false, payload),
    )
    .await
    .expect("publish");
}

async fn next_publish5(what: &str, rx: &mut mpsc::Receiver<Packet5>) -> Publish5 {
    wait_for(what, rx, |p| match p {
        Packet5::Publish(p) => Some(p),
        _ => None,
    })
    .await
}

async fn next_publish311(what: &str, rx: &mut mpsc::Receiver<rumqttc::Packet>) -> rumqttc::Publish {
    wait_for(what, rx, |p| match p {
        rumqttc::Packet::Publish(p) => Some(p),
        _ => None,
    })
    .await
}

async fn puback5(rx: &mut mpsc::Receiver<Packet5>) {
    wait_for("PUBACK", rx, |p| {
        matches!(p, Packet5::PubAck(_)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_request_with_properties_reaches_a_wildcard_subscriber() {
    let broker = start();
    let addr = broker.local_addr();
    let (device, mut device_rx) = client5("x", addr);
    let granted = subscribe5(&device, &mut device_rx, REQUEST_FILTER).await;
    assert!(
        granted.contains("Success"),
        "the $aws wildcard filter is granted: {granted}"
    );

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let topic = "$aws/commands/things/x/executions/e-1/request/json";
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(30),
        ..PublishProperties::default()
    };
    let publish =
        cloud.publish_with_properties(topic, QoS5::AtLeastOnce, false, r#"{"reboot":true}"#, props);
    within("publish", publish).await.expect("publish");
    puback5(&mut cloud_rx).await;

    let publish = next_publish5("the request on the device", &mut device_rx).await;
    assert_eq!(publish.topic.as_ref(), topic.as_bytes());
    assert_eq!(publish.payload.as_ref(), br#"{"reboot":true}"#);
    assert_eq!(publish.qos, QoS5::AtLeastOnce, "QoS 1 is kept");
    let props = publish
        .properties
        .expect("MQTT 5 properties are passed through");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    let expiry = props
        .message_expiry_interval
        .expect("message expiry is passed through");
    assert!(
        (1..=30).contains(&expiry),
        "message expiry is the remaining time, got {expiry}"
    );

    // A request for another device does not reach x.
    publish5(
        &cloud,
        "$aws/commands/things/y/executions/e-2/request/json",
        "{}",
    )
    .await;
    publish5(
        &cloud,
        "$aws/commands/things/x/executions/e-3/request/json",
        "marker",
    )
    .await;
    let next = next_publish5("the next request on the device", &mut device_rx).await;
    assert_eq!(
        next.payload.as_ref(),
        b"marker",
        "y's request must not reach x"
    );
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_devices_get_the_bare_payload_and_can_answer() {
    let broker = start();
    let addr = broker.local_addr();
    let (device, mut device_rx) = client311("x", addr, Session::Clean);
    subscribe311(&device, &mut device_rx, REQUEST_FILTER).await;

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let response = "$aws/commands/things/x/executions/+/response/json";
    subscribe5(&cloud, &mut cloud_rx, response).await;
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(60),
        ..PublishProperties::default()
    };
    let publish = cloud.publish_with_properties(
        "$aws/commands/things/x/executions/e-9/request/json",
        QoS5::AtLeastOnce,
        false,
        "{}",
        props,
    );
    within("publish", publish).await.expect("publish");
    let got = next_publish311("the request on a 3.1.1 device", &mut device_rx).await;
    assert_eq!(got.payload.as_ref(), b"{}");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    let answer = device.publish(
        "$aws/commands/things/x/executions/e-9/response/json",
        QoS::AtLeastOnce,
        false,
        r#"{"status":"SUCCEEDED"}"#,
    );
    within("publish", answer).await.expect("publish");
    let answer = next_publish5("the device's response", &mut cloud_rx).await;
    assert_eq!(answer.payload.as_ref(), br#"{"status":"SUCCEEDED"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_on_aws_topics_split_messages() {
    let broker = start();
    let addr = broker.local_addr();
    let filter = "$share/edge/$aws/commands/things/+/executions/+/response/json";
    let mut edges = Vec::new();
    for i in 0..2 {
        let (c, mut rx) = client5(&format!("edge-{i}"), addr);
        let codes = subscribe5(&c, &mut rx, filter).await;
        assert!(
            codes.contains("Success"),
            "shared subscriptions on $aws are granted: {codes}"
        );
        edges.push((c, rx));
    }
    let (device, mut device_rx) = client5("dev-7", addr);
    let n = 20;
    for i in 0..n {
        let topic = format!("$aws/commands/things/dev-7/executions/e-{i}/response/json");
        publish5(&device, topic, format!("{i}")).await;
    }
    // All PUBACKs: the broker has routed every message.
    for _ in 0..n {
        puback5(&mut device_rx).await;
    }
    let mut got = Vec::new();
    let mut per_edge = [0usize; 2];
    let [(_, rx0), (_, rx1)] = &mut edges[..] else {
        unreachable!("two edges")
    };
    while got.len() < n {
        let (which, p) = within("shared delivery", async {
            tokio::select! {
                Some(p) = rx0.recv() => (0, p),
                Some(p) = rx1.recv() => (1, p),
            }
        })
        .await;
        if let Packet5::Publish(p) = p {
            per_edge[which] += 1;
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    got.sort_by_key(|s| s.parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(
        got,
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message reaches exactly one member of the group"
    );
    assert!(
        per_edge.iter().all(|&c| c > 0),
        "the group's members share the load: {per_edge:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_run_side_by_side_and_shutdown_frees_the_port() {
    let a = start();
    let b = start();
    assert_ne!(a.local_addr(), b.local_addr());
    let addr = a.local_addr();
    within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("the broker accepts connections");
    a.shutdown();
    let refused = within("connect", tokio::net::TcpStream::connect(addr)).await;
    assert!(refused.is_err(), "after shutdown nothing listens on {addr}");
    // Rebinding the same port works once stopped.
    let again = EmbeddedBroker::start(addr).expect("restart on the same port");
    assert_eq!(again.local_addr(), addr);
    drop(again);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_with_a_persistent_session_gets_its_requests_on_reconnect() {
    let broker = start();
    let addr = broker.local_addr();
    let (device, mut rx) = client311("x", addr, Session::Persistent);
    subscribe311(&device, &mut rx, REQUEST_FILTER).await;
    within("disconnect", device.disconnect())
        .await
        .expect("disconnect");
    // The event loop ends once DISCONNECT is sent.
    within("device disconnect", async {
        while rx.recv().await.is_some() {}
    })
    .await;

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let n = 1500; // above rmqtt's default queue cap of 1000
    // The PUBACKs are read while publishing, not after: 1,500 unread PUBACKs overflow the
    // cloud client's packet channel (EVENTS = 1,024), which stops its event loop (see
    // `forward`), and then `publish` waits forever for room in the client's request queue:
    // the test hung at 0 % CPU that way.
    let acks = tokio::spawn(async move {
        for _ in 0..n {
            puback5(&mut cloud_rx).await;
        }
    });
    for i in 0..n {
        let topic = format!("$aws/commands/things/x/executions/e-{i}/request/json");
        publish5(&cloud, topic, format!("{i}")).await;
    }
    within("every PUBACK", acks)
        .await
        .expect("the PUBACK reader");

    let (_device, mut rx) = client311("x", addr, Session::Persistent);
    let session_present = wait_for("CONNACK", &mut rx, |p| match p {
        rumqttc::Packet::ConnAck(c) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(session_present, "the broker kept the session");
    // One overall deadline too, so a slow trickle fails instead of hanging the suite.
    let all = async {
        for i in 0..n {
            let p = next_publish311("a queued request", &mut rx).await;
            assert_eq!(
                p.payload,
                format!("{i}").into_bytes(),
                "queued requests arrive in order, none dropped"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("all queued requests arrive within 60 s");
}

#[tokio::test]
async fn subscriptions_tell_whether_a_publish_would_reach_anyone() {
    let broker = start();
    let subscriptions = broker.subscriptions();
    let has_subscribers = |topic| within("has_subscribers", subscriptions.has_subscribers(topic));
    let event = "$aws/events/commandExecution/reboot/SUCCEEDED";
    let request = "$aws/commands/things/x/executions/e-1/request/json";
    assert!(!has_subscribers(event).await, "nobody yet");

    let (watcher, mut watcher_rx) = client5("watcher", broker.local_addr());
    let filter = "$aws/events/commandExecution/+/#";
    subscribe5(&watcher, &mut watcher_rx, filter).await;
    assert!(has_subscribers(event).await, "{filter} matches");
    assert!(
        !has_subscribers(request).await,
        "{filter} does not match {request}"
    );

    within("unsubscribe", watcher.unsubscribe(filter))
        .await
        .expect("unsubscribe");
    wait_for("UNSUBACK", &mut watcher_rx, |p| {
        matches!(p, Packet5::UnsubAck(_)).then_some(())
    })
    .await;
    assert!(!has_subscribers(event).await, "unsubscribed");
}
