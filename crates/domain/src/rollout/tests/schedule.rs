//! Start and end times, end behaviours, maintenance windows.

use super::*;
use ExecutionStatus::*;

const HOUR: i64 = 3_600_000;

fn scheduled(start: Option<i64>, end: Option<i64>, end_behavior: EndBehavior) -> RolloutSpec {
    let mut s = list(100, 60);
    s.schedule = Some(Schedule {
        start_time: start,
        end_time: end,
        end_behavior,
        maintenance_windows: vec![],
    });
    s
}

#[test]
fn a_future_start_time_waits_then_starts() {
    // Given a start time one hour after creation,
    let mut sim = Sim::start(scheduled(Some(T0 + HOUR), None, EndBehavior::Stop), T0);
    assert_eq!(sim.r().status(), RolloutStatus::Scheduled);
    assert_eq!(sim.r().started_at(), None);
    // when planned before it, then nothing happens until then;
    sim.now = T0 + HOUR - 1;
    assert_eq!(
        sim.plan(),
        Plan {
            wake_at: Some(T0 + HOUR),
            ..Plan::default()
        }
    );
    // at the start time, the rollout starts and launches.
    sim.now = T0 + HOUR;
    let plan = sim.plan();
    assert_eq!(plan.events[0], RolloutEvent::StartTimeReached);
    assert_eq!(launching(&plan), vec![(0, 1)]);
    assert_eq!(plan.wake_at, Some(T0 + HOUR + SEC));
    assert_eq!(sim.r().status(), RolloutStatus::InProgress);
    assert_eq!(sim.r().started_at(), Some(T0 + HOUR));
}

/// Runs for 10 s (10 launches, the last 3 never settling), then plans at the end time.
fn to_the_end(end_behavior: EndBehavior) -> (Sim, Plan) {
    let mut sim = Sim::start(scheduled(None, Some(T0 + 10 * SEC), end_behavior), T0);
    for _ in 0..10 {
        let (plan, ids) = sim.step();
        if sim.launches.len() <= 7 {
            sim.settle(&ids[0], Succeeded);
        }
        sim.now = plan.wake_at.unwrap();
    }
    assert_eq!(sim.now, T0 + 10 * SEC, "the end time is the next wake-up");
    let plan = sim.plan();
    (sim, plan)
}

#[test]
fn end_behavior_stop_drains_then_completes() {
    let (mut sim, plan) = to_the_end(EndBehavior::Stop);
    assert_eq!(plan.events, vec![RolloutEvent::EndTimeReached]);
    assert!(plan.cancel.is_empty());
    assert!(sim.r().is_stopping());
    let live: Vec<ExecutionId> = sim.launches[7..].iter().map(|l| l.3.clone()).collect();
    sim.settle(&live[0], Succeeded);
    sim.settle(&live[1], Failed);
    assert_eq!(sim.plan(), Plan::default(), "one still in flight");
    sim.settle(&live[2], Succeeded);
    let done = sim.plan();
    assert_eq!(done.events, vec![RolloutEvent::Completed]);
    assert_eq!(sim.r().status(), RolloutStatus::Completed);
    let c = sim.r().counts();
    assert_eq!(
        (c.succeeded, c.failed, c.queued),
        (9, 1, 90),
        "the rest never launched"
    );
}

#[test]
fn end_behavior_cancel_drains_then_cancels() {
    let (mut sim, plan) = to_the_end(EndBehavior::Cancel);
    assert_eq!(plan.events, vec![RolloutEvent::EndTimeReached]);
    assert!(plan.cancel.is_empty());
    let live: Vec<ExecutionId> = sim.launches[7..].iter().map(|l| l.3.clone()).collect();
    for id in &live {
        sim.settle(id, Succeeded);
    }
    assert_eq!(sim.plan().events, vec![RolloutEvent::Canceled]);
    assert_eq!(sim.r().status(), RolloutStatus::Canceled);
    assert_eq!(sim.r().completed_at(), Some(T0 + 10 * SEC));
}

