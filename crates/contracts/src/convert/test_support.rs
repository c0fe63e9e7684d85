//! Builders shared by the conversion tests: field of an error, wire values and a start request.

use std::collections::HashMap;

use fleetcmd_domain::error::ValidationError;
use prost_types::Timestamp;

use crate::pb;

/// The field a failed conversion names (panics if it succeeded).
pub(super) fn err_field<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> String {
    r.unwrap_err().field
}

/// A parameter value with `v` set.
pub(super) fn pv(v: pb::parameter_value::Value) -> pb::ParameterValue {
    pb::ParameterValue { value: Some(v) }
}

/// A UL parameter value holding the string `s`, valid or not.
pub(super) fn ul(s: &str) -> pb::ParameterValue {
    pv(pb::parameter_value::Value::Ul(s.into()))
}

/// A protobuf timestamp, `nanos` unchecked.
pub(super) fn ts(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

/// A wire target of kind THING.
pub(super) fn pb_thing(id: &str) -> pb::Target {
    pb::Target {
        kind: pb::TargetKind::Thing as i32,
        id: id.into(),
    }
}

/// A valid StartCommandExecution request, for tests to spoil one field at a time.
pub(super) fn start_req() -> pb::StartCommandExecutionRequest {
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
