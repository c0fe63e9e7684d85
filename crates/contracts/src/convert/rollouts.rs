//! Rollouts: StartRollout's spec to the domain's [`RolloutSpec`] and back, and a folded
//! [`Rollout`] as the API shows it. The wire checks are here (oneofs set, enums known,
//! numbers that fit); the limits are the domain's `rollout::validate`, whose field paths
//! are those of `RolloutSpec` and are prefixed with where the spec sits.

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::{CommandId, Target};
use fleetcmd_domain::rollout::{
    self, AbortCriterion, EndBehavior, FailureType, IncreaseCriteria, MaintenanceWindow,
    RETRY_BACKOFF_BASE_DEFAULT_SECS, Rate, RetryCriterion, RetryFailureType, RolloutCounts,
    RolloutId, RolloutSpec, RolloutStatus, RolloutSummary, Schedule, TargetSelection,
    TargetSelector,
};

use super::{
    bad_enum, closed_enum, index_path, non_empty, opt_timestamp_from_ms, opt_timestamp_to_ms,
    parameters_from_pb, parameters_to_pb, path, target_kind_from_pb, timestamp_from_ms,
};
use crate::pb;

closed_enum! {
    /// An abort criterion's `FailureType`.
    pub fn failure_type_from_pb: FailureType => pb::FailureType {
        Failed => Failed,
        Rejected => Rejected,
        TimedOut => TimedOut,
        All => All,
    }
}

closed_enum! {
    fn selection_from_pb: TargetSelection => pb::TargetSelection {
        Snapshot => Snapshot,
        Continuous => Continuous,
    }
}

closed_enum! {
    fn end_behavior_from_pb: EndBehavior => pb::EndBehavior {
        Stop => StopRollout,
        Cancel => Cancel,
        ForceCancel => ForceCancel,
    }
}

closed_enum! {
    /// A `RolloutStatus` filter.
    pub fn rollout_status_from_pb: RolloutStatus => pb::RolloutStatus {
        Scheduled => Scheduled,
        InProgress => InProgress,
        Completed => Completed,
        Canceled => Canceled,
        Aborted => Aborted,
    }
}

/// A retry criterion's failure type: FAILED, TIMED_OUT or ALL (REJECTED is never retried).
fn retry_failure_type_from_pb(
    field: &str,
    value: i32,
) -> Result<RetryFailureType, ValidationError> {
    match pb::FailureType::try_from(value) {
        Ok(pb::FailureType::Failed) => Ok(RetryFailureType::Failed),
        Ok(pb::FailureType::TimedOut) => Ok(RetryFailureType::TimedOut),
        Ok(pb::FailureType::All) => Ok(RetryFailureType::All),
        Ok(pb::FailureType::Rejected) => Err(ValidationError::new(
            field,
            "REJECTED is never retried: the device refused the command on purpose",
        )),
        Ok(pb::FailureType::Unspecified) | Err(_) => Err(bad_enum(
            field,
            "FAILURE_TYPE_FAILED, FAILURE_TYPE_TIMED_OUT, FAILURE_TYPE_ALL",
            value,
        )),
    }
}

fn retry_failure_type_to_pb(t: RetryFailureType) -> pb::FailureType {
    match t {
        RetryFailureType::Failed => pb::FailureType::Failed,
        RetryFailureType::TimedOut => pb::FailureType::TimedOut,
        RetryFailureType::All => pb::FailureType::All,
    }
}

/// An enum where UNSPECIFIED means the default.
fn or_default<T: Default>(
    value: i32,
    from_pb: impl FnOnce(i32) -> Result<T, ValidationError>,
) -> Result<T, ValidationError> {
    if value == 0 {
        Ok(T::default())
    } else {
        from_pb(value)
    }
}

