//! The CA and the server certificate in the data directory: created once, reused, re-issued
//! when they no longer fit.

use fleetcmd_identity::ca::{SERVER_RENEW_BEFORE, server_names};
use fleetcmd_identity::{Ca, Error, ServerIdentity, server_certificate};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn sans_of(pem: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    let san = x509.subject_alternative_name().unwrap().unwrap().value;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            _ => {}
        }
    }
    (dns, ips)
}

#[test]
fn ca_is_created_once_then_reused_with_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = Ca::load_or_create(&data).unwrap();
    let again = Ca::load_or_create(&data).unwrap();
    assert_eq!(ca.id(), again.id());
    assert_eq!(ca.certificate_pem(), again.certificate_pem());
    assert_eq!(
        std::fs::read_to_string(data.join("ca.pem")).unwrap(),
        ca.certificate_pem()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let der = CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).unwrap();
    assert_eq!(ca.id(), fleetcmd_identity::certificate_id(&der));
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    assert!(x509.is_ca());
    let cn = x509.subject().iter_common_name().next().unwrap();
    assert!(cn.as_str().unwrap().starts_with("fleetcmd CA "));
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let validity = x509.validity();
    let years = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400 / 365;
    assert_eq!(years, 10);

    // Something this CA issued still verifies against the reloaded one.
    let now = OffsetDateTime::now_utc();
    let identity = fleetcmd_identity::DeviceIdentity::thing("lamp-1").unwrap();
    let issued = fleetcmd_identity::issue(&ca, &identity, 1, now).unwrap();
    fleetcmd_identity::parse_and_verify(&issued.certificate_pem, &[again.trusted()], now).unwrap();
}

#[test]
fn half_a_ca_is_refused_rather_than_replaced() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    assert!(matches!(
        Ca::load_or_create(dir.path()),
        Err(Error::Incomplete { .. })
    ));
    assert!(dir.path().join("ca.pem").exists(), "left as it was");
}

#[test]
fn configured_ca_must_match_its_key_and_be_a_ca() {
    let now = OffsetDateTime::now_utc();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    let same = Ca::from_pem(ca.certificate_pem(), &key).unwrap();
    assert_eq!(same.id(), ca.id());

    let other_dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(other_dir.path()).unwrap();
    let other_key = std::fs::read_to_string(other_dir.path().join("ca.key")).unwrap();
    assert!(matches!(
        Ca::from_pem(ca.certificate_pem(), &other_key),
        Err(Error::Invalid { what: "CA key", .. })
    ));

    let (server_pem, server_key) = server_certificate(&ca, &[], Duration::days(1), now).unwrap();
    assert!(matches!(
        Ca::from_pem(&server_pem, &server_key),
        Err(Error::Invalid {
            what: "CA certificate",
            ..
        })
    ));
}

#[test]
fn server_certificate_names_localhost_loopback_and_the_extras() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate(now).unwrap();
    let (cert, key) = server_certificate(
        &ca,
        &["mqtt.example.com".into(), "192.0.2.7".into(), "::1".into()],
        Duration::days(90),
        now,
    )
    .unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let (dns, ips) = sans_of(&cert);
    assert!(dns.contains(&"localhost".to_owned()), "{dns:?}");
    assert!(dns.contains(&"mqtt.example.com".to_owned()), "{dns:?}");
    assert!(ips.contains(&vec![127, 0, 0, 1]), "{ips:?}");
    assert!(
        ips.contains(&vec![192, 0, 2, 7]),
        "IP literals are IP SANs: {ips:?}"
    );
    assert!(ips.iter().any(|ip| ip.len() == 16), "{ips:?}");
    assert!(!dns.iter().any(|d| d.parse::<std::net::IpAddr>().is_ok()));

    // rustls accepts it for the names it carries.
    let config = fleetcmd_identity::client_config(ca.certificate_pem(), None).unwrap();
    assert!(config.alpn_protocols.is_empty());
    let server = fleetcmd_identity::server_config(&cert, &key, fleetcmd_identity::ClientAuth::None);
    assert!(server.is_ok());
}

#[test]
fn server_identity_is_reused_until_the_sans_change_or_expiry_nears() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let a = vec!["a.example".to_owned()];

    let first = ServerIdentity::load_or_create_at(dir.path(), &ca, &a, now).unwrap();
    assert!(first.was_issued());
    assert_eq!(first.sans(), server_names(&a).as_slice());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let same = ServerIdentity::load_or_create_at(dir.path(), &ca, &a, now).unwrap();
    assert!(!same.was_issued());
    assert_eq!(same.certificate_pem(), first.certificate_pem());
    assert_eq!(same.private_key_pem(), first.private_key_pem());

    // Same set, spelled differently: still the same certificate.
    let respelled = vec!["A.Example".to_owned(), "localhost".to_owned()];
    let same = ServerIdentity::load_or_create_at(dir.path(), &ca, &respelled, now).unwrap();
    assert!(!same.was_issued());

    let b = vec!["b.example".to_owned(), "10.1.2.3".to_owned()];
    let changed = ServerIdentity::load_or_create_at(dir.path(), &ca, &b, now).unwrap();
    assert!(changed.was_issued());
    assert_ne!(changed.certificate_pem(), first.certificate_pem());
    let (dns, ips) = sans_of(changed.certificate_pem());
    assert!(dns.contains(&"b.example".to_owned()) && !dns.contains(&"a.example".to_owned()));
    assert!(ips.contains(&vec![10, 1, 2, 3]));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server.pem")).unwrap(),
        changed.certificate_pem()
    );

    // Just outside the renewal window: kept. Inside it: re-issued.
    let early = changed.not_after() - SERVER_RENEW_BEFORE - Duration::days(1);
    let kept = ServerIdentity::load_or_create_at(dir.path(), &ca, &b, early).unwrap();
    assert!(!kept.was_issued());
    let late = changed.not_after() - SERVER_RENEW_BEFORE + Duration::days(1);
    let renewed = ServerIdentity::load_or_create_at(dir.path(), &ca, &b, late).unwrap();
    assert!(renewed.was_issued());
    assert!(renewed.not_after() > changed.not_after());

    // A new CA: the old server certificate no longer chains to it.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = Ca::load_or_create(other_dir.path()).unwrap();
    let reissued = ServerIdentity::load_or_create_at(dir.path(), &other_ca, &b, late).unwrap();
    assert!(reissued.was_issued());
}
