//! Conversions between the generated `fleetcmd.v1` types ([`crate::pb`]) and the domain.
//!
//! Contracts stop here (STYLE 6). Incoming requests become domain values with `TryFrom`
//! (`StartRequest::try_from(req)?`); nested values, whose field path depends on where they
//! sit, have `*_from_pb(field, value)` functions that take that path. Outgoing domain values
//! become messages with `From` or, when ARNs are needed, `*_to_pb(value, &arns)`.
//!
//! Every failure is a [`ValidationError`] whose `field` is the API field path
//! (`mandatory_parameters[2].value_conditions[0].operand`, `parameters["temp"].ul`) and whose
//! message states the rule. This module only checks what the wire can express but the domain
//! cannot hold: an empty oneof, an unspecified or unknown enum number, a malformed UL string,
//! a negative timeout, an out-of-range timestamp, a page size or time range that makes no
//! sense. Limits and cross-field rules stay in the domain (`command::validate_create`,
//! `start::validate_request`, the template checks), so they are written once.
//!
//! The last section maps domain and port errors to `tonic::Status` (STYLE 7): validation
//! failures carry a `google.rpc.BadRequest` field violation, rejections a `google.rpc.ErrorInfo`
//! whose reason tells apart codes that share a gRPC code.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;

use fleetcmd_domain::command::{CreateCommand, NAMESPACE_AWS_IOT, UpdateCommand};
use fleetcmd_domain::error::{Rejection, RejectionCode, ValidationError};
use fleetcmd_domain::ids::{self, CommandId, Target, TargetKind};
use fleetcmd_domain::limits::{PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use fleetcmd_domain::model::{
    Command, CommandBody, CommandParameter, ComparisonOperator, Execution, ExecutionStatus,
    Operand, OutputFormat, ParameterType, ParameterValue, Payload, PayloadTemplate, ResultValue,
    StatusReason, TimestampMs, ValueCondition,
};
use fleetcmd_domain::ports::{CommandQuery, ExecutionQuery, PortError, TimeRange};
use fleetcmd_domain::start::StartRequest;
use prost_types::Timestamp;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb;

// ---------------------------------------------------------------------------------------------
// Field paths

/// `prefix.field`, or `field` alone at the top level.
fn path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// `prefix["key"]` for map entries (the key is quoted and escaped as a Rust string).
fn key_path(prefix: &str, key: &str) -> String {
    format!("{prefix}[{key:?}]")
}

/// `prefix[i]` for repeated fields.
fn index_path(prefix: &str, index: usize) -> String {
    format!("{prefix}[{index}]")
}

/// An enum field holding an unspecified or unknown number.
fn bad_enum(field: &str, expected: &str, got: impl Display) -> ValidationError {
    ValidationError::new(field, format!("must be one of {expected}, got {got}"))
}

/// A proto3 string where empty means "not set".
fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

// ---------------------------------------------------------------------------------------------
// ARNs

/// The region and account that ARN-like names are built with. fleetcmd has neither; they only
/// keep `commandArn`/`targetArn` shaped as AWS clients and topic rules expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    pub region: String,
    pub account: String,
}

impl Arns {
    pub const DEFAULT_REGION: &'static str = "local";
    pub const DEFAULT_ACCOUNT: &'static str = "000000000000";

    pub fn new(region: impl Into<String>, account: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account: account.into(),
        }
    }

    /// `arn:aws:iot:<region>:<account>:command/<id>`.
    pub fn command(&self, id: &CommandId) -> String {
        ids::command_arn(&self.region, &self.account, id)
    }

    /// `arn:aws:iot:<region>:<account>:thing/<name>` or `...:client/<id>`.
    pub fn target(&self, target: &Target) -> String {
        ids::target_arn(&self.region, &self.account, target)
    }
}

impl Default for Arns {
    /// Region `local`, account `000000000000`.
    fn default() -> Self {
        Self::new(Self::DEFAULT_REGION, Self::DEFAULT_ACCOUNT)
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// Milliseconds since the epoch as a protobuf timestamp (exact for every `i64`; times before
/// the epoch get a negative `seconds` and non-negative `nanos`, as the protobuf spec wants).
pub fn timestamp_from_ms(ms: TimestampMs) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid is in 0..1000, so this is below 10^9 and fits in an i32.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as milliseconds since the epoch. Sub-millisecond precision is dropped
/// (rounded down). Errors, naming `field`: `nanos` outside 0–999,999,999, or a time that does
/// not fit in 64-bit milliseconds.
pub fn timestamp_to_ms(field: &str, ts: Timestamp) -> Result<TimestampMs, ValidationError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ValidationError::new(
            field,
            format!("nanos must be between 0 and 999999999, got {}", ts.nanos),
        ));
    }
    let ms = i128::from(ts.seconds) * 1000 + i128::from(ts.nanos / 1_000_000);
    TimestampMs::try_from(ms).map_err(|_| {
        ValidationError::new(
            field,
            format!(
                "is out of range: {} seconds since the epoch does not fit in 64-bit milliseconds",
                ts.seconds
            ),
        )
    })
}

/// [`timestamp_from_ms`] for optional times (`None` stays unset).
pub fn opt_timestamp_from_ms(ms: Option<TimestampMs>) -> Option<Timestamp> {
    ms.map(timestamp_from_ms)
}

/// [`timestamp_to_ms`] for optional times (unset stays `None`).
pub fn opt_timestamp_to_ms(
    field: &str,
    ts: Option<Timestamp>,
) -> Result<Option<TimestampMs>, ValidationError> {
    ts.map(|t| timestamp_to_ms(field, t)).transpose()
}

// ---------------------------------------------------------------------------------------------
// Targets

impl From<TargetKind> for pb::TargetKind {
    fn from(kind: TargetKind) -> Self {
        match kind {
            TargetKind::Thing => Self::Thing,
            TargetKind::Client => Self::Client,
        }
    }
}

/// A `TargetKind` number: THING or CLIENT; anything else is an error naming `field`.
pub fn target_kind_from_pb(field: &str, value: i32) -> Result<TargetKind, ValidationError> {
    const EXPECTED: &str = "THING, CLIENT";
    match pb::TargetKind::try_from(value) {
        Ok(pb::TargetKind::Thing) => Ok(TargetKind::Thing),
        Ok(pb::TargetKind::Client) => Ok(TargetKind::Client),
        Ok(other) => Err(bad_enum(field, EXPECTED, other.as_str_name())),
        Err(_) => Err(bad_enum(field, EXPECTED, value)),
    }
}

/// A target: `target.kind` must be THING or CLIENT, and `target.id` passes [`Target::new`].
/// (The API calls the field `target` everywhere, so the paths are fixed.)
impl TryFrom<pb::Target> for Target {
    type Error = ValidationError;

    fn try_from(t: pb::Target) -> Result<Self, Self::Error> {
        let kind = target_kind_from_pb("target.kind", t.kind)?;
        Target::new(kind, t.id)
    }
}

impl From<Target> for pb::Target {
    fn from(t: Target) -> Self {
        Self {
            kind: pb::TargetKind::from(t.kind) as i32,
            id: t.id,
        }
    }
}

impl From<&Target> for pb::Target {
    fn from(t: &Target) -> Self {
        t.clone().into()
    }
}

/// A required `target`: unset is an error naming `target`.
pub fn require_target(target: Option<pb::Target>) -> Result<Target, ValidationError> {
    match target {
        Some(t) => Target::try_from(t),
        None => Err(ValidationError::new("target", "is required")),
    }
}

/// An optional `target` (a filter, or a check against the execution's target).
pub fn optional_target(target: Option<pb::Target>) -> Result<Option<Target>, ValidationError> {
    target.map(Target::try_from).transpose()
}

// ---------------------------------------------------------------------------------------------
// Enums

impl From<ExecutionStatus> for pb::ExecutionStatus {
    fn from(s: ExecutionStatus) -> Self {
        match s {
            ExecutionStatus::Created => Self::Created,
            ExecutionStatus::InProgress => Self::InProgress,
            ExecutionStatus::Succeeded => Self::Succeeded,
            ExecutionStatus::Failed => Self::Failed,
            ExecutionStatus::Rejected => Self::Rejected,
            ExecutionStatus::TimedOut => Self::TimedOut,
            ExecutionStatus::Canceled => Self::Canceled,
        }
    }
}

/// The `i32` a message's `ExecutionStatus` field holds.
pub fn status_to_pb(status: ExecutionStatus) -> i32 {
    pb::ExecutionStatus::from(status) as i32
}

/// An `ExecutionStatus` number; UNSPECIFIED or unknown is an error naming `field`.
pub fn status_from_pb(field: &str, value: i32) -> Result<ExecutionStatus, ValidationError> {
    const EXPECTED: &str = "CREATED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED";
    use pb::ExecutionStatus as P;
    match P::try_from(value) {
        Ok(P::Created) => Ok(ExecutionStatus::Created),
        Ok(P::InProgress) => Ok(ExecutionStatus::InProgress),
        Ok(P::Succeeded) => Ok(ExecutionStatus::Succeeded),
        Ok(P::Failed) => Ok(ExecutionStatus::Failed),
        Ok(P::Rejected) => Ok(ExecutionStatus::Rejected),
        Ok(P::TimedOut) => Ok(ExecutionStatus::TimedOut),
        Ok(P::Canceled) => Ok(ExecutionStatus::Canceled),
        Ok(P::Unspecified) => Err(bad_enum(field, EXPECTED, P::Unspecified.as_str_name())),
        Err(_) => Err(bad_enum(field, EXPECTED, value)),
    }
}

impl From<ParameterType> for pb::ParameterType {
    fn from(t: ParameterType) -> Self {
        match t {
            ParameterType::String => Self::String,
            ParameterType::Integer => Self::Integer,
            ParameterType::Double => Self::Double,
            ParameterType::Long => Self::Long,
            ParameterType::UnsignedLong => Self::Unsignedlong,
            ParameterType::Boolean => Self::Boolean,
            ParameterType::Binary => Self::Binary,
        }
    }
}

/// A `ParameterType` number; UNSPECIFIED or unknown is an error naming `field`.
pub fn parameter_type_from_pb(field: &str, value: i32) -> Result<ParameterType, ValidationError> {
    const EXPECTED: &str = "STRING, INTEGER, DOUBLE, LONG, UNSIGNEDLONG, BOOLEAN, BINARY";
    use pb::ParameterType as P;
    match P::try_from(value) {
        Ok(P::String) => Ok(ParameterType::String),
        Ok(P::Integer) => Ok(ParameterType::Integer),
        Ok(P::Double) => Ok(ParameterType::Double),
        Ok(P::Long) => Ok(ParameterType::Long),
        Ok(P::Unsignedlong) => Ok(ParameterType::UnsignedLong),
        Ok(P::Boolean) => Ok(ParameterType::Boolean),
        Ok(P::Binary) => Ok(ParameterType::Binary),
        Ok(P::Unspecified) => Err(bad_enum(field, EXPECTED, P::Unspecified.as_str_name())),
        Err(_) => Err(bad_enum(field, EXPECTED, value)),
    }
}

impl From<OutputFormat> for pb::OutputFormat {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Json => Self::Json,
            OutputFormat::Cbor => Self::Cbor,
        }
    }
}

