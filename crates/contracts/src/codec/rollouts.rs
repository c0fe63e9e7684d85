//! Rollouts' events, as the log carries them. The spec travels as the public API's
//! `RolloutSpec` (one definition of its fields), and is checked again on the way back.

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::{ExecutionId, Target};
use fleetcmd_domain::protocol::ShardRequest;
use fleetcmd_domain::rollout::{
    AbortCriterion, Rollout, RolloutEvent, RolloutId, RolloutInput, RolloutSnapshot, RolloutStatus,
    SnapshotLive, SnapshotTarget, StopReason, TargetState,
};

use super::{CodecError, Result, rejection_code_from_pb, rejection_code_to_pb, required};
use crate::convert::{
    failure_type_from_pb, rollout_spec_from_pb, rollout_spec_from_pb_unchecked, rollout_spec_to_pb,
    status_from_pb, status_to_pb,
};
use crate::internal as ipb;
use crate::pb;

fn attempt_to_ipb(target_index: u32, target: &Target, attempt: u32) -> ipb::RolloutAttempt {
    ipb::RolloutAttempt {
        target_index,
        target: Some(target.into()),
        attempt,
    }
}

fn attempt_from_ipb(
    field: &'static str,
    a: Option<ipb::RolloutAttempt>,
) -> Result<(u32, Target, u32)> {
    let a = required(field, a)?;
    let target = Target::try_from(required(field, a.target)?)?;
    Ok((a.target_index, target, a.attempt))
}

fn criterion_from_pb(c: pb::AbortCriterion) -> Result<AbortCriterion> {
    Ok(AbortCriterion {
        failure_type: failure_type_from_pb(
            "rollout_aborted.criterion.failure_type",
            c.failure_type,
        )?,
        threshold_percentage: c.threshold_percentage,
        min_number_of_executed_things: c.min_number_of_executed_things,
    })
}

pub(super) fn event_to_pb(event: &RolloutEvent) -> ipb::event_envelope::Event {
    use ipb::event_envelope::Event as E;
    let mark = ipb::RolloutMark {};
    match event {
        RolloutEvent::RolloutStarted {
            rollout_id,
            spec,
            created_at,
        } => E::RolloutStarted(ipb::RolloutStarted {
            rollout_id: rollout_id.as_str().to_owned(),
            spec: Some(rollout_spec_to_pb(spec)),
            created_at_ms: *created_at,
            allowed_targets: spec
                .allowed_targets
                .clone()
                .map(|patterns| ipb::AllowedTargets { patterns }),
        }),
        RolloutEvent::TargetsAdded { targets } => {
            E::RolloutTargetsAdded(ipb::RolloutTargetsAdded {
                targets: targets.iter().map(pb::Target::from).collect(),
            })
        }
        RolloutEvent::TargetsResolved => E::RolloutTargetsResolved(mark),
        RolloutEvent::StartTimeReached => E::RolloutStartTimeReached(mark),
        RolloutEvent::AttemptLaunching {
            target_index,
            target,
            attempt,
        } => E::RolloutAttemptLaunching(attempt_to_ipb(*target_index, target, *attempt)),
        RolloutEvent::AttemptLaunched {
            target_index,
            target,
            attempt,
            execution_id,
        } => E::RolloutAttemptLaunched(ipb::RolloutAttemptLaunched {
            attempt: Some(attempt_to_ipb(*target_index, target, *attempt)),
            execution_id: execution_id.as_str().to_owned(),
        }),
        RolloutEvent::AttemptRefused {
            target_index,
            target,
            attempt,
            code,
        } => E::RolloutAttemptRefused(ipb::RolloutAttemptRefused {
            attempt: Some(attempt_to_ipb(*target_index, target, *attempt)),
            code: rejection_code_to_pb(*code) as i32,
        }),
        RolloutEvent::AttemptSettled {
            target_index,
            target,
            attempt,
            execution_id,
            status,
        } => E::RolloutAttemptSettled(ipb::RolloutAttemptSettled {
            attempt: Some(attempt_to_ipb(*target_index, target, *attempt)),
            execution_id: execution_id.as_str().to_owned(),
            status: status_to_pb(*status),
        }),
        RolloutEvent::RateIncreased { per_minute } => {
            E::RolloutRateIncreased(ipb::RolloutRateIncreased {
                per_minute: *per_minute,
            })
        }
        RolloutEvent::Aborted { criterion } => E::RolloutAborted(ipb::RolloutAborted {
            criterion: Some(criterion.into()),
        }),
        RolloutEvent::CancelRequested { force } => {
            E::RolloutCancelRequested(ipb::RolloutCancelRequested { force: *force })
        }
        RolloutEvent::ExecutionsCanceling { execution_ids } => {
            E::RolloutExecutionsCanceling(ipb::RolloutExecutionsCanceling {
                execution_ids: execution_ids
                    .iter()
                    .map(|id| id.as_str().to_owned())
                    .collect(),
            })
        }
        RolloutEvent::EndTimeReached => E::RolloutEndTimeReached(mark),
        RolloutEvent::Completed => E::RolloutCompleted(mark),
        RolloutEvent::Canceled => E::RolloutCanceled(mark),
    }
}

