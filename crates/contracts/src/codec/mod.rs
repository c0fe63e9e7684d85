//! Encoding and decoding of the internal contracts (`fleetcmd.internal.v1`): the event log's
//! records and the messages on the bus, as protobuf. Services hand domain values in and get
//! domain values out; the generated [`crate::internal`] types never leave this module.
//!
//! Decoding validates what the domain types promise (ids, enums, exactly one member of a
//! oneof) and fails with a [`CodecError`] naming the field: a record that does not decode is
//! corrupt, a bus message that does not decode is refused.

use fleetcmd_domain::command::{CommandInput, CreateCommand, UpdateCommand};
use fleetcmd_domain::error::{Rejection, RejectionCode, ValidationError};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::{
    Command, CommandBody, Execution, ExecutionStatus, PayloadTemplate, StatusReason,
};
use fleetcmd_domain::protocol::{
    Delivery, ExecutionChanged, LogPosition, Projected, ShardReply, ShardRequest,
};
use fleetcmd_domain::start::StartRequest;
use prost::Message as _;

use crate::convert::{
    command_parameter_from_pb, output_format_from_pb, parameters_from_pb, parameters_to_pb,
    results_from_pb, results_to_pb, status_from_pb, status_to_pb,
};
use crate::internal as ipb;
use crate::pb;

/// Why bytes could not be decoded into a domain value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// Not a protobuf message of the expected type.
    #[error("not a valid {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A required field (or oneof) is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field holds a value the domain does not accept.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

type Result<T, E = CodecError> = std::result::Result<T, E>;

fn decode<M: prost::Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| CodecError::Malformed {
        what,
        detail: e.to_string(),
    })
}

fn required<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or(CodecError::Missing(field))
}

// ---- the event log ---------------------------------------------------------------------------

/// One log record: the events of one input, in order.
pub fn encode_record(events: &[EventEnvelope]) -> Vec<u8> {
    ipb::LogRecord {
        events: events.iter().map(envelope_to_pb).collect(),
    }
    .encode_to_vec()
}

/// The events of one log record.
pub fn decode_record(bytes: &[u8]) -> Result<Vec<EventEnvelope>> {
    let record: ipb::LogRecord = decode("log record", bytes)?;
    record.events.into_iter().map(envelope_from_pb).collect()
}

fn envelope_to_pb(env: &EventEnvelope) -> ipb::EventEnvelope {
    use ipb::event_envelope::Aggregate as A;
    let aggregate = match &env.aggregate {
        Aggregate::Command(id) => A::CommandId(id.as_str().to_owned()),
        Aggregate::Execution {
            execution_id,
            target,
        } => A::Execution(ipb::ExecutionRef {
            execution_id: execution_id.as_str().to_owned(),
            target: Some(target.into()),
        }),
        Aggregate::Thing(name) => A::ThingName(name.clone()),
        Aggregate::Credential(owner) => A::CredentialOwner(owner.into()),
        Aggregate::Ca(id) => A::CaCertificateId(id.clone()),
        Aggregate::Group(name) => A::ThingGroupName(name.clone()),
        Aggregate::Rollout(id) => A::RolloutId(id.as_str().to_owned()),
    };
    ipb::EventEnvelope {
        event_id: env.event_id.clone(),
        schema: u32::from(env.schema),
        seq: env.seq,
        at_ms: env.at,
        trace: env.trace.clone(),
        aggregate: Some(aggregate),
        event: Some(event_to_pb(&env.event)),
    }
}

