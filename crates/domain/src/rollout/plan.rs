//! The planner: given a rollout and the time, what the owner should do now and when to
//! look again. Pure like `decide`; the owner appends the plan's events (folding each with
//! `at = now`), sends a start request per `AttemptLaunching` and a cancel per listed
//! execution, then calls `plan` again at `wake_at` or after the next input.
//!
//! Order of the rules, each able to end the plan: the start time; the end time and its
//! behaviour; a terminal rollout only cancels what is still live; a stopping one ends once
//! drained; abort criteria (checked before any launch, so the settle that crosses a
//! threshold stops launches in the very next plan); ramp-up; SNAPSHOT completion; then
//! launches, paced evenly at one every 60,000 / rate ms, within `max_in_flight` and the
//! maintenance windows, retries whose backoff passed first.

use serde::{Deserialize, Serialize};

use super::cron::Cron;
use super::event::RolloutEvent;
use super::spec::{AbortCriterion, EndBehavior, FailureType, Rate, TargetSelection};
use super::state::{NS_PER_MS, Rollout, RolloutStatus, Stopping, pace};
use super::table::TargetState;
use crate::ids::ExecutionId;
use crate::model::TimestampMs;

/// What to do now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// To append, in order, each folded at the plan's `now`.
    pub events: Vec<RolloutEvent>,
    /// Live executions to cancel (also named by an `ExecutionsCanceling` in `events`).
    pub cancel: Vec<ExecutionId>,
    /// When to plan again if no input arrives first; `None`: only after the next input.
    pub wake_at: Option<TimestampMs>,
}

impl Plan {
    /// The (target index, attempt) of each launch intent the plan logs, in order: the start
    /// requests to send once its events are durable.
    pub fn launches(&self) -> Vec<(u32, u32)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                RolloutEvent::AttemptLaunching {
                    target_index,
                    attempt,
                    ..
                } => Some((*target_index, *attempt)),
                _ => None,
            })
            .collect()
    }
}

/// The first criterion crossed, in spec order. Final outcomes only: a failure that will
/// be retried is not counted until its last attempt.
fn crossed(r: &Rollout) -> Option<&AbortCriterion> {
    let c = &r.counts;
    let executed = c.executed();
    r.spec.abort_criteria.iter().find(|a| {
        let failures = match a.failure_type {
            FailureType::Failed => c.failed,
            FailureType::Rejected => c.rejected,
            FailureType::TimedOut => c.timed_out,
            FailureType::All => c.failed + c.rejected + c.timed_out,
        };
        executed > 0
            && executed >= a.min_number_of_executed_things
            && f64::from(failures) * 100.0 >= a.threshold_percentage * f64::from(executed)
    })
}

/// Emits the ramp-up steps now due and returns the rate launches use.
fn ramp(r: &Rollout, events: &mut Vec<RolloutEvent>) -> u32 {
    let Rate::ExponentialRampUp {
        base_per_minute,
        increment_factor,
        increase_after,
        max_per_minute,
    } = &r.spec.rate
    else {
        return r.per_minute;
    };
    let (every, count) = match (increase_after.notified, increase_after.succeeded) {
        (Some(n), _) => (n, r.counts.notified),
        (None, Some(n)) => (n, r.counts.succeeded),
        (None, None) => return r.per_minute,
    };
    let (mut rate, mut steps) = (r.per_minute, r.ramp_steps);
    while rate < *max_per_minute
        && u64::from(count) >= (u64::from(steps) + 1) * u64::from(every.max(1))
    {
        steps += 1;
        let exact = f64::from(*base_per_minute) * increment_factor.powi(steps.min(1_000) as i32);
        // Each step raises the rate by at least one, so small bases still ramp; the value is
        // logged in the event, so replays never recompute it.
        let next = (exact.min(f64::from(*max_per_minute)) as u32).clamp(rate + 1, *max_per_minute);
        events.push(RolloutEvent::RateIncreased { per_minute: next });
        rate = next;
    }
    rate
}

fn cancels(r: &Rollout, plan: &mut Plan) {
    let ids: Vec<ExecutionId> = r
        .live
        .values()
        .filter(|l| !l.cancel_sent)
        .filter_map(|l| l.execution_id.clone())
        .collect();
    if !ids.is_empty() {
        plan.events.push(RolloutEvent::ExecutionsCanceling {
            execution_ids: ids.clone(),
        });
        plan.cancel = ids;
    }
}

/// Parsed maintenance windows: (start expression, duration in ms).
fn windows(r: &Rollout) -> Vec<(Cron, i64)> {
    let Some(s) = &r.spec.schedule else {
        return Vec::new();
    };
    s.maintenance_windows
        .iter()
        // Validated at start; an expression that no longer parses is skipped.
        .filter_map(|w| {
            Some((
                Cron::parse(&w.start).ok()?,
                i64::from(w.duration_minutes) * 60_000,
            ))
        })
        .collect()
}

