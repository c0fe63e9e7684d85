//! CA certificates a user registers (RegisterCaCertificate, ListCaCertificates): a device
//! certificate signed by one is refused until its CA is registered and attached after;
//! registering is idempotent; every bad CA is refused naming the field and changes nothing;
//! registrations survive a restart; the policy covers both calls.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, Things, policed_args, test_args};
use fleetcmd_identity::{Ca, DeviceIdentity};
use time::{Duration, OffsetDateTime};
use tonic::Code;

use crate::Result;

fn lamp_owner() -> Option<pb::CredentialOwner> {
    Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ThingName("lamp-1".into())),
    })
}

fn register_ca(pem: &str) -> pb::RegisterCaCertificateRequest {
    pb::RegisterCaCertificateRequest {
        ca_certificate_pem: pem.into(),
    }
}

fn register_cert(pem: &str) -> pb::RegisterThingCertificateRequest {
    pb::RegisterThingCertificateRequest {
        owner: lamp_owner(),
        certificate_pem: pem.into(),
        ..Default::default()
    }
}

async fn listed_cas(things: &mut Things) -> anyhow::Result<Vec<pb::CaCertificate>> {
    Ok(things
        .list_ca_certificates(pb::ListCaCertificatesRequest {})
        .await?
        .into_inner()
        .ca_certificates)
}

/// A server started with `args`, with the thing `lamp-1`.
async fn given_a_thing(args: fleetcmd_e2e::ServeArgs) -> anyhow::Result<(Server, Things)> {
    let server = Server::start_with(args).await?;
    let mut things = server.things().await?;
    things
        .create_thing(pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            ..Default::default()
        })
        .await?;
    Ok((server, things))
}