/// The rollout event an envelope's event holds.
pub(super) fn event_from_pb(event: ipb::event_envelope::Event) -> Result<RolloutEvent> {
    use ipb::event_envelope::Event as E;
    Ok(match event {
        E::RolloutStarted(s) => {
            let mut spec = rollout_spec_from_pb(
                "rollout_started.spec",
                required("rollout_started.spec", s.spec)?,
            )?;
            spec.allowed_targets = s.allowed_targets.map(|a| a.patterns);
            RolloutEvent::RolloutStarted {
                rollout_id: RolloutId::parse(s.rollout_id)?,
                spec: Box::new(spec),
                created_at: s.created_at_ms,
            }
        }
        E::RolloutTargetsAdded(t) => RolloutEvent::TargetsAdded {
            targets: t
                .targets
                .into_iter()
                .map(Target::try_from)
                .collect::<Result<_, _>>()?,
        },
        E::RolloutTargetsResolved(_) => RolloutEvent::TargetsResolved,
        E::RolloutStartTimeReached(_) => RolloutEvent::StartTimeReached,
        E::RolloutAttemptLaunching(a) => {
            let (target_index, target, attempt) =
                attempt_from_ipb("rollout_attempt_launching", Some(a))?;
            RolloutEvent::AttemptLaunching {
                target_index,
                target,
                attempt,
            }
        }
        E::RolloutAttemptLaunched(l) => {
            let (target_index, target, attempt) =
                attempt_from_ipb("rollout_attempt_launched.attempt", l.attempt)?;
            RolloutEvent::AttemptLaunched {
                target_index,
                target,
                attempt,
                execution_id: ExecutionId::parse(l.execution_id)?,
            }
        }
        E::RolloutAttemptRefused(r) => {
            let (target_index, target, attempt) =
                attempt_from_ipb("rollout_attempt_refused.attempt", r.attempt)?;
            RolloutEvent::AttemptRefused {
                target_index,
                target,
                attempt,
                code: rejection_code_from_pb(r.code)?,
            }
        }
        E::RolloutAttemptSettled(s) => {
            let (target_index, target, attempt) =
                attempt_from_ipb("rollout_attempt_settled.attempt", s.attempt)?;
            RolloutEvent::AttemptSettled {
                target_index,
                target,
                attempt,
                execution_id: ExecutionId::parse(s.execution_id)?,
                status: status_from_pb("rollout_attempt_settled.status", s.status)?,
            }
        }
        E::RolloutRateIncreased(r) => RolloutEvent::RateIncreased {
            per_minute: r.per_minute,
        },
        E::RolloutAborted(a) => RolloutEvent::Aborted {
            criterion: criterion_from_pb(required("rollout_aborted.criterion", a.criterion)?)?,
        },
        E::RolloutCancelRequested(c) => RolloutEvent::CancelRequested { force: c.force },
        E::RolloutExecutionsCanceling(c) => RolloutEvent::ExecutionsCanceling {
            execution_ids: c
                .execution_ids
                .into_iter()
                .map(ExecutionId::parse)
                .collect::<Result<_, _>>()?,
        },
        E::RolloutEndTimeReached(_) => RolloutEvent::EndTimeReached,
        E::RolloutCompleted(_) => RolloutEvent::Completed,
        E::RolloutCanceled(_) => RolloutEvent::Canceled,
        _ => return Err(CodecError::Missing("event.rollout")),
    })
}

