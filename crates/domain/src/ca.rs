//! CA certificates a user registered (AWS IoT's RegisterCACertificate): a device certificate
//! signed by one of them may be attached to a thing with RegisterThingCertificate, and the
//! device listener trusts it at the handshake. A registered CA is an aggregate of its own,
//! keyed by its certificate id and owned by the shard of `ca/<id>`, so registering it twice
//! (a retry, or two callers at once) is decided in one place.
//!
//! The registry verifies the certificate (it parses, says it is a CA, is within its validity)
//! before it asks the shard; the decision here checks the record's shape, so a log never holds
//! one that a reader could not use. Registered CAs are never removed in this version: a device
//! certificate signed by one is revoked one by one, like any other.

use serde::{Deserialize, Serialize};

use crate::credential::{CERTIFICATE_PEM_MAX_BYTES, validate_certificate_id};
use crate::error::{Rejection, ValidationError, ensure};
use crate::model::TimestampMs;

/// The most CA certificates a deployment may register (AWS IoT: 10 per account and region
/// with the same subject; fleetcmd counts all of them, since every one is a trust anchor the
/// device listener checks).
pub const REGISTERED_CAS_MAX: usize = 100;

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertificate {
    /// Hex SHA-256 of the certificate's DER.
    pub ca_certificate_id: String,
    pub certificate_pem: String,
    /// The subject's common name, if it has one (for listings).
    pub common_name: Option<String>,
    pub not_before: TimestampMs,
    pub not_after: TimestampMs,
    /// When it was registered (set by the decision).
    pub registered_at: TimestampMs,
    /// The sequence number of its last event (1 after registration).
    pub version: u64,
}

/// An input aimed at a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaInput {
    /// Register a certificate the caller verified; `registered_at` and `version` are set by
    /// the decision.
    Register(CaCertificate),
}

/// Facts about a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaEvent {
    Registered(CaCertificate),
}

impl CaEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registered(_) => "CaCertificateRegistered",
        }
    }
}

/// The routing key of a CA certificate: `ca/<id>`.
pub fn routing_key(ca_certificate_id: &str) -> String {
    format!("ca/{ca_certificate_id}")
}

fn validate(c: &CaCertificate) -> Result<(), ValidationError> {
    validate_certificate_id(&c.ca_certificate_id)
        .map_err(|e| ValidationError::new("ca_certificate_id", e.message))?;
    let pem_ok = !c.certificate_pem.is_empty()
        && c.certificate_pem.len() <= CERTIFICATE_PEM_MAX_BYTES
        && c.certificate_pem.is_ascii();
    ensure(pem_ok, "ca_certificate_pem", || {
        format!("must be an ASCII PEM of at most {CERTIFICATE_PEM_MAX_BYTES} bytes")
    })?;
    ensure(c.not_before < c.not_after, "ca_certificate_pem", || {
        "its validity must end after it starts".to_string()
    })
}

/// Decides an input for the CA certificate whose state is `state`. Registering one that is
/// registered already records nothing (a retry gets the same answer as the first call).
pub fn decide(
    state: Option<&CaCertificate>,
    input: &CaInput,
    now: TimestampMs,
) -> Result<Vec<CaEvent>, Rejection> {
    match input {
        CaInput::Register(c) => {
            validate(c)?;
            if state.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![CaEvent::Registered(CaCertificate {
                registered_at: now,
                version: 1,
                ..c.clone()
            })])
        }
    }
}

/// Folds one logged event with sequence number `seq`; an event the state has reached already
/// changes nothing, so a reader may see an event again.
pub fn fold(state: &mut Option<CaCertificate>, event: &CaEvent, seq: u64) {
    if state.as_ref().is_some_and(|s| s.version >= seq) {
        return;
    }
    match event {
        CaEvent::Registered(c) => {
            *state = Some(CaCertificate {
                version: seq,
                ..c.clone()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectionCode;

    fn ca(n: u8) -> CaCertificate {
        CaCertificate {
            ca_certificate_id: format!("{n:02x}").repeat(32),
            certificate_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            common_name: Some("Acme device CA".into()),
            not_before: 1,
            not_after: 100,
            registered_at: 0,
            version: 0,
        }
    }

    #[test]
    fn a_ca_is_registered_once_and_a_retry_records_nothing() {
        let mut state = None;
        let events = decide(state.as_ref(), &CaInput::Register(ca(1)), 50).unwrap();
        assert_eq!(events.len(), 1);
        fold(&mut state, &events[0], 1);
        let stored = state.clone().unwrap();
        assert_eq!((stored.registered_at, stored.version), (50, 1));
        let again = decide(state.as_ref(), &CaInput::Register(ca(1)), 60).unwrap();
        assert!(again.is_empty(), "{again:?}");
        // Seen again by a reader: no change.
        fold(&mut state, &events[0], 1);
        assert_eq!(state.unwrap(), stored);
    }

    #[test]
    fn a_malformed_record_is_refused() {
        type Break = fn(&mut CaCertificate);
        let cases: [(Break, &str); 3] = [
            (
                |c| c.ca_certificate_id = "nothex".into(),
                "ca_certificate_id",
            ),
            (|c| c.certificate_pem.clear(), "ca_certificate_pem"),
            (|c| c.not_after = c.not_before, "ca_certificate_pem"),
        ];
        for (break_it, field) in cases {
            let mut c = ca(2);
            break_it(&mut c);
            let err = decide(None, &CaInput::Register(c), 1).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidRequest);
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }
}
