//! Every event type, shard request and reply, and bus message survives an encode/decode
//! round trip unchanged; malformed bytes and missing fields are named errors.

use std::collections::BTreeMap;

use fleetcmd_domain::ca::{CaCertificate, CaEvent, CaInput};
use fleetcmd_domain::command::{CommandInput, CreateCommand, UpdateCommand};
use fleetcmd_domain::credential::{
    CertificateRecord, CertificateStatus, CredentialEvent, CredentialInput, Credentials,
};
use fleetcmd_domain::error::{Rejection, RejectionCode};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope, SCHEMA_VERSION};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::group::{GroupEvent, GroupInput, ThingGroup};
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::{
    Command, CommandBody, CommandParameter, ComparisonOperator, ExecutionStatus, Operand,
    OutputFormat, ParameterType, ParameterValue, Payload, PayloadTemplate, ResultValue,
    StatusReason, ValueCondition,
};
use fleetcmd_domain::protocol::{
    Delivery, ExecutionChanged, LogPosition, Projected, ShardReply, ShardRequest,
};
use fleetcmd_domain::rollout::{
    AbortCriterion, EndBehavior, FailureType, IncreaseCriteria, MaintenanceWindow, Rate,
    RetryCriterion, RetryFailureType, Rollout, RolloutEvent, RolloutId, RolloutInput, RolloutSpec,
    Schedule, TargetSelection, TargetSelector,
};
use fleetcmd_domain::start::StartRequest;
use fleetcmd_domain::testing;
use fleetcmd_domain::thing::{CreateThing, Thing, ThingEvent, ThingInput, UpdateThing};

use super::*;

fn reason() -> Option<StatusReason> {
    Some(StatusReason {
        reason_code: "E42".into(),
        reason_description: "why".into(),
    })
}

fn result() -> BTreeMap<String, ResultValue> {
    BTreeMap::from([
        ("s".to_string(), ResultValue::S("text".into())),
        ("b".to_string(), ResultValue::B(true)),
        ("bin".to_string(), ResultValue::Bin(vec![0, 1, 255])),
    ])
}

fn parameters() -> BTreeMap<String, ParameterValue> {
    BTreeMap::from([
        ("s".to_string(), ParameterValue::S("x".into())),
        ("b".to_string(), ParameterValue::B(false)),
        ("i".to_string(), ParameterValue::I(-3)),
        ("l".to_string(), ParameterValue::L(i64::MIN)),
        ("d".to_string(), ParameterValue::D(2.5)),
        ("bin".to_string(), ParameterValue::Bin(vec![9])),
        ("ul".to_string(), ParameterValue::Ul(u64::MAX)),
    ])
}

fn template_command() -> Command {
    Command {
        command_id: CommandId::parse("set-level").unwrap(),
        namespace: "AWS-IoT".into(),
        display_name: "Set level".into(),
        description: "d".into(),
        body: CommandBody::Template(PayloadTemplate {
            template: r#"{"v": "${aws:iot:commandexecution::parameter:v}"}"#.into(),
            output_format: OutputFormat::Cbor,
        }),
        parameters: vec![CommandParameter {
            name: "v".into(),
            r#type: ParameterType::Integer,
            default_value: Some(ParameterValue::I(1)),
            value: None,
            value_conditions: vec![ValueCondition {
                operator: ComparisonOperator::InRange,
                operand: Operand::NumberRange {
                    min: "0".into(),
                    max: "9".into(),
                },
            }],
            description: "level".into(),
        }],
        tags: BTreeMap::from([("team".to_string(), "lab".to_string())]),
        created_at: 1,
        last_updated_at: 2,
        deprecated: true,
        deprecated_at: Some(2),
        delete_at: Some(3),
        supersede_pending: true,
    }
}

fn static_command() -> Command {
    Command {
        body: CommandBody::Static(Payload {
            content: b"reboot".to_vec(),
            content_type: "text/plain".into(),
        }),
        parameters: vec![],
        deprecated: false,
        deprecated_at: None,
        delete_at: None,
        supersede_pending: false,
        ..template_command()
    }
}

fn full_execution() -> fleetcmd_domain::model::Execution {
    let mut e = testing::execution("e-1", "set-level", Some(Target::client("c-9").unwrap()));
    e.status = ExecutionStatus::Succeeded;
    e.status_reason = reason();
    e.result = result();
    e.parameters = parameters();
    e.client_token = Some("tok".into());
    e.completed_at = Some(5_000);
    e.terminal = true;
    e.seq = 3;
    e.request_fingerprint = 0xdead_beef;
    e
}

