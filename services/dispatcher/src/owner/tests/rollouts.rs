//! Rollouts in the shard's state: their events fold into the rollout the domain folds, with
//! gapless sequence numbers, and a snapshot (as the store keeps it) restores them whole.

use fleetcmd_domain::rollout::{
    self, Rate, RolloutEvent, RolloutId, RolloutInput, RolloutSpec, TargetSelector,
};

use super::*;

/// The records of a rollout to three things at 60,000 a minute: its start, the launches
/// planned in its first two milliseconds, and the first launch confirmed.
fn rollout_log(id: &RolloutId) -> Vec<Vec<RolloutEvent>> {
    let things = (1..=3)
        .map(|i| Target::thing(format!("lab-{i}")).unwrap())
        .collect();
    let spec = RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        TargetSelector::List(things),
        Rate::Fixed {
            max_per_minute: 60_000,
        },
    );
    let start = RolloutInput::Start {
        rollout_id: id.clone(),
        spec: Box::new(spec),
    };
    let mut state = None;
    let mut records = Vec::new();
    let mut append = |state: &mut Option<_>, events: Vec<RolloutEvent>, at| {
        for e in &events {
            rollout::apply(state, e, at);
        }
        records.push(events);
    };
    append(&mut state, rollout::decide(None, &start, 0).unwrap(), 0);
    for at in [0, 1] {
        let planned = rollout::plan(state.as_ref().unwrap(), at).events;
        append(&mut state, planned, at);
    }
    let launched = RolloutInput::Launched {
        target: Target::thing("lab-1").unwrap(),
        attempt: 1,
        execution_id: ExecutionId::parse("e-1").unwrap(),
    };
    let events = rollout::decide(state.as_ref(), &launched, 2).unwrap();
    append(&mut state, events, 2);
    records
}

#[test]
fn a_rollouts_events_fold_into_the_shard_state_and_survive_a_snapshot() {
    let id = RolloutId::parse("r-1").unwrap();
    let aggregate = Aggregate::Rollout(id.clone());
    let mut state = ShardState::new(60_000);
    let mut domain = None;
    let log = rollout_log(&id);
    let logged = log.iter().map(Vec::len).sum::<usize>() as u64;
    for (offset, events) in log.into_iter().enumerate() {
        let at = offset as TimestampMs;
        let mut record = Vec::new();
        for event in events {
            rollout::apply(&mut domain, &event, at);
            let seq = state.next_seq(&aggregate) + record.len() as u64;
            record.push(envelope(
                aggregate.clone(),
                seq,
                at,
                Event::Rollout { event },
            ));
        }
        state.apply_record(&record, offset as u64);
    }
    let held = state.rollout(&id).expect("the shard holds the rollout");
    assert_eq!(Some(held), domain.as_ref());
    assert_eq!(held.counts().in_flight, 2);
    assert_eq!(
        state.next_seq(&aggregate),
        logged + 1,
        "one past the last event"
    );

    let saved = fleetcmd_contracts::codec::encode_snapshot(&state.to_snapshot());
    let loaded = fleetcmd_contracts::codec::decode_snapshot(&saved).expect("decodes");
    let restored = ShardState::from_snapshot(loaded, 60_000);
    assert_eq!(restored.rollout(&id), Some(held));
    assert_eq!(restored.next_seq(&aggregate), logged + 1);
    assert_eq!(restored.to_snapshot(), state.to_snapshot());
}

fn rollout_request(id: &RolloutId, input: RolloutInput) -> ShardRequest {
    ShardRequest::Rollout {
        rollout_id: id.clone(),
        input,
    }
}

/// A start of `id` under the client token `t-1`.
fn start_of(id: &RolloutId, per_minute: u32) -> RolloutInput {
    let mut spec = RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        TargetSelector::List(vec![target()]),
        Rate::Fixed {
            max_per_minute: per_minute,
        },
    );
    spec.client_token = Some("t-1".into());
    RolloutInput::Start {
        rollout_id: id.clone(),
        spec: Box::new(spec),
    }
}

#[test]
fn a_rollout_is_started_once_read_back_and_canceled_by_its_shard() {
    let mut shard = given();
    let id = RolloutId::parse("r-1").unwrap();
    let read = ShardRequest::ReadRollout {
        rollout_id: id.clone(),
    };
    // Unknown: a read finds nothing, a cancel is NOT_FOUND, and neither records anything.
    let d = shard.when(read.clone(), 0).unwrap();
    assert!(d.events.is_empty());
    assert!(shard.state.rollout(&id).is_none());
    let cancel = rollout_request(&id, RolloutInput::Cancel { force: false });
    assert_eq!(
        rejection(shard.when(cancel.clone(), 0)),
        RejectionCode::ResourceNotFound
    );

    let d = shard
        .when(rollout_request(&id, start_of(&id, 60)), 10)
        .unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Rollout {
            rollout_id: id.clone()
        }
    );
    let names: Vec<&str> = d.events.iter().map(|(_, e)| e.name()).collect();
    assert_eq!(names.first(), Some(&"RolloutStarted"), "{names:?}");
    assert!(
        d.events
            .iter()
            .all(|(a, _)| *a == Aggregate::Rollout(id.clone()))
    );
    let held = shard.state.rollout(&id).expect("started").summary();
    assert_eq!(held.target_count, 1);
    assert_eq!(held.created_at, 10);

    // The same start (same token, same spec) again records nothing; another spec under the
    // token is a conflict.
    let again = shard
        .when(rollout_request(&id, start_of(&id, 60)), 20)
        .unwrap();
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(
        rejection(shard.when(rollout_request(&id, start_of(&id, 120)), 20)),
        RejectionCode::Conflict
    );

    let d = shard.when(cancel, 30).unwrap();
    assert!(
        d.events
            .iter()
            .any(|(_, e)| e.name() == "RolloutCancelRequested"),
        "{:?}",
        d.events
    );
    assert!(
        shard.state.rollout(&id).unwrap().summary().stopping || {
            shard.state.rollout(&id).unwrap().status().is_terminal()
        }
    );
    let d = shard.when(read, 40).unwrap();
    assert!(d.events.is_empty());
    assert_eq!(d.outcome, Outcome::Rollout { rollout_id: id });
}
