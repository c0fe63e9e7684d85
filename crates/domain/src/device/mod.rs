//! The device side of the protocol (`docs/device-protocol.md`): update messages in JSON or
//! CBOR, `/accepted` and `/rejected` replies, status-change events and fleetcmd's cancel notice.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ciborium::Value as Cbor;
use serde_json::{Map, Value as Json, json};

use crate::command::check_text;
use crate::error::{Rejection, RejectionCode, ValidationError, quote, truncate};
use crate::ids::ExecutionId;
use crate::limits::{
    DEVICE_UPDATE_MAX_BYTES, REASON_CODE_MAX_CHARS, REASON_DESCRIPTION_MAX_CHARS,
    RESULT_ENTRIES_MAX, RESULT_KEY_MAX_CHARS,
};
use crate::model::{ExecutionStatus, ResultValue, StatusReason, TimestampMs};
use crate::start::validate_client_token;
use crate::topics::UpdateFormat;

/// A device's update, shape-validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    pub status: ExecutionStatus,
    pub status_reason: Option<StatusReason>,
    pub result: Option<BTreeMap<String, ResultValue>>,
    /// Echoed in the reply when the device sent one.
    pub client_token: Option<String>,
}

/// `reasonCode` 1–64 of `[A-Z0-9_-]` (device codes; `$` codes are the cloud's),
/// `reasonDescription` ≤ 1024 without control characters.
pub fn validate_status_reason(field: &str, reason: &StatusReason) -> Result<(), ValidationError> {
    let code_field = format!("{field}.reasonCode");
    let code = &reason.reason_code;
    if code.is_empty() {
        return Err(ValidationError::new(code_field, "must not be empty"));
    }
    let len = code.chars().count();
    if len > REASON_CODE_MAX_CHARS {
        return Err(ValidationError::new(
            code_field,
            format!("must be at most {REASON_CODE_MAX_CHARS} characters, got {len}"),
        ));
    }
    if let Some(c) = code
        .chars()
        .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        let why = if c == '$' {
            " (codes starting with $ are reserved for the cloud)"
        } else {
            ""
        };
        return Err(ValidationError::new(
            code_field,
            format!("must match [A-Z0-9_-]+, found {c:?}{why}"),
        ));
    }
    check_text(
        &format!("{field}.reasonDescription"),
        &reason.reason_description,
        REASON_DESCRIPTION_MAX_CHARS,
    )
}

/// A decoded JSON or CBOR value, reduced to what the update shape needs so that both
/// formats go through one set of rules.
#[derive(Debug)]
enum Wire {
    Null,
    Bool(bool),
    Number,
    Text(String),
    Bytes(Vec<u8>),
    Array,
    /// Duplicate keys: the last one wins (as serde_json does for JSON).
    Map(BTreeMap<String, Wire>),
    /// A CBOR value of a kind this version of ciborium added.
    Other,
}

impl Wire {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number => "a number",
            Self::Text(_) => "a string",
            Self::Bytes(_) => "a byte string",
            Self::Array => "an array",
            Self::Map(_) => "an object",
            Self::Other => "an unsupported value",
        }
    }

    fn from_json(v: Json) -> Self {
        match v {
            Json::Null => Self::Null,
            Json::Bool(b) => Self::Bool(b),
            Json::Number(_) => Self::Number,
            Json::String(s) => Self::Text(s),
            Json::Array(_) => Self::Array,
            Json::Object(m) => Self::Map(
                m.into_iter()
                    .map(|(k, v)| (k, Self::from_json(v)))
                    .collect(),
            ),
        }
    }

    fn from_cbor(v: Cbor, path: &str) -> Result<Self, Rejection> {
        Ok(match v {
            Cbor::Null => Self::Null,
            Cbor::Bool(b) => Self::Bool(b),
            Cbor::Integer(_) | Cbor::Float(_) => Self::Number,
            Cbor::Text(s) => Self::Text(s),
            Cbor::Bytes(b) => Self::Bytes(b),
            Cbor::Array(_) => Self::Array,
            // A tag only hints at how to read its content (e.g. 22: "expected base64").
            Cbor::Tag(_, inner) => Self::from_cbor(*inner, path)?,
            Cbor::Map(entries) => {
                let mut map = BTreeMap::new();
                for (k, v) in entries {
                    let Cbor::Text(k) = k else {
                        return Err(invalid(
                            if path.is_empty() { "body" } else { path },
                            "CBOR map keys must be text strings",
                        ));
                    };
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{}", truncate(&k))
                    };
                    let v = Self::from_cbor(v, &child)?;
                    map.insert(k, v);
                }
                Self::Map(map)
            }
            _ => Self::Other,
        })
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Rejection {
    ValidationError::new(field, message).into()
}

