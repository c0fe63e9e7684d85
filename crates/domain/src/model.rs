//! Commands and executions as the domain sees them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ExecutionId, Target};

/// Milliseconds since the Unix epoch. The domain never reads a clock; callers pass this in.
pub type TimestampMs = i64;

/// A static payload: bytes plus a MIME content type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(with = "crate::model::b64")]
    pub content: Vec<u8>,
    pub content_type: String,
}

/// What a rendered template is encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputFormat {
    Json,
    Cbor,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Cbor => "application/cbor",
        }
    }
}

/// The type of a template parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParameterType {
    String,
    Integer,
    Double,
    Long,
    UnsignedLong,
    Boolean,
    Binary,
}

impl ParameterType {
    /// Every type, in declaration order, for code and tests that go over all of them.
    pub const ALL: [Self; 7] = [
        Self::String,
        Self::Integer,
        Self::Double,
        Self::Long,
        Self::UnsignedLong,
        Self::Boolean,
        Self::Binary,
    ];

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Integer | Self::Double | Self::Long | Self::UnsignedLong
        )
    }
}

/// A parameter value: exactly one of the reference's `S, B, I, L, D, BIN, UL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParameterValue {
    S(String),
    B(bool),
    I(i32),
    L(i64),
    D(f64),
    Bin(#[serde(with = "crate::model::b64")] Vec<u8>),
    /// Unsigned 64-bit; carried as a decimal string on the API as in the reference.
    Ul(u64),
}

impl ParameterValue {
    pub fn parameter_type(&self) -> ParameterType {
        match self {
            Self::S(_) => ParameterType::String,
            Self::B(_) => ParameterType::Boolean,
            Self::I(_) => ParameterType::Integer,
            Self::L(_) => ParameterType::Long,
            Self::D(_) => ParameterType::Double,
            Self::Bin(_) => ParameterType::Binary,
            Self::Ul(_) => ParameterType::UnsignedLong,
        }
    }
}

/// Comparison operators of value conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ComparisonOperator {
    Equals,
    NotEquals,
    LessThan,
    LessThanEquals,
    GreaterThan,
    GreaterThanEquals,
    InSet,
    NotInSet,
    InRange,
    NotInRange,
}

impl ComparisonOperator {
    /// Every operator, in declaration order, for code and tests that go over all of them.
    pub const ALL: [Self; 10] = [
        Self::Equals,
        Self::NotEquals,
        Self::LessThan,
        Self::LessThanEquals,
        Self::GreaterThan,
        Self::GreaterThanEquals,
        Self::InSet,
        Self::NotInSet,
        Self::InRange,
        Self::NotInRange,
    ];
}

/// The operand of a value condition; numbers are decimal strings as in the reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operand {
    Number(String),
    Numbers(Vec<String>),
    String(String),
    Strings(Vec<String>),
    NumberRange { min: String, max: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCondition {
    pub operator: ComparisonOperator,
    pub operand: Operand,
}

/// A typed template parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandParameter {
    pub name: String,
    pub r#type: ParameterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<ParameterValue>,
    /// A value that overrides the default (a value given in the start request overrides both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ParameterValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_conditions: Vec<ValueCondition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A dynamic payload: a JSON template with placeholders, rendered at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadTemplate {
    pub template: String,
    pub output_format: OutputFormat,
}

/// What a command sends: a static payload or a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandBody {
    Static(Payload),
    Template(PayloadTemplate),
}

/// A command resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: CommandId,
    pub namespace: String,
    pub display_name: String,
    pub description: String,
    pub body: CommandBody,
    /// `mandatoryParameters`: the template's parameters (empty for static payloads).
    pub parameters: Vec<CommandParameter>,
    pub tags: BTreeMap<String, String>,
    pub created_at: TimestampMs,
    pub last_updated_at: TimestampMs,
    pub deprecated: bool,
    /// When `deprecated` last became true (drives immediate vs scheduled deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_at: Option<TimestampMs>,
    /// Set while a scheduled deletion is pending: when the command will be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_at: Option<TimestampMs>,
    /// A new execution of it on a target cancels the target's older ones of it that still
    /// wait for their device (`$SUPERSEDED`): the latest wins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersede_pending: bool,
}

impl Command {
    pub fn pending_deletion(&self) -> bool {
        self.delete_at.is_some()
    }
}

/// Execution statuses: the reference's six plus CANCELED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    Created,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    TimedOut,
    Canceled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 7] = [
        Self::Created,
        Self::InProgress,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::TimedOut,
        Self::Canceled,
    ];

    /// The wire name (`IN_PROGRESS`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
            Self::TimedOut => "TIMED_OUT",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why an execution is in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReason {
    pub reason_code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason_description: String,
}

/// The reason code the cloud sets when the execution timer fires.
pub const NO_RESPONSE_FROM_DEVICE: &str = "$NO_RESPONSE_FROM_DEVICE";
/// The reason code set when an API caller cancels an execution.
pub const CANCELED_BY_CALLER: &str = "$CANCELED";
/// Reason code of an execution that a newer one of the same command superseded while it
/// still waited for its device (commands with `supersede_pending`).
pub const SUPERSEDED: &str = "$SUPERSEDED";

/// A result value reported by a device: `s`, `b` or `bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultValue {
    S(String),
    B(bool),
    Bin(#[serde(with = "crate::model::b64")] Vec<u8>),
}

/// One execution, as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub execution_id: ExecutionId,
    pub command_id: CommandId,
    pub target: Target,
    pub status: ExecutionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<StatusReason>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub result: BTreeMap<String, ResultValue>,
    /// The parameters actually used (request values, defaults and fixed values resolved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParameterValue>,
    pub timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    pub created_at: TimestampMs,
    pub last_updated_at: TimestampMs,
    pub started_at: TimestampMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<TimestampMs>,
    /// When the record is purged.
    pub time_to_live: TimestampMs,
    /// True once the execution reached a terminal status (a cloud TIMED_OUT is not terminal).
    pub terminal: bool,
    /// The sequence number of the last event applied (per execution, from 1).
    pub seq: u64,
    /// [`crate::start::fingerprint`] of the start request, so a retry with the same client
    /// token can be told apart from a different request once the shard owner no longer holds
    /// the token in memory (0: unknown, in records written before it was kept).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub request_fingerprint: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Execution {
    /// When the cloud timer fires.
    pub fn deadline(&self) -> TimestampMs {
        self.created_at + (self.timeout_secs as i64) * 1000
    }
}

/// Base64 (standard alphabet) for byte fields in JSON.
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