fn targets_from_pb(
    at: &str,
    t: Option<pb::RolloutTargets>,
) -> Result<TargetSelector, ValidationError> {
    use pb::rollout_targets::Selector;
    let field = path(at, "targets");
    let selector = t
        .and_then(|t| t.selector)
        .ok_or_else(|| ValidationError::new(&field, "set one of list, group and query"))?;
    Ok(match selector {
        Selector::List(list) => {
            let at = path(&field, "list.targets");
            let targets = list
                .targets
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let here = index_path(&at, i);
                    let kind = target_kind_from_pb(&path(&here, "kind"), t.kind)?;
                    Target::new(kind, t.id)
                        .map_err(|e| ValidationError::new(path(&here, "id"), e.message))
                })
                .collect::<Result<_, _>>()?;
            TargetSelector::List(targets)
        }
        Selector::Group(g) => TargetSelector::Group(g),
        Selector::Query(q) => TargetSelector::Query(q),
    })
}

fn rate_from_pb(at: &str, rate: Option<pb::RolloutRate>) -> Result<Rate, ValidationError> {
    use pb::rollout_rate::Rate as R;
    let field = path(at, "rate");
    let rate = rate.and_then(|r| r.rate).ok_or_else(|| {
        ValidationError::new(&field, "set one of max_per_minute and exponential_ramp_up")
    })?;
    Ok(match rate {
        R::MaxPerMinute(max_per_minute) => Rate::Fixed { max_per_minute },
        R::ExponentialRampUp(e) => {
            let c = e.increase_after.unwrap_or_default();
            let some = |n: u32| (n != 0).then_some(n);
            Rate::ExponentialRampUp {
                base_per_minute: e.base_per_minute,
                increment_factor: e.increment_factor,
                increase_after: IncreaseCriteria {
                    notified: some(c.number_of_notified_things),
                    succeeded: some(c.number_of_succeeded_things),
                },
                max_per_minute: e.max_per_minute,
            }
        }
    })
}

fn schedule_from_pb(at: &str, s: pb::RolloutSchedule) -> Result<Schedule, ValidationError> {
    let field = path(at, "schedule");
    Ok(Schedule {
        start_time: opt_timestamp_to_ms(&path(&field, "start_time"), s.start_time)?,
        end_time: opt_timestamp_to_ms(&path(&field, "end_time"), s.end_time)?,
        end_behavior: or_default(s.end_behavior, |v| {
            end_behavior_from_pb(&path(&field, "end_behavior"), v)
        })?,
        maintenance_windows: s
            .maintenance_windows
            .into_iter()
            .map(|w| MaintenanceWindow {
                start: w.start,
                duration_minutes: w.duration_minutes,
            })
            .collect(),
    })
}

/// A spec at `at` (e.g. `spec`), checked against every limit of `rollout::validate`.
/// `allowed_targets` is not part of the API: the caller's grant fills it in.
pub fn rollout_spec_from_pb(at: &str, s: pb::RolloutSpec) -> Result<RolloutSpec, ValidationError> {
    let spec = rollout_spec_from_pb_unchecked(at, s)?;
    rollout::validate(&spec).map_err(|e| ValidationError::new(path(at, &e.field), e.message))?;
    Ok(spec)
}

/// [`rollout_spec_from_pb`] without the domain's limits: for a spec as a rollout holds it
/// (a snapshot's, whose list targets live in the target table), checked when it started.
pub fn rollout_spec_from_pb_unchecked(
    at: &str,
    s: pb::RolloutSpec,
) -> Result<RolloutSpec, ValidationError> {
    let command_id = CommandId::parse(s.command_id)
        .map_err(|e| ValidationError::new(path(at, "command_id"), e.message))?;
    let execution_timeout_secs = match s.execution_timeout_seconds {
        0 => None,
        t => Some(u64::try_from(t).map_err(|_| {
            ValidationError::new(
                path(at, "execution_timeout_seconds"),
                format!("must not be negative (0 means the default), got {t}"),
            )
        })?),
    };
    let abort_criteria = s
        .abort_criteria
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let here = index_path(&path(at, "abort_criteria"), i);
            Ok(AbortCriterion {
                failure_type: failure_type_from_pb(&path(&here, "failure_type"), c.failure_type)?,
                threshold_percentage: c.threshold_percentage,
                min_number_of_executed_things: c.min_number_of_executed_things,
            })
        })
        .collect::<Result<_, ValidationError>>()?;
    let retries = s
        .retries
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let here = index_path(&path(at, "retries"), i);
            Ok(RetryCriterion {
                failure_type: retry_failure_type_from_pb(
                    &path(&here, "failure_type"),
                    c.failure_type,
                )?,
                number_of_retries: c.number_of_retries,
            })
        })
        .collect::<Result<_, ValidationError>>()?;
    let spec = RolloutSpec {
        command_id,
        parameters: parameters_from_pb(&path(at, "parameters"), s.parameters)?,
        execution_timeout_secs,
        targets: targets_from_pb(at, s.targets)?,
        target_selection: or_default(s.target_selection, |v| {
            selection_from_pb(&path(at, "target_selection"), v)
        })?,
        rate: rate_from_pb(at, s.rate)?,
        max_in_flight: (s.max_in_flight != 0).then_some(s.max_in_flight),
        abort_criteria,
        cancel_in_progress: s.cancel_in_progress,
        retries,
        retry_backoff_base_secs: match s.retry_backoff_base_seconds {
            0 => RETRY_BACKOFF_BASE_DEFAULT_SECS,
            n => u64::from(n),
        },
        schedule: s.schedule.map(|x| schedule_from_pb(at, x)).transpose()?,
        client_token: non_empty(s.client_token),
        allowed_targets: None,
    };
    Ok(spec)
}

