//! Device credentials over gRPC (the certificate and password calls of
//! `fleetcmd.v1.ThingRegistry`). Certificates are issued, signed and verified here with the
//! device CA (`fleetcmd_identity`); what is stored goes through the owner's shard (the shard
//! of `thing/<name>` or `client/<id>`, which also decides whether the thing exists) and is
//! read back from the read model. Private keys and passwords are returned once and never
//! stored: the log and the read model hold certificates and argon2id hashes only.

use fleetcmd_contracts::convert::{
    credential_owner_from_pb, port_status, rejection_status, validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::credential::{
    self, CERTIFICATE_PEM_MAX_BYTES, CertificateRecord, CertificateStatus, CredentialInput,
};
use fleetcmd_domain::error::{ValidationError, quote};
use fleetcmd_domain::ids::{Target, TargetKind};
use fleetcmd_domain::model::TimestampMs;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_identity::{Ca, DeviceIdentity, RevokedEntry};
use fleetcmd_service_kit::{await_projection, call_status, unexpected};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::RegistryDeps;

/// Validity of a certificate when the request does not say (days).
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;
/// The longest validity a request may ask for (days).
pub const MAX_VALIDITY_DAYS: u32 = 3650;
/// How long a CRL from GetCertificateRevocationList is valid: a broker that reads it must
/// fetch a new one within this (and does, at every revocation, when it is fleetcmd's).
const CRL_VALIDITY: time::Duration = time::Duration::days(7);

fn no_ca() -> Status {
    Status::failed_precondition(
        "no device CA is configured: this deployment cannot issue or verify device certificates",
    )
}

fn ca(deps: &RegistryDeps) -> Result<&Ca, Status> {
    deps.ca.as_deref().ok_or_else(no_ca)
}

pub(crate) fn ms(t: OffsetDateTime) -> TimestampMs {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn identity(owner: &Target) -> Result<DeviceIdentity, Status> {
    let identity = match owner.kind {
        TargetKind::Thing => DeviceIdentity::thing(owner.id.clone()),
        TargetKind::Client => DeviceIdentity::client(owner.id.clone()),
    };
    // The target's naming rules are the identity's: a failure here is a bug.
    identity.map_err(|e| Status::internal(format!("device identity of {owner}: {e}")))
}

fn validity_days(days: u32) -> Result<u32, Status> {
    match days {
        0 => Ok(DEFAULT_VALIDITY_DAYS),
        d if d <= MAX_VALIDITY_DAYS => Ok(d),
        d => Err(validation_status(ValidationError::new(
            "validity_days",
            format!("must be at most {MAX_VALIDITY_DAYS} days, got {d}"),
        ))),
    }
}

pub(crate) fn pem_field(field: &str, pem: &str) -> Result<(), Status> {
    if pem.len() > CERTIFICATE_PEM_MAX_BYTES {
        return Err(validation_status(ValidationError::new(
            field,
            format!(
                "must be at most {CERTIFICATE_PEM_MAX_BYTES} bytes, got {}",
                pem.len()
            ),
        )));
    }
    Ok(())
}

/// A failure of the identity crate on caller input, as INVALID_ARGUMENT naming `field`.
fn invalid(field: &str, e: impl std::fmt::Display) -> Status {
    validation_status(ValidationError::new(field, e.to_string()))
}

/// Sends a credential input to the owner's shard and waits until the read model has it;
/// returns the certificate the input was about, as stored after it.
async fn call(
    deps: &RegistryDeps,
    owner: &Target,
    input: CredentialInput,
) -> Result<Option<CertificateRecord>, Status> {
    let request = ShardRequest::Credential {
        owner: owner.clone(),
        input,
    };
    match deps.shards.call(&request).await.map_err(call_status)? {
        ShardReply::Credential {
            certificate,
            position,
        } => {
            await_projection(&deps.projection, position).await;
            Ok(certificate.map(|c| *c))
        }
        ShardReply::Rejected(r) => Err(rejection_status(r)),
        other => Err(unexpected(&other)),
    }
}

/// Attaches a certificate the registry verified. An id attached to another owner (which
/// lives in another shard, so the owner's shard cannot see it) is refused here, from the
/// read model, without naming that owner.
async fn attach(deps: &RegistryDeps, record: CertificateRecord) -> Result<(), Status> {
    let stored = deps
        .read_model
        .get_certificate(&record.certificate_id)
        .await
        .map_err(port_status)?;
    if stored.is_some_and(|s| s.owner != record.owner) {
        return Err(Status::already_exists(format!(
            "certificate {} is attached to another owner",
            record.certificate_id
        )));
    }
    let owner = record.owner.clone();
    call(deps, &owner, CredentialInput::AttachCertificate(record)).await?;
    Ok(())
}

fn record(
    owner: Target,
    ca_certificate_id: &str,
    certificate_id: String,
    certificate_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateRecord {
    CertificateRecord {
        certificate_id,
        owner,
        status: CertificateStatus::Active,
        certificate_pem,
        ca_certificate_id: ca_certificate_id.to_owned(),
        not_before: ms(not_before),
        not_after: ms(not_after),
        // Set by the owner's decision.
        created_at: 0,
        revoked_at: None,
    }
}

pub(crate) async fn create_certificate(
    deps: &RegistryDeps,
    request: Request<pb::CreateThingCertificateRequest>,
) -> Result<Response<pb::CreateThingCertificateResponse>, Status> {
    let owner =
        credential_owner_from_pb(request.get_ref().owner.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::CreateThingCertificate,
        None,
        Some(&owner),
    )?;
    let days = validity_days(request.get_ref().validity_days)?;
    let ca = ca(deps)?;
    let issued = fleetcmd_identity::issue(ca, &identity(&owner)?, days, OffsetDateTime::now_utc())
        .map_err(|e| Status::internal(format!("issuing a certificate: {e}")))?;
    let private_key_pem = issued
        .private_key_pem
        .ok_or_else(|| Status::internal("the issued certificate came without its key"))?;
    let r = record(
        owner,
        ca.id(),
        issued.certificate_id.clone(),
        issued.certificate_pem.clone(),
        issued.not_before,
        issued.not_after,
    );
    attach(deps, r).await?;
    Ok(Response::new(pb::CreateThingCertificateResponse {
        certificate_id: issued.certificate_id,
        certificate_pem: issued.certificate_pem,
        private_key_pem,
        root_ca_pem: ca.certificate_pem().to_owned(),
    }))
}

pub(crate) async fn register_certificate(
    deps: &RegistryDeps,
    request: Request<pb::RegisterThingCertificateRequest>,
) -> Result<Response<pb::RegisterThingCertificateResponse>, Status> {
    let owner =
        credential_owner_from_pb(request.get_ref().owner.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::RegisterThingCertificate,
        None,
        Some(&owner),
    )?;
    let req = request.into_inner();
    pem_field("certificate_pem", &req.certificate_pem)?;
    pem_field("csr_pem", &req.csr_pem)?;
    let days = validity_days(req.validity_days)?;
    let identity = identity(&owner)?;
    let now = OffsetDateTime::now_utc();
    let r = match (req.certificate_pem.is_empty(), req.csr_pem.is_empty()) {
        (false, true) => {
            if req.validity_days != 0 {
                return Err(invalid(
                    "validity_days",
                    "applies to a CSR only: a certificate's validity is its own",
                ));
            }
            let trusted = crate::cas::trusted(deps).await?;
            if trusted.is_empty() {
                return Err(no_ca());
            }
            let parsed = fleetcmd_identity::parse_and_verify(&req.certificate_pem, &trusted, now)
                .map_err(|e| invalid("certificate_pem", e))?;
            let expected = identity.as_str();
            if parsed.common_name.as_deref() != Some(expected.as_str()) {
                let found = parsed.common_name.as_deref().map_or("none".into(), quote);
                return Err(invalid(
                    "certificate_pem",
                    format!(
                        "its subject CN must be {expected:?} (the owner's identity), found {found}"
                    ),
                ));
            }
            record(
                owner,
                &parsed.issuer_ca_id,
                parsed.certificate_id,
                fleetcmd_identity::certificate_pem(&parsed.der),
                parsed.not_before,
                parsed.not_after,
            )
        }
        (true, false) => {
            let ca = ca(deps)?;
            let issued = fleetcmd_identity::sign_csr(ca, &req.csr_pem, &identity, days, now)
                .map_err(|e| invalid("csr_pem", e))?;
            record(
                owner,
                ca.id(),
                issued.certificate_id,
                issued.certificate_pem,
                issued.not_before,
                issued.not_after,
            )
        }
        _ => {
            return Err(invalid(
                "certificate_pem",
                "set exactly one of certificate_pem and csr_pem",
            ));
        }
    };
    let (certificate_id, certificate_pem) = (r.certificate_id.clone(), r.certificate_pem.clone());
    attach(deps, r).await?;
    Ok(Response::new(pb::RegisterThingCertificateResponse {
        certificate_id,
        certificate_pem,
    }))
}

pub(crate) async fn list_certificates(
    deps: &RegistryDeps,
    request: Request<pb::ListThingCertificatesRequest>,
) -> Result<Response<pb::ListThingCertificatesResponse>, Status> {
    let owner =
        credential_owner_from_pb(request.get_ref().owner.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::ListThingCertificates,
        None,
        Some(&owner),
    )?;
    let certificates = deps
        .read_model
        .list_certificates(&owner)
        .await
        .map_err(port_status)?;
    if certificates.is_empty()
        && owner.kind == TargetKind::Thing
        && deps
            .read_model
            .get_thing(&owner.id)
            .await
            .map_err(port_status)?
            .is_none()
    {
        return Err(Status::not_found(format!("thing {} not found", owner.id)));
    }
    Ok(Response::new(pb::ListThingCertificatesResponse {
        certificates: certificates.into_iter().map(Into::into).collect(),
    }))
}

pub(crate) async fn revoke_certificate(
    deps: &RegistryDeps,
    request: Request<pb::RevokeThingCertificateRequest>,
) -> Result<Response<pb::RevokeThingCertificateResponse>, Status> {
    let caller = deps.auth.authenticate(request.metadata())?;
    let id = request.into_inner().certificate_id;
    credential::validate_certificate_id(&id).map_err(validation_status)?;
    let action = Action::RevokeThingCertificate;
    let stored = deps
        .read_model
        .get_certificate(&id)
        .await
        .map_err(port_status)?;
    let Some(stored) = stored else {
        // A caller narrower than `*` cannot tell an unknown id from another owner's.
        if caller.allows(action, None, None) {
            return Err(Status::not_found(format!("certificate {id} not found")));
        }
        return Err(Status::permission_denied(format!(
            "the caller may not {} on certificate {id}",
            action.name()
        )));
    };
    caller.authorize(action, None, Some(&stored.owner))?;
    let input = CredentialInput::RevokeCertificate {
        certificate_id: id.clone(),
    };
    let after = call(deps, &stored.owner, input).await?;
    if let Some(trust) = &deps.device_trust {
        trust.certificate_revoked(&id);
    }
    let status = after.map_or(CertificateStatus::Revoked, |c| c.status);
    Ok(Response::new(pb::RevokeThingCertificateResponse {
        certificate_id: id,
        status: pb::CertificateStatus::from(status) as i32,
    }))
}

pub(crate) async fn revocation_list(
    deps: &RegistryDeps,
    request: Request<pb::GetCertificateRevocationListRequest>,
) -> Result<Response<pb::GetCertificateRevocationListResponse>, Status> {
    deps.auth.check(
        request.metadata(),
        Action::GetCertificateRevocationList,
        None,
        None,
    )?;
    let ca = ca(deps)?;
    let revoked = deps
        .read_model
        .revoked_certificates()
        .await
        .map_err(port_status)?;
    let mut entries = Vec::with_capacity(revoked.len());
    for c in revoked.iter().filter(|c| c.ca_certificate_id == ca.id()) {
        let Some(serial_hex) = fleetcmd_identity::certificate_serial_hex(&c.certificate_pem) else {
            tracing::error!(certificate_id = %c.certificate_id, "a stored certificate does not parse; left out of the CRL");
            continue;
        };
        let at = c.revoked_at.unwrap_or(c.created_at);
        let revoked_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        entries.push(RevokedEntry {
            serial_hex,
            revoked_at,
        });
    }
    let now = OffsetDateTime::now_utc();
    let crl_pem = fleetcmd_identity::crl(ca, &entries, now, now + CRL_VALIDITY)
        .map_err(|e| Status::internal(format!("signing the CRL: {e}")))?;
    Ok(Response::new(pb::GetCertificateRevocationListResponse {
        crl_pem,
    }))
}

pub(crate) async fn create_password(
    deps: &RegistryDeps,
    request: Request<pb::CreateThingPasswordRequest>,
) -> Result<Response<pb::CreateThingPasswordResponse>, Status> {
    let owner =
        credential_owner_from_pb(request.get_ref().owner.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::CreateThingPassword,
        None,
        Some(&owner),
    )?;
    // Hashing is deliberately slow: off the async workers.
    let (password, hash) = tokio::task::spawn_blocking(|| {
        let password = fleetcmd_identity::password::generate()?;
        let hash = fleetcmd_identity::password::hash(&password)?;
        Ok::<_, fleetcmd_identity::Error>((password, hash))
    })
    .await
    .map_err(|e| Status::internal(format!("hashing the password: {e}")))?
    .map_err(|e| Status::internal(format!("making a password: {e}")))?;
    call(deps, &owner, CredentialInput::SetPassword { hash }).await?;
    // A thing logs in with its name (as on Mosquitto); a bare client id says what it is, so
    // it cannot be read as a thing of the same name.
    let username = match owner.kind {
        TargetKind::Thing => owner.id,
        TargetKind::Client => fleetcmd_domain::device_acl::identity_string(&owner),
    };
    Ok(Response::new(pb::CreateThingPasswordResponse {
        username,
        password,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_defaults_and_is_bounded() {
        assert_eq!(validity_days(0).unwrap(), DEFAULT_VALIDITY_DAYS);
        assert_eq!(validity_days(30).unwrap(), 30);
        assert_eq!(validity_days(MAX_VALIDITY_DAYS).unwrap(), MAX_VALIDITY_DAYS);
        let err = validity_days(MAX_VALIDITY_DAYS + 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("validity_days"), "{}", err.message());
    }

    #[test]
    fn a_reencoded_certificate_keeps_its_serial_and_id() {
        let ca = Ca::generate(OffsetDateTime::now_utc()).unwrap();
        let identity = DeviceIdentity::thing("lamp-1").unwrap();
        let issued =
            fleetcmd_identity::issue(&ca, &identity, 1, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(
            fleetcmd_identity::certificate_serial_hex(&issued.certificate_pem).as_deref(),
            Some(issued.serial_hex.as_str())
        );
        let parsed = fleetcmd_identity::parse_and_verify(
            &issued.certificate_pem,
            &[ca.trusted()],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(
            fleetcmd_identity::certificate_pem(&parsed.der),
            issued.certificate_pem
        );
        assert_eq!(fleetcmd_identity::certificate_serial_hex("not a pem"), None);
    }
}