fn envelope_from_pb(env: ipb::EventEnvelope) -> Result<EventEnvelope> {
    use ipb::event_envelope::Aggregate as A;
    let aggregate = match required("event.aggregate", env.aggregate)? {
        A::CommandId(id) => Aggregate::Command(CommandId::parse(id)?),
        A::Execution(r) => Aggregate::Execution {
            execution_id: ExecutionId::parse(r.execution_id)?,
            target: target_from(r.target)?,
        },
        A::ThingName(name) => {
            fleetcmd_domain::thing::validate_thing_name(&name)?;
            Aggregate::Thing(name)
        }
        A::CredentialOwner(owner) => Aggregate::Credential(Target::try_from(owner)?),
        A::CaCertificateId(id) => {
            fleetcmd_domain::credential::validate_certificate_id(&id)?;
            Aggregate::Ca(id)
        }
        A::ThingGroupName(name) => {
            fleetcmd_domain::thing::validate_group_name(&name)?;
            Aggregate::Group(name)
        }
        A::RolloutId(id) => Aggregate::Rollout(fleetcmd_domain::rollout::RolloutId::parse(id)?),
    };
    Ok(EventEnvelope {
        event_id: env.event_id,
        schema: u16::try_from(env.schema).map_err(|_| {
            ValidationError::new("event.schema", format!("unknown schema {}", env.schema))
        })?,
        aggregate,
        seq: env.seq,
        at: env.at_ms,
        trace: env.trace,
        event: event_from_pb(required("event.event", env.event)?)?,
    })
}

fn event_to_pb(event: &Event) -> ipb::event_envelope::Event {
    use ipb::event_envelope::Event as E;
    match event {
        Event::CommandCreated { command } => E::CommandCreated(ipb::CommandCreated {
            command: Some(command_to_ipb(command)),
        }),
        Event::CommandUpdated {
            display_name,
            description,
            deprecated,
        } => E::CommandUpdated(ipb::CommandUpdated {
            display_name: display_name.clone(),
            description: description.clone(),
            deprecated: *deprecated,
        }),
        Event::CommandDeletionScheduled { delete_at } => {
            E::CommandDeletionScheduled(ipb::CommandDeletionScheduled {
                delete_at_ms: *delete_at,
            })
        }
        Event::CommandDeleted => E::CommandDeleted(ipb::CommandDeleted {}),
        Event::ExecutionStarted {
            execution,
            payload,
            request_fingerprint,
        } => E::ExecutionStarted(ipb::ExecutionStarted {
            execution: Some(execution_to_ipb(execution)),
            payload: Some(payload.clone().into()),
            request_fingerprint: *request_fingerprint,
        }),
        Event::StatusReported {
            status,
            status_reason,
            result,
        } => E::StatusReported(status_reported_to_pb(*status, status_reason, result)),
        Event::ExecutionTimedOut => E::ExecutionTimedOut(ipb::ExecutionTimedOut {}),
        Event::ExecutionCanceled { status_reason } => {
            E::ExecutionCanceled(ipb::ExecutionCanceled {
                status_reason: status_reason.clone().map(Into::into),
            })
        }
        Event::ExecutionDeleted => E::ExecutionDeleted(ipb::ExecutionDeleted {}),
        Event::Thing { event } => things::event_to_pb(event),
        Event::Credential { event } => credentials::event_to_pb(event),
        Event::Ca { event } => cas::event_to_pb(event),
        Event::Group { event } => groups::event_to_pb(event),
        Event::Rollout { event } => rollouts::event_to_pb(event),
    }
}

