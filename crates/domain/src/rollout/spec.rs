//! What a caller asks for when starting a rollout, and its validation. Field names follow
//! AWS IoT Jobs' rollout, abort, retry and scheduling configs in snake_case; the retry
//! backoff and `allowed_targets` are fleetcmd's additions.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::cron::Cron;
use crate::error::ValidationError;
use crate::ids::{CommandId, Target};
use crate::limits::{PARAMETERS_MAX, TIMEOUT_MAX_SECS, TIMEOUT_MIN_SECS};
use crate::model::{ParameterValue, TimestampMs};
use crate::thing::validate_group_name;

/// Most targets a `List` selector may name.
pub const LIST_TARGETS_MAX: usize = 10_000;
/// Most targets one rollout may hold, whatever resolves them (the target index is a `u32`).
pub const ROLLOUT_TARGETS_MAX: usize = 1_000_000;
/// `max_per_minute` (and `base_per_minute`) range.
pub const PER_MINUTE_MAX: u32 = 1_000_000;
pub const ABORT_CRITERIA_MAX: usize = 5;
pub const RETRIES_MAX: u32 = 10;
pub const MAINTENANCE_WINDOWS_MAX: usize = 10;
pub const WINDOW_MINUTES_MAX: u32 = 1_440;
/// Default first retry delay; each further retry doubles it, up to [`RETRY_BACKOFF_CAP_SECS`].
pub const RETRY_BACKOFF_BASE_DEFAULT_SECS: u64 = 10;
pub const RETRY_BACKOFF_CAP_SECS: u64 = 3_600;
pub const ALLOWED_TARGETS_MAX: usize = 100;

/// Which devices a rollout reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSelector {
    /// A fixed list of distinct targets (1–10,000).
    List(Vec<Target>),
    /// The members of a static thing group, resolved by the owner.
    Group(String),
    /// The things matching a [`crate::query`] query, resolved by the owner.
    Query(String),
}

impl TargetSelector {
    /// The query a group or a query selector stands for (`None` for a list): what is read
    /// from the registry to find its things. A group is the query `group:<name>`; the error
    /// names the field `targets.query`.
    pub fn query(&self) -> Option<Result<crate::query::Query, ValidationError>> {
        match self {
            Self::List(_) => None,
            Self::Group(g) => Some(Ok(crate::query::Query::Term(crate::query::Term::Group(
                g.clone(),
            )))),
            Self::Query(q) => Some(
                crate::query::parse(q)
                    .map_err(|e| ValidationError::new("targets.query", e.message)),
            ),
        }
    }
}

/// AWS's `targetSelection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetSelection {
    /// The targets resolved at the start; the rollout completes when all have settled.
    #[default]
    Snapshot,
    /// Targets keep arriving (new group members, things newly matching the query); the
    /// rollout never completes by itself, only by cancel, abort or its end time.
    Continuous,
}

/// How fast executions are started ("notified").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    Fixed {
        max_per_minute: u32,
    },
    /// `base_per_minute × increment_factor^k`, k growing by one after every
    /// `increase_after` targets, capped at `max_per_minute`.
    ExponentialRampUp {
        base_per_minute: u32,
        increment_factor: f64,
        increase_after: IncreaseCriteria,
        max_per_minute: u32,
    },
}

impl Rate {
    /// The rate a rollout starts at.
    pub fn initial_per_minute(&self) -> u32 {
        match self {
            Self::Fixed { max_per_minute } => *max_per_minute,
            Self::ExponentialRampUp {
                base_per_minute, ..
            } => *base_per_minute,
        }
    }
}

/// AWS's `rateIncreaseCriteria`: exactly one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IncreaseCriteria {
    /// After this many more targets were notified (their first execution started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<u32>,
    /// After this many more targets succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<u32>,
}

/// Which final outcomes an abort criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureType {
    Failed,
    Rejected,
    TimedOut,
    /// Failed, rejected and timed out together.
    All,
}

/// Abort when at least `threshold_percentage` of the targets with a final outcome failed
/// this way, once at least `min_number_of_executed_things` have one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortCriterion {
    pub failure_type: FailureType,
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u32,
}

/// Which failures a retry criterion re-runs (a REJECTED execution is never retried: the
/// device refused the command on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryFailureType {
    Failed,
    TimedOut,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryCriterion {
    pub failure_type: RetryFailureType,
    pub number_of_retries: u32,
}

/// What happens at `end_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndBehavior {
    /// No new launches; the rollout completes once nothing is in flight.
    #[default]
    Stop,
    /// No new launches; the rollout ends CANCELED once nothing is in flight.
    Cancel,
    /// CANCELED at once, and live executions are canceled.
    ForceCancel,
}

