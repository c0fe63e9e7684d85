//! The processes of one cluster: each a `fleetcmd run <service>` child with its own ports,
//! the cluster's common `--set` configuration, and a log file. Dropping the [`Cluster`]
//! SIGKILLs every process still running; when the test is failing it prints the tail of
//! every log and keeps the log dir.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use fleetcmd_domain::topics::TopicRoot;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{Dispatcher, Engines, READY_WAIT, Registry, SHARDS, unique_id};

/// One `fleetcmd run <service>` process.
struct Proc {
    name: String,
    service: &'static str,
    /// `--set` values of this process (after the cluster's common ones).
    sets: Vec<String>,
    /// Its gRPC address (API and health for registry and dispatchers, health for the others).
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// The processes of one scenario, and the names that isolate it from other runs.
pub struct Cluster {
    scenario: String,
    dir: PathBuf,
    bin: PathBuf,
    common: Vec<String>,
    procs: Vec<Proc>,
    engines: Engines,
    root: String,
    topic: String,
}

impl Cluster {
    /// An empty cluster of `bin` (the `fleetcmd` binary built with the `cluster` feature)
    /// on `engines`, with its own topic, consumer groups, keyspace and MQTT topic root.
    pub fn new(scenario: &str, engines: &Engines, bin: impl Into<PathBuf>) -> Self {
        let id = unique_id();
        let dir = std::env::temp_dir().join(format!("fleetcmd-cluster-{scenario}-{id}"));
        std::fs::create_dir_all(&dir).expect("create the log dir");
        let root = format!("fct{id}");
        let topic = format!("fleetcmd-test-{scenario}-{id}");
        let common = vec![
            format!("shards={SHARDS}"),
            format!("topic_root={root}"),
            format!("nats.url={}", engines.nats_url),
            format!("kafka.brokers={}", engines.kafka_brokers),
            format!("kafka.topic={topic}"),
            format!("kafka.group_prefix=fct-{scenario}-{id}"),
            format!("scylla.nodes={}", engines.cql_nodes),
            format!("scylla.keyspace=fct_{id}"),
            format!("mqtt.host={}", engines.mqtt_host),
            format!("mqtt.port={}", engines.mqtt_port),
        ];
        Self {
            scenario: scenario.to_string(),
            dir,
            bin: bin.into(),
            common,
            procs: Vec::new(),
            engines: engines.clone(),
            root,
            topic,
        }
    }

    /// A cluster of one registry, `dispatchers` dispatchers (`dispatcher-<n>`), one
    /// projector and `edges` edges (`edge-<n>`, splitting the device updates), all SERVING.
    pub async fn start(
        scenario: &str,
        engines: &Engines,
        bin: impl Into<PathBuf>,
        dispatchers: usize,
        edges: usize,
    ) -> Self {
        let mut c = Self::new(scenario, engines, bin);
        // The registry first: it creates the keyspace, so the others do not race on the schema.
        c.add("registry", "registry", &[]);
        c.wait_serving(&["registry"]).await;
        let mut names = Vec::new();
        for d in 0..dispatchers {
            let name = format!("dispatcher-{d}");
            c.add(&name, "dispatcher", &[]);
            names.push(name);
        }
        c.add("projector", "projector", &[]);
        names.push("projector".into());
        for e in 0..edges {
            let name = format!("edge-{e}");
            let client_id = format!("{}-edge-{e}", c.root);
            c.add(
                &name,
                "edge",
                &[
                    format!("mqtt.client_id={client_id}"),
                    format!("mqtt.instances={edges}"),
                    format!("mqtt.instance={e}"),
                ],
            );
            names.push(name);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        c.wait_serving(&refs).await;
        c
    }

    /// The engines the cluster runs on.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// The MQTT topic root of this cluster (also the prefix of its device ids).
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn topic_root(&self) -> TopicRoot {
        TopicRoot::new(self.root.clone()).expect("valid topic root")
    }

    /// The Kafka topic of this cluster's event log.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Adds a process and starts it.
    pub fn add(&mut self, name: &str, service: &'static str, extra: &[String]) {
        let addr = free_addr();
        let mut sets: Vec<String> = extra.to_vec();
        match service {
            "registry" | "dispatcher" => sets.push(format!("grpc.addr={addr}")),
            _ => sets.push(format!("health.addr={addr}")),
        }
        // Many processes share this host: each serves its metrics on a free port.
        sets.push("metrics.addr=127.0.0.1:0".to_string());
        self.procs.push(Proc {
            name: name.to_string(),
            service,
            sets,
            addr,
            log: self.dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        });
        self.start_process(name);
    }

    fn index(&self, name: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The gRPC address of a process.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.procs[self.index(name)].addr
    }

    /// (Re)starts a process that is not running.
    pub fn start_process(&mut self, name: &str) {
        let i = self.index(name);
        let bin = self.bin.clone();
        let common = self.common.clone();
        let p = &mut self.procs[i];
        assert!(p.child.is_none(), "{name} is already running");
        p.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("open the process log");
        let mut args = vec!["run".to_string(), p.service.to_string()];
        for s in common.iter().chain(&p.sets) {
            args.push("--set".into());
            args.push(s.clone());
        }
        let _ = writeln!(
            log,
            "=== start #{} of {name}: fleetcmd {}",
            p.starts,
            args.join(" ")
        );
        let child = Command::new(&bin)
            .args(&args)
            .env(
                "RUST_LOG",
                "info,librdkafka=warn,scylla::cluster::metadata=off",
            )
            .env_remove("FLEETCMD_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", bin.display()));
        p.child = Some(child);
    }

