//! Validation, starting, targets, completion, cancel, duplicates, crash recovery, memory.

use super::*;
use crate::error::RejectionCode;
use ExecutionStatus::*;

#[test]
fn validate_names_the_field_and_the_limit() {
    let base = || list(3, 100);
    let ramp = |base_per_minute, increment_factor, notified, succeeded| Rate::ExponentialRampUp {
        base_per_minute,
        increment_factor,
        increase_after: IncreaseCriteria {
            notified,
            succeeded,
        },
        max_per_minute: 100,
    };
    let window = |start: &str, duration_minutes| Schedule {
        maintenance_windows: vec![MaintenanceWindow {
            start: start.into(),
            duration_minutes,
        }],
        ..Schedule::default()
    };
    type Edit = Box<dyn Fn(&mut RolloutSpec)>;
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|s| s.rate = Rate::Fixed { max_per_minute: 0 }),
            "rate.max_per_minute",
            "1 and 1000000",
        ),
        (
            Box::new(|s| {
                s.rate = Rate::Fixed {
                    max_per_minute: 1_000_001,
                }
            }),
            "rate.max_per_minute",
            "got 1000001",
        ),
        (
            Box::new(move |s| s.rate = ramp(200, 2.0, Some(1), None)),
            "rate.base_per_minute",
            "max_per_minute (100)",
        ),
        (
            Box::new(move |s| s.rate = ramp(10, 1.05, Some(1), None)),
            "rate.increment_factor",
            "1.1 and 5.0",
        ),
        (
            Box::new(move |s| s.rate = ramp(10, f64::NAN, Some(1), None)),
            "rate.increment_factor",
            "NaN",
        ),
        (
            Box::new(move |s| s.rate = ramp(10, 2.0, Some(1), Some(1))),
            "rate.increase_after",
            "exactly one",
        ),
        (
            Box::new(move |s| s.rate = ramp(10, 2.0, None, None)),
            "rate.increase_after",
            "exactly one",
        ),
        (
            Box::new(|s| s.targets = TargetSelector::List(vec![])),
            "targets.list",
            "1–10000",
        ),
        (
            Box::new(|s| s.targets = TargetSelector::List(things(10_001))),
            "targets.list",
            "got 10001",
        ),
        (
            Box::new(|s| s.targets = TargetSelector::List([things(2), things(1)].concat())),
            "targets.list.targets[2]",
            "twice (also targets[0])",
        ),
        (
            Box::new(|s| s.target_selection = TargetSelection::Continuous),
            "target_selection",
            "group or query",
        ),
        (
            Box::new(|s| s.targets = TargetSelector::Group("a b".into())),
            "targets.group",
            "[a-zA-Z0-9:_-]",
        ),
        (
            Box::new(|s| s.targets = TargetSelector::Query("group:".into())),
            "targets.query",
            "column 7",
        ),
        (
            Box::new(|s| s.max_in_flight = Some(0)),
            "max_in_flight",
            "between 1",
        ),
        (
            Box::new(|s| s.execution_timeout_secs = Some(0)),
            "execution_timeout_seconds",
            "1 and 43200",
        ),
        (
            Box::new(|s| {
                s.abort_criteria = vec![AbortCriterion {
                    failure_type: FailureType::All,
                    threshold_percentage: 0.0,
                    min_number_of_executed_things: 1,
                }]
            }),
            "abort_criteria[0].threshold_percentage",
            "(0, 100]",
        ),
        (
            Box::new(|s| {
                s.abort_criteria = vec![AbortCriterion {
                    failure_type: FailureType::All,
                    threshold_percentage: 100.5,
                    min_number_of_executed_things: 1,
                }]
            }),
            "abort_criteria[0].threshold_percentage",
            "100.5",
        ),
        (
            Box::new(|s| {
                s.abort_criteria = vec![AbortCriterion {
                    failure_type: FailureType::All,
                    threshold_percentage: 5.0,
                    min_number_of_executed_things: 0,
                }]
            }),
            "abort_criteria[0].min_number_of_executed_things",
            "at least 1",
        ),
        (
            Box::new(|s| {
                s.abort_criteria = vec![
                    AbortCriterion {
                        failure_type: FailureType::All,
                        threshold_percentage: 5.0,
                        min_number_of_executed_things: 1
                    };
                    6
                ]
            }),
            "abort_criteria",
            "at most 5",
        ),
        (
            Box::new(|s| s.retries = vec![retry(RetryFailureType::All, 11)]),
            "retries[0].number_of_retries",
            "0 and 10",
        ),
        (
            Box::new(|s| {
                s.retries = vec![
                    RetryCriterion {
                        failure_type: RetryFailureType::All,
                        number_of_retries: 1
                    };
                    2
                ]
            }),
            "retries[1].failure_type",
            "twice",
        ),
        (
            Box::new(|s| s.retry_backoff_base_secs = 0),
            "retry_backoff_base_seconds",
            "1 and 3600",
        ),
        (
            Box::new(|s| {
                s.schedule = Some(Schedule {
                    start_time: Some(T0),
                    end_time: Some(T0),
                    ..Schedule::default()
                })
            }),
            "schedule.end_time",
            "after start_time",
        ),
        (
            Box::new(move |s| s.schedule = Some(window("0 25 * * *", 60))),
            "schedule.maintenance_windows[0].start",
            "hour field",
        ),
        (
            Box::new(move |s| s.schedule = Some(window("0 2 * * *", 0))),
            "schedule.maintenance_windows[0].duration_minutes",
            "1 and 1440",
        ),
        (
            Box::new(move |s| s.schedule = Some(window("0 2 * * *", 1_441))),
            "schedule.maintenance_windows[0].duration_minutes",
            "got 1441",
        ),
        (
            Box::new(|s| s.client_token = Some("has space".into())),
            "client_token",
            "printable",
        ),
        (
            Box::new(|s| s.allowed_targets = Some(vec![])),
            "allowed_targets",
            "1–100",
        ),
        (
            Box::new(|s| s.allowed_targets = Some(vec!["lab-*".into()])),
            "allowed_targets[0]",
            "thing/",
        ),
    ];
    assert_eq!(validate(&base()), Ok(()));
    for (edit, field, message) in cases {
        let mut s = base();
        edit(&mut s);
        let err = validate(&s).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(message), "{field}: {}", err.message);
    }
}

