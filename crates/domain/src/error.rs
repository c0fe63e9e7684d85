//! Domain errors: validation failures and rejections of an input by the state machine.
//! These are not infrastructure failures; the gRPC and MQTT layers map them to their codes.

use serde::{Deserialize, Serialize};

/// A field failed validation. `field` is the API field path (e.g. `payload.content_type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why the state machine refused an input. The codes cover both the device-facing error
/// codes of the reference (§3.2) and the API-facing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectionCode {
    /// Malformed or out-of-limit input (gRPC INVALID_ARGUMENT, device `InvalidRequest`).
    InvalidRequest,
    /// A device body that is not valid JSON/CBOR of the expected shape.
    InvalidJson,
    /// The topic does not name a known execution form.
    InvalidTopic,
    /// The status change is not allowed from the current status.
    InvalidStateTransition,
    /// The execution already reached a terminal status.
    TerminalStateReached,
    /// No such command or execution (or not this device's).
    ResourceNotFound,
    /// The resource already exists (create) or a client token was reused for a different request.
    Conflict,
    /// A precondition on state failed (deprecated command, non-terminal delete, ...).
    FailedPrecondition,
    /// A quota or rate limit was hit.
    QuotaExceeded,
    /// The caller may not do this.
    PermissionDenied,
    /// A concurrent update raced this one; retry.
    DataConflict,
    /// Something failed inside fleetcmd; retry.
    InternalError,
}

impl RejectionCode {
    /// The device-facing error code string of the reference (`/rejected` replies).
    pub fn device_code(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::FailedPrecondition | Self::Conflict => "InvalidRequest",
            Self::InvalidJson => "InvalidJson",
            Self::InvalidTopic => "InvalidTopic",
            Self::InvalidStateTransition => "InvalidStateTransition",
            Self::TerminalStateReached => "TerminalStateReached",
            Self::ResourceNotFound | Self::PermissionDenied => "ResourceNotFound",
            Self::QuotaExceeded => "RequestThrottled",
            Self::DataConflict => "DataConflict",
            Self::InternalError => "InternalError",
        }
    }
}

/// An input refused by the domain, with a precise, human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
    /// The offending field, for validation failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: RejectionCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Self {
        Self {
            code: RejectionCode::InvalidRequest,
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}
