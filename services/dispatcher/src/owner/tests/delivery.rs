//! Delivery decisions: waiting executions in start order, superseding, the in-flight window.

use super::*;

#[test]
fn a_targets_waiting_executions_are_delivered_in_start_order_until_its_device_answers() {
    let mut shard = given();
    for at in 0..3 {
        shard.when(start(None, Some(10)), at).unwrap();
    }
    let d = shard
        .when(ShardRequest::DeliverPending { target: target() }, 5)
        .unwrap();
    assert!(d.events.is_empty(), "a delivery records nothing");
    assert_eq!(d.outcome, Outcome::DeliverPending { target: target() });
    let waiting = |shard: &Shard, now| -> Vec<String> {
        shard
            .state
            .undelivered_of(&target(), now)
            .map(|(e, _)| e.execution_id.to_string())
            .collect()
    };
    assert_eq!(waiting(&shard, 5), ["e1", "e2", "e3"]);
    shard
        .when(report("e2", target(), ExecutionStatus::InProgress), 6)
        .unwrap();
    assert_eq!(
        waiting(&shard, 6),
        ["e1", "e3"],
        "an answered one no longer waits"
    );
    // Past e1's deadline (started at 0 with 10 s): only e3 is left to deliver.
    assert_eq!(waiting(&shard, 10_000), ["e3"]);
    assert!(
        shard
            .state
            .undelivered_of(&Target::thing("lamp-2").unwrap(), 6)
            .next()
            .is_none()
    );
    // A snapshot keeps the order.
    let again = ShardState::from_snapshot(shard.state.to_snapshot(), 60_000);
    let ids: Vec<String> = again
        .undelivered_of(&target(), 6)
        .map(|(e, _)| e.execution_id.to_string())
        .collect();
    assert_eq!(ids, ["e1", "e3"]);
}

#[test]
fn a_superseding_start_cancels_the_older_waiting_ones_of_its_command_on_its_target_only() {
    let mut shard = given();
    let toggle = Command {
        command_id: CommandId::parse("toggle").unwrap(),
        supersede_pending: true,
        ..reboot()
    };
    shard
        .lookups
        .commands
        .insert(toggle.command_id.clone(), Some(toggle));
    let start_of = |command: &str, target: Target| {
        ShardRequest::Start(StartRequest {
            command_id: CommandId::parse(command).unwrap(),
            target,
            parameters: BTreeMap::new(),
            timeout_secs: Some(60),
            client_token: None,
        })
    };
    let lamp_2 = Target::thing("lamp-2").unwrap();
    shard.when(start_of("toggle", target()), 1).unwrap(); // e1: answered at once
    shard
        .when(report("e1", target(), ExecutionStatus::InProgress), 2)
        .unwrap();
    shard.when(start_of("toggle", target()), 3).unwrap(); // e2: waits
    shard.when(start_of("reboot", target()), 4).unwrap(); // e3: another command
    shard.when(start_of("toggle", lamp_2.clone()), 5).unwrap(); // e4: another target
    shard.when(start_of("toggle", target()), 6).unwrap(); // e5: supersedes e2
    let d = shard.when(start_of("toggle", target()), 7).unwrap(); // e6: supersedes e5
    let canceled: Vec<String> = d
        .events
        .iter()
        .filter_map(|(a, e)| match (a, e) {
            (
                Aggregate::Execution { execution_id, .. },
                Event::ExecutionCanceled { status_reason },
            ) => {
                let reason = status_reason.as_ref().map(|r| r.reason_code.as_str());
                assert_eq!(reason, Some("$SUPERSEDED"));
                Some(execution_id.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(canceled, ["e5"], "e2 went when e5 started; e1 was answered");
    assert!(matches!(
        d.events.last(),
        Some((_, Event::ExecutionStarted { .. }))
    ));
    let status = |id: &str| shard.execution(id).status;
    assert_eq!(status("e2"), ExecutionStatus::Canceled);
    assert_eq!(status("e1"), ExecutionStatus::InProgress);
    assert_eq!(status("e3"), ExecutionStatus::Created);
    assert_eq!(status("e4"), ExecutionStatus::Created);
    let waiting: Vec<String> = shard
        .state
        .undelivered_of(&target(), 7)
        .map(|(e, _)| e.execution_id.to_string())
        .collect();
    assert_eq!(waiting, ["e3", "e6"]);
}

#[test]
fn the_in_flight_window_holds_the_first_live_executions_in_start_order() {
    let mut shard = given();
    for at in 0..3 {
        shard.when(start(None, Some(60)), at).unwrap();
    }
    let ids = |w: &[ExecutionId]| w.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(shard.state.in_flight_limit(&target(), None), None);
    assert_eq!(shard.state.in_flight_limit(&target(), Some(2)), Some(2));
    assert_eq!(
        ids(shard.state.in_flight_window(&target(), Some(2))),
        ["e1", "e2"]
    );
    assert!(!shard.state.within_limit(shard.execution("e3"), Some(2)));
    shard
        .when(report("e1", target(), ExecutionStatus::InProgress), 3)
        .unwrap();
    assert_eq!(
        ids(shard.state.in_flight_window(&target(), Some(2))),
        ["e1", "e2"],
        "IN_PROGRESS is still in flight"
    );
    shard
        .when(report("e1", target(), ExecutionStatus::Succeeded), 4)
        .unwrap();
    assert_eq!(
        ids(shard.state.in_flight_window(&target(), Some(2))),
        ["e2", "e3"]
    );
    assert!(shard.state.within_limit(shard.execution("e3"), Some(2)));
    let again = ShardState::from_snapshot(shard.state.to_snapshot(), 60_000);
    assert_eq!(ids(again.in_flight_window(&target(), None)), ["e2", "e3"]);
}
