//! Device credentials: the X.509 certificates and the password a device authenticates with,
//! as `decide`/`apply` like things. The credentials of one owner (a thing or a bare client id)
//! are one aggregate, owned by the shard of the owner's routing key (`thing/<name>` or
//! `client/<id>`): the shard of a thing is the shard of its credentials, so "the thing must
//! exist" is decided where the thing is.
//!
//! Certificates are never removed, only revoked (a revoked certificate stays listed, as in
//! AWS IoT), and an owner holds at most [`CERTIFICATES_PER_OWNER_MAX`] of them. A password is
//! stored as its argon2id PHC string, never in the clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Rejection, RejectionCode, ValidationError, ensure};
use crate::ids::{Target, TargetKind};
use crate::model::TimestampMs;

/// Certificates one owner may hold, revoked ones included (AWS IoT: 10 principals per thing).
pub const CERTIFICATES_PER_OWNER_MAX: usize = 10;
/// A certificate id: hex SHA-256 of the DER, 64 lowercase characters.
pub const CERTIFICATE_ID_CHARS: usize = 64;
/// The largest certificate PEM accepted (a device certificate is about 1 KiB).
pub const CERTIFICATE_PEM_MAX_BYTES: usize = 16 * 1024;
/// The largest password hash stored (an argon2id PHC string is under 128 bytes).
pub const PASSWORD_HASH_MAX_BYTES: usize = 512;

/// Whether a certificate may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CertificateStatus {
    Active,
    Revoked,
}

impl CertificateStatus {
    /// `ACTIVE` or `REVOKED`, as stores and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Revoked => "REVOKED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(Self::Active),
            "REVOKED" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// A certificate attached to an owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Hex SHA-256 of the certificate's DER.
    pub certificate_id: String,
    pub owner: Target,
    pub status: CertificateStatus,
    pub certificate_pem: String,
    /// The id of the CA that issued it.
    pub ca_certificate_id: String,
    pub not_before: TimestampMs,
    pub not_after: TimestampMs,
    /// When it was attached.
    pub created_at: TimestampMs,
    /// When it was revoked (the time of the revocation event).
    pub revoked_at: Option<TimestampMs>,
}

/// Everything one owner authenticates with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub owner: Target,
    /// By certificate id.
    pub certificates: BTreeMap<String, CertificateRecord>,
    /// The argon2id PHC string of the owner's password, if one was set.
    pub password_hash: Option<String>,
    /// The sequence number of the owner's last credential event (1 after the first).
    pub version: u64,
}

impl Credentials {
    pub fn new(owner: Target) -> Self {
        Self {
            owner,
            certificates: BTreeMap::new(),
            password_hash: None,
            version: 0,
        }
    }
}

/// An input aimed at an owner's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialInput {
    /// Attach a certificate the caller verified (issued by, or chaining to, a trusted CA).
    /// The record's `status`, `created_at` and `revoked_at` are set by the decision.
    AttachCertificate(CertificateRecord),
    RevokeCertificate {
        certificate_id: String,
    },
    /// Replace the owner's password by the one with this hash.
    SetPassword {
        hash: String,
    },
}

/// Facts about an owner's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialEvent {
    CertificateAttached(CertificateRecord),
    /// Revoked at the event's time.
    CertificateRevoked {
        certificate_id: String,
    },
    PasswordSet {
        hash: String,
    },
}

impl CredentialEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CertificateAttached(_) => "CertificateAttached",
            Self::CertificateRevoked { .. } => "CertificateRevoked",
            Self::PasswordSet { .. } => "PasswordSet",
        }
    }
}

/// A certificate id: 64 lowercase hex characters.
pub fn validate_certificate_id(id: &str) -> Result<(), ValidationError> {
    let ok = id.len() == CERTIFICATE_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ensure(ok, "certificate_id", || {
        format!(
            "must be {CERTIFICATE_ID_CHARS} lowercase hex characters (the SHA-256 of the certificate's DER)"
        )
    })
}

fn validate_record(r: &CertificateRecord) -> Result<(), ValidationError> {
    validate_certificate_id(&r.certificate_id)?;
    let ca_ok = validate_certificate_id(&r.ca_certificate_id).is_ok();
    ensure(ca_ok, "ca_certificate_id", || {
        "must be the issuing CA's certificate id".to_string()
    })?;
    let pem_ok = !r.certificate_pem.is_empty()
        && r.certificate_pem.len() <= CERTIFICATE_PEM_MAX_BYTES
        && r.certificate_pem.is_ascii();
    ensure(pem_ok, "certificate_pem", || {
        format!("must be an ASCII PEM of at most {CERTIFICATE_PEM_MAX_BYTES} bytes")
    })?;
    ensure(r.not_before < r.not_after, "not_after", || {
        "must be after not_before".to_string()
    })
}

fn validate_hash(hash: &str) -> Result<(), ValidationError> {
    let ok = hash.starts_with("$argon2") && hash.len() <= PASSWORD_HASH_MAX_BYTES;
    ensure(ok, "password_hash", || {
        "must be an argon2 PHC string".to_string()
    })
}

