//! The raw MQTT baseline: the same devices answering plain QoS 1 request/response through
//! the same kind of broker, with no fleetcmd in between — the ceiling fleetcmd is compared
//! against.
//!
//! `--raw-clients` requester connections (the stand-in for fleetcmd's edge) publish
//! requests on `$aws/commands/things/<device>/executions/<id>/request/json` (QoS 1, with
//! the content type and message expiry fleetcmd sets) and subscribe to the devices'
//! `.../response/json`, keeping `--concurrency` requests in flight in total. With several
//! requesters, each owns a share of the devices (device `i` belongs to requester
//! `i mod clients`) and subscribes to those devices' responses only, so no response is
//! delivered twice.
//! - start→delivered: request published → it reaches the device;
//! - start→terminal: request published → the device's response reaches the requester.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_adapters::embedded::broker::EmbeddedBroker;
use fleetcmd_domain::topics::TopicRoot;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::mpsc;

use super::collector::{Collector, Expect, Note, Tally};
use super::devices::{Behavior, FleetSpec, mqtt_options};
use super::stats::{Report, per_sec};
use super::{BenchArgs, Progress, Resources, parse_host_port, run_tag, start_devices, stop_after};

const RESPONSE_FILTER: &str = "$aws/commands/things/+/executions/+/response/json";
/// Filters per SUBSCRIBE when a requester subscribes device by device.
const FILTERS_PER_SUBSCRIBE: usize = 100;

/// The execution id of a response topic (`$aws/commands/things/<d>/executions/<id>/...`).
pub fn response_id(topic: &str) -> Option<&str> {
    let mut levels = topic.split('/');
    let id = levels.nth(5)?;
    (levels.next() == Some("response") && !id.is_empty()).then_some(id)
}

/// How many of `total` in-flight requests requester `k` of `clients` keeps.
pub fn share(total: usize, clients: usize, k: usize) -> usize {
    total / clients + usize::from(k < total % clients)
}

/// Runs the raw measurement: on `--mqtt`, or on a fresh embedded broker (rmqtt with the
/// settings `fleetcmd serve` uses) in this process.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let (host, port, broker, pid) = match &args.mqtt {
        Some(m) => {
            let (h, p) = parse_host_port(m)?;
            (h, p, None, args.server_pid.clone())
        }
        None => {
            let broker = EmbeddedBroker::start("127.0.0.1:0".parse()?)?;
            let addr = broker.local_addr();
            (
                addr.ip().to_string(),
                addr.port(),
                Some(broker),
                vec![std::process::id()],
            )
        }
    };
    let in_process = broker.is_some();
    let result = drive(args, &host, port, pid, in_process).await;
    if let Some(b) = broker {
        tokio::task::spawn_blocking(move || b.shutdown()).await?;
    }
    result
}

async fn drive(
    args: &BenchArgs,
    host: &str,
    port: u16,
    pids: Vec<u32>,
    in_process: bool,
) -> anyhow::Result<Report> {
    let tag = run_tag();
    let mut progress = Progress::new(args.quiet);
    let collector = Collector::spawn(Expect {
        end: true,
        good_status: "SUCCEEDED",
        sample: 0,
    });
    let counters = collector.counters.clone();
    let spec = FleetSpec {
        host: host.to_string(),
        port,
        prefix: format!("raw-{tag}"),
        count: args.devices,
        behavior: Behavior::Succeed,
        delay: Duration::ZERO,
        root: TopicRoot::default(),
        tls: None,
    };
    let fleet = start_devices(&spec, &collector.notes, &mut progress, "raw bench").await?;

    let resources = Resources::start(pids, Duration::from_secs(args.sample_secs));
    let budget = args.budget();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut requesters = Vec::new();
    for k in 0..args.raw_clients {
        let in_flight = share(args.concurrency, args.raw_clients, k);
        if in_flight == 0 {
            continue;
        }
        let r = Requester {
            client_id: format!("raw-{tag}-requester-{k}"),
            devices: (0..args.devices)
                .filter(|i| i % args.raw_clients == k)
                .collect(),
            clients: args.raw_clients,
            host: host.to_string(),
            port,
            in_flight,
            budget,
            next: next.clone(),
            stop: stop.clone(),
            notes: collector.notes.clone(),
            spec: spec.clone(),
            timeout_secs: u32::try_from(args.timeout_secs.max(1)).unwrap_or(u32::MAX),
        };
        requesters.push(tokio::spawn(r.run()));
    }
    stop_after(args.duration, &stop);

    let begun = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let issued = next.load(Ordering::Relaxed).min(budget);
        let secs = begun.elapsed().as_secs_f64();
        let Tally {
            started: sent,
            delivered,
            completed: answered,
            ..
        } = counters.tally();
        let rate = per_sec(answered, secs);
        progress.show(&format!(
            "raw bench: {sent} sent, {delivered} delivered, {answered} answered | \
             {rate:.0}/s over {secs:.0} s"
        ));
        let all_sent = issued >= budget || stop.load(Ordering::Relaxed);
        if all_sent {
            let deadline = *drain_deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(args.drain_secs));
            if counters.finished() >= issued || Instant::now() >= deadline {
                break;
            }
        }
        if requesters.iter().all(|r| r.is_finished()) && drain_deadline.is_none() {
            // Every requester gave up (e.g. could not connect): nothing more will come.
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.done();
    stop.store(true, Ordering::Relaxed);
    let attempted = next.load(Ordering::Relaxed).min(budget);
    let mut report = Report {
        mode: "raw-mqtt",
        server: if in_process { "in-process" } else { "external" },
        devices: args.devices,
        behavior: Behavior::Succeed.name(),
        concurrency: args.concurrency,
        rate: None,
        attempted,
        ..Report::default()
    };
    resources.finish(&mut report, in_process);
    for r in requesters {
        r.abort();
    }
    let collected = collector.finish().await?;
    fleet.stop().await;
    collected.fill(&mut report);
    report.what = vec![
        format!(
            "raw QoS 1 request/response, {} requester connection(s), no fleetcmd; always flat out (--rate is not applied)",
            args.raw_clients
        ),
        "start->delivered: request published -> it reaches the device".into(),
        "start->terminal: request published -> the device's response reaches the requester".into(),
        "executions/s: answered requests / (last answer - first request)".into(),
    ];
    Ok(report)
}

