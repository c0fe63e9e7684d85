//! Given/when/then tests of the rollout rules, on explicit times (no clock). [`Sim`] plays
//! the owner: it decides inputs, plans, appends every event to its log with the time it was
//! made at, and reports launches and settles back.

use super::*;
use crate::error::Rejection;
use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{ExecutionStatus, TimestampMs};

mod abort;
mod lifecycle;
mod rate;
mod retry;
mod schedule;
mod snapshot;

/// 2025-01-06 00:00 UTC, a Monday.
const T0: TimestampMs = 1_736_121_600_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60_000;

fn things(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target::thing(format!("dev-{i}")).unwrap())
        .collect()
}

fn spec(targets: TargetSelector, per_minute: u32) -> RolloutSpec {
    RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        targets,
        Rate::Fixed {
            max_per_minute: per_minute,
        },
    )
}

fn list(n: usize, per_minute: u32) -> RolloutSpec {
    spec(TargetSelector::List(things(n)), per_minute)
}

fn group(per_minute: u32) -> RolloutSpec {
    spec(TargetSelector::Group("lab".into()), per_minute)
}

/// Retry `number_of_retries` times on failures of `failure_type`.
fn retry(failure_type: RetryFailureType, number_of_retries: u32) -> RetryCriterion {
    RetryCriterion {
        failure_type,
        number_of_retries,
    }
}

/// A rollout to `n` things at 60,000 a minute that retries failures of `failure_type`
/// `number_of_retries` times, started at [`T0`].
fn retrying_list(n: usize, failure_type: RetryFailureType, number_of_retries: u32) -> Sim {
    let mut s = list(n, 60_000);
    s.retries = vec![retry(failure_type, number_of_retries)];
    Sim::start(s, T0)
}

fn launching(plan: &Plan) -> Vec<(u32, u32)> {
    plan.launches()
}

fn has(plan: &Plan, want: &RolloutEvent) -> bool {
    plan.events.iter().any(|e| e == want)
}

struct Sim {
    state: Option<Rollout>,
    log: Vec<(RolloutEvent, TimestampMs)>,
    now: TimestampMs,
    executions: u64,
    /// Every launch confirmed: (time, target index, attempt, execution id).
    launches: Vec<(TimestampMs, u32, u32, ExecutionId)>,
}

impl Sim {
    /// Given a rollout started at `now` with `spec`.
    fn start(spec: RolloutSpec, now: TimestampMs) -> Sim {
        let mut sim = Sim {
            state: None,
            log: Vec::new(),
            now,
            executions: 0,
            launches: Vec::new(),
        };
        let input = RolloutInput::Start {
            rollout_id: RolloutId::parse("ro-1").unwrap(),
            spec: Box::new(spec),
        };
        sim.input(input).expect("valid spec");
        sim
    }

    fn r(&self) -> &Rollout {
        self.state.as_ref().expect("started")
    }

    fn append(&mut self, events: &[RolloutEvent]) {
        for e in events {
            apply(&mut self.state, e, self.now);
            self.log.push((e.clone(), self.now));
        }
    }

    /// When `input` is decided (and its events appended).
    fn input(&mut self, input: RolloutInput) -> Result<Vec<RolloutEvent>, Rejection> {
        let events = decide(self.state.as_ref(), &input, self.now)?;
        self.append(&events);
        Ok(events)
    }

    fn add(&mut self, targets: Vec<Target>) {
        self.input(RolloutInput::AddTargets { targets }).unwrap();
    }

    /// When the owner plans at `now` and appends the plan's events.
    fn plan(&mut self) -> Plan {
        let plan = plan(self.r(), self.now);
        if let Some(w) = plan.wake_at {
            assert!(w > self.now, "wake_at {w} is not after now {}", self.now);
        }
        self.append(&plan.events);
        plan
    }

    /// Plans, then confirms every launch of the plan; returns the plan and the new ids.
    fn step(&mut self) -> (Plan, Vec<ExecutionId>) {
        let plan = self.plan();
        let mut ids = Vec::new();
        for (index, attempt) in launching(&plan) {
            ids.push(self.launched(index, attempt));
        }
        (plan, ids)
    }

    fn launched(&mut self, index: u32, attempt: u32) -> ExecutionId {
        self.executions += 1;
        let id = ExecutionId::parse(format!("e{}", self.executions)).unwrap();
        let target = self.r().target(index).unwrap().target.clone();
        self.input(RolloutInput::Launched {
            target,
            attempt,
            execution_id: id.clone(),
        })
        .unwrap();
        self.launches.push((self.now, index, attempt, id.clone()));
        id
    }

    fn settle(&mut self, id: &ExecutionId, status: ExecutionStatus) -> Vec<RolloutEvent> {
        self.input(RolloutInput::Settled {
            execution_id: id.clone(),
            status,
        })
        .unwrap()
    }

    /// Runs the owner loop until `until`: plan, launch, settle each launch at once with
    /// `outcome`, sleep until `wake_at`.
    fn run(&mut self, until: TimestampMs, outcome: ExecutionStatus) {
        loop {
            let (plan, ids) = self.step();
            for id in &ids {
                self.settle(id, outcome);
            }
            match plan.wake_at {
                Some(w) if w < until => self.now = w,
                _ if !ids.is_empty() => {}
                _ => break,
            }
        }
    }

    /// The state a restarted owner folds from the log.
    fn rebuild(&self) -> Option<Rollout> {
        let mut state = None;
        for (e, at) in &self.log {
            apply(&mut state, e, *at);
        }
        state
    }
}
