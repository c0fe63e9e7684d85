//! Registered CA certificates over gRPC (RegisterCaCertificate, ListCaCertificates). A user
//! registers the CA that signs their devices' certificates; RegisterThingCertificate then
//! accepts a certificate that chains to it, and the device listener of `fleetcmd serve`
//! trusts it at the handshake. The registry verifies the certificate here (it parses, its
//! basic constraints say CA, it is valid now); the registration is durable in the shard of
//! `ca/<id>` and read back from the read model.

use fleetcmd_contracts::convert::{port_status, rejection_status, validation_status};
use fleetcmd_contracts::pb;
use fleetcmd_domain::ca::{CaCertificate, CaInput, REGISTERED_CAS_MAX};
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_identity::TrustedCa;
use fleetcmd_service_kit::{await_projection, call_status, unexpected};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::RegistryDeps;
use crate::credentials::{ms, pem_field};

fn invalid(message: impl Into<String>) -> Status {
    validation_status(ValidationError::new("ca_certificate_pem", message))
}

/// The trust anchors a device certificate may chain to: the fleetcmd CA (when this
/// deployment has one) and every registered CA. A stored CA that no longer parses is left
/// out, said loudly: it was verified when it was registered.
pub(crate) async fn trusted(deps: &RegistryDeps) -> Result<Vec<TrustedCa>, Status> {
    let mut trusted: Vec<TrustedCa> = deps.ca.iter().map(|ca| ca.trusted()).collect();
    let registered = deps
        .read_model
        .list_ca_certificates()
        .await
        .map_err(port_status)?;
    for c in registered {
        match TrustedCa::from_pem(&c.certificate_pem) {
            Ok(ca) => trusted.push(ca),
            Err(e) => {
                tracing::error!(ca_certificate_id = %c.ca_certificate_id, error = %e, "a registered CA certificate does not parse; not trusted");
            }
        }
    }
    Ok(trusted)
}

pub(crate) async fn register(
    deps: &RegistryDeps,
    request: Request<pb::RegisterCaCertificateRequest>,
) -> Result<Response<pb::RegisterCaCertificateResponse>, Status> {
    deps.auth.check(
        request.metadata(),
        Action::RegisterCaCertificate,
        None,
        None,
    )?;
    let pem = request.into_inner().ca_certificate_pem;
    pem_field("ca_certificate_pem", &pem)?;
    if pem.is_empty() {
        return Err(invalid("is required"));
    }
    let ca = TrustedCa::from_pem(&pem).map_err(|e| invalid(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    if now < ca.not_before() || now > ca.not_after() {
        return Err(invalid(format!(
            "is not valid now: it is valid from {} to {}",
            ca.not_before(),
            ca.not_after()
        )));
    }
    if deps.ca.as_ref().is_some_and(|own| own.id() == ca.id()) {
        return Err(invalid(
            "is fleetcmd's own device CA, which is trusted already",
        ));
    }
    let registered = deps
        .read_model
        .list_ca_certificates()
        .await
        .map_err(port_status)?;
    if registered.iter().any(|c| c.ca_certificate_id == ca.id()) {
        // A retry, or the same CA registered twice: the same answer, nothing written.
        return Ok(Response::new(pb::RegisterCaCertificateResponse {
            ca_certificate_id: ca.id().to_owned(),
        }));
    }
    // Checked on the read model, not in one shard (each CA is its own aggregate): two
    // registrations at once may both pass at the limit, which bounds the overshoot by the
    // number of concurrent callers.
    if registered.len() >= REGISTERED_CAS_MAX {
        return Err(Status::resource_exhausted(format!(
            "{REGISTERED_CAS_MAX} CA certificates are registered, the most a deployment may"
        )));
    }
    let record = CaCertificate {
        ca_certificate_id: ca.id().to_owned(),
        certificate_pem: ca.certificate_pem(),
        common_name: ca.common_name().map(str::to_owned),
        not_before: ms(ca.not_before()),
        not_after: ms(ca.not_after()),
        // Set by the decision.
        registered_at: 0,
        version: 0,
    };
    let request = ShardRequest::Ca {
        ca_certificate_id: record.ca_certificate_id.clone(),
        input: CaInput::Register(record),
    };
    match deps.shards.call(&request).await.map_err(call_status)? {
        ShardReply::Ca { position, .. } => {
            await_projection(&deps.projection, position).await;
        }
        ShardReply::Rejected(r) => return Err(rejection_status(r)),
        other => return Err(unexpected(&other)),
    }
    if let Some(trust) = &deps.device_trust {
        trust.ca_registered(&ca);
    }
    Ok(Response::new(pb::RegisterCaCertificateResponse {
        ca_certificate_id: ca.id().to_owned(),
    }))
}

pub(crate) async fn list(
    deps: &RegistryDeps,
    request: Request<pb::ListCaCertificatesRequest>,
) -> Result<Response<pb::ListCaCertificatesResponse>, Status> {
    deps.auth
        .check(request.metadata(), Action::ListCaCertificates, None, None)?;
    let cas = deps
        .read_model
        .list_ca_certificates()
        .await
        .map_err(port_status)?;
    Ok(Response::new(pb::ListCaCertificatesResponse {
        ca_certificates: cas.into_iter().map(Into::into).collect(),
    }))
}
