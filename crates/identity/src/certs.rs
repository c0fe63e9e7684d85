//! Device certificates: issued by the fleetcmd CA (with a fresh key, or from a device's CSR),
//! verified against the trusted CAs, identified by the hex SHA-256 of their DER (as AWS IoT
//! certificate ids are), and revoked through a CRL that Mosquitto can load.
//!
//! A device certificate's subject CN is its identity string (`things/lamp-1`): Mosquitto's
//! `use_identity_as_username` then hands the broker's ACLs the same name fleetcmd uses. Chain
//! verification is rustls-webpki's, for the client-auth usage, so a certificate is judged here
//! exactly as the TLS handshake judges it.

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::ca::Ca;
use crate::error::{Error, Result};
use crate::identity::DeviceIdentity;
use crate::util::{from_unix, hex, pem_certificates, random_bytes, sha256_hex, unhex, unix_time};

/// How far back `not_before` is set from the issuing time, so that a verifier whose clock
/// runs a little behind ours (Mosquitto on another host) does not see "not yet valid".
pub(crate) const BACKDATE: Duration = Duration::hours(1);

/// Why a certificate is not accepted. The first five are the failures an operator meets in
/// practice; each gets its own TLS alert in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the certificate expired at {not_after}")]
    Expired { not_after: OffsetDateTime },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: OffsetDateTime },
    #[error("the certificate was not issued by a trusted CA")]
    UnknownIssuer,
    #[error("the certificate is not valid for TLS client authentication")]
    WrongUsage,
    #[error("the certificate is revoked")]
    Revoked,
    #[error("the certificate's signature does not verify with its issuer's key")]
    BadSignature,
    #[error("the certificate is malformed: {0}")]
    Malformed(String),
    /// Any other rejection by the path validator (name constraints, path length, ...).
    #[error("the certificate does not verify: {0}")]
    Invalid(webpki::Error),
}

impl From<webpki::Error> for CertificateError {
    fn from(e: webpki::Error) -> Self {
        use webpki::Error as W;
        match e {
            W::CertExpired { not_after, .. } => Self::Expired {
                not_after: from_unix(not_after.as_secs() as i64),
            },
            W::CertNotValidYet { not_before, .. } => Self::NotYetValid {
                not_before: from_unix(not_before.as_secs() as i64),
            },
            W::UnknownIssuer => Self::UnknownIssuer,
            W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension | W::CaUsedAsEndEntity => {
                Self::WrongUsage
            }
            W::CertRevoked => Self::Revoked,
            W::InvalidSignatureForPublicKey => Self::BadSignature,
            W::BadDer | W::BadDerTime | W::TrailingData(_) => Self::Malformed(e.to_string()),
            other => Self::Invalid(other),
        }
    }
}

/// A CA whose certificates are accepted: fleetcmd's own, or one a user registered. Parsed
/// once, here, so a handshake only compares bytes.
#[derive(Debug, Clone)]
pub struct TrustedCa {
    id: String,
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    common_name: Option<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl TrustedCa {
    /// Takes a CA certificate in DER; refuses one whose basic constraints do not say CA.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der = CertificateDer::from(der.into());
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| Error::invalid("CA certificate", e))?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(Error::invalid(
                "CA certificate",
                "its basic constraints do not mark it as a CA",
            ));
        }
        let common_name = subject_common_name(&x509);
        let validity = x509.validity();
        let (not_before, not_after) = (
            from_unix(validity.not_before.timestamp()),
            from_unix(validity.not_after.timestamp()),
        );
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| Error::invalid("CA certificate", e))?
            .to_owned();
        Ok(Self {
            id: certificate_id(&der),
            der,
            anchor,
            common_name,
            not_before,
            not_after,
        })
    }

    /// Takes a CA certificate in PEM (the first CERTIFICATE block).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let first = pem_certificates("CA certificate", pem)?.swap_remove(0);
        Self::from_der(first.to_vec())
    }

    /// The CA's certificate id (hex SHA-256 of its DER).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA's subject CN, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// When the CA's certificate starts to be valid.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// When the CA's certificate stops being valid.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate in PEM, as fleetcmd stores it.
    pub fn certificate_pem(&self) -> String {
        certificate_pem(&self.der)
    }

    pub(crate) fn anchor(&self) -> &TrustAnchor<'static> {
        &self.anchor
    }
}

