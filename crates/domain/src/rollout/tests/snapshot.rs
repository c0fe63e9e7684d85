//! A snapshot of a rollout restores the very state the fold holds, and plans on from it
//! as the original does.

use super::*;

/// A rollout with targets in every state: succeeded, failed for good, waiting for a retry,
/// in flight before and after their launch, and queued, with a cancel requested.
fn busy() -> Sim {
    let mut sim = retrying_list(8, RetryFailureType::Failed, 2);
    let mut ids = Vec::new();
    while ids.len() < 5 {
        let (plan, launched) = sim.step();
        ids.extend(launched);
        sim.now = plan.wake_at.expect("more to launch");
    }
    // One more intent, logged but not yet launched.
    assert_eq!(launching(&sim.plan()).len(), 1);
    sim.settle(&ids[0], ExecutionStatus::Succeeded);
    sim.settle(&ids[1], ExecutionStatus::Failed);
    sim.settle(&ids[2], ExecutionStatus::Rejected);
    sim.now += SEC;
    sim
}

#[test]
fn a_restored_rollout_equals_the_folded_one_and_plans_the_same() {
    let mut sim = busy();
    let restored = Rollout::from_snapshot(sim.r().to_snapshot()).unwrap();
    assert_eq!(&restored, sim.r());
    let ahead = sim.now + 20 * SEC;
    assert_eq!(plan(&restored, ahead), plan(sim.r(), ahead));
    sim.input(RolloutInput::Cancel { force: false }).unwrap();
    let restored = Rollout::from_snapshot(sim.r().to_snapshot()).unwrap();
    assert_eq!(&restored, sim.r());
    assert_eq!(plan(&restored, ahead), plan(sim.r(), ahead));
}

#[test]
fn a_snapshot_pointing_beyond_its_targets_is_refused() {
    let sim = busy();
    let mut s = sim.r().to_snapshot();
    s.live[0].target_index = 99;
    let e = Rollout::from_snapshot(s).unwrap_err();
    assert!(e.message.contains("target index 99"), "{}", e.message);
    let mut s = sim.r().to_snapshot();
    let again = s.targets[0].clone();
    s.targets.push(again);
    let e = Rollout::from_snapshot(s).unwrap_err();
    assert!(e.message.contains("listed twice"), "{}", e.message);
}