fn owner_not_found(owner: &Target) -> Rejection {
    Rejection::new(
        RejectionCode::ResourceNotFound,
        format!("thing {} not found", owner.id),
    )
}

/// Decides a credential input for `owner`. `thing_exists` says whether the owner, when it is
/// a thing, is registered (the caller's shard holds it); client owners need no registration.
pub fn decide(
    owner: &Target,
    state: Option<&Credentials>,
    input: &CredentialInput,
    now: TimestampMs,
    thing_exists: bool,
) -> Result<Vec<CredentialEvent>, Rejection> {
    let check_owner = || {
        if owner.kind == TargetKind::Thing && !thing_exists {
            Err(owner_not_found(owner))
        } else {
            Ok(())
        }
    };
    match input {
        CredentialInput::AttachCertificate(record) => {
            validate_record(record)?;
            if record.owner != *owner {
                return Err(
                    ValidationError::new("owner", "the certificate names another owner").into(),
                );
            }
            check_owner()?;
            let certificates = state.map(|s| &s.certificates);
            if certificates.is_some_and(|c| c.contains_key(&record.certificate_id)) {
                // Attached already (a retry): nothing to record.
                return Ok(vec![]);
            }
            let count = certificates.map_or(0, BTreeMap::len);
            if count >= CERTIFICATES_PER_OWNER_MAX {
                return Err(Rejection::new(
                    RejectionCode::QuotaExceeded,
                    format!(
                        "{owner} already has {CERTIFICATES_PER_OWNER_MAX} certificates, the most an owner may"
                    ),
                ));
            }
            Ok(vec![CredentialEvent::CertificateAttached(
                CertificateRecord {
                    status: CertificateStatus::Active,
                    created_at: now,
                    revoked_at: None,
                    ..record.clone()
                },
            )])
        }
        CredentialInput::RevokeCertificate { certificate_id } => {
            validate_certificate_id(certificate_id)?;
            let found = state.and_then(|s| s.certificates.get(certificate_id));
            match found {
                None => Err(Rejection::new(
                    RejectionCode::ResourceNotFound,
                    format!("certificate {certificate_id} not found for {owner}"),
                )),
                Some(c) if c.status == CertificateStatus::Revoked => Ok(vec![]),
                Some(_) => Ok(vec![CredentialEvent::CertificateRevoked {
                    certificate_id: certificate_id.clone(),
                }]),
            }
        }
        CredentialInput::SetPassword { hash } => {
            validate_hash(hash)?;
            check_owner()?;
            Ok(vec![CredentialEvent::PasswordSet { hash: hash.clone() }])
        }
    }
}

/// Folds one logged credential event, `at` and `seq` its time and sequence number, the way
/// every reader that may see an event again must: an event whose `seq` the state's version
/// already reached changes nothing. (An owner's credentials are never deleted, so its
/// sequence numbers only grow.)
pub fn fold(
    owner: &Target,
    state: &mut Option<Credentials>,
    event: &CredentialEvent,
    at: TimestampMs,
    seq: u64,
) {
    if state.as_ref().is_some_and(|s| s.version >= seq) {
        return;
    }
    apply(owner, state, event, at);
    if let Some(s) = state {
        s.version = seq;
    }
}

