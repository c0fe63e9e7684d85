//! Fleet rollouts: one command sent to many targets at a controlled rate, with abort rules,
//! retries and a schedule (AWS IoT Jobs' rollout, abort, retry and scheduling configs).
//!
//! This is the pure core a shard owner hosts: [`decide`] turns inputs into events, [`apply`]
//! folds them, and [`plan`] says what to do at a given time (launch intents, cancels, when
//! to look again). The owner appends events before acting on them: a launch is logged as an
//! intent (`AttemptLaunching`) before its start request is sent, with the deterministic
//! [`rollout_client_token`], so after a crash it re-sends exactly
//! [`Rollout::pending_launches`] and no target is started twice.
//!
//! Rules where AWS left room or differs:
//! - Abort criteria count **final outcomes per target**: a failure that will be retried is
//!   not counted until its last attempt failed (AWS counts each failed attempt). This keeps
//!   the percentage a share of things, never above 100 %, and independent of the retry
//!   configuration. Canceled targets count in neither the failures nor the executed ones.
//! - Retries: each attempt is its own execution, numbered from 1. FAILED (also a start
//!   request refused for good) and TIMED_OUT attempts are retried while their type has
//!   retries left (the criterion naming the type, else `All`); REJECTED and CANCELED never
//!   are. Attempt n+1 waits `retry_backoff_base_secs × 2^(n-1)`, at most one hour. Retries
//!   take launch slots like first attempts: each one notifies the device again.
//! - Cancel stops new launches (retries included); the rollout ends CANCELED once nothing
//!   is in flight (at once when nothing is). `force` ends it at once and the plans list the
//!   live executions to cancel, including those whose launch is confirmed later.
//! - A CONTINUOUS rollout never completes by itself; it ends by cancel, abort or end time.
//! - `allowed_targets` is applied as targets are added: the others are recorded as
//!   `SkippedUnauthorized`, never attempted, and counted.

mod cron;
mod decide;
mod event;
mod plan;
mod snapshot;
mod spec;
mod state;
mod summary;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::ID_MAX_CHARS;

pub use decide::decide;
pub use event::{RolloutEvent, RolloutInput};
pub use plan::{Plan, plan};
pub use snapshot::{RolloutSnapshot, SnapshotLive, SnapshotTarget, StopReason};
pub use spec::{
    ABORT_CRITERIA_MAX, AbortCriterion, EndBehavior, FailureType, IncreaseCriteria,
    LIST_TARGETS_MAX, MaintenanceWindow, PER_MINUTE_MAX, RETRY_BACKOFF_BASE_DEFAULT_SECS,
    RETRY_BACKOFF_CAP_SECS, ROLLOUT_TARGETS_MAX, Rate, RetryCriterion, RetryFailureType,
    RolloutSpec, Schedule, TargetSelection, TargetSelector, validate,
};
pub use state::{PendingLaunch, Rollout, RolloutCounts, RolloutStatus, TargetView, apply};
pub use summary::RolloutSummary;
pub use table::TargetState;

/// A rollout's id: 1–64 characters of `[a-zA-Z0-9_-]`, chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RolloutId(String);

impl RolloutId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let field = "rollout_id";
        if value.is_empty() || value.len() > ID_MAX_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be 1–{ID_MAX_CHARS} characters"),
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ValidationError::new(
                field,
                format!("must match [a-zA-Z0-9_-]+, found {c:?}"),
            ));
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RolloutId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<RolloutId> for String {
    fn from(id: RolloutId) -> Self {
        id.0
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The routing key of a rollout: `rollout/<id>`. Its shard's owner hosts it.
pub fn routing_key(rollout_id: &RolloutId) -> String {
    format!("rollout/{rollout_id}")
}

/// Longest rollout id kept verbatim in a client token.
const TOKEN_ID_VERBATIM: usize = 44;

/// The client token of one attempt's start request: `r:<rollout id>:<index>:<attempt>`,
/// at most 64 printable ASCII characters. Ids longer than 44 characters keep their first
/// 27 and a 64-bit FNV-1a hash of the whole id (`r:<prefix>~<hash>:...`; `~` never appears
/// in an id, so the two forms cannot meet). Client tokens are scoped to their target, so
/// the pair (rollout, attempt) is what must differ, and does.
pub fn rollout_client_token(rollout_id: &RolloutId, target_index: u32, attempt: u32) -> String {
    let id = rollout_id.as_str();
    if id.len() <= TOKEN_ID_VERBATIM {
        format!("r:{id}:{target_index}:{attempt}")
    } else {
        let hash = crate::shard::hash_key(id);
        format!("r:{}~{hash:016x}:{target_index}:{attempt}", &id[..27])
    }
}
