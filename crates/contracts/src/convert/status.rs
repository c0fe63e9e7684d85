//! Domain and port errors as `tonic::Status` (STYLE 7): validation failures carry a
//! `google.rpc.BadRequest` field violation, rejections a `google.rpc.ErrorInfo`.
//!
//! Every status these functions make is [`bounded_status`]: its message and details travel in
//! gRPC metadata, which clients and proxies limit (often to 8 KiB or 16 KiB), so an error
//! that repeated a huge request field would make the answer itself fail. The domain already
//! quotes caller input cut (`fleetcmd_domain::error::quote`); this is the final guard, which
//! the gRPC servers also apply to every status they send (`fleetcmd_service_kit::grpc`).

use std::borrow::Cow;
use std::collections::HashMap;

use fleetcmd_domain::error::{Rejection, RejectionCode, ValidationError};
use fleetcmd_domain::ports::PortError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of fleetcmd's rejections.
pub const ERROR_DOMAIN: &str = "fleetcmd";

/// The most bytes of a status message fleetcmd sends; a longer one is cut by
/// [`bounded_status`].
pub const STATUS_MESSAGE_MAX_BYTES: usize = 1024;

/// The most bytes of a status's encoded details (`grpc-status-details-bin`, before base64)
/// fleetcmd sends. With the message, a status stays well under the 8 KiB of metadata that the
/// strictest common gRPC implementations accept.
pub const STATUS_DETAILS_MAX_BYTES: usize = 3072;

/// The most bytes of one field or description of a field violation.
const VIOLATION_TEXT_MAX_BYTES: usize = 512;

/// The most field violations kept when details have to be rebuilt.
const VIOLATIONS_MAX: usize = 4;

/// `text` cut to at most `max` bytes on a character boundary, saying how long it was.
fn cap_text(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let suffix = format!("… (cut, {} bytes in all)", text.len());
    let mut end = max.saturating_sub(suffix.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{suffix}", &text[..end]))
}

/// A status that fits in gRPC metadata: a message over [`STATUS_MESSAGE_MAX_BYTES`] is cut on
/// a character boundary (saying how long it was); details over
/// [`STATUS_DETAILS_MAX_BYTES`], or repeating a message that was cut, are rebuilt from their
/// `google.rpc.BadRequest` (at most 4 violations, each text cut) and `google.rpc.ErrorInfo`,
/// and dropped if even that is too large. A status within the limits is returned as it is.
pub fn bounded_status(status: Status) -> Status {
    let cut = status.message().len() > STATUS_MESSAGE_MAX_BYTES;
    if !cut && status.details().len() <= STATUS_DETAILS_MAX_BYTES {
        return status;
    }
    let message = cap_text(status.message(), STATUS_MESSAGE_MAX_BYTES).into_owned();
    if status.details().is_empty() {
        return Status::new(status.code(), message);
    }
    let old = status.get_error_details();
    let mut details = ErrorDetails::new();
    if let Some(info) = old.error_info() {
        details.set_error_info(
            cap_text(&info.reason, VIOLATION_TEXT_MAX_BYTES),
            cap_text(&info.domain, VIOLATION_TEXT_MAX_BYTES),
            HashMap::<String, String>::new(),
        );
    }
    if let Some(bad_request) = old.bad_request() {
        for v in bad_request.field_violations.iter().take(VIOLATIONS_MAX) {
            details.add_bad_request_violation(
                cap_text(&v.field, VIOLATION_TEXT_MAX_BYTES),
                cap_text(&v.description, VIOLATION_TEXT_MAX_BYTES),
            );
        }
    }
    let rebuilt = Status::with_error_details(status.code(), message.clone(), details);
    if rebuilt.details().len() <= STATUS_DETAILS_MAX_BYTES {
        rebuilt
    } else {
        Status::new(status.code(), message)
    }
}

/// INVALID_ARGUMENT with the message `invalid <field>: <rule>` and a `google.rpc.BadRequest`
/// field violation (`field`, rule) that clients can read with `tonic_types::StatusExt`.
pub fn validation_status(e: ValidationError) -> Status {
    let details = ErrorDetails::with_bad_request_violation(e.field.clone(), e.message.clone());
    bounded_status(Status::with_error_details(
        Code::InvalidArgument,
        e.to_string(),
        details,
    ))
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
    bounded_status(Status::with_error_details(
        rejection_grpc_code(r.code),
        r.message,
        details,
    ))
}

/// An infrastructure failure: retryable ones (unavailable, no responder, timeout) become
/// UNAVAILABLE with a message telling the caller to retry; the others INTERNAL.
pub fn port_status(e: PortError) -> Status {
    bounded_status(match &e {
        PortError::Timeout(_) => Status::unavailable(format!(
            "{e}; the outcome is unknown, retry with backoff (idempotent requests are safe to repeat)"
        )),
        PortError::InvalidPageToken(_) => Status::invalid_argument(e.to_string()),
        _ if e.is_retryable() => Status::unavailable(format!("{e}; retry with backoff")),
        _ => Status::internal(e.to_string()),
    })
}

/// The gRPC name of a status code (`INVALID_ARGUMENT`), as grpcurl and the gRPC docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
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
    fn huge_messages_and_details_are_bounded() {
        for len in [5_000, 100_000] {
            let field = format!("parameters[\"{}\"]", "k".repeat(len));
            let rule = format!("got {:?}", "v".repeat(len));
            let s = validation_status(ValidationError::new(field.clone(), rule));
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().len() <= STATUS_MESSAGE_MAX_BYTES, "{len}");
            assert!(s.message().starts_with("invalid parameters[\"kkk"), "{len}");
            assert!(s.message().contains("bytes in all)"), "{}", s.message());
            assert!(s.details().len() <= STATUS_DETAILS_MAX_BYTES, "{len}");
            let details = s.get_error_details();
            let v = &details
                .bad_request()
                .expect("the violation is kept")
                .field_violations[0];
            assert!(v.field.starts_with("parameters[\"kkk"), "{}", v.field);
            assert!(v.field.len() <= VIOLATION_TEXT_MAX_BYTES);
            assert!(v.description.len() <= VIOLATION_TEXT_MAX_BYTES);

            let r = rejection_status(Rejection::new(RejectionCode::Conflict, "é".repeat(len)));
            assert_eq!(r.code(), Code::AlreadyExists);
            assert!(r.message().len() <= STATUS_MESSAGE_MAX_BYTES);
            assert!(r.message().starts_with("éé"), "cut on a character boundary");
            let details = r.get_error_details();
            assert_eq!(details.error_info().unwrap().reason, "CONFLICT");

            let p = port_status(PortError::Backend("x".repeat(len)));
            assert_eq!(p.code(), Code::Internal);
            assert!(p.message().len() <= STATUS_MESSAGE_MAX_BYTES);
            let plain = bounded_status(Status::not_found("n".repeat(len)));
            assert_eq!(plain.code(), Code::NotFound);
            assert!(plain.message().len() <= STATUS_MESSAGE_MAX_BYTES);
            assert!(plain.details().is_empty());
        }
        // Within the limits a status is left alone.
        let s = validation_status(ValidationError::new("namespace", "only AWS-IoT"));
        assert_eq!(s.message(), "invalid namespace: only AWS-IoT");
        let again = bounded_status(s.clone());
        assert_eq!(
            (again.message(), again.details()),
            (s.message(), s.details())
        );
        assert_eq!(cap_text("short", 10), "short");
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
