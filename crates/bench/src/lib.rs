//! `fleetcmd bench`: the load generator (its flags, what it measures and the figures it
//! produced are in `BENCHMARKS.md`).
//!
//! It runs a fleet of simulated devices over real MQTT ([`devices`]) and drives
//! StartCommandExecution over gRPC ([`fleet`]) against fleetcmd started in-process or
//! already running, or plain QoS 1 request/response through the same kind of broker with
//! no fleetcmd in between ([`raw`], the ceiling). A [`collector`] joins what the driver,
//! the devices and the status watcher saw of each execution into latency histograms;
//! [`stats`] turns them into the report (text, or one JSON object with `--json`).

pub mod collector;
pub mod devices;
pub mod fleet;
pub mod pace;
pub mod procfs;
pub mod raw;
pub mod stats;

use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

pub use devices::Behavior;
use fleetcmd_cli::ClientArgs;
use stats::{Report, RssSample};

/// Flags of `fleetcmd bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Simulated devices (MQTT connections); execution `i` goes to device `i mod devices`.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Executions to start (raw mode: requests to send). Ignored with --duration.
    #[arg(long, default_value_t = 50_000)]
    pub executions: u64,
    /// Start calls (raw: requests) in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Start this many executions per second on a fixed schedule (default: flat out,
    /// limited by --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run for this long instead of a fixed count (e.g. 300, 5m), sampling the server's RSS
    /// every --sample-secs: the memory-growth check.
    #[arg(long, value_parser = pace::parse_duration)]
    pub duration: Option<Duration>,
    /// How the devices answer.
    #[arg(long, value_enum, default_value_t = Behavior::Succeed)]
    pub behavior: Behavior,
    /// Delay before answering, for --behavior delay.
    #[arg(long, default_value_t = 100)]
    pub delay_ms: u64,
    /// Give every start a client token of its own, as the SDKs do (idempotent retries):
    /// fleetcmd then checks and remembers each token.
    #[arg(long)]
    pub client_tokens: bool,
    /// Measure the raw MQTT request/response baseline instead of fleetcmd.
    #[arg(long, conflicts_with = "compare")]
    pub raw_mqtt: bool,
    /// Measure fleetcmd, then the raw baseline, and report fleetcmd's rate as a fraction of it.
    #[arg(long)]
    pub compare: bool,
    /// Use a running fleetcmd (gRPC at the global --endpoint) whose broker is at HOST:PORT,
    /// instead of starting one in-process. With --raw-mqtt: the broker to measure (it must
    /// not have a fleetcmd edge attached, which would answer the raw responses).
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// PIDs of the external server's processes (repeat or comma-separate them for a
    /// cluster), for their peak RSS and CPU time (summed over the processes).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// gRPC connections the start calls are spread over (HTTP/2 multiplexes each).
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// MQTT connections sending raw requests (the raw baseline's stand-in for the edge).
    #[arg(long, default_value_t = 1)]
    pub raw_clients: usize,
    /// Execution timeout given to each start.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: i64,
    /// After the last start, wait at most this long for outstanding executions.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
    /// Check this many completed executions with GetCommandExecution after the run.
    #[arg(long, default_value_t = 1000)]
    pub verify: usize,
    /// RSS sampling interval.
    #[arg(long, default_value_t = 5)]
    pub sample_secs: u64,
    /// Shards of the in-process server.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Data directory of the in-process server (default: a fresh temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Device security on (in-process server only): the server requires device
    /// authentication, and every simulated device is registered as a thing, gets its own
    /// certificate and connects with it over TLS — what TLS and authorization cost.
    #[arg(long, conflicts_with = "mqtt")]
    pub secure: bool,
    /// The reconnect storm: start every execution while every device is offline, then
    /// connect them all at once (clean sessions) and time until each has its request and
    /// until each has ended.
    #[arg(long, conflicts_with_all = ["raw_mqtt", "compare", "duration"])]
    pub offline_start: bool,
}

impl BenchArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.devices >= 1, "--devices must be at least 1");
        anyhow::ensure!(self.executions >= 1, "--executions must be at least 1");
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.channels >= 1, "--channels must be at least 1");
        anyhow::ensure!(self.raw_clients >= 1, "--raw-clients must be at least 1");
        anyhow::ensure!(self.sample_secs >= 1, "--sample-secs must be at least 1");
        if let Some(r) = self.rate {
            anyhow::ensure!(
                r.is_finite() && r > 0.0,
                "--rate must be a positive number, got {r}"
            );
        }
        if let Some(m) = &self.mqtt {
            parse_host_port(m)?;
        }
        Ok(())
    }

    /// How many executions to attempt (`u64::MAX` with --duration: until time is up).
    pub fn budget(&self) -> u64 {
        if self.duration.is_some() {
            u64::MAX
        } else {
            self.executions
        }
    }
}

