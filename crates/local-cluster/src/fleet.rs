//! Simulated devices in the test process, all reporting to one collector: a deterministic
//! mix of behaviours and protocol versions, and what the devices saw of each execution.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleetcmd_domain::{ExecutionStatus, Target};
use fleetcmd_simulator::{
    self as simulator, Behavior, DeviceEvent, DeviceEventKind, DeviceOptions, MqttVersion, Summary,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::starts::Started;
use crate::{Cluster, LONG_TIMEOUT_SECS, SILENT_TIMEOUT_SECS};

/// The behaviour of device `i` (deterministic): 40 % succeed, 20 % progress then succeed,
/// 20 % fail, 10 % reject, 10 % silent.
pub fn behavior_of(i: usize) -> Behavior {
    const CYCLE: [Behavior; 10] = [
        Behavior::Succeed,
        Behavior::Progress,
        Behavior::Fail,
        Behavior::Succeed,
        Behavior::Reject,
        Behavior::Silent,
        Behavior::Succeed,
        Behavior::Progress,
        Behavior::Fail,
        Behavior::Succeed,
    ];
    CYCLE[i % CYCLE.len()]
}

/// Every third device speaks MQTT 3.1.1, the others MQTT 5.
pub fn version_of(i: usize) -> MqttVersion {
    if i % 3 == 2 {
        MqttVersion::V3
    } else {
        MqttVersion::V5
    }
}

/// The status (and terminal flag) an execution ends in, by its device's behaviour.
pub fn expected_status(b: Behavior) -> (ExecutionStatus, bool) {
    match b {
        Behavior::Succeed | Behavior::Progress => (ExecutionStatus::Succeeded, true),
        Behavior::Fail => (ExecutionStatus::Failed, true),
        Behavior::Reject => (ExecutionStatus::Rejected, true),
        // The cloud TIMED_OUT is not terminal.
        Behavior::Silent => (ExecutionStatus::TimedOut, false),
    }
}

/// The updates a device sends for one execution.
pub fn expected_updates(b: Behavior) -> &'static [&'static str] {
    match b {
        Behavior::Succeed => &["SUCCEEDED"],
        Behavior::Progress => &["IN_PROGRESS", "SUCCEEDED"],
        Behavior::Fail => &["FAILED"],
        Behavior::Reject => &["REJECTED"],
        Behavior::Silent => &[],
    }
}

/// The execution timeout for a device of behaviour `b`.
pub fn timeout_of(b: Behavior) -> i64 {
    if b == Behavior::Silent {
        SILENT_TIMEOUT_SECS
    } else {
        LONG_TIMEOUT_SECS
    }
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub target: Target,
    pub behavior: Behavior,
    pub version: MqttVersion,
}

/// What the devices saw of one execution.
#[derive(Debug, Default, Clone)]
pub struct ExecSeen {
    pub devices: HashSet<String>,
    pub requests: u32,
    pub duplicates: u32,
    pub responded: Vec<&'static str>,
    pub accepted: u32,
    pub rejected: Vec<String>,
    pub reply_timeouts: u32,
    pub content_types: Vec<Option<String>>,
}

/// What the devices saw, all together.
#[derive(Debug, Default)]
pub struct Seen {
    pub execs: HashMap<String, ExecSeen>,
    /// SUBACKs per device.
    pub subscribed: HashMap<String, u32>,
    /// `session_present` of every CONNACK, per device.
    pub connacks: HashMap<String, Vec<bool>>,
    pub connection_losses: u32,
}

impl Seen {
    /// How many devices reconnected (two CONNACKs or more) and found their session.
    pub fn sessions_kept(&self) -> usize {
        self.connacks
            .values()
            .filter(|c| c.len() >= 2 && c[c.len() - 1])
            .count()
    }
}

/// What [`Fleet::check_deliveries`] counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Deliveries {
    pub requests: u32,
    pub duplicates: u32,
    /// Updates resent after a retryable rejection (a shard moving).
    pub update_retries: usize,
    /// Of those, the ones whose first attempt had landed already (TerminalStateReached).
    pub resent_after_unknown: usize,
    /// Silent devices' executions that expired before they could be delivered.
    pub expired_undelivered: u32,
}

/// Simulated devices, all reporting to one collector.
pub struct Fleet {
    pub devices: Vec<DeviceSpec>,
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<Summary>>>,
    collector: JoinHandle<()>,
    host: String,
    port: u16,
}

