//! Registered CA certificates' events and inputs, as the log and the bus carry them.

use fleetcmd_domain::ca::{CaCertificate, CaEvent, CaInput};
use fleetcmd_domain::credential::validate_certificate_id;
use fleetcmd_domain::protocol::ShardRequest;

use super::Result;
use crate::internal as ipb;

pub(super) fn ca_to_ipb(c: &CaCertificate) -> ipb::CaCertificate {
    ipb::CaCertificate {
        ca_certificate_id: c.ca_certificate_id.clone(),
        certificate_pem: c.certificate_pem.clone(),
        common_name: c.common_name.clone(),
        not_before_ms: c.not_before,
        not_after_ms: c.not_after,
        registered_at_ms: c.registered_at,
        version: c.version,
    }
}

pub(super) fn ca_from_ipb(c: ipb::CaCertificate) -> Result<CaCertificate> {
    validate_certificate_id(&c.ca_certificate_id)?;
    Ok(CaCertificate {
        ca_certificate_id: c.ca_certificate_id,
        certificate_pem: c.certificate_pem,
        common_name: c.common_name,
        not_before: c.not_before_ms,
        not_after: c.not_after_ms,
        registered_at: c.registered_at_ms,
        version: c.version,
    })
}

pub(super) fn event_to_pb(event: &CaEvent) -> ipb::event_envelope::Event {
    match event {
        CaEvent::Registered(c) => ipb::event_envelope::Event::CaCertificateRegistered(ca_to_ipb(c)),
    }
}

pub(super) fn registered_from_pb(c: ipb::CaCertificate) -> Result<CaEvent> {
    Ok(CaEvent::Registered(ca_from_ipb(c)?))
}

/// The request carries the record only: its id is the aggregate's.
pub(super) fn input_to_pb(input: &CaInput) -> ipb::CaCertificate {
    match input {
        CaInput::Register(c) => ca_to_ipb(c),
    }
}

pub(super) fn input_from_pb(c: ipb::CaCertificate) -> Result<ShardRequest> {
    let ca = ca_from_ipb(c)?;
    Ok(ShardRequest::Ca {
        ca_certificate_id: ca.ca_certificate_id.clone(),
        input: CaInput::Register(ca),
    })
}
