//! Domain and port errors as `tonic::Status` (STYLE 7): validation failures carry a
//! `google.rpc.BadRequest` field violation, rejections a `google.rpc.ErrorInfo`.

use std::collections::HashMap;

use fleetcmd_domain::error::{Rejection, RejectionCode, ValidationError};
use fleetcmd_domain::ports::PortError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
    use fleetcmd_domain::start::StartRequest;

    use super::*;
    use crate::convert::test_support::start_req;
    use crate::pb;

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
