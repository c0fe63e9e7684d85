//! Given/when/then tests of the owner's pure core: given the events a shard's log holds (and
//! what the read model would answer), when an input is decided at a time, then these events
//! and this answer. Time is a parameter, so timers are tested without a clock.

use std::collections::BTreeMap;

use fleetcmd_domain::command::{CommandInput, CommandSettings, CreateCommand};
use fleetcmd_domain::credential::{CertificateRecord, CertificateStatus, CredentialInput};
use fleetcmd_domain::error::RejectionCode;
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope, SCHEMA_VERSION};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::{
    Command, CommandBody, Execution, ExecutionStatus, Payload, TimestampMs,
};
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::start::StartRequest;
use fleetcmd_domain::testing;
use fleetcmd_domain::thing::{CreateThing, ThingInput, UpdateThing};

use super::decide::{self, Decision, Lookups, Outcome, Refusal, Settings};
use super::state::{ShardState, TimerKey};

mod delivery;
mod rollouts;

const SETTINGS: Settings = Settings {
    shard: 0,
    shards: 1,
    retention_secs: 3600,
    command_settings: CommandSettings {
        deletion_wait_secs: 60,
    },
};

fn target() -> Target {
    Target::thing("lamp-1").unwrap()
}

fn reboot() -> Command {
    Command {
        command_id: CommandId::parse("reboot").unwrap(),
        namespace: "AWS-IoT".into(),
        display_name: String::new(),
        description: String::new(),
        body: CommandBody::Static(Payload {
            content: b"{}".to_vec(),
            content_type: "application/json".into(),
        }),
        parameters: vec![],
        tags: BTreeMap::new(),
        created_at: 0,
        last_updated_at: 0,
        deprecated: false,
        deprecated_at: None,
        delete_at: None,
        supersede_pending: false,
    }
}

fn start(token: Option<&str>, timeout_secs: Option<u64>) -> ShardRequest {
    ShardRequest::Start(StartRequest {
        command_id: CommandId::parse("reboot").unwrap(),
        target: target(),
        parameters: BTreeMap::new(),
        timeout_secs,
        client_token: token.map(str::to_owned),
    })
}

fn report(id: &str, target: Target, status: ExecutionStatus) -> ShardRequest {
    ShardRequest::Execution {
        execution_id: ExecutionId::parse(id).unwrap(),
        target,
        input: ExecutionInput::Report {
            status,
            status_reason: None,
            result: None,
        },
    }
}

fn thing_request(name: &str, input: ThingInput) -> ShardRequest {
    ShardRequest::Thing {
        thing_name: name.into(),
        input,
    }
}

fn create_thing(name: &str, attributes: &[(&str, &str)]) -> ThingInput {
    ThingInput::Create(CreateThing {
        thing_name: name.into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        max_in_flight: None,
    })
}

fn update_thing(attributes: &[(&str, &str)], expected_version: Option<u64>) -> ThingInput {
    ThingInput::Update(UpdateThing {
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        expected_version,
        ..UpdateThing::default()
    })
}

fn certificate(owner: &Target, n: u8) -> CertificateRecord {
    CertificateRecord {
        certificate_id: format!("{n:02x}").repeat(32),
        owner: owner.clone(),
        status: CertificateStatus::Active,
        certificate_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
        ca_certificate_id: "ca".repeat(32),
        not_before: 1,
        not_after: 1_000_000,
        created_at: 0,
        revoked_at: None,
    }
}

fn credential_request(owner: &Target, input: CredentialInput) -> ShardRequest {
    ShardRequest::Credential {
        owner: owner.clone(),
        input,
    }
}

/// A shard under test: its state, and what its read model holds.
struct Shard {
    state: ShardState,
    lookups: Lookups,
    next_id: u32,
    offset: u64,
}

/// Given a shard whose log holds nothing yet and whose read model holds `reboot`.
fn given() -> Shard {
    let mut lookups = Lookups::default();
    lookups
        .commands
        .insert(CommandId::parse("reboot").unwrap(), Some(reboot()));
    Shard {
        state: ShardState::new(60_000),
        lookups,
        next_id: 0,
        offset: 0,
    }
}

