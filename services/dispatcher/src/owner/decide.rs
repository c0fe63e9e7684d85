//! The owner's decisions, pure: given the shard's state, what the batch read from the read
//! model, an input and the time, which events to append and what to answer. The I/O loop
//! (`serve.rs`) loads what a batch needs first ([`needs`]), decides every input with
//! [`decide`], appends, and only then answers and delivers.

use std::collections::{HashMap, HashSet};

use fleetcmd_domain::ca::{self, CaInput};
use fleetcmd_domain::command::{self, CommandInput, CommandSettings};
use fleetcmd_domain::credential::{self, CredentialInput};
use fleetcmd_domain::error::{Rejection, RejectionCode, ValidationError};
use fleetcmd_domain::event::{Aggregate, Event};
use fleetcmd_domain::execution::{self, ExecutionInput};
use fleetcmd_domain::group;
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::{Command, Execution, SUPERSEDED, StatusReason, TimestampMs};
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::rollout::{self, RolloutId};
use fleetcmd_domain::shard::shard_of;
use fleetcmd_domain::start::{self, PriorStart, StartRequest, TokenCheck};
use fleetcmd_domain::thing;

use super::state::{ShardState, TimerKey, TokenKey};

/// What the decisions depend on besides the state.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub shard: u32,
    pub shards: u32,
    pub retention_secs: u64,
    pub command_settings: CommandSettings,
}

/// What a batch must read from the read model before it can be decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Commands of the batch's starts (commands live in other shards).
    pub commands: Vec<CommandId>,
    /// Client tokens of the batch's starts that the owner no longer holds in memory.
    pub tokens: Vec<TokenKey>,
    /// Executions the batch's inputs aim at that are not in memory (evicted terminal ones).
    pub executions: Vec<ExecutionId>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.tokens.is_empty() && self.executions.is_empty()
    }
}

/// What the batch read: one entry per need (`None`: not stored).
#[derive(Debug, Default, Clone)]
pub struct Lookups {
    pub commands: HashMap<CommandId, Option<Command>>,
    pub tokens: HashMap<TokenKey, Option<Execution>>,
    pub executions: HashMap<ExecutionId, Option<Execution>>,
    /// Why the reads failed, if they did: the inputs that needed them answer retryable.
    pub failed: Option<String>,
}

/// Why an input gets no events.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The domain refused it.
    Rejected(Rejection),
    /// It cannot be decided now (a read it needs failed); the caller retries.
    Unavailable(String),
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

/// What to answer once the input's events are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An answer that needs no append (a replayed start).
    Reply(ShardReply),
    /// The start of a new execution.
    Started { execution_id: ExecutionId },
    /// An execution input: answer with the execution's state after it (or, for a delete,
    /// `before`).
    Execution {
        execution_id: ExecutionId,
        before: Option<Box<Execution>>,
    },
    /// A command input: answer with the command's state after it.
    Command { command_id: String },
    /// A thing input: answer with the thing's state after it.
    Thing { thing_name: String },
    /// A credential input: answer with the certificate it was about (none: a password).
    Credential {
        owner: Target,
        certificate_id: Option<String>,
    },
    /// A CA input: answer with the CA certificate as stored after it.
    Ca { ca_certificate_id: String },
    /// Deliver the target's waiting executions, then answer how many.
    DeliverPending { target: Target },
    /// A group input: answer with the group as stored after it.
    Group { thing_group_name: String },
    /// A rollout input (or read): answer with the rollout's summary after it.
    Rollout { rollout_id: RolloutId },
}

/// The events an input produces (in order, one log record) and what to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// An execution read back from the read model, to add to the state before the events.
    pub hydrate: Option<Execution>,
    pub events: Vec<(Aggregate, Event)>,
    pub outcome: Outcome,
}

impl Decision {
    fn reply(reply: ShardReply) -> Self {
        Self {
            hydrate: None,
            events: Vec::new(),
            outcome: Outcome::Reply(reply),
        }
    }
}