/// The first moment at or after `t` that is inside a window (`t` itself when there are no
/// windows); `None` if no window ever opens again.
fn open_at(windows: &[(Cron, i64)], t: TimestampMs) -> Option<TimestampMs> {
    if windows.is_empty() {
        return Some(t);
    }
    let inside = windows.iter().any(|(cron, duration)| {
        // A window started in (t - duration, t] is still open at t.
        cron.next_at_or_after(t.saturating_sub(duration - 1))
            .is_some_and(|s| s <= t)
    });
    if inside {
        return Some(t);
    }
    windows
        .iter()
        .filter_map(|(cron, _)| cron.next_at_or_after(t))
        .min()
}

fn ceil_ms(ns: i128) -> TimestampMs {
    let ms = (ns + NS_PER_MS - 1).div_euclid(NS_PER_MS);
    ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn launches(r: &Rollout, now: TimestampMs, mut next_slot: i128, per_minute: u32, plan: &mut Plan) {
    let cap = r.spec.max_in_flight.map_or(usize::MAX, |m| m as usize);
    let mut live = r.live.len();
    if live >= cap {
        return; // The next settle brings the next plan.
    }
    let entries = &r.targets.entries;
    let mut fresh = (r.next_fresh as usize..entries.len())
        .filter(|&i| entries[i].state == TargetState::Queued)
        .peekable();
    let mut retries = r.retry_order.iter().peekable();
    let first = if fresh.peek().is_some() {
        Some(now)
    } else {
        retries.peek().map(|(t, _)| (*t).max(now))
    };
    let Some(first) = first else {
        return; // Nothing to launch until targets are added or attempts settle.
    };
    let windows = windows(r);
    match open_at(&windows, first) {
        Some(open) if open <= now => {}
        wake => {
            plan.wake_at = wake;
            return;
        }
    }
    let now_ns = i128::from(now) * NS_PER_MS;
    while live < cap {
        let (index, attempt) = match retries.peek() {
            Some(&&(ready, i)) if ready <= now => (i, u32::from(entries[i as usize].attempt) + 1),
            next_retry => match fresh.peek() {
                Some(&i) => (i as u32, 1),
                None => {
                    plan.wake_at = next_retry.and_then(|(t, _)| open_at(&windows, *t));
                    return;
                }
            },
        };
        let (slot, after) = pace(next_slot, now, per_minute);
        if slot > now_ns {
            plan.wake_at = Some(ceil_ms(slot));
            return;
        }
        if attempt == 1 {
            fresh.next();
        } else {
            retries.next();
        }
        plan.events.push(RolloutEvent::AttemptLaunching {
            target_index: index,
            target: entries[index as usize].target.clone(),
            attempt,
        });
        next_slot = after;
        live += 1;
    }
}

/// Plans what to do at `now`.
pub fn plan(r: &Rollout, now: TimestampMs) -> Plan {
    let mut p = Plan::default();
    let schedule = r.spec.schedule.as_ref();
    let mut status = r.status;
    let mut next_slot = r.next_slot_ns;
    if status == RolloutStatus::Scheduled {
        match schedule.and_then(|s| s.start_time) {
            Some(start) if now < start => {
                p.wake_at = Some(start);
                return p;
            }
            _ => {
                p.events.push(RolloutEvent::StartTimeReached);
                status = RolloutStatus::InProgress;
                next_slot = i128::from(now) * NS_PER_MS;
            }
        }
    }
    let mut stopping = r.stopping;
    let mut cancel_live = r.cancel_live;
    let end_time = schedule.and_then(|s| s.end_time).filter(|_| !r.end_reached);
    if let Some(end) = end_time
        && !status.is_terminal()
        && now >= end
    {
        p.events.push(RolloutEvent::EndTimeReached);
        match schedule.map(|s| s.end_behavior).unwrap_or_default() {
            EndBehavior::Stop => stopping = stopping.or(Some(Stopping::Stop)),
            EndBehavior::Cancel => stopping = Some(Stopping::Cancel),
            EndBehavior::ForceCancel => {
                cancel_live = true;
                status = RolloutStatus::Canceled;
            }
        }
    }
    if status.is_terminal() {
        if cancel_live {
            cancels(r, &mut p);
        }
        return p;
    }
    if let Some(stop) = stopping {
        if r.live.is_empty() {
            p.events.push(match stop {
                Stopping::Cancel => RolloutEvent::Canceled,
                Stopping::Stop => RolloutEvent::Completed,
            });
        }
        return p;
    }
    if let Some(criterion) = crossed(r) {
        p.events.push(RolloutEvent::Aborted {
            criterion: criterion.clone(),
        });
        if r.spec.cancel_in_progress {
            cancels(r, &mut p);
        }
        return p;
    }
    let per_minute = ramp(r, &mut p.events);
    let snapshot = r.spec.target_selection == TargetSelection::Snapshot;
    if snapshot && r.targets_resolved && r.counts.queued == 0 && r.live.is_empty() {
        p.events.push(RolloutEvent::Completed);
        return p;
    }
    launches(r, now, next_slot, per_minute, &mut p);
    if let Some(end) = end_time {
        p.wake_at = Some(p.wake_at.map_or(end, |w| w.min(end)));
    }
    p
}