/// Launches happen only inside a window: from each minute matching `start` (5-field cron,
/// UTC) for `duration_minutes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub start: String,
    pub duration_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<TimestampMs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<TimestampMs>,
    #[serde(default)]
    pub end_behavior: EndBehavior,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// StartRollout, converted from the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub command_id: CommandId,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// Per execution; `None`: the command default (10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_secs: Option<u64>,
    pub targets: TargetSelector,
    #[serde(default)]
    pub target_selection: TargetSelection,
    pub rate: Rate,
    /// Most executions of this rollout live at once (launching or launched, not settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abort_criteria: Vec<AbortCriterion>,
    /// When an abort criterion fires, also cancel the executions still live.
    #[serde(default)]
    pub cancel_in_progress: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryCriterion>,
    /// Delay before the first retry; doubled for each further one, capped at one hour.
    #[serde(default = "default_backoff")]
    pub retry_backoff_base_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// The target patterns (`thing/lab-*`, policy syntax) the caller was granted
    /// StartRollout on for this command; `None`: all. Targets outside them are skipped and
    /// counted, so a narrowly granted caller cannot reach other things through a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_targets: Option<Vec<String>>,
}

fn default_backoff() -> u64 {
    RETRY_BACKOFF_BASE_DEFAULT_SECS
}

impl RolloutSpec {
    /// A spec with every optional setting at its default.
    pub fn new(command_id: CommandId, targets: TargetSelector, rate: Rate) -> Self {
        Self {
            command_id,
            parameters: BTreeMap::new(),
            execution_timeout_secs: None,
            targets,
            target_selection: TargetSelection::Snapshot,
            rate,
            max_in_flight: None,
            abort_criteria: Vec::new(),
            cancel_in_progress: false,
            retries: Vec::new(),
            retry_backoff_base_secs: RETRY_BACKOFF_BASE_DEFAULT_SECS,
            schedule: None,
            client_token: None,
            allowed_targets: None,
        }
    }

    /// How many retries a failure with this final status may still get in total: the
    /// criterion naming its type, else the `All` one, else none.
    pub(crate) fn retries_for(&self, timed_out: bool) -> u32 {
        let specific = if timed_out {
            RetryFailureType::TimedOut
        } else {
            RetryFailureType::Failed
        };
        let find = |t| self.retries.iter().find(|c| c.failure_type == t);
        find(specific)
            .or_else(|| find(RetryFailureType::All))
            .map_or(0, |c| c.number_of_retries)
    }

    /// The wait before attempt `failed_attempt + 1`, in milliseconds.
    pub(crate) fn backoff_ms(&self, failed_attempt: u32) -> i64 {
        let doublings = failed_attempt.saturating_sub(1).min(20);
        let secs = self
            .retry_backoff_base_secs
            .saturating_mul(1 << doublings)
            .min(RETRY_BACKOFF_CAP_SECS);
        secs as i64 * 1000
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError::new(field, message)
}

fn check_per_minute(field: &str, v: u32) -> Result<(), ValidationError> {
    if !(1..=PER_MINUTE_MAX).contains(&v) {
        return Err(err(
            field,
            format!("must be between 1 and {PER_MINUTE_MAX}, got {v}"),
        ));
    }
    Ok(())
}

fn validate_targets(spec: &RolloutSpec) -> Result<(), ValidationError> {
    match &spec.targets {
        TargetSelector::List(list) => {
            if list.is_empty() || list.len() > LIST_TARGETS_MAX {
                return Err(err(
                    "targets.list",
                    format!(
                        "a list must hold 1–{LIST_TARGETS_MAX} targets, got {}",
                        list.len()
                    ),
                ));
            }
            let mut seen = HashMap::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                // Deserialized targets bypassed `Target::new`: check them again.
                Target::new(t.kind, t.id.clone())
                    .map_err(|e| err(format!("targets.list.targets[{i}]"), e.message))?;
                if let Some(j) = seen.insert(t, i) {
                    return Err(err(
                        format!("targets.list.targets[{i}]"),
                        format!("{t} is listed twice (also targets[{j}])"),
                    ));
                }
            }
            if spec.target_selection == TargetSelection::Continuous {
                return Err(err(
                    "target_selection",
                    "CONTINUOUS needs a group or query target: a list never changes",
                ));
            }
        }
        TargetSelector::Group(g) => {
            validate_group_name(g).map_err(|e| err("targets.group", e.message))?
        }
        TargetSelector::Query(q) => {
            crate::query::parse(q).map_err(|e| err("targets.query", e.message))?;
        }
    }
    Ok(())
}

fn validate_rate(rate: &Rate) -> Result<(), ValidationError> {
    match rate {
        Rate::Fixed { max_per_minute } => check_per_minute("rate.max_per_minute", *max_per_minute),
        Rate::ExponentialRampUp {
            base_per_minute,
            increment_factor,
            increase_after,
            max_per_minute,
        } => {
            check_per_minute("rate.max_per_minute", *max_per_minute)?;
            check_per_minute("rate.base_per_minute", *base_per_minute)?;
            if base_per_minute > max_per_minute {
                return Err(err(
                    "rate.base_per_minute",
                    format!(
                        "must not exceed max_per_minute ({max_per_minute}), got {base_per_minute}"
                    ),
                ));
            }
            if !(1.1..=5.0).contains(increment_factor) {
                return Err(err(
                    "rate.increment_factor",
                    format!("must be between 1.1 and 5.0, got {increment_factor}"),
                ));
            }
            let n = match (increase_after.notified, increase_after.succeeded) {
                (Some(n), None) | (None, Some(n)) => n,
                _ => {
                    return Err(err(
                        "rate.increase_after",
                        "set exactly one of notified and succeeded",
                    ));
                }
            };
            check_per_minute("rate.increase_after", n)
        }
    }
}