/// What `requests` need from the read model, given what the state holds.
pub fn needs<'a>(state: &ShardState, requests: impl Iterator<Item = &'a ShardRequest>) -> Needs {
    let mut needs = Needs::default();
    let mut seen_commands = HashSet::new();
    let mut seen_tokens = HashSet::new();
    let mut seen_executions = HashSet::new();
    for request in requests {
        match request {
            ShardRequest::Start(req) => {
                if seen_commands.insert(req.command_id.clone()) {
                    needs.commands.push(req.command_id.clone());
                }
                if let Some(token) = &req.client_token {
                    let key = (req.target.clone(), token.clone());
                    if !state.holds_token(&key) && seen_tokens.insert(key.clone()) {
                        needs.tokens.push(key);
                    }
                }
            }
            ShardRequest::Execution { execution_id, .. } => {
                if state.execution(execution_id).is_none()
                    && seen_executions.insert(execution_id.clone())
                {
                    needs.executions.push(execution_id.clone());
                }
            }
            ShardRequest::Command { .. }
            | ShardRequest::Thing { .. }
            | ShardRequest::Credential { .. }
            | ShardRequest::Ca { .. }
            | ShardRequest::Group { .. }
            | ShardRequest::Rollout { .. }
            | ShardRequest::ReadRollout { .. }
            | ShardRequest::ListRollouts { .. }
            | ShardRequest::DeliverPending { .. } => {}
        }
    }
    needs
}

/// Decides one input. `new_id` names a new execution (called only for a start that creates
/// one).
pub fn decide(
    state: &ShardState,
    request: &ShardRequest,
    lookups: &Lookups,
    now: TimestampMs,
    settings: &Settings,
    new_id: &mut dyn FnMut() -> ExecutionId,
) -> Result<Decision, Refusal> {
    if let ShardRequest::ListRollouts { shard } = request {
        return Ok(Decision::reply(if *shard == settings.shard {
            ShardReply::Rollouts {
                rollouts: state.rollout_summaries(),
            }
        } else {
            ShardReply::Unavailable(format!(
                "a listing of shard {shard} reached shard {}",
                settings.shard
            ))
        }));
    }
    let key = request.routing_key();
    if shard_of(&key, settings.shards) != settings.shard {
        return Ok(Decision::reply(ShardReply::Unavailable(format!(
            "request for {key} reached shard {}",
            settings.shard
        ))));
    }
    match request {
        ShardRequest::Start(req) => decide_start(state, req, lookups, now, settings, new_id),
        ShardRequest::Execution {
            execution_id,
            target,
            input,
        } => decide_execution(state, execution_id, target, input, lookups),
        ShardRequest::Command { command_id, input } => {
            let decided = command::decide(
                command_id,
                state.command(command_id),
                input,
                now,
                settings.command_settings,
            )?;
            Ok(Decision {
                hydrate: None,
                events: command_events(command_id, decided),
                outcome: Outcome::Command {
                    command_id: command_id.clone(),
                },
            })
        }
        ShardRequest::Thing { thing_name, input } => {
            // Thing groups are not registered yet: no group exists to join.
            let decided = thing::decide(thing_name, state.thing(thing_name), input, now)?;
            Ok(Decision {
                hydrate: None,
                events: decided
                    .into_iter()
                    .map(|event| (Aggregate::Thing(thing_name.clone()), Event::Thing { event }))
                    .collect(),
                outcome: Outcome::Thing {
                    thing_name: thing_name.clone(),
                },
            })
        }
        ShardRequest::Credential { owner, input } => {
            // A thing owner is in this shard: the shard of `thing/<name>` is its thing's.
            let thing_exists = state.thing(&owner.id).is_some();
            let decided =
                credential::decide(owner, state.credentials(owner), input, now, thing_exists)?;
            let certificate_id = match input {
                CredentialInput::AttachCertificate(r) => Some(r.certificate_id.clone()),
                CredentialInput::RevokeCertificate { certificate_id } => {
                    Some(certificate_id.clone())
                }
                CredentialInput::SetPassword { .. } => None,
            };
            Ok(Decision {
                hydrate: None,
                events: decided
                    .into_iter()
                    .map(|event| {
                        (
                            Aggregate::Credential(owner.clone()),
                            Event::Credential { event },
                        )
                    })
                    .collect(),
                outcome: Outcome::Credential {
                    owner: owner.clone(),
                    certificate_id,
                },
            })
        }
        ShardRequest::Ca {
            ca_certificate_id,
            input,
        } => {
            let CaInput::Register(record) = input;
            if record.ca_certificate_id != *ca_certificate_id {
                return Err(Rejection::from(ValidationError::new(
                    "ca_certificate_id",
                    "the request and its record name different CA certificates",
                ))
                .into());
            }
            let decided = ca::decide(state.ca(ca_certificate_id), input, now)?;
            Ok(Decision {
                hydrate: None,
                events: decided
                    .into_iter()
                    .map(|event| {
                        (
                            Aggregate::Ca(ca_certificate_id.clone()),
                            Event::Ca { event },
                        )
                    })
                    .collect(),
                outcome: Outcome::Ca {
                    ca_certificate_id: ca_certificate_id.clone(),
                },
            })
        }
        ShardRequest::DeliverPending { target } => Ok(Decision {
            hydrate: None,
            events: Vec::new(),
            outcome: Outcome::DeliverPending {
                target: target.clone(),
            },
        }),
        ShardRequest::Group {
            thing_group_name,
            input,
        } => {
            let name = thing_group_name;
            let decided = group::decide(name, state.group(name), input, now)?;
            Ok(Decision {
                hydrate: None,
                events: decided
                    .into_iter()
                    .map(|event| (Aggregate::Group(name.clone()), Event::Group { event }))
                    .collect(),
                outcome: Outcome::Group {
                    thing_group_name: name.clone(),
                },
            })
        }
        ShardRequest::Rollout { rollout_id, input } => {
            let decided = rollout::decide(state.rollout(rollout_id), input, now)?;
            Ok(Decision {
                hydrate: None,
                events: decided
                    .into_iter()
                    .map(|event| {
                        (
                            Aggregate::Rollout(rollout_id.clone()),
                            Event::Rollout { event },
                        )
                    })
                    .collect(),
                outcome: Outcome::Rollout {
                    rollout_id: rollout_id.clone(),
                },
            })
        }
        ShardRequest::ListRollouts { .. } => unreachable!("answered above"),
        ShardRequest::ReadRollout { rollout_id } => Ok(Decision {
            hydrate: None,
            events: Vec::new(),
            outcome: Outcome::Rollout {
                rollout_id: rollout_id.clone(),
            },
        }),
    }
}

