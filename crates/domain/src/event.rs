//! Events: immutable facts appended to the log. State is a fold over them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{
    Command, Execution, ExecutionStatus, Payload, ResultValue, StatusReason, TimestampMs,
};

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
}

impl Aggregate {
    /// The partition key: executions are keyed by target so one shard owns a device,
    /// commands by their id.
    pub fn routing_key(&self) -> String {
        match self {
            Self::Command(id) => format!("command/{id}"),
            Self::Execution { target, .. } => target.resource_name(),
        }
    }
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
}

impl Event {
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
