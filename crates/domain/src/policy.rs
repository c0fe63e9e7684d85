//! Who may do what: bearer tokens and per-token grants narrowed by command-id and target
//! patterns (e.g. may start `reboot` only on `thing/lab-*`).

use serde::Deserialize;

use crate::error::{ValidationError, quote};
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
    CreateThing,
    GetThing,
    ListThings,
    UpdateThing,
    DeleteThing,
    CreateThingCertificate,
    RegisterThingCertificate,
    ListThingCertificates,
    RevokeThingCertificate,
    GetCertificateRevocationList,
    CreateThingPassword,
    RegisterCaCertificate,
    ListCaCertificates,
    GetConnectivity,
    WatchConnectivity,
    CreateThingGroup,
    DescribeThingGroup,
    ListThingGroups,
    DeleteThingGroup,
    AddThingToThingGroup,
    RemoveThingFromThingGroup,
    ListThingsInThingGroup,
    StartRollout,
    GetRollout,
    ListRollouts,
    CancelRollout,
    WatchRollout,
}

impl Action {
    pub const ALL: [Action; 38] = [
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
        Self::CreateThing,
        Self::GetThing,
        Self::ListThings,
        Self::UpdateThing,
        Self::DeleteThing,
        Self::CreateThingCertificate,
        Self::RegisterThingCertificate,
        Self::ListThingCertificates,
        Self::RevokeThingCertificate,
        Self::GetCertificateRevocationList,
        Self::CreateThingPassword,
        Self::RegisterCaCertificate,
        Self::ListCaCertificates,
        Self::GetConnectivity,
        Self::WatchConnectivity,
        Self::CreateThingGroup,
        Self::DescribeThingGroup,
        Self::ListThingGroups,
        Self::DeleteThingGroup,
        Self::AddThingToThingGroup,
        Self::RemoveThingFromThingGroup,
        Self::ListThingsInThingGroup,
        Self::StartRollout,
        Self::GetRollout,
        Self::ListRollouts,
        Self::CancelRollout,
        Self::WatchRollout,
    ];

    /// The name used in policy files (the RPC name, e.g. `StartCommandExecution`).
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateCommand => "CreateCommand",
            Self::GetCommand => "GetCommand",
            Self::ListCommands => "ListCommands",
            Self::UpdateCommand => "UpdateCommand",
            Self::DeleteCommand => "DeleteCommand",
            Self::GetCommandExecution => "GetCommandExecution",
            Self::ListCommandExecutions => "ListCommandExecutions",
            Self::DeleteCommandExecution => "DeleteCommandExecution",
            Self::WatchCommandExecutions => "WatchCommandExecutions",
            Self::StartCommandExecution => "StartCommandExecution",
            Self::CancelCommandExecution => "CancelCommandExecution",
            Self::CreateThing => "CreateThing",
            Self::GetThing => "GetThing",
            Self::ListThings => "ListThings",
            Self::UpdateThing => "UpdateThing",
            Self::DeleteThing => "DeleteThing",
            Self::CreateThingCertificate => "CreateThingCertificate",
            Self::RegisterThingCertificate => "RegisterThingCertificate",
            Self::ListThingCertificates => "ListThingCertificates",
            Self::RevokeThingCertificate => "RevokeThingCertificate",
            Self::GetCertificateRevocationList => "GetCertificateRevocationList",
            Self::CreateThingPassword => "CreateThingPassword",
            Self::RegisterCaCertificate => "RegisterCaCertificate",
            Self::ListCaCertificates => "ListCaCertificates",
            Self::GetConnectivity => "GetConnectivity",
            Self::WatchConnectivity => "WatchConnectivity",
            Self::CreateThingGroup => "CreateThingGroup",
            Self::DescribeThingGroup => "DescribeThingGroup",
            Self::ListThingGroups => "ListThingGroups",
            Self::DeleteThingGroup => "DeleteThingGroup",
            Self::AddThingToThingGroup => "AddThingToThingGroup",
            Self::RemoveThingFromThingGroup => "RemoveThingFromThingGroup",
            Self::ListThingsInThingGroup => "ListThingsInThingGroup",
            Self::StartRollout => "StartRollout",
            Self::GetRollout => "GetRollout",
            Self::ListRollouts => "ListRollouts",
            Self::CancelRollout => "CancelRollout",
            Self::WatchRollout => "WatchRollout",
        }
    }

    /// The action a policy file names (exact, case-sensitive), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The minimum length of a bearer token: shorter ones are too easy to guess.
