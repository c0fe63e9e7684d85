//! Events: immutable facts appended to the log. State is a fold over them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ca::{CaCertificate, CaEvent};
use crate::credential::{CredentialEvent, Credentials};
use crate::group::{GroupEvent, ThingGroup};
use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{
    Command, Execution, ExecutionStatus, Payload, ResultValue, StatusReason, TimestampMs,
};
use crate::rollout::{Rollout, RolloutEvent, RolloutId};
use crate::thing::{Thing, ThingEvent};

/// The schema version written into every envelope.
pub const SCHEMA_VERSION: u16 = 1;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregate {
    Command(CommandId),
    Execution {
        execution_id: ExecutionId,
        target: Target,
    },
    /// A registered thing, by name.
    Thing(String),
    /// The credentials (certificates, password) of a thing or a bare client id.
    Credential(Target),
    /// A registered CA certificate, by its certificate id.
    Ca(String),
    /// A thing group, by name.
    Group(String),
    /// A rollout, by id.
    Rollout(RolloutId),
}

impl Aggregate {
    /// The partition key: executions are keyed by target so one shard owns a device (and
    /// the thing it is, when registered), commands by their id.
    pub fn routing_key(&self) -> String {
        match self {
            Self::Command(id) => format!("command/{id}"),
            Self::Execution { target, .. } => target.resource_name(),
            Self::Thing(name) => thing_routing_key(name),
            // The owner's: a thing's credentials live in the shard of the thing.
            Self::Credential(owner) => owner.resource_name(),
            Self::Ca(id) => crate::ca::routing_key(id),
            Self::Group(name) => crate::group::routing_key(name),
            Self::Rollout(id) => crate::rollout::routing_key(id),
        }
    }
}

/// The routing key of a thing: that of its executions (`thing/<name>`), so the shard that
/// owns a device's executions owns its registration too.
pub fn thing_routing_key(name: &str) -> String {
    format!("thing/{name}")
}

/// The envelope every event travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique per event; consumers may use it to drop duplicates.
    pub event_id: String,
    pub schema: u16,
    pub aggregate: Aggregate,
    /// Per-aggregate sequence number, from 1, without gaps.
    pub seq: u64,
    pub at: TimestampMs,
    /// W3C `traceparent` of the request that caused the event, when traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub event: Event,
}

/// Every fact fleetcmd records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    CommandCreated {
        command: Command,
    },
    CommandUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deprecated: Option<bool>,
    },
    CommandDeletionScheduled {
        delete_at: TimestampMs,
    },
    CommandDeleted,
    /// An execution was created; carries the initial record and the rendered payload.
    ExecutionStarted {
        execution: Box<Execution>,
        payload: Payload,
        /// Fingerprint of the start request, for client-token conflict detection.
        request_fingerprint: u64,
    },
    /// A device reported a status (and maybe a reason and result).
    StatusReported {
        status: ExecutionStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_reason: Option<StatusReason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<BTreeMap<String, ResultValue>>,
    },
    /// The cloud timer fired with no terminal report (not terminal).
    ExecutionTimedOut,
    /// An API caller canceled the execution (terminal).
    ExecutionCanceled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_reason: Option<StatusReason>,
    },
    /// The execution record was deleted.
    ExecutionDeleted,
    /// A fact about a registered thing.
    Thing {
        event: ThingEvent,
    },
    /// A fact about a device's credentials.
    Credential {
        event: CredentialEvent,
    },
    /// A fact about a registered CA certificate.
    Ca {
        event: CaEvent,
    },
    /// A fact about a thing group.
    Group {
        event: GroupEvent,
    },
    /// A fact about a rollout.
    Rollout {
        event: RolloutEvent,
    },
}

impl Event {
    /// The event's type name (`ExecutionStarted`, ...), for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CommandCreated { .. } => "CommandCreated",
            Self::CommandUpdated { .. } => "CommandUpdated",
            Self::CommandDeletionScheduled { .. } => "CommandDeletionScheduled",
            Self::CommandDeleted => "CommandDeleted",
            Self::ExecutionStarted { .. } => "ExecutionStarted",
            Self::StatusReported { .. } => "StatusReported",
            Self::ExecutionTimedOut => "ExecutionTimedOut",
            Self::ExecutionCanceled { .. } => "ExecutionCanceled",
            Self::ExecutionDeleted => "ExecutionDeleted",
            Self::Thing { event } => match event {
                ThingEvent::Created(_) => "ThingCreated",
                ThingEvent::Updated { .. } => "ThingUpdated",
                ThingEvent::Deleted => "ThingDeleted",
                ThingEvent::AddedToGroup { .. } => "ThingAddedToGroup",
                ThingEvent::RemovedFromGroup { .. } => "ThingRemovedFromGroup",
            },
            Self::Credential { event } => event.name(),
            Self::Ca { event } => event.name(),
            Self::Group { event } => event.name(),
            Self::Rollout { event } => event.name(),
        }
    }

    /// The status an event moves its execution to, if it changes one.
    pub fn new_status(&self) -> Option<ExecutionStatus> {
        match self {
            Self::ExecutionStarted { .. } => Some(ExecutionStatus::Created),
            Self::StatusReported { status, .. } => Some(*status),
            Self::ExecutionTimedOut => Some(ExecutionStatus::TimedOut),
            Self::ExecutionCanceled { .. } => Some(ExecutionStatus::Canceled),
            _ => None,
        }
    }
}

/// A shard owner's state at a point of its log, as snapshots carry it: everything a rebuild
/// from offset 0 would have folded up to `next_offset`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardSnapshot {
    /// The offset of the first record the snapshot does not include.
    pub next_offset: u64,
    /// The executions the owner holds, each with the offset of its last event's record.
    pub executions: Vec<(Execution, u64)>,
    /// The payloads of executions still waiting for delivery.
    pub undelivered: Vec<(ExecutionId, Payload)>,
    /// The `traceparent` each traced execution started under.
    pub traces: Vec<(ExecutionId, String)>,
    /// Client tokens held in memory.
    pub tokens: Vec<SnapshotToken>,
    /// The shard's commands, each with the sequence number of its last event.
    pub commands: Vec<(Command, u64)>,
    /// The shard's registered things, each with the sequence number of its last event.
    pub things: Vec<(Thing, u64)>,
    /// The credentials of the shard's owners (each carries its last event's sequence number
    /// as its version).
    pub credentials: Vec<Credentials>,
    /// The shard's registered CA certificates (each carries its version).
    pub cas: Vec<CaCertificate>,
    /// The shard's thing groups (each carries its version).
    pub groups: Vec<ThingGroup>,
    /// The rollouts the shard hosts, each with the sequence number of its last event.
    pub rollouts: Vec<(Rollout, u64)>,
}

/// A client token in a [`ShardSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotToken {
    pub target: Target,
    pub token: String,
    pub execution_id: ExecutionId,
    pub fingerprint: u64,
    pub memory_until: TimestampMs,
    pub offset: u64,
}