/// An `OutputFormat` number: UNSPECIFIED means JSON (the proto's default); unknown is an
/// error naming `field`.
pub fn output_format_from_pb(field: &str, value: i32) -> Result<OutputFormat, ValidationError> {
    match pb::OutputFormat::try_from(value) {
        Ok(pb::OutputFormat::Unspecified | pb::OutputFormat::Json) => Ok(OutputFormat::Json),
        Ok(pb::OutputFormat::Cbor) => Ok(OutputFormat::Cbor),
        Err(_) => Err(bad_enum(field, "JSON, CBOR", value)),
    }
}

impl From<ComparisonOperator> for pb::ComparisonOperator {
    fn from(op: ComparisonOperator) -> Self {
        match op {
            ComparisonOperator::Equals => Self::Equals,
            ComparisonOperator::NotEquals => Self::NotEquals,
            ComparisonOperator::LessThan => Self::LessThan,
            ComparisonOperator::LessThanEquals => Self::LessThanEquals,
            ComparisonOperator::GreaterThan => Self::GreaterThan,
            ComparisonOperator::GreaterThanEquals => Self::GreaterThanEquals,
            ComparisonOperator::InSet => Self::InSet,
            ComparisonOperator::NotInSet => Self::NotInSet,
            ComparisonOperator::InRange => Self::InRange,
            ComparisonOperator::NotInRange => Self::NotInRange,
        }
    }
}

/// A `ComparisonOperator` number; UNSPECIFIED or unknown is an error naming `field`.
pub fn comparison_operator_from_pb(
    field: &str,
    value: i32,
) -> Result<ComparisonOperator, ValidationError> {
    const EXPECTED: &str = "EQUALS, NOT_EQUALS, LESS_THAN, LESS_THAN_EQUALS, GREATER_THAN, \
                            GREATER_THAN_EQUALS, IN_SET, NOT_IN_SET, IN_RANGE, NOT_IN_RANGE";
    use pb::ComparisonOperator as P;
    match P::try_from(value) {
        Ok(P::Equals) => Ok(ComparisonOperator::Equals),
        Ok(P::NotEquals) => Ok(ComparisonOperator::NotEquals),
        Ok(P::LessThan) => Ok(ComparisonOperator::LessThan),
        Ok(P::LessThanEquals) => Ok(ComparisonOperator::LessThanEquals),
        Ok(P::GreaterThan) => Ok(ComparisonOperator::GreaterThan),
        Ok(P::GreaterThanEquals) => Ok(ComparisonOperator::GreaterThanEquals),
        Ok(P::InSet) => Ok(ComparisonOperator::InSet),
        Ok(P::NotInSet) => Ok(ComparisonOperator::NotInSet),
        Ok(P::InRange) => Ok(ComparisonOperator::InRange),
        Ok(P::NotInRange) => Ok(ComparisonOperator::NotInRange),
        Ok(P::Unspecified) => Err(bad_enum(field, EXPECTED, P::Unspecified.as_str_name())),
        Err(_) => Err(bad_enum(field, EXPECTED, value)),
    }
}

/// `sort_order`: ASCENDING → `true`; UNSPECIFIED and DESCENDING → `false` (the default is
/// descending); unknown is an error naming `sort_order`.
pub fn sort_ascending_from_pb(value: i32) -> Result<bool, ValidationError> {
    match pb::SortOrder::try_from(value) {
        Ok(pb::SortOrder::Ascending) => Ok(true),
        Ok(pb::SortOrder::Unspecified | pb::SortOrder::Descending) => Ok(false),
        Err(_) => Err(bad_enum("sort_order", "ASCENDING, DESCENDING", value)),
    }
}

/// `max_results`: 0 (unset) → [`PAGE_SIZE_DEFAULT`]; 1–[`PAGE_SIZE_MAX`] as given; anything
/// else is an error naming `max_results`.
pub fn page_size_from_pb(max_results: i32) -> Result<u32, ValidationError> {
    if max_results == 0 {
        return Ok(PAGE_SIZE_DEFAULT);
    }
    match u32::try_from(max_results) {
        Ok(n) if (1..=PAGE_SIZE_MAX).contains(&n) => Ok(n),
        _ => Err(ValidationError::new(
            "max_results",
            format!(
                "must be between 1 and {PAGE_SIZE_MAX} (0 means {PAGE_SIZE_DEFAULT}), got {max_results}"
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter and result values

/// A UL value: a decimal string of 1–20 ASCII digits that fits in a `u64` (no sign, no
/// spaces; leading zeros are allowed, as the reference's pattern `^[0-9]*$` does).
pub fn parse_ul(field: &str, s: &str) -> Result<u64, ValidationError> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::new(
            field,
            format!("must be a decimal string of 1–20 digits, got {s:?}"),
        ));
    }
    s.parse::<u64>().map_err(|_| {
        ValidationError::new(
            field,
            format!(
                "must fit in an unsigned 64-bit integer (at most {}), got {s}",
                u64::MAX
            ),
        )
    })
}

/// A parameter value at `field` (e.g. `parameters["temp"]`): exactly one member must be set
/// (else an error naming `field`); a UL member must pass [`parse_ul`] (else `field.ul`).
pub fn parameter_value_from_pb(
    field: &str,
    v: pb::ParameterValue,
) -> Result<ParameterValue, ValidationError> {
    use pb::parameter_value::Value;
    Ok(match v.value {
        Some(Value::S(s)) => ParameterValue::S(s),
        Some(Value::B(b)) => ParameterValue::B(b),
        Some(Value::I(i)) => ParameterValue::I(i),
        Some(Value::L(l)) => ParameterValue::L(l),
        Some(Value::D(d)) => ParameterValue::D(d),
        Some(Value::Bin(bin)) => ParameterValue::Bin(bin),
        Some(Value::Ul(ul)) => ParameterValue::Ul(parse_ul(&path(field, "ul"), &ul)?),
        None => {
            return Err(ValidationError::new(
                field,
                "exactly one of s, b, i, l, d, bin, ul must be set",
            ));
        }
    })
}

impl From<ParameterValue> for pb::ParameterValue {
    fn from(v: ParameterValue) -> Self {
        use pb::parameter_value::Value;
        let value = match v {
            ParameterValue::S(s) => Value::S(s),
            ParameterValue::B(b) => Value::B(b),
            ParameterValue::I(i) => Value::I(i),
            ParameterValue::L(l) => Value::L(l),
            ParameterValue::D(d) => Value::D(d),
            ParameterValue::Bin(bin) => Value::Bin(bin),
            ParameterValue::Ul(ul) => Value::Ul(ul.to_string()),
        };
        Self { value: Some(value) }
    }
}

/// A parameter map at `field` (e.g. `parameters`); entries are checked in key order, so the
/// error (naming `field["key"]`) is the same on every call.
pub fn parameters_from_pb(
    field: &str,
    map: HashMap<String, pb::ParameterValue>,
) -> Result<BTreeMap<String, ParameterValue>, ValidationError> {
    let sorted: BTreeMap<String, pb::ParameterValue> = map.into_iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| {
            let value = parameter_value_from_pb(&key_path(field, &k), v)?;
            Ok((k, value))
        })
        .collect()
}

/// The inverse of [`parameters_from_pb`].
pub fn parameters_to_pb(
    map: BTreeMap<String, ParameterValue>,
) -> HashMap<String, pb::ParameterValue> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// A result value at `field` (e.g. `result["log"]`): exactly one of `s`, `b`, `bin`.
pub fn result_value_from_pb(
    field: &str,
    v: pb::ResultValue,
) -> Result<ResultValue, ValidationError> {
    use pb::result_value::Value;
    match v.value {
        Some(Value::S(s)) => Ok(ResultValue::S(s)),
        Some(Value::B(b)) => Ok(ResultValue::B(b)),
        Some(Value::Bin(bin)) => Ok(ResultValue::Bin(bin)),
        None => Err(ValidationError::new(
            field,
            "exactly one of s, b, bin must be set",
        )),
    }
}

impl From<ResultValue> for pb::ResultValue {
    fn from(v: ResultValue) -> Self {
        use pb::result_value::Value;
        let value = match v {
            ResultValue::S(s) => Value::S(s),
            ResultValue::B(b) => Value::B(b),
            ResultValue::Bin(bin) => Value::Bin(bin),
        };
        Self { value: Some(value) }
    }
}

/// A result map at `field` (e.g. `result`), checked in key order like [`parameters_from_pb`].
pub fn results_from_pb(
    field: &str,
    map: HashMap<String, pb::ResultValue>,
) -> Result<BTreeMap<String, ResultValue>, ValidationError> {
    let sorted: BTreeMap<String, pb::ResultValue> = map.into_iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| {
            let value = result_value_from_pb(&key_path(field, &k), v)?;
            Ok((k, value))
        })
        .collect()
}

/// The inverse of [`results_from_pb`].
pub fn results_to_pb(map: BTreeMap<String, ResultValue>) -> HashMap<String, pb::ResultValue> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

// ---------------------------------------------------------------------------------------------
// Value conditions and command parameters

/// The `operand` of a value condition at `field` (e.g. `...value_conditions[0].operand`):
/// it is required and exactly one member must be set. Operand counts and number syntax are
/// the template rules' business.
pub fn operand_from_pb(
    field: &str,
    operand: Option<pb::ConditionOperand>,
) -> Result<Operand, ValidationError> {
    use pb::condition_operand::Operand as P;
    let Some(operand) = operand else {
        return Err(ValidationError::new(field, "is required"));
    };
    match operand.operand {
        Some(P::Number(n)) => Ok(Operand::Number(n)),
        Some(P::Numbers(l)) => Ok(Operand::Numbers(l.values)),
        Some(P::String(s)) => Ok(Operand::String(s)),
        Some(P::Strings(l)) => Ok(Operand::Strings(l.values)),
        Some(P::NumberRange(r)) => Ok(Operand::NumberRange {
            min: r.min,
            max: r.max,
        }),
        None => Err(ValidationError::new(
            field,
            "exactly one of number, numbers, string, strings, number_range must be set",
        )),
    }
}

impl From<Operand> for pb::ConditionOperand {
    fn from(o: Operand) -> Self {
        use pb::condition_operand::Operand as P;
        let operand = match o {
            Operand::Number(n) => P::Number(n),
            Operand::Numbers(values) => P::Numbers(pb::StringList { values }),
            Operand::String(s) => P::String(s),
            Operand::Strings(values) => P::Strings(pb::StringList { values }),
            Operand::NumberRange { min, max } => P::NumberRange(pb::NumberRange { min, max }),
        };
        Self {
            operand: Some(operand),
        }
    }
}

/// A value condition at `field` (e.g. `mandatory_parameters[0].value_conditions[1]`).
pub fn value_condition_from_pb(
    field: &str,
    c: pb::ValueCondition,
) -> Result<ValueCondition, ValidationError> {
    Ok(ValueCondition {
        operator: comparison_operator_from_pb(
            &path(field, "comparison_operator"),
            c.comparison_operator,
        )?,
        operand: operand_from_pb(&path(field, "operand"), c.operand)?,
    })
}

