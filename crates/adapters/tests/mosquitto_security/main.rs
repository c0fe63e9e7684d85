//! `deploy/mosquitto-cluster.conf` and its ACL files, as shipped, on the real Mosquitto
//! (Debian's 2.0.x): devices log in with a certificate from the fleetcmd device CA (mutual
//! TLS) or with a password, each is confined to its own command topics, and the edge has its
//! own listener and credential.
//!
//! Each test starts its own `mosquitto -c` on free loopback ports. Its config is the shipped
//! file with only file paths, listener ports/addresses and the log destination rewritten; the
//! ACL files are copied unchanged. Without Mosquitto the tests are skipped, unless `CI` is set:
//! then they fail.
//!
//! Mosquitto drops what an ACL denies without telling the other side (a denied publish is
//! acknowledged, a subscription is granted and then filtered). "Not delivered" is therefore
//! proven with a marker sent after it on the same path: Mosquitto forwards one publisher's
//! messages to a subscriber in order, so when the marker is the next message to arrive, the
//! earlier one was dropped.

mod harness;

use fleetcmd_identity::{Ca, DeviceIdentity, Issued};
use harness::*;
// ---- the tests -----------------------------------------------------------------------------

/// A device with its own certificate, over MQTT 3.1.1 and 5: it receives its own requests and
/// not another device's, its updates reach the edge, and it cannot publish on another
/// device's topics, on its own `.../response/accepted`, or on `$aws/events/...`. The username
/// is the certificate's CN (`things/<name>`, with its `/`), whatever the device sends.
#[tokio::test]
async fn an_mtls_device_gets_its_own_requests_and_publishes_only_its_own_updates() {
    let Some(tools) = tools("an_mtls_device_gets_its_own_requests...") else {
        return;
    };
    let pki = Pki::new();
    let broker = Broker::start(&tools, &pki, &pki.crl(&[]), &[]).await;
    let mut edge = edge(&broker, "fleetcmd-edge-0").await;
    // So that a forged event would reach the edge before the marker.
    assert!(edge.subscribe("$aws/events/#").await);

    for (protocol, thing, other) in [
        (Protocol::V311, "things/lamp-1", "things/lamp-2"),
        (Protocol::V5, "things/lamp-3", "clients/lamp-4"),
        (Protocol::V5, "clients/sensor-7", "things/sensor-7"),
    ] {
        let cert = pki.device(thing);
        // The username and password the device sends are ignored: the CN is the username,
        // even when the device claims to be the edge.
        let login = Login::new(broker.port(MTLS_LISTENER), "any-client-id")
            .tls(pki.tls(Some(&cert)))
            .password(EDGE_USER, EDGE_PASSWORD);
        let mut device = connected(thing, protocol, &login).await;
        assert!(
            device
                .subscribe(&format!("$aws/commands/{thing}/executions/+/request/#"))
                .await,
            "{thing}: its own requests"
        );
        assert!(
            device
                .subscribe(&format!("$aws/commands/{other}/executions/+/request/#"))
                .await,
            "Mosquitto grants any filter and filters what it delivers"
        );
        assert!(
            device
                .subscribe(&format!("$aws/commands/{thing}/executions/+/response/#"))
                .await
        );

        // Requests: the other device's first, then the device's own as the marker.
        assert!(edge.publish(&request(other, "e0"), "not yours").await);
        assert!(edge.publish(&request(thing, "e1"), "yours").await);
        device
            .expect(
                "its own request, and nothing before",
                &request(thing, "e1"),
                "yours",
            )
            .await;
        let accepted = format!("$aws/commands/{thing}/executions/e1/response/accepted/json");
        assert!(edge.publish(&accepted, "accepted").await);
        device
            .expect("the answer to its update", &accepted, "accepted")
            .await;

        // Updates: forged ones first, then its own as the marker.
        let forged = [
            update(other, "e0"),
            format!("$aws/commands/{thing}/executions/e1/response/accepted/json"),
            format!("$aws/events/commandExecution/{thing}/succeeded"),
        ];
        for topic in &forged {
            let taken = device.publish(topic, "forged").await;
            // A denied QoS 1 publish is acknowledged all the same; MQTT 5 gets the reason.
            assert_eq!(
                taken,
                protocol == Protocol::V311,
                "{thing}: PUBACK for the denied {topic}"
            );
        }
        assert!(device.publish(&update(thing, "e1"), "SUCCEEDED").await);
        edge.expect(
            "the device's update, and no forged one before",
            &update(thing, "e1"),
            "SUCCEEDED",
        )
        .await;
        // The device did not see its own denied publish on `.../response/accepted` either:
        // the next thing it gets is a new request.
        assert!(edge.publish(&request(thing, "e2"), "next").await);
        device
            .expect("the next request", &request(thing, "e2"), "next")
            .await;
    }
}