fn event_from_pb(event: ipb::event_envelope::Event) -> Result<Event> {
    use ipb::event_envelope::Event as E;
    Ok(match event {
        E::CommandCreated(c) => Event::CommandCreated {
            command: command_from_ipb(required("command_created.command", c.command)?)?,
        },
        E::CommandUpdated(u) => Event::CommandUpdated {
            display_name: u.display_name,
            description: u.description,
            deprecated: u.deprecated,
        },
        E::CommandDeletionScheduled(d) => Event::CommandDeletionScheduled {
            delete_at: d.delete_at_ms,
        },
        E::CommandDeleted(_) => Event::CommandDeleted,
        E::ExecutionStarted(s) => Event::ExecutionStarted {
            execution: Box::new(execution_from_ipb(required(
                "execution_started.execution",
                s.execution,
            )?)?),
            payload: required("execution_started.payload", s.payload)?.into(),
            request_fingerprint: s.request_fingerprint,
        },
        E::StatusReported(r) => {
            let (status, status_reason, result) = status_reported_from_pb(r)?;
            Event::StatusReported {
                status,
                status_reason,
                result,
            }
        }
        E::ExecutionTimedOut(_) => Event::ExecutionTimedOut,
        E::ExecutionCanceled(c) => Event::ExecutionCanceled {
            status_reason: reason_from(c.status_reason)?,
        },
        E::ExecutionDeleted(_) => Event::ExecutionDeleted,
        E::ThingCreated(_)
        | E::ThingUpdated(_)
        | E::ThingDeleted(_)
        | E::ThingAddedToGroup(_)
        | E::ThingRemovedFromGroup(_) => Event::Thing {
            event: things::event_from_pb(event)?,
        },
        E::CertificateAttached(_) | E::CertificateRevoked(_) | E::PasswordSet(_) => {
            Event::Credential {
                event: credentials::event_from_pb(event)?,
            }
        }
        E::CaCertificateRegistered(c) => Event::Ca {
            event: cas::registered_from_pb(c)?,
        },
        E::ThingGroupCreated(g) => Event::Group {
            event: groups::created_from_pb(g)?,
        },
        E::ThingGroupDeleted(_) => Event::Group {
            event: fleetcmd_domain::group::GroupEvent::Deleted,
        },
        E::RolloutStarted(_)
        | E::RolloutTargetsAdded(_)
        | E::RolloutTargetsResolved(_)
        | E::RolloutStartTimeReached(_)
        | E::RolloutAttemptLaunching(_)
        | E::RolloutAttemptLaunched(_)
        | E::RolloutAttemptRefused(_)
        | E::RolloutAttemptSettled(_)
        | E::RolloutRateIncreased(_)
        | E::RolloutAborted(_)
        | E::RolloutCancelRequested(_)
        | E::RolloutExecutionsCanceling(_)
        | E::RolloutEndTimeReached(_)
        | E::RolloutCompleted(_)
        | E::RolloutCanceled(_) => Event::Rollout {
            event: rollouts::event_from_pb(event)?,
        },
    })
}

type Report = (
    ExecutionStatus,
    Option<StatusReason>,
    Option<std::collections::BTreeMap<String, fleetcmd_domain::model::ResultValue>>,
);

fn status_reported_to_pb(
    status: ExecutionStatus,
    status_reason: &Option<StatusReason>,
    result: &Option<std::collections::BTreeMap<String, fleetcmd_domain::model::ResultValue>>,
) -> ipb::StatusReported {
    ipb::StatusReported {
        status: status_to_pb(status),
        status_reason: status_reason.clone().map(Into::into),
        result: result.clone().map(|r| ipb::Result {
            values: results_to_pb(r),
        }),
    }
}

fn status_reported_from_pb(r: ipb::StatusReported) -> Result<Report> {
    Ok((
        status_from_pb("status_reported.status", r.status)?,
        reason_from(r.status_reason)?,
        r.result
            .map(|r| results_from_pb("status_reported.result", r.values))
            .transpose()?,
    ))
}

fn target_from(target: Option<pb::Target>) -> Result<Target> {
    Ok(Target::try_from(required("target", target)?)?)
}

fn reason_from(reason: Option<pb::StatusReason>) -> Result<Option<StatusReason>> {
    // Internal messages carry reasons the domain made: no API-level check on them.
    Ok(reason.map(|r| StatusReason {
        reason_code: r.reason_code,
        reason_description: r.reason_description,
    }))
}

fn command_to_ipb(c: &Command) -> ipb::Command {
    use ipb::command::Body;
    let body = match &c.body {
        CommandBody::Static(p) => Body::Payload(p.clone().into()),
        CommandBody::Template(t) => Body::Template(template_to_ipb(t)),
    };
    ipb::Command {
        command_id: c.command_id.as_str().to_owned(),
        namespace: c.namespace.clone(),
        display_name: c.display_name.clone(),
        description: c.description.clone(),
        body: Some(body),
        parameters: c.parameters.iter().cloned().map(Into::into).collect(),
        tags: c.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_at_ms: c.created_at,
        last_updated_at_ms: c.last_updated_at,
        deprecated: c.deprecated,
        deprecated_at_ms: c.deprecated_at,
        delete_at_ms: c.delete_at,
        supersede_pending: c.supersede_pending,
    }
}