/// One event of every type.
fn thing() -> Thing {
    Thing {
        thing_name: "lamp-1".into(),
        attributes: BTreeMap::from([("model".to_string(), "v2".to_string())]),
        max_in_flight: Some(2),
        groups: ["floor-3".to_string()].into(),
        version: 4,
        created_at: 10,
        last_updated_at: 20,
    }
}

fn certificate(owner: Target, revoked_at: Option<i64>) -> CertificateRecord {
    CertificateRecord {
        certificate_id: "ab".repeat(32),
        owner,
        status: if revoked_at.is_some() {
            CertificateStatus::Revoked
        } else {
            CertificateStatus::Active
        },
        certificate_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        ca_certificate_id: "cd".repeat(32),
        not_before: 1_000,
        not_after: 2_000,
        created_at: 1_500,
        revoked_at,
    }
}

fn credentials() -> Credentials {
    let owner = Target::client("sensor-7").unwrap();
    let c = certificate(owner.clone(), Some(1_600));
    Credentials {
        owner,
        certificates: [(c.certificate_id.clone(), c)].into(),
        password_hash: Some("$argon2id$v=19$m=4096,t=2,p=1$c2FsdA$aGFzaA".into()),
        version: 3,
    }
}

fn registered_ca(common_name: Option<&str>) -> CaCertificate {
    CaCertificate {
        ca_certificate_id: "cd".repeat(32),
        certificate_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        common_name: common_name.map(str::to_owned),
        not_before: 1_000,
        not_after: 9_000,
        registered_at: 2_000,
        version: 1,
    }
}

fn group(query_string: Option<&str>) -> ThingGroup {
    ThingGroup {
        thing_group_name: "lab:floor-3".into(),
        description: "Lamps on the third floor".into(),
        query_string: query_string.map(str::to_owned),
        created_at: 1_700_000_000_000,
        version: 2,
    }
}

fn every_event() -> Vec<Event> {
    let thing_events = [
        ThingEvent::Created(thing()),
        ThingEvent::Created(Thing {
            attributes: BTreeMap::new(),
            max_in_flight: None,
            groups: Default::default(),
            ..thing()
        }),
        ThingEvent::Updated {
            attributes: BTreeMap::from([("a".to_string(), "b".to_string())]),
            max_in_flight: None,
        },
        ThingEvent::Updated {
            attributes: BTreeMap::new(),
            max_in_flight: Some(1),
        },
        ThingEvent::Deleted,
        ThingEvent::AddedToGroup { group: "g".into() },
        ThingEvent::RemovedFromGroup { group: "g".into() },
    ];
    let mut events = vec![
        Event::CommandCreated {
            command: template_command(),
        },
        Event::CommandCreated {
            command: static_command(),
        },
        Event::CommandUpdated {
            display_name: Some("n".into()),
            description: None,
            deprecated: Some(false),
        },
        Event::CommandUpdated {
            display_name: None,
            description: Some(String::new()),
            deprecated: None,
        },
        Event::CommandDeletionScheduled { delete_at: 99 },
        Event::CommandDeleted,
        Event::ExecutionStarted {
            execution: Box::new(full_execution()),
            payload: Payload {
                content: vec![0xa1, 0x61, 0x76, 0x01],
                content_type: "application/cbor".into(),
            },
            request_fingerprint: 7,
        },
        Event::StatusReported {
            status: ExecutionStatus::InProgress,
            status_reason: None,
            result: None,
        },
        Event::StatusReported {
            status: ExecutionStatus::Failed,
            status_reason: reason(),
            result: Some(result()),
        },
        Event::StatusReported {
            status: ExecutionStatus::Succeeded,
            status_reason: None,
            result: Some(BTreeMap::new()),
        },
        Event::ExecutionTimedOut,
        Event::ExecutionCanceled {
            status_reason: reason(),
        },
        Event::ExecutionCanceled {
            status_reason: None,
        },
        Event::ExecutionDeleted,
    ];
    events.extend(thing_events.map(|event| Event::Thing { event }));
    let credential_events = [
        CredentialEvent::CertificateAttached(certificate(Target::thing("lamp-1").unwrap(), None)),
        CredentialEvent::CertificateAttached(certificate(
            Target::thing("lamp-1").unwrap(),
            Some(7),
        )),
        CredentialEvent::CertificateRevoked {
            certificate_id: "ab".repeat(32),
        },
        CredentialEvent::PasswordSet {
            hash: "$argon2id$v=19$x".into(),
        },
    ];
    events.extend(credential_events.map(|event| Event::Credential { event }));
    for common_name in [Some("Acme CA"), None] {
        events.push(Event::Ca {
            event: CaEvent::Registered(registered_ca(common_name)),
        });
    }
    for event in [
        GroupEvent::Created(group(None)),
        GroupEvent::Created(group(Some("attributes.floor >= 3"))),
        GroupEvent::Deleted,
    ] {
        events.push(Event::Group { event });
    }
    events.extend(
        rollout_events()
            .into_iter()
            .map(|event| Event::Rollout { event }),
    );
    events
}

