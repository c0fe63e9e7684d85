use std::collections::HashMap;

use fleetcmd_domain::rollout::{RolloutEvent, RolloutInput, apply, decide};

use super::*;
use crate::convert::test_support::{err_field, pb_thing, ts};

/// A spec with every field set to something other than its default.
fn full_spec() -> pb::RolloutSpec {
    pb::RolloutSpec {
        command_id: "reboot".into(),
        parameters: HashMap::from([(
            "delay".to_owned(),
            pb::ParameterValue {
                value: Some(pb::parameter_value::Value::I(5)),
            },
        )]),
        execution_timeout_seconds: 60,
        targets: Some(pb::RolloutTargets {
            selector: Some(pb::rollout_targets::Selector::Group("lab".into())),
        }),
        target_selection: pb::TargetSelection::Continuous as i32,
        rate: Some(pb::RolloutRate {
            rate: Some(pb::rollout_rate::Rate::ExponentialRampUp(
                pb::ExponentialRampUp {
                    base_per_minute: 10,
                    increment_factor: 2.0,
                    increase_after: Some(pb::RateIncreaseCriteria {
                        number_of_notified_things: 0,
                        number_of_succeeded_things: 20,
                    }),
                    max_per_minute: 1_000,
                },
            )),
        }),
        max_in_flight: 50,
        abort_criteria: vec![pb::AbortCriterion {
            failure_type: pb::FailureType::TimedOut as i32,
            threshold_percentage: 12.5,
            min_number_of_executed_things: 40,
        }],
        cancel_in_progress: true,
        retries: vec![pb::RetryCriterion {
            failure_type: pb::FailureType::Failed as i32,
            number_of_retries: 3,
        }],
        retry_backoff_base_seconds: 30,
        schedule: Some(pb::RolloutSchedule {
            start_time: Some(ts(1_800_000_000, 0)),
            end_time: Some(ts(1_800_086_400, 0)),
            end_behavior: pb::EndBehavior::ForceCancel as i32,
            maintenance_windows: vec![pb::MaintenanceWindow {
                start: "0 2 * * 1-5".into(),
                duration_minutes: 120,
            }],
        }),
        client_token: "deploy-42".into(),
    }
}

/// The smallest valid spec: a list of two things at a fixed rate.
fn list_spec() -> pb::RolloutSpec {
    pb::RolloutSpec {
        command_id: "reboot".into(),
        targets: Some(pb::RolloutTargets {
            selector: Some(pb::rollout_targets::Selector::List(pb::TargetList {
                targets: vec![pb_thing("lamp-1"), pb_thing("lamp-2")],
            })),
        }),
        rate: Some(pb::RolloutRate {
            rate: Some(pb::rollout_rate::Rate::MaxPerMinute(600)),
        }),
        ..Default::default()
    }
}

fn start(spec: pb::RolloutSpec) -> Result<(RolloutId, RolloutSpec), ValidationError> {
    start_rollout_from_pb(pb::StartRolloutRequest {
        rollout_id: "r-1".into(),
        spec: Some(spec),
    })
}

#[test]
fn a_spec_with_every_field_set_round_trips() {
    let (id, spec) = start(full_spec()).unwrap();
    assert_eq!(id.as_str(), "r-1");
    assert_eq!(spec.max_in_flight, Some(50));
    assert_eq!(spec.retry_backoff_base_secs, 30);
    assert_eq!(
        spec.schedule.as_ref().unwrap().end_behavior,
        EndBehavior::ForceCancel
    );
    assert_eq!(rollout_spec_to_pb(&spec), full_spec());
    let (_, list) = start(list_spec()).unwrap();
    assert_eq!(rollout_spec_to_pb(&list).targets, list_spec().targets);
}

#[test]
fn unset_settings_take_their_defaults() {
    let (_, spec) = start(list_spec()).unwrap();
    assert_eq!(spec.target_selection, TargetSelection::Snapshot);
    assert_eq!(
        spec.retry_backoff_base_secs,
        RETRY_BACKOFF_BASE_DEFAULT_SECS
    );
    assert_eq!(
        (
            spec.max_in_flight,
            spec.execution_timeout_secs,
            &spec.client_token
        ),
        (None, None, &None)
    );
    let mut s = full_spec();
    s.schedule.as_mut().unwrap().end_behavior = 0;
    let (_, spec) = start(s).unwrap();
    assert_eq!(spec.schedule.unwrap().end_behavior, EndBehavior::Stop);
}

