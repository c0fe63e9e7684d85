//! Bearer-token authentication and policy checks for the gRPC services.
//!
//! Without a policy every call is allowed (`fleetcmd serve` then binds to loopback only). With
//! one, a call must carry `authorization: Bearer <token>` naming a known caller, or come over
//! mutual TLS with a client certificate whose subject a caller names (UNAUTHENTICATED
//! otherwise), and the caller's grants must cover the action on the command and target
//! involved (PERMISSION_DENIED otherwise).

use std::sync::Arc;

use fleetcmd_domain::ids::Target;

use crate::audit::AuditLog;
use fleetcmd_domain::policy::{Action, Policy, TokenPolicy};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// The metadata key under which the gRPC server hands the handlers the subject CN of the
/// caller's verified client certificate. Only the server's own layer sets it, after removing
/// whatever a caller sent under that name (`fleetcmd_service_kit::grpc::PeerSubjectLayer`).
pub const PEER_SUBJECT_HEADER: &str = "x-fleetcmd-peer-subject";

/// The policy in force, if any, and where the audit trail goes.
#[derive(Clone, Default)]
pub struct Auth {
    policy: Option<Arc<Policy>>,
    audit: AuditLog,
}

/// A mutating call being audited: who and what, known before the call runs; its result is
/// added by [`Audit::finish`].
#[must_use = "finish the audit record with the call's result"]
pub struct Audit {
    log: AuditLog,
    caller: String,
    action: Action,
    resource: String,
}

impl Audit {
    /// Records the call with its result, and hands the result back.
    pub fn finish<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        self.log
            .record(&self.caller, self.action, &self.resource, &result);
        result
    }
}

/// Who is calling (`None`: no policy, anyone).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    grant: Option<&'a TokenPolicy>,
}

impl Auth {
    pub fn new(policy: Option<Arc<Policy>>) -> Self {
        Self {
            policy,
            audit: AuditLog::log_only(),
        }
    }

    /// Sends audit records to `audit` (the log, and a file when it has one).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// Starts the audit record of a mutating call of `action` on `resource` (e.g.
    /// `thing/lamp-1`): the caller is named now, from the call's credentials — `anonymous`
    /// without a policy, `unauthenticated` when they name nobody.
    pub fn audit(&self, metadata: &MetadataMap, action: Action, resource: String) -> Audit {
        self.audit_caller(metadata, action, resource).0
    }

    /// [`Self::audit`], also handing back the authentication it made, for a handler that
    /// needs the caller (the token is then checked once per call, not twice).
    pub fn audit_caller(
        &self,
        metadata: &MetadataMap,
        action: Action,
        resource: String,
    ) -> (Audit, Result<Caller<'_>, Status>) {
        let authenticated = self.authenticate(metadata);
        let caller = match (&self.policy, &authenticated) {
            (None, _) => "anonymous".to_owned(),
            (Some(_), Ok(Caller { grant: Some(g) })) => g.name.clone(),
            (Some(_), _) => "unauthenticated".to_owned(),
        };
        let audit = Audit {
            log: self.audit.clone(),
            caller,
            action,
            resource,
        };
        (audit, authenticated)
    }

    pub fn is_enabled(&self) -> bool {
        self.policy.is_some()
    }

    /// Identifies the caller from the request metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller<'_>, Status> {
        let Some(policy) = &self.policy else {
            return Ok(Caller { grant: None });
        };
        let Some(header) = metadata.get("authorization") else {
            // No token: a verified client certificate may name the caller.
            let subject = metadata
                .get(PEER_SUBJECT_HEADER)
                .and_then(|v| v.to_str().ok());
            return match subject {
                Some(subject) => policy
                    .authenticate_subject(subject)
                    .map(|grant| Caller { grant: Some(grant) })
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "no caller of the policy has this client certificate's subject",
                        )
                    }),
                None => Err(Status::unauthenticated(
                    "missing authorization metadata (expected: Bearer <token>, or a client certificate)",
                )),
            };
        };
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be: Bearer <token>")
            })?;
        policy
            .authenticate(token.trim())
            .map(|grant| Caller { grant: Some(grant) })
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }

    /// Authenticates and checks one action in a single step.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        action: Action,
        command: Option<&str>,
        target: Option<&Target>,
    ) -> Result<(), Status> {
        self.authenticate(metadata)?
            .authorize(action, command, target)
    }
}

impl Caller<'_> {
    /// Whether the caller may perform `action` on `command` and `target` (`None`: not narrowed
    /// to one, which only a `*` pattern covers).
    pub fn authorize(
        &self,
        action: Action,
        command: Option<&str>,
        target: Option<&Target>,
    ) -> Result<(), Status> {
        let Some(grant) = self.grant else {
            return Ok(());
        };
        if grant.allows(action, command, target) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "caller {} may not {} on command {} and target {}",
            fleetcmd_domain::error::quote(&grant.name),
            action.name(),
            command.unwrap_or("*"),
            target.map_or_else(|| "*".to_string(), Target::resource_name),
        )))
    }

    /// The targets the caller may reach with `action` on `command` (a call that fans out:
    /// a rollout): `None` for all, `Some(patterns)` for those; PERMISSION_DENIED when no
    /// grant covers the action on the command at all.
    pub fn target_grant(
        &self,
        action: Action,
        command: &str,
    ) -> Result<Option<Vec<String>>, Status> {
        let Some(grant) = self.grant else {
            return Ok(None);
        };
        match grant.target_grant(action, command) {
            fleetcmd_domain::policy::TargetGrant::All => Ok(None),
            fleetcmd_domain::policy::TargetGrant::Only(patterns) => Ok(Some(patterns)),
            fleetcmd_domain::policy::TargetGrant::Denied => {
                Err(Status::permission_denied(format!(
                    "caller {} may not {} on command {}",
                    fleetcmd_domain::error::quote(&grant.name),
                    action.name(),
                    command,
                )))
            }
        }
    }

    /// Whether the caller may perform `action` at all on this command/target (for filtering
    /// streams without failing them).
    pub fn allows(&self, action: Action, command: Option<&str>, target: Option<&Target>) -> bool {
        self.grant.is_none_or(|g| g.allows(action, command, target))
    }
}