/// Every kind of rollout event, with a list spec narrowed by the caller's grant and a group
/// spec with every setting.
fn rollout_events() -> Vec<RolloutEvent> {
    let lamp = Target::thing("lab-1").unwrap();
    let mut listed = RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        TargetSelector::List(vec![lamp.clone(), Target::client("sensor-7").unwrap()]),
        Rate::Fixed { max_per_minute: 60 },
    );
    listed.allowed_targets = Some(vec!["thing/lab-*".into()]);
    let mut grouped = RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        TargetSelector::Group("lab".into()),
        Rate::ExponentialRampUp {
            base_per_minute: 5,
            increment_factor: 1.5,
            increase_after: IncreaseCriteria {
                notified: None,
                succeeded: Some(10),
            },
            max_per_minute: 500,
        },
    );
    grouped.parameters = parameters();
    grouped.execution_timeout_secs = Some(120);
    grouped.target_selection = TargetSelection::Continuous;
    grouped.max_in_flight = Some(20);
    grouped.abort_criteria = vec![criterion()];
    grouped.cancel_in_progress = true;
    grouped.retries = vec![RetryCriterion {
        failure_type: RetryFailureType::TimedOut,
        number_of_retries: 2,
    }];
    grouped.retry_backoff_base_secs = 5;
    grouped.schedule = Some(Schedule {
        start_time: Some(1_800_000_000_000),
        end_time: Some(1_800_000_600_000),
        end_behavior: EndBehavior::Cancel,
        maintenance_windows: vec![MaintenanceWindow {
            start: "*/15 * * * *".into(),
            duration_minutes: 5,
        }],
    });
    grouped.client_token = Some("deploy-1".into());
    let execution_id = ExecutionId::parse("e-9").unwrap();
    let mut events = vec![];
    for spec in [listed, grouped] {
        events.push(RolloutEvent::RolloutStarted {
            rollout_id: RolloutId::parse("r-1").unwrap(),
            spec: Box::new(spec),
            created_at: 1_700_000_000_000,
        });
    }
    events.extend([
        RolloutEvent::TargetsAdded {
            targets: vec![lamp.clone(), Target::thing("lab-2").unwrap()],
        },
        RolloutEvent::TargetsResolved,
        RolloutEvent::StartTimeReached,
        RolloutEvent::AttemptLaunching {
            target_index: 3,
            target: lamp.clone(),
            attempt: 2,
        },
        RolloutEvent::AttemptLaunched {
            target_index: 3,
            target: lamp.clone(),
            attempt: 2,
            execution_id: execution_id.clone(),
        },
        RolloutEvent::AttemptRefused {
            target_index: 3,
            target: lamp.clone(),
            attempt: 1,
            code: RejectionCode::ResourceNotFound,
        },
        RolloutEvent::AttemptSettled {
            target_index: 3,
            target: lamp,
            attempt: 2,
            execution_id: execution_id.clone(),
            status: ExecutionStatus::TimedOut,
        },
        RolloutEvent::RateIncreased { per_minute: 7 },
        RolloutEvent::Aborted {
            criterion: criterion(),
        },
        RolloutEvent::CancelRequested { force: true },
        RolloutEvent::ExecutionsCanceling {
            execution_ids: vec![execution_id],
        },
        RolloutEvent::EndTimeReached,
        RolloutEvent::Completed,
        RolloutEvent::Canceled,
    ]);
    events
}

