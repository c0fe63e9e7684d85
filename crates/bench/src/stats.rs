//! Latency histograms and the bench report: what was measured, in text for people and as
//! one flat JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// Highest latency a histogram records (longer ones are clamped to it), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;

/// A latency histogram with microsecond resolution and 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    /// `None` only if hdrhistogram refused the (constant, valid) bounds: then nothing is
    /// recorded rather than the bench panicking.
    hist: Option<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        if let Some(h) = &mut self.hist {
            h.saturating_record(us);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, Histogram::len)
    }

    /// p50, p90, p99 and max in milliseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        let hist = self.hist.as_ref().filter(|h| !h.is_empty())?;
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
        })
    }
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One RSS sample of the measured process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssSample {
    /// Seconds since the measurement started.
    pub at_secs: f64,
    pub rss_bytes: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `fleetcmd` or `raw-mqtt`.
    pub mode: &'static str,
    /// `in-process` or `external`.
    pub server: &'static str,
    pub devices: usize,
    pub behavior: &'static str,
    pub concurrency: usize,
    pub rate: Option<f64>,
    /// Executions (or raw requests) attempted.
    pub attempted: u64,
    /// Start RPCs answered OK (raw: requests published).
    pub started: u64,
    /// Executions whose expected end was observed (see `what`).
    pub completed: u64,
    /// From the first start to the last completion.
    pub elapsed_secs: f64,
    pub start: Option<LatencySummary>,
    pub delivered: Option<LatencySummary>,
    pub terminal: Option<LatencySummary>,
    pub errors: BTreeMap<String, u64>,
    /// Executions checked with GetCommandExecution after the run, and how many matched.
    pub verified: u64,
    pub peak_rss_bytes: Option<u64>,
    pub rss_samples: Vec<RssSample>,
    pub cpu_seconds: Option<f64>,
    /// Whose memory and CPU the figures above are.
    pub resources_of: String,
    /// The load generator's own CPU time (when the server is another process).
    pub bench_cpu_seconds: Option<f64>,
    /// Largest delay between an execution's scheduled start (`--rate`) and its real start.
    pub max_schedule_lag_ms: Option<f64>,
    /// `--offline-start`: from the moment the devices began connecting, the seconds until
    /// all were subscribed, until every execution was delivered, and until every one ended.
    pub storm: Option<Storm>,
    /// What each latency measures, in words.
    pub what: Vec<String>,
}

/// The reconnect storm's figures, in seconds from the first connect (resolution 20 ms).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Storm {
    pub subscribed_secs: f64,
    pub delivered_secs: Option<f64>,
    pub ended_secs: Option<f64>,
}