/// A certificate fleetcmd just issued. `private_key_pem` (PKCS#8) is there only when fleetcmd
/// generated the key: it is shown to the caller once and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub private_key_pem: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Lowercase hex of the serial's magnitude, as [`ParsedCertificate::serial_hex`] and
    /// [`RevokedEntry::serial_hex`] spell it.
    pub serial_hex: String,
}

/// A certificate that verified against one of the trusted CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCertificate {
    pub certificate_id: String,
    pub common_name: Option<String>,
    pub serial_hex: String,
    /// The id of the trusted CA the chain ends at.
    pub issuer_ca_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub der: Vec<u8>,
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
}

/// The certificate id: hex SHA-256 of the DER, 64 characters, as AWS IoT spells them.
pub fn certificate_id(der: &[u8]) -> String {
    sha256_hex(der)
}

/// Issues a client certificate with a fresh ECDSA P-256 key for `identity`, valid for
/// `validity_days` from `now` (backdated by an hour for clock skew).
pub fn issue(
    ca: &Ca,
    identity: &DeviceIdentity,
    validity_days: u32,
    now: OffsetDateTime,
) -> Result<Issued> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut issued = sign_device(ca, &key, identity, validity_days, now)?;
    issued.private_key_pem = Some(key.serialize_pem());
    Ok(issued)
}

/// Signs a device's CSR for `identity`. The CSR's signature must verify (the device holds the
/// key); its subject and requested extensions are ignored: the certificate's CN is the
/// identity and its usage is client authentication, whatever the CSR asked for.
pub fn sign_csr(
    ca: &Ca,
    csr_pem: &str,
    identity: &DeviceIdentity,
    validity_days: u32,
    now: OffsetDateTime,
) -> Result<Issued> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| Error::invalid("CSR", e))?;
    let (_, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| Error::invalid("CSR", e))?;
    csr.verify_signature()
        .map_err(|_| Error::invalid("CSR", "its signature does not verify"))?;
    let public_key =
        rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)?;
    sign_device(ca, &public_key, identity, validity_days, now)
}

fn sign_device(
    ca: &Ca,
    public_key: &impl PublicKeyData,
    identity: &DeviceIdentity,
    validity_days: u32,
    now: OffsetDateTime,
) -> Result<Issued> {
    if validity_days == 0 {
        return Err(Error::invalid("validity", "must be at least one day"));
    }
    let mut params = CertificateParams::default();
    let not_after = now + Duration::days(i64::from(validity_days));
    set_subject_and_validity(&mut params, identity.as_str(), now, not_after)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // The AKI lets OpenSSL (Mosquitto) find the issuer without comparing names.
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(public_key, ca.issuer())?;
    issued_from_der(cert.der())
}

pub(crate) fn issued_from_der(der: &[u8]) -> Result<Issued> {
    let (_, x509) =
        X509Certificate::from_der(der).map_err(|e| Error::invalid("issued certificate", e))?;
    let validity = x509.validity();
    Ok(Issued {
        certificate_id: certificate_id(der),
        certificate_pem: crate::util::pem_encode("CERTIFICATE", der),
        private_key_pem: None,
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
        serial_hex: serial_hex(x509.raw_serial()),
    })
}

/// What every certificate issued here has (the CA's own, servers', devices'): the subject
/// `CN=common_name`, validity from [`BACKDATE`] before `now` to `not_after`, and a fresh
/// random serial.
pub(crate) fn set_subject_and_validity(
    params: &mut CertificateParams,
    common_name: impl Into<DnValue>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<()> {
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

/// 128 random bits. The magnitude is what counts: DER adds a zero byte when the top bit is
/// set, and [`serial_hex`] strips it again.
pub(crate) fn random_serial() -> Result<SerialNumber> {
    Ok(SerialNumber::from_slice(&random_bytes::<16>()?))
}

/// Lowercase hex of a serial's magnitude, without the sign byte or leading zeros.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        return "00".to_owned();
    }
    hex(&raw[start..])
}