fn wrong_type(field: &str, expected: &str, got: &Wire) -> Rejection {
    invalid(field, format!("must be {expected}, got {}", got.kind()))
}

/// Takes an optional member: absent and `null` both mean "not given".
fn take(map: &mut BTreeMap<String, Wire>, key: &str) -> Option<Wire> {
    match map.remove(key) {
        None | Some(Wire::Null) => None,
        v => v,
    }
}

/// Base64 as devices send it: the standard alphabet, padded or not.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_body(format: UpdateFormat, body: &[u8]) -> Result<Wire, Rejection> {
    match format {
        UpdateFormat::Json => match serde_json::from_slice::<Json>(body) {
            Ok(v) => Ok(Wire::from_json(v)),
            Err(e) => Err(Rejection::new(
                RejectionCode::InvalidJson,
                format!("the update is not valid JSON: {e}"),
            )),
        },
        UpdateFormat::Cbor => {
            let mut rest = body;
            let value: Cbor = ciborium::de::from_reader(&mut rest).map_err(|e| {
                Rejection::new(
                    RejectionCode::InvalidJson,
                    format!("the update is not valid CBOR: {e}"),
                )
            })?;
            if !rest.is_empty() {
                return Err(Rejection::new(
                    RejectionCode::InvalidJson,
                    format!(
                        "the update is not valid CBOR: {} bytes after the first data item",
                        rest.len()
                    ),
                ));
            }
            Wire::from_cbor(value, "")
        }
    }
}

fn parse_status(value: Option<Wire>) -> Result<ExecutionStatus, Rejection> {
    const DEVICE_STATUSES: &str = "IN_PROGRESS, SUCCEEDED, FAILED, REJECTED or TIMED_OUT";
    let s = match value {
        None => {
            return Err(invalid(
                "status",
                format!("is required: one of {DEVICE_STATUSES}"),
            ));
        }
        Some(Wire::Text(s)) => s,
        Some(other) => return Err(wrong_type("status", "a string", &other)),
    };
    match ExecutionStatus::parse(&s) {
        Some(ExecutionStatus::Canceled) | None => Err(invalid(
            "status",
            format!(
                "a device cannot report status {}; expected one of {DEVICE_STATUSES}",
                quote(&s)
            ),
        )),
        Some(status) => Ok(status),
    }
}

fn parse_reason(value: Option<Wire>) -> Result<Option<StatusReason>, Rejection> {
    let mut map = match value {
        None => return Ok(None),
        Some(Wire::Map(m)) => m,
        Some(other) => return Err(wrong_type("statusReason", "an object", &other)),
    };
    let reason_code = match take(&mut map, "reasonCode") {
        None => {
            return Err(invalid(
                "statusReason.reasonCode",
                "is required when statusReason is present",
            ));
        }
        Some(Wire::Text(s)) => s,
        Some(other) => return Err(wrong_type("statusReason.reasonCode", "a string", &other)),
    };
    let reason_description = match take(&mut map, "reasonDescription") {
        None => String::new(),
        Some(Wire::Text(s)) => s,
        Some(other) => {
            return Err(wrong_type(
                "statusReason.reasonDescription",
                "a string",
                &other,
            ));
        }
    };
    let reason = StatusReason {
        reason_code,
        reason_description,
    };
    validate_status_reason("statusReason", &reason)?;
    Ok(Some(reason))
}