fn command_from_ipb(c: ipb::Command) -> Result<Command> {
    use ipb::command::Body;
    let body = match required("command.body", c.body)? {
        Body::Payload(p) => CommandBody::Static(p.into()),
        Body::Template(t) => CommandBody::Template(template_from_ipb(t)?),
    };
    Ok(Command {
        command_id: CommandId::parse(c.command_id)?,
        namespace: c.namespace,
        display_name: c.display_name,
        description: c.description,
        body,
        parameters: parameters_list_from(c.parameters)?,
        tags: c.tags.into_iter().collect(),
        created_at: c.created_at_ms,
        last_updated_at: c.last_updated_at_ms,
        deprecated: c.deprecated,
        deprecated_at: c.deprecated_at_ms,
        delete_at: c.delete_at_ms,
        supersede_pending: c.supersede_pending,
    })
}

fn parameters_list_from(
    parameters: Vec<pb::CommandParameter>,
) -> Result<Vec<fleetcmd_domain::model::CommandParameter>> {
    Ok(parameters
        .into_iter()
        .enumerate()
        .map(|(i, p)| command_parameter_from_pb(&format!("parameters[{i}]"), p))
        .collect::<std::result::Result<_, _>>()?)
}

fn template_to_ipb(t: &PayloadTemplate) -> ipb::Template {
    ipb::Template {
        template: t.template.clone(),
        output_format: pb::OutputFormat::from(t.output_format) as i32,
    }
}

fn template_from_ipb(t: ipb::Template) -> Result<PayloadTemplate> {
    Ok(PayloadTemplate {
        template: t.template,
        output_format: output_format_from_pb("template.output_format", t.output_format)?,
    })
}

fn execution_to_ipb(e: &Execution) -> ipb::Execution {
    ipb::Execution {
        execution_id: e.execution_id.as_str().to_owned(),
        command_id: e.command_id.as_str().to_owned(),
        target: Some((&e.target).into()),
        status: status_to_pb(e.status),
        status_reason: e.status_reason.clone().map(Into::into),
        result: results_to_pb(e.result.clone()),
        parameters: parameters_to_pb(e.parameters.clone()),
        timeout_secs: e.timeout_secs,
        client_token: e.client_token.clone(),
        created_at_ms: e.created_at,
        last_updated_at_ms: e.last_updated_at,
        started_at_ms: e.started_at,
        completed_at_ms: e.completed_at,
        time_to_live_ms: e.time_to_live,
        terminal: e.terminal,
        seq: e.seq,
        request_fingerprint: e.request_fingerprint,
    }
}

fn execution_from_ipb(e: ipb::Execution) -> Result<Execution> {
    Ok(Execution {
        execution_id: ExecutionId::parse(e.execution_id)?,
        command_id: CommandId::parse(e.command_id)?,
        target: target_from(e.target)?,
        status: status_from_pb("execution.status", e.status)?,
        status_reason: reason_from(e.status_reason)?,
        result: results_from_pb("execution.result", e.result)?,
        parameters: parameters_from_pb("execution.parameters", e.parameters)?,
        timeout_secs: e.timeout_secs,
        client_token: e.client_token,
        created_at: e.created_at_ms,
        last_updated_at: e.last_updated_at_ms,
        started_at: e.started_at_ms,
        completed_at: e.completed_at_ms,
        time_to_live: e.time_to_live_ms,
        terminal: e.terminal,
        seq: e.seq,
        request_fingerprint: e.request_fingerprint,
    })
}

// ---- shard requests and replies --------------------------------------------------------------