/// `host:port` → (host, port).
pub fn parse_host_port(text: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("--mqtt {text:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--mqtt {text:?}: invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "--mqtt {text:?}: empty host");
    Ok((host.to_string(), port))
}

/// A short random tag that keeps device names and the command id of one run apart from
/// any other run against the same server or broker.
fn run_tag() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..8].to_string()
}

/// Runs the bench and writes the report to `out` (text, or one JSON object with `--json`).
pub async fn run(args: BenchArgs, client: &ClientArgs, out: &mut impl Write) -> anyhow::Result<()> {
    args.validate()?;
    let json = client.json;
    let result: Value = if args.compare {
        let fleet = fleet::run(&args, client).await?;
        let raw = raw::run(&args).await?;
        if !json {
            write!(out, "{}\n{}", fleet.to_text(), raw.to_text())?;
            let r = raw.executions_per_sec();
            if r > 0.0 {
                writeln!(
                    out,
                    "fleetcmd: {:.0}/s = {:.1} % of the raw MQTT baseline ({:.0}/s)",
                    fleet.executions_per_sec(),
                    100.0 * fleet.executions_per_sec() / r,
                    r
                )?;
            }
            return Ok(());
        }
        Value::Object(stats::compare_json(&fleet, &raw))
    } else {
        let report = if args.raw_mqtt {
            raw::run(&args).await?
        } else {
            fleet::run(&args, client).await?
        };
        if !json {
            write!(out, "{}", report.to_text())?;
            return Ok(());
        }
        Value::Object(report.to_json())
    };
    writeln!(out, "{result}")?;
    Ok(())
}

/// Resource figures of the measured process: CPU at the start, RSS samples while running.
struct Resources {
    pids: Vec<u32>,
    cpu_at_start: Option<Duration>,
    own_cpu_at_start: Option<Duration>,
    started: Instant,
    samples: Arc<std::sync::Mutex<Vec<RssSample>>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

/// Summed over `pids`; `None` when any of them cannot be read (e.g. it exited).
fn sum_over<T: std::iter::Sum<T>>(pids: &[u32], f: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| f(*p)).sum()
}

