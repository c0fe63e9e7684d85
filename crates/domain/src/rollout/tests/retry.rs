//! Retries: attempt numbering, backoff timings, the cap, and which failures retry.

use super::*;
use ExecutionStatus::*;

fn retrying(criteria: &[(RetryFailureType, u32)], base_secs: u64) -> Sim {
    let mut s = list(1, 60_000);
    s.retries = criteria
        .iter()
        .map(|&(failure_type, number_of_retries)| retry(failure_type, number_of_retries))
        .collect();
    s.retry_backoff_base_secs = base_secs;
    Sim::start(s, T0)
}

/// Fails every attempt with `status`; returns (launch time, attempt) of each attempt.
fn fail_until_final(sim: &mut Sim, status: ExecutionStatus) -> Vec<(TimestampMs, u32)> {
    loop {
        let (plan, ids) = sim.step();
        for id in &ids {
            sim.settle(id, status);
        }
        match plan.wake_at {
            Some(w) => sim.now = w,
            None if ids.is_empty() => break,
            None => {}
        }
    }
    sim.launches.iter().map(|l| (l.0 - T0, l.2)).collect()
}

#[test]
fn backoff_doubles_from_the_base_and_attempts_stop_at_the_cap() {
    // Given 3 retries for FAILED with a 10 s base,
    let mut sim = retrying(&[(RetryFailureType::Failed, 3)], 10);
    // when every attempt fails at once,
    let attempts = fail_until_final(&mut sim, Failed);
    // then attempts 1–4 start at 0, +10 s, +20 s, +40 s, and the target ends FAILED.
    assert_eq!(
        attempts,
        vec![(0, 1), (10_000, 2), (30_000, 3), (70_000, 4)]
    );
    let t = sim.r().target(0).unwrap();
    assert_eq!((t.state, t.attempt), (TargetState::Failed, 4));
    let c = sim.r().counts();
    assert_eq!((c.failed, c.queued, c.notified), (1, 0, 1));
    assert_eq!(sim.r().status(), RolloutStatus::Completed);
    // Each attempt had its own execution and client token.
    let ids: std::collections::BTreeSet<_> = sim.launches.iter().map(|l| l.3.clone()).collect();
    assert_eq!(ids.len(), 4);
    let tokens: Vec<String> = (1..=4)
        .map(|a| sim.r().start_request(0, a).unwrap().client_token.unwrap())
        .collect();
    assert_eq!(
        tokens,
        ["r:ro-1:0:1", "r:ro-1:0:2", "r:ro-1:0:3", "r:ro-1:0:4"]
    );
}

#[test]
fn a_retry_waits_for_its_backoff_exactly() {
    let mut sim = retrying(&[(RetryFailureType::Failed, 1)], 10);
    let (_, ids) = sim.step();
    sim.now = T0 + 500;
    sim.settle(&ids[0], Failed);
    let plan = sim.plan();
    assert_eq!(launching(&plan), vec![]);
    assert_eq!(
        plan.wake_at,
        Some(T0 + 10_500),
        "10 s after the failure settled"
    );
    sim.now = T0 + 10_499;
    assert_eq!(launching(&sim.plan()), vec![]);
    sim.now = T0 + 10_500;
    assert_eq!(launching(&sim.plan()), vec![(0, 2)]);
}

#[test]
fn backoff_is_capped_at_one_hour() {
    let mut sim = retrying(&[(RetryFailureType::All, 4)], 1_000);
    let attempts = fail_until_final(&mut sim, TimedOut);
    let starts: Vec<i64> = attempts.iter().map(|a| a.0 / 1_000).collect();
    // Waits of 1,000 s, 2,000 s, then 3,600 s twice.
    assert_eq!(starts, vec![0, 1_000, 3_000, 6_600, 10_200]);
    assert_eq!(sim.r().counts().timed_out, 1);
}

/// (retry criteria, the status every attempt ends with, attempts made).
type Case = (&'static [(RetryFailureType, u32)], ExecutionStatus, u32);

#[test]
fn each_failure_type_uses_its_own_criterion_or_all() {
    let cases: [Case; 7] = [
        (&[(RetryFailureType::Failed, 2)], Failed, 3),
        (&[(RetryFailureType::Failed, 2)], TimedOut, 1),
        (&[(RetryFailureType::TimedOut, 1)], TimedOut, 2),
        (&[(RetryFailureType::All, 1)], Failed, 2),
        (
            &[(RetryFailureType::All, 5), (RetryFailureType::TimedOut, 1)],
            TimedOut,
            2,
        ),
        (&[(RetryFailureType::All, 3)], Rejected, 1),
        (&[(RetryFailureType::Failed, 0)], Failed, 1),
    ];
    for (criteria, status, attempts) in cases {
        let mut sim = retrying(criteria, 1);
        let got = fail_until_final(&mut sim, status);
        assert_eq!(got.len() as u32, attempts, "{criteria:?} {status:?}");
    }
}

#[test]
fn canceled_executions_are_never_retried() {
    let mut sim = retrying(&[(RetryFailureType::All, 3)], 1);
    assert_eq!(fail_until_final(&mut sim, Canceled).len(), 1);
    assert_eq!(sim.r().counts().canceled, 1);
}

#[test]
fn a_refused_start_is_a_failed_attempt() {
    let mut sim = retrying(&[(RetryFailureType::Failed, 1)], 10);
    let plan = sim.plan();
    assert_eq!(launching(&plan), vec![(0, 1)]);
    let target = sim.r().target(0).unwrap().target.clone();
    let refuse = RolloutInput::LaunchRefused {
        target: target.clone(),
        attempt: 1,
        code: crate::error::RejectionCode::ResourceNotFound,
    };
    assert_eq!(sim.input(refuse.clone()).unwrap().len(), 1);
    assert_eq!(
        sim.input(refuse).unwrap(),
        vec![],
        "a repeated report changes nothing"
    );
    let c = sim.r().counts();
    assert_eq!((c.queued, c.in_flight, c.notified), (1, 0, 0));
    sim.now = T0 + 10_000;
    let (plan, ids) = sim.step();
    assert_eq!(launching(&plan), vec![(0, 2)]);
    sim.settle(&ids[0], Succeeded);
    assert_eq!(sim.r().counts().notified, 1);
    assert_eq!(sim.r().counts().succeeded, 1);
}

#[test]
fn no_retry_starts_after_a_cancel() {
    let mut sim = retrying_list(2, RetryFailureType::All, 3);
    let (_, a) = sim.step();
    sim.now += 1;
    let (_, b) = sim.step();
    sim.settle(&a[0], Failed);
    assert_eq!(sim.r().target(0).unwrap().state, TargetState::RetryWaiting);
    sim.input(RolloutInput::Cancel { force: false }).unwrap();
    sim.settle(&b[0], Failed);
    // The failure after the cancel is final; the waiting retry never runs.
    assert_eq!(sim.r().target(1).unwrap().state, TargetState::Failed);
    sim.now += 60_000;
    let plan = sim.plan();
    assert_eq!(launching(&plan), vec![]);
    assert!(has(&plan, &RolloutEvent::Canceled));
    assert_eq!(sim.r().status(), RolloutStatus::Canceled);
}
