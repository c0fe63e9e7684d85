//! Abort criteria and the cancel_in_progress action.

use super::*;
use ExecutionStatus::*;

fn criterion(failure_type: FailureType, pct: f64, min: u32) -> AbortCriterion {
    AbortCriterion {
        failure_type,
        threshold_percentage: pct,
        min_number_of_executed_things: min,
    }
}

/// Given 20 targets, 4 in flight at a time, when the oldest live execution settles with
/// each status in turn (planning after each), returns the plans.
fn outcomes(criteria: Vec<AbortCriterion>, statuses: &[ExecutionStatus]) -> (Sim, Vec<Plan>) {
    let mut s = list(20, 60_000);
    s.max_in_flight = Some(4);
    s.abort_criteria = criteria;
    let mut sim = Sim::start(s, T0);
    for _ in 0..4 {
        sim.step();
        sim.now += 1;
    }
    assert_eq!(sim.r().counts().in_flight, 4);
    let mut plans = Vec::new();
    for (k, status) in statuses.iter().enumerate() {
        let id = sim.launches[k].3.clone();
        sim.settle(&id, *status);
        plans.push(sim.step().0);
        sim.now += 1;
    }
    (sim, plans)
}

fn aborted_at(plans: &[Plan]) -> Option<usize> {
    plans.iter().position(|p| {
        p.events
            .iter()
            .any(|e| matches!(e, RolloutEvent::Aborted { .. }))
    })
}

#[test]
fn each_failure_type_aborts_in_the_plan_after_the_settle_that_crosses_it() {
    for (ft, bad) in [
        (FailureType::Failed, Failed),
        (FailureType::Rejected, Rejected),
        (FailureType::TimedOut, TimedOut),
    ] {
        let c = criterion(ft, 50.0, 4);
        let (sim, plans) = outcomes(
            vec![c.clone()],
            &[Succeeded, bad, bad, Succeeded, Succeeded],
        );
        // Three executed: below the minimum, launches go on;
        assert!(
            plans[..3].iter().all(|p| launching(p).len() == 1),
            "{ft:?}: {plans:?}"
        );
        // the fourth makes 2 of 4 = 50 %: aborted at once, nothing launched with it or after.
        assert_eq!(aborted_at(&plans), Some(3), "{ft:?}");
        assert!(plans[3..].iter().all(|p| launching(p).is_empty()));
        assert_eq!(sim.r().status(), RolloutStatus::Aborted);
        assert_eq!(sim.r().aborted_by(), Some(&c));
        assert_eq!(sim.r().completed_at(), Some(T0 + 4 + 3));
        assert!(plans[3].cancel.is_empty(), "no cancel_in_progress");
        assert_eq!(
            sim.r().counts().succeeded,
            3,
            "live ones still settle after the abort"
        );
    }
}

#[test]
fn a_criterion_ignores_other_failure_types() {
    let (sim, plans) = outcomes(
        vec![criterion(FailureType::Failed, 50.0, 1)],
        &[Rejected, TimedOut, Rejected],
    );
    assert_eq!(aborted_at(&plans), None);
    assert_eq!(sim.r().status(), RolloutStatus::InProgress);
    let (_, plans) = outcomes(
        vec![criterion(FailureType::TimedOut, 50.0, 1)],
        &[Failed, TimedOut],
    );
    assert_eq!(aborted_at(&plans), Some(1), "1 of 2 timed out");
}

#[test]
fn all_counts_failed_rejected_and_timed_out_together() {
    let c = criterion(FailureType::All, 75.0, 4);
    let (sim, plans) = outcomes(vec![c], &[Failed, Rejected, TimedOut, Succeeded]);
    assert_eq!(aborted_at(&plans), Some(3), "3 of 4 = 75 % once 4 executed");
    let counts = sim.r().counts();
    assert_eq!(
        (
            counts.failed,
            counts.rejected,
            counts.timed_out,
            counts.executed()
        ),
        (1, 1, 1, 4)
    );
}

#[test]
fn min_number_of_executed_things_holds_the_abort_back() {
    let (_, plans) = outcomes(
        vec![criterion(FailureType::Failed, 10.0, 3)],
        &[Failed, Failed, Succeeded],
    );
    assert_eq!(
        aborted_at(&plans),
        Some(2),
        "100 % of 2 is not enough, 67 % of 3 is"
    );
    let (_, plans) = outcomes(vec![criterion(FailureType::Failed, 100.0, 1)], &[Failed]);
    assert_eq!(
        aborted_at(&plans),
        Some(0),
        "one failure of one, with a minimum of one"
    );
}

