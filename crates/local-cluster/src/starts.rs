//! Starting executions: many at once with retries through a failover, or one at a time
//! during an outage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_contracts::pb;
use fleetcmd_domain::{ExecutionStatus, Target};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::fleet::{Fleet, timeout_of};
use crate::reads::try_get;
use crate::{Dispatcher, LONG_TIMEOUT_SECS, Registry, START_RETRY_BUDGET};

/// One execution to start.
#[derive(Debug, Clone)]
pub struct Job {
    pub index: usize,
    /// The index of its device in the fleet.
    pub device: usize,
    pub target: Target,
    pub token: String,
    pub timeout_secs: i64,
}

/// A started execution.
#[derive(Debug, Clone)]
pub struct Started {
    pub job: Job,
    pub execution_id: String,
    pub attempts: u32,
    pub took: Duration,
}

/// Retries seen while starting, by dispatcher and code.
#[derive(Debug, Default)]
pub struct StartStats {
    pub retries: BTreeMap<(usize, String), u32>,
}

/// Creates a static JSON command, retrying while the cluster settles (shard owners starting).
pub async fn create_command(registry: &mut Registry, command_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let request = pb::CreateCommandRequest {
            command_id: command_id.into(),
            payload: Some(pb::Payload {
                content: br#"{"op":"blink","times":3}"#.to_vec(),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        };
        match registry.create_command(request).await {
            Ok(_) => return,
            // An earlier attempt went through although its answer was lost.
            Err(s) if s.code() == Code::AlreadyExists && attempts > 1 => return,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("CreateCommand {command_id}: {:?} {}", s.code(), s.message()),
        }
    }
}

/// `per_device` jobs for each device, round by round (so the load spreads over the devices).
pub fn jobs(fleet: &Fleet, per_device: usize, first_index: usize, tag: &str) -> Vec<Job> {
    let mut out = Vec::new();
    for round in 0..per_device {
        for (i, d) in fleet.devices.iter().enumerate() {
            out.push(Job {
                index: first_index + out.len(),
                device: i,
                target: d.target.clone(),
                token: format!("{tag}-{i}-{round}"),
                timeout_secs: timeout_of(d.behavior),
            });
        }
    }
    out
}

/// Starts one execution, retrying UNAVAILABLE (and transport resets of a killed dispatcher)
/// with backoff and the same client token, on the next dispatcher each time.
async fn start_one(
    dispatchers: Vec<Dispatcher>,
    command_id: String,
    job: Job,
    stats: Arc<Mutex<StartStats>>,
) -> Result<Started, String> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        let d = (job.index + attempts as usize) % dispatchers.len();
        attempts += 1;
        let request = pb::StartCommandExecutionRequest {
            target: Some(job.target.clone().into()),
            command_id: command_id.clone(),
            execution_timeout_seconds: job.timeout_secs,
            client_token: job.token.clone(),
            ..Default::default()
        };
        let mut client = dispatchers[d].clone();
        match client.start_command_execution(request).await {
            Ok(r) => {
                return Ok(Started {
                    job,
                    execution_id: r.into_inner().execution_id,
                    attempts,
                    took: started.elapsed(),
                });
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                *stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retries
                    .entry((d, format!("{:?}", s.code())))
                    .or_default() += 1;
                if started.elapsed() > START_RETRY_BUDGET {
                    return Err(format!(
                        "start {} still failing after {attempts} attempts: {:?} {}",
                        job.token,
                        s.code(),
                        s.message()
                    ));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(s) => {
                return Err(format!(
                    "start {}: {:?} {}",
                    job.token,
                    s.code(),
                    s.message()
                ));
            }
        }
    }
}

/// Starts every job with `concurrency` in flight; `acks` counts the acknowledged starts.
/// Returns the started executions and the errors that were not retried away.
pub fn spawn_starts(
    dispatchers: Vec<Dispatcher>,
    command_id: &str,
    jobs: Vec<Job>,
    concurrency: usize,
    acks: watch::Sender<usize>,
    stats: Arc<Mutex<StartStats>>,
) -> JoinHandle<(Vec<Started>, Vec<String>)> {
    let command_id = command_id.to_string();
    tokio::spawn(async move {
        // After the first failure the remaining jobs are skipped, so a stuck cluster fails
        // the test within one retry budget instead of one budget per job.
        let failed = Arc::new(AtomicBool::new(false));
        let mut results = futures::stream::iter(jobs)
            .map(|job| {
                let failed = failed.clone();
                let run = start_one(dispatchers.clone(), command_id.clone(), job, stats.clone());
                async move {
                    if failed.load(Ordering::Relaxed) {
                        return Err(String::from("skipped after an earlier failure"));
                    }
                    let r = run.await;
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .buffer_unordered(concurrency);
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        while let Some(r) = results.next().await {
            match r {
                Ok(s) => {
                    ok.push(s);
                    acks.send_modify(|n| *n += 1);
                }
                Err(e) => errors.push(e),
            }
        }
        (ok, errors)
    })
}

/// Starts every job and fails the test on any error that was not retried away.
pub async fn start_all(
    dispatchers: Vec<Dispatcher>,
    command_id: &str,
    jobs: Vec<Job>,
    concurrency: usize,
) -> Vec<Started> {
    let (acks, _) = watch::channel(0);
    let stats = Arc::new(Mutex::new(StartStats::default()));
    let (ok, errors) = spawn_starts(dispatchers, command_id, jobs, concurrency, acks, stats)
        .await
        .expect("starter task");
    assert!(
        errors.is_empty(),
        "{} start(s) failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    ok
}

/// One StartCommandExecution attempt (long timeout), timed.
pub async fn try_start(
    d: &mut Dispatcher,
    command_id: &str,
    target: &Target,
    token: &str,
) -> (Result<String, tonic::Status>, Duration) {
    let t = Instant::now();
    let r = d
        .start_command_execution(pb::StartCommandExecutionRequest {
            target: Some(target.clone().into()),
            command_id: command_id.into(),
            execution_timeout_seconds: LONG_TIMEOUT_SECS,
            client_token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().execution_id);
    (r, t.elapsed())
}

/// Starts an execution on a succeeding device (retrying UNAVAILABLE for up to 60 s) and
/// waits until it is SUCCEEDED.
pub async fn start_and_settle(
    d: &mut Dispatcher,
    r: &mut Registry,
    command_id: &str,
    target: &Target,
    token: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        match try_start(d, command_id, target, token).await.0 {
            Ok(id) => break id,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("start {token}: {:?} {}", s.code(), s.message()),
        }
    };
    loop {
        if let (Ok(e), _) = try_get(r, &id).await
            && e.status == status_to_pb(ExecutionStatus::Succeeded)
        {
            return id;
        }
        assert!(Instant::now() < deadline, "{id} did not succeed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With an engine down, a start answers UNAVAILABLE within [`crate::OUTAGE_ANSWER_WITHIN`].
pub async fn start_is_unavailable(
    scenario: &str,
    engine: &str,
    dispatcher: &mut Dispatcher,
    command_id: &str,
    target: &Target,
    token: &str,
) {
    let (start, took) = try_start(dispatcher, command_id, target, token).await;
    println!(
        "[{scenario}] Start with {engine} down: {:?} after {:.1} s",
        start
            .as_ref()
            .map_err(|s| (s.code(), s.message().to_string())),
        took.as_secs_f64()
    );
    assert_eq!(
        start.as_ref().err().map(tonic::Status::code),
        Some(Code::Unavailable),
        "Start with {engine} down: {start:?}"
    );
    assert!(
        took < crate::OUTAGE_ANSWER_WITHIN,
        "Start with {engine} down answered after {took:?}"
    );
}
