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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_body(v: Json) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn cbor_body(v: Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(&v, &mut out).unwrap();
        out
    }

    fn text(s: &str) -> Cbor {
        Cbor::Text(s.into())
    }

    fn cmap(entries: Vec<(&str, Cbor)>) -> Cbor {
        Cbor::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
    }

    fn parse_json(v: Json) -> Result<DeviceUpdate, Rejection> {
        parse_update(UpdateFormat::Json, &json_body(v))
    }

    /// Asserts an `InvalidRequest` on `field` whose message contains `needle`.
    fn assert_invalid(r: Result<DeviceUpdate, Rejection>, field: &str, needle: &str) {
        let err = r.unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidRequest, "{err:?}");
        assert_eq!(err.field.as_deref(), Some(field), "{err:?}");
        assert!(
            err.message.contains(needle),
            "{:?} lacks {needle:?}",
            err.message
        );
    }

    fn reason(code: &str, description: &str) -> StatusReason {
        StatusReason {
            reason_code: code.into(),
            reason_description: description.into(),
        }
    }

    /// Encodes an update the way a device SDK would (the inverse of `parse_update`).
    fn encode_update(format: UpdateFormat, u: &DeviceUpdate) -> Vec<u8> {
        match format {
            UpdateFormat::Json => {
                let mut v = json!({ "status": u.status.as_str(), "deviceId": "ignored" });
                if let Some(r) = &u.status_reason {
                    v["statusReason"] = reason_json(r);
                }
                if let Some(r) = &u.result {
                    v["result"] = result_json(r);
                }
                if let Some(t) = &u.client_token {
                    v["clientToken"] = json!(t);
                }
                json_body(v)
            }
            UpdateFormat::Cbor => {
                let mut m = vec![("status", text(u.status.as_str()))];
                if let Some(r) = &u.status_reason {
                    m.push((
                        "statusReason",
                        cmap(vec![
                            ("reasonCode", text(&r.reason_code)),
                            ("reasonDescription", text(&r.reason_description)),
                        ]),
                    ));
                }
                if let Some(r) = &u.result {
                    let entries = r
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                ResultValue::S(s) => cmap(vec![("s", text(s))]),
                                ResultValue::B(b) => cmap(vec![("b", Cbor::Bool(*b))]),
                                ResultValue::Bin(b) => cmap(vec![("bin", Cbor::Bytes(b.clone()))]),
                            };
                            (text(k), v)
                        })
                        .collect();
                    m.push(("result", Cbor::Map(entries)));
                }
                if let Some(t) = &u.client_token {
                    m.push(("clientToken", text(t)));
                }
                cbor_body(cmap(m))
            }
        }
    }

    #[test]
    fn status_reason_rules() {
        assert_eq!(
            validate_status_reason("r", &reason("DEVICE_TOO-HOT_2", "")),
            Ok(())
        );
        let max = reason(&"A".repeat(64), &"d".repeat(1024));
        assert_eq!(validate_status_reason("r", &max), Ok(()));
        let err = validate_status_reason("r", &reason("", "")).unwrap_err();
        assert_eq!(err.field, "r.reasonCode");
        let err = validate_status_reason("r", &reason(&"A".repeat(65), "")).unwrap_err();
        assert_eq!(err.field, "r.reasonCode");
        assert!(err.message.contains("64"), "{}", err.message);
        let err = validate_status_reason("r", &reason("too_hot", "")).unwrap_err();
        assert!(err.message.contains("[A-Z0-9_-]+") && err.message.contains("'t'"));
        let err = validate_status_reason("r", &reason("$NO_RESPONSE_FROM_DEVICE", "")).unwrap_err();
        assert!(err.message.contains("reserved"), "{}", err.message);
        let err = validate_status_reason("r", &reason("X", &"d".repeat(1025))).unwrap_err();
        assert_eq!(err.field, "r.reasonDescription");
        assert!(err.message.contains("1024"));
        let err = validate_status_reason("r", &reason("X", "line\nbreak")).unwrap_err();
        assert_eq!(err.field, "r.reasonDescription");
        assert!(err.message.contains("control"));
        assert_eq!(
            validate_status_reason("r", &reason("X", "ünïcode ok ✓")),
            Ok(())
        );
    }

    #[test]
    fn parses_a_full_json_update_and_ignores_extra_members() {
        let u = parse_json(json!({
            "deviceId": "lamp-1",
            "executionId": "e-1",
            "status": "SUCCEEDED",
            "statusReason": {"reasonCode": "DONE", "reasonDescription": "all good"},
            "result": {
                "log": {"s": "ok"},
                "rebooted": {"b": true},
                "blob": {"bin": "AAEC/w=="},
                "nopad": {"bin": "AAEC/w"}
            },
            "clientToken": "tok-1"
        }))
        .unwrap();
        assert_eq!(u.status, ExecutionStatus::Succeeded);
        assert_eq!(u.status_reason, Some(reason("DONE", "all good")));
        assert_eq!(u.client_token.as_deref(), Some("tok-1"));
        let r = u.result.unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r["log"], ResultValue::S("ok".into()));
        assert_eq!(r["rebooted"], ResultValue::B(true));
        assert_eq!(r["blob"], ResultValue::Bin(vec![0, 1, 2, 255]));
        assert_eq!(r["nopad"], ResultValue::Bin(vec![0, 1, 2, 255]));

        // The minimal update; null optional members mean absent.
        let u = parse_json(json!({"status": "IN_PROGRESS", "statusReason": null, "result": null, "clientToken": null})).unwrap();
        assert_eq!(
            u,
            DeviceUpdate {
                status: ExecutionStatus::InProgress,
                status_reason: None,
                result: None,
                client_token: None
            }
        );
        let u =
            parse_json(json!({"status": "FAILED", "statusReason": {"reasonCode": "E1"}})).unwrap();
        assert_eq!(u.status_reason, Some(reason("E1", "")));
    }

    #[test]
    fn parses_cbor_with_byte_strings_and_base64_text() {
        let body = cbor_body(cmap(vec![
            ("status", text("FAILED")),
            ("statusReason", cmap(vec![("reasonCode", text("E_DISK"))])),
            (
                "result",
                cmap(vec![
                    ("raw", cmap(vec![("bin", Cbor::Bytes(vec![9, 8, 7]))])),
                    ("b64", cmap(vec![("bin", text("CQgH"))])),
                    (
                        "tagged",
                        cmap(vec![("bin", Cbor::Tag(22, Box::new(Cbor::Bytes(vec![1]))))]),
                    ),
                    ("flag", cmap(vec![("b", Cbor::Bool(false))])),
                    ("big", cmap(vec![("s", text(&"x".repeat(10_000)))])),
                ]),
            ),
            ("executionId", text("e")),
            ("clientToken", text("c-1")),
        ]));
        let u = parse_update(UpdateFormat::Cbor, &body).unwrap();
        assert_eq!(u.status, ExecutionStatus::Failed);
        assert_eq!(u.status_reason, Some(reason("E_DISK", "")));
        assert_eq!(u.client_token.as_deref(), Some("c-1"));
        let r = u.result.unwrap();
        assert_eq!(r["raw"], ResultValue::Bin(vec![9, 8, 7]));
        assert_eq!(r["b64"], ResultValue::Bin(vec![9, 8, 7]));
        assert_eq!(r["tagged"], ResultValue::Bin(vec![1]));
        assert_eq!(r["flag"], ResultValue::B(false));
        assert_eq!(r["big"], ResultValue::S("x".repeat(10_000)));
    }

    #[test]
    fn status_must_be_one_a_device_may_report() {
        for s in [
            "IN_PROGRESS",
            "SUCCEEDED",
            "FAILED",
            "REJECTED",
            "TIMED_OUT",
            "CREATED",
        ] {
            let u = parse_json(json!({ "status": s })).unwrap();
            assert_eq!(u.status.as_str(), s);
        }
        assert_invalid(parse_json(json!({})), "status", "required");
        assert_invalid(parse_json(json!({"status": null})), "status", "required");
        assert_invalid(
            parse_json(json!({"status": 3})),
            "status",
            "must be a string, got a number",
        );
        assert_invalid(
            parse_json(json!({"status": ["SUCCEEDED"]})),
            "status",
            "got an array",
        );
        assert_invalid(
            parse_json(json!({"status": "CANCELED"})),
            "status",
            "cannot report status \"CANCELED\"",
        );
        assert_invalid(
            parse_json(json!({"status": "succeeded"})),
            "status",
            "IN_PROGRESS, SUCCEEDED",
        );
        assert_invalid(parse_json(json!({"status": "DONE"})), "status", "\"DONE\"");
        let cbor = cbor_body(cmap(vec![("status", Cbor::Bytes(b"SUCCEEDED".to_vec()))]));
        assert_invalid(
            parse_update(UpdateFormat::Cbor, &cbor),
            "status",
            "got a byte string",
        );
    }

    #[test]
    fn undecodable_bodies_are_invalid_json() {
        let cases: Vec<(UpdateFormat, Vec<u8>, &str)> = vec![
            (UpdateFormat::Json, b"".to_vec(), "not valid JSON"),
            (
                UpdateFormat::Json,
                b"{\"status\":".to_vec(),
                "not valid JSON",
            ),
            (
                UpdateFormat::Json,
                b"{\"status\":\"SUCCEEDED\"} x".to_vec(),
                "not valid JSON",
            ),
            (
                UpdateFormat::Json,
                b"[1,2]".to_vec(),
                "must be a JSON object, got an array",
            ),
            (
                UpdateFormat::Json,
                b"\"SUCCEEDED\"".to_vec(),
                "got a string",
            ),
            (UpdateFormat::Json, vec![0xff, 0xfe], "not valid JSON"),
            (UpdateFormat::Cbor, b"".to_vec(), "not valid CBOR"),
            (UpdateFormat::Cbor, vec![0xa1, 0x66], "not valid CBOR"),
            (
                UpdateFormat::Cbor,
                cbor_body(Cbor::Array(vec![])),
                "must be a CBOR map, got an array",
            ),
            (
                UpdateFormat::Cbor,
                cbor_body(Cbor::Integer(5.into())),
                "got a number",
            ),
        ];
        for (format, body, needle) in cases {
            let err = parse_update(format, &body).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidJson, "{body:?}");
            assert_eq!(err.code.device_code(), "InvalidJson");
            assert!(
                err.message.contains(needle),
                "{:?} lacks {needle:?}",
                err.message
            );
        }
        // Trailing bytes after a CBOR item, and JSON sent on the CBOR topic.
        let mut body = cbor_body(cmap(vec![("status", text("SUCCEEDED"))]));
        body.push(0x00);
        let err = parse_update(UpdateFormat::Cbor, &body).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidJson);
        assert!(err.message.contains("1 bytes after"), "{}", err.message);
        let err = parse_update(UpdateFormat::Cbor, br#"{"status":"SUCCEEDED"}"#).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidJson);
    }

    #[test]
    fn body_size_limit() {
        let base = br#"{"status":"SUCCEEDED"}"#;
        let mut body = base.to_vec();
        body.resize(DEVICE_UPDATE_MAX_BYTES, b' ');
        assert_eq!(
            parse_update(UpdateFormat::Json, &body).unwrap().status,
            ExecutionStatus::Succeeded
        );
        body.push(b' ');
        let err = parse_update(UpdateFormat::Json, &body).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidRequest);
        assert!(err.message.contains(&DEVICE_UPDATE_MAX_BYTES.to_string()));
        assert_eq!(
            parse_update(UpdateFormat::Cbor, &body).unwrap_err().code,
            RejectionCode::InvalidRequest,
            "the size is checked before decoding"
        );
    }

    #[test]
    fn status_reason_shape_errors() {
        let with = |r: Json| parse_json(json!({"status": "FAILED", "statusReason": r}));
        assert_invalid(
            with(json!("E1")),
            "statusReason",
            "must be an object, got a string",
        );
        assert_invalid(with(json!({})), "statusReason.reasonCode", "required");
        assert_invalid(
            with(json!({"reasonDescription": "x"})),
            "statusReason.reasonCode",
            "required",
        );
        assert_invalid(
            with(json!({"reasonCode": 1})),
            "statusReason.reasonCode",
            "got a number",
        );
        assert_invalid(
            with(json!({"reasonCode": "E", "reasonDescription": true})),
            "statusReason.reasonDescription",
            "got a boolean",
        );
        assert_invalid(
            with(json!({"reasonCode": "bad code"})),
            "statusReason.reasonCode",
            "[A-Z0-9_-]+",
        );
        assert_invalid(
            with(json!({"reasonCode": "E", "reasonDescription": "a\u{0}b"})),
            "statusReason.reasonDescription",
            "control",
        );
        assert_invalid(
            with(json!({"reasonCode": "A".repeat(65)})),
            "statusReason.reasonCode",
            "64",
        );
    }

    #[test]
    fn result_shape_errors_and_limits() {
        let with = |r: Json| parse_json(json!({"status": "SUCCEEDED", "result": r}));
        assert_invalid(with(json!("ok")), "result", "must be an object");
        assert_invalid(with(json!({})), "result", "at least 1");
        let many: Map<String, Json> = (0..=RESULT_ENTRIES_MAX)
            .map(|i| (format!("k{i}"), json!({"b": true})))
            .collect();
        assert_invalid(
            with(Json::Object(many.clone())),
            "result",
            &RESULT_ENTRIES_MAX.to_string(),
        );
        let exactly: Map<String, Json> = many.into_iter().take(RESULT_ENTRIES_MAX).collect();
        assert_eq!(
            with(Json::Object(exactly)).unwrap().result.unwrap().len(),
            RESULT_ENTRIES_MAX
        );

        let k32 = "k".repeat(32);
        assert!(with(json!({ k32.clone(): {"s": "x"} })).is_ok());
        let k33 = "k".repeat(33);
        assert_invalid(
            with(json!({ k33.clone(): {"s": "x"} })),
            &format!("result.{k33}"),
            "1–32",
        );
        assert_invalid(with(json!({ "": {"s": "x"} })), "result.", "1–32");
        assert_invalid(with(json!({ "a.b": {"s": "x"} })), "result.a.b", "'.'");

        assert_invalid(
            with(json!({"k": "x"})),
            "result.k",
            "must be an object with one of",
        );
        assert_invalid(with(json!({"k": {}})), "result.k", "found none");
        assert_invalid(
            with(json!({"k": {"s": "x", "b": true}})),
            "result.k",
            "exactly one",
        );
        assert_invalid(
            with(json!({"k": {"i": 3}})),
            "result.k",
            "unknown result type \"i\"",
        );
        assert_invalid(
            with(json!({"k": {"S": "x"}})),
            "result.k",
            "unknown result type \"S\"",
        );
        assert_invalid(
            with(json!({"k": {"s": 1}})),
            "result.k.s",
            "must be a string",
        );
        assert_invalid(
            with(json!({"k": {"b": "true"}})),
            "result.k.b",
            "must be a boolean",
        );
        assert_invalid(
            with(json!({"k": {"bin": "not base64!"}})),
            "result.k.bin",
            "base64",
        );
        assert_invalid(
            with(json!({"k": {"bin": [1, 2]}})),
            "result.k.bin",
            "got an array",
        );
        // A null sibling is as good as absent.
        let u = with(json!({"k": {"s": "x", "b": null}})).unwrap();
        assert_eq!(u.result.unwrap()["k"], ResultValue::S("x".into()));
    }

    #[test]
    fn client_token_rules_and_cbor_keys() {
        let with = |t: Json| parse_json(json!({"status": "SUCCEEDED", "clientToken": t}));
        assert_eq!(
            with(json!("~!tok")).unwrap().client_token.as_deref(),
            Some("~!tok")
        );
        assert!(with(json!("t".repeat(64))).is_ok());
        assert_invalid(with(json!("t".repeat(65))), "clientToken", "1–64");
        assert_invalid(with(json!("")), "clientToken", "1–64");
        assert_invalid(with(json!("a b")), "clientToken", "printable ASCII");
        assert_invalid(with(json!(12)), "clientToken", "must be a string");

        let body = cbor_body(Cbor::Map(vec![
            (text("status"), text("SUCCEEDED")),
            (Cbor::Integer(1.into()), text("x")),
        ]));
        let err = parse_update(UpdateFormat::Cbor, &body).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidRequest);
        assert!(err.message.contains("text strings"), "{}", err.message);
        let body = cbor_body(cmap(vec![
            ("status", text("SUCCEEDED")),
            (
                "result",
                Cbor::Map(vec![(
                    Cbor::Bytes(vec![1]),
                    cmap(vec![("b", Cbor::Bool(true))]),
                )]),
            ),
        ]));
        assert_invalid(
            parse_update(UpdateFormat::Cbor, &body),
            "result",
            "text strings",
        );
    }

    #[test]
    fn peek_finds_the_token_of_a_bad_update() {
        let body = json_body(json!({"status": "NOPE", "clientToken": "c-9"}));
        assert!(parse_update(UpdateFormat::Json, &body).is_err());
        assert_eq!(
            peek_client_token(UpdateFormat::Json, &body).as_deref(),
            Some("c-9")
        );
        assert_eq!(peek_client_token(UpdateFormat::Json, b"{oops"), None);
        let bad_token = json_body(json!({"status": "SUCCEEDED", "clientToken": ""}));
        assert_eq!(peek_client_token(UpdateFormat::Json, &bad_token), None);
        let cbor = cbor_body(cmap(vec![("clientToken", text("c-3"))]));
        assert_eq!(
            peek_client_token(UpdateFormat::Cbor, &cbor).as_deref(),
            Some("c-3")
        );
    }

    fn decode_cbor(bytes: &[u8]) -> Cbor {
        ciborium::de::from_reader(bytes).unwrap()
    }

    #[test]
    fn accepted_replies_in_both_formats() {
        let id = ExecutionId::parse("e-1").unwrap();
        let v: Json =
            serde_json::from_slice(&encode_accepted(UpdateFormat::Json, &id, None)).unwrap();
        assert_eq!(v, json!({"executionId": "e-1"}));
        let v: Json =
            serde_json::from_slice(&encode_accepted(UpdateFormat::Json, &id, Some("t"))).unwrap();
        assert_eq!(v, json!({"executionId": "e-1", "clientToken": "t"}));
        let c = decode_cbor(&encode_accepted(UpdateFormat::Cbor, &id, Some("t")));
        assert_eq!(
            c,
            cmap(vec![
                ("executionId", text("e-1")),
                ("clientToken", text("t"))
            ])
        );
        let c = decode_cbor(&encode_accepted(UpdateFormat::Cbor, &id, None));
        assert_eq!(c, cmap(vec![("executionId", text("e-1"))]));
    }

    #[test]
    fn rejected_replies_carry_the_device_code() {
        let r = Rejection::new(RejectionCode::TerminalStateReached, "already SUCCEEDED");
        let v: Json =
            serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "e-1", Some("t"), &r))
                .unwrap();
        assert_eq!(
            v,
            json!({"error": "TerminalStateReached", "errorMessage": "already SUCCEEDED", "executionId": "e-1", "clientToken": "t"})
        );
        let hidden = Rejection::new(RejectionCode::PermissionDenied, "not yours");
        let v: Json =
            serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "e-2", None, &hidden))
                .unwrap();
        assert_eq!(v["error"], "ResourceNotFound");
        assert!(v.get("clientToken").is_none());
        let throttled = Rejection::new(RejectionCode::QuotaExceeded, "slow down");
        let c = decode_cbor(&encode_rejected(
            UpdateFormat::Cbor,
            "e-3",
            None,
            &throttled,
        ));
        assert_eq!(
            c,
            cmap(vec![
                ("error", text("RequestThrottled")),
                ("errorMessage", text("slow down")),
                ("executionId", text("e-3")),
            ])
        );
        // The execution id of an unparsable topic may be anything; it is still encoded.
        let v: Json =
            serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "bad\"id", None, &r))
                .unwrap();
        assert_eq!(v["executionId"], "bad\"id");
    }

    #[test]
    fn status_events_have_the_reference_fields_plus_result() {
        let reason = reason("E_HOT", "");
        let mut result = BTreeMap::new();
        result.insert("log".to_string(), ResultValue::S("x".into()));
        result.insert("ok".to_string(), ResultValue::B(false));
        result.insert("raw".to_string(), ResultValue::Bin(vec![0xff, 0]));
        let event = StatusEvent {
            execution_id: "e-1",
            status: ExecutionStatus::Failed,
            status_reason: Some(&reason),
            command_arn: "arn:aws:iot:local:000000000000:command/reboot",
            target_arn: "arn:aws:iot:local:000000000000:thing/lamp",
            timestamp: 1_700_000_000_123,
            result: Some(&result),
        };
        let v: Json = serde_json::from_slice(&encode_status_event(&event)).unwrap();
        assert_eq!(
            v,
            json!({
                "executionId": "e-1",
                "status": "FAILED",
                "statusReason": {"reasonCode": "E_HOT"},
                "eventType": "COMMAND_EXECUTION",
                "commandArn": "arn:aws:iot:local:000000000000:command/reboot",
                "targetArn": "arn:aws:iot:local:000000000000:thing/lamp",
                "timestamp": 1_700_000_000_123_i64,
                "result": {"log": {"s": "x"}, "ok": {"b": false}, "raw": {"bin": "/wA="}}
            })
        );
        assert!(v["timestamp"].is_i64());
        let bare = StatusEvent {
            status: ExecutionStatus::Created,
            status_reason: None,
            result: None,
            ..event
        };
        let v: Json = serde_json::from_slice(&encode_status_event(&bare)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 6);
        assert!(v.get("statusReason").is_none() && v.get("result").is_none());
        assert_eq!(v["status"], "CREATED");
    }

    #[test]
    fn cancel_notice() {
        let id = ExecutionId::parse("e-9").unwrap();
        let v: Json = serde_json::from_slice(&encode_cancel_notice(&id, None)).unwrap();
        assert_eq!(v, json!({"executionId": "e-9", "status": "CANCELED"}));
        let r = reason("$CANCELED", "operator request");
        let v: Json = serde_json::from_slice(&encode_cancel_notice(&id, Some(&r))).unwrap();
        assert_eq!(
            v,
            json!({"executionId": "e-9", "status": "CANCELED", "statusReason": {"reasonCode": "$CANCELED", "reasonDescription": "operator request"}})
        );
    }

    fn any_update() -> impl Strategy<Value = DeviceUpdate> {
        let status = prop::sample::select(vec![
            ExecutionStatus::Created,
            ExecutionStatus::InProgress,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::Rejected,
            ExecutionStatus::TimedOut,
        ]);
        let reason =
            prop::option::of(("[A-Z0-9_-]{1,64}", "[^\\p{C}]{0,40}").prop_map(|(c, d)| {
                StatusReason {
                    reason_code: c,
                    reason_description: d,
                }
            }));
        let value = prop_oneof![
            ".{0,40}".prop_map(ResultValue::S),
            any::<bool>().prop_map(ResultValue::B),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(ResultValue::Bin),
        ];
        let result = prop::option::of(prop::collection::btree_map(
            "[a-zA-Z0-9_-]{1,32}",
            value,
            1..8,
        ));
        let token = prop::option::of("[!-~]{1,64}");
        (status, reason, result, token).prop_map(|(status, status_reason, result, client_token)| {
            DeviceUpdate {
                status,
                status_reason,
                result,
                client_token,
            }
        })
    }

    #[test]
    fn refusals_quote_huge_members_cut() {
        let huge = "Q".repeat(100_000);
        let e = parse_json(json!({ "status": huge })).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("status"));
        assert!(e.message.contains("(100000 characters)"), "{}", e.message);
        assert!(e.message.len() < 300, "{}", e.message.len());

        let e =
            parse_json(json!({ "status": "SUCCEEDED", "result": { huge.clone(): { "s": "x" } } }))
                .unwrap_err();
        assert!(
            e.field.as_deref().is_some_and(|f| f.len() < 100),
            "{:?}",
            e.field
        );

        // Many members in a result value: a few are named, the rest counted.
        let members: serde_json::Map<String, Json> = (0..1_000)
            .map(|i| (format!("{i}{}", "k".repeat(100)), json!(1)))
            .collect();
        let e =
            parse_json(json!({ "status": "SUCCEEDED", "result": { "log": members } })).unwrap_err();
        assert!(e.message.contains("and 995 more"), "{}", e.message);
        assert!(e.message.len() < 1_000, "{}", e.message.len());
        let e =
            parse_json(json!({ "status": "SUCCEEDED", "result": { "log": { huge.clone(): 1 } } }))
                .unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
    }

    proptest! {
        #[test]
        fn updates_round_trip_in_both_formats(u in any_update()) {
            for format in [UpdateFormat::Json, UpdateFormat::Cbor] {
                let body = encode_update(format, &u);
                prop_assert_eq!(&parse_update(format, &body).unwrap(), &u);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), cbor in any::<bool>()) {
            let format = if cbor { UpdateFormat::Cbor } else { UpdateFormat::Json };
            if let Err(e) = parse_update(format, &body) {
                prop_assert!(matches!(e.code, RejectionCode::InvalidJson | RejectionCode::InvalidRequest));
            }
        }

        #[test]
        fn replies_round_trip(message in ".{0,80}", token in prop::option::of("[!-~]{1,64}"), cbor in any::<bool>()) {
            let format = if cbor { UpdateFormat::Cbor } else { UpdateFormat::Json };
            let r = Rejection::new(RejectionCode::InvalidStateTransition, message.clone());
            let bytes = encode_rejected(format, "e-1", token.as_deref(), &r);
            let decoded: BTreeMap<String, String> = match format {
                UpdateFormat::Json => serde_json::from_slice(&bytes).unwrap(),
                UpdateFormat::Cbor => ciborium::de::from_reader(bytes.as_slice()).unwrap(),
            };
            prop_assert_eq!(decoded.get("error").map(String::as_str), Some("InvalidStateTransition"));
            prop_assert_eq!(decoded.get("errorMessage"), Some(&message));
            prop_assert_eq!(decoded.get("executionId").map(String::as_str), Some("e-1"));
            prop_assert_eq!(decoded.get("clientToken"), token.as_ref());
            // A device that echoes our reply back as an update gets a precise refusal.
            let err = parse_update(format, &bytes).unwrap_err();
            prop_assert_eq!(err.field.as_deref(), Some("status"));
        }
    }
}
