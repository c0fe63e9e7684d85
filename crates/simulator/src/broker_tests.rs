//! The simulator against a real MQTT broker (the embedded rmqtt broker on an ephemeral
//! loopback port, or the one named by `FLEETCMD_TEST_BROKER`), with a plain MQTT 5 client
//! playing the cloud.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// A broker for one test: keep the guard alive for the test's duration.
fn broker() -> (
    String,
    u16,
    Option<fleetcmd_adapters::embedded::broker::EmbeddedBroker>,
) {
    if let Ok(addr) = std::env::var("FLEETCMD_TEST_BROKER") {
        let (host, port) = super::cli::parse_broker(&addr).unwrap();
        return (host, port, None);
    }
    let broker =
        fleetcmd_adapters::embedded::broker::EmbeddedBroker::start("127.0.0.1:0".parse().unwrap())
            .unwrap();
    let port = broker.local_addr().port();
    ("127.0.0.1".into(), port, Some(broker))
}

/// A cloud stand-in: publishes requests and replies, and hands back what devices publish.
async fn cloud(
    host: &str,
    port: u16,
    filter: &str,
) -> (AsyncClient, mpsc::Receiver<(String, Bytes)>) {
    let mut opts = MqttOptions::new(format!("cloud-{}", uuid::Uuid::new_v4()), host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::channel(64);
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if tx.send((topic, p.payload)).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx).await.unwrap().unwrap();
    (client, rx)
}

/// Publishes `payload` at QoS 1, not retained, as the cloud side does.
async fn publish(cloud: &AsyncClient, topic: String, payload: &'static [u8]) {
    cloud
        .publish(topic, QoS::AtLeastOnce, false, Bytes::from_static(payload))
        .await
        .unwrap();
}

/// Waits for `future`, failing the test after [`WAIT`].
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future).await.unwrap()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test]
async fn progress_waits_for_accepted_before_succeeding() {
    let (host, port, _broker) = broker();
    let thing = unique("lamp");
    let base = format!("$aws/commands/things/{thing}/executions");
    let (cloud, mut updates) = cloud(&host, port, &format!("{base}/+/response/json")).await;

    let mut opts = DeviceOptions::new(Target::thing(thing.clone()).unwrap(), &host, port);
    opts.behavior = Behavior::Progress;
    opts.max_executions = Some(1);
    let mut device = SimulatedDevice::spawn(opts);
    device.wait_subscribed(WAIT).await.unwrap();

    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(9),
        ..Default::default()
    };
    cloud
        .publish_with_properties(
            format!("{base}/e-1/request/json"),
            QoS::AtLeastOnce,
            false,
            Bytes::from_static(b"{\"op\":\"on\"}"),
            props,
        )
        .await
        .unwrap();
    let request = device
        .wait_for(WAIT, |k| matches!(k, DeviceEventKind::Request { .. }))
        .await
        .unwrap();
    let DeviceEventKind::Request(r) = request.kind else {
        unreachable!()
    };
    assert_eq!(r.execution_id, "e-1");
    assert_eq!(r.format, RequestFormat::Json);
    assert_eq!(&r.payload[..], b"{\"op\":\"on\"}");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert!(matches!(r.message_expiry_secs, Some(8 | 9)));
    assert!(!r.duplicate);

    let (topic, body) = within(updates.recv()).await.unwrap();
    assert_eq!(topic, format!("{base}/e-1/response/json"));
    assert_eq!(&body[..], b"{\"status\":\"IN_PROGRESS\"}");
    // Nothing more until the update is accepted (devices serialise their updates).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), updates.recv())
            .await
            .is_err()
    );
    // The cloud accepts each of the device's two updates the same way.
    let accept = || {
        let topic = format!("{base}/e-1/response/accepted/json");
        publish(&cloud, topic, b"{\"executionId\":\"e-1\"}")
    };
    accept().await;
    let (_, body) = within(updates.recv()).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "SUCCEEDED", "result": {"ok": {"b": true}}})
    );
    accept().await;
    let summary = within(device.join()).await.unwrap();
    assert_eq!(summary.handled, 1);
    assert_eq!(summary.accepted, 2);
}