fn check_result_key(key: &str) -> Result<(), Rejection> {
    let field = format!("result.{}", truncate(key));
    let len = key.chars().count();
    if len == 0 || len > RESULT_KEY_MAX_CHARS {
        return Err(invalid(
            &field,
            format!("result keys must be 1–{RESULT_KEY_MAX_CHARS} characters, got {len}"),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(invalid(
            &field,
            format!("result keys must match [a-zA-Z0-9_-]+, found {c:?}"),
        ));
    }
    Ok(())
}

fn parse_result_value(field: &str, value: Wire) -> Result<ResultValue, Rejection> {
    let map = match value {
        Wire::Map(m) => m,
        other => {
            return Err(wrong_type(
                field,
                "an object with one of \"s\", \"b\" or \"bin\"",
                &other,
            ));
        }
    };
    let mut members: Vec<(String, Wire)> = map
        .into_iter()
        .filter(|(_, v)| !matches!(v, Wire::Null))
        .collect();
    if members.len() != 1 {
        const SHOWN: usize = 5;
        let mut keys: Vec<String> = members.iter().take(SHOWN).map(|(k, _)| quote(k)).collect();
        if members.len() > SHOWN {
            keys.push(format!("and {} more", members.len() - SHOWN));
        }
        return Err(invalid(
            field,
            format!(
                "must have exactly one of \"s\", \"b\" or \"bin\", found {}",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    format!("[{}]", keys.join(", "))
                }
            ),
        ));
    }
    let Some((key, value)) = members.pop() else {
        return Err(invalid(
            field,
            "must have exactly one of \"s\", \"b\" or \"bin\"",
        ));
    };
    let member = format!("{field}.{}", truncate(&key));
    match (key.as_str(), value) {
        ("s", Wire::Text(s)) => Ok(ResultValue::S(s)),
        ("s", other) => Err(wrong_type(&member, "a string", &other)),
        ("b", Wire::Bool(b)) => Ok(ResultValue::B(b)),
        ("b", other) => Err(wrong_type(&member, "a boolean", &other)),
        ("bin", Wire::Bytes(b)) => Ok(ResultValue::Bin(b)),
        ("bin", Wire::Text(t)) => BASE64_LENIENT
            .decode(t.as_bytes())
            .map(ResultValue::Bin)
            .map_err(|e| invalid(&member, format!("must be base64 (standard alphabet): {e}"))),
        ("bin", other) => Err(wrong_type(
            &member,
            "a base64 string (or a CBOR byte string)",
            &other,
        )),
        (other, _) => Err(invalid(
            field,
            format!(
                "unknown result type {}; expected \"s\", \"b\" or \"bin\"",
                quote(other)
            ),
        )),
    }
}

fn parse_result(value: Option<Wire>) -> Result<Option<BTreeMap<String, ResultValue>>, Rejection> {
    let map = match value {
        None => return Ok(None),
        Some(Wire::Map(m)) => m,
        Some(other) => return Err(wrong_type("result", "an object", &other)),
    };
    if map.is_empty() {
        return Err(invalid(
            "result",
            "must have at least 1 entry when present (omit it otherwise)",
        ));
    }
    if map.len() > RESULT_ENTRIES_MAX {
        return Err(invalid(
            "result",
            format!(
                "must have at most {RESULT_ENTRIES_MAX} entries, got {}",
                map.len()
            ),
        ));
    }
    let mut result = BTreeMap::new();
    for (key, value) in map {
        check_result_key(&key)?;
        let value = parse_result_value(&format!("result.{key}"), value)?;
        result.insert(key, value);
    }
    Ok(Some(result))
}

fn parse_client_token(value: Option<Wire>) -> Result<Option<String>, Rejection> {
    match value {
        None => Ok(None),
        Some(Wire::Text(t)) => match validate_client_token(&t) {
            Ok(()) => Ok(Some(t)),
            Err(e) => Err(invalid("clientToken", e.message)),
        },
        Some(other) => Err(wrong_type("clientToken", "a string", &other)),
    }
}

/// Parses an update body. Undecodable bodies → `InvalidJson`; decodable bodies with bad or
/// missing fields → `InvalidRequest` naming the field; unknown statuses → `InvalidRequest`.
/// `CREATED` parses (the state machine refuses it as a transition).
///
/// Members other than `status`, `statusReason`, `result` and `clientToken` (AWS examples
/// send `deviceId` and `executionId`) are ignored; `null` means absent.
pub fn parse_update(format: UpdateFormat, body: &[u8]) -> Result<DeviceUpdate, Rejection> {
    if body.len() > DEVICE_UPDATE_MAX_BYTES {
        return Err(Rejection::new(
            RejectionCode::InvalidRequest,
            format!(
                "the update is {} bytes, more than the {DEVICE_UPDATE_MAX_BYTES}-byte limit",
                body.len()
            ),
        ));
    }
    let mut map = match decode_body(format, body)? {
        Wire::Map(m) => m,
        other => {
            return Err(Rejection::new(
                RejectionCode::InvalidJson,
                format!(
                    "the update must be {}, got {}",
                    match format {
                        UpdateFormat::Json => "a JSON object",
                        UpdateFormat::Cbor => "a CBOR map",
                    },
                    other.kind()
                ),
            ));
        }
    };
    // The token first, so that a reply to a bad update can still echo it when it is valid.
    let client_token = parse_client_token(take(&mut map, "clientToken"))?;
    let status = parse_status(take(&mut map, "status"))?;
    let status_reason = parse_reason(take(&mut map, "statusReason"))?;
    let result = parse_result(take(&mut map, "result"))?;
    Ok(DeviceUpdate {
        status,
        status_reason,
        result,
        client_token,
    })
}

/// The `clientToken` of an update body, if it has a valid one, even when the rest of the
/// body is bad: a `/rejected` reply should still echo it so the device can correlate.
pub fn peek_client_token(format: UpdateFormat, body: &[u8]) -> Option<String> {
    if body.len() > DEVICE_UPDATE_MAX_BYTES {
        return None;
    }
    match decode_body(format, body).ok()? {
        Wire::Map(mut m) => parse_client_token(take(&mut m, "clientToken")).ok()?,
        _ => None,
    }
}

/// Encodes a flat map of text members (the replies) in the update's format, in order.
fn encode_text_map(format: UpdateFormat, members: &[(&str, &str)]) -> Vec<u8> {
    match format {
        UpdateFormat::Json => {
            let map: Map<String, Json> = members
                .iter()
                .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
                .collect();
            Json::Object(map).to_string().into_bytes()
        }
        UpdateFormat::Cbor => to_cbor(&Cbor::Map(
            members
                .iter()
                .map(|(k, v)| (Cbor::Text(k.to_string()), Cbor::Text(v.to_string())))
                .collect(),
        )),
    }
}

/// CBOR bytes of an in-memory value. Writing into a `Vec` has no I/O error and every
/// `ciborium::Value` is encodable, so the error branch is unreachable; it yields an empty
/// body rather than a panic all the same.
pub(crate) fn to_cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    match ciborium::ser::into_writer(value, &mut out) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// `{"executionId": "...", "clientToken"?}` in the update's format.
pub fn encode_accepted(
    format: UpdateFormat,
    execution_id: &ExecutionId,
    client_token: Option<&str>,
) -> Vec<u8> {
    let mut members = vec![("executionId", execution_id.as_str())];
    if let Some(t) = client_token {
        members.push(("clientToken", t));
    }
    encode_text_map(format, &members)
}

/// `{"error": <code>, "errorMessage": "...", "executionId": "...", "clientToken"?}`.
pub fn encode_rejected(
    format: UpdateFormat,
    execution_id: &str,
    client_token: Option<&str>,
    rejection: &Rejection,
) -> Vec<u8> {
    let mut members = vec![
        ("error", rejection.code.device_code()),
        ("errorMessage", rejection.message.as_str()),
        ("executionId", execution_id),
    ];
    if let Some(t) = client_token {
        members.push(("clientToken", t));
    }
    encode_text_map(format, &members)
}

/// The status-change event body for `<root>/events/commandExecution/<commandId>/<status>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent<'a> {
    pub execution_id: &'a str,
    pub status: ExecutionStatus,
    pub status_reason: Option<&'a StatusReason>,
    pub command_arn: &'a str,
    pub target_arn: &'a str,
    pub timestamp: TimestampMs,
    /// fleetcmd adds the result (the reference's events lack it).
    pub result: Option<&'a BTreeMap<String, ResultValue>>,
}