fn validate_schedule(s: &Schedule) -> Result<(), ValidationError> {
    if let (Some(start), Some(end)) = (s.start_time, s.end_time)
        && end <= start
    {
        return Err(err(
            "schedule.end_time",
            format!("must be after start_time ({start}), got {end}"),
        ));
    }
    if s.maintenance_windows.len() > MAINTENANCE_WINDOWS_MAX {
        return Err(err(
            "schedule.maintenance_windows",
            format!(
                "at most {MAINTENANCE_WINDOWS_MAX} windows, got {}",
                s.maintenance_windows.len()
            ),
        ));
    }
    for (i, w) in s.maintenance_windows.iter().enumerate() {
        let at = format!("schedule.maintenance_windows[{i}]");
        Cron::parse(&w.start).map_err(|e| err(format!("{at}.start"), e))?;
        if !(1..=WINDOW_MINUTES_MAX).contains(&w.duration_minutes) {
            return Err(err(
                format!("{at}.duration_minutes"),
                format!(
                    "must be between 1 and {WINDOW_MINUTES_MAX}, got {}",
                    w.duration_minutes
                ),
            ));
        }
    }
    Ok(())
}

/// Checks every field of a spec against its limit; the error names the field.
pub fn validate(spec: &RolloutSpec) -> Result<(), ValidationError> {
    if spec.parameters.len() > PARAMETERS_MAX {
        return Err(err(
            "parameters",
            format!("at most {PARAMETERS_MAX} parameters"),
        ));
    }
    if let Some(t) = spec.execution_timeout_secs
        && !(TIMEOUT_MIN_SECS..=TIMEOUT_MAX_SECS).contains(&t)
    {
        return Err(err(
            "execution_timeout_seconds",
            format!("must be between {TIMEOUT_MIN_SECS} and {TIMEOUT_MAX_SECS} seconds, got {t}"),
        ));
    }
    validate_targets(spec)?;
    validate_rate(&spec.rate)?;
    if let Some(n) = spec.max_in_flight
        && !(1..=ROLLOUT_TARGETS_MAX as u32).contains(&n)
    {
        return Err(err(
            "max_in_flight",
            format!("must be between 1 and {ROLLOUT_TARGETS_MAX}, got {n}"),
        ));
    }
    if spec.abort_criteria.len() > ABORT_CRITERIA_MAX {
        return Err(err(
            "abort_criteria",
            format!(
                "at most {ABORT_CRITERIA_MAX} criteria, got {}",
                spec.abort_criteria.len()
            ),
        ));
    }
    for (i, c) in spec.abort_criteria.iter().enumerate() {
        let p = c.threshold_percentage;
        if !(p > 0.0 && p <= 100.0) {
            return Err(err(
                format!("abort_criteria[{i}].threshold_percentage"),
                format!("must be in (0, 100], got {p}"),
            ));
        }
        if c.min_number_of_executed_things == 0 {
            return Err(err(
                format!("abort_criteria[{i}].min_number_of_executed_things"),
                "must be at least 1",
            ));
        }
    }
    for (i, c) in spec.retries.iter().enumerate() {
        if c.number_of_retries > RETRIES_MAX {
            return Err(err(
                format!("retries[{i}].number_of_retries"),
                format!(
                    "must be between 0 and {RETRIES_MAX}, got {}",
                    c.number_of_retries
                ),
            ));
        }
        if spec.retries[..i]
            .iter()
            .any(|o| o.failure_type == c.failure_type)
        {
            return Err(err(
                format!("retries[{i}].failure_type"),
                format!("{:?} is named twice", c.failure_type),
            ));
        }
    }
    if !(1..=RETRY_BACKOFF_CAP_SECS).contains(&spec.retry_backoff_base_secs) {
        return Err(err(
            "retry_backoff_base_seconds",
            format!(
                "must be between 1 and {RETRY_BACKOFF_CAP_SECS}, got {}",
                spec.retry_backoff_base_secs
            ),
        ));
    }
    if let Some(s) = &spec.schedule {
        validate_schedule(s)?;
    }
    if let Some(token) = &spec.client_token {
        crate::start::validate_client_token(token)?;
    }
    if let Some(patterns) = &spec.allowed_targets {
        if patterns.is_empty() || patterns.len() > ALLOWED_TARGETS_MAX {
            return Err(err(
                "allowed_targets",
                format!("must list 1–{ALLOWED_TARGETS_MAX} patterns (omit it for all targets)"),
            ));
        }
        for (i, p) in patterns.iter().enumerate() {
            let shaped = p == "*" || p.starts_with("thing/") || p.starts_with("client/");
            if !shaped || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(
                    format!("allowed_targets[{i}]"),
                    format!(
                        "{p:?} must be \"*\" or start with \"thing/\" or \"client/\", without whitespace"
                    ),
                ));
            }
        }
    }
    Ok(())
}
