//! The device side of the protocol: update messages (reference §3.2) in JSON or CBOR,
//! `/accepted` and `/rejected` replies, status-change events (§4) and fleetcmd's cancel notice.

use std::collections::BTreeMap;

use crate::error::{Rejection, ValidationError};
use crate::ids::ExecutionId;
use crate::model::{ExecutionStatus, ResultValue, StatusReason, TimestampMs};
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
pub fn validate_status_reason(_field: &str, _reason: &StatusReason) -> Result<(), ValidationError> {
    todo!("implemented by the device protocol work")
}

/// Parses an update body. Undecodable bodies → `InvalidJson`; decodable bodies with bad or
/// missing fields → `InvalidRequest` naming the field; unknown statuses → `InvalidRequest`.
/// `CREATED` parses (the state machine refuses it as a transition).
pub fn parse_update(_format: UpdateFormat, _body: &[u8]) -> Result<DeviceUpdate, Rejection> {
    todo!("implemented by the device protocol work")
}

/// `{"executionId": "...", "clientToken"?}` in the update's format.
pub fn encode_accepted(
    _format: UpdateFormat,
    _execution_id: &ExecutionId,
    _client_token: Option<&str>,
) -> Vec<u8> {
    todo!("implemented by the device protocol work")
}

/// `{"error": <code>, "errorMessage": "...", "executionId": "...", "clientToken"?}`.
pub fn encode_rejected(
    _format: UpdateFormat,
    _execution_id: &str,
    _client_token: Option<&str>,
    _rejection: &Rejection,
) -> Vec<u8> {
    todo!("implemented by the device protocol work")
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
pub fn encode_status_event(_event: &StatusEvent<'_>) -> Vec<u8> {
    todo!("implemented by the device protocol work")
}

/// JSON cancel notice: `{"executionId", "status": "CANCELED", "statusReason"?}`.
pub fn encode_cancel_notice(
    _execution_id: &ExecutionId,
    _reason: Option<&StatusReason>,
) -> Vec<u8> {
    todo!("implemented by the device protocol work")
}
