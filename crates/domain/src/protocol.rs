//! Messages between fleetcmd's services on the bus, and the subjects they travel on.
//!
//! ```text
//! fleetcmd.shard.<n>        request/reply: inputs for shard n (start, cancel, device update, ...)
//! fleetcmd.deliver          queue group "edge": an MQTT publish for a device
//! fleetcmd.events.<cmd>     a projected status change of an execution of command <cmd>
//! fleetcmd.projected        a projector committed a partition up to an offset
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ca::{CaCertificate, CaInput};
use crate::command::CommandInput;
use crate::credential::{CertificateRecord, CredentialInput};
use crate::error::Rejection;
use crate::execution::ExecutionInput;
use crate::group::{GroupInput, ThingGroup};
use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{Command, Execution, ExecutionStatus, ResultValue, StatusReason, TimestampMs};
use crate::rollout::{RolloutId, RolloutInput, RolloutSummary};
use crate::start::StartRequest;
use crate::thing::{Thing, ThingInput};

pub const DELIVER_SUBJECT: &str = "fleetcmd.deliver";
pub const EDGE_QUEUE_GROUP: &str = "edge";
pub const EVENTS_PREFIX: &str = "fleetcmd.events";
pub const EVENTS_ALL: &str = "fleetcmd.events.>";
pub const PROJECTED_SUBJECT: &str = "fleetcmd.projected";

/// The request subject of a shard.
pub fn shard_subject(shard: u32) -> String {
    format!("fleetcmd.shard.{shard}")
}

/// The notification subject of a command's executions.
pub fn events_subject(command_id: &CommandId) -> String {
    format!("{EVENTS_PREFIX}.{command_id}")
}

/// An input for the owner of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardRequest {
    Start(StartRequest),
    Execution {
        execution_id: ExecutionId,
        target: Target,
        input: ExecutionInput,
    },
    Command {
        command_id: String,
        input: CommandInput,
    },
    Thing {
        thing_name: String,
        input: ThingInput,
    },
    /// An input for the credentials of `owner`, a thing or a bare client id.
    Credential {
        owner: Target,
        input: CredentialInput,
    },
    /// An input for the registered CA certificate with this id.
    Ca {
        ca_certificate_id: String,
        input: CaInput,
    },
    /// The target's device has just subscribed to its requests: deliver every execution of
    /// it that is still waiting (CREATED and not past its deadline), in start order. Records
    /// nothing: a device that got a request and has not answered gets it again.
    DeliverPending {
        target: Target,
    },
    /// An input for the thing group of this name.
    Group {
        thing_group_name: String,
        input: GroupInput,
    },
    /// An input for the rollout with this id.
    Rollout {
        rollout_id: RolloutId,
        input: RolloutInput,
    },
    /// Read the rollout with this id from its owner (records nothing).
    ReadRollout {
        rollout_id: RolloutId,
    },
    /// Every rollout shard `shard` hosts (sent to that shard, records nothing).
    ListRollouts {
        shard: u32,
    },
}

impl ShardRequest {
    /// The routing key that picks the shard.
    pub fn routing_key(&self) -> String {
        match self {
            Self::Start(r) => r.target.resource_name(),
            Self::Execution { target, .. } => target.resource_name(),
            Self::Command { command_id, .. } => format!("command/{command_id}"),
            Self::Thing { thing_name, .. } => crate::event::thing_routing_key(thing_name),
            Self::Credential { owner, .. } => owner.resource_name(),
            Self::Ca {
                ca_certificate_id, ..
            } => crate::ca::routing_key(ca_certificate_id),
            Self::Group {
                thing_group_name, ..
            } => crate::group::routing_key(thing_group_name),
            Self::DeliverPending { target } => target.resource_name(),
            Self::Rollout { rollout_id, .. } | Self::ReadRollout { rollout_id } => {
                crate::rollout::routing_key(rollout_id)
            }
            // Not routed by a key: sent to its shard by number.
            Self::ListRollouts { shard } => format!("shard/{shard}"),
        }
    }
}

/// Where the owner wrote an input's events: callers wait for the projector to pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub partition: u32,
    /// The offset just past the last event written.
    pub next_offset: u64,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardReply {
    /// A start was accepted (or recognised as a retry of an earlier one).
    Started {
        execution_id: ExecutionId,
        position: Option<LogPosition>,
        replayed: bool,
    },
    /// An execution input was applied; `execution` is the state after it (before it, for a delete).
    Execution {
        execution: Box<Execution>,
        position: Option<LogPosition>,
    },
    /// A command input was applied; `command` is the state after it (`None` once deleted).
    Command {
        command: Option<Box<Command>>,
        deleted: bool,
        position: Option<LogPosition>,
    },
    /// A thing input was applied; `thing` is the state after it (`None` once deleted).
    Thing {
        thing: Option<Box<Thing>>,
        deleted: bool,
        position: Option<LogPosition>,
    },
    /// A credential input was applied; `certificate` is the certificate it was about, as
    /// stored after it (`None` for a password).
    Credential {
        certificate: Option<Box<CertificateRecord>>,
        position: Option<LogPosition>,
    },
    /// A CA input was applied; `ca` is the CA certificate as stored after it.
    Ca {
        ca: Option<Box<CaCertificate>>,
        position: Option<LogPosition>,
    },
    /// A group input was applied; `group` is the group as stored after it (`None`: deleted
    /// or never there).
    Group {
        group: Option<Box<ThingGroup>>,
        position: Option<LogPosition>,
    },
    /// A rollout input was applied (or a rollout read): the rollout as the API shows it
    /// (`None`: never started).
    Rollout {
        rollout: Option<Box<RolloutSummary>>,
        position: Option<LogPosition>,
    },
    /// The rollouts a shard hosts, by id.
    Rollouts { rollouts: Vec<RolloutSummary> },
    /// The target's waiting executions were handed to the edge: `count` of them.
    DeliveredPending { count: u32 },
    /// The domain refused the input.
    Rejected(Rejection),
    /// The owner cannot serve now (starting up, shard moving, log unavailable): retry.
    Unavailable(String),
}

/// An MQTT publish the edge performs for the dispatcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub topic: String,
    #[serde(with = "crate::model::b64")]
    pub payload: Vec<u8>,
    pub content_type: String,
    /// When the message stops being useful (the execution deadline): MQTT 5 message expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<TimestampMs>,
}

/// A projected status change of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionChanged {
    pub execution_id: ExecutionId,
    pub command_id: CommandId,
    pub target: Target,
    pub status: ExecutionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<StatusReason>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub result: BTreeMap<String, ResultValue>,
    pub terminal: bool,
    pub timestamp: TimestampMs,
}

impl ExecutionChanged {
    pub fn from_execution(e: &Execution, at: TimestampMs) -> Self {
        Self {
            execution_id: e.execution_id.clone(),
            command_id: e.command_id.clone(),
            target: e.target.clone(),
            status: e.status,
            status_reason: e.status_reason.clone(),
            result: e.result.clone(),
            terminal: e.terminal,
            timestamp: at,
        }
    }
}

/// A projector's progress on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projected {
    pub partition: u32,
    pub next_offset: u64,
}