/// An input for a shard owner.
pub fn encode_shard_request(request: &ShardRequest) -> Vec<u8> {
    use ipb::shard_request::Request as R;
    let request = match request {
        ShardRequest::Start(s) => R::Start(ipb::StartExecution {
            command_id: s.command_id.as_str().to_owned(),
            target: Some((&s.target).into()),
            parameters: parameters_to_pb(s.parameters.clone()),
            timeout_secs: s.timeout_secs,
            client_token: s.client_token.clone(),
        }),
        ShardRequest::Execution {
            execution_id,
            target,
            input,
        } => R::Execution(execution_input_to_pb(execution_id, target, input)),
        ShardRequest::Command { command_id, input } => {
            R::Command(command_input_to_pb(command_id, input))
        }
        ShardRequest::Thing { thing_name, input } => {
            R::Thing(things::input_to_pb(thing_name, input))
        }
        ShardRequest::Credential { owner, input } => {
            R::Credential(credentials::input_to_pb(owner, input))
        }
        // The id travels in the record.
        ShardRequest::Ca { input, .. } => R::RegisterCa(cas::input_to_pb(input)),
        ShardRequest::DeliverPending { target } => R::DeliverPending(target.into()),
        ShardRequest::Group {
            thing_group_name,
            input,
        } => R::Group(groups::input_to_pb(thing_group_name, input)),
        ShardRequest::Rollout { rollout_id, input } => {
            R::Rollout(rollouts::input_to_pb(rollout_id, input))
        }
        ShardRequest::ReadRollout { rollout_id } => R::ReadRollout(rollout_id.as_str().to_owned()),
        ShardRequest::ListRollouts { shard } => R::ListRollouts(*shard),
    };
    ipb::ShardRequest {
        request: Some(request),
    }
    .encode_to_vec()
}

/// The inverse of [`encode_shard_request`].
pub fn decode_shard_request(bytes: &[u8]) -> Result<ShardRequest> {
    use ipb::shard_request::Request as R;
    let request: ipb::ShardRequest = decode("shard request", bytes)?;
    Ok(match required("shard_request.request", request.request)? {
        R::Start(s) => ShardRequest::Start(StartRequest {
            command_id: CommandId::parse(s.command_id)?,
            target: target_from(s.target)?,
            parameters: parameters_from_pb("parameters", s.parameters)?,
            timeout_secs: s.timeout_secs,
            client_token: s.client_token,
        }),
        R::Execution(x) => execution_input_from_pb(x)?,
        R::Command(c) => command_input_from_pb(c)?,
        R::Thing(t) => things::input_from_pb(t)?,
        R::Credential(c) => credentials::input_from_pb(c)?,
        R::RegisterCa(c) => cas::input_from_pb(c)?,
        R::DeliverPending(target) => ShardRequest::DeliverPending {
            target: Target::try_from(target)?,
        },
        R::Group(g) => groups::input_from_pb(g)?,
        R::Rollout(r) => rollouts::input_from_pb(r)?,
        R::ReadRollout(id) => ShardRequest::ReadRollout {
            rollout_id: fleetcmd_domain::rollout::RolloutId::parse(id)?,
        },
        R::ListRollouts(shard) => ShardRequest::ListRollouts { shard },
    })
}

fn execution_input_to_pb(
    execution_id: &ExecutionId,
    target: &Target,
    input: &ExecutionInput,
) -> ipb::ExecutionInput {
    use ipb::execution_input::Input as I;
    let input = match input {
        ExecutionInput::Report {
            status,
            status_reason,
            result,
        } => I::Report(status_reported_to_pb(*status, status_reason, result)),
        ExecutionInput::CloudTimeout => I::CloudTimeout(ipb::ExecutionTimedOut {}),
        ExecutionInput::Cancel { status_reason } => I::Cancel(ipb::ExecutionCanceled {
            status_reason: status_reason.clone().map(Into::into),
        }),
        ExecutionInput::Delete => I::Delete(ipb::ExecutionDeleted {}),
    };
    ipb::ExecutionInput {
        execution_id: execution_id.as_str().to_owned(),
        target: Some(target.into()),
        input: Some(input),
    }
}

fn execution_input_from_pb(x: ipb::ExecutionInput) -> Result<ShardRequest> {
    use ipb::execution_input::Input as I;
    let input = match required("execution_input.input", x.input)? {
        I::Report(r) => {
            let (status, status_reason, result) = status_reported_from_pb(r)?;
            ExecutionInput::Report {
                status,
                status_reason,
                result,
            }
        }
        I::CloudTimeout(_) => ExecutionInput::CloudTimeout,
        I::Cancel(c) => ExecutionInput::Cancel {
            status_reason: reason_from(c.status_reason)?,
        },
        I::Delete(_) => ExecutionInput::Delete,
    };
    Ok(ShardRequest::Execution {
        execution_id: ExecutionId::parse(x.execution_id)?,
        target: target_from(x.target)?,
        input,
    })
}