/// JSON: `executionId, status, statusReason?, eventType: "COMMAND_EXECUTION", commandArn,
/// targetArn, timestamp` (+ `result` when present).
pub fn encode_status_event(event: &StatusEvent<'_>) -> Vec<u8> {
    let mut body = json!({
        "executionId": event.execution_id,
        "status": event.status.as_str(),
        "eventType": "COMMAND_EXECUTION",
        "commandArn": event.command_arn,
        "targetArn": event.target_arn,
        "timestamp": event.timestamp,
    });
    if let Some(reason) = event.status_reason {
        body["statusReason"] = reason_json(reason);
    }
    if let Some(result) = event.result {
        body["result"] = result_json(result);
    }
    body.to_string().into_bytes()
}

/// JSON cancel notice: `{"executionId", "status": "CANCELED", "statusReason"?}`.
pub fn encode_cancel_notice(execution_id: &ExecutionId, reason: Option<&StatusReason>) -> Vec<u8> {
    let mut body = json!({
        "executionId": execution_id.as_str(),
        "status": ExecutionStatus::Canceled.as_str(),
    });
    if let Some(reason) = reason {
        body["statusReason"] = reason_json(reason);
    }
    body.to_string().into_bytes()
}

/// `{reasonCode, reasonDescription?}`: an empty description is left out, as the API does.
fn reason_json(reason: &StatusReason) -> Json {
    let mut r = json!({ "reasonCode": reason.reason_code });
    if !reason.reason_description.is_empty() {
        r["reasonDescription"] = Json::String(reason.reason_description.clone());
    }
    r
}

/// `{key: {"s": ...} | {"b": ...} | {"bin": "<base64>"}}`, the device's own shape.
fn result_json(result: &BTreeMap<String, ResultValue>) -> Json {
    Json::Object(
        result
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ResultValue::S(s) => json!({ "s": s }),
                    ResultValue::B(b) => json!({ "b": b }),
                    ResultValue::Bin(bytes) => json!({ "bin": STANDARD.encode(bytes) }),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
