//! Reading executions back — listing, Get, a Watch stream — and the checks on what was read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_contracts::pb;
use fleetcmd_domain::ExecutionStatus;
use fleetcmd_domain::paging::{RepeatedToken, collect_pages, non_empty};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::Registry;
use crate::fleet::Fleet;
use crate::starts::Started;

/// The expected final status (and terminal flag) of each execution, by id.
pub type Expected = HashMap<String, (ExecutionStatus, bool)>;

/// A listing failed, or its pages did not end.
#[derive(Debug)]
pub enum ListError {
    Call(tonic::Status),
    Paging(RepeatedToken),
}

impl From<tonic::Status> for ListError {
    fn from(s: tonic::Status) -> Self {
        Self::Call(s)
    }
}

impl From<RepeatedToken> for ListError {
    fn from(e: RepeatedToken) -> Self {
        Self::Paging(e)
    }
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Call(s) => write!(f, "{:?} {}", s.code(), s.message()),
            Self::Paging(e) => write!(f, "{e}"),
        }
    }
}

/// Every execution of `command_id`, 100 a page.
pub async fn list_all(
    registry: &Registry,
    command_id: &str,
) -> Result<Vec<pb::CommandExecutionSummary>, ListError> {
    collect_pages(None, |token| {
        let mut registry = registry.clone();
        let request = pb::ListCommandExecutionsRequest {
            max_results: 100,
            next_token: token.unwrap_or_default(),
            command_id: command_id.into(),
            ..Default::default()
        };
        async move {
            let page = registry
                .list_command_executions(request)
                .await?
                .into_inner();
            Ok::<_, ListError>((page.command_executions, non_empty(page.next_token)))
        }
    })
    .await
}