fn decide_start(
    state: &ShardState,
    req: &StartRequest,
    lookups: &Lookups,
    now: TimestampMs,
    settings: &Settings,
    new_id: &mut dyn FnMut() -> ExecutionId,
) -> Result<Decision, Refusal> {
    start::validate_request(req).map_err(Rejection::from)?;
    let fingerprint = start::fingerprint(req);
    if let Some(token) = &req.client_token {
        let key = (req.target.clone(), token.clone());
        // In memory, or else (tokens leave memory only once projected) in the read model,
        // where it counts for the whole token window.
        let prior = match state.token(&key) {
            Some(prior) => Some(prior),
            None => match lookups.tokens.get(&key) {
                Some(stored) => stored.as_ref().map(PriorStart::of),
                None => return Err(unavailable(lookups, "client token")),
            },
        };
        match start::check_token(token, prior.as_ref(), fingerprint, now) {
            TokenCheck::New => {}
            TokenCheck::Replay(execution_id) => {
                return Ok(Decision::reply(ShardReply::Started {
                    execution_id,
                    position: None,
                    replayed: true,
                }));
            }
            TokenCheck::Conflict(r) => return Err(r.into()),
        }
    }
    let command = match lookups.commands.get(&req.command_id) {
        Some(Some(c)) => c,
        Some(None) => {
            return Err(Rejection::new(
                RejectionCode::ResourceNotFound,
                format!("command {} not found", req.command_id),
            )
            .into());
        }
        None => return Err(unavailable(lookups, "command")),
    };
    let execution_id = new_id();
    let (execution, payload) = start::plan(
        command,
        req,
        execution_id.clone(),
        now,
        settings.retention_secs,
    )?;
    // Latest wins: the target's older executions of the command that still wait for
    // their device end first, in the same record, so the device is told before it gets
    // the new one.
    let mut events: Vec<(Aggregate, Event)> = Vec::new();
    if command.supersede_pending {
        for (older, _) in state.undelivered_of(&req.target, now) {
            if older.command_id == req.command_id {
                let reason = StatusReason {
                    reason_code: SUPERSEDED.into(),
                    reason_description: format!("superseded by execution {execution_id}"),
                };
                events.push((
                    Aggregate::Execution {
                        execution_id: older.execution_id.clone(),
                        target: older.target.clone(),
                    },
                    Event::ExecutionCanceled {
                        status_reason: Some(reason),
                    },
                ));
            }
        }
    }
    let aggregate = Aggregate::Execution {
        execution_id: execution_id.clone(),
        target: execution.target.clone(),
    };
    events.push((
        aggregate,
        Event::ExecutionStarted {
            execution: Box::new(execution),
            payload,
            request_fingerprint: fingerprint,
        },
    ));
    Ok(Decision {
        hydrate: None,
        events,
        outcome: Outcome::Started { execution_id },
    })
}

