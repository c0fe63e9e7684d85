//! Device identity on the embedded broker, tried as an attacker would: with
//! `--device-auth required` every client proves who it is (a certificate over TLS, or a
//! password) and touches only its own topics. Each attack fails with the code MQTT gives
//! for it; a device with its own credential works end to end, over MQTT 5 and 3.1.1.

use std::sync::Arc;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::{Device, DeviceOptions, Format, Topics, Version};
use fleetcmd_e2e::scenario::assert_accepted;
use fleetcmd_e2e::{Env, ServeArgs, Server, Things, static_json_command, test_args, thing};
use fleetcmd_standalone::devices::DeviceAuth;
use serde_json::json;

use crate::Result;

/// A server that requires device authentication, with `ping` created and `names`
/// registered as things.
async fn given_a_secured_server(name: &str, names: &[&str]) -> anyhow::Result<(Env, Things)> {
    let args = ServeArgs {
        device_auth: Some(DeviceAuth::Required),
        ..test_args(name)
    };
    let mut env = Env::start_with(args).await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;
    let mut things = env.server.things().await?;
    for n in names {
        things
            .create_thing(pb::CreateThingRequest {
                thing_name: (*n).into(),
                ..Default::default()
            })
            .await?;
    }
    Ok((env, things))
}

fn owner(name: &str) -> Option<pb::CredentialOwner> {
    Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ThingName(name.into())),
    })
}

/// A certificate issued for the thing `name`: its id and the TLS client config a device
/// builds from the files it gets (`root-ca.pem`, `NAME.cert.pem`, `NAME.private.key`).
async fn issue(
    things: &mut Things,
    name: &str,
) -> anyhow::Result<(String, Arc<rustls::ClientConfig>)> {
    let r = things
        .create_thing_certificate(pb::CreateThingCertificateRequest {
            owner: owner(name),
            validity_days: 0,
        })
        .await?
        .into_inner();
    let tls = fleetcmd_identity::client_config(
        &r.root_ca_pem,
        Some((&r.certificate_pem, &r.private_key_pem)),
    )?;
    Ok((r.certificate_id, Arc::new(tls)))
}

/// A password for the thing `name`: the username and password to log in with.
async fn password(things: &mut Things, name: &str) -> anyhow::Result<(String, String)> {
    let r = things
        .create_thing_password(pb::CreateThingPasswordRequest { owner: owner(name) })
        .await?
        .into_inner();
    Ok((r.username, r.password))
}

/// TLS that trusts the server and presents no client certificate.
fn server_only(server: &Server) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = std::fs::read_to_string(server.data_dir.join("tls").join("ca.pem"))?;
    Ok(Arc::new(fleetcmd_identity::client_config(&ca, None)?))
}

fn options(version: Version, client_id: &str) -> DeviceOptions {
    match version {
        Version::V5 => DeviceOptions::v5(client_id),
        Version::V311 => DeviceOptions::v311(client_id),
    }
}