pub const TOKEN_MIN_CHARS: usize = 16;
/// The pattern that matches everything, and the only one that covers a call not narrowed to
/// one command or target.
pub const ANY: &str = "*";

/// A policy file: a list of callers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub tokens: Vec<TokenPolicy>,
}

/// One caller: how it proves who it is, and what it may do. It proves it with a bearer
/// token (given in clear, or as its SHA-256 so that the file holds no secret) or with a
/// client certificate over TLS whose subject CN is `certificate_subject`; at least one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenPolicy {
    /// A name for logs and errors (never the token).
    pub name: String,
    #[serde(default)]
    pub token: Option<String>,
    /// Lowercase hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// The subject CN of a client certificate from fleetcmd's CA (mutual TLS on the API).
    #[serde(default)]
    pub certificate_subject: Option<String>,
    pub allow: Vec<Grant>,
}

/// Lowercase hex SHA-256: the form `token_sha256` is written in.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        if self.tokens.is_empty() {
            return Err(ValidationError::new(
                "tokens",
                "a policy must list at least one token",
            ));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("tokens[{i}]");
            if t.name.trim().is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    "must not be empty",
                ));
            }
            if let Some(c) = t.name.chars().find(|c| c.is_control()) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("must not contain control characters, found {c:?}"),
                ));
            }
            if t.token.is_none() && t.token_sha256.is_none() && t.certificate_subject.is_none() {
                return Err(ValidationError::new(
                    format!("{at}.token"),
                    format!(
                        "{} needs a token, a token_sha256 or a certificate_subject",
                        quote(&t.name)
                    ),
                ));
            }
            if let Some(token) = &t.token {
                check_token(&at, &t.name, token)?;
            }
            if let Some(digest) = &t.token_sha256
                && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(ValidationError::new(
                    format!("{at}.token_sha256"),
                    format!(
                        "the token_sha256 of {} must be 64 hex digits (a SHA-256)",
                        quote(&t.name)
                    ),
                ));
            }
            if let Some(subject) = &t.certificate_subject
                && (subject.trim().is_empty() || subject.chars().any(char::is_control))
            {
                return Err(ValidationError::new(
                    format!("{at}.certificate_subject"),
                    "must be a certificate's subject CN, not empty, without control characters",
                ));
            }
            let digest = t.digest();
            for (j, earlier) in self.tokens[..i].iter().enumerate() {
                if earlier.name == t.name {
                    return Err(ValidationError::new(
                        format!("{at}.name"),
                        format!("duplicate name {} (also tokens[{j}])", quote(&t.name)),
                    ));
                }
                if digest.is_some() && earlier.digest() == digest {
                    return Err(ValidationError::new(
                        format!("{at}.token"),
                        format!(
                            "{} uses the same token as {} (tokens[{j}]); tokens must be unique",
                            quote(&t.name),
                            quote(&earlier.name)
                        ),
                    ));
                }
                if t.certificate_subject.is_some()
                    && earlier.certificate_subject == t.certificate_subject
                {
                    return Err(ValidationError::new(
                        format!("{at}.certificate_subject"),
                        format!(
                            "{} and {} (tokens[{j}]) name the same certificate subject",
                            quote(&t.name),
                            quote(&earlier.name)
                        ),
                    ));
                }
            }
            for (j, g) in t.allow.iter().enumerate() {
                g.validate(&format!("{at}.allow[{j}]"))?;
            }
        }
        Ok(())
    }

    /// The caller holding `token`, compared in constant time.
    ///
    /// Every configured token (or digest) is compared in full, whatever matches, so the time
    /// taken does not tell which token (or how much of one) the presented value shares.
    pub fn authenticate(&self, token: &str) -> Option<&TokenPolicy> {
        let digest = token_sha256(token);
        let mut found = None;
        for t in &self.tokens {
            let clear = t
                .token
                .as_ref()
                .is_some_and(|k| constant_time_eq(k.as_bytes(), token.as_bytes()));
            let hashed = t.token_sha256.as_ref().is_some_and(|d| {
                constant_time_eq(d.to_ascii_lowercase().as_bytes(), digest.as_bytes())
            });
            if (clear | hashed) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }

    /// The caller whose client certificate has the subject CN `subject`.
    pub fn authenticate_subject(&self, subject: &str) -> Option<&TokenPolicy> {
        self.tokens
            .iter()
            .find(|t| t.certificate_subject.as_deref() == Some(subject))
    }
}