fn start_input(spec: RolloutSpec) -> RolloutInput {
    RolloutInput::Start {
        rollout_id: RolloutId::parse("ro-1").unwrap(),
        spec: Box::new(spec),
    }
}

#[test]
fn start_is_idempotent_on_the_client_token() {
    let mut s = list(3, 100);
    s.client_token = Some("tok-1".into());
    let mut sim = Sim::start(s.clone(), T0);
    assert_eq!(
        sim.input(start_input(s.clone())).unwrap(),
        vec![],
        "same token, same spec"
    );
    let mut other = s.clone();
    other.rate = Rate::Fixed { max_per_minute: 5 };
    let err = sim.input(start_input(other)).unwrap_err();
    assert_eq!(err.code, RejectionCode::Conflict);
    assert!(err.message.contains("different spec"));
    s.client_token = None;
    assert_eq!(
        sim.input(start_input(s)).unwrap_err().code,
        RejectionCode::Conflict
    );
    assert_eq!(sim.log.len(), 1);
    let err = decide(None, &RolloutInput::Cancel { force: false }, T0).unwrap_err();
    assert_eq!(err.code, RejectionCode::ResourceNotFound);
}

#[test]
fn duplicate_targets_are_ignored_and_a_list_is_fixed() {
    let mut sim = Sim::start(group(100), T0);
    sim.add(things(3));
    let events = sim
        .input(RolloutInput::AddTargets {
            targets: [things(5), things(2)].concat(),
        })
        .unwrap();
    assert_eq!(
        events,
        vec![RolloutEvent::TargetsAdded {
            targets: things(5)[3..].to_vec()
        }]
    );
    assert_eq!(
        sim.input(RolloutInput::AddTargets { targets: things(5) })
            .unwrap(),
        vec![]
    );
    assert_eq!((sim.r().target_count(), sim.r().counts().queued), (5, 5));
    assert_eq!(sim.r().find_target(&things(5)[4]).map(|t| t.index), Some(4));
    let mut listed = Sim::start(list(2, 100), T0);
    assert_eq!(listed.r().target_count(), 2);
    let err = listed
        .input(RolloutInput::AddTargets { targets: things(1) })
        .unwrap_err();
    assert_eq!(err.code, RejectionCode::FailedPrecondition);
}