/// Connects over TLS with `tls` (a client certificate or none).
async fn over_tls(
    server: &Server,
    version: Version,
    client_id: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Device> {
    let o = options(version, client_id).tls(tls.clone());
    Device::connect(server.mqtt_tls_port(), o).await
}

/// Asserts that a connection attempt failed, naming `needle`.
#[track_caller]
fn assert_refused(result: anyhow::Result<Device>, needle: &str) {
    match result {
        Ok(d) => panic!("{} connected; expected a refusal ({needle})", d.client_id),
        Err(e) => assert!(
            format!("{e:#}").contains(needle),
            "expected {needle:?} in: {e:#}"
        ),
    }
}

/// A device of `name` with its own certificate and every device subscription.
async fn subscribed(
    server: &Server,
    version: Version,
    name: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Device, Topics)> {
    let topics = Topics::thing(name);
    let mut d = over_tls(server, version, name, tls).await?;
    d.subscribe(&topics.device_filters()).await?;
    Ok((d, topics))
}

#[tokio::test]
async fn a_device_with_its_own_certificate_works_end_to_end_over_tls() -> Result {
    let (mut env, mut things) = given_a_secured_server("sec-e2e", &["lamp-1"]).await?;
    let (_, tls) = issue(&mut things, "lamp-1").await?;
    for version in [Version::V5, Version::V311] {
        let (mut device, topics) = subscribed(&env.server, version, "lamp-1", &tls).await?;
        let id = env.start_simple(thing("lamp-1"), "ping", 60).await?;
        let request = device
            .expect_topic(&topics.request(&id, "json"), fleetcmd_e2e::WAIT)
            .await?;
        assert_eq!(request.json()?, json!({"ping": "pong"}));
        let reply = device
            .report_json(&topics, &id, &json!({"status": "SUCCEEDED"}))
            .await?;
        assert_accepted(&reply, &id)?;
        let e = env.get(&id, false).await?;
        assert_eq!(
            e.status,
            pb::ExecutionStatus::Succeeded as i32,
            "{version:?}"
        );
        device.disconnect().await?;
    }
    env.stop().await
}

#[tokio::test]
async fn a_password_login_works_on_both_listeners_and_a_wrong_or_replaced_one_is_refused() -> Result
{
    let (env, mut things) = given_a_secured_server("sec-password", &["plug-1"]).await?;
    let server = &env.server;
    let tls = server_only(server)?;
    for version in [Version::V5, Version::V311] {
        let (user, pass) = password(&mut things, "plug-1").await?;
        let login = |password: &str| options(version, "plug-1").login(&user, password);
        Device::connect(server.mqtt_port(), login(&pass))
            .await?
            .disconnect()
            .await?;
        Device::connect(server.mqtt_tls_port(), login(&pass).tls(tls.clone()))
            .await?
            .disconnect()
            .await?;
        assert_refused(
            Device::connect(server.mqtt_port(), login("not-the-password")).await,
            "BadUserNamePassword",
        );
        // A new password replaces the old one at once.
        let (_, newer) = password(&mut things, "plug-1").await?;
        assert_refused(
            Device::connect(server.mqtt_port(), login(&pass)).await,
            "BadUserNamePassword",
        );
        Device::connect(server.mqtt_port(), login(&newer))
            .await?
            .disconnect()
            .await?;
    }
    env.stop().await
}

#[tokio::test]
async fn clients_without_credentials_or_with_foreign_ones_are_refused() -> Result {
    let (env, mut things) = given_a_secured_server("sec-anon", &["lamp-1"]).await?;
    let server = &env.server;
    for version in [Version::V5, Version::V311] {
        // Anonymous, plain and over TLS.
        assert_refused(
            Device::connect(server.mqtt_port(), options(version, "lamp-1")).await,
            "NotAuthorized",
        );
        assert_refused(
            over_tls(server, version, "lamp-1", &server_only(server)?).await,
            "NotAuthorized",
        );
        // An identity with no password, one that is not registered, or no identity at all.
        for user in [
            "lamp-1",
            "things/lamp-1",
            "things/ghost",
            "clients/lamp-1",
            "a b",
        ] {
            let o = options(version, "lamp-1").login(user, "guess");
            assert_refused(
                Device::connect(server.mqtt_port(), o).await,
                "BadUserNamePassword",
            );
        }
    }
    // A certificate from another CA fails the TLS handshake.
    let now = time::OffsetDateTime::now_utc();
    let other_ca = fleetcmd_identity::Ca::generate(now)?;
    let lamp = fleetcmd_identity::DeviceIdentity::thing("lamp-1")?;
    let stranger = fleetcmd_identity::issue(&other_ca, &lamp, 30, now)?;
    let stranger_key = stranger.private_key_pem.clone().unwrap_or_default();
    let tls = fleetcmd_identity::client_config(
        &std::fs::read_to_string(server.data_dir.join("tls").join("ca.pem"))?,
        Some((&stranger.certificate_pem, &stranger_key)),
    )?;
    assert_refused(
        over_tls(server, Version::V5, "lamp-1", &Arc::new(tls)).await,
        "could not connect",
    );
    // The server's own certificate is checked by the device: a device that trusts another
    // CA does not talk to this server.
    let wrong_trust = fleetcmd_identity::client_config(other_ca.certificate_pem(), None)?;
    assert_refused(
        over_tls(server, Version::V5, "lamp-1", &Arc::new(wrong_trust)).await,
        "could not connect",
    );
    let _ = &mut things;
    env.stop().await
}

#[tokio::test]
async fn a_device_cannot_read_or_settle_another_devices_executions() -> Result {
    let (mut env, mut things) =
        given_a_secured_server("sec-isolation", &["lamp-1", "lamp-2"]).await?;
    let (_, lamp1) = issue(&mut things, "lamp-1").await?;
    let (_, lamp2) = issue(&mut things, "lamp-2").await?;
    let (mut victim, victim_topics) =
        subscribed(&env.server, Version::V5, "lamp-1", &lamp1).await?;
    for version in [Version::V5, Version::V311] {
        let mut attacker = over_tls(&env.server, version, "lamp-2", &lamp2).await?;
        for filter in [
            "$aws/commands/things/lamp-1/executions/+/request/#",
            "$aws/commands/things/+/executions/+/request/#",
            "$aws/#",
            "#",
            "$aws/events/commandExecution/+/+",
            "$share/g/$aws/commands/things/lamp-1/executions/+/request/#",
        ] {
            let err = attacker
                .subscribe(&[filter])
                .await
                .expect_err("a subscription beyond its own topics");
            assert!(format!("{err:#}").contains("refused"), "{filter}: {err:#}");
        }
        attacker.disconnect().await?;
    }
    // lamp-2 forges lamp-1's result: MQTT 5 gets "not authorized", 3.1.1 is disconnected,
    // and the execution is untouched.
    let id = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    victim
        .expect_topic(&victim_topics.request(&id, "json"), fleetcmd_e2e::WAIT)
        .await?;
    let forged = json!({"status": "SUCCEEDED", "result": {"forged": {"s": "yes"}}});
    let before = env.get(&id, true).await?;
    for version in [Version::V5, Version::V311] {
        let mut attacker = over_tls(&env.server, version, "lamp-2", &lamp2).await?;
        let err = attacker
            .publish_json(victim_topics.update(&id, Format::Json), &forged)
            .await
            .expect_err("publishing on another device's topic");
        let text = format!("{err:#}");
        match version {
            Version::V5 => assert!(text.contains("NotAuthorized"), "{text}"),
            Version::V311 => assert!(text.contains("closed"), "{text}"),
        }
    }
    // Forged requests, replies and status events are refused too.
    let mut attacker = over_tls(&env.server, Version::V5, "lamp-2", &lamp2).await?;
    for topic in [
        victim_topics.request(&id, "json"),
        victim_topics.accepted(&id, Format::Json),
        "$aws/events/commandExecution/ping/SUCCEEDED".to_owned(),
    ] {
        let err = attacker
            .publish_json(topic.clone(), &json!({"forged": true}))
            .await
            .expect_err("a forged request, reply or event");
        assert!(
            format!("{err:#}").contains("NotAuthorized"),
            "{topic}: {err:#}"
        );
    }
    assert_eq!(
        env.get(&id, true).await?,
        before,
        "the forged update changed nothing"
    );
    // The device itself still settles it.
    let reply = victim
        .report_json(&victim_topics, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_accepted(&reply, &id)?;
    env.stop().await
}

#[tokio::test]
async fn only_the_same_identity_may_take_over_a_client_id() -> Result {
    let (env, mut things) = given_a_secured_server("sec-takeover", &["lamp-1", "lamp-2"]).await?;
    let (_, lamp1) = issue(&mut things, "lamp-1").await?;
    let (_, lamp2) = issue(&mut things, "lamp-2").await?;
    let held = over_tls(&env.server, Version::V5, "lamp-1", &lamp1).await?;
    assert_refused(
        over_tls(&env.server, Version::V5, "lamp-1", &lamp2).await,
        "NotAuthorized",
    );
    // The same identity reconnecting takes its session over, as MQTT says.
    let again = over_tls(&env.server, Version::V5, "lamp-1", &lamp1).await?;
    drop(held);
    again.disconnect().await?;
    env.stop().await
}

#[tokio::test]
async fn a_revoked_certificate_is_disconnected_and_refused_from_then_on() -> Result {
    let (env, mut things) = given_a_secured_server("sec-revoke", &["lamp-1"]).await?;
    let (certificate_id, tls) = issue(&mut things, "lamp-1").await?;
    let (mut device, _) = subscribed(&env.server, Version::V5, "lamp-1", &tls).await?;
    let revoked = things
        .revoke_thing_certificate(pb::RevokeThingCertificateRequest {
            certificate_id: certificate_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(revoked.status, pb::CertificateStatus::Revoked as i32);
    device.expect_closed().await?;
    assert_refused(
        over_tls(&env.server, Version::V5, "lamp-1", &tls).await,
        "could not connect",
    );
    env.stop().await
}

#[tokio::test]
async fn a_deleted_things_credentials_stop_working_until_it_is_registered_again() -> Result {
    let (env, mut things) = given_a_secured_server("sec-deleted", &["lamp-1"]).await?;
    let (_, tls) = issue(&mut things, "lamp-1").await?;
    let (user, pass) = password(&mut things, "lamp-1").await?;
    let delete = pb::DeleteThingRequest {
        thing_name: "lamp-1".into(),
        expected_version: 0,
    };
    things.delete_thing(delete).await?;
    assert_refused(
        over_tls(&env.server, Version::V5, "lamp-1", &tls).await,
        "NotAuthorized",
    );
    let login = options(Version::V5, "lamp-1").login(&user, &pass);
    assert_refused(
        Device::connect(env.server.mqtt_port(), login.clone()).await,
        "BadUserNamePassword",
    );
    things
        .create_thing(pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            ..Default::default()
        })
        .await?;
    over_tls(&env.server, Version::V5, "lamp-1", &tls)
        .await?
        .disconnect()
        .await?;
    Device::connect(env.server.mqtt_port(), login)
        .await?
        .disconnect()
        .await?;
    env.stop().await
}

#[tokio::test]
async fn a_bare_client_logs_in_with_its_own_client_id_only() -> Result {
    let (env, mut things) = given_a_secured_server("sec-client", &[]).await?;
    let r = things
        .create_thing_password(pb::CreateThingPasswordRequest {
            owner: Some(pb::CredentialOwner {
                owner: Some(pb::credential_owner::Owner::ClientId("sensor-7".into())),
            }),
        })
        .await?
        .into_inner();
    assert_eq!(r.username, "clients/sensor-7");
    let port = env.server.mqtt_port();
    let login = |client_id: &str| DeviceOptions::v5(client_id).login(&r.username, &r.password);
    let mut device = Device::connect(port, login("sensor-7")).await?;
    let topics = Topics::client("sensor-7");
    device.subscribe(&topics.device_filters()).await?;
    let err = device
        .subscribe(&Topics::thing("sensor-7").request_filters())
        .await
        .expect_err("the thing of the same name is another identity");
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    device.disconnect().await?;
    assert_refused(
        Device::connect(port, login("sensor-8")).await,
        "NotAuthorized",
    );
    env.stop().await
}

#[tokio::test]
async fn only_an_identity_named_event_reader_reads_the_status_events() -> Result {
    let args = ServeArgs {
        device_auth: Some(DeviceAuth::Required),
        mqtt_event_readers: vec![fleetcmd_domain::ids::Target::client("dashboard")?],
        ..test_args("sec-events")
    };
    let mut env = Env::start_with(args).await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;
    let mut things = env.server.things().await?;
    things
        .create_thing(pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            ..Default::default()
        })
        .await?;
    let (_, lamp) = issue(&mut things, "lamp-1").await?;
    let dashboard = things
        .create_thing_password(pb::CreateThingPasswordRequest {
            owner: Some(pb::CredentialOwner {
                owner: Some(pb::credential_owner::Owner::ClientId("dashboard".into())),
            }),
        })
        .await?
        .into_inner();
    let events = "$aws/events/commandExecution/ping/+";
    let login = DeviceOptions::v5("dashboard").login(&dashboard.username, &dashboard.password);
    let mut reader = Device::connect(env.server.mqtt_port(), login).await?;
    reader.subscribe(&[events]).await?;
    // A device is no event reader.
    let mut device = over_tls(&env.server, Version::V5, "lamp-1", &lamp).await?;
    let err = device
        .subscribe(&[events])
        .await
        .expect_err("a device reading events");
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    // The reader sees the CREATED event of a start; still it may publish nothing.
    let id = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    let event = reader
        .expect_topic(
            "$aws/events/commandExecution/ping/CREATED",
            fleetcmd_e2e::WAIT,
        )
        .await?;
    assert_eq!(event.json()?["executionId"], id.as_str());
    let err = reader
        .publish_json("$aws/events/commandExecution/ping/SUCCEEDED", &json!({}))
        .await
        .expect_err("an event reader publishing");
    assert!(format!("{err:#}").contains("NotAuthorized"), "{err:#}");
    env.stop().await
}

#[tokio::test]
async fn a_certificate_signed_by_a_registered_ca_works_once_both_are_registered_and_after_a_restart()
-> Result {
    let name = "sec-registered-ca";
    let (mut env, mut things) = given_a_secured_server(name, &["lamp-1"]).await?;
    let now = time::OffsetDateTime::now_utc();
    let acme = fleetcmd_identity::Ca::generate(now)?;
    let lamp = fleetcmd_identity::DeviceIdentity::thing("lamp-1")?;
    let signed = fleetcmd_identity::issue(&acme, &lamp, 30, now)?;
    let key = signed.private_key_pem.clone().unwrap_or_default();
    let server_ca = std::fs::read_to_string(env.server.data_dir.join("tls").join("ca.pem"))?;
    let tls = Arc::new(fleetcmd_identity::client_config(
        &server_ca,
        Some((&signed.certificate_pem, &key)),
    )?);
    // Its CA unknown: the handshake fails.
    assert_refused(
        over_tls(&env.server, Version::V5, "lamp-1", &tls).await,
        "could not connect",
    );
    things
        .register_ca_certificate(pb::RegisterCaCertificateRequest {
            ca_certificate_pem: acme.certificate_pem().into(),
        })
        .await?;
    // The CA is trusted now, but the certificate is nobody's: refused at CONNECT.
    assert_refused(
        over_tls(&env.server, Version::V5, "lamp-1", &tls).await,
        "NotAuthorized",
    );
    things
        .register_thing_certificate(pb::RegisterThingCertificateRequest {
            owner: owner("lamp-1"),
            certificate_pem: signed.certificate_pem.clone(),
            ..Default::default()
        })
        .await?;
    let (mut device, topics) = subscribed(&env.server, Version::V5, "lamp-1", &tls).await?;
    let id = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    device
        .expect_topic(&topics.request(&id, "json"), fleetcmd_e2e::WAIT)
        .await?;
    let reply = device
        .report_json(&topics, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_accepted(&reply, &id)?;
    device.disconnect().await?;
    // After a restart the listener trusts the registered CA from the start.
    let data_dir = env.server.stop().await?;
    let server = Server::start_with(ServeArgs {
        data_dir,
        device_auth: Some(DeviceAuth::Required),
        ..test_args(name)
    })
    .await?;
    let device = over_tls(&server, Version::V5, "lamp-1", &tls).await?;
    device.disconnect().await?;
    server.shutdown().await
}
