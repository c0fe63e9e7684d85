//! The TLS proxy with real handshakes on 127.0.0.1: which client certificates get through,
//! what the registry tells the broker about each inner connection, and how connections end.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{EchoEvent, Mode, Proxy, alert, refusal, round_trip, within};
use fleetcmd_identity::{Ca, DeviceIdentity, TlsVersion, issue};
use rustls::AlertDescription;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn issued_certificate_is_accepted_and_its_identity_is_registered_before_forwarding() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let cert = proxy.issue("things/lamp-1");
    let mut client = proxy.connect(Some(&cert)).await.unwrap();
    let client_addr = client.get_ref().0.local_addr().unwrap();

    assert_eq!(round_trip(&mut client, b"CONNECT").await, b"CONNECT");

    // The echo server looked the peer up on the first bytes, before it answered.
    let EchoEvent::FirstBytes { peer, identity } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    let identity = identity.expect("the proxy registered the connection before forwarding");
    assert_eq!(identity.common_name.as_deref(), Some("things/lamp-1"));
    assert_eq!(
        identity.device_identity(),
        Some(DeviceIdentity::thing("lamp-1").unwrap())
    );
    assert_eq!(
        identity.certificate_id.as_deref(),
        Some(cert.certificate_id.as_str())
    );
    assert_eq!(identity.public_remote_addr, client_addr);
    assert_eq!(identity.tls_version, TlsVersion::Tls13);
    assert_eq!(proxy.registry.lookup(peer), Some(identity));
    assert_eq!(proxy.registry.len(), 1);

    drop(client);
    // Stopping drains every connection task; none leaves an entry behind.
    let registry = proxy.stop().await;
    assert!(registry.is_empty(), "{registry:?}");
}

#[tokio::test]
async fn tls_1_2_clients_are_served_and_reported() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let cert = proxy.issue("clients/sensor-9");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(proxy.ca.certificate_pem().as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.certificate_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(
        cert.private_key_pem.as_deref().unwrap().as_bytes(),
    )
    .unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(fleetcmd_identity::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let mut client = proxy.connect_with(Arc::new(config)).await.unwrap();
    assert_eq!(round_trip(&mut client, b"hi").await, b"hi");
    let EchoEvent::FirstBytes { identity, .. } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    let identity = identity.unwrap();
    assert_eq!(identity.tls_version, TlsVersion::Tls12);
    assert_eq!(identity.common_name.as_deref(), Some("clients/sensor-9"));
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let other = Ca::generate(OffsetDateTime::now_utc()).unwrap();
    let foreign = issue(
        &other,
        &DeviceIdentity::parse("things/lamp-1").unwrap(),
        30,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let err = refusal(proxy.connect(Some(&foreign)).await).await;
    assert_eq!(err, alert(AlertDescription::UnknownCA));
    assert!(proxy.registry.is_empty());
    assert!(
        proxy.events.try_recv().is_err(),
        "nothing reached the broker"
    );
}

#[tokio::test]
async fn expired_certificate_is_refused_at_the_handshake() {
    let proxy = Proxy::start(Mode::Required).await;
    let long_ago = OffsetDateTime::now_utc() - time::Duration::days(400);
    let expired = issue(
        &proxy.ca,
        &DeviceIdentity::parse("things/lamp-1").unwrap(),
        30,
        long_ago,
    )
    .unwrap();
    assert!(expired.not_after < OffsetDateTime::now_utc());
    let err = refusal(proxy.connect(Some(&expired)).await).await;
    assert_eq!(err, alert(AlertDescription::CertificateExpired));
    assert!(proxy.registry.is_empty());
}

#[tokio::test]
async fn revoked_certificate_is_refused_at_the_handshake() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let cert = proxy.issue("things/lamp-1");
    let sibling = proxy.issue("things/lamp-2");
    proxy.store.revoke(&cert.certificate_id);
    let err = refusal(proxy.connect(Some(&cert)).await).await;
    assert_eq!(err, alert(AlertDescription::CertificateRevoked));
    // Only that certificate: another from the same CA still gets through.
    let mut client = proxy.connect(Some(&sibling)).await.unwrap();
    assert_eq!(round_trip(&mut client, b"ok").await, b"ok");
    let EchoEvent::FirstBytes { identity, .. } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    assert_eq!(
        identity.unwrap().common_name.as_deref(),
        Some("things/lamp-2")
    );
}

#[tokio::test]
async fn no_client_certificate_is_accepted_in_optional_mode_without_identity() {
    let mut proxy = Proxy::start(Mode::Optional).await;
    let mut client = proxy.connect(None).await.unwrap();
    let client_addr = client.get_ref().0.local_addr().unwrap();
    assert_eq!(round_trip(&mut client, b"CONNECT pw").await, b"CONNECT pw");
    let EchoEvent::FirstBytes { identity, .. } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    let identity = identity.expect("registered, if anonymous");
    assert_eq!(identity.certificate_id, None);
    assert_eq!(identity.common_name, None);
    assert_eq!(identity.device_identity(), None);
    assert_eq!(identity.public_remote_addr, client_addr);

    // Optional does not mean unchecked: a bad certificate is still refused.
    let other = Ca::generate(OffsetDateTime::now_utc()).unwrap();
    let foreign = issue(
        &other,
        &DeviceIdentity::parse("things/x").unwrap(),
        30,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let err = refusal(proxy.connect(Some(&foreign)).await).await;
    assert_eq!(err, alert(AlertDescription::UnknownCA));
}

#[tokio::test]
async fn no_client_certificate_is_refused_in_required_mode() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let err = refusal(proxy.connect(None).await).await;
    assert_eq!(err, alert(AlertDescription::CertificateRequired));
    assert!(proxy.registry.is_empty());
    assert!(
        proxy.events.try_recv().is_err(),
        "nothing reached the broker"
    );
}

#[tokio::test]
async fn ca_registered_at_run_time_is_trusted_by_the_next_handshake() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let user_ca = Ca::generate(OffsetDateTime::now_utc()).unwrap();
    let cert = issue(
        &user_ca,
        &DeviceIdentity::parse("things/their-lamp").unwrap(),
        30,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let err = refusal(proxy.connect(Some(&cert)).await).await;
    assert_eq!(err, alert(AlertDescription::UnknownCA));

    assert!(proxy.store.add_ca(user_ca.trusted()));
    assert!(!proxy.store.add_ca(user_ca.trusted()), "added once");
    let mut client = proxy.connect(Some(&cert)).await.unwrap();
    assert_eq!(round_trip(&mut client, b"again").await, b"again");
    let EchoEvent::FirstBytes { identity, .. } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    assert_eq!(
        identity.unwrap().common_name.as_deref(),
        Some("things/their-lamp")
    );

    // And removed again at run time.
    assert!(proxy.store.remove_ca(user_ca.id()));
    let err = refusal(proxy.connect(Some(&cert)).await).await;
    assert_eq!(err, alert(AlertDescription::UnknownCA));
}

#[tokio::test]
async fn disconnect_certificate_closes_a_live_connection() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let cert = proxy.issue("things/lamp-1");
    let other = proxy.issue("things/lamp-2");
    let mut client = proxy.connect(Some(&cert)).await.unwrap();
    let mut bystander = proxy.connect(Some(&other)).await.unwrap();
    assert_eq!(round_trip(&mut client, b"one").await, b"one");
    let EchoEvent::FirstBytes { peer, .. } = proxy.next_event().await else {
        panic!("expected the first bytes first");
    };
    assert_eq!(round_trip(&mut bystander, b"two").await, b"two");
    let EchoEvent::FirstBytes { .. } = proxy.next_event().await else {
        panic!("expected the bystander's first bytes");
    };
    let live = proxy.registry.connections_of(&cert.certificate_id);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].inner_local_addr, peer);

    assert_eq!(
        proxy.registry.disconnect_certificate(&cert.certificate_id),
        1
    );

    // The broker side ends, and by then the entry is gone.
    let EchoEvent::Closed { peer: closed } = proxy.next_event().await else {
        panic!("expected the inner connection to close");
    };
    assert_eq!(closed, peer);
    assert_eq!(proxy.registry.lookup(peer), None);
    // The device side ends too: end of stream or an error, but no more data.
    let mut buf = [0u8; 8];
    let read = within("the device side to close", client.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The other certificate's connection is untouched.
    assert_eq!(round_trip(&mut bystander, b"still").await, b"still");
    assert_eq!(proxy.registry.len(), 1);
}