fn command_input_to_pb(command_id: &str, input: &CommandInput) -> ipb::CommandInput {
    use ipb::command_input::Input as I;
    let input = match input {
        CommandInput::Create(c) => I::Create(ipb::CreateCommand {
            command_id: c.command_id.clone(),
            namespace: c.namespace.clone(),
            display_name: c.display_name.clone(),
            description: c.description.clone(),
            payload: c.payload.clone().map(Into::into),
            template: c.template.as_ref().map(template_to_ipb),
            parameters: c.parameters.iter().cloned().map(Into::into).collect(),
            tags: c.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            supersede_pending: c.supersede_pending,
        }),
        CommandInput::Update(u) => I::Update(ipb::CommandUpdated {
            display_name: u.display_name.clone(),
            description: u.description.clone(),
            deprecated: u.deprecated,
        }),
        CommandInput::Delete => I::Delete(ipb::DeleteCommand {}),
        CommandInput::Expire => I::Expire(ipb::ExpireCommand {}),
    };
    ipb::CommandInput {
        command_id: command_id.to_owned(),
        input: Some(input),
    }
}

fn command_input_from_pb(c: ipb::CommandInput) -> Result<ShardRequest> {
    use ipb::command_input::Input as I;
    let input = match required("command_input.input", c.input)? {
        I::Create(c) => CommandInput::Create(Box::new(CreateCommand {
            command_id: c.command_id,
            namespace: c.namespace,
            display_name: c.display_name,
            description: c.description,
            payload: c.payload.map(Into::into),
            template: c.template.map(template_from_ipb).transpose()?,
            parameters: parameters_list_from(c.parameters)?,
            tags: c.tags.into_iter().collect(),
            supersede_pending: c.supersede_pending,
        })),
        I::Update(u) => CommandInput::Update(UpdateCommand {
            display_name: u.display_name,
            description: u.description,
            deprecated: u.deprecated,
        }),
        I::Delete(_) => CommandInput::Delete,
        I::Expire(_) => CommandInput::Expire,
    };
    Ok(ShardRequest::Command {
        command_id: c.command_id,
        input,
    })
}

/// A shard owner's answer.
pub fn encode_shard_reply(reply: &ShardReply) -> Vec<u8> {
    use ipb::shard_reply::Reply as R;
    let reply = match reply {
        ShardReply::Started {
            execution_id,
            position,
            replayed,
        } => R::Started(ipb::Started {
            execution_id: execution_id.as_str().to_owned(),
            position: position.map(position_to_pb),
            replayed: *replayed,
        }),
        ShardReply::Execution {
            execution,
            position,
        } => R::Execution(ipb::ExecutionApplied {
            execution: Some(execution_to_ipb(execution)),
            position: position.map(position_to_pb),
        }),
        ShardReply::Command {
            command,
            deleted,
            position,
        } => R::Command(ipb::CommandApplied {
            command: command.as_deref().map(command_to_ipb),
            deleted: *deleted,
            position: position.map(position_to_pb),
        }),
        ShardReply::Thing {
            thing,
            deleted,
            position,
        } => R::Thing(ipb::ThingApplied {
            thing: thing.as_deref().map(things::thing_to_ipb),
            deleted: *deleted,
            position: position.map(position_to_pb),
        }),
        ShardReply::Credential {
            certificate,
            position,
        } => R::Credential(ipb::CredentialApplied {
            certificate: certificate.as_deref().map(credentials::certificate_to_ipb),
            position: position.map(position_to_pb),
        }),
        ShardReply::Ca { ca, position } => R::Ca(ipb::CaApplied {
            ca: ca.as_deref().map(cas::ca_to_ipb),
            position: position.map(position_to_pb),
        }),
        ShardReply::Group { group, position } => R::Group(ipb::GroupApplied {
            group: group.as_deref().map(groups::group_to_ipb),
            position: position.map(position_to_pb),
        }),
        ShardReply::Rollout { rollout, position } => R::Rollout(ipb::RolloutApplied {
            rollout: rollout.as_deref().map(crate::convert::rollout_to_pb),
            position: position.map(position_to_pb),
        }),
        ShardReply::Rollouts { rollouts } => R::Rollouts(ipb::RolloutList {
            rollouts: rollouts.iter().map(crate::convert::rollout_to_pb).collect(),
        }),
        ShardReply::DeliveredPending { count } => R::DeliveredPending(*count),
        ShardReply::Rejected(r) => R::Rejected(ipb::Rejection {
            code: rejection_code_to_pb(r.code) as i32,
            message: r.message.clone(),
            field: r.field.clone(),
        }),
        ShardReply::Unavailable(why) => R::Unavailable(why.clone()),
    };
    ipb::ShardReply { reply: Some(reply) }.encode_to_vec()
}