/// The mutual-TLS listener takes only unrevoked certificates of the fleetcmd device CA: a
/// certificate of another CA, a revoked one and none at all fail the handshake, and a
/// password alone does not get in.
#[tokio::test]
async fn the_mtls_listener_refuses_foreign_revoked_and_missing_certificates() {
    let Some(tools) = tools("the_mtls_listener_refuses...") else {
        return;
    };
    let pki = Pki::new();
    let good = pki.device("things/good");
    let revoked = pki.device("things/revoked");
    let broker = Broker::start(&tools, &pki, &pki.crl(&[&revoked]), &[("good", "pw")]).await;
    let port = broker.port(MTLS_LISTENER);

    let stranger_ca = Ca::generate(pki.now).expect("another CA");
    let stranger_identity = DeviceIdentity::parse("things/good").expect("an identity");
    let stranger = fleetcmd_identity::issue(&stranger_ca, &stranger_identity, 1, pki.now)
        .expect("a certificate of another CA");

    for protocol in [Protocol::V311, Protocol::V5] {
        let login = |id: &str| Login::new(port, id);
        connected(
            "a certificate of the device CA",
            protocol,
            &login("good").tls(pki.tls(Some(&good))),
        )
        .await;
        let e = refused(
            "a certificate of another CA, same CN",
            protocol,
            &login("good").tls(pki.tls(Some(&stranger))),
        )
        .await;
        assert_alert(&e, "UnknownCA");
        let e = refused(
            "a revoked certificate",
            protocol,
            &login("revoked").tls(pki.tls(Some(&revoked))),
        )
        .await;
        assert_alert(&e, "CertificateRevoked");
        let e = refused(
            "no certificate, with a valid device password",
            protocol,
            &login("good").tls(pki.tls(None)).password("good", "pw"),
        )
        .await;
        assert_alert(&e, "CertificateRequired");
        refused(
            "plain TCP on the TLS listener",
            protocol,
            &login("good").password("good", "pw"),
        )
        .await;
    }
}

/// Password devices on their listener: the right password gets in and confines the device to
/// its own topics (thing name or client id as username); a wrong or unknown one does not;
/// device and edge credentials work only on their own listener.
#[tokio::test]
async fn password_devices_are_confined_and_each_listener_takes_only_its_credentials() {
    let Some(tools) = tools("password_devices_are_confined...") else {
        return;
    };
    let pki = Pki::new();
    let devices = [("lamp-1", "pw-lamp-1"), ("lamp-2", "pw-lamp-2")];
    let broker = Broker::start(&tools, &pki, &pki.crl(&[]), &devices).await;
    let device_port = broker.port(PASSWORD_LISTENER);
    let mut edge = edge(&broker, "fleetcmd-edge-0").await;

    for (protocol, execution) in [(Protocol::V311, "e311"), (Protocol::V5, "e5")] {
        let tls = pki.tls(None);
        let login = Login::new(device_port, "lamp-1")
            .tls(tls.clone())
            .password("lamp-1", "pw-lamp-1");
        let mut device = connected("lamp-1 with its password", protocol, &login).await;
        assert!(
            device
                .subscribe("$aws/commands/things/+/executions/+/request/#")
                .await
        );
        assert!(
            edge.publish(&request("things/lamp-2", execution), "not yours")
                .await
        );
        assert!(
            edge.publish(&request("things/lamp-1", execution), "yours")
                .await
        );
        device
            .expect(
                "its own request, and not lamp-2's before",
                &request("things/lamp-1", execution),
                "yours",
            )
            .await;
        device
            .publish(&update("things/lamp-2", execution), "forged")
            .await;
        assert!(
            device
                .publish(&update("things/lamp-1", execution), "SUCCEEDED")
                .await
        );
        edge.expect(
            "lamp-1's update, and not the forged one before",
            &update("things/lamp-1", execution),
            "SUCCEEDED",
        )
        .await;

        for (what, login) in [
            (
                "a wrong password",
                Login::new(device_port, "lamp-1")
                    .tls(tls.clone())
                    .password("lamp-1", "pw-lamp-2"),
            ),
            (
                "an unknown user",
                Login::new(device_port, "lamp-9")
                    .tls(tls.clone())
                    .password("lamp-9", "pw-lamp-1"),
            ),
            (
                "no credentials",
                Login::new(device_port, "lamp-1").tls(tls.clone()),
            ),
            (
                "the edge's credential on the device listener",
                Login::new(device_port, "fleetcmd-edge-1")
                    .tls(tls.clone())
                    .password(EDGE_USER, EDGE_PASSWORD),
            ),
            (
                "a device's credential on the edge listener",
                Login::new(broker.port(EDGE_LISTENER), "lamp-1").password("lamp-1", "pw-lamp-1"),
            ),
            (
                "no credentials on the edge listener",
                Login::new(broker.port(EDGE_LISTENER), "lamp-1"),
            ),
        ] {
            let e = refused(what, protocol, &login).await;
            assert!(
                e.contains("Connection refused"),
                "{what}: a CONNACK refusal: {e}"
            );
        }
    }
}

