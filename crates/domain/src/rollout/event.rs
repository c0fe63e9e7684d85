//! What a rollout's owner feeds in ([`RolloutInput`]) and what it appends to the log
//! ([`RolloutEvent`]). Events are small: targets are named once, when added; per-attempt
//! events carry the target's index (for the client token) and the target itself (so the log
//! reads without the state).

use serde::{Deserialize, Serialize};

use super::RolloutId;
use super::spec::{AbortCriterion, RolloutSpec};
use crate::error::RejectionCode;
use crate::ids::{ExecutionId, Target};
use crate::model::{ExecutionStatus, TimestampMs};

/// An input aimed at a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RolloutInput {
    /// StartRollout. Idempotent: the same `client_token` with the same spec changes nothing.
    Start {
        rollout_id: RolloutId,
        spec: Box<RolloutSpec>,
    },
    /// CancelRollout: no new launches; ends CANCELED when nothing is in flight, or at once
    /// with `force` (the owner then cancels the live executions the plans list).
    Cancel { force: bool },
    /// A chunk of the resolved group or query (duplicates are ignored).
    AddTargets { targets: Vec<Target> },
    /// The resolution is complete (what lets a SNAPSHOT rollout complete).
    TargetsResolved,
    /// The start request of an intent was accepted.
    Launched {
        target: Target,
        attempt: u32,
        execution_id: ExecutionId,
    },
    /// The start request of an intent was refused for good (the owner retries transient
    /// refusals itself, with the same client token). Counts as a FAILED attempt.
    LaunchRefused {
        target: Target,
        attempt: u32,
        code: RejectionCode,
    },
    /// An execution of this rollout reached a terminal status, or the cloud TIMED_OUT.
    Settled {
        execution_id: ExecutionId,
        status: ExecutionStatus,
    },
}

/// Facts about a rollout, past tense. Fold them with [`super::apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RolloutEvent {
    RolloutStarted {
        rollout_id: RolloutId,
        spec: Box<RolloutSpec>,
        created_at: TimestampMs,
    },
    /// New targets, in the order they get their indexes (never a duplicate).
    TargetsAdded {
        targets: Vec<Target>,
    },
    TargetsResolved,
    /// A SCHEDULED rollout reached its start time.
    StartTimeReached,
    /// The intent to start `attempt` (from 1) on a target, appended before the request is
    /// sent: after a crash the owner re-sends exactly the intents not yet launched, with the
    /// same deterministic client token, so no target is started twice.
    AttemptLaunching {
        target_index: u32,
        target: Target,
        attempt: u32,
    },
    AttemptLaunched {
        target_index: u32,
        target: Target,
        attempt: u32,
        execution_id: ExecutionId,
    },
    /// The start request was refused: a FAILED attempt without an execution.
    AttemptRefused {
        target_index: u32,
        target: Target,
        attempt: u32,
        code: RejectionCode,
    },
    AttemptSettled {
        target_index: u32,
        target: Target,
        attempt: u32,
        execution_id: ExecutionId,
        status: ExecutionStatus,
    },
    /// The ramp-up moved to its next step.
    RateIncreased {
        per_minute: u32,
    },
    /// An abort criterion was crossed; with `cancel_in_progress`, live executions follow.
    Aborted {
        criterion: AbortCriterion,
    },
    CancelRequested {
        force: bool,
    },
    /// The owner is about to cancel these live executions (abort with
    /// `cancel_in_progress`, force cancel, FORCE_CANCEL end behaviour).
    ExecutionsCanceling {
        execution_ids: Vec<ExecutionId>,
    },
    /// The schedule's end time passed; what follows is the spec's `end_behavior`.
    EndTimeReached,
    Completed,
    Canceled,
}

impl RolloutEvent {
    /// The event's type name, for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RolloutStarted { .. } => "RolloutStarted",
            Self::TargetsAdded { .. } => "RolloutTargetsAdded",
            Self::TargetsResolved => "RolloutTargetsResolved",
            Self::StartTimeReached => "RolloutStartTimeReached",
            Self::AttemptLaunching { .. } => "RolloutAttemptLaunching",
            Self::AttemptLaunched { .. } => "RolloutAttemptLaunched",
            Self::AttemptRefused { .. } => "RolloutAttemptRefused",
            Self::AttemptSettled { .. } => "RolloutAttemptSettled",
            Self::RateIncreased { .. } => "RolloutRateIncreased",
            Self::Aborted { .. } => "RolloutAborted",
            Self::CancelRequested { .. } => "RolloutCancelRequested",
            Self::ExecutionsCanceling { .. } => "RolloutExecutionsCanceling",
            Self::EndTimeReached => "RolloutEndTimeReached",
            Self::Completed => "RolloutCompleted",
            Self::Canceled => "RolloutCanceled",
        }
    }
}
