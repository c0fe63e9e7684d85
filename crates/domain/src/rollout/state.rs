//! A rollout's state and the fold of its events ([`apply`]).
//!
//! Memory stays bounded by the number of targets: each is stored once in the target table
//! with two bytes of state; what is kept per attempt (execution ids, retry times) is held
//! only while the attempt is live or waiting, so a finished target costs its name plus a few
//! bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::event::RolloutEvent;
use super::spec::{AbortCriterion, EndBehavior, RolloutSpec, TargetSelector};
use super::table::{TargetState, TargetTable};
use super::{RolloutId, rollout_client_token};
use crate::ids::{ExecutionId, Target};
use crate::model::{ExecutionStatus, TimestampMs};
use crate::policy::glob_match;
use crate::start::StartRequest;

pub(crate) const NS_PER_MS: i128 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutStatus {
    /// Waiting for the schedule's start time.
    Scheduled,
    InProgress,
    Completed,
    Canceled,
    /// An abort criterion fired ([`Rollout::aborted_by`] says which).
    Aborted,
}

impl RolloutStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Canceled | Self::Aborted)
    }
}

/// How many targets stand where. Every target is counted exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RolloutCounts {
    /// Not attempted yet, or waiting for a retry.
    pub queued: u32,
    /// An attempt launching or launched, not settled.
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub rejected: u32,
    pub timed_out: u32,
    pub canceled: u32,
    pub skipped_unauthorized: u32,
    /// Targets with at least one launched execution (not a state: overlaps the others).
    pub notified: u32,
}

impl RolloutCounts {
    /// Targets with a final outcome that abort criteria count (canceled ones are not:
    /// a cancellation says nothing about the command).
    pub fn executed(&self) -> u32 {
        self.succeeded + self.failed + self.rejected + self.timed_out
    }
}

/// Why launching stopped before the rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Stopping {
    /// Cancel requested (or end behaviour CANCEL): ends CANCELED when drained.
    Cancel,
    /// End behaviour STOP: ends COMPLETED when drained.
    Stop,
}

/// A live attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Live {
    pub(crate) attempt: u8,
    /// Known once launched.
    pub(crate) execution_id: Option<ExecutionId>,
    /// An `ExecutionsCanceling` named it.
    pub(crate) cancel_sent: bool,
}

/// A rollout, as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub(crate) rollout_id: RolloutId,
    /// The spec as started, except that a `List` selector's targets are moved into the
    /// target table (stored once) and the list left empty.
    pub(crate) spec: RolloutSpec,
    pub(crate) spec_fingerprint: u64,
    pub(crate) status: RolloutStatus,
    pub(crate) aborted_by: Option<AbortCriterion>,
    pub(crate) counts: RolloutCounts,
    pub(crate) created_at: TimestampMs,
    pub(crate) started_at: Option<TimestampMs>,
    pub(crate) completed_at: Option<TimestampMs>,
    pub(crate) targets_resolved: bool,
    pub(crate) per_minute: u32,
    /// RateIncreased events so far (the k of base × factor^k).
    pub(crate) ramp_steps: u32,
    pub(crate) stopping: Option<Stopping>,
    /// Live executions are to be canceled as they become known.
    pub(crate) cancel_live: bool,
    pub(crate) end_reached: bool,
    pub(crate) targets: TargetTable,
    /// No target below this index is still `Queued`: where fresh launches continue.
    pub(crate) next_fresh: u32,
    pub(crate) live: BTreeMap<u32, Live>,
    pub(crate) by_execution: BTreeMap<ExecutionId, u32>,
    /// Targets waiting for a retry, by index and by (ready time, index).
    pub(crate) retry_at: BTreeMap<u32, TimestampMs>,
    pub(crate) retry_order: BTreeSet<(TimestampMs, u32)>,
    /// When the next launch may happen, in nanoseconds since the epoch (sub-millisecond so
    /// that high rates keep their fractional credit).
    pub(crate) next_slot_ns: i128,
}

/// A target as the rollout sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetView<'a> {
    pub index: u32,
    pub target: &'a Target,
    pub state: TargetState,
    /// The last attempt started (0: none).
    pub attempt: u32,
}

/// An intent logged but not yet launched: re-send its start request after a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingLaunch {
    pub target_index: u32,
    pub target: Target,
    pub attempt: u32,
    pub client_token: String,
}

/// The stable fingerprint of a spec, for client-token idempotency.
pub(crate) fn fingerprint(spec: &RolloutSpec) -> u64 {
    let canonical = serde_json::to_string(spec).unwrap_or_default();
    crate::shard::hash_key(&canonical)
}