/// StartRollout: the rollout id and its checked spec.
pub fn start_rollout_from_pb(
    r: pb::StartRolloutRequest,
) -> Result<(RolloutId, RolloutSpec), ValidationError> {
    let id = RolloutId::parse(r.rollout_id)?;
    let spec = r
        .spec
        .ok_or_else(|| ValidationError::new("spec", "is required"))?;
    Ok((id, rollout_spec_from_pb("spec", spec)?))
}

impl From<&AbortCriterion> for pb::AbortCriterion {
    fn from(c: &AbortCriterion) -> Self {
        Self {
            failure_type: pb::FailureType::from(c.failure_type) as i32,
            threshold_percentage: c.threshold_percentage,
            min_number_of_executed_things: c.min_number_of_executed_things,
        }
    }
}

/// The inverse of [`rollout_spec_from_pb`] (`allowed_targets` stays behind).
pub fn rollout_spec_to_pb(s: &RolloutSpec) -> pb::RolloutSpec {
    use pb::rollout_rate::Rate as R;
    use pb::rollout_targets::Selector;
    let selector = match &s.targets {
        TargetSelector::List(list) => Selector::List(pb::TargetList {
            targets: list.iter().map(pb::Target::from).collect(),
        }),
        TargetSelector::Group(g) => Selector::Group(g.clone()),
        TargetSelector::Query(q) => Selector::Query(q.clone()),
    };
    let rate = match &s.rate {
        Rate::Fixed { max_per_minute } => R::MaxPerMinute(*max_per_minute),
        Rate::ExponentialRampUp {
            base_per_minute,
            increment_factor,
            increase_after,
            max_per_minute,
        } => R::ExponentialRampUp(pb::ExponentialRampUp {
            base_per_minute: *base_per_minute,
            increment_factor: *increment_factor,
            increase_after: Some(pb::RateIncreaseCriteria {
                number_of_notified_things: increase_after.notified.unwrap_or(0),
                number_of_succeeded_things: increase_after.succeeded.unwrap_or(0),
            }),
            max_per_minute: *max_per_minute,
        }),
    };
    pb::RolloutSpec {
        command_id: s.command_id.as_str().to_owned(),
        parameters: parameters_to_pb(s.parameters.clone()),
        execution_timeout_seconds: s.execution_timeout_secs.map_or(0, |t| t as i64),
        targets: Some(pb::RolloutTargets {
            selector: Some(selector),
        }),
        target_selection: pb::TargetSelection::from(s.target_selection) as i32,
        rate: Some(pb::RolloutRate { rate: Some(rate) }),
        max_in_flight: s.max_in_flight.unwrap_or(0),
        abort_criteria: s
            .abort_criteria
            .iter()
            .map(pb::AbortCriterion::from)
            .collect(),
        cancel_in_progress: s.cancel_in_progress,
        retries: s
            .retries
            .iter()
            .map(|c| pb::RetryCriterion {
                failure_type: retry_failure_type_to_pb(c.failure_type) as i32,
                number_of_retries: c.number_of_retries,
            })
            .collect(),
        retry_backoff_base_seconds: u32::try_from(s.retry_backoff_base_secs).unwrap_or(u32::MAX),
        schedule: s.schedule.as_ref().map(|x| pb::RolloutSchedule {
            start_time: opt_timestamp_from_ms(x.start_time),
            end_time: opt_timestamp_from_ms(x.end_time),
            end_behavior: pb::EndBehavior::from(x.end_behavior) as i32,
            maintenance_windows: x
                .maintenance_windows
                .iter()
                .map(|w| pb::MaintenanceWindow {
                    start: w.start.clone(),
                    duration_minutes: w.duration_minutes,
                })
                .collect(),
        }),
        client_token: s.client_token.clone().unwrap_or_default(),
    }
}