#[tokio::test]
async fn requests_sent_while_offline_arrive_on_reconnect() {
    let (host, port, _broker) = broker();
    for version in [MqttVersion::V3, MqttVersion::V5] {
        let client = unique("dev");
        let base = format!("$aws/commands/clients/{client}/executions");
        let (cloud, mut updates) = cloud(&host, port, &format!("{base}/+/response/json")).await;
        let mut opts = DeviceOptions::new(Target::client(client.clone()).unwrap(), &host, port);
        opts.mqtt_version = version;
        opts.behavior = Behavior::Fail;
        opts.reply_timeout = Duration::from_millis(200);

        let mut first = SimulatedDevice::spawn(opts.clone());
        first.wait_subscribed(WAIT).await.unwrap();
        first.stop().await.unwrap();

        publish(&cloud, format!("{base}/q-1/request"), b"queued").await;
        // Let the broker take it before the device comes back.
        tokio::time::sleep(Duration::from_millis(200)).await;

        opts.max_executions = Some(1);
        let mut second = SimulatedDevice::spawn(opts);
        let connected = second
            .wait_for(WAIT, |k| matches!(k, DeviceEventKind::Connected { .. }))
            .await
            .unwrap();
        assert_eq!(
            connected.kind,
            DeviceEventKind::Connected {
                session_present: true
            },
            "{version:?}"
        );
        let (topic, body) = within(updates.recv()).await.unwrap();
        assert_eq!(topic, format!("{base}/q-1/response/json"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "FAILED");
        assert_eq!(body["statusReason"]["reasonCode"], "SIMULATED_FAILURE");
        // No reply comes: the responder gives up after the reply timeout and the run ends.
        let summary = within(second.join()).await.unwrap();
        assert_eq!(summary.requests, 1, "{version:?}");
        assert_eq!(summary.handled, 1, "{version:?}");
    }
}

#[tokio::test]
async fn many_devices_share_one_event_channel() {
    let (host, port, _broker) = broker();
    let (events_tx, mut events) = mpsc::channel(256);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let names: Vec<String> = (0..20).map(|_| unique("fleet")).collect();
    let mut runs = Vec::new();
    for name in &names {
        let mut opts = DeviceOptions::new(Target::thing(name.clone()).unwrap(), &host, port);
        opts.behavior = Behavior::Silent;
        let mut stop = stop_tx.subscribe();
        runs.push(tokio::spawn(run(
            opts,
            Some(events_tx.clone()),
            async move {
                let _ = stop.recv().await;
            },
        )));
    }
    drop(events_tx);
    let mut subscribed = std::collections::HashSet::new();
    while subscribed.len() < names.len() {
        let event = within(events.recv()).await.unwrap();
        if matches!(event.kind, DeviceEventKind::Subscribed { refused: 0, .. }) {
            subscribed.insert(event.device.to_string());
        }
    }
    let (cloud, _) = cloud(&host, port, "unused/+").await;
    for name in &names {
        publish(
            &cloud,
            format!("$aws/commands/things/{name}/executions/x/request"),
            b"ping",
        )
        .await;
    }
    let mut requested = std::collections::HashSet::new();
    while requested.len() < names.len() {
        let event = within(events.recv()).await.unwrap();
        if matches!(event.kind, DeviceEventKind::Request { .. }) {
            requested.insert(event.device.to_string());
        }
    }
    let _ = stop_tx.send(());
    // Drain so no device waits on a full channel while stopping.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    for r in runs {
        let summary = within(r).await.unwrap().unwrap();
        assert_eq!(summary.requests, 1);
        assert_eq!(summary.handled, 1);
    }
}