#[test]
fn below_the_threshold_never_aborts() {
    let c = criterion(FailureType::Failed, 60.0, 2);
    let (sim, plans) = outcomes(vec![c], &[Failed, Succeeded, Succeeded, Failed, Succeeded]);
    assert_eq!(aborted_at(&plans), None, "at most 50 %");
    assert_eq!(sim.r().status(), RolloutStatus::InProgress);
}

#[test]
fn the_first_crossed_criterion_in_spec_order_is_kept() {
    let a = criterion(FailureType::Rejected, 50.0, 1);
    let b = criterion(FailureType::All, 50.0, 1);
    let (sim, plans) = outcomes(vec![a, b.clone()], &[Failed]);
    assert_eq!(aborted_at(&plans), Some(0));
    assert_eq!(sim.r().aborted_by(), Some(&b));
}

#[test]
fn cancel_in_progress_cancels_each_live_execution_once() {
    // Given two launched executions and one intent not yet confirmed,
    let mut s = list(10, 60_000);
    s.abort_criteria = vec![criterion(FailureType::Failed, 100.0, 1)];
    s.cancel_in_progress = true;
    let mut sim = Sim::start(s, T0);
    sim.step();
    sim.now += 1;
    sim.step();
    sim.now += 1;
    assert_eq!(launching(&sim.plan()), vec![(2, 1)]);
    let (e1, e2) = (sim.launches[0].3.clone(), sim.launches[1].3.clone());
    // when the first fails,
    sim.settle(&e1, Failed);
    sim.now += 1;
    let plan = sim.plan();
    // then the rollout aborts and the live launched execution is to be canceled,
    assert_eq!(aborted_at(std::slice::from_ref(&plan)), Some(0));
    assert_eq!(plan.cancel, vec![e2.clone()]);
    assert!(has(
        &plan,
        &RolloutEvent::ExecutionsCanceling {
            execution_ids: vec![e2.clone()]
        }
    ));
    assert_eq!(sim.r().pending_cancels(), vec![e2.clone()]);
    // once only,
    assert_eq!(sim.plan(), Plan::default());
    // and the intent confirmed later is canceled in the plan after its launch.
    let e3 = sim.launched(2, 1);
    assert_eq!(sim.plan().cancel, vec![e3.clone()]);
    sim.settle(&e2, Canceled);
    sim.settle(&e3, Canceled);
    let c = sim.r().counts();
    assert_eq!((c.failed, c.canceled, c.in_flight, c.queued), (1, 2, 0, 7));
    assert_eq!(sim.r().status(), RolloutStatus::Aborted);
}

#[test]
fn retried_failures_count_only_after_their_last_attempt() {
    // AWS counts every failed attempt; fleetcmd counts a target once, when it is final.
    let mut s = list(1, 60_000);
    s.abort_criteria = vec![criterion(FailureType::Failed, 50.0, 1)];
    s.retries = vec![retry(RetryFailureType::Failed, 1)];
    let mut sim = Sim::start(s, T0);
    let (_, ids) = sim.step();
    sim.settle(&ids[0], Failed);
    let plan = sim.plan();
    assert_eq!(
        aborted_at(std::slice::from_ref(&plan)),
        None,
        "attempt 1 will be retried"
    );
    assert_eq!(sim.r().counts().failed, 0);
    assert_eq!(sim.r().counts().queued, 1);
    sim.now = plan.wake_at.unwrap();
    let (plan, ids) = sim.step();
    assert_eq!(launching(&plan), vec![(0, 2)]);
    sim.settle(&ids[0], Failed);
    assert_eq!(
        aborted_at(&[sim.plan()]),
        Some(0),
        "the last attempt failed"
    );
}

#[test]
fn canceled_executions_count_neither_way() {
    let (sim, plans) = outcomes(
        vec![criterion(FailureType::All, 1.0, 1)],
        &[Canceled, Canceled],
    );
    assert_eq!(aborted_at(&plans), None);
    assert_eq!(
        (sim.r().counts().canceled, sim.r().counts().executed()),
        (2, 0)
    );
}
