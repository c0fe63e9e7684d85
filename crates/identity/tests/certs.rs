//! Device certificates: issuing, CSR signing, verification failures by name, and the CRL.

use base64::Engine;
use fleetcmd_identity::{
    Ca, CertificateError, DeviceIdentity, Error, RevokedEntry, certificate_id, crl, issue,
    parse_and_verify, server_certificate, sign_csr,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

fn lamp() -> DeviceIdentity {
    DeviceIdentity::parse("things/lamp-1").unwrap()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn issued_certificate_carries_the_identity_and_a_fresh_key() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let issued = issue(&ca, &lamp(), 365, now).unwrap();
    let key = issued.private_key_pem.as_deref().unwrap();
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8: {key}"
    );

    let der = der_of(&issued.certificate_pem);
    assert_eq!(issued.certificate_id, certificate_id(&der));
    assert_eq!(issued.certificate_id.len(), 64);
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    let cn = x509.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "things/lamp-1");
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!x509.is_ca());
    // A 128-bit random serial: at most 16 bytes of magnitude, and two never collide.
    assert!(issued.serial_hex.len() <= 32 && issued.serial_hex.len() >= 20);
    assert_ne!(
        issued.serial_hex,
        issue(&ca, &lamp(), 365, now).unwrap().serial_hex
    );
    assert!(issued.not_before <= now && issued.not_after > now + Duration::days(364));

    let parsed = parse_and_verify(&issued.certificate_pem, &[ca.trusted()], now).unwrap();
    assert_eq!(parsed.certificate_id, issued.certificate_id);
    assert_eq!(parsed.common_name.as_deref(), Some("things/lamp-1"));
    assert_eq!(parsed.serial_hex, issued.serial_hex);
    assert_eq!(parsed.issuer_ca_id, ca.id());
    assert_eq!(parsed.not_after, issued.not_after);
    assert_eq!(parsed.der, der);
}

#[test]
fn csr_signing_replaces_the_subject_and_the_result_verifies() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let device_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "things/someone-else");
    let csr_pem = params
        .serialize_request(&device_key)
        .unwrap()
        .pem()
        .unwrap();

    let issued = sign_csr(&ca, &csr_pem, &lamp(), 30, now).unwrap();
    assert_eq!(issued.private_key_pem, None, "the device keeps its key");
    let parsed = parse_and_verify(&issued.certificate_pem, &[ca.trusted()], now).unwrap();
    assert_eq!(parsed.common_name.as_deref(), Some("things/lamp-1"));
    let (_, x509) = X509Certificate::from_der(&parsed.der).unwrap();
    assert_eq!(
        x509.public_key().subject_public_key.data.as_ref(),
        device_key.public_key_raw(),
        "the certificate is for the CSR's key"
    );
    assert!(
        x509.subject_alternative_name().unwrap().is_none(),
        "requested SANs are not copied"
    );
}

#[test]
fn csr_whose_signature_does_not_verify_is_rejected() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aaaaaaaa");
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // Change the signed subject without re-signing.
    let at = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
    der[at] = b'b';
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let tampered =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
    let err = sign_csr(&ca, &tampered, &lamp(), 30, now).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { what: "CSR", reason } if reason.contains("signature")),
        "{err}"
    );
    assert!(matches!(
        sign_csr(&ca, "not a csr", &lamp(), 30, now),
        Err(Error::Invalid { what: "CSR", .. })
    ));
}

