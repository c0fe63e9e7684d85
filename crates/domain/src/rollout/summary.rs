//! What callers see of a rollout: everything but its target table, small enough for a bus
//! reply and an API response whatever the number of targets.

use super::RolloutId;
use serde::{Deserialize, Serialize};

use super::spec::{AbortCriterion, RolloutSpec};
use super::state::{Rollout, RolloutCounts, RolloutStatus};
use crate::model::TimestampMs;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub rollout_id: RolloutId,
    /// As the rollout holds it: a list's targets are counted in `target_count`, not listed;
    /// the caller's grant (`allowed_targets`) stays with the owner (what it skipped is
    /// counted in `counts.skipped_unauthorized`).
    pub spec: RolloutSpec,
    pub status: RolloutStatus,
    pub aborted_by: Option<AbortCriterion>,
    pub counts: RolloutCounts,
    pub target_count: u32,
    pub targets_resolved: bool,
    pub per_minute: u32,
    /// In progress but no longer launching (cancel or end time, draining).
    pub stopping: bool,
    pub created_at: TimestampMs,
    pub started_at: Option<TimestampMs>,
    pub completed_at: Option<TimestampMs>,
}

impl Rollout {
    pub fn summary(&self) -> RolloutSummary {
        let spec = RolloutSpec {
            allowed_targets: None,
            ..self.spec().clone()
        };
        RolloutSummary {
            rollout_id: self.rollout_id().clone(),
            spec,
            status: self.status(),
            aborted_by: self.aborted_by().cloned(),
            counts: *self.counts(),
            target_count: self.target_count(),
            targets_resolved: self.targets_resolved(),
            per_minute: self.per_minute(),
            stopping: self.is_stopping(),
            created_at: self.created_at(),
            started_at: self.started_at(),
            completed_at: self.completed_at(),
        }
    }
}