#[test]
fn snapshot_completes_only_once_resolved_and_settled() {
    let mut sim = Sim::start(group(60_000), T0);
    sim.add(things(2));
    sim.run(T0 + 10, Succeeded);
    assert_eq!(sim.r().counts().succeeded, 2);
    assert_eq!(
        sim.r().status(),
        RolloutStatus::InProgress,
        "more targets may come"
    );
    sim.input(RolloutInput::TargetsResolved).unwrap();
    assert_eq!(sim.input(RolloutInput::TargetsResolved).unwrap(), vec![]);
    assert_eq!(sim.plan().events, vec![RolloutEvent::Completed]);
    assert_eq!(sim.r().completed_at(), Some(sim.now));
    let err = sim
        .input(RolloutInput::AddTargets { targets: things(3) })
        .unwrap_err();
    assert_eq!(
        err.code,
        RejectionCode::FailedPrecondition,
        "the snapshot is closed"
    );
}

#[test]
fn continuous_keeps_taking_targets_until_canceled() {
    let mut s = spec(TargetSelector::Query("group:lab".into()), 60_000);
    s.target_selection = TargetSelection::Continuous;
    let mut sim = Sim::start(s, T0);
    sim.add(things(2));
    sim.input(RolloutInput::TargetsResolved).unwrap();
    sim.run(T0 + 10, Succeeded);
    assert_eq!(
        sim.plan(),
        Plan::default(),
        "all settled, but a continuous rollout stays open"
    );
    sim.now += MIN;
    sim.add(things(3));
    sim.run(sim.now + 10, Succeeded);
    assert_eq!(sim.r().counts().succeeded, 3);
    assert_eq!(sim.r().status(), RolloutStatus::InProgress);
    let events = sim.input(RolloutInput::Cancel { force: false }).unwrap();
    assert_eq!(
        events,
        vec![
            RolloutEvent::CancelRequested { force: false },
            RolloutEvent::Canceled
        ]
    );
}

#[test]
fn targets_outside_allowed_targets_are_skipped_and_counted() {
    let mut s = group(60_000);
    s.allowed_targets = Some(vec!["thing/dev-1*".into(), "client/*".into()]);
    let mut sim = Sim::start(s, T0);
    sim.add(things(12));
    sim.add(vec![Target::client("dev-0").unwrap()]);
    sim.input(RolloutInput::TargetsResolved).unwrap();
    sim.run(T0 + 100, Succeeded);
    let launched: Vec<String> = sim
        .launches
        .iter()
        .map(|l| sim.r().target(l.1).unwrap().target.to_string())
        .collect();
    assert_eq!(
        launched,
        [
            "thing/dev-1",
            "thing/dev-10",
            "thing/dev-11",
            "client/dev-0"
        ]
    );
    let c = sim.r().counts();
    assert_eq!((c.skipped_unauthorized, c.succeeded, c.queued), (9, 4, 0));
    assert_eq!(
        sim.r().find_target(&things(1)[0]).unwrap().state,
        TargetState::SkippedUnauthorized
    );
    assert_eq!(sim.r().status(), RolloutStatus::Completed);
}