// ---- snapshots -------------------------------------------------------------------------------

const TARGET_STATES: [(TargetState, ipb::RolloutTargetState); 9] = [
    (TargetState::Queued, ipb::RolloutTargetState::Queued),
    (
        TargetState::RetryWaiting,
        ipb::RolloutTargetState::RetryWaiting,
    ),
    (TargetState::InFlight, ipb::RolloutTargetState::InFlight),
    (TargetState::Succeeded, ipb::RolloutTargetState::Succeeded),
    (TargetState::Failed, ipb::RolloutTargetState::Failed),
    (TargetState::Rejected, ipb::RolloutTargetState::Rejected),
    (TargetState::TimedOut, ipb::RolloutTargetState::TimedOut),
    (TargetState::Canceled, ipb::RolloutTargetState::Canceled),
    (
        TargetState::SkippedUnauthorized,
        ipb::RolloutTargetState::SkippedUnauthorized,
    ),
];

const STATUSES: [(RolloutStatus, pb::RolloutStatus); 5] = [
    (RolloutStatus::Scheduled, pb::RolloutStatus::Scheduled),
    (RolloutStatus::InProgress, pb::RolloutStatus::InProgress),
    (RolloutStatus::Completed, pb::RolloutStatus::Completed),
    (RolloutStatus::Canceled, pb::RolloutStatus::Canceled),
    (RolloutStatus::Aborted, pb::RolloutStatus::Aborted),
];

/// A hosted rollout in a shard snapshot, with its last event's sequence number.
pub(super) fn snapshot_to_ipb(r: &Rollout, seq: u64) -> ipb::SnapshotRollout {
    let r = r.to_snapshot();
    ipb::SnapshotRollout {
        rollout_id: r.rollout_id.as_str().to_owned(),
        seq,
        spec: Some(rollout_spec_to_pb(&r.spec)),
        allowed_targets: r
            .spec
            .allowed_targets
            .clone()
            .map(|patterns| ipb::AllowedTargets { patterns }),
        spec_fingerprint: r.spec_fingerprint,
        status: STATUSES
            .iter()
            .find(|(d, _)| *d == r.status)
            .map_or(0, |(_, p)| *p as i32),
        aborted_by: r.aborted_by.as_ref().map(pb::AbortCriterion::from),
        counts: Some((&r.counts).into()),
        created_at_ms: r.created_at,
        started_at_ms: r.started_at,
        completed_at_ms: r.completed_at,
        targets_resolved: r.targets_resolved,
        per_minute: r.per_minute,
        ramp_steps: r.ramp_steps,
        stopping: match r.stopping {
            None => ipb::StopReason::None,
            Some(StopReason::Cancel) => ipb::StopReason::Cancel,
            Some(StopReason::Stop) => ipb::StopReason::Stop,
        } as i32,
        cancel_live: r.cancel_live,
        end_reached: r.end_reached,
        targets: r
            .targets
            .iter()
            .map(|t| ipb::SnapshotRolloutTarget {
                target: Some((&t.target).into()),
                state: TARGET_STATES
                    .iter()
                    .find(|(d, _)| *d == t.state)
                    .map_or(0, |(_, p)| *p as i32),
                attempt: t.attempt,
                notified: t.notified,
            })
            .collect(),
        live: r
            .live
            .iter()
            .map(|l| ipb::SnapshotRolloutLive {
                target_index: l.target_index,
                attempt: l.attempt,
                execution_id: l
                    .execution_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                cancel_sent: l.cancel_sent,
            })
            .collect(),
        retries: r
            .retry_at
            .iter()
            .map(|&(target_index, ready_at_ms)| ipb::SnapshotRolloutRetry {
                target_index,
                ready_at_ms,
            })
            .collect(),
        // Nanoseconds since the epoch fit an i64 until 2262.
        next_slot_ns: i64::try_from(r.next_slot_ns).unwrap_or(i64::MAX),
    }
}

