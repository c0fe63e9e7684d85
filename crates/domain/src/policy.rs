//! Who may do what: bearer tokens and per-token grants narrowed by command-id and target
//! patterns (e.g. may start `reboot` only on `thing/lab-*`).

use serde::Deserialize;

use crate::error::ValidationError;
use crate::ids::Target;

/// Every API action a grant can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateCommand,
    GetCommand,
    ListCommands,
    UpdateCommand,
    DeleteCommand,
    GetCommandExecution,
    ListCommandExecutions,
    DeleteCommandExecution,
    WatchCommandExecutions,
    StartCommandExecution,
    CancelCommandExecution,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Self::CreateCommand,
        Self::GetCommand,
        Self::ListCommands,
        Self::UpdateCommand,
        Self::DeleteCommand,
        Self::GetCommandExecution,
        Self::ListCommandExecutions,
        Self::DeleteCommandExecution,
        Self::WatchCommandExecutions,
        Self::StartCommandExecution,
        Self::CancelCommandExecution,
    ];

    /// The name used in policy files (the RPC name, e.g. `StartCommandExecution`).
    pub fn name(self) -> &'static str {
        todo!("implemented by the policy work")
    }
}

/// A policy file: a list of callers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub tokens: Vec<TokenPolicy>,
}

/// One caller: its bearer token and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPolicy {
    /// A name for logs and errors (never the token).
    pub name: String,
    pub token: String,
    pub allow: Vec<Grant>,
}

/// Actions allowed on commands and targets matching the patterns. Patterns use `*` (any run
/// of characters) and `?` (one character); targets are written `thing/<name>` or
/// `client/<id>`. Omitted patterns mean `*`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Action names, or `*` for all.
    pub actions: Vec<String>,
    #[serde(default = "star")]
    pub commands: Vec<String>,
    #[serde(default = "star")]
    pub targets: Vec<String>,
}

fn star() -> Vec<String> {
    vec!["*".to_string()]
}

impl Policy {
    /// Checks names, unique non-empty tokens (at least 16 characters), known action names
    /// and well-formed patterns.
    pub fn validate(&self) -> Result<(), ValidationError> {
        todo!("implemented by the policy work")
    }

    /// The caller holding `token`, compared in constant time.
    pub fn authenticate(&self, _token: &str) -> Option<&TokenPolicy> {
        todo!("implemented by the policy work")
    }
}

impl TokenPolicy {
    /// Whether this caller may perform `action` on `command` and `target`. `None` means the
    /// call is not narrowed to one command (or target), which only a `*` pattern covers.
    pub fn allows(
        &self,
        _action: Action,
        _command: Option<&str>,
        _target: Option<&Target>,
    ) -> bool {
        todo!("implemented by the policy work")
    }
}

/// `*` matches any run of characters (also empty), `?` exactly one.
pub fn glob_match(_pattern: &str, _text: &str) -> bool {
    todo!("implemented by the policy work")
}