/// A rollout as its owner holds it: one target skipped as not granted, one attempt
/// launched, one logged as launching, a retry criterion and an abort criterion.
fn hosted_rollout() -> Rollout {
    use fleetcmd_domain::rollout::{apply, decide, plan};
    let at = 1_800_000_000_000;
    let lab = |i: u32| Target::thing(format!("lab-{i}")).unwrap();
    let mut spec = RolloutSpec::new(
        CommandId::parse("reboot").unwrap(),
        TargetSelector::List(vec![lab(1), Target::thing("office-1").unwrap(), lab(2)]),
        Rate::Fixed {
            max_per_minute: 60_000,
        },
    );
    spec.allowed_targets = Some(vec!["thing/lab-*".into()]);
    spec.abort_criteria = vec![criterion()];
    spec.retries = vec![RetryCriterion {
        failure_type: RetryFailureType::All,
        number_of_retries: 1,
    }];
    let start = RolloutInput::Start {
        rollout_id: RolloutId::parse("r-1").unwrap(),
        spec: Box::new(spec),
    };
    let mut state = None;
    let fold = |state: &mut Option<_>, events: Vec<RolloutEvent>| {
        for e in &events {
            apply(state, e, at);
        }
    };
    fold(&mut state, decide(None, &start, at).unwrap());
    for now in [at, at + 1] {
        let planned = plan(state.as_ref().unwrap(), now).events;
        fold(&mut state, planned);
    }
    let launched = RolloutInput::Launched {
        target: lab(1),
        attempt: 1,
        execution_id: ExecutionId::parse("e-1").unwrap(),
    };
    let events = decide(state.as_ref(), &launched, at).unwrap();
    fold(&mut state, events);
    let r = state.unwrap();
    let held = r.to_snapshot();
    assert_eq!(
        (held.live.len(), held.counts.skipped_unauthorized),
        (2, 1),
        "{held:?}"
    );
    r
}

fn criterion() -> AbortCriterion {
    AbortCriterion {
        failure_type: FailureType::All,
        threshold_percentage: 12.5,
        min_number_of_executed_things: 8,
    }
}

fn envelope(event: Event, seq: u64, trace: Option<&str>) -> EventEnvelope {
    let aggregate = match &event {
        Event::CommandCreated { .. }
        | Event::CommandUpdated { .. }
        | Event::CommandDeletionScheduled { .. }
        | Event::CommandDeleted => Aggregate::Command(CommandId::parse("set-level").unwrap()),
        Event::Thing { .. } => Aggregate::Thing("lamp-1".into()),
        Event::Credential {
            event: CredentialEvent::PasswordSet { .. },
        } => Aggregate::Credential(Target::client("sensor-7").unwrap()),
        Event::Credential { .. } => Aggregate::Credential(Target::thing("lamp-1").unwrap()),
        Event::Ca { .. } => Aggregate::Ca("cd".repeat(32)),
        Event::Group { .. } => Aggregate::Group("lab:floor-3".into()),
        Event::Rollout { .. } => Aggregate::Rollout(RolloutId::parse("r-1").unwrap()),
        _ => Aggregate::Execution {
            execution_id: ExecutionId::parse("e-1").unwrap(),
            target: Target::thing("lamp-1").unwrap(),
        },
    };
    EventEnvelope {
        event_id: format!("id-{seq}"),
        schema: SCHEMA_VERSION,
        aggregate,
        seq,
        at: 1_700_000_000_000 + seq as i64,
        trace: trace.map(str::to_owned),
        event,
    }
}

#[test]
fn every_event_type_decodes_to_what_was_encoded() {
    for (i, event) in every_event().into_iter().enumerate() {
        let env = envelope(event, i as u64 + 1, (i % 2 == 0).then_some("00-ab-cd-01"));
        let bytes = encode_record(std::slice::from_ref(&env));
        let decoded = decode_record(&bytes).unwrap_or_else(|e| panic!("{env:?}: {e}"));
        assert_eq!(decoded, vec![env]);
    }
}

#[test]
fn a_record_keeps_the_order_of_its_events() {
    let events: Vec<EventEnvelope> = every_event()
        .into_iter()
        .enumerate()
        .map(|(i, e)| envelope(e, i as u64 + 1, None))
        .collect();
    let decoded = decode_record(&encode_record(&events)).unwrap();
    assert_eq!(decoded, events);
    assert_eq!(decode_record(&encode_record(&[])).unwrap(), vec![]);
}