/// The inverse of [`encode_shard_reply`].
pub fn decode_shard_reply(bytes: &[u8]) -> Result<ShardReply> {
    use ipb::shard_reply::Reply as R;
    let reply: ipb::ShardReply = decode("shard reply", bytes)?;
    Ok(match required("shard_reply.reply", reply.reply)? {
        R::Started(s) => ShardReply::Started {
            execution_id: ExecutionId::parse(s.execution_id)?,
            position: s.position.map(position_from_pb),
            replayed: s.replayed,
        },
        R::Execution(x) => ShardReply::Execution {
            execution: Box::new(execution_from_ipb(required(
                "execution_applied.execution",
                x.execution,
            )?)?),
            position: x.position.map(position_from_pb),
        },
        R::Command(c) => ShardReply::Command {
            command: c.command.map(command_from_ipb).transpose()?.map(Box::new),
            deleted: c.deleted,
            position: c.position.map(position_from_pb),
        },
        R::Thing(t) => ShardReply::Thing {
            thing: t
                .thing
                .map(things::thing_from_ipb)
                .transpose()?
                .map(Box::new),
            deleted: t.deleted,
            position: t.position.map(position_from_pb),
        },
        R::Credential(c) => ShardReply::Credential {
            certificate: c
                .certificate
                .map(credentials::certificate_from_ipb)
                .transpose()?
                .map(Box::new),
            position: c.position.map(position_from_pb),
        },
        R::Ca(c) => ShardReply::Ca {
            ca: c.ca.map(cas::ca_from_ipb).transpose()?.map(Box::new),
            position: c.position.map(position_from_pb),
        },
        R::DeliveredPending(count) => ShardReply::DeliveredPending { count },
        R::Group(g) => ShardReply::Group {
            group: g
                .group
                .map(groups::group_from_ipb)
                .transpose()?
                .map(Box::new),
            position: g.position.map(position_from_pb),
        },
        R::Rollout(r) => ShardReply::Rollout {
            rollout: r
                .rollout
                .map(crate::convert::rollout_from_pb)
                .transpose()?
                .map(Box::new),
            position: r.position.map(position_from_pb),
        },
        R::Rollouts(list) => ShardReply::Rollouts {
            rollouts: list
                .rollouts
                .into_iter()
                .map(crate::convert::rollout_from_pb)
                .collect::<Result<_, _>>()?,
        },
        R::Rejected(r) => ShardReply::Rejected(Rejection {
            code: rejection_code_from_pb(r.code)?,
            message: r.message,
            field: r.field,
        }),
        R::Unavailable(why) => ShardReply::Unavailable(why),
    })
}

fn position_to_pb(p: LogPosition) -> ipb::LogPosition {
    ipb::LogPosition {
        partition: p.partition,
        next_offset: p.next_offset,
    }
}

fn position_from_pb(p: ipb::LogPosition) -> LogPosition {
    LogPosition {
        partition: p.partition,
        next_offset: p.next_offset,
    }
}