#[test]
fn every_bad_field_is_named_by_its_api_path() {
    type Spoil = fn(&mut pb::RolloutSpec);
    let cases: [(Spoil, &str); 13] = [
        (|s| s.command_id = "a b".into(), "spec.command_id"),
        (|s| s.targets = None, "spec.targets"),
        (|s| s.rate = None, "spec.rate"),
        (
            |s| s.rate.as_mut().unwrap().rate = Some(pb::rollout_rate::Rate::MaxPerMinute(0)),
            "spec.rate.max_per_minute",
        ),
        (
            |s| s.execution_timeout_seconds = -1,
            "spec.execution_timeout_seconds",
        ),
        (|s| s.target_selection = 9, "spec.target_selection"),
        (
            |s| {
                let Some(pb::rollout_targets::Selector::List(l)) =
                    &mut s.targets.as_mut().unwrap().selector
                else {
                    unreachable!()
                };
                l.targets[1].kind = 0;
            },
            "spec.targets.list.targets[1].kind",
        ),
        (
            |s| {
                let Some(pb::rollout_targets::Selector::List(l)) =
                    &mut s.targets.as_mut().unwrap().selector
                else {
                    unreachable!()
                };
                l.targets[1].id = "lamp-1".into();
            },
            "spec.targets.list.targets[1]",
        ),
        (
            |s| {
                s.abort_criteria = vec![pb::AbortCriterion {
                    failure_type: 0,
                    threshold_percentage: 5.0,
                    min_number_of_executed_things: 1,
                }]
            },
            "spec.abort_criteria[0].failure_type",
        ),
        (
            |s| {
                s.retries = vec![pb::RetryCriterion {
                    failure_type: pb::FailureType::Rejected as i32,
                    number_of_retries: 1,
                }]
            },
            "spec.retries[0].failure_type",
        ),
        (
            |s| {
                s.schedule = Some(pb::RolloutSchedule {
                    start_time: Some(ts(i64::MAX, 0)),
                    ..Default::default()
                })
            },
            "spec.schedule.start_time",
        ),
        (
            |s| {
                s.schedule = Some(pb::RolloutSchedule {
                    maintenance_windows: vec![pb::MaintenanceWindow {
                        start: "61 * * * *".into(),
                        duration_minutes: 10,
                    }],
                    ..Default::default()
                })
            },
            "spec.schedule.maintenance_windows[0].start",
        ),
        (
            |s| s.retry_backoff_base_seconds = 3_601,
            "spec.retry_backoff_base_seconds",
        ),
    ];
    for (spoil, field) in cases {
        let mut s = list_spec();
        spoil(&mut s);
        assert_eq!(err_field(start(s)), field);
    }
    let no_spec = start_rollout_from_pb(pb::StartRolloutRequest {
        rollout_id: "r-1".into(),
        spec: None,
    });
    assert_eq!(err_field(no_spec), "spec");
    let bad_id = start_rollout_from_pb(pb::StartRolloutRequest {
        rollout_id: "r/1".into(),
        spec: Some(list_spec()),
    });
    assert_eq!(err_field(bad_id), "rollout_id");
}

#[test]
fn a_started_rollout_shows_its_status_counts_and_times() {
    let (id, spec) = start(list_spec()).unwrap();
    let at = 1_800_000_000_000;
    let input = RolloutInput::Start {
        rollout_id: id,
        spec: Box::new(spec),
    };
    let events = decide(None, &input, at).unwrap();
    assert!(matches!(events[0], RolloutEvent::RolloutStarted { .. }));
    let mut state = None;
    for e in &events {
        apply(&mut state, e, at);
    }
    let summary = state.as_ref().unwrap().summary();
    let shown = rollout_to_pb(&summary);
    assert_eq!(rollout_from_pb(shown.clone()).unwrap(), summary);
    assert_eq!(shown.rollout_id, "r-1");
    assert_eq!(shown.status, pb::RolloutStatus::InProgress as i32);
    assert_eq!(shown.target_count, 2);
    assert!(shown.targets_resolved);
    assert_eq!(shown.current_per_minute, 600);
    assert_eq!(shown.counts.unwrap().queued, 2);
    assert_eq!(shown.created_at, Some(ts(1_800_000_000, 0)));
    assert_eq!(shown.completed_at, None);
    assert_eq!(shown.spec.unwrap().command_id, "reboot");
}
