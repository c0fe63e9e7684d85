//! fleetcmd's certificate authority and the server certificate it issues.
//!
//! On first start `fleetcmd serve` creates an ECDSA P-256 CA in its data directory (`ca.pem`,
//! and `ca.key` readable by the owner only) and reuses it ever after: every device certificate
//! and the server certificate chain to it, and Mosquitto in cluster mode trusts the same file.
//! An operator may configure a CA of their own instead ([`Ca::from_pem`]). The server
//! certificate (`server.pem`, `server.key`) is re-issued at start whenever its SAN set changed,
//! it no longer chains to the CA, or fewer than 30 days remain.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::certs::{TrustedCa, set_subject_and_validity};
use crate::error::{Error, Result};
use crate::util::{hex, random_bytes, read_file, unix_time, write_file_atomic};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";

/// How long the CA fleetcmd creates is valid: long, because replacing it means re-issuing
/// every device certificate.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate from [`ServerIdentity::load_or_create`] is valid.
pub const SERVER_VALIDITY: Duration = Duration::days(365);
/// A server certificate with less than this left is re-issued at start.
pub const SERVER_RENEW_BEFORE: Duration = Duration::days(30);

/// A CA that can sign: its certificate and its key. Cheap to share behind an `Arc`.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    trusted: TrustedCa,
    issuer: Issuer<'static, KeyPair>,
    /// How the CA's key identifier is found (its SKI, or rcgen's SHA-256 derivation when it
    /// has none): CRLs carry it as their AKI.
    key_id_method: rcgen::KeyIdMethod,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("id", &self.id())
            .field("common_name", &self.trusted.common_name())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads `ca.pem` and `ca.key` from `dir`, or creates them (and `dir`) when neither exists.
    /// Half a pair is an error: devices may already trust the certificate that is there.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (read_file(&cert_path)?, read_file(&key_path)?) {
            (Some(cert), Some(key)) => {
                warn_if_key_readable_by_others(&key_path);
                Self::from_pem(&cert, &key)
            }
            (None, None) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::File {
                    op: "create directory",
                    path: dir.to_owned(),
                    source,
                })?;
                let ca = Self::generate(OffsetDateTime::now_utc())?;
                // The key first: a crash in between leaves `Incomplete`, never a certificate
                // whose key is lost.
                write_file_atomic(&key_path, &ca.key_pem, true)?;
                write_file_atomic(&cert_path, &ca.cert_pem, false)?;
                tracing::info!(ca_id = %ca.id(), path = %cert_path.display(), "created the device CA");
                Ok(ca)
            }
            (Some(_), None) => Err(Error::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (None, Some(_)) => Err(Error::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// A new self-signed ECDSA P-256 CA, CN `fleetcmd CA <random id>`, valid for ten years
    /// from `now`, allowed to sign certificates and CRLs and nothing else.
    pub fn generate(now: OffsetDateTime) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // A random suffix, so two deployments' CAs never share a subject name: name-based
        // chain building (OpenSSL) cannot confuse them.
        let common_name = format!("fleetcmd CA {}", hex(&random_bytes::<8>()?));
        set_subject_and_validity(&mut params, common_name, now, now + CA_VALIDITY)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fleetcmd");
        // Path length 0: this CA signs end-entity certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A configured CA: its certificate and its PKCS#8 private key (`openssl pkcs8 -topk8
    /// -nocrypt` converts other key formats). The key must belong to the certificate, and the
    /// certificate must be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let trusted = TrustedCa::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::invalid("CA key", e))?;
        let (_, x509) = X509Certificate::from_der(trusted.der())
            .map_err(|e| Error::invalid("CA certificate", e))?;
        if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(Error::invalid(
                "CA key",
                "it does not belong to the CA certificate",
            ));
        }
        // Mirrors rcgen's choice in `Issuer::from_ca_cert_der`, so the AKI of certificates and
        // of CRLs agree.
        let key_id_method = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    Some(rcgen::KeyIdMethod::PreSpecified(ski.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(rcgen::KeyIdMethod::Sha256);
        let issuer = Issuer::from_ca_cert_der(trusted.der(), key)?;
        Ok(Self {
            cert_pem: crate::util::pem_encode("CERTIFICATE", trusted.der()),
            key_pem: key_pem.to_owned(),
            trusted,
            issuer,
            key_id_method,
        })
    }

    /// The CA certificate, PEM: what devices, Mosquitto and API clients trust.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's id: hex SHA-256 of its certificate's DER.
    pub fn id(&self) -> &str {
        self.trusted.id()
    }

    /// The CA as a trust anchor, for a [`crate::TrustStore`] or [`crate::parse_and_verify`].
    pub fn trusted(&self) -> TrustedCa {
        self.trusted.clone()
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub(crate) fn key_id_method(&self) -> &rcgen::KeyIdMethod {
        &self.key_id_method
    }
}

#[cfg(unix)]
fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the CA key is readable by group or others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_key_readable_by_others(_path: &Path) {}

/// The SAN set of the server certificate: `localhost`, `127.0.0.1`, this host's name (best
/// effort) and `extra`, normalised (DNS names lowercased, IPs in canonical form), sorted and
/// without duplicates.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = BTreeSet::new();
    names.insert("localhost".to_owned());
    names.insert("127.0.0.1".to_owned());
    if let Some(host) = hostname() {
        names.insert(host);
    }
    for name in extra {
        names.insert(normalise_name(name));
    }
    names.into_iter().collect()
}

fn normalise_name(name: &str) -> String {
    let name = name.trim();
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The OS host name, if it can be read and is a valid DNS name. Read from files rather than
/// `gethostname(2)`, which would need `unsafe` or another crate, for a best-effort SAN.
fn hostname() -> Option<String> {
    let from_file = |p: &str| std::fs::read_to_string(p).ok();
    let name = from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    valid.then_some(name)
}

/// A server certificate (server-auth EKU) and its PKCS#8 key, both PEM, for [`server_names`]
/// of `extra_sans`, valid for `validity` from `now`. IP literals become IP SANs.
pub fn server_certificate(
    ca: &Ca,
    extra_sans: &[String],
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(String, String)> {
    let names = server_names(extra_sans);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names)?;
    set_subject_and_validity(&mut params, "fleetcmd server", now, now + validity)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca.issuer())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The server certificate kept in the data directory.
#[derive(Clone)]
pub struct ServerIdentity {
    certificate_pem: String,
    private_key_pem: String,
    sans: Vec<String>,
    not_after: OffsetDateTime,
    issued: bool,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("sans", &self.sans)
            .field("not_after", &self.not_after)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Loads `server.pem`/`server.key` from `dir`, re-issuing them when they are missing,
    /// unreadable, not from `ca`, for another SAN set, or within 30 days of expiry.
    pub fn load_or_create(dir: &Path, ca: &Ca, extra_sans: &[String]) -> Result<Self> {
        Self::load_or_create_at(dir, ca, extra_sans, OffsetDateTime::now_utc())
    }

    /// [`Self::load_or_create`] with the clock injected.
    pub fn load_or_create_at(
        dir: &Path,
        ca: &Ca,
        extra_sans: &[String],
        now: OffsetDateTime,
    ) -> Result<Self> {
        let cert_path = dir.join(SERVER_CERT_FILE);
        let key_path = dir.join(SERVER_KEY_FILE);
        let wanted = server_names(extra_sans);
        let existing = match (read_file(&cert_path)?, read_file(&key_path)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        if let Some((cert, key)) = existing {
            match check_current(&cert, &key, ca, &wanted, now) {
                Ok(not_after) => {
                    return Ok(Self {
                        certificate_pem: cert,
                        private_key_pem: key,
                        sans: wanted,
                        not_after,
                        issued: false,
                    });
                }
                Err(reason) => tracing::info!(reason, "re-issuing the server certificate"),
            }
        }
        let (cert, key) = server_certificate(ca, extra_sans, SERVER_VALIDITY, now)?;
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            op: "create directory",
            path: dir.to_owned(),
            source,
        })?;
        write_file_atomic(&key_path, &key, true)?;
        write_file_atomic(&cert_path, &cert, false)?;
        // The certificate's own notAfter (whole seconds), not `now + validity`.
        let not_after = crate::certs::issued_from_der(
            &crate::util::pem_certificates("server certificate", &cert)?[0],
        )?
        .not_after;
        Ok(Self {
            certificate_pem: cert,
            private_key_pem: key,
            sans: wanted,
            not_after,
            issued: true,
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// The SANs the certificate carries, as [`server_names`] spells them.
    pub fn sans(&self) -> &[String] {
        &self.sans
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether this call issued a new certificate (rather than reusing the stored one).
    pub fn was_issued(&self) -> bool {
        self.issued
    }
}

/// `Ok(not_after)` when the stored certificate can be kept, else why not.
fn check_current(
    cert_pem: &str,
    key_pem: &str,
    ca: &Ca,
    wanted: &[String],
    now: OffsetDateTime,
) -> Result<OffsetDateTime, &'static str> {
    let der = crate::util::pem_certificates("server certificate", cert_pem)
        .map_err(|_| "the stored certificate is unreadable")?
        .swap_remove(0);
    let (_, x509) =
        X509Certificate::from_der(&der).map_err(|_| "the stored certificate is unreadable")?;
    let key = KeyPair::from_pem(key_pem).map_err(|_| "the stored key is unreadable")?;
    if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
        return Err("the stored key does not match the certificate");
    }
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    webpki::EndEntityCert::try_from(&der)
        .and_then(|ee| {
            ee.verify_for_usage(
                algs,
                std::slice::from_ref(ca.trusted.anchor()),
                &[],
                unix_time(now),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map(|_| ())
        })
        .map_err(|_| "the stored certificate is expired or not issued by the current CA")?;
    let not_after = crate::util::from_unix(x509.validity().not_after.timestamp());
    if not_after - now < SERVER_RENEW_BEFORE {
        return Err("the stored certificate expires within 30 days");
    }
    let present: BTreeSet<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if present != wanted.iter().cloned().collect::<BTreeSet<_>>() {
        return Err("the SAN set changed");
    }
    Ok(not_after)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_normalise_and_add_the_defaults() {
        let names = server_names(&[
            "Broker.Example".into(),
            "10.0.0.1".into(),
            "::1".into(),
            "0:0:0:0:0:0:0:1".into(),
            "localhost".into(),
        ]);
        for expected in [
            "localhost",
            "127.0.0.1",
            "broker.example",
            "10.0.0.1",
            "::1",
        ] {
            assert!(
                names.contains(&expected.to_owned()),
                "{expected} in {names:?}"
            );
        }
        assert_eq!(names.iter().filter(|n| *n == "::1").count(), 1);
        assert_eq!(names.iter().filter(|n| *n == "localhost").count(), 1);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