const REJECTION_CODES: [(RejectionCode, ipb::RejectionCode); 12] = [
    (
        RejectionCode::InvalidRequest,
        ipb::RejectionCode::InvalidRequest,
    ),
    (RejectionCode::InvalidJson, ipb::RejectionCode::InvalidJson),
    (
        RejectionCode::InvalidTopic,
        ipb::RejectionCode::InvalidTopic,
    ),
    (
        RejectionCode::InvalidStateTransition,
        ipb::RejectionCode::InvalidStateTransition,
    ),
    (
        RejectionCode::TerminalStateReached,
        ipb::RejectionCode::TerminalStateReached,
    ),
    (
        RejectionCode::ResourceNotFound,
        ipb::RejectionCode::ResourceNotFound,
    ),
    (RejectionCode::Conflict, ipb::RejectionCode::Conflict),
    (
        RejectionCode::FailedPrecondition,
        ipb::RejectionCode::FailedPrecondition,
    ),
    (
        RejectionCode::QuotaExceeded,
        ipb::RejectionCode::QuotaExceeded,
    ),
    (
        RejectionCode::PermissionDenied,
        ipb::RejectionCode::PermissionDenied,
    ),
    (
        RejectionCode::DataConflict,
        ipb::RejectionCode::DataConflict,
    ),
    (
        RejectionCode::InternalError,
        ipb::RejectionCode::InternalError,
    ),
];

fn rejection_code_to_pb(code: RejectionCode) -> ipb::RejectionCode {
    REJECTION_CODES
        .iter()
        .find(|(d, _)| *d == code)
        .map_or(ipb::RejectionCode::InternalError, |(_, p)| *p)
}

fn rejection_code_from_pb(code: i32) -> Result<RejectionCode> {
    REJECTION_CODES
        .iter()
        .find(|(_, p)| *p as i32 == code)
        .map(|(d, _)| *d)
        .ok_or_else(|| {
            ValidationError::new("rejection.code", format!("unknown code {code}")).into()
        })
}

// ---- deliveries and notifications -------------------------------------------------------------

/// An MQTT publish for the edge.
pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    ipb::Delivery {
        topic: d.topic.clone(),
        payload: d.payload.clone(),
        content_type: d.content_type.clone(),
        expires_at_ms: d.expires_at,
    }
    .encode_to_vec()
}

/// The inverse of [`encode_delivery`].
pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery> {
    let d: ipb::Delivery = decode("delivery", bytes)?;
    Ok(Delivery {
        topic: d.topic,
        payload: d.payload,
        content_type: d.content_type,
        expires_at: d.expires_at_ms,
    })
}

/// A status change of an execution.
pub fn encode_changed(c: &ExecutionChanged) -> Vec<u8> {
    ipb::ExecutionChanged {
        execution_id: c.execution_id.as_str().to_owned(),
        command_id: c.command_id.as_str().to_owned(),
        target: Some((&c.target).into()),
        status: status_to_pb(c.status),
        status_reason: c.status_reason.clone().map(Into::into),
        result: results_to_pb(c.result.clone()),
        terminal: c.terminal,
        timestamp_ms: c.timestamp,
    }
    .encode_to_vec()
}

/// The inverse of [`encode_changed`].
pub fn decode_changed(bytes: &[u8]) -> Result<ExecutionChanged> {
    let c: ipb::ExecutionChanged = decode("status change", bytes)?;
    Ok(ExecutionChanged {
        execution_id: ExecutionId::parse(c.execution_id)?,
        command_id: CommandId::parse(c.command_id)?,
        target: target_from(c.target)?,
        status: status_from_pb("status", c.status)?,
        status_reason: reason_from(c.status_reason)?,
        result: results_from_pb("result", c.result)?,
        terminal: c.terminal,
        timestamp: c.timestamp_ms,
    })
}

/// A projector's progress.
pub fn encode_projected(p: &Projected) -> Vec<u8> {
    ipb::Projected {
        partition: p.partition,
        next_offset: p.next_offset,
    }
    .encode_to_vec()
}

/// The inverse of [`encode_projected`].
pub fn decode_projected(bytes: &[u8]) -> Result<Projected> {
    let p: ipb::Projected = decode("projection progress", bytes)?;
    Ok(Projected {
        partition: p.partition,
        next_offset: p.next_offset,
    })
}

mod cas;
mod credentials;
mod groups;
mod rollouts;
mod snapshot;
mod things;

pub use snapshot::{SNAPSHOT_VERSION, decode_snapshot, encode_snapshot};

#[cfg(test)]
mod tests;