impl From<ValueCondition> for pb::ValueCondition {
    fn from(c: ValueCondition) -> Self {
        Self {
            comparison_operator: pb::ComparisonOperator::from(c.operator) as i32,
            operand: Some(c.operand.into()),
        }
    }
}

/// A command parameter at `field` (e.g. `mandatory_parameters[0]`). The name pattern, the
/// value types and which operators suit which type are left to the template rules.
pub fn command_parameter_from_pb(
    field: &str,
    p: pb::CommandParameter,
) -> Result<CommandParameter, ValidationError> {
    let r#type = parameter_type_from_pb(&path(field, "type"), p.r#type)?;
    let value = p
        .value
        .map(|v| parameter_value_from_pb(&path(field, "value"), v))
        .transpose()?;
    let default_value = p
        .default_value
        .map(|v| parameter_value_from_pb(&path(field, "default_value"), v))
        .transpose()?;
    let conditions_field = path(field, "value_conditions");
    let value_conditions = p
        .value_conditions
        .into_iter()
        .enumerate()
        .map(|(i, c)| value_condition_from_pb(&index_path(&conditions_field, i), c))
        .collect::<Result<_, _>>()?;
    Ok(CommandParameter {
        name: p.name,
        r#type,
        default_value,
        value,
        value_conditions,
        description: p.description,
    })
}

