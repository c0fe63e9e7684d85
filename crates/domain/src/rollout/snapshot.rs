//! A rollout as a shard snapshot stores it: what the fold cannot derive again. The target
//! table's index, the execution → target map, the retry order and the fresh-launch cursor
//! follow from the rest and are rebuilt by [`Rollout::from_snapshot`], which also checks
//! that every index a snapshot holds points at a target of the table.

use std::collections::{BTreeMap, BTreeSet};

use super::RolloutId;
use super::spec::{AbortCriterion, RolloutSpec};
use super::state::{Live, Rollout, RolloutCounts, RolloutStatus, Stopping};
use super::table::{Entry, TargetState, TargetTable};
use crate::error::ValidationError;
use crate::ids::{ExecutionId, Target};
use crate::model::TimestampMs;

/// Why launching stopped before the rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Cancel requested (or end behaviour CANCEL): ends CANCELED once drained.
    Cancel,
    /// End behaviour STOP: ends COMPLETED once drained.
    Stop,
}

/// One target of the table, at its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTarget {
    pub target: Target,
    pub state: TargetState,
    /// The last attempt started (0: none).
    pub attempt: u32,
    /// Whether any attempt was launched.
    pub notified: bool,
}

/// A live attempt of the target at `target_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLive {
    pub target_index: u32,
    pub attempt: u32,
    /// Known once launched.
    pub execution_id: Option<ExecutionId>,
    pub cancel_sent: bool,
}

/// Everything a rollout's fold holds, but the indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSnapshot {
    pub rollout_id: RolloutId,
    /// As the rollout holds it: a list's targets are in `targets`, the spec's list is empty.
    pub spec: RolloutSpec,
    pub spec_fingerprint: u64,
    pub status: RolloutStatus,
    pub aborted_by: Option<AbortCriterion>,
    pub counts: RolloutCounts,
    pub created_at: TimestampMs,
    pub started_at: Option<TimestampMs>,
    pub completed_at: Option<TimestampMs>,
    pub targets_resolved: bool,
    pub per_minute: u32,
    pub ramp_steps: u32,
    pub stopping: Option<StopReason>,
    pub cancel_live: bool,
    pub end_reached: bool,
    pub targets: Vec<SnapshotTarget>,
    pub live: Vec<SnapshotLive>,
    /// Targets waiting for a retry, and when each is ready.
    pub retry_at: Vec<(u32, TimestampMs)>,
    /// When the next launch may happen, in nanoseconds since the epoch.
    pub next_slot_ns: i128,
}

fn bad(what: impl Into<String>) -> ValidationError {
    ValidationError::new("rollout", what)
}

/// An attempt number as the table keeps it (at most 11 are ever made).
fn attempt_u8(attempt: u32) -> Result<u8, ValidationError> {
    u8::try_from(attempt).map_err(|_| bad(format!("attempt {attempt} is out of range")))
}

impl Rollout {
    pub fn to_snapshot(&self) -> RolloutSnapshot {
        RolloutSnapshot {
            rollout_id: self.rollout_id.clone(),
            spec: self.spec.clone(),
            spec_fingerprint: self.spec_fingerprint,
            status: self.status,
            aborted_by: self.aborted_by.clone(),
            counts: self.counts,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            targets_resolved: self.targets_resolved,
            per_minute: self.per_minute,
            ramp_steps: self.ramp_steps,
            stopping: self.stopping.map(|s| match s {
                Stopping::Cancel => StopReason::Cancel,
                Stopping::Stop => StopReason::Stop,
            }),
            cancel_live: self.cancel_live,
            end_reached: self.end_reached,
            targets: self
                .targets
                .entries
                .iter()
                .map(|e| SnapshotTarget {
                    target: e.target.clone(),
                    state: e.state,
                    attempt: u32::from(e.attempt),
                    notified: e.notified,
                })
                .collect(),
            live: self
                .live
                .iter()
                .map(|(&target_index, l)| SnapshotLive {
                    target_index,
                    attempt: u32::from(l.attempt),
                    execution_id: l.execution_id.clone(),
                    cancel_sent: l.cancel_sent,
                })
                .collect(),
            retry_at: self.retry_at.iter().map(|(&i, &at)| (i, at)).collect(),
            next_slot_ns: self.next_slot_ns,
        }
    }

    /// The rollout a snapshot holds, its indexes rebuilt. Fails, naming the problem, when
    /// the snapshot lists a target twice or points at a target it does not hold.
    pub fn from_snapshot(s: RolloutSnapshot) -> Result<Rollout, ValidationError> {
        let mut targets = TargetTable::default();
        for (i, t) in s.targets.into_iter().enumerate() {
            let attempt = attempt_u8(t.attempt)?;
            let index = targets
                .push(t.target, t.state)
                .ok_or_else(|| bad(format!("target {i} is listed twice")))?;
            let entry: &mut Entry = &mut targets.entries[index as usize];
            entry.attempt = attempt;
            entry.notified = t.notified;
        }
        let held = |i: u32| {
            if (i as usize) < targets.len() {
                Ok(i)
            } else {
                Err(bad(format!(
                    "target index {i} is beyond the {} held",
                    targets.len()
                )))
            }
        };
        let mut live = BTreeMap::new();
        let mut by_execution = BTreeMap::new();
        for l in s.live {
            let i = held(l.target_index)?;
            if let Some(id) = &l.execution_id {
                by_execution.insert(id.clone(), i);
            }
            live.insert(
                i,
                Live {
                    attempt: attempt_u8(l.attempt)?,
                    execution_id: l.execution_id,
                    cancel_sent: l.cancel_sent,
                },
            );
        }
        let mut retry_at = BTreeMap::new();
        let mut retry_order = BTreeSet::new();
        for (i, ready) in s.retry_at {
            let i = held(i)?;
            retry_at.insert(i, ready);
            retry_order.insert((ready, i));
        }
        let next_fresh = targets
            .entries
            .iter()
            .position(|e| e.state == TargetState::Queued)
            .unwrap_or(targets.len()) as u32;
        Ok(Rollout {
            rollout_id: s.rollout_id,
            spec: s.spec,
            spec_fingerprint: s.spec_fingerprint,
            status: s.status,
            aborted_by: s.aborted_by,
            counts: s.counts,
            created_at: s.created_at,
            started_at: s.started_at,
            completed_at: s.completed_at,
            targets_resolved: s.targets_resolved,
            per_minute: s.per_minute,
            ramp_steps: s.ramp_steps,
            stopping: s.stopping.map(|r| match r {
                StopReason::Cancel => Stopping::Cancel,
                StopReason::Stop => Stopping::Stop,
            }),
            cancel_live: s.cancel_live,
            end_reached: s.end_reached,
            targets,
            next_fresh,
            live,
            by_execution,
            retry_at,
            retry_order,
            next_slot_ns: s.next_slot_ns,
        })
    }
}
