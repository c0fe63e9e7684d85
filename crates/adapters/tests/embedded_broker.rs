//! The embedded rmqtt broker with real MQTT clients (rumqttc), 5 and 3.1.1.

use std::net::SocketAddr;
use std::time::Duration;

use fleetcmd_adapters::conformance::within;
use fleetcmd_adapters::embedded::broker::EmbeddedBroker;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
use rumqttc::{NetworkOptions, QoS};
use tokio::sync::mpsc;

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

/// A v5 client whose incoming packets arrive on the returned channel.
fn client5(id: &str, addr: SocketAddr) -> (v5::AsyncClient, mpsc::Receiver<Packet5>) {
    let mut opts = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_network_options(nodelay());
    let (client, mut events) = v5::AsyncClient::new(opts, 256);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(v5::Event::Incoming(p)) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(v5::Event::Outgoing(_)) => {}
                Err(e) => {
                    eprintln!("v5 client event loop ended: {e}");
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// A 3.1.1 client whose incoming packets arrive on the returned channel.
fn client311(
    id: &str,
    addr: SocketAddr,
) -> (rumqttc::AsyncClient, mpsc::Receiver<rumqttc::Packet>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    events.set_network_options(nodelay());
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => {
                    eprintln!("3.1.1 client event loop ended: {e}");
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// A 3.1.1 client with a persistent session (`clean_session=false`).
fn persistent311(
    id: &str,
    addr: SocketAddr,
) -> (rumqttc::AsyncClient, mpsc::Receiver<rumqttc::Packet>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    events.set_network_options(nodelay());
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                rumqttc::Event::Incoming(p) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                // Gone offline: dropping the event loop closes the connection.
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => return,
                rumqttc::Event::Outgoing(_) => {}
            }
        }
    });
    (client, rx)
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

const REQUEST_FILTER: &str = "$aws/commands/things/x/executions/+/request/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_request_with_properties_reaches_a_wildcard_subscriber() {
    let broker = start();
    let addr = broker.local_addr();
    let (device, mut device_rx) = client5("x", addr);
    device
        .subscribe(REQUEST_FILTER, QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    let granted = wait_for("SUBACK", &mut device_rx, |p| match p {
        Packet5::SubAck(s) => Some(s.return_codes),
        _ => None,
    })
    .await;
    assert_eq!(granted.len(), 1);
    assert!(
        format!("{:?}", granted[0]).contains("Success"),
        "the $aws wildcard filter is granted: {granted:?}"
    );

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let topic = "$aws/commands/things/x/executions/e-1/request/json";
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(30),
        ..PublishProperties::default()
    };
    cloud
        .publish_with_properties(topic, QoS5::AtLeastOnce, false, r#"{"reboot":true}"#, props)
        .await
        .expect("publish");
    wait_for("PUBACK", &mut cloud_rx, |p| {
        matches!(p, Packet5::PubAck(_)).then_some(())
    })
    .await;

    let publish = wait_for("the request on the device", &mut device_rx, |p| match p {
        Packet5::Publish(p) => Some(p),
        _ => None,
    })
    .await;
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
    cloud
        .publish(
            "$aws/commands/things/y/executions/e-2/request/json",
            QoS5::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .expect("publish");
    cloud
        .publish(
            "$aws/commands/things/x/executions/e-3/request/json",
            QoS5::AtLeastOnce,
            false,
            "marker",
        )
        .await
        .expect("publish");
    let next = wait_for(
        "the next request on the device",
        &mut device_rx,
        |p| match p {
            Packet5::Publish(p) => Some(p),
            _ => None,
        },
    )
    .await;
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
    let (device, mut device_rx) = client311("x", addr);
    device
        .subscribe(REQUEST_FILTER, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for("SUBACK", &mut device_rx, |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let response = "$aws/commands/things/x/executions/+/response/json";
    cloud
        .subscribe(response, QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for("SUBACK", &mut cloud_rx, |p| {
        matches!(p, Packet5::SubAck(_)).then_some(())
    })
    .await;
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(60),
        ..PublishProperties::default()
    };
    cloud
        .publish_with_properties(
            "$aws/commands/things/x/executions/e-9/request/json",
            QoS5::AtLeastOnce,
            false,
            "{}",
            props,
        )
        .await
        .expect("publish");
    let got = wait_for(
        "the request on a 3.1.1 device",
        &mut device_rx,
        |p| match p {
            rumqttc::Packet::Publish(p) => Some(p),
            _ => None,
        },
    )
    .await;
    assert_eq!(got.payload.as_ref(), b"{}");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    device
        .publish(
            "$aws/commands/things/x/executions/e-9/response/json",
            QoS::AtLeastOnce,
            false,
            r#"{"status":"SUCCEEDED"}"#,
        )
        .await
        .expect("publish");
    let answer = wait_for("the device's response", &mut cloud_rx, |p| match p {
        Packet5::Publish(p) => Some(p),
        _ => None,
    })
    .await;
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
        c.subscribe(filter, QoS5::AtLeastOnce)
            .await
            .expect("subscribe");
        let codes = wait_for("SUBACK", &mut rx, |p| match p {
            Packet5::SubAck(s) => Some(s.return_codes),
            _ => None,
        })
        .await;
        assert!(
            format!("{codes:?}").contains("Success"),
            "shared subscriptions on $aws are granted: {codes:?}"
        );
        edges.push((c, rx));
    }
    let (device, mut device_rx) = client5("dev-7", addr);
    let n = 20;
    for i in 0..n {
        device
            .publish(
                format!("$aws/commands/things/dev-7/executions/e-{i}/response/json"),
                QoS5::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("publish");
    }
    // All PUBACKs: the broker has routed every message.
    for _ in 0..n {
        wait_for("PUBACK", &mut device_rx, |p| {
            matches!(p, Packet5::PubAck(_)).then_some(())
        })
        .await;
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
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("the broker accepts connections");
    a.shutdown();
    let refused = tokio::net::TcpStream::connect(addr).await;
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
    let (device, mut rx) = persistent311("x", addr);
    device
        .subscribe(REQUEST_FILTER, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for("SUBACK", &mut rx, |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;
    device.disconnect().await.expect("disconnect");
    // The event loop ends once DISCONNECT is sent.
    within("device disconnect", async {
        while rx.recv().await.is_some() {}
    })
    .await;

    let (cloud, mut cloud_rx) = client5("fleetcmd-edge", addr);
    let n = 1500; // above rmqtt's default queue cap of 1000
    for i in 0..n {
        cloud
            .publish(
                format!("$aws/commands/things/x/executions/e-{i}/request/json"),
                QoS5::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("publish");
    }
    for _ in 0..n {
        wait_for("PUBACK", &mut cloud_rx, |p| {
            matches!(p, Packet5::PubAck(_)).then_some(())
        })
        .await;
    }

    let (_device, mut rx) = persistent311("x", addr);
    let session_present = wait_for("CONNACK", &mut rx, |p| match p {
        rumqttc::Packet::ConnAck(c) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(session_present, "the broker kept the session");
    // One overall deadline too, so a slow trickle fails instead of hanging the suite.
    let all = async {
        for i in 0..n {
            let p = wait_for("a queued request", &mut rx, |p| match p {
                rumqttc::Packet::Publish(p) => Some(p),
                _ => None,
            })
            .await;
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
    let event = "$aws/events/commandExecution/reboot/SUCCEEDED";
    let request = "$aws/commands/things/x/executions/e-1/request/json";
    assert!(!subscriptions.has_subscribers(event).await, "nobody yet");

    let (watcher, mut watcher_rx) = client5("watcher", broker.local_addr());
    let filter = "$aws/events/commandExecution/+/#";
    watcher
        .subscribe(filter, QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for("SUBACK", &mut watcher_rx, |p| {
        matches!(p, Packet5::SubAck(_)).then_some(())
    })
    .await;
    assert!(
        subscriptions.has_subscribers(event).await,
        "{filter} matches"
    );
    assert!(
        !subscriptions.has_subscribers(request).await,
        "{filter} does not match {request}"
    );

    watcher.unsubscribe(filter).await.expect("unsubscribe");
    wait_for("UNSUBACK", &mut watcher_rx, |p| {
        matches!(p, Packet5::UnsubAck(_)).then_some(())
    })
    .await;
    assert!(!subscriptions.has_subscribers(event).await, "unsubscribed");
}