#[test]
fn malformed_records_and_missing_fields_are_named_errors() {
    let err = decode_record(&[0xff, 0xff, 0xff]).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Malformed {
                what: "log record",
                ..
            }
        ),
        "{err}"
    );
    // An envelope without an event.
    let mut env = envelope_to_pb(&envelope(Event::ExecutionTimedOut, 1, None));
    env.event = None;
    let bytes = prost::Message::encode_to_vec(&ipb::LogRecord { events: vec![env] });
    assert_eq!(
        decode_record(&bytes).unwrap_err(),
        CodecError::Missing("event.event")
    );
    // An execution id the domain refuses.
    let mut env = envelope_to_pb(&envelope(Event::ExecutionTimedOut, 1, None));
    env.aggregate = Some(ipb::event_envelope::Aggregate::Execution(
        ipb::ExecutionRef {
            execution_id: "not an id!".into(),
            target: Some(pb::Target {
                kind: pb::TargetKind::Thing as i32,
                id: "t".into(),
            }),
        },
    ));
    let bytes = prost::Message::encode_to_vec(&ipb::LogRecord { events: vec![env] });
    let CodecError::Invalid(v) = decode_record(&bytes).unwrap_err() else {
        panic!("a bad id must be a validation error")
    };
    assert_eq!(v.field, "execution_id");
}