impl Report {
    pub fn executions_per_sec(&self) -> f64 {
        per_sec(self.completed, self.elapsed_secs)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The flat JSON object of `--json` (keys documented in BENCHMARKS.md).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mode".into(), json!(self.mode));
        m.insert("server".into(), json!(self.server));
        m.insert("devices".into(), json!(self.devices));
        m.insert("behavior".into(), json!(self.behavior));
        m.insert("concurrency".into(), json!(self.concurrency));
        m.insert("rate".into(), json!(self.rate));
        m.insert("attempted".into(), json!(self.attempted));
        m.insert("started".into(), json!(self.started));
        m.insert("completed".into(), json!(self.completed));
        m.insert("elapsed_secs".into(), json!(round3(self.elapsed_secs)));
        m.insert(
            "executions_per_sec".into(),
            json!(round1(self.executions_per_sec())),
        );
        for (name, s) in [
            ("start", &self.start),
            ("delivered", &self.delivered),
            ("terminal", &self.terminal),
        ] {
            let v = |f: fn(&LatencySummary) -> f64| s.as_ref().map(|s| round3(f(s)));
            m.insert(format!("p50_{name}_ms"), json!(v(|s| s.p50_ms)));
            m.insert(format!("p90_{name}_ms"), json!(v(|s| s.p90_ms)));
            m.insert(format!("p99_{name}_ms"), json!(v(|s| s.p99_ms)));
            m.insert(format!("max_{name}_ms"), json!(v(|s| s.max_ms)));
        }
        m.insert("errors".into(), json!(self.errors));
        m.insert("error_count".into(), json!(self.error_count()));
        m.insert("verified".into(), json!(self.verified));
        m.insert("peak_rss_bytes".into(), json!(self.peak_rss_bytes));
        m.insert(
            "rss_samples".into(),
            Value::Array(
                self.rss_samples
                    .iter()
                    .map(|s| json!({"at_secs": round1(s.at_secs), "rss_bytes": s.rss_bytes}))
                    .collect(),
            ),
        );
        m.insert("cpu_seconds".into(), json!(self.cpu_seconds.map(round3)));
        m.insert("resources_of".into(), json!(self.resources_of));
        m.insert(
            "bench_cpu_seconds".into(),
            json!(self.bench_cpu_seconds.map(round3)),
        );
        m.insert(
            "max_schedule_lag_ms".into(),
            json!(self.max_schedule_lag_ms.map(round3)),
        );
        let storm =
            |f: fn(&Storm) -> Option<f64>| json!(self.storm.as_ref().and_then(f).map(round3));
        m.insert(
            "storm_subscribed_secs".into(),
            storm(|s| Some(s.subscribed_secs)),
        );
        m.insert("storm_delivered_secs".into(), storm(|s| s.delivered_secs));
        m.insert("storm_ended_secs".into(), storm(|s| s.ended_secs));
        m.insert("what".into(), json!(self.what));
        m
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let rate = self
            .rate
            .map_or_else(|| "flat out".to_string(), |r| format!("{r}/s"));
        let _ = writeln!(
            out,
            "{} bench ({} server): {} devices, behavior {}, concurrency {}, rate {}",
            self.mode, self.server, self.devices, self.behavior, self.concurrency, rate
        );
        let _ = writeln!(
            out,
            "  attempted {}, started {}, completed {} in {:.2} s: {:.0} executions/s",
            self.attempted,
            self.started,
            self.completed,
            self.elapsed_secs,
            self.executions_per_sec()
        );
        let _ = writeln!(
            out,
            "  latency (ms)          count       p50       p90       p99       max"
        );
        for (name, s) in [
            ("start RPC", &self.start),
            ("start->delivered", &self.delivered),
            ("start->terminal", &self.terminal),
        ] {
            match s {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "  {name:<18} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
                    );
                }
                None => {
                    let _ = writeln!(out, "  {name:<18}        -");
                }
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "  errors: {}", list.join(", "));
        }
        if self.verified > 0 {
            let _ = writeln!(
                out,
                "  verified with GetCommandExecution: {}",
                self.verified
            );
        }
        if let Some(lag) = self.max_schedule_lag_ms {
            let _ = writeln!(out, "  max lag behind the --rate schedule: {lag:.1} ms");
        }
        if let Some(s) = &self.storm {
            let secs =
                |v: Option<f64>| v.map_or_else(|| "never".to_string(), |v| format!("{v:.2} s"));
            let _ = writeln!(
                out,
                "  reconnect storm, from the first connect: all subscribed {:.2} s, all delivered {}, all ended {}",
                s.subscribed_secs,
                secs(s.delivered_secs),
                secs(s.ended_secs)
            );
        }
        let mem = self.peak_rss_bytes.map_or_else(|| "n/a".to_string(), mib);
        let cpu = self
            .cpu_seconds
            .map_or_else(|| "n/a".to_string(), |c| format!("{c:.2} s"));
        let _ = writeln!(out, "  peak RSS {mem}, CPU {cpu} ({})", self.resources_of);
        if let Some(c) = self.bench_cpu_seconds {
            let _ = writeln!(out, "  load generator CPU {c:.2} s");
        }
        if self.rss_samples.len() > 1 {
            let list: Vec<String> = self
                .rss_samples
                .iter()
                .map(|s| format!("{:.0}s:{}", s.at_secs, mib(s.rss_bytes)))
                .collect();
            let _ = writeln!(out, "  RSS over time: {}", list.join(" "));
        }
        for w in &self.what {
            let _ = writeln!(out, "  * {w}");
        }
        out
    }
}

