//! Payload templates (reference §1.1): typed parameters with defaults and value conditions,
//! placeholders `${aws:iot:commandexecution::parameter:<name>}` and
//! `${aws:iot:commandexecution::executionTimeoutSec}`, rendered to JSON or CBOR.

use std::collections::BTreeMap;

use crate::error::ValidationError;
use crate::model::{CommandParameter, ParameterValue, PayloadTemplate};

pub const PARAMETER_PLACEHOLDER_PREFIX: &str = "${aws:iot:commandexecution::parameter:";
pub const TIMEOUT_PLACEHOLDER: &str = "${aws:iot:commandexecution::executionTimeoutSec}";

/// Validates parameter definitions at create time: names (1–192, `^[.$a-zA-Z0-9_-]+$`,
/// unique), default and fixed values of the declared type, conditions allowed for the type
/// with 1–10 well-formed operands.
pub fn validate_parameters(_parameters: &[CommandParameter]) -> Result<(), ValidationError> {
    todo!("implemented by the template work")
}

/// Validates a template at create time: at most 32,768 chars, valid JSON, at least one
/// placeholder, every parameter placeholder names a declared parameter, no unknown
/// `${aws:iot:commandexecution::...}` placeholder.
pub fn validate_template(
    _template: &str,
    _parameters: &[CommandParameter],
) -> Result<(), ValidationError> {
    todo!("implemented by the template work")
}

/// Resolves the values to use at start: the request's value, else the fixed `value`, else
/// `default_value`; unknown names, wrong types, missing values and failed conditions are
/// errors naming the parameter.
pub fn resolve(
    _parameters: &[CommandParameter],
    _given: &BTreeMap<String, ParameterValue>,
) -> Result<BTreeMap<String, ParameterValue>, ValidationError> {
    todo!("implemented by the template work")
}

/// Renders the template with resolved values into the output format's bytes.
pub fn render(
    _template: &PayloadTemplate,
    _values: &BTreeMap<String, ParameterValue>,
    _timeout_secs: u64,
) -> Result<Vec<u8>, ValidationError> {
    todo!("implemented by the template work")
}