#[test]
fn cancel_waits_for_in_flight_executions_and_force_does_not() {
    let mut sim = Sim::start(list(5, 60_000), T0);
    let (_, a) = sim.step();
    sim.now += 1;
    let (_, b) = sim.step();
    // A graceful cancel: no new launches, CANCELED once the two in flight settle.
    assert_eq!(
        sim.input(RolloutInput::Cancel { force: false }).unwrap(),
        vec![RolloutEvent::CancelRequested { force: false }]
    );
    assert_eq!(
        sim.input(RolloutInput::Cancel { force: false }).unwrap(),
        vec![],
        "repeated"
    );
    sim.now += MIN;
    assert_eq!(sim.plan(), Plan::default());
    assert!(sim.r().is_stopping());
    sim.settle(&a[0], Succeeded);
    assert_eq!(sim.plan(), Plan::default());
    // Escalating to force: CANCELED at once, the live execution listed for cancel.
    let events = sim.input(RolloutInput::Cancel { force: true }).unwrap();
    assert_eq!(
        events,
        vec![
            RolloutEvent::CancelRequested { force: true },
            RolloutEvent::Canceled
        ]
    );
    assert_eq!(sim.r().status(), RolloutStatus::Canceled);
    assert_eq!(sim.plan().cancel, b);
    assert_eq!(
        sim.input(RolloutInput::Cancel { force: true }).unwrap(),
        vec![],
        "idempotent"
    );
    sim.settle(&b[0], Canceled);
    let c = sim.r().counts();
    assert_eq!(
        (c.succeeded, c.canceled, c.queued, c.in_flight),
        (1, 1, 3, 0)
    );
    let mut done = Sim::start(list(1, 60_000), T0);
    done.run(T0 + 10, Succeeded);
    assert_eq!(done.r().status(), RolloutStatus::Completed);
    let err = done
        .input(RolloutInput::Cancel { force: false })
        .unwrap_err();
    assert_eq!(err.code, RejectionCode::FailedPrecondition);
}

#[test]
fn repeated_and_stale_reports_are_harmless() {
    let mut sim = Sim::start(list(2, 60_000), T0);
    let plan = sim.plan();
    let target = things(1)[0].clone();
    let e1 = ExecutionId::parse("e1").unwrap();
    let launched = |attempt, id: &ExecutionId| RolloutInput::Launched {
        target: target.clone(),
        attempt,
        execution_id: id.clone(),
    };
    assert_eq!(launching(&plan), vec![(0, 1)]);
    assert_eq!(sim.input(launched(1, &e1)).unwrap().len(), 1);
    assert_eq!(sim.input(launched(1, &e1)).unwrap(), vec![]);
    let other = ExecutionId::parse("e2").unwrap();
    assert_eq!(
        sim.input(launched(1, &other)).unwrap_err().code,
        RejectionCode::Conflict
    );
    assert_eq!(
        sim.input(launched(2, &other)).unwrap_err().code,
        RejectionCode::FailedPrecondition
    );
    let stranger = RolloutInput::Launched {
        target: Target::thing("nobody").unwrap(),
        attempt: 1,
        execution_id: other,
    };
    assert_eq!(
        sim.input(stranger).unwrap_err().code,
        RejectionCode::ResourceNotFound
    );
    assert_eq!(sim.settle(&e1, Succeeded).len(), 1);
    assert_eq!(sim.settle(&e1, Succeeded), vec![], "a repeated settle");
    assert_eq!(
        sim.settle(&e1, Failed),
        vec![],
        "a late report of a settled attempt"
    );
    assert_eq!(
        sim.input(launched(1, &e1)).unwrap(),
        vec![],
        "a late launch report"
    );
    let bad = RolloutInput::Settled {
        execution_id: e1,
        status: InProgress,
    };
    assert_eq!(
        sim.input(bad).unwrap_err().code,
        RejectionCode::InvalidRequest
    );
    assert_eq!(sim.r().counts().succeeded, 1);
}