/// `n` per second over `secs` (0 when nothing was measured).
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON object of a `--compare` run: fleetcmd's figures at the top level, the raw
/// baseline's under `raw`, and the ratio.
pub fn compare_json(fleet: &Report, raw: &Report) -> Map<String, Value> {
    let mut m = fleet.to_json();
    let raw_rate = raw.executions_per_sec();
    m.insert("raw_baseline_per_sec".into(), json!(round1(raw_rate)));
    let fraction = (raw_rate > 0.0).then(|| round3(fleet.executions_per_sec() / raw_rate));
    m.insert("fraction_of_raw".into(), json!(fraction));
    m.insert("raw".into(), Value::Object(raw.to_json()));
    m
}

/// Flat keys of the JSON report that scripts read; present in every report (`null` when
/// not measured). The unit test and the smoke run both check them.
#[cfg(test)]
pub(crate) const FLAT_KEYS: [&str; 16] = [
    "executions_per_sec",
    "p50_start_ms",
    "p90_start_ms",
    "p99_start_ms",
    "max_start_ms",
    "p50_delivered_ms",
    "p99_delivered_ms",
    "max_delivered_ms",
    "p50_terminal_ms",
    "p99_terminal_ms",
    "max_terminal_ms",
    "errors",
    "error_count",
    "peak_rss_bytes",
    "cpu_seconds",
    "rss_samples",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut h = Latency::new();
        assert!(h.summary().is_none());
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 100);
        // 3 significant digits: within 0.1 % of the exact value.
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p90_ms - 90.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        // Out-of-range values are clamped, not lost.
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.count(), 102);
        assert!(h.summary().unwrap().max_ms >= 119_000.0);
    }

    fn sample_report() -> Report {
        let mut lat = Latency::new();
        lat.record(Duration::from_micros(1500));
        Report {
            mode: "fleetcmd",
            server: "in-process",
            devices: 10,
            behavior: "succeed",
            concurrency: 8,
            attempted: 100,
            started: 100,
            completed: 100,
            elapsed_secs: 0.5,
            start: lat.summary(),
            delivered: lat.summary(),
            terminal: None,
            errors: BTreeMap::from([("UNAVAILABLE".to_string(), 2)]),
            peak_rss_bytes: Some(50 * 1024 * 1024),
            cpu_seconds: Some(1.25),
            resources_of: "this process".into(),
            ..Report::default()
        }
    }

    #[test]
    fn json_report_has_the_documented_flat_keys() {
        let m = sample_report().to_json();
        for key in FLAT_KEYS {
            assert!(m.contains_key(key), "missing {key}");
        }
        assert_eq!(m["executions_per_sec"], json!(200.0));
        assert_eq!(m["p99_delivered_ms"], json!(1.5));
        assert_eq!(m["p99_terminal_ms"], Value::Null);
        assert_eq!(m["errors"]["UNAVAILABLE"], json!(2));
        assert_eq!(m["error_count"], json!(2));
        assert_eq!(m["rate"], Value::Null);
    }

    #[test]
    fn text_report_names_every_figure() {
        let text = sample_report().to_text();
        assert!(text.contains("200 executions/s"), "{text}");
        assert!(text.contains("start->delivered"), "{text}");
        assert!(text.contains("UNAVAILABLE=2"), "{text}");
        assert!(text.contains("50.0 MiB"), "{text}");
        assert!(text.contains("flat out"), "{text}");
    }

    #[test]
    fn comparison_reports_the_fraction_of_raw() {
        let fleet = sample_report();
        let mut raw = sample_report();
        raw.mode = "raw-mqtt";
        raw.completed = 400;
        let m = compare_json(&fleet, &raw);
        assert_eq!(m["raw_baseline_per_sec"], json!(800.0));
        assert_eq!(m["fraction_of_raw"], json!(0.25));
        assert_eq!(m["raw"]["mode"], json!("raw-mqtt"));
        assert_eq!(per_sec(10, 0.0), 0.0);
    }
}