    /// SIGKILL (`kill -9`), then reap.
    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.procs[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit (at most 30 s, then SIGKILL and fail).
    pub fn terminate(&mut self, name: &str) -> ExitStatus {
        let i = self.index(name);
        let mut child = self.procs[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "sending SIGTERM to {name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the process") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails the test (with the log tail) if a process that should run has exited.
    pub fn assert_alive(&mut self, name: &str) {
        let i = self.index(name);
        let p = &mut self.procs[i];
        let child = p
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{name} is not started"));
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("{name} exited ({status}); log tail:\n{}", tail(&p.log, 60));
        }
    }

    /// [`Self::assert_alive`] for every process that was started and not stopped.
    pub fn assert_all_alive(&mut self) {
        let names: Vec<String> = self
            .procs
            .iter()
            .filter(|p| p.child.is_some())
            .map(|p| p.name.clone())
            .collect();
        for n in names {
            self.assert_alive(&n);
        }
    }

    /// The exit status of a process that was started and has exited since.
    pub fn exit_status(&mut self, name: &str) -> Option<ExitStatus> {
        let i = self.index(name);
        self.procs[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` of a process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.procs[self.index(name)].log, lines)
    }

    /// Waits until the process's gRPC health reports `want` (polling, never a fixed sleep);
    /// returns how long it took, or fails with the log tail after `within`.
    pub async fn wait_health(
        &mut self,
        name: &str,
        want: ServingStatus,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        let addr = self.addr(name);
        loop {
            self.assert_alive(name);
            let last = match health(addr).await {
                Ok(s) if s == want => return started.elapsed(),
                Ok(s) => format!("{s:?}"),
                Err(e) => e,
            };
            if started.elapsed() > within {
                panic!(
                    "{name} did not report {want:?} within {within:?} (last: {last}); log tail:\n{}",
                    self.log_tail(name, 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every named process is SERVING, within [`READY_WAIT`] each.
    pub async fn wait_serving(&mut self, names: &[&str]) {
        for n in names {
            let took = self
                .wait_health(n, ServingStatus::Serving, READY_WAIT)
                .await;
            println!(
                "[{}] {n} serving after {:.1} s",
                self.scenario,
                took.as_secs_f64()
            );
        }
    }

    /// The gRPC health a process reports now.
    pub async fn health(&self, name: &str) -> Result<ServingStatus, String> {
        health(self.addr(name)).await
    }

    /// A registry client (of the process `registry`).
    pub fn registry(&self) -> Registry {
        Registry::new(channel(self.addr("registry")))
    }

    /// A thing registry client (of the process `registry`).
    pub fn things(&self) -> crate::Things {
        crate::Things::new(channel(self.addr("registry")))
    }

    /// A rollouts client (of the process `registry`).
    pub fn rollouts(&self) -> crate::Rollouts {
        crate::Rollouts::new(channel(self.addr("registry")))
    }

    /// A dispatcher client of the process `name`.
    pub fn dispatcher(&self, name: &str) -> Dispatcher {
        Dispatcher::new(channel(self.addr(name)))
    }

    fn tails(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                p.name,
                p.log.display(),
                tail(&p.log, 40)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "===== process logs of {} (kept in {}) =====\n{}",
                self.scenario,
                self.dir.display(),
                self.tails()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A free port for a child process to listen on. Picked below the kernel's ephemeral range
/// (32768–60999 by default), so the outgoing connections of the many clients in these tests
/// (Kafka, NATS, MQTT) cannot take it between the check here and the child's bind.
fn free_addr() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 500) as u16 * 20;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + (start - 20_000 + offset) % 12_000));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port between 20000 and 32000");
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A lazily connected channel whose calls time out after 30 s.
fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect_lazy()
}

async fn health(addr: SocketAddr) -> Result<ServingStatus, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(ServingStatus::try_from(reply.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