fn every_request() -> Vec<ShardRequest> {
    let target = Target::thing("lamp-1").unwrap();
    let id = ExecutionId::parse("e-1").unwrap();
    let mut requests = vec![
        ShardRequest::Start(StartRequest {
            command_id: CommandId::parse("c").unwrap(),
            target: target.clone(),
            parameters: parameters(),
            timeout_secs: Some(30),
            client_token: Some("tok".into()),
        }),
        ShardRequest::Start(StartRequest {
            command_id: CommandId::parse("c").unwrap(),
            target: target.clone(),
            parameters: BTreeMap::new(),
            timeout_secs: None,
            client_token: None,
        }),
    ];
    for input in [
        ExecutionInput::Report {
            status: ExecutionStatus::Succeeded,
            status_reason: reason(),
            result: Some(result()),
        },
        ExecutionInput::Report {
            status: ExecutionStatus::InProgress,
            status_reason: None,
            result: None,
        },
        ExecutionInput::CloudTimeout,
        ExecutionInput::Cancel {
            status_reason: reason(),
        },
        ExecutionInput::Cancel {
            status_reason: None,
        },
        ExecutionInput::Delete,
    ] {
        requests.push(ShardRequest::Execution {
            execution_id: id.clone(),
            target: target.clone(),
            input,
        });
    }
    for input in [
        CommandInput::Create(Box::new(CreateCommand {
            command_id: "c".into(),
            namespace: String::new(),
            display_name: "d".into(),
            description: String::new(),
            payload: Some(Payload {
                content: b"x".to_vec(),
                content_type: String::new(),
            }),
            template: Some(PayloadTemplate {
                template: "{}".into(),
                output_format: OutputFormat::Json,
            }),
            parameters: template_command().parameters,
            tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
            supersede_pending: true,
        })),
        CommandInput::Update(UpdateCommand {
            display_name: None,
            description: Some("new".into()),
            deprecated: Some(true),
        }),
        CommandInput::Delete,
        CommandInput::Expire,
    ] {
        requests.push(ShardRequest::Command {
            command_id: "c".into(),
            input,
        });
    }
    for input in [
        ThingInput::Create(CreateThing {
            thing_name: "lamp-1".into(),
            attributes: thing().attributes,
            max_in_flight: Some(3),
        }),
        ThingInput::Create(CreateThing {
            thing_name: "lamp-1".into(),
            ..Default::default()
        }),
        ThingInput::Update(UpdateThing {
            attributes: BTreeMap::from([("k".to_string(), String::new())]),
            replace_attributes: true,
            max_in_flight: Some(Some(5)),
            expected_version: Some(2),
        }),
        ThingInput::Update(UpdateThing {
            max_in_flight: Some(None),
            ..Default::default()
        }),
        ThingInput::Update(UpdateThing::default()),
        ThingInput::Delete {
            expected_version: Some(9),
        },
        ThingInput::Delete {
            expected_version: None,
        },
        ThingInput::AddToGroup { group: "g".into() },
        ThingInput::RemoveFromGroup { group: "g".into() },
    ] {
        requests.push(ShardRequest::Thing {
            thing_name: "lamp-1".into(),
            input,
        });
    }
    for (owner, input) in [
        (
            Target::thing("lamp-1").unwrap(),
            CredentialInput::AttachCertificate(certificate(Target::thing("lamp-1").unwrap(), None)),
        ),
        (
            Target::client("sensor-7").unwrap(),
            CredentialInput::RevokeCertificate {
                certificate_id: "ab".repeat(32),
            },
        ),
        (
            Target::client("sensor-7").unwrap(),
            CredentialInput::SetPassword {
                hash: "$argon2id$v=19$x".into(),
            },
        ),
    ] {
        requests.push(ShardRequest::Credential { owner, input });
    }
    requests.push(ShardRequest::DeliverPending {
        target: Target::client("sensor-7").unwrap(),
    });
    requests.push(ShardRequest::Ca {
        ca_certificate_id: "cd".repeat(32),
        input: CaInput::Register(registered_ca(Some("Acme CA"))),
    });
    for input in [
        GroupInput::Create {
            description: "d".into(),
            query_string: Some("group:lab".into()),
        },
        GroupInput::Create {
            description: String::new(),
            query_string: None,
        },
        GroupInput::Delete,
    ] {
        requests.push(ShardRequest::Group {
            thing_group_name: "lab".into(),
            input,
        });
    }
    let rollout_id = RolloutId::parse("r-1").unwrap();
    let mut inputs: Vec<RolloutInput> = rollout_events()
        .into_iter()
        .filter_map(|e| match e {
            RolloutEvent::RolloutStarted {
                rollout_id, spec, ..
            } => Some(RolloutInput::Start { rollout_id, spec }),
            _ => None,
        })
        .collect();
    inputs.extend([
        RolloutInput::Cancel { force: true },
        RolloutInput::AddTargets {
            targets: vec![target.clone(), Target::client("c-1").unwrap()],
        },
        RolloutInput::TargetsResolved,
        RolloutInput::Launched {
            target: target.clone(),
            attempt: 3,
            execution_id: id.clone(),
        },
        RolloutInput::LaunchRefused {
            target,
            attempt: 1,
            code: RejectionCode::FailedPrecondition,
        },
        RolloutInput::Settled {
            execution_id: id,
            status: ExecutionStatus::Rejected,
        },
    ]);
    assert_eq!(inputs.len(), 8, "two starts and every other input");
    for input in inputs {
        requests.push(ShardRequest::Rollout {
            rollout_id: rollout_id.clone(),
            input,
        });
    }
    requests.push(ShardRequest::ReadRollout { rollout_id });
    requests.push(ShardRequest::ListRollouts { shard: 7 });
    requests
}

#[test]
fn every_shard_request_decodes_to_what_was_encoded() {
    for request in every_request() {
        let decoded = decode_shard_request(&encode_shard_request(&request))
            .unwrap_or_else(|e| panic!("{request:?}: {e}"));
        assert_eq!(decoded, request);
    }
    assert!(matches!(
        decode_shard_request(&[]).unwrap_err(),
        CodecError::Missing("shard_request.request")
    ));
}