/// `$aws/#` (and `#`) are granted to a device, but it receives through them only its own
/// requests: nothing of other devices, nothing of `$aws/events/...`. Both device kinds.
#[tokio::test]
async fn a_wildcard_subscription_yields_nothing_of_other_devices() {
    let Some(tools) = tools("a_wildcard_subscription_yields...") else {
        return;
    };
    let pki = Pki::new();
    let broker = Broker::start(&tools, &pki, &pki.crl(&[]), &[("lamp-2", "pw-lamp-2")]).await;
    let mut edge = edge(&broker, "fleetcmd-edge-0").await;
    let cert = pki.device("things/lamp-1");

    let devices = [
        (
            "things/lamp-1",
            Login::new(broker.port(MTLS_LISTENER), "lamp-1").tls(pki.tls(Some(&cert))),
        ),
        (
            "things/lamp-2",
            Login::new(broker.port(PASSWORD_LISTENER), "lamp-2")
                .tls(pki.tls(None))
                .password("lamp-2", "pw-lamp-2"),
        ),
    ];
    for (protocol, (identity, login)) in [Protocol::V5, Protocol::V311].into_iter().zip(devices) {
        let mut device = connected(identity, protocol, &login).await;
        assert!(device.subscribe("$aws/#").await);
        assert!(device.subscribe("#").await);
        let others = [
            request("things/lamp-9", "e1"),
            request("clients/lamp-1", "e1"),
            request("things/lamp-1x", "e1"),
            update("things/lamp-9", "e1"),
            format!("$aws/events/commandExecution/{identity}/succeeded"),
            "$aws/events/commandExecution/things/lamp-9/succeeded".to_owned(),
        ];
        for topic in &others {
            assert!(edge.publish(topic, "not yours").await);
        }
        assert!(edge.publish(&request(identity, "marker"), "yours").await);
        device
            .expect(
                "the marker, and nothing of other devices or events before",
                &request(identity, "marker"),
                "yours",
            )
            .await;
    }
}

/// Mosquitto reads `crlfile` at start and on SIGHUP: a certificate revoked after start keeps
/// connecting until the new CRL is written and the broker signalled, then is refused; a
/// connection opened before stays open. A CRL past its nextUpdate refuses every certificate.
#[tokio::test]
async fn a_new_crl_takes_effect_on_sighup_and_an_expired_crl_refuses_everyone() {
    let Some(tools) = tools("a_new_crl_takes_effect_on_sighup...") else {
        return;
    };
    let pki = Pki::new();
    let kept = pki.device("things/kept");
    let revoked = pki.device("things/revoked");
    // Revoked as well, but connected before: a device of its own, as connecting with the
    // same certificate again would take over its session.
    let held = pki.device("things/held");
    let broker = Broker::start(&tools, &pki, &pki.crl(&[]), &[]).await;
    let port = broker.port(MTLS_LISTENER);
    let mut edge = edge(&broker, "fleetcmd-edge-0").await;
    let login = |id: &str, cert: &Issued| Login::new(port, id).tls(pki.tls(Some(cert)));

    let mut open = connected("before the revocation", Protocol::V5, &login("h", &held)).await;
    assert!(
        open.subscribe("$aws/commands/things/held/executions/+/request/#")
            .await
    );
    // Revoked in fleetcmd, but the broker still has the old CRL.
    let new_crl = pki.crl(&[&revoked, &held]);
    connected(
        "revoked, before the new CRL is loaded",
        Protocol::V311,
        &login("r2", &revoked),
    )
    .await;

    broker.reload_crl(&new_crl);
    let e = refused_eventually(
        "the revoked certificate after SIGHUP",
        &login("r3", &revoked),
    )
    .await;
    assert_alert(&e, "CertificateRevoked");
    connected(
        "an unrevoked certificate after the reload",
        Protocol::V311,
        &login("k", &kept),
    )
    .await;
    let e = refused(
        "the other revoked certificate after the reload",
        Protocol::V5,
        &login("h2", &held),
    )
    .await;
    assert_alert(&e, "CertificateRevoked");
    assert!(
        edge.publish(&request("things/held", "e1"), "still open")
            .await
    );
    open.expect(
        "the connection opened before the reload stays open",
        &request("things/held", "e1"),
        "still open",
    )
    .await;

    // A CRL whose nextUpdate has passed: OpenSSL refuses every client certificate.
    let day = time::Duration::DAY;
    let expired = fleetcmd_identity::crl(&pki.ca, &[], pki.now - day * 2, pki.now - day)
        .expect("sign an expired CRL");
    broker.reload_crl(&expired);
    let e = refused_eventually(
        "an unrevoked certificate after an expired CRL was loaded",
        &login("k2", &kept),
    )
    .await;
    // OpenSSL's CRL_HAS_EXPIRED goes out as the certificate_expired alert.
    assert_alert(&e, "CertificateExpired");
}