/// A token in clear: long enough, and printable ASCII (it travels in an HTTP header).
/// Messages about tokens name the caller, never the secret.
fn check_token(at: &str, name: &str, token: &str) -> Result<(), ValidationError> {
    let len = token.chars().count();
    if len < TOKEN_MIN_CHARS {
        return Err(ValidationError::new(
            format!("{at}.token"),
            format!(
                "the token of {} must be at least {TOKEN_MIN_CHARS} characters, it has {len}",
                quote(name)
            ),
        ));
    }
    if token.chars().any(|c| !('\x21'..='\x7e').contains(&c)) {
        return Err(ValidationError::new(
            format!("{at}.token"),
            format!(
                "the token of {} must be printable ASCII without spaces (it travels in an HTTP header)",
                quote(name)
            ),
        ));
    }
    Ok(())
}

impl TokenPolicy {
    /// The SHA-256 of this caller's token, however it is given (`None`: no token).
    fn digest(&self) -> Option<String> {
        match (&self.token, &self.token_sha256) {
            (Some(t), _) => Some(token_sha256(t)),
            (None, Some(d)) => Some(d.to_ascii_lowercase()),
            (None, None) => None,
        }
    }
}

impl Grant {
    fn validate(&self, at: &str) -> Result<(), ValidationError> {
        if self.actions.is_empty() {
            return Err(ValidationError::new(
                format!("{at}.actions"),
                "must list at least one action (or \"*\")",
            ));
        }
        for (k, a) in self.actions.iter().enumerate() {
            if a != ANY && Action::from_name(a).is_none() {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
                return Err(ValidationError::new(
                    format!("{at}.actions[{k}]"),
                    format!(
                        "unknown action {}; expected \"*\" or one of {}",
                        quote(a),
                        known.join(", ")
                    ),
                ));
            }
        }
        check_patterns(&format!("{at}.commands"), &self.commands)?;
        check_patterns(&format!("{at}.targets"), &self.targets)?;
        for (k, p) in self.targets.iter().enumerate() {
            if p != ANY && !p.starts_with("thing/") && !p.starts_with("client/") {
                return Err(ValidationError::new(
                    format!("{at}.targets[{k}]"),
                    format!(
                        "target pattern {} must start with \"thing/\" or \"client/\", or be \"*\"",
                        quote(p)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn covers(&self, action: Action, command: Option<&str>, target: Option<&str>) -> bool {
        let covered = |patterns: &[String], value: Option<&str>| match value {
            Some(v) => patterns.iter().any(|p| glob_match(p, v)),
            None => patterns.iter().any(|p| p == ANY),
        };
        self.actions.iter().any(|a| a == ANY || a == action.name())
            && covered(&self.commands, command)
            && covered(&self.targets, target)
    }
}

fn check_patterns(field: &str, patterns: &[String]) -> Result<(), ValidationError> {
    if patterns.is_empty() {
        return Err(ValidationError::new(
            field,
            "must list at least one pattern (omit the field for \"*\")",
        ));
    }
    for (k, p) in patterns.iter().enumerate() {
        if p.is_empty() {
            return Err(ValidationError::new(
                format!("{field}[{k}]"),
                "a pattern must not be empty",
            ));
        }
        if let Some(c) = p.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValidationError::new(
                format!("{field}[{k}]"),
                format!(
                    "pattern {} must not contain whitespace or control characters, found {c:?}",
                    quote(p)
                ),
            ));
        }
    }
    Ok(())
}

/// Compares two byte strings in time that depends only on the length of `expected` (the
/// secret), never on where the first difference is or on the length of `given`.
pub fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(e ^ g);
    }
    std::hint::black_box(diff) == 0
}

impl TokenPolicy {
    /// Whether this caller may perform `action` on `command` and `target`. `None` means the
    /// call is not narrowed to one command (or target), which only a `*` pattern covers.
    pub fn allows(&self, action: Action, command: Option<&str>, target: Option<&Target>) -> bool {
        let target = target.map(Target::resource_name);
        self.allow
            .iter()
            .any(|g| g.covers(action, command, target.as_deref()))
    }
}

/// Which targets a caller's grants cover for one action on one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetGrant {
    /// No grant covers the action on the command.
    Denied,
    /// Every target (a covering grant's targets include `*`).
    All,
    /// The targets matching any of these patterns (the covering grants' target patterns,
    /// each once, in policy order).
    Only(Vec<String>),
}

impl TokenPolicy {
    /// The targets this caller may reach with `action` on `command`: what a call that
    /// reaches many targets at once (a rollout to a group or a query) is narrowed to, so a
    /// grant on `thing/lab-*` never reaches other things through a group.
    pub fn target_grant(&self, action: Action, command: &str) -> TargetGrant {
        let mut patterns: Vec<String> = Vec::new();
        for g in &self.allow {
            let names_action = g.actions.iter().any(|a| a == ANY || a == action.name());
            if !names_action || !g.commands.iter().any(|p| glob_match(p, command)) {
                continue;
            }
            if g.targets.iter().any(|t| t == ANY) {
                return TargetGrant::All;
            }
            for t in &g.targets {
                if !patterns.contains(t) {
                    patterns.push(t.clone());
                }
            }
        }
        if patterns.is_empty() {
            TargetGrant::Denied
        } else {
            TargetGrant::Only(patterns)
        }
    }
}

/// `*` matches any run of characters (also empty), `?` exactly one.
///
/// Iterative with a single backtrack point (the last `*` seen), so it runs in
/// O(pattern × text) at worst, never exponentially, whatever the pattern.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry from there.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPS_TOKEN: &str = "ops-0123456789abcdef";
    const LAB_TOKEN: &str = "lab-0123456789abcdef";

