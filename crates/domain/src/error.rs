//! Domain errors: validation failures and rejections of an input by the state machine.
//! These are not infrastructure failures; the gRPC and MQTT layers map them to their codes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The most characters of caller input that an error message repeats. Messages travel back
/// in gRPC metadata and MQTT replies, whose size is limited: a 5,000-character namespace
/// echoed whole would make the answer itself fail.
pub const QUOTE_MAX_CHARS: usize = 64;

/// Caller input cut to [`QUOTE_MAX_CHARS`] characters, with `…` when it was cut. For field
/// paths and texts that a message wraps itself; [`quote`] is the form for messages.
pub fn truncate(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
    }
}

/// Caller input as an error message quotes it: escaped between double quotes (as `{:?}`
/// writes a string), and when longer than [`QUOTE_MAX_CHARS`] characters cut there, with an
/// ellipsis and the original length: `"aaaa…" (5000 characters)`.
pub fn quote(s: &str) -> String {
    match truncate(s) {
        Cow::Borrowed(s) => format!("{s:?}"),
        Cow::Owned(cut) => format!("{cut:?} ({} characters)", s.chars().count()),
    }
}

/// The field path of a map entry, `prefix["key"]`, with the key escaped and cut as by
/// [`truncate`] (so a path never carries more than [`QUOTE_MAX_CHARS`] characters of it).
pub fn key_path(prefix: &str, key: &str) -> String {
    format!("{prefix}[{:?}]", truncate(key))
}

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

/// `Ok` when `ok`, else the violation of `field` that `message` describes: one line per
/// check of a validation, with the message built only when the check fails.
pub fn ensure(
    ok: bool,
    field: impl Into<String>,
    message: impl FnOnce() -> String,
) -> Result<(), ValidationError> {
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, message()))
    }
}

/// Refuses the first character of `value` that `allowed` does not accept, as
/// `"<rule>, found <the character>"`.
pub fn check_chars(
    field: impl Into<String>,
    value: &str,
    allowed: impl Fn(char) -> bool,
    rule: &str,
) -> Result<(), ValidationError> {
    match value.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(ValidationError::new(field, format!("{rule}, found {c:?}"))),
        None => Ok(()),
    }
}

/// Why the state machine refused an input. The codes cover both the device-facing error
/// codes of AWS IoT Commands (`docs/device-protocol.md`, Replies) and the API-facing ones.
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
    /// The device-facing error code string of AWS IoT Commands (`/rejected` replies).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("AWS-IoT-FleetWise"), "\"AWS-IoT-FleetWise\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        let exact = "x".repeat(QUOTE_MAX_CHARS);
        assert_eq!(quote(&exact), format!("\"{exact}\""));
        assert!(matches!(truncate(&exact), Cow::Borrowed(_)));
    }

    #[test]
    fn long_input_is_cut_with_its_length() {
        let long = "n".repeat(5_000);
        let q = quote(&long);
        assert_eq!(
            q,
            format!("\"{}…\" (5000 characters)", "n".repeat(QUOTE_MAX_CHARS))
        );
        // Characters, not bytes: a multi-byte input is cut on a character boundary.
        let wide = "é".repeat(100);
        let cut = truncate(&wide);
        assert_eq!(cut.chars().count(), QUOTE_MAX_CHARS + 1);
        assert!(cut.ends_with("é…"));
        assert!(quote(&wide).ends_with("(100 characters)"));
        // Whatever the input, the quote stays small.
        let huge = "\u{1}".repeat(100_000);
        assert!(quote(&huge).len() < 1_000, "{}", quote(&huge).len());
    }

    #[test]
    fn key_paths_are_escaped_and_bounded() {
        assert_eq!(key_path("parameters", "temp"), "parameters[\"temp\"]");
        assert_eq!(key_path("parameters", "a\"b"), "parameters[\"a\\\"b\"]");
        let p = key_path("parameters", &"k".repeat(100_000));
        assert_eq!(
            p,
            format!("parameters[\"{}…\"]", "k".repeat(QUOTE_MAX_CHARS))
        );
    }
}
