//! Device credentials through ThingRegistry: certificates issued by the fleetcmd CA (verifying
//! against the CA returned, named after their owner, their key matching), registered from a
//! PEM or a CSR, listed, revoked (and in the CRL), passwords returned once, every refusal
//! naming what was wrong, credentials surviving a restart, and the policy covering the calls.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, Things, policed_args, test_args};
use fleetcmd_identity::{Ca, DeviceIdentity, TrustedCa};
use time::OffsetDateTime;
use tonic::Code;
use x509_parser::prelude::FromDer as _;

use crate::Result;

fn thing_owner(name: &str) -> Option<pb::CredentialOwner> {
    Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ThingName(name.into())),
    })
}

fn client_owner(id: &str) -> Option<pb::CredentialOwner> {
    Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ClientId(id.into())),
    })
}

fn create_cert(owner: Option<pb::CredentialOwner>) -> pb::CreateThingCertificateRequest {
    pb::CreateThingCertificateRequest {
        owner,
        validity_days: 0,
    }
}

async fn create_thing(things: &mut Things, name: &str) -> anyhow::Result<()> {
    things
        .create_thing(pb::CreateThingRequest {
            thing_name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn list(
    things: &mut Things,
    owner: Option<pb::CredentialOwner>,
) -> std::result::Result<Vec<pb::Certificate>, tonic::Status> {
    things
        .list_thing_certificates(pb::ListThingCertificatesRequest { owner })
        .await
        .map(|r| r.into_inner().certificates)
}

async fn revoke(
    things: &mut Things,
    id: &str,
) -> std::result::Result<tonic::Response<pb::RevokeThingCertificateResponse>, tonic::Status> {
    things
        .revoke_thing_certificate(pb::RevokeThingCertificateRequest {
            certificate_id: id.into(),
        })
        .await
}

async fn crl_pem(things: &mut Things) -> anyhow::Result<String> {
    Ok(things
        .get_certificate_revocation_list(pb::GetCertificateRevocationListRequest {})
        .await?
        .into_inner()
        .crl_pem)
}

/// The serials (lowercase hex) a CRL lists.
fn crl_serials(pem: &str) -> Vec<String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM CRL");
    assert_eq!(parsed.label, "X509 CRL");
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&parsed.contents)
            .expect("a DER CRL");
    crl.iter_revoked_certificates()
        .map(|r| serial_of(r.raw_serial()))
        .collect()
}

fn serial_of(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len() - 1);
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial of a PEM certificate.
fn cert_serial(pem: &str) -> String {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM cert");
    serial_of(parsed.parse_x509().expect("a DER cert").raw_serial())
}

fn status(s: i32) -> pb::CertificateStatus {
    pb::CertificateStatus::try_from(s).expect("a known status")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A server (default test arguments for `name`) with the thing `lamp-1`.
async fn given_a_thing(name: &str) -> anyhow::Result<(Server, Things)> {
    given_a_thing_with(test_args(name)).await
}

/// A server started with `args`, with the thing `lamp-1`.
async fn given_a_thing_with(args: fleetcmd_e2e::ServeArgs) -> anyhow::Result<(Server, Things)> {
    let server = Server::start_with(args).await?;
    let mut things = server.things().await?;
    create_thing(&mut things, "lamp-1").await?;
    Ok((server, things))
}

#[tokio::test]
async fn an_issued_certificate_verifies_against_the_returned_ca_and_lists_as_active() -> Result {
    let (server, mut things) = given_a_thing("cred-issue").await?;
    let r = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    let ca = TrustedCa::from_pem(&r.root_ca_pem)?;
    let parsed =
        fleetcmd_identity::parse_and_verify(&r.certificate_pem, std::slice::from_ref(&ca), now())?;
    assert_eq!(parsed.common_name.as_deref(), Some("things/lamp-1"));
    assert_eq!(parsed.issuer_ca_id, ca.id());
    assert_eq!(
        r.certificate_id,
        fleetcmd_identity::certificate_id(&parsed.der)
    );
    assert_eq!(r.certificate_id.len(), 64);
    // The private key is the certificate's: a TLS client accepts the pair, not another key.
    fleetcmd_identity::client_config(
        &r.root_ca_pem,
        Some((&r.certificate_pem, &r.private_key_pem)),
    )?;
    let other = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    assert!(
        fleetcmd_identity::client_config(
            &r.root_ca_pem,
            Some((&r.certificate_pem, &other.private_key_pem))
        )
        .is_err(),
        "a key of another certificate does not match"
    );
    let listed = list(&mut things, thing_owner("lamp-1")).await?;
    assert_eq!(listed.len(), 2);
    let c = listed
        .iter()
        .find(|c| c.certificate_id == r.certificate_id)
        .expect("listed");
    assert_eq!(status(c.status), pb::CertificateStatus::Active);
    assert_eq!(c.owner, thing_owner("lamp-1"));
    assert_eq!(c.certificate_pem, r.certificate_pem);
    assert_eq!(c.ca_certificate_id, ca.id());
    assert!(c.revoked_at.is_none() && c.created_at.is_some());
    let days = (ms(&c.not_after) - ms(&c.not_before)) / 86_400_000;
    assert_eq!(
        days, 365,
        "the default validity (plus an hour's backdating)"
    );
    assert!(
        !listed
            .iter()
            .any(|c| c.certificate_pem.contains("PRIVATE KEY")),
        "keys are never stored"
    );
    expect_invalid(
        things
            .create_thing_certificate(pb::CreateThingCertificateRequest {
                validity_days: 3651,
                ..create_cert(thing_owner("lamp-1"))
            })
            .await,
        "validity_days",
        &["at most 3650"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn certificates_need_a_registered_thing_or_a_client_and_at_most_ten_an_owner() -> Result {
    let (server, mut things) = given_a_thing("cred-owner").await?;
    expect_code(
        things
            .create_thing_certificate(create_cert(thing_owner("ghost")))
            .await,
        Code::NotFound,
        &["thing ghost not found"],
    );
    expect_code(
        list(&mut things, thing_owner("ghost"))
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        &["ghost"],
    );
    expect_invalid(
        things.create_thing_certificate(create_cert(None)).await,
        "owner",
        &["owner.thing_name or owner.client_id"],
    );
    expect_invalid(
        things
            .create_thing_certificate(create_cert(thing_owner("a/b")))
            .await,
        "owner.thing_name",
        &["[a-zA-Z0-9:_-]"],
    );
    expect_invalid(
        things
            .create_thing_password(pb::CreateThingPasswordRequest {
                owner: client_owner("a+b"),
            })
            .await,
        "owner.client_id",
        &["'+'"],
    );
    // A bare client needs no registration.
    let mut ids = Vec::new();
    for _ in 0..10 {
        let r = things
            .create_thing_certificate(create_cert(client_owner("sensor-7")))
            .await?
            .into_inner();
        ids.push(r.certificate_id);
    }
    let first = things
        .list_thing_certificates(pb::ListThingCertificatesRequest {
            owner: client_owner("sensor-7"),
        })
        .await?
        .into_inner()
        .certificates;
    assert_eq!(first.len(), 10);
    let parsed = fleetcmd_identity::parse_and_verify(
        &first[0].certificate_pem,
        &[TrustedCa::from_pem(
            &things
                .create_thing_certificate(create_cert(thing_owner("lamp-1")))
                .await?
                .into_inner()
                .root_ca_pem,
        )?],
        now(),
    )?;
    assert_eq!(parsed.common_name.as_deref(), Some("clients/sensor-7"));
    expect_code(
        things
            .create_thing_certificate(create_cert(client_owner("sensor-7")))
            .await,
        Code::ResourceExhausted,
        &["10 certificates"],
    );
    // Revoked ones count too (they stay listed).
    revoke(&mut things, &ids[0]).await?;
    expect_code(
        things
            .create_thing_certificate(create_cert(client_owner("sensor-7")))
            .await,
        Code::ResourceExhausted,
        &["10 certificates"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_revoked_certificate_lists_as_revoked_and_is_in_the_crl() -> Result {
    let (server, mut things) = given_a_thing("cred-revoke").await?;
    assert!(crl_serials(&crl_pem(&mut things).await?).is_empty());
    let keep = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    let gone = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    let r = revoke(&mut things, &gone.certificate_id)
        .await?
        .into_inner();
    assert_eq!(r.certificate_id, gone.certificate_id);
    assert_eq!(status(r.status), pb::CertificateStatus::Revoked);
    // Again: idempotent.
    let again = revoke(&mut things, &gone.certificate_id)
        .await?
        .into_inner();
    assert_eq!(status(again.status), pb::CertificateStatus::Revoked);
    let listed = list(&mut things, thing_owner("lamp-1")).await?;
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|c| c.certificate_id == id)
            .expect("listed")
    };
    assert_eq!(
        status(by_id(&gone.certificate_id).status),
        pb::CertificateStatus::Revoked
    );
    assert!(by_id(&gone.certificate_id).revoked_at.is_some());
    assert_eq!(
        status(by_id(&keep.certificate_id).status),
        pb::CertificateStatus::Active
    );
    let crl = crl_pem(&mut things).await?;
    assert_eq!(crl_serials(&crl), [cert_serial(&gone.certificate_pem)]);
    expect_code(
        revoke(&mut things, &"ab".repeat(32)).await,
        Code::NotFound,
        &["not found"],
    );
    expect_invalid(
        revoke(&mut things, "not-an-id").await,
        "certificate_id",
        &["64 lowercase hex"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_registered_certificate_chains_to_the_fleetcmd_ca_and_names_its_owner() -> Result {
    let args = test_args("cred-register");
    let (server, mut things) = given_a_thing_with(args.clone()).await?;
    let ca = Ca::load_or_create(&args.data_dir.join("tls"))?;
    let lamp = DeviceIdentity::thing("lamp-1")?;
    let mine = fleetcmd_identity::issue(&ca, &lamp, 30, now())?;
    let register = |certificate_pem: &str, csr_pem: &str| pb::RegisterThingCertificateRequest {
        owner: thing_owner("lamp-1"),
        certificate_pem: certificate_pem.into(),
        csr_pem: csr_pem.into(),
        validity_days: 0,
    };
    let r = things
        .register_thing_certificate(register(&mine.certificate_pem, ""))
        .await?
        .into_inner();
    assert_eq!(r.certificate_id, mine.certificate_id);
    // Registered again: the same certificate, still one.
    things
        .register_thing_certificate(register(&mine.certificate_pem, ""))
        .await?;
    let listed = list(&mut things, thing_owner("lamp-1")).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].certificate_id, mine.certificate_id);
    // From a CSR the device made with its own key: signed for the owner, whatever it asked.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "things/someone-else");
    let csr = params.serialize_request(&key)?.pem()?;
    let signed = things
        .register_thing_certificate(register("", &csr))
        .await?
        .into_inner();
    let parsed =
        fleetcmd_identity::parse_and_verify(&signed.certificate_pem, &[ca.trusted()], now())?;
    assert_eq!(parsed.common_name.as_deref(), Some("things/lamp-1"));
    fleetcmd_identity::client_config(
        ca.certificate_pem(),
        Some((&signed.certificate_pem, &key.serialize_pem())),
    )?;
    assert_eq!(list(&mut things, thing_owner("lamp-1")).await?.len(), 2);
    // Refused: another CA's certificate, another owner's name, both or neither input, junk.
    let stranger = Ca::generate(now())?;
    let foreign = fleetcmd_identity::issue(&stranger, &lamp, 30, now())?;
    expect_invalid(
        things
            .register_thing_certificate(register(&foreign.certificate_pem, ""))
            .await,
        "certificate_pem",
        &["not issued by a trusted CA"],
    );
    let other = fleetcmd_identity::issue(&ca, &DeviceIdentity::thing("lamp-2")?, 30, now())?;
    expect_invalid(
        things
            .register_thing_certificate(register(&other.certificate_pem, ""))
            .await,
        "certificate_pem",
        &["things/lamp-1", "things/lamp-2"],
    );
    expect_invalid(
        things.register_thing_certificate(register("", "")).await,
        "certificate_pem",
        &["exactly one"],
    );
    expect_invalid(
        things
            .register_thing_certificate(register(&mine.certificate_pem, &csr))
            .await,
        "certificate_pem",
        &["exactly one"],
    );
    expect_invalid(
        things
            .register_thing_certificate(register("", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"))
            .await,
        "csr_pem",
        &["CSR"],
    );
    let huge = "x".repeat(20_000);
    let refused = expect_invalid(
        things.register_thing_certificate(register(&huge, "")).await,
        "certificate_pem",
        &["at most"],
    );
    assert!(refused.message().len() < 1_000, "the input is not echoed");
    assert_eq!(
        list(&mut things, thing_owner("lamp-1")).await?.len(),
        2,
        "no refused call attached anything"
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_password_is_returned_once_and_replaced_by_the_next() -> Result {
    let (server, mut things) = given_a_thing("cred-password").await?;
    let password = |owner| pb::CreateThingPasswordRequest { owner };
    let first = things
        .create_thing_password(password(thing_owner("lamp-1")))
        .await?
        .into_inner();
    assert_eq!(first.username, "lamp-1");
    assert!(first.password.len() >= 16, "{:?}", first.password);
    assert!(
        !first.password.starts_with("$argon2"),
        "the password, not its hash"
    );
    let second = things
        .create_thing_password(password(thing_owner("lamp-1")))
        .await?
        .into_inner();
    assert_ne!(second.password, first.password);
    let client = things
        .create_thing_password(password(client_owner("sensor-7")))
        .await?
        .into_inner();
    assert_eq!(client.username, "clients/sensor-7");
    expect_code(
        things
            .create_thing_password(password(thing_owner("ghost")))
            .await,
        Code::NotFound,
        &["thing ghost not found"],
    );
    // A password is no certificate, and no response carries its hash.
    let listed = list(&mut things, thing_owner("lamp-1")).await?;
    assert!(listed.is_empty());
    assert!(!format!("{listed:?}{first:?}{second:?}").contains("$argon2"));
    server.shutdown().await
}

#[tokio::test]
async fn credentials_survive_a_restart() -> Result {
    let args = test_args("cred-restart");
    let (server, mut things) = given_a_thing_with(args.clone()).await?;
    let keep = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    let gone = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    revoke(&mut things, &gone.certificate_id).await?;
    things
        .create_thing_password(pb::CreateThingPasswordRequest {
            owner: thing_owner("lamp-1"),
        })
        .await?;
    let data_dir = server.stop().await?;
    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut things = server.things().await?;
    let mut listed: Vec<(String, pb::CertificateStatus)> = list(&mut things, thing_owner("lamp-1"))
        .await?
        .into_iter()
        .map(|c| (c.certificate_id, status(c.status)))
        .collect();
    listed.sort();
    let mut want = vec![
        (keep.certificate_id.clone(), pb::CertificateStatus::Active),
        (gone.certificate_id.clone(), pb::CertificateStatus::Revoked),
    ];
    want.sort();
    assert_eq!(listed, want);
    // The owner rebuilt its state too: the other one is revoked now, and the CA is the same.
    revoke(&mut things, &keep.certificate_id).await?;
    let crl = crl_pem(&mut things).await?;
    let mut serials = crl_serials(&crl);
    serials.sort();
    let mut want = vec![
        cert_serial(&keep.certificate_pem),
        cert_serial(&gone.certificate_pem),
    ];
    want.sort();
    assert_eq!(serials, want);
    let again = things
        .create_thing_certificate(create_cert(thing_owner("lamp-1")))
        .await?
        .into_inner();
    assert_eq!(again.root_ca_pem, keep.root_ca_pem);
    server.shutdown().await
}

const POLICY: &str = r#"
[[tokens]]
name = "lab-provisioner"
token = "lab-provisioner-0123456789abcdef"
[[tokens.allow]]
actions = ["CreateThingCertificate", "ListThingCertificates", "RevokeThingCertificate", "CreateThingPassword"]
targets = ["thing/lab-*"]

[[tokens]]
name = "admin"
token = "admin-secret-0123456789abcdef"
[[tokens.allow]]
actions = ["*"]
"#;

#[tokio::test]
async fn the_policy_covers_the_credential_calls() -> Result {
    let server = Server::start_with(policed_args("cred-policy", POLICY)?).await?;
    let mut things = server.things().await?;
    let (admin, lab) = (
        "admin-secret-0123456789abcdef",
        "lab-provisioner-0123456789abcdef",
    );
    for name in ["lab-1", "office-1"] {
        things
            .create_thing(with_token(
                pb::CreateThingRequest {
                    thing_name: name.into(),
                    ..Default::default()
                },
                admin,
            ))
            .await?;
    }
    let office = things
        .create_thing_certificate(with_token(create_cert(thing_owner("office-1")), admin))
        .await?
        .into_inner();
    let mine = things
        .create_thing_certificate(with_token(create_cert(thing_owner("lab-1")), lab))
        .await?
        .into_inner();
    things
        .list_thing_certificates(with_token(
            pb::ListThingCertificatesRequest {
                owner: thing_owner("lab-1"),
            },
            lab,
        ))
        .await?;
    things
        .create_thing_password(with_token(
            pb::CreateThingPasswordRequest {
                owner: thing_owner("lab-1"),
            },
            lab,
        ))
        .await?;
    let revoke_as = |id: &str, token: &str| {
        with_token(
            pb::RevokeThingCertificateRequest {
                certificate_id: id.into(),
            },
            token,
        )
    };
    expect_code(
        things
            .create_thing_certificate(with_token(create_cert(thing_owner("office-1")), lab))
            .await,
        Code::PermissionDenied,
        &[
            "lab-provisioner",
            "CreateThingCertificate",
            "thing/office-1",
        ],
    );
    expect_code(
        things
            .list_thing_certificates(with_token(
                pb::ListThingCertificatesRequest {
                    owner: thing_owner("office-1"),
                },
                lab,
            ))
            .await,
        Code::PermissionDenied,
        &["ListThingCertificates"],
    );
    expect_code(
        things
            .create_thing_password(with_token(
                pb::CreateThingPasswordRequest {
                    owner: thing_owner("office-1"),
                },
                lab,
            ))
            .await,
        Code::PermissionDenied,
        &["CreateThingPassword"],
    );
    expect_code(
        things
            .revoke_thing_certificate(revoke_as(&office.certificate_id, lab))
            .await,
        Code::PermissionDenied,
        &["RevokeThingCertificate", "thing/office-1"],
    );
    // An unknown id looks like another owner's to a narrowed caller: ids cannot be probed.
    expect_code(
        things
            .revoke_thing_certificate(revoke_as(&"ab".repeat(32), lab))
            .await,
        Code::PermissionDenied,
        &["RevokeThingCertificate"],
    );
    expect_code(
        things
            .register_thing_certificate(with_token(
                pb::RegisterThingCertificateRequest {
                    owner: thing_owner("lab-1"),
                    certificate_pem: mine.certificate_pem.clone(),
                    ..Default::default()
                },
                lab,
            ))
            .await,
        Code::PermissionDenied,
        &["RegisterThingCertificate"],
    );
    expect_code(
        things
            .get_certificate_revocation_list(with_token(
                pb::GetCertificateRevocationListRequest {},
                lab,
            ))
            .await,
        Code::PermissionDenied,
        &["GetCertificateRevocationList"],
    );
    expect_code(
        things
            .create_thing_certificate(create_cert(thing_owner("lab-1")))
            .await,
        Code::Unauthenticated,
        &[],
    );
    things
        .revoke_thing_certificate(revoke_as(&mine.certificate_id, lab))
        .await?;
    let crl = things
        .get_certificate_revocation_list(with_token(
            pb::GetCertificateRevocationListRequest {},
            admin,
        ))
        .await?
        .into_inner()
        .crl_pem;
    assert_eq!(crl_serials(&crl), [cert_serial(&mine.certificate_pem)]);
    let office_certs = things
        .list_thing_certificates(with_token(
            pb::ListThingCertificatesRequest {
                owner: thing_owner("office-1"),
            },
            admin,
        ))
        .await?
        .into_inner()
        .certificates;
    assert_eq!(office_certs.len(), 1, "the refused calls changed nothing");
    assert_eq!(
        status(office_certs[0].status),
        pb::CertificateStatus::Active
    );
    server.shutdown().await
}