/// The slot the next launch takes at `now`, and the one after it. Credit for slots that
/// passed unused is kept up to one interval (or 1 ms, for rates above 60,000/min, since
/// plans run on whole milliseconds): enough to absorb a late wake-up, never a burst.
pub(crate) fn pace(next_slot_ns: i128, now: TimestampMs, per_minute: u32) -> (i128, i128) {
    let interval = 60_000 * NS_PER_MS / i128::from(per_minute.max(1));
    let carry = interval.max(NS_PER_MS);
    let slot = next_slot_ns.max(i128::from(now) * NS_PER_MS - carry);
    (slot, slot + interval)
}

impl Rollout {
    fn started(rollout_id: &RolloutId, spec: &RolloutSpec, created_at: TimestampMs) -> Self {
        let mut spec = spec.clone();
        let spec_fingerprint = fingerprint(&spec);
        let starts_now = spec
            .schedule
            .as_ref()
            .and_then(|s| s.start_time)
            .is_none_or(|s| s <= created_at);
        let list = match &mut spec.targets {
            TargetSelector::List(list) => Some(std::mem::take(list)),
            _ => None,
        };
        let mut r = Rollout {
            rollout_id: rollout_id.clone(),
            per_minute: spec.rate.initial_per_minute(),
            spec,
            spec_fingerprint,
            status: if starts_now {
                RolloutStatus::InProgress
            } else {
                RolloutStatus::Scheduled
            },
            aborted_by: None,
            counts: RolloutCounts::default(),
            created_at,
            started_at: starts_now.then_some(created_at),
            completed_at: None,
            targets_resolved: list.is_some(),
            ramp_steps: 0,
            stopping: None,
            cancel_live: false,
            end_reached: false,
            targets: TargetTable::default(),
            next_fresh: 0,
            live: BTreeMap::new(),
            by_execution: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            retry_order: BTreeSet::new(),
            next_slot_ns: i128::from(created_at) * NS_PER_MS,
        };
        if let Some(list) = list {
            r.add_targets(list);
        }
        r
    }

    fn allowed(&self, t: &Target) -> bool {
        match &self.spec.allowed_targets {
            None => true,
            Some(patterns) => {
                let name = t.resource_name();
                patterns.iter().any(|p| glob_match(p, &name))
            }
        }
    }

    fn add_targets(&mut self, targets: impl IntoIterator<Item = Target>) {
        for t in targets {
            let state = if self.allowed(&t) {
                TargetState::Queued
            } else {
                TargetState::SkippedUnauthorized
            };
            if self.targets.push(t, state).is_some() {
                match state {
                    TargetState::Queued => self.counts.queued += 1,
                    _ => self.counts.skipped_unauthorized += 1,
                }
            }
        }
        self.advance_cursor();
    }

    fn advance_cursor(&mut self) {
        let entries = &self.targets.entries;
        let mut i = self.next_fresh as usize;
        while i < entries.len() && entries[i].state != TargetState::Queued {
            i += 1;
        }
        self.next_fresh = i as u32;
    }

    /// Whether new attempts (fresh or retries) may still start.
    pub(crate) fn launching_allowed(&self) -> bool {
        !self.status.is_terminal() && self.stopping.is_none()
    }

    fn end(&mut self, status: RolloutStatus, at: TimestampMs) {
        if !self.status.is_terminal() {
            self.status = status;
            self.completed_at = Some(at);
        }
    }

    fn launching(&mut self, index: u32, attempt: u32, at: TimestampMs) {
        let Some(e) = self.targets.entries.get_mut(index as usize) else {
            return;
        };
        match e.state {
            TargetState::Queued => {}
            TargetState::RetryWaiting => {
                if let Some(ready) = self.retry_at.remove(&index) {
                    self.retry_order.remove(&(ready, index));
                }
            }
            _ => return,
        }
        e.state = TargetState::InFlight;
        e.attempt = attempt.min(u32::from(u8::MAX)) as u8;
        self.counts.queued -= 1;
        self.counts.in_flight += 1;
        self.live.insert(
            index,
            Live {
                attempt: e.attempt,
                execution_id: None,
                cancel_sent: false,
            },
        );
        let (_, next) = pace(self.next_slot_ns, at, self.per_minute);
        self.next_slot_ns = next;
        self.advance_cursor();
    }