impl From<CommandParameter> for pb::CommandParameter {
    fn from(p: CommandParameter) -> Self {
        Self {
            name: p.name,
            r#type: pb::ParameterType::from(p.r#type) as i32,
            value: p.value.map(Into::into),
            default_value: p.default_value.map(Into::into),
            value_conditions: p.value_conditions.into_iter().map(Into::into).collect(),
            description: p.description,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

impl From<pb::Payload> for Payload {
    /// As given: an empty content type gets its default in `command::validate_create`.
    fn from(p: pb::Payload) -> Self {
        Self {
            content: p.content,
            content_type: p.content_type,
        }
    }
}

impl From<Payload> for pb::Payload {
    fn from(p: Payload) -> Self {
        Self {
            content: p.content,
            content_type: p.content_type,
        }
    }
}

fn preprocessor_to_pb(format: OutputFormat) -> pb::Preprocessor {
    pb::Preprocessor {
        aws_json_substitution: Some(pb::AwsJsonSubstitution {
            output_format: pb::OutputFormat::from(format) as i32,
        }),
    }
}

/// CreateCommand, converted but not validated: `command::validate_create` checks the id,
/// namespace, texts, tags, payload-vs-template exclusivity and the template rules.
///
/// - A non-empty `payload_template` becomes a [`PayloadTemplate`] whose output format is
///   `preprocessor.aws_json_substitution.output_format` (JSON when unset).
/// - A `preprocessor` without a `payload_template` is an error naming `preprocessor`: the
///   domain request has nowhere to keep it, and dropping it silently would hide a mistake.
/// - Parameter errors name `mandatory_parameters[i]...`.
impl TryFrom<pb::CreateCommandRequest> for CreateCommand {
    type Error = ValidationError;

    fn try_from(req: pb::CreateCommandRequest) -> Result<Self, Self::Error> {
        let template = if req.payload_template.is_empty() {
            if req.preprocessor.is_some() {
                return Err(ValidationError::new(
                    "preprocessor",
                    "applies only to a payload_template",
                ));
            }
            None
        } else {
            let output_format = match req.preprocessor.and_then(|p| p.aws_json_substitution) {
                Some(s) => output_format_from_pb(
                    "preprocessor.aws_json_substitution.output_format",
                    s.output_format,
                )?,
                None => OutputFormat::Json,
            };
            Some(PayloadTemplate {
                template: req.payload_template,
                output_format,
            })
        };
        let parameters = req
            .mandatory_parameters
            .into_iter()
            .enumerate()
            .map(|(i, p)| command_parameter_from_pb(&index_path("mandatory_parameters", i), p))
            .collect::<Result<_, _>>()?;
        Ok(CreateCommand {
            command_id: req.command_id,
            namespace: req.namespace,
            display_name: req.display_name,
            description: req.description,
            payload: req.payload.map(Into::into),
            template,
            parameters,
            tags: req.tags.into_iter().collect(),
        })
    }
}

/// A command as GetCommand returns it: with its ARN, `pending_deletion` and (fleetcmd)
/// `deletion_scheduled_at` from `delete_at`; a template command carries `payload_template`
/// and a `preprocessor` naming its output format, a static one `payload`.
pub fn command_to_pb(command: Command, arns: &Arns) -> pb::Command {
    let command_arn = arns.command(&command.command_id);
    let pending_deletion = command.pending_deletion();
    let (payload, payload_template, preprocessor) = match command.body {
        CommandBody::Static(p) => (Some(p.into()), String::new(), None),
        CommandBody::Template(t) => (None, t.template, Some(preprocessor_to_pb(t.output_format))),
    };
    pb::Command {
        command_id: command.command_id.into_string(),
        command_arn,
        namespace: command.namespace,
        display_name: command.display_name,
        description: command.description,
        payload,
        payload_template,
        preprocessor,
        mandatory_parameters: command.parameters.into_iter().map(Into::into).collect(),
        tags: command.tags.into_iter().collect(),
        created_at: Some(timestamp_from_ms(command.created_at)),
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
        deprecated: command.deprecated,
        pending_deletion,
        deletion_scheduled_at: opt_timestamp_from_ms(command.delete_at),
    }
}

/// A command as ListCommands returns it.
pub fn command_summary_to_pb(command: Command, arns: &Arns) -> pb::CommandSummary {
    pb::CommandSummary {
        command_arn: arns.command(&command.command_id),
        pending_deletion: command.pending_deletion(),
        command_id: command.command_id.into_string(),
        display_name: command.display_name,
        deprecated: command.deprecated,
        created_at: Some(timestamp_from_ms(command.created_at)),
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
    }
}

/// CreateCommand's answer: the id and its ARN.
pub fn create_command_response(id: &CommandId, arns: &Arns) -> pb::CreateCommandResponse {
    pb::CreateCommandResponse {
        command_id: id.to_string(),
        command_arn: arns.command(id),
    }
}

/// UpdateCommand's answer, from the command after the update.
pub fn update_command_response(command: Command) -> pb::UpdateCommandResponse {
    pb::UpdateCommandResponse {
        command_id: command.command_id.into_string(),
        display_name: command.display_name,
        description: command.description,
        deprecated: command.deprecated,
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
    }
}

/// UpdateCommand: the three optional fields as given (`Some("")` clears a text). The request's
/// `command_id` is not part of [`UpdateCommand`]; parse it first with `CommandId::parse`
/// (which names `command_id`). "Nothing to update" and the text limits are checked by
/// `command::decide`.
impl From<pb::UpdateCommandRequest> for UpdateCommand {
    fn from(req: pb::UpdateCommandRequest) -> Self {
        Self {
            display_name: req.display_name,
            description: req.description,
            deprecated: req.deprecated,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Starting executions

/// StartCommandExecution: `command_id` is parsed (naming `command_id`), `target` is
/// required, parameters are converted (naming `parameters["name"]...`),
/// `execution_timeout_seconds` 0 means the default (`None`) and a negative one is an error,
/// and an empty `client_token` means none. The timeout range and the token syntax are checked
/// by `start::validate_request`.
impl TryFrom<pb::StartCommandExecutionRequest> for StartRequest {
    type Error = ValidationError;

    fn try_from(req: pb::StartCommandExecutionRequest) -> Result<Self, Self::Error> {
        let command_id = CommandId::parse(req.command_id)?;
        let target = require_target(req.target)?;
        let parameters = parameters_from_pb("parameters", req.parameters)?;
        let timeout_secs = match req.execution_timeout_seconds {
            0 => None,
            t => Some(u64::try_from(t).map_err(|_| {
                ValidationError::new(
                    "execution_timeout_seconds",
                    format!("must not be negative (0 means the default), got {t}"),
                )
            })?),
        };
        Ok(StartRequest {
            command_id,
            target,
            parameters,
            timeout_secs,
            client_token: non_empty(req.client_token),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// ListCommands: page size per [`page_size_from_pb`], sort order per
/// [`sort_ascending_from_pb`], empty strings as unset filters.
impl TryFrom<pb::ListCommandsRequest> for CommandQuery {
    type Error = ValidationError;

    fn try_from(req: pb::ListCommandsRequest) -> Result<Self, Self::Error> {
        Ok(CommandQuery {
            namespace: non_empty(req.namespace),
            parameter_name: non_empty(req.command_parameter_name),
            ascending: sort_ascending_from_pb(req.sort_order)?,
            page_size: page_size_from_pb(req.max_results)?,
            page_token: non_empty(req.next_token),
        })
    }
}

/// A time filter at `field` (e.g. `started_time_filter`). Both bounds are inclusive and
/// optional; `after` later than `before` is an error naming `field`. A filter message with no
/// bounds is kept as an open range: its presence still chooses the sort time.
pub fn time_range_from_pb(
    field: &str,
    filter: Option<pb::TimeFilter>,
) -> Result<Option<TimeRange>, ValidationError> {
    let Some(f) = filter else {
        return Ok(None);
    };
    let after = opt_timestamp_to_ms(&path(field, "after"), f.after)?;
    let before = opt_timestamp_to_ms(&path(field, "before"), f.before)?;
    if let (Some(a), Some(b)) = (after, before)
        && a > b
    {
        return Err(ValidationError::new(
            field,
            format!("after ({a} ms) must not be later than before ({b} ms)"),
        ));
    }
    Ok(Some(TimeRange { after, before }))
}

impl From<TimeRange> for pb::TimeFilter {
    fn from(r: TimeRange) -> Self {
        Self {
            after: opt_timestamp_from_ms(r.after),
            before: opt_timestamp_from_ms(r.before),
        }
    }
}

/// ListCommandExecutions. Paging and sort order as for commands; `status` (when set) and
/// `statuses` are merged into one sorted, duplicate-free `statuses` (UNSPECIFIED inside
/// `statuses` is an error naming `statuses[i]`). fleetcmd deliberately allows `command_id`
/// together with `target`, and both time filters at once. `namespace` must be empty or
/// `AWS-IoT`, the only one fleetcmd serves.
impl TryFrom<pb::ListCommandExecutionsRequest> for ExecutionQuery {
    type Error = ValidationError;

    fn try_from(req: pb::ListCommandExecutionsRequest) -> Result<Self, Self::Error> {
        let page_size = page_size_from_pb(req.max_results)?;
        if !req.namespace.is_empty() && req.namespace != NAMESPACE_AWS_IOT {
            return Err(ValidationError::new(
                "namespace",
                format!(
                    "only {NAMESPACE_AWS_IOT} is supported, got {:?}",
                    req.namespace
                ),
            ));
        }
        let mut statuses = Vec::with_capacity(req.statuses.len() + 1);
        if req.status != pb::ExecutionStatus::Unspecified as i32 {
            statuses.push(status_from_pb("status", req.status)?);
        }
        for (i, s) in req.statuses.into_iter().enumerate() {
            statuses.push(status_from_pb(&index_path("statuses", i), s)?);
        }
        statuses.sort_unstable();
        statuses.dedup();
        let command_id = non_empty(req.command_id)
            .map(CommandId::parse)
            .transpose()?;
        Ok(ExecutionQuery {
            command_id,
            target: optional_target(req.target)?,
            statuses,
            started: time_range_from_pb("started_time_filter", req.started_time_filter)?,
            completed: time_range_from_pb("completed_time_filter", req.completed_time_filter)?,
            ascending: sort_ascending_from_pb(req.sort_order)?,
            page_size,
            page_token: non_empty(req.next_token),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Executions

/// A status reason: `reason_code` must not be empty (error naming
/// `status_reason.reason_code`). Its pattern and the lengths are not checked here: callers
/// and devices follow different rules (cloud codes start with `$`).
impl TryFrom<pb::StatusReason> for StatusReason {
    type Error = ValidationError;

    fn try_from(r: pb::StatusReason) -> Result<Self, Self::Error> {
        if r.reason_code.is_empty() {
            return Err(ValidationError::new(
                "status_reason.reason_code",
                "is required when status_reason is set",
            ));
        }
        Ok(StatusReason {
            reason_code: r.reason_code,
            reason_description: r.reason_description,
        })
    }
}

impl From<StatusReason> for pb::StatusReason {
    fn from(r: StatusReason) -> Self {
        Self {
            reason_code: r.reason_code,
            reason_description: r.reason_description,
        }
    }
}

/// An optional `status_reason` (e.g. CancelCommandExecution's).
pub fn optional_status_reason(
    reason: Option<pb::StatusReason>,
) -> Result<Option<StatusReason>, ValidationError> {
    reason.map(StatusReason::try_from).transpose()
}

/// An execution as GetCommandExecution returns it; `result` only with `include_result`, as in
/// the reference. `terminal` tells a cloud TIMED_OUT (false) from a device one (true).
pub fn execution_to_pb(
    execution: Execution,
    arns: &Arns,
    include_result: bool,
) -> pb::CommandExecution {
    let e = execution;
    pb::CommandExecution {
        command_arn: arns.command(&e.command_id),
        target_arn: arns.target(&e.target),
        execution_id: e.execution_id.into_string(),
        command_id: e.command_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        status_reason: e.status_reason.map(Into::into),
        result: if include_result {
            results_to_pb(e.result)
        } else {
            HashMap::new()
        },
        parameters: parameters_to_pb(e.parameters),
        // The domain caps timeouts at 12 h; saturate rather than wrap if that ever changes.
        execution_timeout_seconds: i64::try_from(e.timeout_secs).unwrap_or(i64::MAX),
        created_at: Some(timestamp_from_ms(e.created_at)),
        last_updated_at: Some(timestamp_from_ms(e.last_updated_at)),
        started_at: Some(timestamp_from_ms(e.started_at)),
        completed_at: opt_timestamp_from_ms(e.completed_at),
        time_to_live: Some(timestamp_from_ms(e.time_to_live)),
        client_token: e.client_token.unwrap_or_default(),
        terminal: e.terminal,
    }
}

/// An execution as ListCommandExecutions returns it.
pub fn execution_summary_to_pb(execution: Execution, arns: &Arns) -> pb::CommandExecutionSummary {
    let e = execution;
    pb::CommandExecutionSummary {
        command_arn: arns.command(&e.command_id),
        target_arn: arns.target(&e.target),
        command_id: e.command_id.into_string(),
        execution_id: e.execution_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        created_at: Some(timestamp_from_ms(e.created_at)),
        started_at: Some(timestamp_from_ms(e.started_at)),
        completed_at: opt_timestamp_from_ms(e.completed_at),
    }
}

/// The status change an execution's current state describes, as WatchCommandExecutions
/// streams it: `timestamp` is `last_updated_at` (when the change happened), and the result is
/// always included (a fleetcmd addition over the reference's events).
pub fn execution_event_to_pb(execution: Execution) -> pb::CommandExecutionEvent {
    let e = execution;
    pb::CommandExecutionEvent {
        execution_id: e.execution_id.into_string(),
        command_id: e.command_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        status_reason: e.status_reason.map(Into::into),
        result: results_to_pb(e.result),
        timestamp: Some(timestamp_from_ms(e.last_updated_at)),
        terminal: e.terminal,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors → tonic::Status

/// The `google.rpc.ErrorInfo` domain of fleetcmd's rejections.
pub const ERROR_DOMAIN: &str = "fleetcmd";

/// INVALID_ARGUMENT with the message `invalid <field>: <rule>` and a `google.rpc.BadRequest`
/// field violation (`field`, rule) that clients can read with `tonic_types::StatusExt`.
pub fn validation_status(e: ValidationError) -> Status {
    let details = ErrorDetails::with_bad_request_violation(e.field.clone(), e.message.clone());
    Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
}

/// The gRPC code of a rejection: InvalidRequest/InvalidJson/InvalidTopic → INVALID_ARGUMENT,
/// ResourceNotFound → NOT_FOUND, Conflict → ALREADY_EXISTS, FailedPrecondition/
/// InvalidStateTransition/TerminalStateReached → FAILED_PRECONDITION, QuotaExceeded →
/// RESOURCE_EXHAUSTED, PermissionDenied → PERMISSION_DENIED, DataConflict → ABORTED (retry the
/// read-modify-write), InternalError → INTERNAL.
pub fn rejection_grpc_code(code: RejectionCode) -> Code {
    match code {
        RejectionCode::InvalidRequest
        | RejectionCode::InvalidJson
        | RejectionCode::InvalidTopic => Code::InvalidArgument,
        RejectionCode::ResourceNotFound => Code::NotFound,
        RejectionCode::Conflict => Code::AlreadyExists,
        RejectionCode::FailedPrecondition
        | RejectionCode::InvalidStateTransition
        | RejectionCode::TerminalStateReached => Code::FailedPrecondition,
        RejectionCode::QuotaExceeded => Code::ResourceExhausted,
        RejectionCode::PermissionDenied => Code::PermissionDenied,
        RejectionCode::DataConflict => Code::Aborted,
        RejectionCode::InternalError => Code::Internal,
    }
}

/// The `google.rpc.ErrorInfo` reason of a rejection code (UPPER_SNAKE_CASE, stable): it tells
/// apart codes that share a gRPC code, e.g. TERMINAL_STATE_REACHED and
/// INVALID_STATE_TRANSITION.
pub fn rejection_reason(code: RejectionCode) -> &'static str {
    match code {
        RejectionCode::InvalidRequest => "INVALID_REQUEST",
        RejectionCode::InvalidJson => "INVALID_JSON",
        RejectionCode::InvalidTopic => "INVALID_TOPIC",
        RejectionCode::InvalidStateTransition => "INVALID_STATE_TRANSITION",
        RejectionCode::TerminalStateReached => "TERMINAL_STATE_REACHED",
        RejectionCode::ResourceNotFound => "RESOURCE_NOT_FOUND",
        RejectionCode::Conflict => "CONFLICT",
        RejectionCode::FailedPrecondition => "FAILED_PRECONDITION",
        RejectionCode::QuotaExceeded => "QUOTA_EXCEEDED",
        RejectionCode::PermissionDenied => "PERMISSION_DENIED",
        RejectionCode::DataConflict => "DATA_CONFLICT",
        RejectionCode::InternalError => "INTERNAL_ERROR",
    }
}

/// A rejection as a status with the code of [`rejection_grpc_code`], the rejection's message,
/// a `google.rpc.ErrorInfo` (reason per [`rejection_reason`], domain [`ERROR_DOMAIN`]) and,
/// when the rejection names a field, a `google.rpc.BadRequest` field violation.
pub fn rejection_status(r: Rejection) -> Status {
    let mut details = ErrorDetails::with_error_info(
        rejection_reason(r.code),
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    if let Some(field) = &r.field {
        // A rejection made from a ValidationError repeats the field in its message.
        let prefix = format!("invalid {field}: ");
        let rule = r.message.strip_prefix(&prefix).unwrap_or(&r.message);
        details.add_bad_request_violation(field.clone(), rule.to_string());
    }
    Status::with_error_details(rejection_grpc_code(r.code), r.message, details)
}

/// An infrastructure failure: retryable ones (unavailable, no responder, timeout) become
/// UNAVAILABLE with a message telling the caller to retry; the others INTERNAL.
pub fn port_status(e: PortError) -> Status {
    match &e {
        PortError::Timeout(_) => Status::unavailable(format!(
            "{e}; the outcome is unknown, retry with backoff (idempotent requests are safe to repeat)"
        )),
        PortError::InvalidPageToken(_) => Status::invalid_argument(e.to_string()),
        _ if e.is_retryable() => Status::unavailable(format!("{e}; retry with backoff")),
        _ => Status::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::command::validate_create;
    use fleetcmd_domain::ids::ExecutionId;
    use proptest::prelude::*;

    // --- helpers -------------------------------------------------------------------------

    fn err_field<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> String {
        r.unwrap_err().field
    }

    fn pv(v: pb::parameter_value::Value) -> pb::ParameterValue {
        pb::ParameterValue { value: Some(v) }
    }

    fn ul(s: &str) -> pb::ParameterValue {
        pv(pb::parameter_value::Value::Ul(s.into()))
    }

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    fn pb_thing(id: &str) -> pb::Target {
        pb::Target {
            kind: pb::TargetKind::Thing as i32,
            id: id.into(),
        }
    }

    fn execution() -> Execution {
        Execution {
            execution_id: ExecutionId::parse("e-1").unwrap(),
            command_id: CommandId::parse("reboot").unwrap(),
            target: Target::client("dev.1").unwrap(),
            status: ExecutionStatus::TimedOut,
            status_reason: Some(StatusReason {
                reason_code: "$NO_RESPONSE_FROM_DEVICE".into(),
                reason_description: String::new(),
            }),
            result: BTreeMap::from([("log".to_string(), ResultValue::S("ok".into()))]),
            parameters: BTreeMap::from([("n".to_string(), ParameterValue::Ul(u64::MAX))]),
            timeout_secs: 30,
            client_token: Some("tok".into()),
            created_at: 1_000,
            last_updated_at: 31_000,
            started_at: 1_000,
            completed_at: None,
            time_to_live: 9_000_000,
            terminal: false,
            seq: 2,
            request_fingerprint: 0,
        }
    }

    fn template_command() -> Command {
        Command {
            command_id: CommandId::parse("set-temp").unwrap(),
            namespace: NAMESPACE_AWS_IOT.into(),
            display_name: "Set temperature".into(),
            description: "d".into(),
            body: CommandBody::Template(PayloadTemplate {
                template: r#"{"t":"${aws:iot:commandexecution::parameter:temp}"}"#.into(),
                output_format: OutputFormat::Cbor,
            }),
            parameters: vec![CommandParameter {
                name: "temp".into(),
                r#type: ParameterType::Double,
                default_value: Some(ParameterValue::D(20.5)),
                value: None,
                value_conditions: vec![ValueCondition {
                    operator: ComparisonOperator::InRange,
                    operand: Operand::NumberRange {
                        min: "10".into(),
                        max: "30".into(),
                    },
                }],
                description: "degrees".into(),
            }],
            tags: BTreeMap::from([("team".to_string(), "hvac".to_string())]),
            created_at: 5_000,
            last_updated_at: 6_000,
            deprecated: true,
            deprecated_at: Some(6_000),
            delete_at: Some(7_000),
        }
    }

    // --- ARNs ----------------------------------------------------------------------------

    #[test]
    fn arns_default_and_custom() {
        let d = Arns::default();
        assert_eq!(
            (d.region.as_str(), d.account.as_str()),
            ("local", "000000000000")
        );
        let id = CommandId::parse("reboot").unwrap();
        assert_eq!(
            d.command(&id),
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(
            d.target(&Target::thing("lab-1").unwrap()),
            "arn:aws:iot:local:000000000000:thing/lab-1"
        );
        let a = Arns::new("eu-west-1", "123456789012");
        assert_eq!(
            a.target(&Target::client("dev.1").unwrap()),
            "arn:aws:iot:eu-west-1:123456789012:client/dev.1"
        );
        assert_eq!(
            a.command(&id),
            "arn:aws:iot:eu-west-1:123456789012:command/reboot"
        );
    }

    // --- timestamps ----------------------------------------------------------------------

    #[test]
    fn timestamps_round_trip_and_normalise() {
        for ms in [
            0,
            1,
            999,
            1_000,
            1_700_000_000_123,
            -1,
            -1_000,
            -1_001,
            i64::MAX,
            i64::MIN,
        ] {
            let t = timestamp_from_ms(ms);
            assert!(
                (0..1_000_000_000).contains(&t.nanos),
                "nanos of {ms}: {t:?}"
            );
            assert_eq!(timestamp_to_ms("t", t), Ok(ms), "round trip of {ms}");
        }
        assert_eq!(
            timestamp_from_ms(1_700_000_000_123),
            ts(1_700_000_000, 123_000_000)
        );
        assert_eq!(timestamp_from_ms(-1), ts(-1, 999_000_000));
        // Sub-millisecond precision is dropped.
        assert_eq!(timestamp_to_ms("t", ts(2, 1_999_999)), Ok(2_001));
        assert_eq!(opt_timestamp_from_ms(None), None);
        assert_eq!(opt_timestamp_from_ms(Some(1_500)), Some(ts(1, 500_000_000)));
        assert_eq!(opt_timestamp_to_ms("t", None), Ok(None));
        assert_eq!(
            opt_timestamp_to_ms("t", Some(ts(1, 500_000_000))),
            Ok(Some(1_500))
        );
    }

    #[test]
    fn bad_timestamps_name_the_field() {
        let e = timestamp_to_ms("created_at", ts(0, -1)).unwrap_err();
        assert_eq!(e.field, "created_at");
        assert!(e.message.contains("nanos"), "{e}");
        assert_eq!(
            err_field(timestamp_to_ms("x.after", ts(0, 1_000_000_000))),
            "x.after"
        );
        let e = timestamp_to_ms("x.before", ts(i64::MAX, 0)).unwrap_err();
        assert_eq!(e.field, "x.before");
        assert!(e.message.contains("out of range"), "{e}");
        assert_eq!(
            err_field(opt_timestamp_to_ms("y", Some(ts(i64::MIN, 0)))),
            "y"
        );
    }

    proptest! {
        #[test]
        fn timestamp_round_trip_any(ms in any::<i64>()) {
            prop_assert_eq!(timestamp_to_ms("t", timestamp_from_ms(ms)), Ok(ms));
        }

        #[test]
        fn ul_round_trip_any(n in any::<u64>()) {
            let back = parameter_value_from_pb("p", ParameterValue::Ul(n).into());
            prop_assert_eq!(back, Ok(ParameterValue::Ul(n)));
        }
    }

    // --- targets -------------------------------------------------------------------------

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::thing("lab-1:a").unwrap(),
            Target::client("dev.1@x").unwrap(),
        ] {
            let p = pb::Target::from(&t);
            assert_eq!(p.id, t.id);
            assert_eq!(Target::try_from(p.clone()), Ok(t.clone()));
            assert_eq!(pb::Target::from(t.clone()), p);
        }
        assert_eq!(pb::Target::from(Target::client("c").unwrap()).kind, 2);
        assert_eq!(require_target(Some(pb_thing("x"))), Target::thing("x"));
        assert_eq!(optional_target(None), Ok(None));
        assert_eq!(
            optional_target(Some(pb_thing("x"))),
            Ok(Some(Target::thing("x").unwrap()))
        );
    }

    #[test]
    fn bad_targets_name_the_field() {
        let unspecified = pb::Target {
            kind: 0,
            id: "x".into(),
        };
        let e = Target::try_from(unspecified).unwrap_err();
        assert_eq!(e.field, "target.kind");
        assert!(e.message.contains("TARGET_KIND_UNSPECIFIED"), "{e}");
        let e = Target::try_from(pb::Target {
            kind: 9,
            id: "x".into(),
        })
        .unwrap_err();
        assert_eq!(e.field, "target.kind");
        assert!(e.message.contains('9'), "{e}");
        assert_eq!(err_field(Target::try_from(pb_thing("a/b"))), "target.id");
        assert_eq!(err_field(Target::try_from(pb_thing(""))), "target.id");
        let e = require_target(None).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("target", "is required")
        );
        assert_eq!(
            err_field(optional_target(Some(pb_thing("a b")))),
            "target.id"
        );
    }

    // --- enums ---------------------------------------------------------------------------

    #[test]
    fn every_status_maps_both_ways() {
        let table = [
            (ExecutionStatus::Created, pb::ExecutionStatus::Created, 1),
            (
                ExecutionStatus::InProgress,
                pb::ExecutionStatus::InProgress,
                2,
            ),
            (
                ExecutionStatus::Succeeded,
                pb::ExecutionStatus::Succeeded,
                3,
            ),
            (ExecutionStatus::Failed, pb::ExecutionStatus::Failed, 4),
            (ExecutionStatus::Rejected, pb::ExecutionStatus::Rejected, 5),
            (ExecutionStatus::TimedOut, pb::ExecutionStatus::TimedOut, 6),
            (ExecutionStatus::Canceled, pb::ExecutionStatus::Canceled, 7),
        ];
        assert_eq!(table.len(), ExecutionStatus::ALL.len());
        for (domain, proto, number) in table {
            assert_eq!(pb::ExecutionStatus::from(domain), proto);
            assert_eq!(status_to_pb(domain), number);
            assert_eq!(status_from_pb("status", number), Ok(domain));
            // The wire names agree too.
            assert_eq!(proto.as_str_name(), domain.as_str());
        }
    }

    #[test]
    fn unspecified_or_unknown_status_names_the_field() {
        let e = status_from_pb("status", 0).unwrap_err();
        assert_eq!(e.field, "status");
        assert!(e.message.contains("EXECUTION_STATUS_UNSPECIFIED"), "{e}");
        assert!(e.message.contains("CANCELED"), "{e}");
        let e = status_from_pb("statuses[3]", 8).unwrap_err();
        assert_eq!(e.field, "statuses[3]");
        assert!(e.message.contains('8'), "{e}");
        assert_eq!(err_field(status_from_pb("s", -1)), "s");
    }

    #[test]
    fn parameter_types_map_both_ways() {
        let table = [
            (ParameterType::String, "STRING"),
            (ParameterType::Integer, "INTEGER"),
            (ParameterType::Double, "DOUBLE"),
            (ParameterType::Long, "LONG"),
            (ParameterType::UnsignedLong, "UNSIGNEDLONG"),
            (ParameterType::Boolean, "BOOLEAN"),
            (ParameterType::Binary, "BINARY"),
        ];
        for (t, name) in table {
            let p = pb::ParameterType::from(t);
            assert_eq!(p.as_str_name(), name);
            assert_eq!(parameter_type_from_pb("type", p as i32), Ok(t));
        }
        let e = parameter_type_from_pb("mandatory_parameters[0].type", 0).unwrap_err();
        assert_eq!(e.field, "mandatory_parameters[0].type");
        assert!(e.message.contains("PARAMETER_TYPE_UNSPECIFIED"), "{e}");
        assert_eq!(err_field(parameter_type_from_pb("type", 8)), "type");
    }

    #[test]
    fn output_formats_map_both_ways_and_default_to_json() {
        for f in [OutputFormat::Json, OutputFormat::Cbor] {
            assert_eq!(
                output_format_from_pb("f", pb::OutputFormat::from(f) as i32),
                Ok(f)
            );
        }
        assert_eq!(
            pb::OutputFormat::from(OutputFormat::Cbor),
            pb::OutputFormat::Cbor
        );
        assert_eq!(output_format_from_pb("f", 0), Ok(OutputFormat::Json));
        let e = output_format_from_pb("preprocessor.x", 3).unwrap_err();
        assert_eq!(e.field, "preprocessor.x");
        assert!(e.message.contains("JSON, CBOR"), "{e}");
    }

    #[test]
    fn comparison_operators_map_both_ways() {
        use ComparisonOperator::*;
        let all = [
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
        ];
        let mut numbers = Vec::new();
        for op in all {
            let n = pb::ComparisonOperator::from(op) as i32;
            numbers.push(n);
            assert_eq!(comparison_operator_from_pb("op", n), Ok(op));
        }
        assert_eq!(
            numbers,
            (1..=10).collect::<Vec<_>>(),
            "each operator has its own number"
        );
        assert_eq!(
            pb::ComparisonOperator::from(NotInRange).as_str_name(),
            "NOT_IN_RANGE"
        );
        let e = comparison_operator_from_pb("c.comparison_operator", 0).unwrap_err();
        assert_eq!(e.field, "c.comparison_operator");
        assert!(e.message.contains("COMPARISON_OPERATOR_UNSPECIFIED"), "{e}");
        assert_eq!(err_field(comparison_operator_from_pb("op", 11)), "op");
    }

    #[test]
    fn sort_order_and_page_size() {
        assert_eq!(sort_ascending_from_pb(0), Ok(false));
        assert_eq!(
            sort_ascending_from_pb(pb::SortOrder::Ascending as i32),
            Ok(true)
        );
        assert_eq!(
            sort_ascending_from_pb(pb::SortOrder::Descending as i32),
            Ok(false)
        );
        assert_eq!(err_field(sort_ascending_from_pb(3)), "sort_order");

        assert_eq!(page_size_from_pb(0), Ok(PAGE_SIZE_DEFAULT));
        assert_eq!(page_size_from_pb(0), Ok(25));
        assert_eq!(page_size_from_pb(1), Ok(1));
        assert_eq!(page_size_from_pb(100), Ok(100));
        for bad in [101, -1, i32::MIN, i32::MAX] {
            let e = page_size_from_pb(bad).unwrap_err();
            assert_eq!(e.field, "max_results");
            assert!(e.message.contains("between 1 and 100"), "{e}");
            assert!(e.message.contains(&bad.to_string()), "{e}");
        }
    }

    // --- values --------------------------------------------------------------------------

    #[test]
    fn parameter_values_round_trip() {
        let values = [
            ParameterValue::S("hello".into()),
            ParameterValue::B(true),
            ParameterValue::I(i32::MIN),
            ParameterValue::L(i64::MAX),
            ParameterValue::D(-2.5),
            ParameterValue::Bin(vec![0, 255, 7]),
            ParameterValue::Ul(0),
            ParameterValue::Ul(u64::MAX),
        ];
        for v in values {
            let p = pb::ParameterValue::from(v.clone());
            assert!(p.value.is_some());
            assert_eq!(parameter_value_from_pb("p", p), Ok(v));
        }
        assert_eq!(
            pb::ParameterValue::from(ParameterValue::Ul(u64::MAX)),
            ul("18446744073709551615")
        );
        let map = BTreeMap::from([
            ("a".to_string(), ParameterValue::I(1)),
            ("b".to_string(), ParameterValue::S("x".into())),
        ]);
        let p = parameters_to_pb(map.clone());
        assert_eq!(p.len(), 2);
        assert_eq!(parameters_from_pb("parameters", p), Ok(map));
    }

    #[test]
    fn ul_edge_cases() {
        let f = "parameters[\"n\"]";
        assert_eq!(
            parameter_value_from_pb(f, ul("18446744073709551615")),
            Ok(ParameterValue::Ul(u64::MAX))
        );
        assert_eq!(
            parameter_value_from_pb(f, ul("0")),
            Ok(ParameterValue::Ul(0))
        );
        assert_eq!(
            parameter_value_from_pb(f, ul("00000000000000000042")),
            Ok(ParameterValue::Ul(42)),
            "20 digits with leading zeros fit the pattern"
        );
        let e = parameter_value_from_pb(f, ul("18446744073709551616")).unwrap_err();
        assert_eq!(e.field, "parameters[\"n\"].ul");
        assert!(e.message.contains("unsigned 64-bit"), "{e}");
        for bad in [
            "-1",
            "",
            "+1",
            " 1",
            "1.0",
            "1e3",
            "000000000000000000001",
            "٣",
        ] {
            let e = parameter_value_from_pb(f, ul(bad)).unwrap_err();
            assert_eq!(e.field, "parameters[\"n\"].ul", "{bad:?}");
            assert!(e.message.contains("1–20 digits"), "{bad:?}: {e}");
        }
        assert_eq!(parse_ul("x", "123"), Ok(123));
    }

    #[test]
    fn empty_parameter_oneof_names_the_entry() {
        let map = HashMap::from([
            ("temp".to_string(), pb::ParameterValue { value: None }),
            ("ok".to_string(), pv(pb::parameter_value::Value::B(false))),
        ]);
        let e = parameters_from_pb("parameters", map).unwrap_err();
        assert_eq!(e.field, "parameters[\"temp\"]");
        assert_eq!(
            e.message,
            "exactly one of s, b, i, l, d, bin, ul must be set"
        );
        assert_eq!(
            e.to_string(),
            "invalid parameters[\"temp\"]: exactly one of s, b, i, l, d, bin, ul must be set"
        );
        // With several bad entries the first in key order is reported, every time.
        let map = HashMap::from([("b".to_string(), ul("x")), ("a".to_string(), ul("-1"))]);
        assert_eq!(
            err_field(parameters_from_pb("parameters", map)),
            "parameters[\"a\"].ul"
        );
    }

    #[test]
    fn result_values_round_trip_and_empty_oneof() {
        for v in [
            ResultValue::S("s".into()),
            ResultValue::B(false),
            ResultValue::Bin(vec![1, 2]),
        ] {
            assert_eq!(result_value_from_pb("r", v.clone().into()), Ok(v));
        }
        let map = BTreeMap::from([("log".to_string(), ResultValue::B(true))]);
        assert_eq!(
            results_from_pb("result", results_to_pb(map.clone())),
            Ok(map)
        );
        let bad = HashMap::from([("log".to_string(), pb::ResultValue { value: None })]);
        let e = results_from_pb("result", bad).unwrap_err();
        assert_eq!(e.field, "result[\"log\"]");
        assert_eq!(e.message, "exactly one of s, b, bin must be set");
    }

    #[test]
    fn value_conditions_round_trip_every_operand() {
        let operands = [
            Operand::Number("1.5".into()),
            Operand::Numbers(vec!["1".into(), "2".into()]),
            Operand::String("on".into()),
            Operand::Strings(vec!["a".into(), "b".into()]),
            Operand::NumberRange {
                min: "-1".into(),
                max: "1".into(),
            },
        ];
        for (i, operand) in operands.into_iter().enumerate() {
            let c = ValueCondition {
                operator: ComparisonOperator::InSet,
                operand,
            };
            let p = pb::ValueCondition::from(c.clone());
            assert_eq!(p.comparison_operator, pb::ComparisonOperator::InSet as i32);
            assert!(p.operand.is_some(), "operand {i}");
            assert_eq!(value_condition_from_pb("c", p), Ok(c));
        }
    }

    #[test]
    fn bad_value_conditions_name_the_field() {
        let ok_operand = Some(pb::ConditionOperand::from(Operand::Number("1".into())));
        let missing = pb::ValueCondition {
            comparison_operator: pb::ComparisonOperator::Equals as i32,
            operand: None,
        };
        let e = value_condition_from_pb("c[0]", missing).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("c[0].operand", "is required")
        );
        let empty = pb::ValueCondition {
            comparison_operator: pb::ComparisonOperator::Equals as i32,
            operand: Some(pb::ConditionOperand { operand: None }),
        };
        let e = value_condition_from_pb("c[0]", empty).unwrap_err();
        assert_eq!(e.field, "c[0].operand");
        assert!(e.message.contains("exactly one of number, numbers"), "{e}");
        let no_op = pb::ValueCondition {
            comparison_operator: 0,
            operand: ok_operand,
        };
        assert_eq!(
            err_field(value_condition_from_pb("c[0]", no_op)),
            "c[0].comparison_operator"
        );
    }

    #[test]
    fn command_parameters_round_trip_and_errors() {
        let param = CommandParameter {
            name: "level".into(),
            r#type: ParameterType::UnsignedLong,
            default_value: Some(ParameterValue::Ul(3)),
            value: Some(ParameterValue::Ul(u64::MAX)),
            value_conditions: vec![ValueCondition {
                operator: ComparisonOperator::LessThanEquals,
                operand: Operand::Number("18446744073709551615".into()),
            }],
            description: "how loud".into(),
        };
        let p = pb::CommandParameter::from(param.clone());
        assert_eq!(p.r#type, pb::ParameterType::Unsignedlong as i32);
        assert_eq!(p.default_value, Some(ul("3")));
        assert_eq!(
            command_parameter_from_pb("m[0]", p.clone()),
            Ok(param.clone())
        );

        let bare = CommandParameter {
            value: None,
            default_value: None,
            value_conditions: vec![],
            description: String::new(),
            ..param
        };
        assert_eq!(
            command_parameter_from_pb("m", bare.clone().into()),
            Ok(bare)
        );

        let mut bad = p.clone();
        bad.r#type = 0;
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].type"
        );
        let mut bad = p.clone();
        bad.value = Some(ul("-1"));
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].value.ul"
        );
        let mut bad = p.clone();
        bad.default_value = Some(pb::ParameterValue { value: None });
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].default_value"
        );
        let mut bad = p;
        bad.value_conditions.push(pb::ValueCondition {
            comparison_operator: 1,
            operand: None,
        });
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].value_conditions[1].operand"
        );
    }

    // --- commands ------------------------------------------------------------------------

    #[test]
    fn create_command_static_payload() {
        let req = pb::CreateCommandRequest {
            command_id: "reboot".into(),
            display_name: "Reboot".into(),
            description: "restart the device".into(),
            payload: Some(pb::Payload {
                content: b"{}".to_vec(),
                content_type: String::new(),
            }),
            tags: HashMap::from([("team".to_string(), "ops".to_string())]),
            ..Default::default()
        };
        let c = CreateCommand::try_from(req).unwrap();
        assert_eq!(c.command_id, "reboot");
        assert_eq!(
            c.namespace, "",
            "the default namespace is the domain's business"
        );
        assert_eq!(c.template, None);
        assert_eq!(
            c.payload,
            Some(Payload {
                content: b"{}".to_vec(),
                content_type: String::new()
            })
        );
        assert_eq!(c.tags.get("team").map(String::as_str), Some("ops"));
        assert!(c.parameters.is_empty());

        // Through the domain and back out: the content type default and the ARN appear.
        let command = validate_create(&c, 42).unwrap();
        let p = command_to_pb(command.clone(), &Arns::default());
        assert_eq!(
            p.command_arn,
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(p.namespace, NAMESPACE_AWS_IOT);
        assert_eq!(
            p.payload.as_ref().map(|p| p.content_type.as_str()),
            Some("application/octet-stream")
        );
        assert_eq!((p.payload_template.as_str(), p.preprocessor), ("", None));
        assert_eq!(p.created_at, Some(ts(0, 42_000_000)));
        assert_eq!((p.pending_deletion, p.deletion_scheduled_at), (false, None));
        assert_eq!(
            p.tags,
            HashMap::from([("team".to_string(), "ops".to_string())])
        );
    }

    #[test]
    fn create_command_template_and_output_format() {
        let command = template_command();
        let CommandBody::Template(t) = &command.body else {
            unreachable!()
        };
        let mut req = pb::CreateCommandRequest {
            command_id: "set-temp".into(),
            payload_template: t.template.clone(),
            preprocessor: Some(preprocessor_to_pb(OutputFormat::Cbor)),
            mandatory_parameters: command.parameters.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        };
        let c = CreateCommand::try_from(req.clone()).unwrap();
        assert_eq!(c.template, Some(t.clone()));
        assert_eq!(c.parameters, command.parameters);
        assert_eq!(c.payload, None);

        // No preprocessor, or one without a substitution, or an unspecified format: JSON.
        for pre in [
            None,
            Some(pb::Preprocessor::default()),
            Some(preprocessor_to_pb(OutputFormat::Json)),
            Some(pb::Preprocessor {
                aws_json_substitution: Some(pb::AwsJsonSubstitution { output_format: 0 }),
            }),
        ] {
            req.preprocessor = pre;
            let c = CreateCommand::try_from(req.clone()).unwrap();
            assert_eq!(
                c.template.map(|t| t.output_format),
                Some(OutputFormat::Json)
            );
        }

        // Payload and template together pass through: validate_create rejects them.
        req.payload = Some(pb::Payload::default());
        let both = CreateCommand::try_from(req.clone()).unwrap();
        assert!(both.payload.is_some() && both.template.is_some());
    }

    #[test]
    fn create_command_errors_name_the_field() {
        let req = pb::CreateCommandRequest {
            command_id: "c".into(),
            payload_template: "{}".into(),
            preprocessor: Some(pb::Preprocessor {
                aws_json_substitution: Some(pb::AwsJsonSubstitution { output_format: 7 }),
            }),
            ..Default::default()
        };
        assert_eq!(
            err_field(CreateCommand::try_from(req.clone())),
            "preprocessor.aws_json_substitution.output_format"
        );
        let static_with_preprocessor = pb::CreateCommandRequest {
            payload_template: String::new(),
            payload: Some(pb::Payload::default()),
            ..req.clone()
        };
        let e = CreateCommand::try_from(static_with_preprocessor).unwrap_err();
        assert_eq!(e.field, "preprocessor");
        assert!(e.message.contains("payload_template"), "{e}");
        let bad_param = pb::CreateCommandRequest {
            preprocessor: None,
            mandatory_parameters: vec![
                CommandParameter {
                    name: "a".into(),
                    r#type: ParameterType::Boolean,
                    default_value: None,
                    value: None,
                    value_conditions: vec![],
                    description: String::new(),
                }
                .into(),
                pb::CommandParameter {
                    name: "b".into(),
                    ..Default::default()
                },
            ],
            ..req
        };
        let e = CreateCommand::try_from(bad_param).unwrap_err();
        assert_eq!(e.field, "mandatory_parameters[1].type");
        assert!(e.message.contains("PARAMETER_TYPE_UNSPECIFIED"), "{e}");
    }

    #[test]
    fn command_to_pb_template_and_pending_deletion() {
        let command = template_command();
        let arns = Arns::new("r", "1");
        let p = command_to_pb(command.clone(), &arns);
        assert_eq!(p.command_arn, "arn:aws:iot:r:1:command/set-temp");
        assert_eq!(p.payload, None);
        assert!(p.payload_template.contains("parameter:temp"));
        assert_eq!(p.preprocessor, Some(preprocessor_to_pb(OutputFormat::Cbor)));
        assert_eq!(p.mandatory_parameters.len(), 1);
        assert_eq!(
            command_parameter_from_pb("m", p.mandatory_parameters[0].clone()),
            Ok(command.parameters[0].clone())
        );
        assert!(p.deprecated && p.pending_deletion);
        assert_eq!(p.deletion_scheduled_at, Some(ts(7, 0)));
        assert_eq!(p.last_updated_at, Some(ts(6, 0)));

        // And it reads back as the create request that would make it.
        let req = pb::CreateCommandRequest {
            command_id: p.command_id.clone(),
            namespace: p.namespace.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            payload: p.payload.clone(),
            payload_template: p.payload_template.clone(),
            preprocessor: p.preprocessor,
            mandatory_parameters: p.mandatory_parameters.clone(),
            tags: p.tags.clone(),
        };
        let c = CreateCommand::try_from(req).unwrap();
        assert_eq!(CommandBody::Template(c.template.unwrap()), command.body);
        assert_eq!(
            (c.parameters, c.tags),
            (command.parameters.clone(), command.tags.clone())
        );

        let s = command_summary_to_pb(command.clone(), &arns);
        assert_eq!(s.command_arn, p.command_arn);
        assert_eq!(
            (s.command_id.as_str(), s.display_name.as_str()),
            ("set-temp", "Set temperature")
        );
        assert!(s.deprecated && s.pending_deletion);
        assert_eq!(
            (s.created_at, s.last_updated_at),
            (Some(ts(5, 0)), Some(ts(6, 0)))
        );

        let not_pending = Command {
            delete_at: None,
            ..command
        };
        let s = command_summary_to_pb(not_pending.clone(), &arns);
        assert!(!s.pending_deletion);
        let p = command_to_pb(not_pending, &arns);
        assert_eq!((p.pending_deletion, p.deletion_scheduled_at), (false, None));
    }

    #[test]
    fn command_responses() {
        let command = template_command();
        let r = create_command_response(&command.command_id, &Arns::default());
        assert_eq!(r.command_id, "set-temp");
        assert_eq!(
            r.command_arn,
            "arn:aws:iot:local:000000000000:command/set-temp"
        );
        let u = update_command_response(command);
        assert_eq!(
            (u.command_id.as_str(), u.description.as_str()),
            ("set-temp", "d")
        );
        assert!(u.deprecated);
        assert_eq!(u.last_updated_at, Some(ts(6, 0)));
    }

    #[test]
    fn update_command_keeps_presence() {
        let u = UpdateCommand::from(pb::UpdateCommandRequest {
            command_id: "c".into(),
            display_name: Some(String::new()),
            description: None,
            deprecated: Some(false),
        });
        assert_eq!(u.display_name.as_deref(), Some(""));
        assert_eq!(u.description, None);
        assert_eq!(u.deprecated, Some(false));
        let none = UpdateCommand::from(pb::UpdateCommandRequest::default());
        assert_eq!(none, UpdateCommand::default());
    }

    // --- start ---------------------------------------------------------------------------

    fn start_req() -> pb::StartCommandExecutionRequest {
        pb::StartCommandExecutionRequest {
            target: Some(pb_thing("lab-1")),
            command_id: "set-temp".into(),
            parameters: HashMap::from([
                ("temp".to_string(), pv(pb::parameter_value::Value::D(21.0))),
                ("n".to_string(), ul("18446744073709551615")),
            ]),
            execution_timeout_seconds: 60,
            client_token: "tok-1".into(),
        }
    }

    #[test]
    fn start_request_converts() {
        let r = StartRequest::try_from(start_req()).unwrap();
        assert_eq!(r.command_id.as_str(), "set-temp");
        assert_eq!(r.target, Target::thing("lab-1").unwrap());
        assert_eq!(r.parameters.get("temp"), Some(&ParameterValue::D(21.0)));
        assert_eq!(r.parameters.get("n"), Some(&ParameterValue::Ul(u64::MAX)));
        assert_eq!(r.timeout_secs, Some(60));
        assert_eq!(r.client_token.as_deref(), Some("tok-1"));

        let r = StartRequest::try_from(pb::StartCommandExecutionRequest {
            execution_timeout_seconds: 0,
            client_token: String::new(),
            parameters: HashMap::new(),
            ..start_req()
        })
        .unwrap();
        assert_eq!((r.timeout_secs, r.client_token.as_deref()), (None, None));
        assert_eq!(r.effective_timeout_secs(), 10);
        assert!(r.parameters.is_empty());
    }

    #[test]
    fn start_request_errors_name_the_field() {
        let e = StartRequest::try_from(pb::StartCommandExecutionRequest {
            execution_timeout_seconds: -5,
            ..start_req()
        })
        .unwrap_err();
        assert_eq!(e.field, "execution_timeout_seconds");
        assert!(e.message.contains("-5"), "{e}");
        let no_target = pb::StartCommandExecutionRequest {
            target: None,
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(no_target)), "target");
        let bad_id = pb::StartCommandExecutionRequest {
            command_id: "no spaces".into(),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(bad_id)), "command_id");
        let empty_id = pb::StartCommandExecutionRequest {
            command_id: String::new(),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(empty_id)), "command_id");
        let mut bad_param = start_req();
        bad_param
            .parameters
            .insert("n".into(), ul("18446744073709551616"));
        assert_eq!(
            err_field(StartRequest::try_from(bad_param)),
            "parameters[\"n\"].ul"
        );
        let mut empty_param = start_req();
        empty_param
            .parameters
            .insert("temp".into(), pb::ParameterValue::default());
        assert_eq!(
            err_field(StartRequest::try_from(empty_param)),
            "parameters[\"temp\"]"
        );
        let bad_kind = pb::StartCommandExecutionRequest {
            target: Some(pb::Target {
                kind: 0,
                id: "x".into(),
            }),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(bad_kind)), "target.kind");
    }

    // --- listing -------------------------------------------------------------------------

    #[test]
    fn list_commands_request() {
        let q = CommandQuery::try_from(pb::ListCommandsRequest::default()).unwrap();
        assert_eq!(
            q,
            CommandQuery {
                namespace: None,
                parameter_name: None,
                ascending: false,
                page_size: PAGE_SIZE_DEFAULT,
                page_token: None,
            }
        );
        let q = CommandQuery::try_from(pb::ListCommandsRequest {
            max_results: 100,
            next_token: "t".into(),
            namespace: "AWS-IoT".into(),
            command_parameter_name: "temp".into(),
            sort_order: pb::SortOrder::Ascending as i32,
        })
        .unwrap();
        assert_eq!(q.page_size, 100);
        assert_eq!(q.page_token.as_deref(), Some("t"));
        assert_eq!(q.namespace.as_deref(), Some("AWS-IoT"));
        assert_eq!(q.parameter_name.as_deref(), Some("temp"));
        assert!(q.ascending);
        for max_results in [101, -1] {
            let req = pb::ListCommandsRequest {
                max_results,
                ..Default::default()
            };
            assert_eq!(err_field(CommandQuery::try_from(req)), "max_results");
        }
        let req = pb::ListCommandsRequest {
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(err_field(CommandQuery::try_from(req)), "sort_order");
    }

    #[test]
    fn list_executions_request_filters() {
        let q = ExecutionQuery::try_from(pb::ListCommandExecutionsRequest::default()).unwrap();
        assert_eq!(
            q,
            ExecutionQuery {
                page_size: PAGE_SIZE_DEFAULT,
                ..Default::default()
            }
        );
        let req = pb::ListCommandExecutionsRequest {
            max_results: 1,
            next_token: "n".into(),
            namespace: NAMESPACE_AWS_IOT.into(),
            status: pb::ExecutionStatus::Failed as i32,
            sort_order: pb::SortOrder::Ascending as i32,
            started_time_filter: Some(pb::TimeFilter {
                after: Some(ts(1, 0)),
                before: Some(ts(2, 0)),
            }),
            completed_time_filter: Some(pb::TimeFilter {
                after: None,
                before: Some(ts(3, 0)),
            }),
            // fleetcmd allows command and target together, and both time filters.
            command_id: "reboot".into(),
            target: Some(pb_thing("lab-1")),
            statuses: vec![
                pb::ExecutionStatus::TimedOut as i32,
                pb::ExecutionStatus::Failed as i32,
                pb::ExecutionStatus::Created as i32,
            ],
        };
        let q = ExecutionQuery::try_from(req).unwrap();
        assert_eq!(
            q.statuses,
            vec![
                ExecutionStatus::Created,
                ExecutionStatus::Failed,
                ExecutionStatus::TimedOut
            ],
            "status and statuses merged, sorted, without duplicates"
        );
        assert_eq!(
            q.started,
            Some(TimeRange {
                after: Some(1_000),
                before: Some(2_000)
            })
        );
        assert_eq!(
            q.completed,
            Some(TimeRange {
                after: None,
                before: Some(3_000)
            })
        );
        assert_eq!(q.command_id, Some(CommandId::parse("reboot").unwrap()));
        assert_eq!(q.target, Some(Target::thing("lab-1").unwrap()));
        assert!(q.ascending);
        assert_eq!((q.page_size, q.page_token.as_deref()), (1, Some("n")));

        // Only `status`; an empty filter message is kept as an open range.
        let q = ExecutionQuery::try_from(pb::ListCommandExecutionsRequest {
            status: pb::ExecutionStatus::Canceled as i32,
            completed_time_filter: Some(pb::TimeFilter::default()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(q.statuses, vec![ExecutionStatus::Canceled]);
        assert_eq!((q.started, q.completed), (None, Some(TimeRange::default())));
    }

    #[test]
    fn list_executions_request_errors_name_the_field() {
        let base = pb::ListCommandExecutionsRequest::default;
        let cases: Vec<(pb::ListCommandExecutionsRequest, &str)> = vec![
            (
                pb::ListCommandExecutionsRequest {
                    max_results: 101,
                    ..base()
                },
                "max_results",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    status: 42,
                    ..base()
                },
                "status",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    statuses: vec![1, 0],
                    ..base()
                },
                "statuses[1]",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    namespace: "AWS-IoT-FleetWise".into(),
                    ..base()
                },
                "namespace",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    command_id: "a/b".into(),
                    ..base()
                },
                "command_id",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    target: Some(pb::Target::default()),
                    ..base()
                },
                "target.kind",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    sort_order: -1,
                    ..base()
                },
                "sort_order",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    completed_time_filter: Some(pb::TimeFilter {
                        after: None,
                        before: Some(ts(0, -5)),
                    }),
                    ..base()
                },
                "completed_time_filter.before",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    started_time_filter: Some(pb::TimeFilter {
                        after: Some(ts(2, 0)),
                        before: Some(ts(1, 999_999_999)),
                    }),
                    ..base()
                },
                "started_time_filter",
            ),
        ];
        for (req, field) in cases {
            let e = ExecutionQuery::try_from(req.clone()).unwrap_err();
            assert_eq!(e.field, field, "{req:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn time_filters() {
        assert_eq!(time_range_from_pb("f", None), Ok(None));
        let equal = pb::TimeFilter {
            after: Some(ts(5, 0)),
            before: Some(ts(5, 0)),
        };
        assert_eq!(
            time_range_from_pb("f", Some(equal)),
            Ok(Some(TimeRange {
                after: Some(5_000),
                before: Some(5_000)
            })),
            "equal bounds are a valid (inclusive) range"
        );
        let inverted = pb::TimeFilter {
            after: Some(ts(5, 1_000_000)),
            before: Some(ts(5, 0)),
        };
        let e = time_range_from_pb("started_time_filter", Some(inverted)).unwrap_err();
        assert_eq!(e.field, "started_time_filter");
        assert!(
            e.message.contains("5001") && e.message.contains("5000"),
            "{e}"
        );
        let bad = pb::TimeFilter {
            after: Some(ts(i64::MAX, 0)),
            before: None,
        };
        assert_eq!(err_field(time_range_from_pb("f", Some(bad))), "f.after");
        for r in [
            TimeRange::default(),
            TimeRange {
                after: Some(-5),
                before: None,
            },
            TimeRange {
                after: Some(1),
                before: Some(2),
            },
        ] {
            assert_eq!(time_range_from_pb("f", Some(r.into())), Ok(Some(r)));
        }
    }

    // --- executions ----------------------------------------------------------------------

    #[test]
    fn status_reasons_both_ways() {
        let r = StatusReason {
            reason_code: "OVERHEAT".into(),
            reason_description: "too hot".into(),
        };
        let p = pb::StatusReason::from(r.clone());
        assert_eq!(p.reason_code, "OVERHEAT");
        assert_eq!(StatusReason::try_from(p.clone()), Ok(r.clone()));
        // The pattern is not checked here: cloud codes start with `$`.
        let cloud = pb::StatusReason {
            reason_code: "$CANCELED".into(),
            reason_description: String::new(),
        };
        assert_eq!(
            StatusReason::try_from(cloud).unwrap().reason_code,
            "$CANCELED"
        );
        let e = StatusReason::try_from(pb::StatusReason {
            reason_code: String::new(),
            reason_description: "why".into(),
        })
        .unwrap_err();
        assert_eq!(e.field, "status_reason.reason_code");
        assert!(e.message.contains("required"), "{e}");
        assert_eq!(optional_status_reason(None), Ok(None));
        assert_eq!(optional_status_reason(Some(p)), Ok(Some(r)));
        assert_eq!(
            err_field(optional_status_reason(Some(pb::StatusReason::default()))),
            "status_reason.reason_code"
        );
    }

    #[test]
    fn execution_to_pb_with_and_without_result() {
        let arns = Arns::default();
        let p = execution_to_pb(execution(), &arns, true);
        assert_eq!(p.execution_id, "e-1");
        assert_eq!(p.command_id, "reboot");
        assert_eq!(
            p.command_arn,
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(p.target_arn, "arn:aws:iot:local:000000000000:client/dev.1");
        assert_eq!(
            p.target.clone().map(Target::try_from),
            Some(Target::client("dev.1"))
        );
        assert_eq!(p.status, pb::ExecutionStatus::TimedOut as i32);
        assert_eq!(
            p.status_reason.as_ref().map(|r| r.reason_code.as_str()),
            Some("$NO_RESPONSE_FROM_DEVICE")
        );
        assert_eq!(
            results_from_pb("result", p.result.clone()),
            Ok(execution().result)
        );
        assert_eq!(
            parameters_from_pb("parameters", p.parameters.clone()),
            Ok(execution().parameters)
        );
        assert_eq!(p.execution_timeout_seconds, 30);
        assert_eq!(
            (p.created_at, p.last_updated_at, p.started_at),
            (Some(ts(1, 0)), Some(ts(31, 0)), Some(ts(1, 0)))
        );
        assert_eq!(
            p.completed_at, None,
            "a cloud TIMED_OUT has no completed_at"
        );
        assert_eq!(p.time_to_live, Some(ts(9_000, 0)));
        assert_eq!(p.client_token, "tok");
        assert!(!p.terminal);

        let without = execution_to_pb(execution(), &arns, false);
        assert!(without.result.is_empty());
        assert_eq!(
            without.parameters.len(),
            1,
            "parameters do not depend on include_result"
        );

        let done = Execution {
            status: ExecutionStatus::Succeeded,
            status_reason: None,
            completed_at: Some(40_000),
            client_token: None,
            terminal: true,
            ..execution()
        };
        let p = execution_to_pb(done, &arns, true);
        assert_eq!(p.status, pb::ExecutionStatus::Succeeded as i32);
        assert_eq!((p.status_reason, p.client_token.as_str()), (None, ""));
        assert_eq!(p.completed_at, Some(ts(40, 0)));
        assert!(p.terminal);
    }

    #[test]
    fn execution_summary_and_event() {
        let done = Execution {
            completed_at: Some(40_500),
            terminal: true,
            ..execution()
        };
        let s = execution_summary_to_pb(done.clone(), &Arns::new("r", "a"));
        assert_eq!(
            (s.execution_id.as_str(), s.command_id.as_str()),
            ("e-1", "reboot")
        );
        assert_eq!(s.command_arn, "arn:aws:iot:r:a:command/reboot");
        assert_eq!(s.target_arn, "arn:aws:iot:r:a:client/dev.1");
        assert_eq!(s.target, Some(pb::Target::from(&done.target)));
        assert_eq!(
            status_from_pb("status", s.status),
            Ok(ExecutionStatus::TimedOut)
        );
        assert_eq!(
            (s.created_at, s.started_at),
            (Some(ts(1, 0)), Some(ts(1, 0)))
        );
        assert_eq!(s.completed_at, Some(ts(40, 500_000_000)));

        let ev = execution_event_to_pb(done.clone());
        assert_eq!(
            (ev.execution_id.as_str(), ev.command_id.as_str()),
            ("e-1", "reboot")
        );
        assert_eq!(ev.target, Some(pb::Target::from(&done.target)));
        assert_eq!(ev.status, status_to_pb(ExecutionStatus::TimedOut));
        assert_eq!(
            ev.status_reason.map(StatusReason::try_from),
            Some(Ok(done.status_reason.clone().unwrap()))
        );
        assert_eq!(results_from_pb("result", ev.result), Ok(done.result));
        assert_eq!(ev.timestamp, Some(ts(31, 0)), "the time of the last change");
        assert!(ev.terminal);
    }

    // --- errors --------------------------------------------------------------------------

    #[test]
    fn validation_errors_become_invalid_argument_with_field_details() {
        let s = validation_status(ValidationError::new(
            "max_results",
            "must be between 1 and 100",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "invalid max_results: must be between 1 and 100"
        );
        let details = s.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "max_results");
        assert_eq!(violations[0].description, "must be between 1 and 100");

        // End to end from a request.
        let e = StartRequest::try_from(pb::StartCommandExecutionRequest {
            target: None,
            ..start_req()
        })
        .unwrap_err();
        let s = validation_status(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("target"), "{}", s.message());
    }

    #[test]
    fn every_rejection_code_maps() {
        use RejectionCode::*;
        let table = [
            (InvalidRequest, Code::InvalidArgument, "INVALID_REQUEST"),
            (InvalidJson, Code::InvalidArgument, "INVALID_JSON"),
            (InvalidTopic, Code::InvalidArgument, "INVALID_TOPIC"),
            (ResourceNotFound, Code::NotFound, "RESOURCE_NOT_FOUND"),
            (Conflict, Code::AlreadyExists, "CONFLICT"),
            (
                FailedPrecondition,
                Code::FailedPrecondition,
                "FAILED_PRECONDITION",
            ),
            (
                InvalidStateTransition,
                Code::FailedPrecondition,
                "INVALID_STATE_TRANSITION",
            ),
            (
                TerminalStateReached,
                Code::FailedPrecondition,
                "TERMINAL_STATE_REACHED",
            ),
            (QuotaExceeded, Code::ResourceExhausted, "QUOTA_EXCEEDED"),
            (
                PermissionDenied,
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (DataConflict, Code::Aborted, "DATA_CONFLICT"),
            (InternalError, Code::Internal, "INTERNAL_ERROR"),
        ];
        for (code, grpc, reason) in table {
            assert_eq!(rejection_grpc_code(code), grpc, "{code:?}");
            let s = rejection_status(Rejection::new(code, format!("because {reason}")));
            assert_eq!(s.code(), grpc, "{code:?}");
            assert_eq!(s.message(), format!("because {reason}"));
            let details = s.get_error_details();
            let info = details.error_info().unwrap();
            assert_eq!(
                (info.reason.as_str(), info.domain.as_str()),
                (reason, ERROR_DOMAIN)
            );
            assert!(details.bad_request().is_none(), "{code:?} names no field");
        }
    }

    #[test]
    fn rejections_with_a_field_carry_a_violation() {
        let r = Rejection::from(ValidationError::new(
            "parameters[\"temp\"]",
            "must be at most 30",
        ));
        let s = rejection_status(r);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "invalid parameters[\"temp\"]: must be at most 30"
        );
        let details = s.get_error_details();
        let v = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(v.field, "parameters[\"temp\"]");
        assert_eq!(v.description, "must be at most 30");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_REQUEST");
    }

    #[test]
    fn port_errors_map_by_retryability() {
        for e in [
            PortError::Unavailable("kafka".into()),
            PortError::NoResponders("shard.7".into()),
            PortError::Timeout("append".into()),
        ] {
            let text = e.to_string();
            let s = port_status(e);
            assert_eq!(s.code(), Code::Unavailable, "{text}");
            assert!(s.message().contains("retry"), "{}", s.message());
            assert!(s.message().contains(&text), "{}", s.message());
        }
        assert!(
            port_status(PortError::Timeout("x".into()))
                .message()
                .contains("unknown")
        );
        for e in [
            PortError::Corrupt("row 3".into()),
            PortError::Backend("syntax".into()),
        ] {
            let text = e.to_string();
            let s = port_status(e);
            assert_eq!(s.code(), Code::Internal, "{text}");
            assert_eq!(s.message(), text);
            assert!(!s.message().contains("retry"));
        }
    }
}