fn invalid(field: &str, what: impl std::fmt::Display) -> CodecError {
    ValidationError::new(field, format!("unknown value {what}")).into()
}

/// The inverse of [`snapshot_to_ipb`]: the rollout, its indexes rebuilt, and its sequence
/// number.
pub(super) fn snapshot_from_ipb(r: ipb::SnapshotRollout) -> Result<(Rollout, u64)> {
    let mut spec =
        rollout_spec_from_pb_unchecked("rollout.spec", required("rollout.spec", r.spec)?)?;
    spec.allowed_targets = r.allowed_targets.map(|a| a.patterns);
    let status = STATUSES
        .iter()
        .find(|(_, p)| *p as i32 == r.status)
        .map(|(d, _)| *d)
        .ok_or_else(|| invalid("rollout.status", r.status))?;
    let stopping = match ipb::StopReason::try_from(r.stopping) {
        Ok(ipb::StopReason::None) => None,
        Ok(ipb::StopReason::Cancel) => Some(StopReason::Cancel),
        Ok(ipb::StopReason::Stop) => Some(StopReason::Stop),
        Err(_) => return Err(invalid("rollout.stopping", r.stopping)),
    };
    let targets = r
        .targets
        .into_iter()
        .map(|t| {
            let state = TARGET_STATES
                .iter()
                .find(|(_, p)| *p as i32 == t.state)
                .map(|(d, _)| *d)
                .ok_or_else(|| invalid("rollout.targets.state", t.state))?;
            Ok(SnapshotTarget {
                target: Target::try_from(required("rollout.targets.target", t.target)?)?,
                state,
                attempt: t.attempt,
                notified: t.notified,
            })
        })
        .collect::<Result<_>>()?;
    let live = r
        .live
        .into_iter()
        .map(|l| {
            Ok(SnapshotLive {
                target_index: l.target_index,
                attempt: l.attempt,
                execution_id: match l.execution_id.as_str() {
                    "" => None,
                    _ => Some(ExecutionId::parse(l.execution_id)?),
                },
                cancel_sent: l.cancel_sent,
            })
        })
        .collect::<Result<_>>()?;
    let aborted_by = r.aborted_by.map(criterion_from_pb).transpose()?;
    let snapshot = RolloutSnapshot {
        rollout_id: RolloutId::parse(r.rollout_id)?,
        spec,
        spec_fingerprint: r.spec_fingerprint,
        status,
        aborted_by,
        counts: required("rollout.counts", r.counts)?.into(),
        created_at: r.created_at_ms,
        started_at: r.started_at_ms,
        completed_at: r.completed_at_ms,
        targets_resolved: r.targets_resolved,
        per_minute: r.per_minute,
        ramp_steps: r.ramp_steps,
        stopping,
        cancel_live: r.cancel_live,
        end_reached: r.end_reached,
        targets,
        live,
        retry_at: r
            .retries
            .into_iter()
            .map(|x| (x.target_index, x.ready_at_ms))
            .collect(),
        next_slot_ns: i128::from(r.next_slot_ns),
    };
    Ok((Rollout::from_snapshot(snapshot)?, r.seq))
}

