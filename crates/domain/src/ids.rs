//! Identifiers: commands, executions and targets, each validated on construction.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ValidationError, check_chars, ensure};
use crate::limits::{ID_MAX_CHARS, TARGET_ID_MAX_CHARS};

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn check_id(field: &str, value: &str) -> Result<(), ValidationError> {
    check_length(field, value, ID_MAX_CHARS)?;
    check_chars(field, value, is_id_char, "must match [a-zA-Z0-9_-]+")
}

/// Ids and target ids: not empty, at most `max` characters.
fn check_length(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    ensure(!value.is_empty(), field, || "must not be empty".into())?;
    let too_long = value.chars().count() > max;
    ensure(!too_long, field, || {
        format!("must be at most {max} characters")
    })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` against the id rules (1–64 chars of `[a-zA-Z0-9_-]`).
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_id($field, &value)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A command's id, unique per deployment.
    CommandId,
    "command_id"
);
id_type!(
    /// An execution's id (a UUID in practice).
    ExecutionId,
    "execution_id"
);

/// What kind of device a target is: a registered thing or a bare MQTT client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Thing,
    Client,
}

impl TargetKind {
    /// The topic segment: `things` or `clients`.
    pub fn topic_segment(self) -> &'static str {
        match self {
            Self::Thing => "things",
            Self::Client => "clients",
        }
    }
    /// The ARN resource type and the policy pattern prefix: `thing` or `client`.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Thing => "thing",
            Self::Client => "client",
        }
    }
}

/// One device: a thing (by thing name) or an MQTT client (by client id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    pub id: String,
}

impl Target {
    /// Validates a target id. Thing names follow the AWS pattern `[a-zA-Z0-9:_-]+`; client
    /// ids may hold any printable character that is legal in one MQTT topic level.
    pub fn new(kind: TargetKind, id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        let field = "target.id";
        check_length(field, &id, TARGET_ID_MAX_CHARS)?;
        let bad = match kind {
            TargetKind::Thing => id.chars().find(|c| !(is_id_char(*c) || *c == ':')),
            TargetKind::Client => id
                .chars()
                .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '+' | '#')),
        };
        if let Some(c) = bad {
            let rule = match kind {
                TargetKind::Thing => "a thing name must match [a-zA-Z0-9:_-]+",
                TargetKind::Client => {
                    "a client id must not contain '/', '+', '#', whitespace or control characters"
                }
            };
            return Err(ValidationError::new(field, format!("{rule}, found {c:?}")));
        }
        Ok(Self { kind, id })
    }

    pub fn thing(id: impl Into<String>) -> Result<Self, ValidationError> {
        Self::new(TargetKind::Thing, id)
    }

    pub fn client(id: impl Into<String>) -> Result<Self, ValidationError> {
        Self::new(TargetKind::Client, id)
    }

    /// `thing/<name>` or `client/<id>`: the form policies match against, and the routing key.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.kind.resource(), self.id)
    }

    /// Parses `thing/<name>` or `client/<id>`.
    pub fn parse_resource_name(s: &str) -> Result<Self, ValidationError> {
        match s.split_once('/') {
            Some(("thing", id)) => Self::thing(id),
            Some(("client", id)) => Self::client(id),
            _ => Err(ValidationError::new(
                "target",
                "expected thing/<name> or client/<id>",
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.resource(), self.id)
    }
}

/// A command's ARN-like name, used in events for wire compatibility.
pub fn command_arn(region: &str, account: &str, id: &CommandId) -> String {
    format!("arn:aws:iot:{region}:{account}:command/{id}")
}

/// A target's ARN-like name, used in events for wire compatibility.
pub fn target_arn(region: &str, account: &str, target: &Target) -> String {
    format!(
        "arn:aws:iot:{region}:{account}:{}/{}",
        target.kind.resource(),
        target.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_enforce_length_and_pattern() {
        assert!(CommandId::parse("reboot_v2-1").is_ok());
        assert_eq!(CommandId::parse("").unwrap_err().field, "command_id");
        assert!(CommandId::parse("a".repeat(64)).is_ok());
        assert!(
            CommandId::parse("a".repeat(65))
                .unwrap_err()
                .message
                .contains("64")
        );
        assert!(CommandId::parse("a b").unwrap_err().message.contains("' '"));
        assert!(ExecutionId::parse("x/y").is_err());
    }

    #[test]
    fn targets_reject_topic_metacharacters() {
        assert!(Target::thing("lab-1:a").is_ok());
        assert!(Target::thing("lab/1").is_err());
        assert!(Target::client("dev+1").is_err());
        assert!(Target::client("dev#1").is_err());
        assert!(Target::client("dev.1@x").is_ok());
        assert!(Target::client("").is_err());
        assert!(Target::thing("a".repeat(129)).is_err());
    }

    proptest! {
        #[test]
        fn resource_name_round_trips(id in "[a-zA-Z0-9:_-]{1,128}", thing in any::<bool>()) {
            let t = if thing { Target::thing(id).unwrap() } else { Target::client(id).unwrap() };
            prop_assert_eq!(Target::parse_resource_name(&t.resource_name()).unwrap(), t);
        }
    }
}