#[tokio::test]
async fn a_certificate_signed_by_a_registered_ca_is_attached_and_names_that_ca() -> Result {
    let (server, mut things) = given_a_thing(test_args("ca-register")).await?;
    let now = OffsetDateTime::now_utc();
    let acme = Ca::generate(now)?;
    let lamp = DeviceIdentity::thing("lamp-1")?;
    let signed = fleetcmd_identity::issue(&acme, &lamp, 30, now)?;
    expect_invalid(
        things
            .register_thing_certificate(register_cert(&signed.certificate_pem))
            .await,
        "certificate_pem",
        &["not issued by a trusted CA"],
    );
    assert!(listed_cas(&mut things).await?.is_empty());
    let id = things
        .register_ca_certificate(register_ca(acme.certificate_pem()))
        .await?
        .into_inner()
        .ca_certificate_id;
    assert_eq!(id, acme.id());
    // Again (a retry): the same id, still one CA.
    let again = things
        .register_ca_certificate(register_ca(acme.certificate_pem()))
        .await?
        .into_inner();
    assert_eq!(again.ca_certificate_id, id);
    let cas = listed_cas(&mut things).await?;
    assert_eq!(cas.len(), 1);
    assert_eq!(cas[0].ca_certificate_id, id);
    assert!(cas[0].common_name.starts_with("fleetcmd CA "), "{cas:?}");
    assert!(cas[0].registered_at.is_some() && cas[0].not_after.is_some());
    let attached = things
        .register_thing_certificate(register_cert(&signed.certificate_pem))
        .await?
        .into_inner();
    assert_eq!(attached.certificate_id, signed.certificate_id);
    let listed = things
        .list_thing_certificates(pb::ListThingCertificatesRequest {
            owner: lamp_owner(),
        })
        .await?
        .into_inner()
        .certificates;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].ca_certificate_id, id,
        "the issuer is the registered CA"
    );
    // A registered CA does not make another owner's name acceptable.
    let other = fleetcmd_identity::issue(&acme, &DeviceIdentity::thing("lamp-2")?, 30, now)?;
    expect_invalid(
        things
            .register_thing_certificate(register_cert(&other.certificate_pem))
            .await,
        "certificate_pem",
        &["things/lamp-1", "things/lamp-2"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_ca_that_is_no_ca_is_not_valid_now_or_is_fleetcmds_own_is_refused() -> Result {
    let args = test_args("ca-refused");
    let (server, mut things) = given_a_thing(args.clone()).await?;
    let now = OffsetDateTime::now_utc();
    let acme = Ca::generate(now)?;
    let leaf = fleetcmd_identity::issue(&acme, &DeviceIdentity::thing("lamp-1")?, 30, now)?;
    let own = Ca::load_or_create(&args.data_dir.join("tls"))?;
    let expired = Ca::generate(now - Duration::days(3651))?;
    let not_yet = Ca::generate(now + Duration::days(2))?;
    let huge = "x".repeat(20_000);
    let cases: [(&str, &[&str]); 7] = [
        ("", &["required"]),
        ("not a PEM", &["CA certificate"]),
        (&leaf.certificate_pem, &["basic constraints", "CA"]),
        (expired.certificate_pem(), &["not valid now"]),
        (not_yet.certificate_pem(), &["not valid now"]),
        (own.certificate_pem(), &["fleetcmd's own"]),
        (&huge, &["at most"]),
    ];
    for (pem, needles) in cases {
        let refused = expect_invalid(
            things.register_ca_certificate(register_ca(pem)).await,
            "ca_certificate_pem",
            needles,
        );
        assert!(refused.message().len() < 1_000, "the input is not echoed");
    }
    assert!(
        listed_cas(&mut things).await?.is_empty(),
        "no refused call registered anything"
    );
    server.shutdown().await
}

#[tokio::test]
async fn registered_cas_survive_a_restart() -> Result {
    let args = test_args("ca-restart");
    let (server, mut things) = given_a_thing(args.clone()).await?;
    let now = OffsetDateTime::now_utc();
    let acme = Ca::generate(now)?;
    things
        .register_ca_certificate(register_ca(acme.certificate_pem()))
        .await?;
    let data_dir = server.stop().await?;
    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut things = server.things().await?;
    let cas = listed_cas(&mut things).await?;
    assert_eq!(
        cas.iter()
            .map(|c| c.ca_certificate_id.as_str())
            .collect::<Vec<_>>(),
        [acme.id()]
    );
    let signed = fleetcmd_identity::issue(&acme, &DeviceIdentity::thing("lamp-1")?, 30, now)?;
    things
        .register_thing_certificate(register_cert(&signed.certificate_pem))
        .await?;
    // The owner rebuilt its state too: registering again records nothing new.
    things
        .register_ca_certificate(register_ca(acme.certificate_pem()))
        .await?;
    assert_eq!(listed_cas(&mut things).await?.len(), 1);
    server.shutdown().await
}

const POLICY: &str = r#"
[[tokens]]
name = "lab-provisioner"
token = "lab-provisioner-0123456789abcdef"
[[tokens.allow]]
actions = ["RegisterThingCertificate", "ListThingCertificates"]
targets = ["thing/lab-*"]

[[tokens]]
name = "pki"
token = "pki-admin-0123456789abcdef"
[[tokens.allow]]
actions = ["RegisterCaCertificate", "ListCaCertificates"]
"#;

#[tokio::test]
async fn the_policy_covers_the_ca_calls() -> Result {
    let server = Server::start_with(policed_args("ca-policy", POLICY)?).await?;
    let mut things = server.things().await?;
    let (pki, lab) = (
        "pki-admin-0123456789abcdef",
        "lab-provisioner-0123456789abcdef",
    );
    let acme = Ca::generate(OffsetDateTime::now_utc())?;
    expect_code(
        things
            .register_ca_certificate(with_token(register_ca(acme.certificate_pem()), lab))
            .await,
        Code::PermissionDenied,
        &["lab-provisioner", "RegisterCaCertificate"],
    );
    expect_code(
        things
            .list_ca_certificates(with_token(pb::ListCaCertificatesRequest {}, lab))
            .await,
        Code::PermissionDenied,
        &["ListCaCertificates"],
    );
    expect_code(
        things
            .register_ca_certificate(register_ca(acme.certificate_pem()))
            .await,
        Code::Unauthenticated,
        &[],
    );
    let listed = |token| with_token(pb::ListCaCertificatesRequest {}, token);
    assert!(
        things
            .list_ca_certificates(listed(pki))
            .await?
            .into_inner()
            .ca_certificates
            .is_empty(),
        "the refused calls registered nothing"
    );
    things
        .register_ca_certificate(with_token(register_ca(acme.certificate_pem()), pki))
        .await?;
    let cas = things
        .list_ca_certificates(listed(pki))
        .await?
        .into_inner()
        .ca_certificates;
    assert_eq!(cas.len(), 1);
    server.shutdown().await
}

#[tokio::test]
async fn the_cli_registers_a_ca_from_its_file_and_lists_it() -> Result {
    use fleetcmd_cli::cas::{CaCmd, RegisterArgs};
    use fleetcmd_cli::thing::{ThingCmd, run};
    let args = test_args("ca-cli");
    let server = Server::start_with(args.clone()).await?;
    let api = fleetcmd_cli::Api::connect_lazy(&server.grpc_endpoint(), None)?;
    let acme = Ca::generate(OffsetDateTime::now_utc())?;
    let file = args.data_dir.join("acme-ca.pem");
    std::fs::write(&file, acme.certificate_pem())?;
    let json =
        |out: Vec<u8>| -> anyhow::Result<serde_json::Value> { Ok(serde_json::from_slice(&out)?) };
    let mut out = Vec::new();
    let register = ThingCmd::Ca(CaCmd::Register(RegisterArgs { file }));
    run(&api, register, fleetcmd_cli::Output::Json, &mut out).await?;
    assert_eq!(json(out)?["ca_certificate_id"], acme.id());
    let mut out = Vec::new();
    run(
        &api,
        ThingCmd::Ca(CaCmd::List),
        fleetcmd_cli::Output::Json,
        &mut out,
    )
    .await?;
    let listed = json(out)?;
    assert_eq!(listed["ca_certificates"][0]["ca_certificate_id"], acme.id());
    assert_eq!(
        listed["ca_certificates"][0]["certificate_pem"],
        acme.certificate_pem()
    );
    let mut out = Vec::new();
    let missing = ThingCmd::Ca(CaCmd::Register(RegisterArgs {
        file: args.data_dir.join("no-such.pem"),
    }));
    let err = run(&api, missing, fleetcmd_cli::Output::Text, &mut out)
        .await
        .expect_err("a missing file is refused before any call");
    assert!(format!("{err:#}").contains("no-such.pem"), "{err:#}");
    server.shutdown().await
}