// ---- inputs on the bus -----------------------------------------------------------------------

pub(super) fn input_to_pb(rollout_id: &RolloutId, input: &RolloutInput) -> ipb::RolloutInput {
    use ipb::rollout_input::Input as I;
    let input = match input {
        RolloutInput::Start { rollout_id, spec } => I::Start(ipb::RolloutStarted {
            rollout_id: rollout_id.as_str().to_owned(),
            spec: Some(rollout_spec_to_pb(spec)),
            created_at_ms: 0,
            allowed_targets: spec
                .allowed_targets
                .clone()
                .map(|patterns| ipb::AllowedTargets { patterns }),
        }),
        RolloutInput::Cancel { force } => I::Cancel(ipb::RolloutCancelRequested { force: *force }),
        RolloutInput::AddTargets { targets } => I::AddTargets(ipb::RolloutTargetsAdded {
            targets: targets.iter().map(pb::Target::from).collect(),
        }),
        RolloutInput::TargetsResolved => I::TargetsResolved(ipb::RolloutMark {}),
        RolloutInput::Launched {
            target,
            attempt,
            execution_id,
        } => I::Launched(ipb::RolloutLaunched {
            target: Some(target.into()),
            attempt: *attempt,
            execution_id: execution_id.as_str().to_owned(),
        }),
        RolloutInput::LaunchRefused {
            target,
            attempt,
            code,
        } => I::LaunchRefused(ipb::RolloutLaunchRefused {
            target: Some(target.into()),
            attempt: *attempt,
            code: rejection_code_to_pb(*code) as i32,
        }),
        RolloutInput::Settled {
            execution_id,
            status,
        } => I::Settled(ipb::RolloutSettled {
            execution_id: execution_id.as_str().to_owned(),
            status: status_to_pb(*status),
        }),
    };
    ipb::RolloutInput {
        rollout_id: rollout_id.as_str().to_owned(),
        input: Some(input),
    }
}

pub(super) fn input_from_pb(r: ipb::RolloutInput) -> Result<ShardRequest> {
    use ipb::rollout_input::Input as I;
    let rollout_id = RolloutId::parse(r.rollout_id)?;
    let target = |t: Option<pb::Target>| -> Result<Target> {
        Ok(Target::try_from(required("rollout_input.target", t)?)?)
    };
    let input = match required("rollout_input.input", r.input)? {
        I::Start(s) => {
            let mut spec =
                rollout_spec_from_pb("spec", required("rollout_input.start.spec", s.spec)?)?;
            spec.allowed_targets = s.allowed_targets.map(|a| a.patterns);
            RolloutInput::Start {
                rollout_id: RolloutId::parse(s.rollout_id)?,
                spec: Box::new(spec),
            }
        }
        I::Cancel(c) => RolloutInput::Cancel { force: c.force },
        I::AddTargets(t) => RolloutInput::AddTargets {
            targets: t
                .targets
                .into_iter()
                .map(Target::try_from)
                .collect::<Result<_, _>>()?,
        },
        I::TargetsResolved(_) => RolloutInput::TargetsResolved,
        I::Launched(l) => RolloutInput::Launched {
            target: target(l.target)?,
            attempt: l.attempt,
            execution_id: ExecutionId::parse(l.execution_id)?,
        },
        I::LaunchRefused(l) => RolloutInput::LaunchRefused {
            target: target(l.target)?,
            attempt: l.attempt,
            code: rejection_code_from_pb(l.code)?,
        },
        I::Settled(s) => RolloutInput::Settled {
            execution_id: ExecutionId::parse(s.execution_id)?,
            status: status_from_pb("rollout_input.settled.status", s.status)?,
        },
    };
    Ok(ShardRequest::Rollout { rollout_id, input })
}