impl Resources {
    fn start(pids: Vec<u32>, every: Duration) -> Self {
        let started = Instant::now();
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = (!pids.is_empty()).then(|| {
            let samples = samples.clone();
            let pids = pids.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Some(rss_bytes) = sum_over(&pids, procfs::rss)
                        && let Ok(mut s) = samples.lock()
                    {
                        s.push(RssSample {
                            at_secs: started.elapsed().as_secs_f64(),
                            rss_bytes,
                        });
                    }
                }
            })
        });
        Self {
            cpu_at_start: sum_over(&pids, procfs::cpu),
            pids,
            own_cpu_at_start: procfs::cpu(std::process::id()),
            started,
            samples,
            sampler,
        }
    }

    /// Fills the resource fields of `report`.
    fn finish(self, report: &mut Report, in_process: bool) {
        if let Some(s) = self.sampler {
            s.abort();
        }
        let me = std::process::id();
        if !self.pids.is_empty() {
            if let Some(rss_bytes) = sum_over(&self.pids, procfs::rss)
                && let Ok(mut s) = self.samples.lock()
            {
                s.push(RssSample {
                    at_secs: self.started.elapsed().as_secs_f64(),
                    rss_bytes,
                });
            }
            report.peak_rss_bytes = sum_over(&self.pids, procfs::peak_rss);
            report.cpu_seconds = match (self.cpu_at_start, sum_over(&self.pids, procfs::cpu)) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
                _ => None,
            };
        }
        report.rss_samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let own = match (self.own_cpu_at_start, procfs::cpu(me)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        report.resources_of = match (in_process, self.pids.as_slice()) {
            (true, _) => {
                "this one process: server, embedded broker, devices and load generator together"
                    .into()
            }
            (false, []) => "not measured (pass --server-pid)".into(),
            (false, [pid]) => format!("server process {pid}"),
            (false, pids) => format!(
                "server processes {} (RSS and CPU summed; peak RSS is the sum of each one's peak)",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if !in_process {
            report.bench_cpu_seconds = own;
        }
    }
}

/// Raises `stop` once `duration` has passed; without one the run ends by its budget alone.
fn stop_after(duration: Option<Duration>, stop: &Arc<AtomicBool>) {
    if let Some(d) = duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
}

/// Connects the bench's devices, showing `mode: n/count devices subscribed` meanwhile.
async fn start_devices(
    spec: &devices::FleetSpec,
    notes: &tokio::sync::mpsc::Sender<collector::Note>,
    progress: &mut Progress,
    mode: &str,
) -> anyhow::Result<devices::Fleet> {
    let count = spec.count;
    let show = |n| progress.show(&format!("{mode}: {n}/{count} devices subscribed"));
    devices::start(spec, notes.clone(), Duration::from_secs(120), show).await
}

/// The progress line on stderr: redrawn in place on a terminal, one line every 5 s otherwise.
struct Progress {
    enabled: bool,
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            enabled: !quiet,
            tty,
            last: Instant::now() - Duration::from_secs(60),
        }
    }

    fn show(&mut self, line: &str) {
        if !self.enabled {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn done(&mut self) {
        if self.enabled && self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = parse(&[]).unwrap();
        let b = cli.bench;
        assert_eq!(
            (b.devices, b.executions, b.concurrency),
            (1000, 50_000, 256)
        );
        assert_eq!(b.rate, None);
        assert_eq!(b.behavior, Behavior::Succeed);
        assert!(!b.raw_mqtt && !b.compare && b.mqtt.is_none());
        assert_eq!(b.budget(), 50_000);
        b.validate().unwrap();

        let cli = parse(&[
            "--devices",
            "50",
            "--executions",
            "300",
            "--rate",
            "10000",
            "--behavior",
            "progress",
            "--duration",
            "5m",
            "--mqtt",
            "127.0.0.1:1884",
            "--json",
        ])
        .unwrap();
        assert!(cli.client.json);
        let b = cli.bench;
        assert_eq!(b.devices, 50);
        assert_eq!(b.rate, Some(10_000.0));
        assert_eq!(b.behavior, Behavior::Progress);
        assert_eq!(b.duration, Some(Duration::from_secs(300)));
        assert_eq!(b.budget(), u64::MAX);
        assert_eq!(
            parse_host_port(b.mqtt.as_deref().unwrap()).unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        for behavior in ["succeed", "progress", "delay", "silent"] {
            parse(&["--behavior", behavior]).unwrap();
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["--raw-mqtt", "--compare"]).is_err());
        assert!(parse(&["--offline-start", "--raw-mqtt"]).is_err());
        assert!(parse(&["--offline-start", "--duration", "1m"]).is_err());
        assert!(parse(&["--offline-start"]).unwrap().bench.offline_start);
        assert!(parse(&["--behavior", "dance"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
        let mut b = parse(&[]).unwrap().bench;
        b.rate = Some(0.0);
        assert!(b.validate().is_err());
        let mut b = parse(&[]).unwrap().bench;
        b.concurrency = 0;
        assert!(b.validate().is_err());
        let mut b = parse(&[]).unwrap().bench;
        b.mqtt = Some("localhost".into());
        assert!(b.validate().is_err());
        assert_eq!(parse_host_port("[::1]:1883").unwrap(), ("::1".into(), 1883));
    }

    /// What a bench run wrote, once it finished (within two minutes) and succeeded.
    async fn run_to_text(cli: Cli) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(120),
            run(cli.bench, &cli.client, &mut out),
        )
        .await
        .expect("the run finished in time")
        .expect("the run succeeded");
        String::from_utf8(out).unwrap()
    }

    /// The reconnect storm, small: every execution is started while its device is offline
    /// and still reaches SUCCEEDED once the devices connect. No timing assertions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offline_start_delivers_every_execution_once_the_devices_connect() {
        let cli = parse(&[
            "--devices",
            "20",
            "--executions",
            "40",
            "--offline-start",
            "--timeout-secs",
            "600",
            "--verify",
            "40",
            "--quiet",
            "--json",
        ])
        .unwrap();
        let text = run_to_text(cli).await;
        let report: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["completed"], 40, "{report}");
        assert_eq!(report["verified"], 40, "{report}");
        for key in [
            "storm_subscribed_secs",
            "storm_delivered_secs",
            "storm_ended_secs",
        ] {
            assert!(report[key].is_number(), "{key} in {report}");
        }
    }

    /// The one end-to-end run: a few hundred executions against fleetcmd in-process, every
    /// one SUCCEEDED and readable, and the JSON report complete. No timing assertions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_run_in_process_reaches_succeeded_for_every_execution() {
        let cli = parse(&[
            "--devices",
            "20",
            "--executions",
            "300",
            "--concurrency",
            "32",
            "--channels",
            "2",
            "--behavior",
            "progress",
            "--verify",
            "300",
            "--quiet",
            "--json",
        ])
        .unwrap();
        let text = run_to_text(cli).await;
        assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
        let report: Value = serde_json::from_str(&text).unwrap();
        for key in stats::FLAT_KEYS {
            assert!(report.get(key).is_some(), "missing {key} in {report}");
        }
        assert_eq!(report["mode"], "fleetcmd");
        assert_eq!(report["server"], "in-process");
        assert_eq!(report["attempted"], 300);
        assert_eq!(report["started"], 300);
        assert_eq!(report["completed"], 300, "{report}");
        assert_eq!(
            report["verified"], 300,
            "every execution read back as SUCCEEDED: {report}"
        );
        assert_eq!(report["errors"], serde_json::json!({}), "{report}");
        assert!(report["p99_terminal_ms"].is_number());
        assert!(report["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
        assert!(
            report["executions_per_sec"]
                .as_f64()
                .is_some_and(|r| r > 0.0)
        );
    }
}