#[test]
fn a_rebuilt_state_replans_the_same_intents_and_never_launches_twice() {
    // Given intents logged, some confirmed, then a crash before the others were sent,
    let mut sim = retrying_list(50, RetryFailureType::Failed, 2);
    for _ in 0..5 {
        sim.step();
        sim.now += 1;
    }
    sim.settle(&sim.launches[1].3.clone(), Failed);
    let unsent = sim.plan();
    assert_eq!(launching(&unsent), vec![(5, 1)]);
    // when the owner rebuilds from the log,
    let rebuilt = sim.rebuild().unwrap();
    // then the state is the same, the unsent intent is pending with its token,
    assert_eq!(&rebuilt, sim.r());
    let pending = rebuilt.pending_launches();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].target_index, pending[0].attempt), (5, 1));
    assert_eq!(pending[0].client_token, "r:ro-1:5:1");
    assert_eq!(
        rebuilt.start_request(5, 1).unwrap().client_token.as_deref(),
        Some("r:ro-1:5:1")
    );
    // and planning again at the same time or later never repeats a launched or pending one.
    for later in [0, 1, 10_000] {
        let again = plan(&rebuilt, sim.now + later);
        let launched_or_pending: Vec<u32> = (0..=5).collect();
        for (i, attempt) in launching(&again) {
            assert!(
                !launched_or_pending.contains(&i) || (i == 1 && attempt == 2),
                "{i} {attempt}"
            );
        }
    }
    assert_eq!(
        plan(&rebuilt, sim.now),
        plan(sim.r(), sim.now),
        "same state, same plan"
    );
    let json = serde_json::to_string(&rebuilt).unwrap();
    assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), rebuilt);
    let events: Vec<RolloutEvent> = sim.log.iter().map(|(e, _)| e.clone()).collect();
    let json = serde_json::to_string(&events).unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<RolloutEvent>>(&json).unwrap(),
        events
    );
}

#[test]
fn client_tokens_are_short_printable_and_distinct() {
    let short = RolloutId::parse("ro-1").unwrap();
    let long = RolloutId::parse("a".repeat(64)).unwrap();
    let longer = RolloutId::parse(format!("{}b", "a".repeat(63))).unwrap();
    let mut seen = std::collections::HashSet::new();
    for id in [&short, &long, &longer] {
        for (i, a) in [(0, 1), (0, 2), (1, 1), (u32::MAX, 11)] {
            let t = rollout_client_token(id, i, a);
            assert!(
                t.len() <= 64 && t.chars().all(|c| ('\x21'..='\x7e').contains(&c)),
                "{t}"
            );
            assert!(crate::start::validate_client_token(&t).is_ok());
            assert!(seen.insert(t));
        }
    }
    assert_eq!(rollout_client_token(&short, 7, 2), "r:ro-1:7:2");
    assert!(rollout_client_token(&long, 0, 1).starts_with(&format!("r:{}~", "a".repeat(27))));
    assert!(RolloutId::parse("bad id").is_err() && RolloutId::parse("").is_err());
}

#[test]
fn a_hundred_thousand_targets_stay_within_bounded_memory() {
    // Given a group rollout resolved to 100,000 targets,
    let mut sim = Sim::start(group(1_000), T0);
    let all = things(100_000);
    for chunk in all.chunks(10_000) {
        sim.add(chunk.to_vec());
    }
    sim.input(RolloutInput::TargetsResolved).unwrap();
    // then beyond the targets themselves it holds less than 64 bytes per target,
    let per_target = sim.r().table_overhead_bytes() / all.len();
    assert!(per_target < 64, "{per_target} bytes per target");
    // and no event repeats the target list.
    let named: usize = sim
        .log
        .iter()
        .map(|(e, _)| match e {
            RolloutEvent::TargetsAdded { targets } => targets.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(named, 100_000);
    assert_eq!(sim.r().counts().queued, 100_000);
    assert_eq!(
        sim.r().find_target(&all[99_999]).map(|t| t.index),
        Some(99_999)
    );
}