#[tokio::test]
async fn stalled_handshake_is_closed_after_the_timeout() {
    let mut proxy = Proxy::start_with(Mode::Required, |p| {
        p.with_handshake_timeout(Duration::from_millis(200))
    })
    .await;
    // A TCP client that never sends a ClientHello.
    let mut tcp = within("TCP connect", tokio::net::TcpStream::connect(proxy.addr))
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    let read = within("the proxy to give up on the handshake", tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        proxy.events.try_recv().is_err(),
        "nothing reached the broker"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let mut proxy = Proxy::start_with(Mode::Required, |p| p.with_max_connections(1)).await;
    let cert = proxy.issue("things/lamp-1");
    let mut first = proxy.connect(Some(&cert)).await.unwrap();
    assert_eq!(round_trip(&mut first, b"1").await, b"1");
    let _ = proxy.next_event().await;

    let ca_pem = proxy.ca.certificate_pem().to_owned();
    let addr = proxy.addr;
    let (cert_pem, key_pem) = (
        cert.certificate_pem.clone(),
        cert.private_key_pem.clone().unwrap(),
    );
    let mut second = tokio::spawn(async move {
        let config =
            fleetcmd_identity::client_config(&ca_pem, Some((&cert_pem, &key_pem))).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    });
    // The kernel queues the second connection, but the proxy does not serve it yet. This
    // bounded wait is the assertion, not a synchronisation.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "the second handshake completed while the limit was reached"
    );
    drop(first);
    let mut second = within("the second handshake", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(round_trip(&mut second, b"2").await, b"2");
}

#[tokio::test]
async fn session_resumption_cannot_bypass_a_revocation() {
    let mut proxy = Proxy::start(Mode::Required).await;
    let cert = proxy.issue("things/lamp-1");
    // One client config, so its session cache would offer resumption on the second connect.
    let config = Arc::new(
        fleetcmd_identity::client_config(
            proxy.ca.certificate_pem(),
            Some((
                &cert.certificate_pem,
                cert.private_key_pem.as_deref().unwrap(),
            )),
        )
        .unwrap(),
    );
    let mut first = proxy.connect_with(config.clone()).await.unwrap();
    assert_eq!(round_trip(&mut first, b"x").await, b"x");
    let _ = proxy.next_event().await;
    drop(first);

    proxy.store.revoke(&cert.certificate_id);
    let err = refusal(proxy.connect_with(config).await).await;
    assert_eq!(err, alert(AlertDescription::CertificateRevoked));
}