impl From<&RolloutCounts> for pb::RolloutCounts {
    fn from(c: &RolloutCounts) -> Self {
        Self {
            queued: c.queued,
            in_flight: c.in_flight,
            succeeded: c.succeeded,
            failed: c.failed,
            rejected: c.rejected,
            timed_out: c.timed_out,
            canceled: c.canceled,
            skipped_unauthorized: c.skipped_unauthorized,
            notified: c.notified,
        }
    }
}

impl From<pb::RolloutCounts> for RolloutCounts {
    fn from(c: pb::RolloutCounts) -> Self {
        Self {
            queued: c.queued,
            in_flight: c.in_flight,
            succeeded: c.succeeded,
            failed: c.failed,
            rejected: c.rejected,
            timed_out: c.timed_out,
            canceled: c.canceled,
            skipped_unauthorized: c.skipped_unauthorized,
            notified: c.notified,
        }
    }
}

/// A rollout as GetRollout, ListRollouts and WatchRollout show it. A list's targets are
/// held once, in the rollout's target table, so the spec's list comes back empty and
/// `target_count` says how many there are.
pub fn rollout_to_pb(r: &RolloutSummary) -> pb::Rollout {
    pb::Rollout {
        rollout_id: r.rollout_id.as_str().to_owned(),
        status: pb::RolloutStatus::from(r.status) as i32,
        spec: Some(rollout_spec_to_pb(&r.spec)),
        counts: Some((&r.counts).into()),
        target_count: r.target_count,
        targets_resolved: r.targets_resolved,
        current_per_minute: r.per_minute,
        aborted_by: r.aborted_by.as_ref().map(pb::AbortCriterion::from),
        stopping: r.stopping,
        created_at: Some(timestamp_from_ms(r.created_at)),
        started_at: opt_timestamp_from_ms(r.started_at),
        completed_at: opt_timestamp_from_ms(r.completed_at),
    }
}

/// The inverse of [`rollout_to_pb`] (for the bus, which carries rollouts as the API shows
/// them). `allowed_targets` is not part of it.
pub fn rollout_from_pb(r: pb::Rollout) -> Result<RolloutSummary, ValidationError> {
    let spec = r
        .spec
        .ok_or_else(|| ValidationError::new("rollout.spec", "is required"))?;
    let c = r.counts.unwrap_or_default();
    Ok(RolloutSummary {
        rollout_id: RolloutId::parse(r.rollout_id)?,
        spec: rollout_spec_from_pb_unchecked("rollout.spec", spec)?,
        status: rollout_status_from_pb("rollout.status", r.status)?,
        aborted_by: r
            .aborted_by
            .map(|a| {
                Ok::<_, ValidationError>(AbortCriterion {
                    failure_type: failure_type_from_pb(
                        "rollout.aborted_by.failure_type",
                        a.failure_type,
                    )?,
                    threshold_percentage: a.threshold_percentage,
                    min_number_of_executed_things: a.min_number_of_executed_things,
                })
            })
            .transpose()?,
        counts: c.into(),
        target_count: r.target_count,
        targets_resolved: r.targets_resolved,
        per_minute: r.current_per_minute,
        stopping: r.stopping,
        created_at: opt_timestamp_to_ms("rollout.created_at", r.created_at)?.unwrap_or(0),
        started_at: opt_timestamp_to_ms("rollout.started_at", r.started_at)?,
        completed_at: opt_timestamp_to_ms("rollout.completed_at", r.completed_at)?,
    })
}

#[cfg(test)]
#[path = "rollouts_tests.rs"]
mod tests;