impl Shard {
    /// When `request` is decided at `now`: its decision, with the events staged into the
    /// state as the owner does once they are appended.
    fn when(&mut self, request: ShardRequest, now: TimestampMs) -> Result<Decision, Refusal> {
        // What the read model answers for the tokens and executions the state lacks.
        let needs = decide::needs(&self.state, std::iter::once(&request));
        for key in needs.tokens {
            self.lookups.tokens.entry(key).or_insert(None);
        }
        for id in needs.executions {
            self.lookups.executions.entry(id).or_insert(None);
        }
        let next_id = &mut self.next_id;
        let decision = decide::decide(
            &self.state,
            &request,
            &self.lookups,
            now,
            &SETTINGS,
            &mut || {
                *next_id += 1;
                ExecutionId::parse(format!("e{next_id}")).unwrap()
            },
        )?;
        self.stage(&decision, now);
        Ok(decision)
    }

    fn stage(&mut self, decision: &Decision, now: TimestampMs) {
        if let Some(e) = &decision.hydrate {
            self.state.hydrate(e.clone());
        }
        for (aggregate, event) in &decision.events {
            let seq = self.state.next_seq(aggregate);
            self.state.apply(
                &envelope(aggregate.clone(), seq, now, event.clone()),
                self.offset,
            );
        }
        if !decision.events.is_empty() {
            self.offset += 1;
            self.state.appended(self.offset, 0);
        }
    }

    fn execution(&self, id: &str) -> &Execution {
        self.state
            .execution(&ExecutionId::parse(id).unwrap())
            .unwrap_or_else(|| panic!("{id} is not in the state"))
    }
}

fn envelope(aggregate: Aggregate, seq: u64, at: TimestampMs, event: Event) -> EventEnvelope {
    EventEnvelope {
        event_id: format!("ev-{seq}-{at}"),
        schema: SCHEMA_VERSION,
        aggregate,
        seq,
        at,
        trace: None,
        event,
    }
}

