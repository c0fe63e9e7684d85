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
//! The `status` submodule maps domain and port errors to `tonic::Status` (STYLE 7): validation
//! failures carry a `google.rpc.BadRequest` field violation, rejections a `google.rpc.ErrorInfo`
//! whose reason tells apart codes that share a gRPC code.
//!
//! One submodule per kind of value, each with its tests; everything public is re-exported
//! here, so callers name it `convert::<item>` whichever file it lives in.

use std::fmt::Display;

use fleetcmd_domain::error::ValidationError;

mod arns;
mod commands;
mod credentials;
mod enums;
mod executions;
mod rollouts;
mod status;
mod targets;
#[cfg(test)]
mod test_support;
mod things;
mod time;
mod values;

pub use arns::Arns;
pub use commands::{
    command_parameter_from_pb, command_summary_to_pb, command_to_pb, create_command_response,
    operand_from_pb, update_command_response, value_condition_from_pb,
};
pub use credentials::credential_owner_from_pb;
pub use enums::{
    comparison_operator_from_pb, output_format_from_pb, page_size_from_pb, parameter_type_from_pb,
    sort_ascending_from_pb, status_from_pb, status_to_pb,
};
pub use executions::{
    execution_event_to_pb, execution_summary_to_pb, execution_to_pb, optional_status_reason,
    time_range_from_pb,
};
pub use rollouts::{
    failure_type_from_pb, rollout_from_pb, rollout_spec_from_pb, rollout_spec_from_pb_unchecked,
    rollout_spec_to_pb, rollout_status_from_pb, rollout_to_pb, start_rollout_from_pb,
};
pub use status::{
    ERROR_DOMAIN, STATUS_DETAILS_MAX_BYTES, STATUS_MESSAGE_MAX_BYTES, bounded_status, code_name,
    port_status, rejection_grpc_code, rejection_reason, rejection_status, validation_status,
};
pub use targets::{optional_target, require_target, target_kind_from_pb};
pub use things::{
    connectivity_event_to_pb, connectivity_to_pb, expected_version, group_members_query_from_pb,
    thing_group_to_pb, thing_to_pb, update_thing_from_pb,
};
pub use time::{opt_timestamp_from_ms, opt_timestamp_to_ms, timestamp_from_ms, timestamp_to_ms};
pub use values::{
    parameter_value_from_pb, parameters_from_pb, parameters_to_pb, parse_ul, result_value_from_pb,
    results_from_pb, results_to_pb,
};

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

// `prefix["key"]` for map entries: the key quoted and escaped as a Rust string, and cut after
// 64 characters, as the domain writes these paths.
use fleetcmd_domain::error::key_path;

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
// Closed enums

/// A closed domain enum and its proto twin, which adds only UNSPECIFIED (number 0): both
/// directions come from one table, so they cannot drift apart and the error's list of names
/// is the table's. It writes `From<Domain> for pb::Proto` and `$from_pb(field, value)`, where
/// UNSPECIFIED or an unknown number is an error naming `field` ([`bad_enum`]).
macro_rules! closed_enum {
    (
        $(#[$doc:meta])*
        $vis:vis fn $from_pb:ident: $domain:ident => pb::$proto:ident {
            $($d:ident => $p:ident),+ $(,)?
        }
    ) => {
        impl From<$domain> for $crate::pb::$proto {
            fn from(value: $domain) -> Self {
                match value {
                    $($domain::$d => Self::$p,)+
                }
            }
        }

        $(#[$doc])*
        $vis fn $from_pb(
            field: &str,
            value: i32,
        ) -> Result<$domain, ::fleetcmd_domain::error::ValidationError> {
            use $crate::pb::$proto as P;
            let expected = || [$(P::$p.as_str_name()),+].join(", ");
            match P::try_from(value) {
                $(Ok(P::$p) => Ok($domain::$d),)+
                Ok(P::Unspecified) => Err($crate::convert::bad_enum(
                    field,
                    &expected(),
                    P::Unspecified.as_str_name(),
                )),
                Err(_) => Err($crate::convert::bad_enum(field, &expected(), value)),
            }
        }
    };
}
// Also a path, so `targets` and `enums` can `use super::closed_enum` wherever they are declared
// (a `macro_rules!` is otherwise only visible below its definition).
use closed_enum;