#[test]
fn end_behavior_force_cancel_ends_at_once_and_cancels_live_executions() {
    let (mut sim, plan) = to_the_end(EndBehavior::ForceCancel);
    let live: Vec<ExecutionId> = sim.launches[7..].iter().map(|l| l.3.clone()).collect();
    assert_eq!(plan.events[0], RolloutEvent::EndTimeReached);
    assert_eq!(plan.cancel, live);
    assert_eq!(sim.r().status(), RolloutStatus::Canceled);
    assert_eq!(sim.plan(), Plan::default(), "each cancel is asked for once");
}

#[test]
fn an_idle_rollout_still_wakes_for_its_end_time() {
    let mut s = group(60);
    s.schedule = Some(Schedule {
        end_time: Some(T0 + HOUR),
        ..Schedule::default()
    });
    let mut sim = Sim::start(s, T0);
    assert_eq!(sim.plan().wake_at, Some(T0 + HOUR), "no targets yet");
    sim.now = T0 + HOUR;
    assert_eq!(
        sim.plan().events,
        vec![RolloutEvent::EndTimeReached, RolloutEvent::Completed]
    );
}

#[test]
fn an_end_time_in_the_past_is_refused() {
    let err = decide(
        None,
        &RolloutInput::Start {
            rollout_id: RolloutId::parse("late").unwrap(),
            spec: Box::new(scheduled(None, Some(T0), EndBehavior::Stop)),
        },
        T0,
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("schedule.end_time"));
}

fn windowed(start: &str, minutes: u32) -> RolloutSpec {
    let mut s = list(100, 60);
    s.schedule = Some(Schedule {
        maintenance_windows: vec![MaintenanceWindow {
            start: start.into(),
            duration_minutes: minutes,
        }],
        ..Schedule::default()
    });
    s
}

#[test]
fn maintenance_windows_gate_launches_and_set_wake_at() {
    // Given a daily window 02:00–02:01 UTC, started at midnight,
    let mut sim = Sim::start(windowed("0 2 * * *", 1), T0);
    // when planned outside it, then nothing launches and it wakes at the window start;
    let plan = sim.plan();
    assert_eq!(
        (launching(&plan), plan.wake_at),
        (vec![], Some(T0 + 2 * HOUR))
    );
    // inside, it launches at its rate (with at most one slot of credit carried in);
    sim.now = T0 + 2 * HOUR;
    sim.run(T0 + 2 * HOUR + MIN + 5 * SEC, Succeeded);
    let inside = sim
        .launches
        .iter()
        .filter(|l| l.0 < T0 + 2 * HOUR + MIN)
        .count();
    assert!((60..=61).contains(&inside), "{inside}");
    assert_eq!(
        sim.launches.len(),
        inside,
        "nothing after the window closed"
    );
    // and after it closed, it waits for the next day's.
    let plan = sim.plan();
    assert_eq!(
        (launching(&plan), plan.wake_at),
        (vec![], Some(T0 + 26 * HOUR))
    );
}

#[test]
fn several_windows_take_the_earliest() {
    let mut s = windowed("30 22 * * SAT", 60);
    if let Some(sched) = &mut s.schedule {
        sched.maintenance_windows.push(MaintenanceWindow {
            start: "0 */6 * * MON-FRI".into(),
            duration_minutes: 5,
        });
    }
    let mut sim = Sim::start(s, T0 + HOUR);
    assert_eq!(sim.plan().wake_at, Some(T0 + 6 * HOUR));
    sim.now = T0 + 6 * HOUR + 4 * MIN + 59 * SEC;
    assert!(
        !launching(&sim.plan()).is_empty(),
        "still inside the 5 minutes"
    );
    sim.now = T0 + 6 * HOUR + 5 * MIN;
    assert_eq!(sim.plan().wake_at, Some(T0 + 12 * HOUR));
}

#[test]
fn retries_wait_for_both_their_backoff_and_a_window() {
    let mut s = windowed("0 2 * * *", 1);
    s.retries = vec![retry(RetryFailureType::Failed, 1)];
    s.targets = TargetSelector::List(things(1));
    let mut sim = Sim::start(s, T0 + 2 * HOUR + 55 * SEC);
    let (_, ids) = sim.step();
    sim.settle(&ids[0], Failed);
    // The backoff ends at 02:01:05, after the window: the retry waits for tomorrow's.
    assert_eq!(sim.plan().wake_at, Some(T0 + 26 * HOUR));
}