/// Folds one credential event at `at`; bumps the version by one.
pub fn apply(
    owner: &Target,
    state: &mut Option<Credentials>,
    event: &CredentialEvent,
    at: TimestampMs,
) {
    let s = state.get_or_insert_with(|| Credentials::new(owner.clone()));
    match event {
        CredentialEvent::CertificateAttached(r) => {
            s.certificates
                .entry(r.certificate_id.clone())
                .or_insert_with(|| r.clone());
        }
        CredentialEvent::CertificateRevoked { certificate_id } => {
            if let Some(c) = s.certificates.get_mut(certificate_id)
                && c.status == CertificateStatus::Active
            {
                c.status = CertificateStatus::Revoked;
                c.revoked_at = Some(at);
            }
        }
        CredentialEvent::PasswordSet { hash } => s.password_hash = Some(hash.clone()),
    }
    s.version += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Target {
        Target::thing("lamp-1").unwrap()
    }

    fn cert(n: u8) -> CertificateRecord {
        CertificateRecord {
            certificate_id: format!("{n:02x}").repeat(32),
            owner: owner(),
            status: CertificateStatus::Active,
            certificate_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            ca_certificate_id: "ca".repeat(32),
            not_before: 1,
            not_after: 100,
            created_at: 0,
            revoked_at: None,
        }
    }

    fn run(
        state: &mut Option<Credentials>,
        input: CredentialInput,
        at: TimestampMs,
        thing_exists: bool,
    ) -> Result<usize, Rejection> {
        let events = decide(&owner(), state.as_ref(), &input, at, thing_exists)?;
        for e in &events {
            apply(&owner(), state, e, at);
        }
        Ok(events.len())
    }

    #[test]
    fn a_certificate_is_attached_once_and_revoked_once() {
        let mut s = None;
        assert_eq!(
            run(&mut s, CredentialInput::AttachCertificate(cert(1)), 5, true),
            Ok(1)
        );
        let c = &s.as_ref().unwrap().certificates[&cert(1).certificate_id];
        assert_eq!((c.status, c.created_at), (CertificateStatus::Active, 5));
        // Attached again (a retry): nothing new, the first attachment's time stays.
        assert_eq!(
            run(&mut s, CredentialInput::AttachCertificate(cert(1)), 6, true),
            Ok(0)
        );
        let revoke = || CredentialInput::RevokeCertificate {
            certificate_id: cert(1).certificate_id,
        };
        assert_eq!(run(&mut s, revoke(), 7, true), Ok(1));
        assert_eq!(run(&mut s, revoke(), 8, true), Ok(0));
        let state = s.as_ref().unwrap();
        let c = &state.certificates[&cert(1).certificate_id];
        assert_eq!(
            (c.status, c.revoked_at),
            (CertificateStatus::Revoked, Some(7))
        );
        assert_eq!(state.version, 2);
        let unknown = CredentialInput::RevokeCertificate {
            certificate_id: cert(2).certificate_id,
        };
        assert_eq!(
            run(&mut s, unknown, 9, true).unwrap_err().code,
            RejectionCode::ResourceNotFound
        );
    }

    #[test]
    fn a_thing_owner_must_exist_and_holds_at_most_ten_certificates() {
        let mut s = None;
        let err = run(
            &mut s,
            CredentialInput::AttachCertificate(cert(1)),
            1,
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, RejectionCode::ResourceNotFound);
        let err = run(
            &mut s,
            CredentialInput::SetPassword {
                hash: "$argon2id$v=19$x".into(),
            },
            1,
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, RejectionCode::ResourceNotFound);
        assert!(s.is_none());
        for n in 0..CERTIFICATES_PER_OWNER_MAX as u8 {
            run(&mut s, CredentialInput::AttachCertificate(cert(n)), 1, true).unwrap();
        }
        let err = run(
            &mut s,
            CredentialInput::AttachCertificate(cert(99)),
            2,
            true,
        )
        .unwrap_err();
        assert_eq!(err.code, RejectionCode::QuotaExceeded);
        // A client owner needs no registration.
        let client = Target::client("sensor-7").unwrap();
        let events = decide(
            &client,
            None,
            &CredentialInput::SetPassword {
                hash: "$argon2id$v=19$y".into(),
            },
            1,
            false,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn bad_ids_pems_hashes_and_owners_are_refused_naming_the_field() {
        let bad = [
            (
                CredentialInput::AttachCertificate(CertificateRecord {
                    certificate_id: "XYZ".into(),
                    ..cert(1)
                }),
                "certificate_id",
            ),
            (
                CredentialInput::AttachCertificate(CertificateRecord {
                    certificate_pem: String::new(),
                    ..cert(1)
                }),
                "certificate_pem",
            ),
            (
                CredentialInput::AttachCertificate(CertificateRecord {
                    owner: Target::thing("other").unwrap(),
                    ..cert(1)
                }),
                "owner",
            ),
            (
                CredentialInput::RevokeCertificate {
                    certificate_id: "A".repeat(64),
                },
                "certificate_id",
            ),
            (
                CredentialInput::SetPassword {
                    hash: "hunter2".into(),
                },
                "password_hash",
            ),
        ];
        for (input, field) in bad {
            let err = decide(&owner(), None, &input, 1, true).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidRequest, "{input:?}");
            assert_eq!(err.field.as_deref(), Some(field), "{input:?}");
        }
    }

    #[test]
    fn a_replayed_suffix_onto_any_later_state_gives_the_same_end() {
        let log = [
            (1, CredentialEvent::CertificateAttached(cert(1))),
            (
                2,
                CredentialEvent::PasswordSet {
                    hash: "$argon2id$a".into(),
                },
            ),
            (
                3,
                CredentialEvent::CertificateRevoked {
                    certificate_id: cert(1).certificate_id,
                },
            ),
            (4, CredentialEvent::CertificateAttached(cert(2))),
            (
                5,
                CredentialEvent::PasswordSet {
                    hash: "$argon2id$b".into(),
                },
            ),
        ];
        let fold_from = |mut state: Option<Credentials>, events: &[(u64, CredentialEvent)]| {
            for (seq, e) in events {
                fold(&owner(), &mut state, e, 10 * *seq as i64, *seq);
            }
            state
        };
        let once = fold_from(None, &log).unwrap();
        assert_eq!(once.version, 5);
        assert_eq!(once.password_hash.as_deref(), Some("$argon2id$b"));
        assert_eq!(
            once.certificates[&cert(1).certificate_id].revoked_at,
            Some(30)
        );
        for from in 0..log.len() {
            for stored in from..=log.len() {
                let state = fold_from(None, &log[..stored]);
                let again = fold_from(state, &log[from..]);
                assert_eq!(again.as_ref(), Some(&once), "from {from} onto {stored}");
            }
        }
    }
}
