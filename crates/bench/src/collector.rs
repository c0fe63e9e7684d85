//! Joins what the load generator, the devices and the status watcher saw of each execution
//! (they learn of it in any order: a device may get its request before the start RPC has
//! returned) and turns it into latencies. One task owns the table; everyone else sends
//! [`Note`]s. An execution leaves the table once complete, so memory stays bounded however
//! long the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::stats::{Latency, Report};

/// Something observed about one execution (or raw request), stamped when it happened.
#[derive(Debug)]
pub enum Note {
    /// The start call was sent at `at` and answered after `rpc` (raw mode: published).
    Started {
        id: String,
        at: Instant,
        rpc: Option<Duration>,
    },
    /// The device received the request.
    Delivered { id: String, at: Instant },
    /// The end was observed (fleetcmd: a terminal status; raw: the response).
    Ended {
        id: String,
        at: Instant,
        status: &'static str,
    },
    /// An execution failed (e.g. its start call); `kind` is the error bucket. Counts as
    /// finished.
    Failed { kind: String },
    /// Something went wrong that is not the end of an execution (a cloud TIMED_OUT, a
    /// dropped connection): only counted in the error bucket `kind`.
    Incident { kind: String },
}

/// Live counts, for the progress line and for knowing when the run is over.
#[derive(Debug, Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub delivered: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    /// Executions that reached an end, good or bad.
    pub fn finished(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// The counts as they are now, for a progress line.
    pub fn tally(&self) -> Tally {
        Tally {
            started: self.started.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// [`Counters`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub started: u64,
    pub delivered: u64,
    pub completed: u64,
    pub failed: u64,
}

/// What the collector measured.
#[derive(Debug, Default)]
pub struct Collected {
    pub start: Latency,
    pub delivered: Latency,
    pub terminal: Latency,
    pub errors: BTreeMap<String, u64>,
    pub started: u64,
    pub completed: u64,
    pub first_start: Option<Instant>,
    pub last_end: Option<Instant>,
    /// Ids of the first completed executions (for checking them with Get afterwards).
    pub sample: Vec<String>,
}

impl Collected {
    /// Puts what every bench mode reports alike into `report`: the counts, the span from
    /// the first start to the last end, the delivery and end latencies and the errors.
    pub fn fill(&self, report: &mut Report) {
        report.started = self.started;
        report.completed = self.completed;
        report.elapsed_secs = match (self.first_start, self.last_end) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        report.delivered = self.delivered.summary();
        report.terminal = self.terminal.summary();
        report.errors = self.errors.clone();
    }
}

#[derive(Debug, Default)]
struct Entry {
    start: Option<Instant>,
    delivered: Option<Instant>,
    end: Option<(Instant, &'static str)>,
}

/// The collector's settings.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Wait for an end (false for silent devices: delivery completes an execution).
    pub end: bool,
    /// The status a good end has; others are counted as errors `status_<STATUS>`.
    pub good_status: &'static str,
    /// How many completed ids to keep for verification.
    pub sample: usize,
}

/// The table and the measurements; pure (no I/O) so it can be tested directly.
#[derive(Debug)]
pub struct Table {
    expect: Expect,
    entries: HashMap<String, Entry>,
    out: Collected,
    counters: Arc<Counters>,
}

impl Table {
    pub fn new(expect: Expect, counters: Arc<Counters>) -> Self {
        Self {
            expect,
            entries: HashMap::new(),
            out: Collected::default(),
            counters,
        }
    }

    fn error(&mut self, kind: String) {
        *self.out.errors.entry(kind).or_default() += 1;
    }

    pub fn note(&mut self, note: Note) {
        let (id, entry) = match note {
            Note::Failed { kind } => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.error(kind);
                return;
            }
            Note::Incident { kind } => {
                self.error(kind);
                return;
            }
            Note::Started { id, at, rpc } => {
                self.out.started += 1;
                self.counters.started.fetch_add(1, Ordering::Relaxed);
                if let Some(rpc) = rpc {
                    self.out.start.record(rpc);
                }
                if self.out.first_start.is_none_or(|f| at < f) {
                    self.out.first_start = Some(at);
                }
                let entry = self.entries.entry(id.clone()).or_default();
                entry.start = Some(at);
                (id, entry)
            }
            Note::Delivered { id, at } => {
                let entry = self.entries.entry(id.clone()).or_default();
                if entry.delivered.is_some() {
                    // A QoS 1 redelivery: the first arrival counts.
                    return;
                }
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                entry.delivered = Some(at);
                (id, entry)
            }
            Note::Ended { id, at, status } => {
                let entry = self.entries.entry(id.clone()).or_default();
                entry.end.get_or_insert((at, status));
                (id, entry)
            }
        };
        let Some(start) = entry.start else { return };
        let complete = entry.delivered.is_some() && (entry.end.is_some() || !self.expect.end);
        if !complete {
            return;
        }
        let (delivered, end) = (entry.delivered, entry.end);
        self.entries.remove(&id);
        if let Some(d) = delivered {
            self.out
                .delivered
                .record(d.saturating_duration_since(start));
        }
        let finished_at = match end {
            Some((at, status)) => {
                self.out
                    .terminal
                    .record(at.saturating_duration_since(start));
                if status != self.expect.good_status {
                    self.error(format!("status_{status}"));
                }
                at
            }
            None => delivered.unwrap_or(start),
        };
        if self.out.last_end.is_none_or(|l| finished_at > l) {
            self.out.last_end = Some(finished_at);
        }
        self.out.completed += 1;
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if self.out.sample.len() < self.expect.sample {
            self.out.sample.push(id);
        }
    }

    /// Ends the run: executions still incomplete are counted by what they lack.
    pub fn finish(mut self) -> Collected {
        let mut lacking: BTreeMap<String, u64> = BTreeMap::new();
        for entry in self.entries.values() {
            let kind = match (entry.start, entry.delivered, entry.end) {
                // Seen by a device or the watcher but never started by us: a stray.
                (None, _, _) => "stray_message",
                (Some(_), None, _) => "not_delivered",
                (Some(_), Some(_), None) => "not_terminal",
                (Some(_), Some(_), Some(_)) => "incomplete",
            };
            *lacking.entry(kind.to_string()).or_default() += 1;
        }
        for (k, v) in lacking {
            *self.out.errors.entry(k).or_default() += v;
        }
        self.out
    }
}

/// The collector task's handle.
pub struct Collector {
    pub notes: mpsc::Sender<Note>,
    pub counters: Arc<Counters>,
    finish: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Collected>,
}

impl Collector {
    pub fn spawn(expect: Expect) -> Self {
        let counters = Arc::new(Counters::default());
        let (notes, mut rx) = mpsc::channel::<Note>(65_536);
        let (finish, mut finish_rx) = oneshot::channel::<()>();
        let mut table = Table::new(expect, counters.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    note = rx.recv() => match note {
                        Some(n) => table.note(n),
                        None => break,
                    },
                    _ = &mut finish_rx => {
                        // Take what is already queued, then stop.
                        while let Ok(n) = rx.try_recv() {
                            table.note(n);
                        }
                        break;
                    }
                }
            }
            table.finish()
        });
        Self {
            notes,
            counters,
            finish,
            task,
        }
    }

    /// Stops collecting and returns the measurements.
    pub async fn finish(self) -> anyhow::Result<Collected> {
        let _ = self.finish.send(());
        Ok(self.task.await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(end: bool) -> Table {
        Table::new(
            Expect {
                end,
                good_status: "SUCCEEDED",
                sample: 2,
            },
            Arc::new(Counters::default()),
        )
    }

    // One line per note, so that each test reads as the sequence of events it feeds in.
    fn started(id: &str, at: Instant, rpc: Option<Duration>) -> Note {
        let id = id.into();
        Note::Started { id, at, rpc }
    }

    fn delivered(id: &str, at: Instant) -> Note {
        let id = id.into();
        Note::Delivered { id, at }
    }

    fn ended(id: &str, at: Instant, status: &'static str) -> Note {
        let id = id.into();
        Note::Ended { id, at, status }
    }

    #[test]
    fn joins_notes_in_any_order() {
        let mut t = table(true);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Delivered before the start RPC returned; ended before we learnt the id.
        t.note(delivered("a", ms(2)));
        t.note(ended("a", ms(9), "SUCCEEDED"));
        t.note(started("a", t0, Some(Duration::from_millis(4))));
        t.note(started("b", ms(1), Some(Duration::from_millis(3))));
        t.note(delivered("b", ms(3)));
        t.note(delivered("b", ms(30))); // redelivery: ignored
        assert_eq!(t.counters.completed.load(Ordering::Relaxed), 1);
        t.note(ended("b", ms(11), "FAILED"));
        t.note(started("c", ms(1), None));
        t.note(Note::Failed {
            kind: "UNAVAILABLE".into(),
        });
        assert_eq!(t.counters.finished(), 3);
        let out = t.finish();
        assert_eq!(out.completed, 2);
        assert_eq!(out.started, 3);
        assert_eq!(out.start.count(), 2);
        let d = out.delivered.summary().unwrap();
        assert!((d.max_ms - 2.0).abs() < 0.01, "{d:?}");
        let e = out.terminal.summary().unwrap();
        assert!((e.max_ms - 10.0).abs() < 0.02, "{e:?}");
        assert_eq!(out.first_start, Some(t0));
        assert_eq!(out.last_end, Some(ms(11)));
        assert_eq!(out.sample, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(out.errors.get("status_FAILED"), Some(&1));
        assert_eq!(out.errors.get("UNAVAILABLE"), Some(&1));
        assert_eq!(out.errors.get("not_delivered"), Some(&1));
    }

    #[test]
    fn without_an_expected_end_delivery_completes() {
        let mut t = table(false);
        let t0 = Instant::now();
        t.note(started("s", t0, None));
        t.note(delivered("s", t0 + Duration::from_millis(1)));
        t.note(Note::Incident {
            kind: "status_TIMED_OUT".into(),
        });
        t.note(delivered("stray", t0));
        let out = t.finish();
        assert_eq!(out.completed, 1);
        assert!(out.terminal.summary().is_none());
        assert_eq!(out.errors.get("status_TIMED_OUT"), Some(&1));
        assert_eq!(out.errors.get("stray_message"), Some(&1));
    }
}