    /// Ends a live attempt with `outcome` (FAILED for a refused start): re-queues it while
    /// its failure type has retries left and the rollout still launches, else makes it final.
    fn settle(&mut self, index: u32, outcome: TargetState, at: TimestampMs) {
        let Some(live) = self.live.remove(&index) else {
            return;
        };
        if let Some(id) = &live.execution_id {
            self.by_execution.remove(id);
        }
        self.counts.in_flight -= 1;
        let attempt = u32::from(live.attempt);
        let retryable = matches!(outcome, TargetState::Failed | TargetState::TimedOut)
            && self.launching_allowed()
            && attempt <= self.spec.retries_for(outcome == TargetState::TimedOut);
        let e = &mut self.targets.entries[index as usize];
        if retryable {
            let ready = at.saturating_add(self.spec.backoff_ms(attempt));
            e.state = TargetState::RetryWaiting;
            self.retry_at.insert(index, ready);
            self.retry_order.insert((ready, index));
            self.counts.queued += 1;
            return;
        }
        e.state = outcome;
        let c = &mut self.counts;
        match outcome {
            TargetState::Succeeded => c.succeeded += 1,
            TargetState::Failed => c.failed += 1,
            TargetState::Rejected => c.rejected += 1,
            TargetState::TimedOut => c.timed_out += 1,
            _ => c.canceled += 1,
        }
    }

    fn apply(&mut self, event: &RolloutEvent, at: TimestampMs) {
        match event {
            RolloutEvent::RolloutStarted { .. } => {}
            RolloutEvent::TargetsAdded { targets } => self.add_targets(targets.iter().cloned()),
            RolloutEvent::TargetsResolved => self.targets_resolved = true,
            RolloutEvent::StartTimeReached => {
                if self.status == RolloutStatus::Scheduled {
                    self.status = RolloutStatus::InProgress;
                    self.started_at = Some(at);
                    self.next_slot_ns = i128::from(at) * NS_PER_MS;
                }
            }
            RolloutEvent::AttemptLaunching {
                target_index,
                attempt,
                ..
            } => self.launching(*target_index, *attempt, at),
            RolloutEvent::AttemptLaunched {
                target_index,
                execution_id,
                ..
            } => {
                if let Some(live) = self.live.get_mut(target_index) {
                    live.execution_id = Some(execution_id.clone());
                    self.by_execution
                        .insert(execution_id.clone(), *target_index);
                    let e = &mut self.targets.entries[*target_index as usize];
                    if !e.notified {
                        e.notified = true;
                        self.counts.notified += 1;
                    }
                }
            }
            RolloutEvent::AttemptRefused { target_index, .. } => {
                self.settle(*target_index, TargetState::Failed, at)
            }
            RolloutEvent::AttemptSettled {
                target_index,
                status,
                ..
            } => {
                let outcome = match status {
                    ExecutionStatus::Succeeded => TargetState::Succeeded,
                    ExecutionStatus::Failed => TargetState::Failed,
                    ExecutionStatus::Rejected => TargetState::Rejected,
                    ExecutionStatus::TimedOut => TargetState::TimedOut,
                    _ => TargetState::Canceled,
                };
                self.settle(*target_index, outcome, at)
            }
            RolloutEvent::RateIncreased { per_minute } => {
                self.per_minute = *per_minute;
                self.ramp_steps += 1;
            }
            RolloutEvent::Aborted { criterion } => {
                if !self.status.is_terminal() {
                    self.aborted_by = Some(criterion.clone());
                    self.cancel_live = self.spec.cancel_in_progress;
                    self.end(RolloutStatus::Aborted, at);
                }
            }
            RolloutEvent::CancelRequested { force } => {
                if !self.status.is_terminal() {
                    self.stopping = Some(Stopping::Cancel);
                }
                self.cancel_live |= *force;
            }
            RolloutEvent::ExecutionsCanceling { execution_ids } => {
                for id in execution_ids {
                    if let Some(live) = self.by_execution.get(id).and_then(|i| self.live.get_mut(i))
                    {
                        live.cancel_sent = true;
                    }
                }
            }
            RolloutEvent::EndTimeReached => {
                self.end_reached = true;
                let behavior = self.spec.schedule.as_ref().map(|s| s.end_behavior);
                match behavior.unwrap_or_default() {
                    EndBehavior::Stop if self.stopping.is_none() => {
                        self.stopping = Some(Stopping::Stop)
                    }
                    EndBehavior::Stop => {}
                    EndBehavior::Cancel => self.stopping = Some(Stopping::Cancel),
                    EndBehavior::ForceCancel => {
                        self.cancel_live = true;
                        self.end(RolloutStatus::Canceled, at);
                    }
                }
            }
            RolloutEvent::Completed => self.end(RolloutStatus::Completed, at),
            RolloutEvent::Canceled => self.end(RolloutStatus::Canceled, at),
        }
    }