impl Fleet {
    /// `count` devices of `cluster` (`<root>-d<i>`), behaving as [`behavior_of`] and
    /// speaking as [`version_of`] says.
    pub fn spawn(cluster: &Cluster, count: usize) -> Self {
        let root = cluster.topic_root();
        let devices: Vec<DeviceSpec> = (0..count)
            .map(|i| DeviceSpec {
                target: Target::thing(format!("{}-d{i:03}", cluster.root()))
                    .expect("valid thing name"),
                behavior: behavior_of(i),
                version: version_of(i),
            })
            .collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (events_tx, events) = mpsc::channel::<DeviceEvent>(65_536);
        let collector = tokio::spawn(collect(events, seen.clone()));
        let (stop, stopped) = watch::channel(false);
        let host = cluster.engines().mqtt_host.clone();
        let port = cluster.engines().mqtt_port;
        let tasks = devices
            .iter()
            .map(|d| {
                let mut opts = DeviceOptions::new(d.target.clone(), host.clone(), port);
                opts.mqtt_version = d.version;
                opts.behavior = d.behavior;
                opts.topic_root = root.clone();
                // Short-lived sessions: each run uses new ids, the broker need not keep them.
                opts.session_expiry = Duration::from_secs(120);
                opts.reply_timeout = Duration::from_secs(30);
                let mut stopped = stopped.clone();
                let tx = events_tx.clone();
                tokio::spawn(simulator::run(opts, Some(tx), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }))
            })
            .collect();
        Self {
            devices,
            seen,
            stop,
            tasks,
            collector,
            host,
            port,
        }
    }

    /// [`Self::spawn`], then waits until every device has subscribed once.
    pub async fn subscribed(cluster: &Cluster, count: usize) -> Self {
        let fleet = Self::spawn(cluster, count);
        fleet.wait_subscribed(1, Duration::from_secs(60)).await;
        fleet
    }

    /// Waits until every device has subscribed at least `times` times.
    pub async fn wait_subscribed(&self, times: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let missing: Vec<String> = {
                let seen = self.seen();
                self.devices
                    .iter()
                    .filter(|d| seen.subscribed.get(&d.target.id).copied().unwrap_or(0) < times)
                    .map(|d| d.target.id.clone())
                    .collect()
            };
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} device(s) not subscribed {times} time(s) within {within:?}, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the devices saw so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status (and terminal flag) each started execution must end in.
    pub fn expected(&self, started: &[Started]) -> HashMap<String, (ExecutionStatus, bool)> {
        started
            .iter()
            .map(|s| {
                (
                    s.execution_id.clone(),
                    expected_status(self.devices[s.job.device].behavior),
                )
            })
            .collect()
    }

    /// Checks what the devices saw: each execution delivered to its own device only, each
    /// update sent once (again only after a retryable rejection), no request for an
    /// execution nobody started, and the content type of the device's protocol version.
    pub fn check_deliveries(&self, started: &[Started], ids: &HashSet<&str>) -> Deliveries {
        let seen = self.seen();
        let mut problems = Vec::new();
        let mut counts = Deliveries::default();
        for s in started {
            let spec = &self.devices[s.job.device];
            let Some(e) = seen.execs.get(&s.execution_id) else {
                // A silent device's execution has a 3 s timeout: one appended by a killed
                // owner but not yet handed to the edge expires before its shard has a new
                // owner (which takes longer), and an expired request is not delivered (its
                // message expiry would drop it anyway). Its TIMED_OUT is checked elsewhere.
                if spec.behavior == Behavior::Silent {
                    counts.expired_undelivered += 1;
                } else {
                    problems.push(format!(
                        "{}: never delivered to {}",
                        s.execution_id, spec.target.id
                    ));
                }
                continue;
            };
            counts.requests += e.requests;
            counts.duplicates += e.duplicates;
            if e.devices.len() != 1 || !e.devices.contains(&spec.target.id) {
                problems.push(format!(
                    "{}: delivered to {:?}, not just {}",
                    s.execution_id, e.devices, spec.target.id
                ));
            }
            // An update rejected with a retryable error (a shard moving) is sent again: the
            // device still answered once per update.
            let mut answered = e.responded.clone();
            answered.dedup();
            let resent = e.responded.len() - answered.len();
            let retryable = e
                .rejected
                .iter()
                .filter(|r| r.starts_with("InternalError") || r.starts_with("DataConflict"))
                .count();
            counts.update_retries += resent;
            if answered != expected_updates(spec.behavior) || resent > retryable {
                problems.push(format!(
                    "{}: device sent {:?}, expected {:?} (each resent only after a retryable rejection)",
                    s.execution_id,
                    e.responded,
                    expected_updates(spec.behavior)
                ));
            }
            // A resent update can meet TerminalStateReached when an earlier attempt was
            // applied but its answer lost ("the outcome is unknown"): the final status,
            // checked against the device's, shows it landed once.
            let already_applied = e
                .rejected
                .iter()
                .filter(|r| r.starts_with("TerminalStateReached"))
                .count();
            if resent > 0 {
                counts.resent_after_unknown += already_applied;
            }
            if e.rejected.len() > retryable + if resent > 0 { already_applied } else { 0 } {
                problems.push(format!(
                    "{}: updates rejected for good: {:?}",
                    s.execution_id, e.rejected
                ));
            }
            let want_ct = (spec.version == MqttVersion::V5).then(|| "application/json".to_string());
            if e.content_types.iter().any(|ct| *ct != want_ct) {
                problems.push(format!(
                    "{}: content types {:?}, expected {want_ct:?}",
                    s.execution_id, e.content_types
                ));
            }
        }
        let unknown: Vec<&String> = seen
            .execs
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "devices got requests for executions nobody started: {unknown:?}"
        );
        assert!(
            problems.is_empty(),
            "{} device-side problems, e.g.:\n{}",
            problems.len(),
            problems[..problems.len().min(10)].join("\n")
        );
        counts
    }

    /// Stops every device and returns the summed counts; then makes the broker forget the
    /// MQTT 3.1.1 sessions (they never expire by themselves).
    pub async fn stop(self) -> Summary {
        self.stop.send_replace(true);
        let mut total = Summary::default();
        for t in self.tasks {
            let s = t.await.expect("device task").expect("device run");
            total.requests += s.requests;
            total.duplicates += s.duplicates;
            total.handled += s.handled;
            total.accepted += s.accepted;
            total.rejected += s.rejected;
            total.canceled += s.canceled;
        }
        let _ = self.collector.await;
        let v3: Vec<String> = self
            .devices
            .iter()
            .filter(|d| d.version == MqttVersion::V3)
            .map(|d| d.target.id.clone())
            .collect();
        forget_sessions(&self.host, self.port, &v3).await;
        total
    }
}

