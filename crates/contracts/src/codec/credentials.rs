//! Device credentials' events and inputs, as the log and the bus carry them.

use fleetcmd_domain::credential::{
    CertificateRecord, CertificateStatus, CredentialEvent, CredentialInput, Credentials,
};
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::protocol::ShardRequest;

use super::{CodecError, Result, required, target_from};
use crate::internal as ipb;

fn status_to_ipb(s: CertificateStatus) -> ipb::CertificateStatus {
    match s {
        CertificateStatus::Active => ipb::CertificateStatus::CertificateActive,
        CertificateStatus::Revoked => ipb::CertificateStatus::CertificateRevoked,
    }
}

fn status_from_ipb(value: i32) -> Result<CertificateStatus> {
    match ipb::CertificateStatus::try_from(value) {
        Ok(ipb::CertificateStatus::CertificateActive) => Ok(CertificateStatus::Active),
        Ok(ipb::CertificateStatus::CertificateRevoked) => Ok(CertificateStatus::Revoked),
        _ => Err(ValidationError::new(
            "certificate.status",
            format!("unknown certificate status {value}"),
        )
        .into()),
    }
}

pub(super) fn certificate_to_ipb(c: &CertificateRecord) -> ipb::CertificateRecord {
    ipb::CertificateRecord {
        certificate_id: c.certificate_id.clone(),
        owner: Some((&c.owner).into()),
        status: status_to_ipb(c.status) as i32,
        certificate_pem: c.certificate_pem.clone(),
        ca_certificate_id: c.ca_certificate_id.clone(),
        not_before_ms: c.not_before,
        not_after_ms: c.not_after,
        created_at_ms: c.created_at,
        revoked_at_ms: c.revoked_at,
    }
}

pub(super) fn certificate_from_ipb(c: ipb::CertificateRecord) -> Result<CertificateRecord> {
    Ok(CertificateRecord {
        certificate_id: c.certificate_id,
        owner: target_from(c.owner)?,
        status: status_from_ipb(c.status)?,
        certificate_pem: c.certificate_pem,
        ca_certificate_id: c.ca_certificate_id,
        not_before: c.not_before_ms,
        not_after: c.not_after_ms,
        created_at: c.created_at_ms,
        revoked_at: c.revoked_at_ms,
    })
}

pub(super) fn credentials_to_ipb(c: &Credentials) -> ipb::Credentials {
    ipb::Credentials {
        owner: Some((&c.owner).into()),
        certificates: c.certificates.values().map(certificate_to_ipb).collect(),
        password_hash: c.password_hash.clone(),
        version: c.version,
    }
}

pub(super) fn credentials_from_ipb(c: ipb::Credentials) -> Result<Credentials> {
    Ok(Credentials {
        owner: target_from(c.owner)?,
        certificates: c
            .certificates
            .into_iter()
            .map(|r| certificate_from_ipb(r).map(|r| (r.certificate_id.clone(), r)))
            .collect::<Result<_>>()?,
        password_hash: c.password_hash,
        version: c.version,
    })
}

pub(super) fn event_to_pb(event: &CredentialEvent) -> ipb::event_envelope::Event {
    use ipb::event_envelope::Event as E;
    match event {
        CredentialEvent::CertificateAttached(c) => {
            E::CertificateAttached(ipb::CertificateAttached {
                certificate: Some(certificate_to_ipb(c)),
            })
        }
        CredentialEvent::CertificateRevoked { certificate_id } => {
            E::CertificateRevoked(ipb::CertificateRevoked {
                certificate_id: certificate_id.clone(),
            })
        }
        CredentialEvent::PasswordSet { hash } => {
            E::PasswordSet(ipb::PasswordSet { hash: hash.clone() })
        }
    }
}

/// A credential event; the caller passes only the credential members of the oneof.
pub(super) fn event_from_pb(event: ipb::event_envelope::Event) -> Result<CredentialEvent> {
    use ipb::event_envelope::Event as E;
    Ok(match event {
        E::CertificateAttached(a) => CredentialEvent::CertificateAttached(certificate_from_ipb(
            required("certificate_attached.certificate", a.certificate)?,
        )?),
        E::CertificateRevoked(r) => CredentialEvent::CertificateRevoked {
            certificate_id: r.certificate_id,
        },
        E::PasswordSet(p) => CredentialEvent::PasswordSet { hash: p.hash },
        _ => return Err(CodecError::Missing("event.credential")),
    })
}

pub(super) fn input_to_pb(
    owner: &fleetcmd_domain::ids::Target,
    input: &CredentialInput,
) -> ipb::CredentialInput {
    use ipb::credential_input::Input as I;
    let input = match input {
        CredentialInput::AttachCertificate(c) => I::AttachCertificate(certificate_to_ipb(c)),
        CredentialInput::RevokeCertificate { certificate_id } => {
            I::RevokeCertificate(ipb::CertificateRevoked {
                certificate_id: certificate_id.clone(),
            })
        }
        CredentialInput::SetPassword { hash } => {
            I::SetPassword(ipb::PasswordSet { hash: hash.clone() })
        }
    };
    ipb::CredentialInput {
        owner: Some(owner.into()),
        input: Some(input),
    }
}

pub(super) fn input_from_pb(c: ipb::CredentialInput) -> Result<ShardRequest> {
    use ipb::credential_input::Input as I;
    let input = match required("credential_input.input", c.input)? {
        I::AttachCertificate(r) => CredentialInput::AttachCertificate(certificate_from_ipb(r)?),
        I::RevokeCertificate(r) => CredentialInput::RevokeCertificate {
            certificate_id: r.certificate_id,
        },
        I::SetPassword(p) => CredentialInput::SetPassword { hash: p.hash },
    };
    Ok(ShardRequest::Credential {
        owner: target_from(c.owner)?,
        input,
    })
}
