//! The API over TLS (`--grpc-tls`): callers trust fleetcmd's CA; a client certificate from it
//! is a policy identity (its subject CN), which no caller can claim by sending the header
//! the server uses for it; tokens may be stored as SHA-256 digests; and a public address
//! needs TLS unless plaintext is allowed explicitly.

use fleetcmd_contracts::pb;
use fleetcmd_domain::policy::token_sha256;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{
    ADMIN_TOKEN, Registry, ServeArgs, Server, Things, policed_args, test_args, with_admin, within,
};
use tonic::Code;

use crate::Result;

const HASHED_TOKEN: &str = "hashed-reader-0123456789abcdef";

/// A policy: the admin by token, a reader known only by the SHA-256 of its token, and the
/// CI runner known by its client certificate's subject.
fn policy() -> String {
    with_admin(&format!(
        r#"
[[tokens]]
name = "hashed-reader"
token_sha256 = "{}"
[[tokens.allow]]
actions = ["ListCommands"]

[[tokens]]
name = "ci-runner"
certificate_subject = "clients/ci-runner"
[[tokens.allow]]
actions = ["ListCommands", "GetCommand"]
"#,
        token_sha256(HASHED_TOKEN)
    ))
}

/// A server with `--grpc-tls` and the policy above.
async fn given_a_tls_server(name: &str) -> anyhow::Result<Server> {
    Server::start_with(ServeArgs {
        grpc_tls: true,
        ..policed_args(name, &policy())?
    })
    .await
}

fn list() -> pb::ListCommandsRequest {
    pb::ListCommandsRequest::default()
}

#[tokio::test]
async fn over_tls_callers_who_trust_the_ca_are_served_and_plaintext_is_not() -> Result {
    let server = given_a_tls_server("tls-basic").await?;
    let mut reg = Registry::new(server.tls_channel(None).await?);
    reg.list_commands(as_admin(list())).await?;
    // The same port spoken to in plaintext does not answer as gRPC.
    let plain = within(
        "a plaintext call",
        Registry::new(server.channel().await?).list_commands(as_admin(list())),
    )
    .await?;
    assert!(plain.is_err(), "a plaintext call to a TLS port must fail");
    server.shutdown().await
}

#[tokio::test]
async fn a_token_stored_as_its_sha256_authenticates_its_caller() -> Result {
    let server = given_a_tls_server("tls-hashed").await?;
    let mut reg = Registry::new(server.tls_channel(None).await?);
    reg.list_commands(with_token(list(), HASHED_TOKEN)).await?;
    expect_code(
        reg.get_command(with_token(
            pb::GetCommandRequest {
                command_id: "x".into(),
            },
            HASHED_TOKEN,
        ))
        .await,
        Code::PermissionDenied,
        &["hashed-reader", "GetCommand"],
    );
    expect_code(
        reg.list_commands(with_token(list(), &token_sha256(HASHED_TOKEN)))
            .await,
        Code::Unauthenticated,
        &["unknown bearer token"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_client_certificate_is_a_policy_identity_that_no_header_can_forge() -> Result {
    let server = given_a_tls_server("tls-mtls").await?;
    // The admin issues the CI runner a certificate (a bare client identity).
    let mut things = Things::new(server.tls_channel(None).await?);
    let issued = things
        .create_thing_certificate(as_admin(pb::CreateThingCertificateRequest {
            owner: Some(pb::CredentialOwner {
                owner: Some(pb::credential_owner::Owner::ClientId("ci-runner".into())),
            }),
            validity_days: 0,
        }))
        .await?
        .into_inner();
    let identity = (
        issued.certificate_pem.as_str(),
        issued.private_key_pem.as_str(),
    );
    let mut runner = Registry::new(server.tls_channel(Some(identity)).await?);
    runner.list_commands(list()).await?;
    expect_code(
        runner
            .create_command(fleetcmd_e2e::static_json_command("by-ci", "{}"))
            .await,
        Code::PermissionDenied,
        &["ci-runner", "CreateCommand"],
    );
    // Without a certificate, claiming its subject through the server's header does nothing.
    let mut forger = Registry::new(server.tls_channel(None).await?);
    let mut forged = tonic::Request::new(list());
    forged
        .metadata_mut()
        .insert("x-fleetcmd-peer-subject", "clients/ci-runner".parse()?);
    expect_code(
        forger.list_commands(forged).await,
        Code::Unauthenticated,
        &["missing authorization"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn serve_refuses_a_public_api_address_without_tls() -> Result {
    let mut args = test_args("tls-public");
    args.grpc_addr = "0.0.0.0:0".parse()?;
    args.allow_unauthenticated = true;
    let err = match fleetcmd_standalone::start(args).await {
        Ok(running) => {
            running.stop().await?;
            panic!("serve started on a public address without TLS")
        }
        Err(e) => format!("{e:#}"),
    };
    for needle in ["without TLS", "--grpc-tls", "--allow-plaintext-grpc"] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    Ok(())
}

#[tokio::test]
async fn the_cli_client_speaks_tls_with_the_ca_and_mutual_tls_with_a_certificate() -> Result {
    let server = given_a_tls_server("tls-cli").await?;
    let endpoint = server.running.grpc_addr.to_string();
    let ca_pem = std::fs::read_to_string(server.data_dir.join("tls").join("ca.pem"))?;
    let tls = fleetcmd_cli::ClientTls {
        ca_pem: Some(ca_pem.clone()),
        identity: None,
    };
    let admin = fleetcmd_cli::Api::connect(&endpoint, &endpoint, Some(ADMIN_TOKEN), Some(&tls))?;
    fleetcmd_cli::command::list(&admin, list()).await?;
    let issued = fleetcmd_cli::credentials::create_certificate(
        &admin,
        pb::CreateThingCertificateRequest {
            owner: Some(pb::CredentialOwner {
                owner: Some(pb::credential_owner::Owner::ClientId("ci-runner".into())),
            }),
            validity_days: 0,
        },
    )
    .await?;
    let mutual = fleetcmd_cli::ClientTls {
        ca_pem: Some(ca_pem),
        identity: Some((issued.certificate_pem, issued.private_key_pem)),
    };
    let runner = fleetcmd_cli::Api::connect(&endpoint, &endpoint, None, Some(&mutual))?;
    fleetcmd_cli::command::list(&runner, list()).await?;
    // Without TLS the client cannot talk to a TLS server.
    let plain = fleetcmd_cli::Api::connect_lazy(&endpoint, Some(ADMIN_TOKEN))?
        .with_retry(fleetcmd_cli::RetryPolicy::NONE);
    assert!(fleetcmd_cli::command::list(&plain, list()).await.is_err());
    server.shutdown().await
}