    pub fn rollout_id(&self) -> &RolloutId {
        &self.rollout_id
    }
    /// The spec; a `List` selector's targets are in [`Self::target`], not here.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }
    pub fn status(&self) -> RolloutStatus {
        self.status
    }
    /// The criterion that aborted the rollout.
    pub fn aborted_by(&self) -> Option<&AbortCriterion> {
        self.aborted_by.as_ref()
    }
    pub fn counts(&self) -> &RolloutCounts {
        &self.counts
    }
    pub fn created_at(&self) -> TimestampMs {
        self.created_at
    }
    pub fn started_at(&self) -> Option<TimestampMs> {
        self.started_at
    }
    pub fn completed_at(&self) -> Option<TimestampMs> {
        self.completed_at
    }
    /// Whether the target list is complete (always for a `List`).
    pub fn targets_resolved(&self) -> bool {
        self.targets_resolved
    }
    /// The current launch rate.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
    /// True while in progress but no longer launching (cancel or end time, draining).
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some() && !self.status.is_terminal()
    }
    pub fn target_count(&self) -> u32 {
        self.targets.len() as u32
    }
    pub fn target(&self, index: u32) -> Option<TargetView<'_>> {
        self.targets
            .entries
            .get(index as usize)
            .map(|e| TargetView {
                index,
                target: &e.target,
                state: e.state,
                attempt: u32::from(e.attempt),
            })
    }
    pub fn find_target(&self, target: &Target) -> Option<TargetView<'_>> {
        self.targets.find(target).and_then(|i| self.target(i))
    }

    /// Intents logged but not launched, oldest target first: after a crash, re-send each
    /// start request ([`Self::start_request`]); the client token makes it idempotent.
    pub fn pending_launches(&self) -> Vec<PendingLaunch> {
        self.live
            .iter()
            .filter(|(_, l)| l.execution_id.is_none())
            .map(|(&i, l)| PendingLaunch {
                target_index: i,
                target: self.targets.entries[i as usize].target.clone(),
                attempt: u32::from(l.attempt),
                client_token: rollout_client_token(&self.rollout_id, i, u32::from(l.attempt)),
            })
            .collect()
    }

    /// Live executions a logged `ExecutionsCanceling` named: re-send those cancels after a
    /// crash (canceling is idempotent).
    pub fn pending_cancels(&self) -> Vec<ExecutionId> {
        self.live
            .values()
            .filter(|l| l.cancel_sent)
            .filter_map(|l| l.execution_id.clone())
            .collect()
    }

    /// The live executions (launched, not settled) with their targets, in target order:
    /// what an owner reads back to learn of settles it was not told about.
    pub fn live_executions(&self) -> Vec<(ExecutionId, Target)> {
        self.live
            .iter()
            .filter_map(|(&i, l)| {
                let id = l.execution_id.clone()?;
                Some((id, self.targets.entries[i as usize].target.clone()))
            })
            .collect()
    }

    /// The target of a live execution of this rollout.
    pub fn execution_target(&self, id: &ExecutionId) -> Option<&Target> {
        let i = *self.by_execution.get(id)?;
        Some(&self.targets.entries[i as usize].target)
    }

    /// The StartCommandExecution request of one attempt.
    pub fn start_request(&self, target_index: u32, attempt: u32) -> Option<StartRequest> {
        let e = self.targets.entries.get(target_index as usize)?;
        Some(StartRequest {
            command_id: self.spec.command_id.clone(),
            target: e.target.clone(),
            parameters: self.spec.parameters.clone(),
            timeout_secs: self.spec.execution_timeout_secs,
            client_token: Some(rollout_client_token(
                &self.rollout_id,
                target_index,
                attempt,
            )),
        })
    }

    #[cfg(test)]
    pub(crate) fn table_overhead_bytes(&self) -> usize {
        self.targets.overhead_bytes()
    }
}

/// Folds one event at `at` (the envelope's time; for events of a plan, the `now` it was made
/// for). `RolloutStarted` creates the state; other events need one.
pub fn apply(state: &mut Option<Rollout>, event: &RolloutEvent, at: TimestampMs) {
    match (event, state.as_mut()) {
        (
            RolloutEvent::RolloutStarted {
                rollout_id,
                spec,
                created_at,
            },
            None,
        ) => *state = Some(Rollout::started(rollout_id, spec, *created_at)),
        (_, Some(r)) => r.apply(event, at),
        (_, None) => {}
    }
}