    fn grant(actions: &[&str], commands: &[&str], targets: &[&str]) -> Grant {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect();
        Grant {
            actions: v(actions),
            commands: v(commands),
            targets: v(targets),
        }
    }

    fn policy() -> Policy {
        Policy {
            tokens: vec![
                TokenPolicy {
                    name: "ops".into(),
                    token: Some(OPS_TOKEN.into()),
                    allow: vec![grant(&["*"], &["*"], &["*"])],
                    ..TokenPolicy::default()
                },
                TokenPolicy {
                    name: "lab".into(),
                    token: Some(LAB_TOKEN.into()),
                    allow: vec![
                        grant(&["StartCommandExecution"], &["reboot"], &["thing/lab-*"]),
                        grant(&["GetCommand", "ListCommands"], &["*"], &["*"]),
                    ],
                    ..TokenPolicy::default()
                },
            ],
        }
    }

    fn thing(id: &str) -> Target {
        Target::thing(id).unwrap()
    }

    #[test]
    fn action_names_are_the_rpc_names_and_parse_back() {
        assert_eq!(
            Action::StartCommandExecution.name(),
            "StartCommandExecution"
        );
        assert_eq!(Action::ListCommands.name(), "ListCommands");
        let names: std::collections::HashSet<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), Action::ALL.len(), "names are unique");
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
        }
        assert_eq!(Action::from_name("startCommandExecution"), None);
        assert_eq!(Action::from_name("*"), None);
    }

    #[test]
    fn reboot_only_on_lab_things() {
        let p = policy();
        let lab = p.authenticate(LAB_TOKEN).unwrap();
        assert_eq!(lab.name, "lab");
        let start = Action::StartCommandExecution;
        assert!(lab.allows(start, Some("reboot"), Some(&thing("lab-1"))));
        assert!(lab.allows(start, Some("reboot"), Some(&thing("lab-"))));
        assert!(!lab.allows(start, Some("reboot"), Some(&thing("prod-1"))));
        assert!(!lab.allows(start, Some("reboot"), Some(&thing("xlab-1"))));
        // A client with the same id is another target.
        assert!(!lab.allows(
            start,
            Some("reboot"),
            Some(&Target::client("lab-1").unwrap())
        ));
        assert!(!lab.allows(start, Some("reboot2"), Some(&thing("lab-1"))));
        assert!(!lab.allows(start, Some("factory-reset"), Some(&thing("lab-1"))));
        // Not narrowed to one command or target: only `*` covers that.
        assert!(!lab.allows(start, None, Some(&thing("lab-1"))));
        assert!(!lab.allows(start, Some("reboot"), None));
        // Other actions come from other grants only.
        assert!(!lab.allows(
            Action::CancelCommandExecution,
            Some("reboot"),
            Some(&thing("lab-1"))
        ));
        assert!(lab.allows(Action::ListCommands, None, None));
        assert!(lab.allows(Action::GetCommand, Some("anything"), None));
        assert!(!lab.allows(Action::DeleteCommand, Some("reboot"), None));

        let ops = p.authenticate(OPS_TOKEN).unwrap();
        assert_eq!(ops.name, "ops");
        for a in Action::ALL {
            assert!(ops.allows(a, None, None), "{a:?}");
            assert!(ops.allows(a, Some("x"), Some(&Target::client("c").unwrap())));
        }
    }

    #[test]
    fn a_rollout_is_narrowed_to_the_targets_its_caller_was_granted() {
        let mut p = policy();
        p.tokens[1].allow.extend([
            grant(&["StartRollout"], &["reboot"], &["thing/lab-*"]),
            grant(
                &["StartRollout", "CancelRollout"],
                &["re*"],
                &["client/bench-?", "thing/lab-*"],
            ),
            grant(&["StartRollout"], &["blink"], &["*"]),
        ]);
        let lab = p.authenticate(LAB_TOKEN).unwrap();
        assert_eq!(
            lab.target_grant(Action::StartRollout, "reboot"),
            TargetGrant::Only(vec!["thing/lab-*".into(), "client/bench-?".into()])
        );
        assert_eq!(
            lab.target_grant(Action::StartRollout, "blink"),
            TargetGrant::All
        );
        assert_eq!(
            lab.target_grant(Action::StartRollout, "factory-reset"),
            TargetGrant::Denied
        );
        // A grant of another action covers nothing here.
        assert_eq!(
            lab.target_grant(Action::StartRollout, "restart"),
            TargetGrant::Only(vec!["client/bench-?".into(), "thing/lab-*".into()])
        );
        assert_eq!(
            lab.target_grant(Action::GetRollout, "reboot"),
            TargetGrant::Denied
        );
        let ops = p.authenticate(OPS_TOKEN).unwrap();
        assert_eq!(
            ops.target_grant(Action::StartRollout, "anything"),
            TargetGrant::All
        );
    }

    #[test]
    fn a_grant_must_cover_action_command_and_target_at_once() {
        // Two grants that each cover part of the request do not add up.
        let t = TokenPolicy {
            name: "split".into(),
            token: Some("x".repeat(16)),
            allow: vec![
                grant(&["StartCommandExecution"], &["reboot"], &["thing/a"]),
                grant(&["StartCommandExecution"], &["update"], &["thing/b"]),
            ],
            ..TokenPolicy::default()
        };
        let start = Action::StartCommandExecution;
        assert!(t.allows(start, Some("reboot"), Some(&thing("a"))));
        assert!(t.allows(start, Some("update"), Some(&thing("b"))));
        assert!(!t.allows(start, Some("reboot"), Some(&thing("b"))));
        assert!(!t.allows(start, Some("update"), Some(&thing("a"))));
        let nothing = TokenPolicy {
            allow: vec![],
            ..t.clone()
        };
        assert!(!nothing.allows(Action::ListCommands, None, None));
        // A pattern that matches every string still does not cover "not narrowed".
        let starstar = TokenPolicy {
            allow: vec![grant(&["*"], &["**"], &["*"])],
            ..t
        };
        assert!(starstar.allows(start, Some("reboot"), None));
        assert!(!starstar.allows(start, None, None));
    }

    #[test]
    fn authenticate_needs_the_exact_token() {
        let p = policy();
        assert_eq!(
            p.authenticate(OPS_TOKEN).map(|t| t.name.as_str()),
            Some("ops")
        );
        assert!(p.authenticate("").is_none());
        assert!(p.authenticate(&OPS_TOKEN[..OPS_TOKEN.len() - 1]).is_none());
        assert!(p.authenticate(&format!("{OPS_TOKEN}x")).is_none());
        assert!(p.authenticate(&OPS_TOKEN.to_uppercase()).is_none());
        assert!(p.authenticate(&format!("{OPS_TOKEN}\0")).is_none());
    }

    #[test]
    fn a_token_may_be_stored_as_its_sha256_and_a_caller_named_by_its_certificate() {
        let digest = token_sha256(OPS_TOKEN);
        assert_eq!(digest.len(), 64);
        let mut p = policy();
        p.tokens[0].token = None;
        p.tokens[0].token_sha256 = Some(digest.to_uppercase());
        p.tokens[1].certificate_subject = Some("clients/ci-runner".into());
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            p.authenticate(OPS_TOKEN).map(|t| t.name.as_str()),
            Some("ops")
        );
        assert!(
            p.authenticate(&digest).is_none(),
            "the digest is not a token"
        );
        assert_eq!(
            p.authenticate_subject("clients/ci-runner")
                .map(|t| t.name.as_str()),
            Some("lab")
        );
        assert!(p.authenticate_subject("clients/other").is_none());
        // The lab token still works beside its certificate.
        assert_eq!(
            p.authenticate(LAB_TOKEN).map(|t| t.name.as_str()),
            Some("lab")
        );
    }

    #[test]
    fn credentials_are_checked_and_unique_however_they_are_written() {
        let check = |p: &Policy| p.validate().unwrap_err();
        let mut p = policy();
        p.tokens[0].token = None;
        assert_eq!(
            check(&p).field,
            "tokens[0].token",
            "a caller needs a credential"
        );
        p.tokens[0].token_sha256 = Some("abc".into());
        assert_eq!(check(&p).field, "tokens[0].token_sha256");
        // The same token, once in clear and once hashed, is a duplicate.
        p.tokens[0].token_sha256 = Some(token_sha256(LAB_TOKEN));
        assert_eq!(check(&p).field, "tokens[1].token");
        let mut p = policy();
        p.tokens[0].certificate_subject = Some("clients/x".into());
        p.tokens[1].certificate_subject = Some("clients/x".into());
        assert_eq!(check(&p).field, "tokens[1].certificate_subject");
        p.tokens[1].certificate_subject = Some(" ".into());
        assert_eq!(check(&p).field, "tokens[1].certificate_subject");
    }

    #[test]
    fn constant_time_eq_agrees_with_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a", b""));
        // Padding the shorter side with zero bytes must not make them equal.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    #[test]
    fn validate_accepts_a_good_policy_and_fills_default_patterns() {
        assert_eq!(policy().validate(), Ok(()));
        let p: Policy = serde_json::from_value(serde_json::json!({
            "tokens": [{"name": "ci", "token": "c".repeat(16), "allow": [{"actions": ["GetCommand"]}]}]
        }))
        .unwrap();
        assert_eq!(p.tokens[0].allow[0].commands, vec!["*"]);
        assert_eq!(p.tokens[0].allow[0].targets, vec!["*"]);
        assert_eq!(p.validate(), Ok(()));
        assert!(p.tokens[0].allows(Action::GetCommand, None, None));
        let unknown_field = serde_json::from_value::<Policy>(serde_json::json!({
            "tokens": [{"name": "ci", "token": "c".repeat(16), "allow": [], "admin": true}]
        }));
        assert!(unknown_field.is_err());
    }

    #[test]
    fn validate_names_every_mistake() {
        let check = |p: &Policy| p.validate().unwrap_err();
        let err = check(&Policy { tokens: vec![] });
        assert_eq!(err.field, "tokens");

        let mut p = policy();
        p.tokens[1].token = Some("short-token".into());
        let err = check(&p);
        assert_eq!(err.field, "tokens[1].token");
        assert!(err.message.contains("16"), "{}", err.message);
        assert!(!err.message.contains("short-token"), "never echo a token");
        p.tokens[1].token = Some("x".repeat(16));
        assert_eq!(p.validate(), Ok(()), "exactly 16 is enough");
        p.tokens[1].token = Some(format!("{} with space", "x".repeat(16)));
        assert_eq!(check(&p).field, "tokens[1].token");

        let mut p = policy();
        p.tokens[1].token = Some(OPS_TOKEN.into());
        let err = check(&p);
        assert_eq!(err.field, "tokens[1].token");
        assert!(err.message.contains("\"ops\"") && err.message.contains("unique"));
        assert!(!err.message.contains(OPS_TOKEN), "never echo a token");

        let mut p = policy();
        p.tokens[1].name = "ops".into();
        let err = check(&p);
        assert_eq!(err.field, "tokens[1].name");
        assert!(err.message.contains("duplicate"));
        p.tokens[1].name = " ".into();
        assert_eq!(check(&p).field, "tokens[1].name");

        let mut p = policy();
        p.tokens[1].allow[1].actions[1] = "ListWidgets".into();
        let err = check(&p);
        assert_eq!(err.field, "tokens[1].allow[1].actions[1]");
        assert!(err.message.contains("ListWidgets") && err.message.contains("CreateThingPassword"));
        p.tokens[1].allow[1].actions.clear();
        assert_eq!(check(&p).field, "tokens[1].allow[1].actions");

        let mut p = policy();
        p.tokens[1].allow[0].targets = vec!["thing/lab-*".into(), "lab-*".into()];
        let err = check(&p);
        assert_eq!(err.field, "tokens[1].allow[0].targets[1]");
        assert!(err.message.contains("thing/"));
        p.tokens[1].allow[0].targets = vec!["client/*".into()];
        assert_eq!(p.validate(), Ok(()));
        p.tokens[1].allow[0].targets = vec![];
        assert_eq!(check(&p).field, "tokens[1].allow[0].targets");

        let mut p = policy();
        p.tokens[1].allow[0].commands = vec!["".into()];
        assert_eq!(check(&p).field, "tokens[1].allow[0].commands[0]");
        p.tokens[1].allow[0].commands = vec!["re boot".into()];
        assert_eq!(check(&p).field, "tokens[1].allow[0].commands[0]");
        p.tokens[1].allow[0].commands = vec![];
        assert_eq!(check(&p).field, "tokens[1].allow[0].commands");
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything/at all"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("?", "é"), "? is one character, not one byte");
        assert!(!glob_match("??", "é"));
        assert!(glob_match("thing/lab-*", "thing/lab-"));
        assert!(glob_match("thing/lab-*", "thing/lab-1/x"));
        assert!(!glob_match("thing/lab-*", "thing/lab"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("a*c", "abcbc"), "backtracks past an early c");
        assert!(!glob_match("a*c", "abcb"));
        assert!(glob_match("*?", "x"));
        assert!(!glob_match("*?", ""));
        assert!(glob_match("**", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("abc", "ABC"), "case-sensitive");
        assert!(!glob_match("reboot", "reboot2"));
        assert!(!glob_match("reboot", "reboo"));
    }

    #[test]
    fn glob_has_no_exponential_backtracking() {
        let text = "a".repeat(5_000);
        let pattern = format!("{}b", "a*".repeat(50));
        let started = std::time::Instant::now();
        assert!(!glob_match(&pattern, &text));
        assert!(glob_match(&"a*".repeat(50), &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    /// The obvious recursive definition, exponential but fine for tiny inputs.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((&c, rest)) => t
                .split_first()
                .is_some_and(|(&x, tr)| (c == '?' || c == x) && reference(rest, tr)),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_recursive_definition(p in "[ab*?]{0,8}", t in "[abc]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(glob_match(&p, &t), reference(&pc, &tc));
        }

        #[test]
        fn literal_patterns_match_only_themselves(a in "[a-z/-]{0,12}", b in "[a-z/-]{0,12}") {
            prop_assert!(glob_match(&a, &a));
            prop_assert_eq!(glob_match(&a, &b), a == b);
            let prefix = format!("{a}*");
            prop_assert_eq!(glob_match(&prefix, &b), b.starts_with(&a));
        }

        #[test]
        fn constant_time_eq_is_equality(a in prop::collection::vec(any::<u8>(), 0..40), b in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            prop_assert!(constant_time_eq(&a, &a));
        }
    }
}
