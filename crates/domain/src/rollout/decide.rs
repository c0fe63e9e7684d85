//! `decide`: turns a rollout input into events or a rejection. Inputs the owner may deliver
//! more than once (a repeated launch or settle report, a repeated cancel) produce no events
//! the second time, so at-least-once delivery is safe.

use std::collections::HashSet;

use super::RolloutId;
use super::event::{RolloutEvent, RolloutInput};
use super::spec::{
    LIST_TARGETS_MAX, ROLLOUT_TARGETS_MAX, TargetSelection, TargetSelector, validate,
};
use super::state::{Rollout, RolloutStatus, Stopping, fingerprint};
use super::table::TargetState;
use crate::error::{Rejection, RejectionCode};
use crate::ids::{ExecutionId, Target};
use crate::model::{ExecutionStatus, TimestampMs};

fn reject(code: RejectionCode, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

fn start(
    state: Option<&Rollout>,
    rollout_id: &RolloutId,
    spec: &super::spec::RolloutSpec,
    now: TimestampMs,
) -> Result<Vec<RolloutEvent>, Rejection> {
    validate(spec)?;
    if let Some(r) = state {
        let same_token = spec.client_token.is_some() && spec.client_token == r.spec.client_token;
        return if same_token && fingerprint(spec) == r.spec_fingerprint {
            Ok(vec![])
        } else if same_token {
            Err(reject(
                RejectionCode::Conflict,
                format!("client token reused for rollout {rollout_id} with a different spec"),
            ))
        } else {
            Err(reject(
                RejectionCode::Conflict,
                format!("rollout {rollout_id} already exists"),
            ))
        };
    }
    if let Some(end) = spec.schedule.as_ref().and_then(|s| s.end_time)
        && end <= now
    {
        return Err(crate::error::ValidationError::new(
            "schedule.end_time",
            format!("is in the past ({end} <= now {now})"),
        )
        .into());
    }
    Ok(vec![RolloutEvent::RolloutStarted {
        rollout_id: rollout_id.clone(),
        spec: Box::new(spec.clone()),
        created_at: now,
    }])
}

fn cancel(r: &Rollout, force: bool) -> Result<Vec<RolloutEvent>, Rejection> {
    if r.status.is_terminal() {
        // Escalating to a force cancel still matters while executions are live.
        let live = r.live.values().any(|l| !l.cancel_sent);
        if force && !r.cancel_live && live {
            return Ok(vec![RolloutEvent::CancelRequested { force: true }]);
        }
        if r.status == RolloutStatus::Canceled {
            return Ok(vec![]);
        }
        return Err(reject(
            RejectionCode::FailedPrecondition,
            format!(
                "rollout {} already ended {:?}; only a running rollout can be canceled",
                r.rollout_id, r.status
            ),
        ));
    }
    if r.stopping == Some(Stopping::Cancel) && !force {
        return Ok(vec![]);
    }
    let mut events = vec![RolloutEvent::CancelRequested { force }];
    if force || r.live.is_empty() {
        events.push(RolloutEvent::Canceled);
    }
    Ok(events)
}

fn add_targets(r: &Rollout, targets: &[Target]) -> Result<Vec<RolloutEvent>, Rejection> {
    if matches!(r.spec.targets, TargetSelector::List(_)) {
        return Err(reject(
            RejectionCode::FailedPrecondition,
            "the targets of a list rollout are fixed by its spec",
        ));
    }
    if r.spec.target_selection == TargetSelection::Snapshot && r.targets_resolved {
        return Err(reject(
            RejectionCode::FailedPrecondition,
            "the target list of this SNAPSHOT rollout is already resolved",
        ));
    }
    if r.status.is_terminal() {
        // Resolution racing the end of the rollout: nothing left to do with them.
        return Ok(vec![]);
    }
    if targets.len() > LIST_TARGETS_MAX {
        return Err(reject(
            RejectionCode::InvalidRequest,
            format!(
                "at most {LIST_TARGETS_MAX} targets per chunk, got {}",
                targets.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(targets.len());
    let mut new = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        Target::new(t.kind, t.id.clone()).map_err(|e| {
            let mut r = Rejection::from(e);
            r.field = Some(format!("targets[{i}]"));
            r
        })?;
        if r.targets.find(t).is_none() && seen.insert(t) {
            new.push(t.clone());
        }
    }
    if r.targets.len() + new.len() > ROLLOUT_TARGETS_MAX {
        return Err(reject(
            RejectionCode::QuotaExceeded,
            format!("a rollout may hold at most {ROLLOUT_TARGETS_MAX} targets"),
        ));
    }
    Ok(if new.is_empty() {
        vec![]
    } else {
        vec![RolloutEvent::TargetsAdded { targets: new }]
    })
}

/// The live attempt `attempt` of `target`, or why there is none. `Ok(None)`: a late
/// duplicate report of an attempt that already ended.
fn live_attempt<'a>(
    r: &'a Rollout,
    target: &Target,
    attempt: u32,
) -> Result<Option<(u32, Option<&'a ExecutionId>)>, Rejection> {
    let Some(index) = r.targets.find(target) else {
        return Err(reject(
            RejectionCode::ResourceNotFound,
            format!("{target} is not a target of rollout {}", r.rollout_id),
        ));
    };
    match r.live.get(&index) {
        Some(l) if u32::from(l.attempt) == attempt => Ok(Some((index, l.execution_id.as_ref()))),
        _ if u32::from(r.targets.entries[index as usize].attempt) >= attempt && attempt > 0 => {
            Ok(None)
        }
        _ => Err(reject(
            RejectionCode::FailedPrecondition,
            format!("no launch intent for attempt {attempt} on {target}"),
        )),
    }
}

/// Decides what an input does to a rollout (`None`: not started). `now` is the time the
/// input is handled; it becomes `created_at` of a start.
pub fn decide(
    state: Option<&Rollout>,
    input: &RolloutInput,
    now: TimestampMs,
) -> Result<Vec<RolloutEvent>, Rejection> {
    if let RolloutInput::Start { rollout_id, spec } = input {
        return start(state, rollout_id, spec, now);
    }
    let Some(r) = state else {
        return Err(reject(RejectionCode::ResourceNotFound, "no such rollout"));
    };
    match input {
        RolloutInput::Start { .. } => unreachable!("handled above"),
        RolloutInput::Cancel { force } => cancel(r, *force),
        RolloutInput::AddTargets { targets } => add_targets(r, targets),
        RolloutInput::TargetsResolved => Ok(if r.targets_resolved {
            vec![]
        } else {
            vec![RolloutEvent::TargetsResolved]
        }),
        RolloutInput::Launched {
            target,
            attempt,
            execution_id,
        } => match live_attempt(r, target, *attempt)? {
            None => Ok(vec![]),
            Some((_, Some(known))) if known == execution_id => Ok(vec![]),
            Some((_, Some(known))) => Err(reject(
                RejectionCode::Conflict,
                format!(
                    "attempt {attempt} on {target} was launched as {known}, not {execution_id}"
                ),
            )),
            Some((index, None)) => {
                if r.by_execution.contains_key(execution_id) {
                    return Err(reject(
                        RejectionCode::Conflict,
                        format!("execution {execution_id} already belongs to another target"),
                    ));
                }
                Ok(vec![RolloutEvent::AttemptLaunched {
                    target_index: index,
                    target: target.clone(),
                    attempt: *attempt,
                    execution_id: execution_id.clone(),
                }])
            }
        },
        RolloutInput::LaunchRefused {
            target,
            attempt,
            code,
        } => match live_attempt(r, target, *attempt)? {
            Some((index, None)) => Ok(vec![RolloutEvent::AttemptRefused {
                target_index: index,
                target: target.clone(),
                attempt: *attempt,
                code: *code,
            }]),
            Some((_, Some(known))) => Err(reject(
                RejectionCode::FailedPrecondition,
                format!("attempt {attempt} on {target} was already launched as {known}"),
            )),
            None => Ok(vec![]),
        },
        RolloutInput::Settled {
            execution_id,
            status,
        } => {
            if matches!(
                status,
                ExecutionStatus::Created | ExecutionStatus::InProgress
            ) {
                return Err(reject(
                    RejectionCode::InvalidRequest,
                    format!("{} does not settle an execution", status.as_str()),
                ));
            }
            // Unknown: already settled (a repeated report) or never this rollout's.
            let Some(&index) = r.by_execution.get(execution_id) else {
                return Ok(vec![]);
            };
            let e = &r.targets.entries[index as usize];
            debug_assert_eq!(e.state, TargetState::InFlight);
            Ok(vec![RolloutEvent::AttemptSettled {
                target_index: index,
                target: e.target.clone(),
                attempt: u32::from(e.attempt),
                execution_id: execution_id.clone(),
                status: *status,
            }])
        }
    }
}