fn decide_execution(
    state: &ShardState,
    execution_id: &ExecutionId,
    target: &Target,
    input: &ExecutionInput,
    lookups: &Lookups,
) -> Result<Decision, Refusal> {
    let (e, hydrate) = match state.execution(execution_id) {
        Some(e) => (e, None),
        // Evicted (terminal and projected) or unknown: read back.
        None => match lookups.executions.get(execution_id) {
            Some(Some(e)) if e.terminal => (e, Some(e.clone())),
            Some(_) => return Err(not_found(execution_id, target).into()),
            None => return Err(unavailable(lookups, "execution")),
        },
    };
    if e.target != *target {
        return Err(not_found(execution_id, target).into());
    }
    let decided = execution::decide(e, input)?;
    let before = matches!(input, ExecutionInput::Delete).then(|| Box::new(e.clone()));
    let aggregate = Aggregate::Execution {
        execution_id: execution_id.clone(),
        target: target.clone(),
    };
    Ok(Decision {
        hydrate,
        events: decided
            .into_iter()
            .map(|ev| (aggregate.clone(), ev))
            .collect(),
        outcome: Outcome::Execution {
            execution_id: execution_id.clone(),
            before,
        },
    })
}

/// The events a due timer produces (none when it no longer matters).
pub fn decide_timer(
    state: &ShardState,
    timer: &TimerKey,
    now: TimestampMs,
    settings: &Settings,
) -> Vec<(Aggregate, Event)> {
    match timer {
        TimerKey::Execution(id) => {
            let Some(e) = state.execution(id) else {
                return Vec::new();
            };
            let aggregate = Aggregate::Execution {
                execution_id: id.clone(),
                target: e.target.clone(),
            };
            execution::decide(e, &ExecutionInput::CloudTimeout)
                .unwrap_or_default()
                .into_iter()
                .map(|ev| (aggregate.clone(), ev))
                .collect()
        }
        // The owner's loop plans the rollout; the timer itself decides nothing.
        TimerKey::Rollout(_) => Vec::new(),
        TimerKey::CommandDeletion(id) => match state.command(id) {
            Some(c) => command_events(
                id,
                command::decide(
                    id,
                    Some(c),
                    &CommandInput::Expire,
                    now,
                    settings.command_settings,
                )
                .unwrap_or_default(),
            ),
            None => Vec::new(),
        },
    }
}

fn command_events(id: &str, events: Vec<Event>) -> Vec<(Aggregate, Event)> {
    match CommandId::parse(id) {
        Ok(command_id) => events
            .into_iter()
            .map(|ev| (Aggregate::Command(command_id.clone()), ev))
            .collect(),
        // `command::decide` refuses invalid ids before it produces any event.
        Err(_) => Vec::new(),
    }
}

fn unavailable(lookups: &Lookups, what: &str) -> Refusal {
    Refusal::Unavailable(match &lookups.failed {
        Some(why) => format!("reading the {what} failed: {why}"),
        None => format!("the {what} was not read"),
    })
}

pub fn not_found(id: &ExecutionId, target: &Target) -> Rejection {
    Rejection::new(
        RejectionCode::ResourceNotFound,
        format!("execution {id} not found for target {target}"),
    )
}