async fn collect(mut events: mpsc::Receiver<DeviceEvent>, seen: Arc<Mutex<Seen>>) {
    while let Some(ev) = events.recv().await {
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let device = ev.device.to_string();
        match ev.kind {
            DeviceEventKind::Connected { session_present } => {
                s.connacks.entry(device).or_default().push(session_present)
            }
            DeviceEventKind::Subscribed { .. } => *s.subscribed.entry(device).or_default() += 1,
            DeviceEventKind::ConnectionLost { .. } => s.connection_losses += 1,
            DeviceEventKind::Request(r) => {
                let e = s.execs.entry(r.execution_id).or_default();
                e.devices.insert(device);
                e.requests += 1;
                e.duplicates += u32::from(r.duplicate);
                e.content_types.push(r.content_type);
            }
            DeviceEventKind::Responded {
                execution_id,
                status,
            } => s
                .execs
                .entry(execution_id)
                .or_default()
                .responded
                .push(status),
            DeviceEventKind::Accepted { execution_id } => {
                s.execs.entry(execution_id).or_default().accepted += 1
            }
            DeviceEventKind::Rejected {
                execution_id,
                error,
                message,
            } => s
                .execs
                .entry(execution_id)
                .or_default()
                .rejected
                .push(format!(
                    "{}: {}",
                    error.unwrap_or_default(),
                    message.unwrap_or_default()
                )),
            DeviceEventKind::ReplyTimedOut { execution_id } => {
                s.execs.entry(execution_id).or_default().reply_timeouts += 1
            }
            DeviceEventKind::Canceled { .. } | DeviceEventKind::Unexpected { .. } => {}
        }
    }
}

/// Connects once with a clean session under each client id, so the broker drops its session.
async fn forget_sessions(host: &str, port: u16, client_ids: &[String]) {
    let mut tasks = Vec::new();
    for id in client_ids {
        let mut o = rumqttc::MqttOptions::new(id.clone(), host, port);
        o.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5));
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            let _ = client.disconnect().await;
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => {
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_mix_is_the_documented_one() {
        let behaviors: Vec<Behavior> = (0..10).map(behavior_of).collect();
        let count = |b: Behavior| behaviors.iter().filter(|x| **x == b).count();
        assert_eq!(
            [
                count(Behavior::Succeed),
                count(Behavior::Progress),
                count(Behavior::Fail),
                count(Behavior::Reject),
                count(Behavior::Silent)
            ],
            [4, 2, 2, 1, 1]
        );
        assert_eq!(
            (0..9).filter(|i| version_of(*i) == MqttVersion::V3).count(),
            3
        );
        assert_eq!(timeout_of(Behavior::Silent), SILENT_TIMEOUT_SECS);
        assert_eq!(
            expected_status(Behavior::Silent),
            (ExecutionStatus::TimedOut, false),
            "a cloud timeout is not terminal"
        );
    }
}