/// Polls the listing until every execution in `expected` shows its expected status (or
/// `within` passed); returns the last listing by id.
pub async fn wait_statuses(
    registry: &Registry,
    command_id: &str,
    expected: &Expected,
    within: Duration,
) -> HashMap<String, pb::CommandExecutionSummary> {
    let deadline = Instant::now() + within;
    loop {
        let listed: HashMap<String, pb::CommandExecutionSummary> =
            match list_all(registry, command_id).await {
                Ok(items) => items
                    .into_iter()
                    .map(|s| (s.execution_id.clone(), s))
                    .collect(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "listing keeps failing: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
        let done = expected.iter().all(|(id, (status, _))| {
            listed
                .get(id)
                .is_some_and(|s| s.status == status_to_pb(*status))
        });
        if done || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads every execution with GetCommandExecution (include_result), `concurrency` at a time.
pub async fn get_all(
    registry: &Registry,
    ids: Vec<String>,
    concurrency: usize,
) -> HashMap<String, Result<pb::CommandExecution, String>> {
    futures::stream::iter(ids)
        .map(|id| {
            let mut r = registry.clone();
            async move {
                let got = r
                    .get_command_execution(pb::GetCommandExecutionRequest {
                        execution_id: id.clone(),
                        include_result: true,
                        ..Default::default()
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| format!("{:?} {}", s.code(), s.message()));
                (id, got)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// One GetCommandExecution, timed.
pub async fn try_get(
    r: &mut Registry,
    id: &str,
) -> (Result<pb::CommandExecution, tonic::Status>, Duration) {
    let t = Instant::now();
    let got = r
        .get_command_execution(pb::GetCommandExecutionRequest {
            execution_id: id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner);
    (got, t.elapsed())
}

/// The name of a status number (`?<n>` when unknown).
pub fn status_name(status: i32) -> String {
    pb::ExecutionStatus::try_from(status)
        .map_or_else(|_| format!("?{status}"), |s| s.as_str_name().to_string())
}

/// Asserts that every started execution is listed in the status its device dictates;
/// returns what was expected.
pub fn assert_expected_statuses(
    what: &str,
    started: &[Started],
    fleet: &Fleet,
    listed: &HashMap<String, pb::CommandExecutionSummary>,
) -> Expected {
    let expected = fleet.expected(started);
    let mut wrong = Vec::new();
    for s in started {
        let (status, _) = expected[&s.execution_id];
        match listed.get(&s.execution_id) {
            Some(l) if l.status == status_to_pb(status) => {}
            Some(l) => wrong.push(format!(
                "{} ({}, {:?}): {} instead of {}",
                s.execution_id,
                s.job.target.id,
                fleet.devices[s.job.device].behavior,
                status_name(l.status),
                status.as_str()
            )),
            None => wrong.push(format!(
                "{} ({}): not listed",
                s.execution_id, s.job.target.id
            )),
        }
    }
    if !wrong.is_empty() {
        let seen = fleet.seen();
        let details: Vec<String> = wrong
            .iter()
            .take(10)
            .map(|w| {
                let id = w.split(' ').next().unwrap_or_default();
                format!("{w}; devices saw {:?}", seen.execs.get(id))
            })
            .collect();
        panic!(
            "{what}: {} of {} executions not in their expected status:\n{}",
            wrong.len(),
            started.len(),
            details.join("\n")
        );
    }
    expected
}

/// Where a scenario's executions settle: those of `command_id`, listed through `registry`,
/// each in the status its device on `fleet` gives it, within `within`. A scenario builds
/// one and checks it after each phase.
pub struct Settle<'a> {
    registry: &'a Registry,
    command_id: &'a str,
    fleet: &'a Fleet,
    within: Duration,
}

impl<'a> Settle<'a> {
    pub fn new(
        registry: &'a Registry,
        command_id: &'a str,
        fleet: &'a Fleet,
        within: Duration,
    ) -> Self {
        Self {
            registry,
            command_id,
            fleet,
            within,
        }
    }

    /// Waits (up to `within`) until every started execution is listed in its expected
    /// status, and asserts that; returns the listing by id.
    pub async fn all(
        &self,
        what: &str,
        started: &[Started],
    ) -> HashMap<String, pb::CommandExecutionSummary> {
        let expected = self.fleet.expected(started);
        let listed = wait_statuses(self.registry, self.command_id, &expected, self.within).await;
        assert_expected_statuses(what, started, self.fleet, &listed);
        listed
    }

    /// [`all`](Self::all), and asserts that the listing holds exactly the started executions.
    pub async fn exactly(
        &self,
        what: &str,
        started: &[Started],
    ) -> HashMap<String, pb::CommandExecutionSummary> {
        let listed = self.all(what, started).await;
        assert_eq!(
            listed.len(),
            started.len(),
            "{what}: exactly the started executions are listed"
        );
        listed
    }
}

/// Reading the SUCCEEDED execution `id` gives the right answer or UNAVAILABLE, never a
/// wrong one; within `within` when given.
pub async fn get_is_right_or_unavailable(
    registry: &mut Registry,
    id: &str,
    what: &str,
    within: Option<Duration>,
) {
    let (get, took) = try_get(registry, id).await;
    println!(
        "{what}: {:?} after {:.1} s",
        get.as_ref()
            .map(|e| status_name(e.status))
            .map_err(tonic::Status::code),
        took.as_secs_f64()
    );
    match &get {
        Ok(e) => assert_eq!(e.status, status_to_pb(ExecutionStatus::Succeeded), "{what}"),
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{what}: {s:?}"),
    }
    if let Some(within) = within {
        assert!(took < within, "{what} answered after {took:?}");
    }
}

/// A WatchCommandExecutions stream drained into memory.
pub struct Watcher {
    events: Arc<Mutex<Vec<pb::CommandExecutionEvent>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Watches every status change of `command_id`.
    pub async fn open(registry: &mut Registry, command_id: &str) -> Self {
        let stream = registry
            .watch_command_executions(pb::WatchCommandExecutionsRequest {
                command_id: command_id.into(),
                ..Default::default()
            })
            .await
            .expect("open the Watch stream")
            .into_inner();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (e, x) = (events.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut stream = stream;
            let why = loop {
                match stream.next().await {
                    Some(Ok(ev)) => e.lock().unwrap_or_else(|p| p.into_inner()).push(ev),
                    Some(Err(s)) => break format!("{:?} {}", s.code(), s.message()),
                    None => break "the stream ended".into(),
                }
            };
            *x.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        Self {
            events,
            ended,
            task,
        }
    }

    /// The last watched event of each execution, in stream order.
    pub fn last_by_execution(&self) -> HashMap<String, pb::CommandExecutionEvent> {
        let mut out = HashMap::new();
        for ev in self.events.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.insert(ev.execution_id.clone(), ev.clone());
        }
        out
    }

    /// How many events arrived.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the stream ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (up to `within`) until the last watched event of every started execution has
    /// the status and terminal flag it was read with; asserts that, and that the stream is
    /// still open.
    pub async fn assert_ends_as_read(
        &self,
        started: &[Started],
        reads: &HashMap<String, Result<pb::CommandExecution, String>>,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        let mismatch = loop {
            let last = self.last_by_execution();
            let mismatch: Vec<String> = started
                .iter()
                .filter_map(|s| {
                    let read = reads[&s.execution_id].as_ref().ok()?;
                    match last.get(&s.execution_id) {
                        Some(ev) if ev.status == read.status && ev.terminal == read.terminal => {
                            None
                        }
                        Some(ev) => Some(format!(
                            "{}: watched {} (terminal {}), read {}",
                            s.execution_id,
                            status_name(ev.status),
                            ev.terminal,
                            status_name(read.status)
                        )),
                        None => Some(format!("{}: never watched", s.execution_id)),
                    }
                })
                .collect();
            if mismatch.is_empty() || Instant::now() > deadline {
                break mismatch;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ended = self.ended();
        assert!(ended.is_none(), "the Watch stream ended early: {ended:?}");
        assert!(
            mismatch.is_empty(),
            "{} executions whose last watched status is not the read one, e.g.:\n{}",
            mismatch.len(),
            mismatch[..mismatch.len().min(10)].join("\n")
        );
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