fn rejection(result: Result<Decision, Refusal>) -> RejectionCode {
    match result {
        Err(Refusal::Rejected(r)) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_start_creates_an_execution_and_arms_its_deadline() {
    let mut shard = given();
    let d = shard.when(start(None, Some(30)), 1_000).unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Started {
            execution_id: ExecutionId::parse("e1").unwrap()
        }
    );
    let [(Aggregate::Execution { target: t, .. }, Event::ExecutionStarted { execution, .. })] =
        d.events.as_slice()
    else {
        panic!("one ExecutionStarted: {:?}", d.events)
    };
    assert_eq!((t, execution.status), (&target(), ExecutionStatus::Created));
    assert_eq!(shard.execution("e1").seq, 1);
    assert_eq!(shard.state.next_timer(), Some(1_000 + 30_000));
    let undelivered: Vec<_> = shard
        .state
        .undelivered(1_000)
        .map(|(e, _)| e.execution_id.clone())
        .collect();
    assert_eq!(undelivered, [ExecutionId::parse("e1").unwrap()]);
}

#[test]
fn a_start_of_an_unknown_command_is_not_found_and_an_unread_one_is_retryable() {
    let mut shard = given();
    shard
        .lookups
        .commands
        .insert(CommandId::parse("reboot").unwrap(), None);
    assert_eq!(
        rejection(shard.when(start(None, None), 0)),
        RejectionCode::ResourceNotFound
    );
    shard.lookups.commands.clear();
    shard.lookups.failed = Some("read model down".into());
    let Err(Refusal::Unavailable(why)) = shard.when(start(None, None), 0) else {
        panic!("a start whose command could not be read must be retryable")
    };
    assert!(why.contains("read model down"), "{why}");
    assert!(shard.state.is_empty(), "a refused start changes nothing");
}

#[test]
fn a_retried_start_replays_and_a_different_one_under_the_token_conflicts() {
    let mut shard = given();
    shard.when(start(Some("tok"), Some(30)), 1_000).unwrap();
    let replay = shard.when(start(Some("tok"), Some(30)), 2_000).unwrap();
    assert_eq!(
        replay.outcome,
        Outcome::Reply(ShardReply::Started {
            execution_id: ExecutionId::parse("e1").unwrap(),
            position: None,
            replayed: true,
        })
    );
    assert!(replay.events.is_empty());
    assert_eq!(
        rejection(shard.when(start(Some("tok"), Some(31)), 2_000)),
        RejectionCode::Conflict
    );
    assert_eq!(shard.state.len(), 1, "neither created an execution");
}

#[test]
fn a_token_the_owner_forgot_is_answered_from_the_read_model_within_its_window() {
    let mut shard = given();
    let mut stored = testing::execution("old", "reboot", Some(target()));
    stored.client_token = Some("tok".into());
    let StartRequest { .. } = match start(Some("tok"), Some(10)) {
        ShardRequest::Start(s) => {
            stored.request_fingerprint = fleetcmd_domain::start::fingerprint(&s);
            s
        }
        _ => unreachable!(),
    };
    shard
        .lookups
        .tokens
        .insert((target(), "tok".into()), Some(stored.clone()));
    let within = shard
        .when(start(Some("tok"), Some(10)), stored.deadline() + 1)
        .unwrap();
    assert!(
        matches!(within.outcome, Outcome::Reply(ShardReply::Started { replayed: true, ref execution_id, .. }) if execution_id.as_str() == "old"),
        "{:?}",
        within.outcome
    );
    let day_later = stored.deadline() + 24 * 3600 * 1000;
    let after = shard.when(start(Some("tok"), Some(10)), day_later).unwrap();
    assert!(
        matches!(after.outcome, Outcome::Started { .. }),
        "past its window the token is new"
    );
}

#[test]
fn device_updates_follow_the_state_machine_and_stay_with_their_target() {
    let mut shard = given();
    shard.when(start(None, None), 0).unwrap();
    let other = Target::thing("lamp-2").unwrap();
    assert_eq!(
        rejection(shard.when(report("e1", other, ExecutionStatus::Succeeded), 1)),
        RejectionCode::ResourceNotFound
    );
    let d = shard
        .when(report("e1", target(), ExecutionStatus::InProgress), 2)
        .unwrap();
    assert_eq!(d.events.len(), 1);
    shard
        .when(report("e1", target(), ExecutionStatus::Succeeded), 3)
        .unwrap();
    let e = shard.execution("e1");
    assert_eq!(
        (e.status, e.terminal, e.seq),
        (ExecutionStatus::Succeeded, true, 3)
    );
    assert_eq!(
        rejection(shard.when(report("e1", target(), ExecutionStatus::Failed), 4)),
        RejectionCode::TerminalStateReached
    );
    assert_eq!(
        shard.state.undelivered(4).count(),
        0,
        "an update means it was delivered"
    );
}

#[test]
fn an_evicted_execution_is_read_back_and_an_unknown_one_is_not_found() {
    let mut shard = given();
    let done = testing::execution_in("gone", "reboot", ExecutionStatus::Succeeded);
    let done = Execution {
        target: target(),
        ..done
    };
    shard
        .lookups
        .executions
        .insert(done.execution_id.clone(), Some(done.clone()));
    let d = shard.when(report("gone", target(), ExecutionStatus::Failed), 5);
    assert_eq!(rejection(d), RejectionCode::TerminalStateReached);
    let deleted = shard
        .when(
            ShardRequest::Execution {
                execution_id: done.execution_id.clone(),
                target: target(),
                input: ExecutionInput::Delete,
            },
            6,
        )
        .unwrap();
    assert_eq!(
        deleted.hydrate.as_ref(),
        Some(&done),
        "read back into the state"
    );
    assert!(matches!(
        deleted.outcome,
        Outcome::Execution {
            before: Some(_),
            ..
        }
    ));
    assert!(
        shard.state.execution(&done.execution_id).is_none(),
        "deleted"
    );
    assert_eq!(
        rejection(shard.when(report("nope", target(), ExecutionStatus::Failed), 7)),
        RejectionCode::ResourceNotFound
    );
}

#[test]
fn the_deadline_times_an_execution_out_once_and_a_late_report_settles_it() {
    let mut shard = given();
    shard.when(start(None, Some(5)), 1_000).unwrap();
    assert!(shard.state.take_due_timers(5_999).is_empty(), "not yet due");
    let due = shard.state.take_due_timers(6_000);
    assert_eq!(
        due,
        [TimerKey::Execution(ExecutionId::parse("e1").unwrap())]
    );
    let events = decide::decide_timer(&shard.state, &due[0], 6_000, &SETTINGS);
    assert_eq!(
        events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        [Event::ExecutionTimedOut]
    );
    shard.stage(
        &Decision {
            hydrate: None,
            events,
            outcome: Outcome::Reply(ShardReply::Unavailable(String::new())),
        },
        6_000,
    );
    let e = shard.execution("e1");
    assert_eq!((e.status, e.terminal), (ExecutionStatus::TimedOut, false));
    assert!(
        decide::decide_timer(&shard.state, &due[0], 7_000, &SETTINGS).is_empty(),
        "fires once"
    );
    shard
        .when(report("e1", target(), ExecutionStatus::Succeeded), 8_000)
        .unwrap();
    assert!(shard.execution("e1").terminal);
}

#[test]
fn commands_are_created_once_and_a_scheduled_deletion_arms_a_timer() {
    let mut shard = given();
    let create = ShardRequest::Command {
        command_id: "reboot".into(),
        input: CommandInput::Create(Box::new(CreateCommand {
            command_id: "reboot".into(),
            payload: Some(Payload {
                content: b"x".to_vec(),
                content_type: "text/plain".into(),
            }),
            ..CreateCommand::default()
        })),
    };
    shard.when(create.clone(), 100).unwrap();
    assert!(shard.state.command("reboot").is_some());
    assert_eq!(rejection(shard.when(create, 200)), RejectionCode::Conflict);
    let delete = ShardRequest::Command {
        command_id: "reboot".into(),
        input: CommandInput::Delete,
    };
    shard.when(delete, 300).unwrap();
    let delete_at = shard.state.command("reboot").and_then(|c| c.delete_at);
    assert_eq!(
        delete_at,
        Some(300 + 60_000),
        "not deprecated: scheduled after the wait"
    );
    assert_eq!(shard.state.next_timer(), delete_at);
}

#[test]
fn a_thing_is_created_updated_and_deleted_by_its_shard_with_versions_as_sequence_numbers() {
    let mut shard = given();
    let created = shard
        .when(
            thing_request("lamp-1", create_thing("lamp-1", &[("model", "v1")])),
            5,
        )
        .unwrap();
    assert_eq!(created.events.len(), 1);
    assert_eq!(created.events[0].0, Aggregate::Thing("lamp-1".into()));
    assert_eq!(
        created.outcome,
        Outcome::Thing {
            thing_name: "lamp-1".into()
        }
    );
    let t = shard.state.thing("lamp-1").expect("created");
    assert_eq!((t.version, t.created_at), (1, 5));
    // Created again, identical: nothing is recorded.
    let again = shard
        .when(
            thing_request("lamp-1", create_thing("lamp-1", &[("model", "v1")])),
            6,
        )
        .unwrap();
    assert!(again.events.is_empty());
    shard
        .when(
            thing_request("lamp-1", update_thing(&[("model", "v2")], Some(1))),
            7,
        )
        .unwrap();
    let t = shard.state.thing("lamp-1").unwrap();
    assert_eq!((t.version, t.last_updated_at), (2, 7));
    assert_eq!(shard.state.thing_seq("lamp-1"), t.version);
    assert_eq!(
        rejection(shard.when(thing_request("lamp-1", update_thing(&[], Some(1))), 8)),
        RejectionCode::DataConflict
    );
    shard
        .when(
            thing_request(
                "lamp-1",
                ThingInput::Delete {
                    expected_version: Some(2),
                },
            ),
            9,
        )
        .unwrap();
    assert!(shard.state.thing("lamp-1").is_none());
    assert_eq!(
        rejection(shard.when(
            thing_request("lamp-1", update_thing(&[("a", "b")], None)),
            10
        )),
        RejectionCode::ResourceNotFound
    );
}

#[test]
fn a_things_credentials_are_decided_by_its_shard_and_need_the_thing() {
    let mut shard = given();
    let lamp = Target::thing("lamp-1").unwrap();
    let attach = |n| {
        credential_request(
            &lamp,
            CredentialInput::AttachCertificate(certificate(&lamp, n)),
        )
    };
    // Given no thing lamp-1, its credentials are refused.
    assert_eq!(
        rejection(shard.when(attach(1), 5)),
        RejectionCode::ResourceNotFound
    );
    shard
        .when(thing_request("lamp-1", create_thing("lamp-1", &[])), 6)
        .unwrap();
    // When a certificate is attached, then one event of the owner's aggregate, answered
    // with the stored certificate.
    let attached = shard.when(attach(1), 7).unwrap();
    assert_eq!(attached.events.len(), 1);
    assert_eq!(attached.events[0].0, Aggregate::Credential(lamp.clone()));
    assert_eq!(
        attached.outcome,
        Outcome::Credential {
            owner: lamp.clone(),
            certificate_id: Some(certificate(&lamp, 1).certificate_id),
        }
    );
    let creds = shard.state.credentials(&lamp).expect("stored");
    let stored = &creds.certificates[&certificate(&lamp, 1).certificate_id];
    assert_eq!(
        (stored.status, stored.created_at, creds.version),
        (CertificateStatus::Active, 7, 1)
    );
    // Attached again: nothing recorded.
    assert!(shard.when(attach(1), 8).unwrap().events.is_empty());
    let revoke = credential_request(
        &lamp,
        CredentialInput::RevokeCertificate {
            certificate_id: certificate(&lamp, 1).certificate_id,
        },
    );
    shard.when(revoke.clone(), 9).unwrap();
    assert!(shard.when(revoke, 10).unwrap().events.is_empty());
    let password = CredentialInput::SetPassword {
        hash: "$argon2id$v=19$m=4096,t=2,p=1$abc$def".into(),
    };
    shard
        .when(credential_request(&lamp, password.clone()), 11)
        .unwrap();
    let creds = shard.state.credentials(&lamp).unwrap();
    let stored = &creds.certificates[&certificate(&lamp, 1).certificate_id];
    assert_eq!(
        (stored.status, stored.revoked_at),
        (CertificateStatus::Revoked, Some(9))
    );
    assert_eq!(creds.version, 3);
    assert_eq!(
        shard.state.next_seq(&Aggregate::Credential(lamp.clone())),
        4
    );
    // A bare client needs no thing.
    let client = Target::client("sensor-7").unwrap();
    let set = shard
        .when(credential_request(&client, password), 12)
        .unwrap();
    assert_eq!(set.events.len(), 1);
    assert_eq!(
        shard
            .state
            .credentials(&client)
            .map(|c| c.password_hash.is_some()),
        Some(true)
    );
}

#[test]
fn a_request_for_another_shard_is_sent_back_retryable() {
    let shard = given();
    let settings = Settings {
        shard: 1,
        shards: 1024,
        ..SETTINGS
    };
    // thing/lamp-1 does not hash to shard 1 of 1024.
    assert_ne!(fleetcmd_domain::shard::shard_of("thing/lamp-1", 1024), 1);
    let d = decide::decide(
        &shard.state,
        &start(None, None),
        &shard.lookups,
        0,
        &settings,
        &mut || unreachable!("no execution is created"),
    )
    .unwrap();
    assert!(
        matches!(d.outcome, Outcome::Reply(ShardReply::Unavailable(_))),
        "{:?}",
        d.outcome
    );
}

#[test]
fn terminal_executions_and_tokens_leave_memory_only_once_projected() {
    let mut shard = given();
    for _ in 0..3 {
        shard
            .when(start(Some(&format!("t{}", shard.next_id)), None), 0)
            .unwrap();
    }
    for id in ["e1", "e2", "e3"] {
        shard
            .when(report(id, target(), ExecutionStatus::Succeeded), 10)
            .unwrap();
    }
    // Six records (offsets 0..6); nothing projected yet: nothing leaves.
    shard.state.evict(1, 0, i64::MAX);
    assert_eq!(shard.state.len(), 3);
    assert!(shard.state.holds_token(&(target(), "t0".into())));
    // Projected past e1's and e2's last events (offsets 3 and 4): the cache keeps one.
    shard.state.evict(1, 5, i64::MAX);
    assert_eq!(shard.state.len(), 1);
    assert!(
        shard
            .state
            .execution(&ExecutionId::parse("e3").unwrap())
            .is_some()
    );
    assert!(
        !shard.state.holds_token(&(target(), "t0".into())),
        "past its memory time and projected"
    );
    // A token still within its memory time stays, projected or not.
    let mut fresh = given();
    fresh.when(start(Some("keep"), None), 0).unwrap();
    fresh.state.evict(0, u64::MAX, 59_999);
    assert!(fresh.state.holds_token(&(target(), "keep".into())));
}

#[test]
fn a_rebuild_from_the_log_equals_the_state_the_owner_staged() {
    let mut shard = given();
    let mut log: Vec<Vec<EventEnvelope>> = Vec::new();
    let mut record = |shard: &mut Shard, req: ShardRequest, now: TimestampMs| {
        logged(shard, &mut log, now, |s| Some(s.when(req, now).unwrap()));
    };
    record(&mut shard, start(Some("a"), Some(100)), 1);
    record(&mut shard, start(None, Some(100)), 2);
    record(
        &mut shard,
        report("e1", target(), ExecutionStatus::InProgress),
        3,
    );
    record(
        &mut shard,
        report("e2", target(), ExecutionStatus::Succeeded),
        4,
    );
    let mut rebuilt = ShardState::new(60_000);
    for (offset, events) in log.iter().enumerate() {
        rebuilt.apply_record(events, offset as u64);
    }
    assert_eq!(rebuilt.live(), shard.state.live());
    assert_eq!(rebuilt.next_offset(), log.len() as u64);
    assert_eq!(rebuilt.next_timer(), shard.state.next_timer());
    assert_eq!(
        rebuilt.token(&(target(), "a".into())),
        shard.state.token(&(target(), "a".into()))
    );
}

/// Decides with `decide` (which stages its decision into the shard) and appends to `log` the
/// record the owner would write for it: the decision's events, numbered from the state
/// before it as the owner numbers them.
fn logged(
    shard: &mut Shard,
    log: &mut Vec<Vec<EventEnvelope>>,
    now: TimestampMs,
    decide: impl FnOnce(&mut Shard) -> Option<Decision>,
) {
    let mut scratch = shard.state.clone();
    let Some(d) = decide(shard) else {
        return;
    };
    if let Some(e) = &d.hydrate {
        scratch.hydrate(e.clone());
    }
    let mut envelopes = Vec::new();
    for (aggregate, event) in d.events {
        let seq = scratch.next_seq(&aggregate);
        let env = envelope(aggregate, seq, now, event);
        scratch.apply(&env, log.len() as u64);
        envelopes.push(env);
    }
    if !envelopes.is_empty() {
        log.push(envelopes);
    }
}

#[test]
fn a_rebuild_from_a_snapshot_and_the_tail_equals_a_rebuild_from_offset_zero() {
    // Given a log with live, settled and timed-out executions, tokens and a command.
    let mut shard = given();
    let mut log = Vec::new();
    let request = |shard: &mut Shard, log: &mut Vec<_>, req: ShardRequest, now| {
        logged(shard, log, now, |s| s.when(req, now).ok());
    };
    for i in 0..6 {
        let token = format!("t{i}");
        request(&mut shard, &mut log, start(Some(&token), Some(100)), 10 + i);
    }
    request(&mut shard, &mut log, start(None, Some(5)), 20);
    for (i, input) in [
        create_thing("lamp-1", &[("model", "v1")]),
        create_thing("lamp-2", &[]),
        update_thing(&[("model", "v2")], None),
        ThingInput::Delete {
            expected_version: None,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let name = if i == 1 || i == 3 { "lamp-2" } else { "lamp-1" };
        request(
            &mut shard,
            &mut log,
            thing_request(name, input),
            21 + i as i64,
        );
    }
    let lamp = Target::thing("lamp-1").unwrap();
    for (i, input) in [
        CredentialInput::AttachCertificate(certificate(&lamp, 1)),
        CredentialInput::AttachCertificate(certificate(&lamp, 2)),
        CredentialInput::RevokeCertificate {
            certificate_id: certificate(&lamp, 1).certificate_id,
        },
        CredentialInput::SetPassword {
            hash: "$argon2id$v=19$x".into(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        request(
            &mut shard,
            &mut log,
            credential_request(&lamp, input),
            25 + i as i64,
        );
    }
    assert_eq!(shard.state.credentials(&lamp).map(|c| c.version), Some(4));
    for (i, status) in [
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("e{}", i + 1);
        request(
            &mut shard,
            &mut log,
            report(&id, target(), status),
            30 + i as i64,
        );
    }
    let now = 10_000;
    for key in shard.state.take_due_timers(now) {
        logged(&mut shard, &mut log, now, |s| {
            let events = decide::decide_timer(&s.state, &key, now, &SETTINGS);
            let d = Decision {
                hydrate: None,
                events,
                outcome: Outcome::Reply(ShardReply::Unavailable(String::new())),
            };
            s.stage(&d, now);
            Some(d)
        });
    }
    assert!(log.len() >= 10, "the log holds {} records", log.len());
    assert!(
        log.iter()
            .flatten()
            .any(|e| e.event == Event::ExecutionTimedOut),
        "a timeout is in the log"
    );

    let from_zero = |upto: usize| {
        let mut s = ShardState::new(60_000);
        for (offset, events) in log[..upto].iter().enumerate() {
            s.apply_record(events, offset as u64);
        }
        s
    };
    let full = from_zero(log.len());
    // When a new owner starts from a snapshot taken at any offset (encoded and decoded as
    // the snapshot store keeps it) and replays the rest of the log,
    for at in 0..=log.len() {
        let saved = fleetcmd_contracts::codec::encode_snapshot(&from_zero(at).to_snapshot());
        let loaded = fleetcmd_contracts::codec::decode_snapshot(&saved).expect("decodes");
        let mut resumed = ShardState::from_snapshot(loaded, 60_000);
        assert_eq!(resumed.next_offset(), at as u64);
        for (offset, events) in log.iter().enumerate().skip(at) {
            resumed.apply_record(events, offset as u64);
        }
        // then it holds exactly what a rebuild from offset 0 holds: executions and their
        // offsets, tokens, undelivered payloads, traces, commands, things, and the same next
        // timer.
        assert_eq!(
            resumed.to_snapshot(),
            full.to_snapshot(),
            "a snapshot at offset {at} plus the tail"
        );
        assert_eq!(resumed.next_timer(), full.next_timer(), "at offset {at}");
    }
}

/// Rebuild time of a shard whose log holds `FLEETCMD_REBUILD_EVENTS` events (1,000,000 by
/// default) in the SQLite log, from offset 0 and from a snapshot taken 1,000 records before
/// the end: the same read, decode and fold the owner's rebuild does. A measurement, not a
/// check (figures in BENCHMARKS.md):
/// `cargo test --release -p fleetcmd-dispatcher measure_rebuild -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run by hand"]
fn measure_rebuild_with_and_without_a_snapshot() {
    use std::time::Instant;

    use fleetcmd_adapters::embedded::sqlite::{Durability, SqliteStore};
    use fleetcmd_contracts::codec;
    use fleetcmd_domain::ports::{EventLog, SnapshotStore};

    let events_wanted: usize = std::env::var("FLEETCMD_REBUILD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("log.db"), 1, Durability::Process).unwrap();

    // A log as the owner writes it: each execution started, then IN_PROGRESS, then settled.
    let mut shard = given();
    let (mut events, mut records) = (0usize, 0u64);
    let mut batch: Vec<(String, bytes::Bytes)> = Vec::new();
    let mut now = 1_000;
    while events < events_wanted {
        now += 1;
        let reqs = [
            start(None, Some(3_600)),
            report(
                &format!("e{}", shard.next_id + 1),
                target(),
                ExecutionStatus::InProgress,
            ),
            report(
                &format!("e{}", shard.next_id + 1),
                target(),
                ExecutionStatus::Succeeded,
            ),
        ];
        for req in reqs {
            let d = shard.when(req, now).unwrap();
            let n = d.events.len() as u64;
            let envs: Vec<EventEnvelope> = d
                .events
                .into_iter()
                .enumerate()
                .map(|(i, (aggregate, event))| {
                    // `when` staged the events already: number them back from the state.
                    let seq = shard.state.next_seq(&aggregate) + i as u64 - n;
                    envelope(aggregate, seq, now, event)
                })
                .collect();
            events += envs.len();
            records += 1;
            batch.push(("k".into(), codec::encode_record(&envs).into()));
        }
        if batch.len() >= 3_000 {
            rt.block_on(store.append(0, std::mem::take(&mut batch)))
                .unwrap();
            shard.state.evict(2_048, shard.offset, now);
        }
    }
    rt.block_on(store.append(0, batch)).unwrap();

    let rebuild = |from: u64, mut state: ShardState| {
        let mut from = from;
        loop {
            let read = rt.block_on(store.read(0, from, 4_096)).unwrap();
            let Some(last) = read.last() else { break };
            from = last.offset + 1;
            for r in &read {
                state.apply_record(&codec::decode_record(&r.payload).unwrap(), r.offset);
            }
            state.evict(2_048, from, now);
        }
        state
    };
    let t = Instant::now();
    let full = rebuild(0, ShardState::new(60_000));
    let from_zero = t.elapsed();

    // A snapshot 1,000 records before the end, saved and loaded through the store.
    let at = records - 1_000;
    let mut head = ShardState::new(60_000);
    let read_to = |state: &mut ShardState| {
        let mut from = 0;
        while from < at {
            let max = 4_096.min((at - from) as usize);
            let read = rt.block_on(store.read(0, from, max)).unwrap();
            from = read.last().unwrap().offset + 1;
            for r in &read {
                state.apply_record(&codec::decode_record(&r.payload).unwrap(), r.offset);
            }
            state.evict(2_048, from, now);
        }
    };
    read_to(&mut head);
    let data = codec::encode_snapshot(&head.to_snapshot());
    let size = data.len();
    rt.block_on(store.save_snapshot(0, at, data.into()))
        .unwrap();

    let t = Instant::now();
    let (offset, data) = rt.block_on(store.load_snapshot(0)).unwrap().unwrap();
    let state = ShardState::from_snapshot(codec::decode_snapshot(&data).unwrap(), 60_000);
    let resumed = rebuild(offset, state);
    let from_snapshot = t.elapsed();
    assert_eq!(resumed.live(), full.live());
    println!(
        "rebuild of {events} events in {records} records: from offset 0 {:.2} s; from a \
         snapshot ({size} bytes) + 1,000 records {:.3} s",
        from_zero.as_secs_f64(),
        from_snapshot.as_secs_f64()
    );
}
