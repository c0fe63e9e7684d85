//! StartCommandExecution: request validation, parameter resolution, payload rendering and
//! client-token fingerprints (AWS's StartCommandExecution; fleetcmd's differences are in
//! `docs/device-protocol.md`, Differences from AWS IoT Commands).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Rejection, RejectionCode, ValidationError, quote};
use crate::ids::{CommandId, ExecutionId, Target};
use crate::limits::*;
use crate::model::{
    Command, CommandBody, Execution, ExecutionStatus, ParameterValue, Payload, TimestampMs,
};
use crate::shard::hash_key;
use crate::template;

/// A start request, converted from the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    pub command_id: CommandId,
    pub target: Target,
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `None` or 0: the default (10 s).
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl StartRequest {
    pub fn effective_timeout_secs(&self) -> u64 {
        match self.timeout_secs {
            None | Some(0) => TIMEOUT_DEFAULT_SECS,
            Some(t) => t,
        }
    }
}

/// Checks the request's own fields (not the command's rules).
pub fn validate_request(req: &StartRequest) -> Result<(), ValidationError> {
    let t = req.effective_timeout_secs();
    if !(TIMEOUT_MIN_SECS..=TIMEOUT_MAX_SECS).contains(&t) {
        return Err(ValidationError::new(
            "execution_timeout_seconds",
            format!("must be between {TIMEOUT_MIN_SECS} and {TIMEOUT_MAX_SECS} seconds, got {t}"),
        ));
    }
    if let Some(token) = &req.client_token {
        validate_client_token(token)?;
    }
    Ok(())
}

/// 1–64 printable ASCII characters (`[\x21-\x7E]+`).
pub fn validate_client_token(token: &str) -> Result<(), ValidationError> {
    if token.is_empty() || token.len() > CLIENT_TOKEN_MAX_CHARS {
        return Err(ValidationError::new(
            "client_token",
            format!("must be 1–{CLIENT_TOKEN_MAX_CHARS} characters"),
        ));
    }
    if let Some(c) = token.chars().find(|c| !('\x21'..='\x7e').contains(c)) {
        return Err(ValidationError::new(
            "client_token",
            format!("must be printable ASCII without spaces, found {c:?}"),
        ));
    }
    Ok(())
}

/// A stable fingerprint of what the request asks for (the client token aside): two
/// requests with the same token and the same fingerprint are the same request.
pub fn fingerprint(req: &StartRequest) -> u64 {
    let canonical = serde_json::json!({
        "command_id": req.command_id,
        "target": req.target,
        "parameters": req.parameters,
        "timeout_secs": req.effective_timeout_secs(),
    });
    hash_key(&canonical.to_string())
}

/// Builds the new execution and its payload, or says why it cannot start.
pub fn plan(
    command: &Command,
    req: &StartRequest,
    execution_id: ExecutionId,
    now: TimestampMs,
    retention_secs: u64,
) -> Result<(Execution, Payload), Rejection> {
    validate_request(req)?;
    if command.pending_deletion() {
        return Err(Rejection::new(
            RejectionCode::FailedPrecondition,
            format!(
                "command {} is pending deletion and cannot start executions",
                command.command_id
            ),
        ));
    }
    if command.deprecated {
        return Err(Rejection::new(
            RejectionCode::FailedPrecondition,
            format!(
                "command {} is deprecated and cannot start executions",
                command.command_id
            ),
        ));
    }
    let timeout_secs = req.effective_timeout_secs();
    let (payload, parameters) = match &command.body {
        CommandBody::Static(p) => {
            if !req.parameters.is_empty() {
                return Err(ValidationError::new(
                    "parameters",
                    format!(
                        "command {} has a static payload and takes no parameters",
                        command.command_id
                    ),
                )
                .into());
            }
            (p.clone(), BTreeMap::new())
        }
        CommandBody::Template(t) => {
            let values = template::resolve(&command.parameters, &req.parameters)?;
            let content = template::render(t, &values, timeout_secs)?;
            (
                Payload {
                    content,
                    content_type: t.output_format.content_type().to_string(),
                },
                values,
            )
        }
    };
    let execution = Execution {
        execution_id,
        command_id: command.command_id.clone(),
        target: req.target.clone(),
        status: ExecutionStatus::Created,
        status_reason: None,
        result: BTreeMap::new(),
        parameters,
        timeout_secs,
        client_token: req.client_token.clone(),
        created_at: now,
        last_updated_at: now,
        started_at: now,
        completed_at: None,
        time_to_live: now + (retention_secs as i64) * 1000,
        terminal: false,
        seq: 1,
        request_fingerprint: fingerprint(req),
    };
    Ok((execution, payload))
}

/// A start already recorded under a client token, as the shard owner knows it (in memory, or
/// read back from the read model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorStart {
    pub execution_id: ExecutionId,
    /// The [`fingerprint`] of that start's request (0: unknown, a record written before
    /// fingerprints were kept; the token alone decides then).
    pub fingerprint: u64,
    /// Until when the token counts ([`token_valid_until`]); `None` when the owner still holds
    /// it in memory, which it does only within the window.
    pub valid_until: Option<TimestampMs>,
}