#[test]
fn every_shard_reply_decodes_to_what_was_encoded() {
    let position = Some(LogPosition {
        partition: 3,
        next_offset: 42,
    });
    let mut replies = vec![
        ShardReply::Started {
            execution_id: ExecutionId::parse("e-1").unwrap(),
            position,
            replayed: false,
        },
        ShardReply::Started {
            execution_id: ExecutionId::parse("e-2").unwrap(),
            position: None,
            replayed: true,
        },
        ShardReply::Execution {
            execution: Box::new(full_execution()),
            position,
        },
        ShardReply::Command {
            command: Some(Box::new(template_command())),
            deleted: false,
            position,
        },
        ShardReply::Command {
            command: None,
            deleted: true,
            position: None,
        },
        ShardReply::Thing {
            thing: Some(Box::new(thing())),
            deleted: false,
            position,
        },
        ShardReply::Thing {
            thing: None,
            deleted: true,
            position: None,
        },
        ShardReply::Credential {
            certificate: Some(Box::new(certificate(
                Target::client("sensor-7").unwrap(),
                Some(9),
            ))),
            position,
        },
        ShardReply::Credential {
            certificate: None,
            position: None,
        },
        ShardReply::Ca {
            ca: Some(Box::new(registered_ca(None))),
            position,
        },
        ShardReply::Ca {
            ca: None,
            position: None,
        },
        ShardReply::DeliveredPending { count: 3 },
        ShardReply::Group {
            group: Some(Box::new(group(Some("thing_name:lab-*")))),
            position,
        },
        ShardReply::Group {
            group: None,
            position: None,
        },
        ShardReply::Rollout {
            rollout: Some(Box::new(hosted_rollout().summary())),
            position,
        },
        ShardReply::Rollout {
            rollout: None,
            position: None,
        },
        ShardReply::Rollouts {
            rollouts: vec![hosted_rollout().summary(), hosted_rollout().summary()],
        },
        ShardReply::Rollouts { rollouts: vec![] },
        ShardReply::Unavailable("moving".into()),
    ];
    for (code, _) in REJECTION_CODES {
        replies.push(ShardReply::Rejected(Rejection {
            code,
            message: "no".into(),
            field: Some("f".into()),
        }));
    }
    replies.push(ShardReply::Rejected(Rejection::new(
        RejectionCode::Conflict,
        "m",
    )));
    for reply in replies {
        let decoded = decode_shard_reply(&encode_shard_reply(&reply))
            .unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert_eq!(decoded, reply);
    }
}

#[test]
fn bus_messages_decode_to_what_was_encoded() {
    for d in [
        Delivery {
            topic: "$aws/commands/things/t/executions/e/request/json".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            expires_at: Some(12),
        },
        Delivery {
            topic: "t".into(),
            payload: vec![],
            content_type: String::new(),
            expires_at: None,
        },
    ] {
        assert_eq!(decode_delivery(&encode_delivery(&d)).unwrap(), d);
    }
    let e = full_execution();
    let changed = ExecutionChanged::from_execution(&e, 77);
    assert_eq!(decode_changed(&encode_changed(&changed)).unwrap(), changed);
    let p = Projected {
        partition: 5,
        next_offset: u64::MAX,
    };
    assert_eq!(decode_projected(&encode_projected(&p)).unwrap(), p);
}

#[test]
fn a_snapshot_decodes_to_what_was_encoded_and_another_version_is_refused() {
    use fleetcmd_domain::event::{ShardSnapshot, SnapshotToken};
    let e = full_execution();
    let snapshot = ShardSnapshot {
        next_offset: 1_000_000,
        executions: vec![
            (e.clone(), 999_999),
            (testing::execution("e-2", "c", None), 3),
        ],
        undelivered: vec![(
            ExecutionId::parse("e-2").unwrap(),
            Payload {
                content: b"{}".to_vec(),
                content_type: "application/json".into(),
            },
        )],
        traces: vec![(e.execution_id.clone(), "00-aa-bb-01".into())],
        tokens: vec![SnapshotToken {
            target: e.target.clone(),
            token: "tok".into(),
            execution_id: e.execution_id.clone(),
            fingerprint: 42,
            memory_until: 77,
            offset: 5,
        }],
        commands: vec![(template_command(), 4), (static_command(), 1)],
        things: vec![(thing(), 7)],
        credentials: vec![
            credentials(),
            Credentials::new(Target::thing("lamp-1").unwrap()),
        ],
        cas: vec![registered_ca(Some("Acme CA"))],
        groups: vec![group(None), group(Some("group:lab"))],
        rollouts: vec![(hosted_rollout(), 6)],
    };
    assert_eq!(
        decode_snapshot(&encode_snapshot(&snapshot)).unwrap(),
        snapshot
    );
    assert_eq!(
        decode_snapshot(&encode_snapshot(&ShardSnapshot::default())).unwrap(),
        ShardSnapshot::default()
    );
    let future = prost::Message::encode_to_vec(&ipb::ShardSnapshot {
        version: SNAPSHOT_VERSION + 1,
        ..Default::default()
    });
    let CodecError::Invalid(v) = decode_snapshot(&future).unwrap_err() else {
        panic!("another snapshot version must be refused")
    };
    assert_eq!(v.field, "snapshot.version");
}
