//! The audit trail (`--audit-log FILE`): every mutating call and credential change is one JSON
//! line naming the caller, the action, the resource and the result — refusals included.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::wait::eventually;
use fleetcmd_e2e::{
    ADMIN_TOKEN, ServeArgs, Server, policed_args, static_json_command, thing, with_admin,
};
use serde_json::Value as Json;

use crate::Result;

const READER: &str = "reader-secret-0123456789abcdef";

const POLICY: &str = r#"
[[tokens]]
name = "reader"
token = "reader-secret-0123456789abcdef"
allow = [{ actions = ["GetThing"] }]
"#;

/// The records in `path` once there are `n` of them.
async fn records(path: &std::path::Path, n: usize) -> anyhow::Result<Vec<Json>> {
    eventually(
        format!("{n} audit records in {}", path.display()),
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<Json> = text
                .lines()
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()?;
            Ok((lines.len() >= n).then_some(lines))
        },
    )
    .await
}

fn summary(r: &Json) -> (String, String, String, String) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    (s("caller"), s("action"), s("resource"), s("result"))
}

#[tokio::test]
async fn every_mutating_call_is_recorded_with_its_caller_resource_and_result() -> Result {
    let args = policed_args("audit", &with_admin(POLICY))?;
    let log = args.data_dir.join("audit.jsonl");
    let server = Server::start_with(ServeArgs {
        audit_log: Some(log.clone()),
        ..args
    })
    .await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    let mut things = server.things().await?;

    reg.create_command(as_admin(static_json_command("ping", "{}")))
        .await?;
    things
        .create_thing(as_admin(pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            ..Default::default()
        }))
        .await?;
    let owner = Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ThingName("lamp-1".into())),
    });
    let cert = things
        .create_thing_certificate(as_admin(pb::CreateThingCertificateRequest {
            owner: owner.clone(),
            validity_days: 0,
        }))
        .await?
        .into_inner();
    things
        .revoke_thing_certificate(as_admin(pb::RevokeThingCertificateRequest {
            certificate_id: cert.certificate_id.clone(),
        }))
        .await?;
    // Refused: not allowed, and not authenticated at all.
    let denied = things
        .delete_thing(with_token(
            pb::DeleteThingRequest {
                thing_name: "lamp-1".into(),
                expected_version: 0,
            },
            READER,
        ))
        .await;
    assert!(denied.is_err());
    let anonymous = disp
        .start_command_execution(start_request("ping", thing("lamp-1")))
        .await;
    assert!(anonymous.is_err());
    // Reads are not recorded.
    things
        .get_thing(with_token(
            pb::GetThingRequest {
                thing_name: "lamp-1".into(),
            },
            READER,
        ))
        .await?;

    let got: Vec<_> = records(&log, 6).await?.iter().map(summary).collect();
    let want = [
        ("admin", "CreateCommand", "command/ping".to_owned(), "OK"),
        ("admin", "CreateThing", "thing/lamp-1".to_owned(), "OK"),
        (
            "admin",
            "CreateThingCertificate",
            "thing/lamp-1".to_owned(),
            "OK",
        ),
        (
            "admin",
            "RevokeThingCertificate",
            format!("certificate/{}", cert.certificate_id),
            "OK",
        ),
        (
            "reader",
            "DeleteThing",
            "thing/lamp-1".to_owned(),
            "PERMISSION_DENIED",
        ),
        (
            "unauthenticated",
            "StartCommandExecution",
            "command/ping on thing/lamp-1".to_owned(),
            "UNAUTHENTICATED",
        ),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(c, a, r, o)| (c.to_string(), a.to_string(), r.clone(), o.to_string()))
        .collect();
    assert_eq!(got, want);
    let text = std::fs::read_to_string(&log)?;
    assert!(
        !text.contains(ADMIN_TOKEN) && !text.contains(READER),
        "no token in the trail"
    );
    assert!(!text.contains(&cert.private_key_pem), "no key in the trail");
    server.shutdown().await
}