/// One requester connection keeping `in_flight` requests outstanding.
struct Requester {
    client_id: String,
    /// The devices this requester sends to (all of them when it is the only one).
    devices: Vec<usize>,
    clients: usize,
    host: String,
    port: u16,
    in_flight: usize,
    budget: u64,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    notes: mpsc::Sender<Note>,
    spec: FleetSpec,
    timeout_secs: u32,
}

impl Requester {
    async fn run(self) {
        let inflight = u16::try_from(self.in_flight).unwrap_or(u16::MAX);
        let options = mqtt_options(&self.client_id, &self.host, self.port, inflight);
        let (client, mut eventloop) = AsyncClient::new(options, self.in_flight * 2 + 16);
        let body = Bytes::from_static(br#"{"bench":true}"#);
        let mut started = false;
        let mut suback_pending = 0usize;
        let mut sent = 0usize;
        loop {
            let event = match eventloop.poll().await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "raw requester connection lost; reconnecting");
                    let _ = self
                        .notes
                        .send(Note::Incident {
                            kind: "requester_connection_lost".into(),
                        })
                        .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let filters: Vec<Filter> = if self.clients == 1 {
                        vec![Filter::new(RESPONSE_FILTER, QoS::AtLeastOnce)]
                    } else {
                        self.devices
                            .iter()
                            .map(|d| {
                                let thing = self.spec.thing(*d);
                                let topic = format!(
                                    "$aws/commands/things/{thing}/executions/+/response/json"
                                );
                                Filter::new(topic, QoS::AtLeastOnce)
                            })
                            .collect()
                    };
                    suback_pending = 0;
                    for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
                        suback_pending += 1;
                        let (c, chunk) = (client.clone(), chunk.to_vec());
                        // From a task: the loop must keep polling for the requests to go out.
                        tokio::spawn(async move {
                            if let Err(e) = c.subscribe_many(chunk).await {
                                tracing::debug!(error = %e, "raw requester could not subscribe");
                            }
                        });
                    }
                }
                Event::Incoming(Packet::SubAck(_)) if !started => {
                    suback_pending = suback_pending.saturating_sub(1);
                    if suback_pending > 0 {
                        continue;
                    }
                    started = true;
                    for _ in 0..self.in_flight {
                        self.send_next(&client, &body, &mut sent).await;
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let at = Instant::now();
                    let Some(id) = std::str::from_utf8(&p.topic).ok().and_then(response_id) else {
                        continue;
                    };
                    let _ = self
                        .notes
                        .send(Note::Ended {
                            id: id.to_string(),
                            at,
                            status: "SUCCEEDED",
                        })
                        .await;
                    self.send_next(&client, &body, &mut sent).await;
                }
                _ => {}
            }
        }
    }

    async fn send_next(&self, client: &AsyncClient, body: &Bytes, sent: &mut usize) {
        // A requester without devices (more requesters than devices) sends nothing.
        let Some(device) = self.devices.get(*sent % self.devices.len().max(1)) else {
            return;
        };
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.budget {
            return;
        }
        let id = format!("r{i}");
        *sent += 1;
        let topic = format!(
            "$aws/commands/things/{}/executions/{id}/request/json",
            self.spec.thing(*device)
        );
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            message_expiry_interval: Some(self.timeout_secs),
            ..Default::default()
        };
        let at = Instant::now();
        match client.try_publish_with_properties(
            topic.clone(),
            QoS::AtLeastOnce,
            false,
            body.clone(),
            props.clone(),
        ) {
            Ok(()) => {}
            Err(_) => {
                let client = client.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let _ = client
                        .publish_with_properties(topic, QoS::AtLeastOnce, false, body, props)
                        .await;
                });
            }
        }
        let _ = self.notes.send(Note::Started { id, at, rpc: None }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_topics_give_their_execution_id() {
        assert_eq!(
            response_id("$aws/commands/things/raw-1-7/executions/r42/response/json"),
            Some("r42")
        );
        assert_eq!(
            response_id("$aws/commands/things/d/executions/r1/request/json"),
            None
        );
        assert_eq!(
            response_id("$aws/commands/things/d/executions//response/json"),
            None
        );
        assert_eq!(response_id("short/topic"), None);
    }

    #[test]
    fn in_flight_requests_are_split_evenly() {
        assert_eq!(
            (0..3).map(|k| share(256, 3, k)).collect::<Vec<_>>(),
            vec![86, 85, 85]
        );
        assert_eq!((0..4).map(|k| share(2, 4, k)).sum::<usize>(), 2);
        assert_eq!(share(256, 1, 0), 256);
    }
}