impl PriorStart {
    /// The prior start recorded by `execution`.
    pub fn of(execution: &Execution) -> Self {
        Self {
            execution_id: execution.execution_id.clone(),
            fingerprint: execution.request_fingerprint,
            valid_until: Some(token_valid_until(execution)),
        }
    }
}

/// Until when a client token stays bound to `execution`: its deadline plus the token window
/// (24 h).
pub fn token_valid_until(execution: &Execution) -> TimestampMs {
    execution.deadline() + (CLIENT_TOKEN_WINDOW_SECS as i64) * 1000
}

/// What a start with a client token is, given what the token was used for before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Never used (or its window passed): a new execution.
    New,
    /// The same request again: answer with the execution it started.
    Replay(ExecutionId),
    /// A different request under a used token: refused.
    Conflict(Rejection),
}

/// The client-token idempotency rule: same token and same request → the same execution; same
/// token and a different request → a conflict; a token whose window has passed is new again.
pub fn check_token(
    token: &str,
    prior: Option<&PriorStart>,
    fingerprint: u64,
    now: TimestampMs,
) -> TokenCheck {
    let Some(prior) = prior else {
        return TokenCheck::New;
    };
    if prior.valid_until.is_some_and(|until| until <= now) {
        return TokenCheck::New;
    }
    if prior.fingerprint == fingerprint || prior.fingerprint == 0 {
        return TokenCheck::Replay(prior.execution_id.clone());
    }
    TokenCheck::Conflict(Rejection::new(
        RejectionCode::Conflict,
        format!(
            "client_token {} was already used for a different request (execution {}); use a new token for a new request",
            quote(token),
            prior.execution_id
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> StartRequest {
        StartRequest {
            command_id: CommandId::parse("c").unwrap(),
            target: Target::thing("t").unwrap(),
            parameters: BTreeMap::new(),
            timeout_secs: None,
            client_token: None,
        }
    }

    #[test]
    fn timeout_bounds_and_default() {
        let mut r = req();
        assert_eq!(r.effective_timeout_secs(), 10);
        assert!(validate_request(&r).is_ok());
        r.timeout_secs = Some(43_200);
        assert!(validate_request(&r).is_ok());
        r.timeout_secs = Some(43_201);
        assert_eq!(
            validate_request(&r).unwrap_err().field,
            "execution_timeout_seconds"
        );
    }

    #[test]
    fn client_token_rules() {
        assert!(validate_client_token("abc-123_!~").is_ok());
        assert!(validate_client_token("").is_err());
        assert!(validate_client_token(&"a".repeat(65)).is_err());
        assert!(validate_client_token("has space").is_err());
        assert!(validate_client_token("é").is_err());
    }

    #[test]
    fn fingerprint_ignores_token_and_sees_everything_else() {
        let a = req();
        let mut b = req();
        b.client_token = Some("tok".into());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.timeout_secs = Some(10);
        assert_eq!(
            fingerprint(&a),
            fingerprint(&b),
            "explicit default equals implicit default"
        );
        b.timeout_secs = Some(11);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = req();
        c.parameters.insert("x".into(), ParameterValue::I(1));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        let mut d = req();
        d.target = Target::client("t").unwrap();
        assert_ne!(fingerprint(&a), fingerprint(&d));
    }
    #[test]
    fn token_rule_new_replay_conflict_and_window() {
        let id = ExecutionId::parse("e1").unwrap();
        let prior = PriorStart {
            execution_id: id.clone(),
            fingerprint: 7,
            valid_until: Some(10_000),
        };
        assert_eq!(check_token("t", None, 7, 0), TokenCheck::New);
        assert_eq!(
            check_token("t", Some(&prior), 7, 9_999),
            TokenCheck::Replay(id.clone())
        );
        let TokenCheck::Conflict(r) = check_token("t", Some(&prior), 8, 9_999) else {
            panic!("a different request under the token must conflict")
        };
        assert_eq!(r.code, RejectionCode::Conflict);
        assert!(
            r.message.contains("e1") && r.message.contains("\"t\""),
            "{}",
            r.message
        );
        // Past its window the token is free again, whatever the request.
        assert_eq!(check_token("t", Some(&prior), 8, 10_000), TokenCheck::New);
        // In memory (no end known) and legacy records (fingerprint 0).
        let in_memory = PriorStart {
            valid_until: None,
            ..prior.clone()
        };
        assert_eq!(
            check_token("t", Some(&in_memory), 7, i64::MAX),
            TokenCheck::Replay(id.clone())
        );
        let legacy = PriorStart {
            fingerprint: 0,
            ..prior
        };
        assert_eq!(
            check_token("t", Some(&legacy), 123, 0),
            TokenCheck::Replay(id)
        );
    }

    #[test]
    fn a_prior_start_counts_for_its_timeout_plus_a_day() {
        let mut e = crate::testing::execution("e2", "c", None);
        e.request_fingerprint = 9;
        let prior = PriorStart::of(&e);
        assert_eq!(prior.valid_until, Some(1_000 + 10_000 + 24 * 3600 * 1000));
        assert_eq!((prior.fingerprint, prior.execution_id.as_str()), (9, "e2"));
    }
}