/// A certificate in DER as a PEM `CERTIFICATE` block, as fleetcmd stores and hands them out.
pub fn certificate_pem(der: &[u8]) -> String {
    crate::util::pem_encode("CERTIFICATE", der)
}

/// The serial of a PEM certificate (its first block), spelled as [`Issued::serial_hex`] and
/// [`RevokedEntry::serial_hex`] are; `None` when it does not parse.
pub fn certificate_serial_hex(pem: &str) -> Option<String> {
    let der = crate::util::pem_certificates("certificate", pem)
        .ok()?
        .swap_remove(0);
    let (_, x509) = X509Certificate::from_der(&der).ok()?;
    Some(serial_hex(x509.raw_serial()))
}

/// The subject CN of a certificate in DER, if it parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, x509)| subject_common_name(&x509))
}

fn subject_common_name(x509: &X509Certificate<'_>) -> Option<String> {
    x509.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Parses a PEM certificate (leaf first; any further blocks are intermediates) and verifies it
/// for client authentication against `trusted` at `now`.
pub fn parse_and_verify(
    pem: &str,
    trusted: &[TrustedCa],
    now: OffsetDateTime,
) -> Result<ParsedCertificate, CertificateError> {
    let mut chain = pem_certificates("certificate", pem)
        .map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let leaf = chain.remove(0);
    let anchors: Vec<TrustAnchor<'static>> = trusted.iter().map(|ca| ca.anchor().clone()).collect();
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let index = verify_client_chain(&leaf, &chain, &anchors, unix_time(now), algs)?;
    let (_, x509) =
        X509Certificate::from_der(&leaf).map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let validity = x509.validity();
    Ok(ParsedCertificate {
        certificate_id: certificate_id(&leaf),
        common_name: subject_common_name(&x509),
        serial_hex: serial_hex(x509.raw_serial()),
        issuer_ca_id: trusted[index].id().to_owned(),
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
        der: leaf.to_vec(),
    })
}

/// Verifies a client chain with webpki and returns the index of the anchor it ends at. Shared
/// by [`parse_and_verify`] and the handshake verifier, so both judge alike.
pub(crate) fn verify_client_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<usize, CertificateError> {
    let cert = webpki::EndEntityCert::try_from(end_entity)?;
    let path = cert.verify_for_usage(
        algs,
        anchors,
        intermediates,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )?;
    // `anchor()` borrows from `anchors`, so identity of the reference names the CA.
    let anchor = path.anchor();
    anchors
        .iter()
        .position(|a| std::ptr::eq(a, anchor))
        .ok_or(CertificateError::UnknownIssuer)
}

/// A CRL signed by `ca` listing `revoked`, issued at `now`, to be replaced by `next_update`.
/// The CRL number is `now` in Unix seconds, so each export supersedes the previous one.
pub fn crl(
    ca: &Ca,
    revoked: &[RevokedEntry],
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<String> {
    let revoked_certs = revoked
        .iter()
        .map(|entry| {
            let serial = unhex(&entry.serial_hex)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        "revoked serial",
                        format!("{:?} is not hex", entry.serial_hex),
                    )
                })?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: entry.revoked_at,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let crl_number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The CRL's AKI must equal the CA certificate's SKI for OpenSSL to match them.
        key_identifier_method: ca.key_id_method().clone(),
    };
    Ok(params.signed_by(ca.issuer())?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_strips_sign_and_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x00, 0x00, 0x01]), "01");
        assert_eq!(serial_hex(&[0x7f]), "7f");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn webpki_errors_map_to_named_failures() {
        let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(100));
        let e: CertificateError = webpki::Error::CertExpired {
            time: t,
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(50)),
        }
        .into();
        assert_eq!(
            e,
            CertificateError::Expired {
                not_after: from_unix(50)
            }
        );
        assert_eq!(
            CertificateError::from(webpki::Error::UnknownIssuer),
            CertificateError::UnknownIssuer
        );
        assert_eq!(
            CertificateError::from(webpki::Error::CaUsedAsEndEntity),
            CertificateError::WrongUsage
        );
        assert!(matches!(
            CertificateError::from(webpki::Error::BadDer),
            CertificateError::Malformed(_)
        ));
    }
}