/// On the mutual-TLS listener the client id becomes the CN as well: two devices sending the
/// same client id do not take over each other's session.
#[tokio::test]
async fn a_device_cannot_take_over_another_devices_session() {
    let Some(tools) = tools("a_device_cannot_take_over...") else {
        return;
    };
    let pki = Pki::new();
    let broker = Broker::start(&tools, &pki, &pki.crl(&[]), &[]).await;
    let mut edge = edge(&broker, "fleetcmd-edge-0").await;
    let port = broker.port(MTLS_LISTENER);
    let (a, b) = (pki.device("things/a"), pki.device("things/b"));

    let mut first = connected(
        "things/a",
        Protocol::V5,
        &Login::new(port, "same-id").tls(pki.tls(Some(&a))),
    )
    .await;
    assert!(
        first
            .subscribe("$aws/commands/things/a/executions/+/request/#")
            .await
    );
    let _second = connected(
        "things/b, with things/a's client id",
        Protocol::V5,
        &Login::new(port, "same-id").tls(pki.tls(Some(&b))),
    )
    .await;
    assert!(edge.publish(&request("things/a", "e1"), "for a").await);
    first
        .expect(
            "things/a is still connected",
            &request("things/a", "e1"),
            "for a",
        )
        .await;
}

/// A CA the user registered with fleetcmd (RegisterCaCertificate): Mosquitto trusts its
/// devices once its certificate is in the device CA file and its CRL in the CRL file, as
/// `deploy/README.md` says; with the device CA's CRL alone, OpenSSL's CRL check refuses
/// them, and a certificate the registered CA revoked is refused.
#[tokio::test]
async fn a_registered_cas_devices_need_its_certificate_and_its_crl_in_the_broker_files() {
    let Some(tools) = tools("a_registered_cas_devices_need...") else {
        return;
    };
    let mut pki = Pki::new();
    let acme = Ca::generate(pki.now).expect("a registered CA");
    pki.registered_ca_pems
        .push(acme.certificate_pem().to_owned());
    let issue = |identity: &str| {
        let identity = DeviceIdentity::parse(identity).expect("an identity");
        fleetcmd_identity::issue(&acme, &identity, 1, pki.now).expect("a certificate of acme")
    };
    let (lamp, gone) = (issue("things/acme-lamp"), issue("things/acme-gone"));
    let crls = format!("{}{}", pki.crl(&[]), crl_of(&acme, &[&gone], pki.now));
    let broker = Broker::start(&tools, &pki, &crls, &[]).await;
    let port = broker.port(MTLS_LISTENER);
    let login = |id: &str, cert: &Issued| Login::new(port, id).tls(pki.tls(Some(cert)));
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut device = connected(
            "a certificate of a registered CA",
            protocol,
            &login("acme-lamp", &lamp),
        )
        .await;
        assert!(
            device.subscribe(&request("things/acme-lamp", "+")).await,
            "its own requests"
        );
        let e = refused(
            "a certificate the registered CA revoked",
            protocol,
            &login("acme-gone", &gone),
        )
        .await;
        assert_alert(&e, "CertificateRevoked");
    }
    // OpenSSL's CRL check wants a CRL for every CA of a chain.
    broker.reload_crl(&pki.crl(&[]));
    let e = refused_eventually(
        "a registered CA without its CRL",
        &login("acme-lamp", &lamp),
    )
    .await;
    assert_alert(&e, "UnknownCA");
}