#[test]
fn parse_and_verify_names_each_failure() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let trusted = [ca.trusted()];

    let expired = issue(&ca, &lamp(), 30, now - Duration::days(400)).unwrap();
    assert!(matches!(
        parse_and_verify(&expired.certificate_pem, &trusted, now),
        Err(CertificateError::Expired { not_after }) if not_after == expired.not_after
    ));

    let future = issue(&ca, &lamp(), 30, now + Duration::days(10)).unwrap();
    assert!(matches!(
        parse_and_verify(&future.certificate_pem, &trusted, now),
        Err(CertificateError::NotYetValid { not_before }) if not_before == future.not_before
    ));

    let other = Ca::generate(now).unwrap();
    let foreign = issue(&other, &lamp(), 30, now).unwrap();
    assert_eq!(
        parse_and_verify(&foreign.certificate_pem, &trusted, now),
        Err(CertificateError::UnknownIssuer)
    );
    assert_eq!(
        parse_and_verify(&foreign.certificate_pem, &[], now),
        Err(CertificateError::UnknownIssuer)
    );

    // A server certificate from the right CA is not a client certificate.
    let (server_pem, _) = server_certificate(&ca, &[], Duration::days(30), now).unwrap();
    assert_eq!(
        parse_and_verify(&server_pem, &trusted, now),
        Err(CertificateError::WrongUsage)
    );

    assert!(matches!(
        parse_and_verify("garbage", &trusted, now),
        Err(CertificateError::Malformed(_))
    ));

    // With both CAs trusted, the foreign certificate verifies and names its own CA.
    let both = [ca.trusted(), other.trusted()];
    let parsed = parse_and_verify(&foreign.certificate_pem, &both, now).unwrap();
    assert_eq!(parsed.issuer_ca_id, other.id());
}

#[test]
fn crl_lists_the_revoked_serials_and_is_signed_by_the_ca() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let revoked_cert = issue(&ca, &lamp(), 30, now).unwrap();
    let kept_cert = issue(&ca, &DeviceIdentity::thing("lamp-2").unwrap(), 30, now).unwrap();
    let entries = [
        RevokedEntry {
            serial_hex: revoked_cert.serial_hex.clone(),
            revoked_at: now - Duration::hours(2),
        },
        RevokedEntry {
            serial_hex: "8000000000000000000000000000000f".into(),
            revoked_at: now - Duration::hours(1),
        },
    ];
    let pem = crl(&ca, &entries, now, now + Duration::days(7)).unwrap();
    assert!(pem.starts_with("-----BEGIN X509 CRL-----"));

    let crl_der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec();
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_der).unwrap();
    let trusted = ca.trusted();
    let (_, ca_x509) = X509Certificate::from_der(trusted.der()).unwrap();
    parsed.verify_signature(ca_x509.public_key()).unwrap();
    assert_eq!(parsed.issuer(), ca_x509.subject());
    let serials: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| {
            let raw = r.raw_serial();
            let start = raw.iter().position(|b| *b != 0).unwrap_or(0);
            raw[start..].iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    assert_eq!(
        serials,
        vec![
            revoked_cert.serial_hex.clone(),
            "8000000000000000000000000000000f".to_owned()
        ]
    );
    assert_eq!(
        parsed.next_update().unwrap().timestamp(),
        (now + Duration::days(7)).unix_timestamp()
    );

    // A CRL consumer (webpki here, OpenSSL in Mosquitto) refuses the revoked certificate only.
    let owned = webpki::OwnedCertRevocationList::from_der(&crl_der).unwrap();
    let crls = [&webpki::CertRevocationList::from(owned)];
    let revocation = webpki::RevocationOptionsBuilder::new(&crls)
        .unwrap()
        .build();
    let anchors = [webpki::anchor_from_trusted_cert(trusted.der()).unwrap()];
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let check = |cert_pem: &str| {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        ee.verify_for_usage(
            algs,
            &anchors,
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            Some(revocation),
            None,
        )
        .map(|_| ())
    };
    assert_eq!(
        check(&revoked_cert.certificate_pem),
        Err(webpki::Error::CertRevoked)
    );
    assert_eq!(check(&kept_cert.certificate_pem), Ok(()));

    assert!(matches!(
        crl(
            &ca,
            &[RevokedEntry {
                serial_hex: "xyz".into(),
                revoked_at: now
            }],
            now,
            now + Duration::days(1)
        ),
        Err(Error::Invalid { .. })
    ));
}
