//! Access control: a policy authenticates and authorises every call; without one, serve
//! refuses a public address.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{
    ADMIN_TOKEN, Server, client, policed_args, static_json_command, temp_data_dir, test_args,
    thing, with_admin, within,
};
use pb::ExecutionStatus as St;
use tonic::{Code, Status};

use crate::Result;

const LAB_TOKEN: &str = "lab-operator-0123456789abcdef";

const POLICY: &str = r#"
[[tokens]]
name = "lab-operator"
token = "lab-operator-0123456789abcdef"
[[tokens.allow]]
actions = ["StartCommandExecution"]
commands = ["reboot"]
targets = ["thing/lab-*"]
"#;

/// A message authorised with `auth` (a full `authorization` value, or none).
fn authed<T>(auth: Option<&str>, message: T) -> tonic::Request<T> {
    match auth {
        Some(a) => with_authorization(message, a),
        None => tonic::Request::new(message),
    }
}

/// Calls every method once with `auth`; returns the refusals, by method.
async fn call_every_method(
    server: &Server,
    auth: Option<&str>,
    execution_id: &str,
) -> anyhow::Result<Vec<(&'static str, Status)>> {
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    let execution = || pb::GetCommandExecutionRequest {
        execution_id: execution_id.into(),
        ..Default::default()
    };
    // One call with `auth`: its refusal, if any.
    macro_rules! refusal {
        ($client:ident.$method:ident($request:expr)) => {
            $client.$method(authed(auth, $request)).await.err()
        };
    }
    let outcomes: [(&'static str, Option<Status>); 11] = [
        (
            "CreateCommand",
            refusal!(reg.create_command(static_json_command("made-by-anyone", "{}"))),
        ),
        (
            "GetCommand",
            refusal!(reg.get_command(pb::GetCommandRequest {
                command_id: "reboot".into(),
            })),
        ),
        (
            "ListCommands",
            refusal!(reg.list_commands(pb::ListCommandsRequest::default())),
        ),
        (
            "UpdateCommand",
            refusal!(reg.update_command(pb::UpdateCommandRequest {
                command_id: "reboot".into(),
                display_name: Some("x".into()),
                ..Default::default()
            })),
        ),
        (
            "DeleteCommand",
            refusal!(reg.delete_command(pb::DeleteCommandRequest {
                command_id: "other".into(),
            })),
        ),
        (
            "GetCommandExecution",
            refusal!(reg.get_command_execution(execution())),
        ),
        (
            "ListCommandExecutions",
            refusal!(reg.list_command_executions(pb::ListCommandExecutionsRequest::default())),
        ),
        (
            "DeleteCommandExecution",
            refusal!(
                reg.delete_command_execution(pb::DeleteCommandExecutionRequest {
                    execution_id: execution_id.into(),
                    target: None,
                })
            ),
        ),
        (
            "WatchCommandExecutions",
            refusal!(reg.watch_command_executions(pb::WatchCommandExecutionsRequest::default())),
        ),
        (
            "StartCommandExecution",
            refusal!(disp.start_command_execution(start_request("other", thing("prod-1")))),
        ),
        (
            "CancelCommandExecution",
            refusal!(
                disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
                    execution_id: execution_id.into(),
                    ..Default::default()
                })
            ),
        ),
    ];
    Ok(outcomes
        .into_iter()
        .filter_map(|(method, refused)| refused.map(|s| (method, s)))
        .collect())
}

/// A server with the policy above, `reboot` and `other` created by the admin, and one
/// execution the lab operator started (`reboot` on `thing/lab-1`).
struct Policed {
    server: Server,
    reg: Registry,
    disp: Dispatcher,
    lab_exec: String,
}

impl Policed {
    async fn stop(self) -> Result {
        self.server.shutdown().await
    }
}

async fn given_a_policy(name: &str) -> anyhow::Result<Policed> {
    let server = Server::start_with(policed_args(name, &with_admin(POLICY))?).await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    for id in ["reboot", "other"] {
        reg.create_command(as_admin(static_json_command(id, "{}")))
            .await?;
    }
    let lab_exec = start_execution(
        &mut disp,
        with_token(start_request("reboot", thing("lab-1")), LAB_TOKEN),
    )
    .await?;
    Ok(Policed {
        server,
        reg,
        disp,
        lab_exec,
    })
}

async fn list_all_executions_as(
    reg: &mut Registry,
    token: &str,
) -> anyhow::Result<Vec<pb::CommandExecutionSummary>> {
    Ok(reg
        .list_command_executions(with_token(
            pb::ListCommandExecutionsRequest {
                max_results: 100,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .command_executions)
}

async fn list_commands_as(
    reg: &mut Registry,
    token: &str,
) -> anyhow::Result<Vec<pb::CommandSummary>> {
    Ok(reg
        .list_commands(with_token(pb::ListCommandsRequest::default(), token))
        .await?
        .into_inner()
        .commands)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_token_may_start_exactly_what_its_grant_allows() -> Result {
    let mut p = given_a_policy("auth-narrow-start").await?;
    let denied = [
        (
            start_request("reboot", thing("prod-1")),
            vec![
                "lab-operator",
                "StartCommandExecution",
                "reboot",
                "thing/prod-1",
            ],
        ),
        (
            start_request("other", thing("lab-1")),
            vec!["lab-operator", "other", "thing/lab-1"],
        ),
        (
            start_request("reboot", client("lab-1")),
            vec!["client/lab-1"],
        ),
        (
            start_request("reboot", thing("xlab-1")),
            vec!["thing/xlab-1"],
        ),
    ];
    for (req, needles) in denied {
        expect_code(
            p.disp
                .start_command_execution(with_token(req, LAB_TOKEN))
                .await,
            Code::PermissionDenied,
            &needles,
        );
    }
    // Only the allowed start happened.
    let listed = list_all_executions_as(&mut p.reg, ADMIN_TOKEN).await?;
    assert_eq!(execution_ids(&listed), vec![p.lab_exec.clone()]);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_token_is_denied_every_other_method_and_changes_nothing() -> Result {
    let mut p = given_a_policy("auth-narrow-denied").await?;

    let refused =
        call_every_method(&p.server, Some(&format!("Bearer {LAB_TOKEN}")), &p.lab_exec).await?;

    assert_eq!(refused.len(), 11, "{refused:?}");
    for (method, status) in &refused {
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("lab-operator") && status.message().contains(method),
            "{method}: {}",
            status.message()
        );
    }
    let listed = list_all_executions_as(&mut p.reg, ADMIN_TOKEN).await?;
    assert_eq!(execution_ids(&listed), vec![p.lab_exec.clone()]);
    let e = p
        .reg
        .get_command_execution(as_admin(pb::GetCommandExecutionRequest {
            execution_id: p.lab_exec.clone(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(
        (e.command_id.as_str(), e.target.clone(), e.status()),
        ("reboot", Some(thing("lab-1")), St::Created)
    );
    let commands = list_commands_as(&mut p.reg, ADMIN_TOKEN).await?;
    let ids: Vec<&str> = commands.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, vec!["other", "reboot"]);
    assert!(
        commands
            .iter()
            .all(|c| c.display_name.is_empty() && !c.pending_deletion)
    );
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_or_malformed_credentials_are_unauthenticated_everywhere() -> Result {
    let mut p = given_a_policy("auth-unauthenticated").await?;
    let unknown = format!("Bearer {}", "x".repeat(32));
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing authorization"),
        (Some(unknown.as_str()), "unknown bearer token"),
        (Some("Basic YWRtaW46YWRtaW4="), "Bearer <token>"),
        (Some(ADMIN_TOKEN), "Bearer <token>"),
        (
            Some("Bearer lab-operator-0123456789abcdeF"),
            "unknown bearer token",
        ),
    ];
    for (auth, needle) in cases {
        let refused = call_every_method(&p.server, auth, &p.lab_exec).await?;

        assert_eq!(refused.len(), 11, "{auth:?}: {refused:?}");
        for (method, status) in refused {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} with {auth:?}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{method} with {auth:?}: {}",
                status.message()
            );
            assert!(
                !status.message().contains(ADMIN_TOKEN) && !status.message().contains(LAB_TOKEN),
                "never echo a token"
            );
        }
    }
    // Nothing changed.
    assert_eq!(
        execution_ids(&list_all_executions_as(&mut p.reg, ADMIN_TOKEN).await?),
        vec![p.lab_exec.clone()]
    );
    assert_eq!(list_commands_as(&mut p.reg, ADMIN_TOKEN).await?.len(), 2);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_may_do_everything() -> Result {
    let mut p = given_a_policy("auth-admin").await?;
    let (reg, disp) = (&mut p.reg, &mut p.disp);
    let mut watch = reg
        .watch_command_executions(as_admin(pb::WatchCommandExecutionsRequest::default()))
        .await?
        .into_inner();

    reg.get_command(as_admin(pb::GetCommandRequest {
        command_id: "reboot".into(),
    }))
    .await?;
    reg.update_command(as_admin(pb::UpdateCommandRequest {
        command_id: "other".into(),
        deprecated: Some(true),
        ..Default::default()
    }))
    .await?;
    let admin_exec =
        start_execution(disp, as_admin(start_request("reboot", thing("prod-1")))).await?;
    let event = within("the admin's Watch event", watch.message())
        .await??
        .expect("an event");
    assert_eq!(
        (event.execution_id.as_str(), event.status()),
        (admin_exec.as_str(), St::Created)
    );
    for id in [&p.lab_exec, &admin_exec] {
        disp.cancel_command_execution(as_admin(pb::CancelCommandExecutionRequest {
            execution_id: id.clone(),
            ..Default::default()
        }))
        .await?;
        reg.delete_command_execution(as_admin(pb::DeleteCommandExecutionRequest {
            execution_id: id.clone(),
            target: None,
        }))
        .await?;
    }
    let deleted = reg
        .delete_command(as_admin(pb::DeleteCommandRequest {
            command_id: "other".into(),
        }))
        .await?
        .into_inner();

    assert!(list_all_executions_as(reg, ADMIN_TOKEN).await?.is_empty());
    assert_eq!(deleted.status_code, 202);
    drop(watch);
    p.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() -> Result {
    let mut p = given_a_policy("auth-lowercase").await?;

    p.reg
        .list_commands(with_authorization(
            pb::ListCommandsRequest::default(),
            &format!("bearer {ADMIN_TOKEN}"),
        ))
        .await?;

    p.stop().await
}

// ---- serve without a policy -----------------------------------------------------------------

/// `args` with `policy` and a data directory of its own.
fn args_with_policy(
    args: &fleetcmd_e2e::ServeArgs,
    policy: Option<std::path::PathBuf>,
) -> fleetcmd_e2e::ServeArgs {
    let mut a = args.clone();
    a.policy = policy;
    a.data_dir = temp_data_dir("policy-data");
    a
}

/// The error of a start that must be refused.
async fn refused_start(args: fleetcmd_e2e::ServeArgs, what: &str) -> anyhow::Result<String> {
    match within("serve to start or refuse", fleetcmd_standalone::start(args)).await? {
        Ok(running) => {
            running.stop().await?;
            panic!("serve started {what}");
        }
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// Serve on every interface; plaintext is allowed so the checks here are the policy's (the
/// TLS rule has its own tests in `tls.rs`).
fn public_args(name: &str) -> anyhow::Result<fleetcmd_e2e::ServeArgs> {
    let mut args = test_args(name);
    args.grpc_addr = "0.0.0.0:0".parse()?;
    args.allow_plaintext_grpc = true;
    Ok(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_a_policy() -> Result {
    let args = public_args("public")?;
    let data_dir = args.data_dir.clone();

    let err = refused_start(args, "on 0.0.0.0 without a policy").await?;

    for needle in [
        "refusing",
        "0.0.0.0:0",
        "--policy",
        "--allow-unauthenticated",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert!(
        !data_dir.exists(),
        "a refused start created its data directory"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_malformed_or_missing_policy_file_naming_the_mistake() -> Result {
    let args = public_args("bad-policy")?;
    let dir = temp_data_dir("bad-policy");
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("policy.toml");
    std::fs::write(
        &bad,
        "[[tokens]]\nname = \"ci\"\ntoken = \"short-secret\"\n[[tokens.allow]]\nactions = [\"*\"]\n",
    )?;

    let err = refused_start(
        args_with_policy(&args, Some(bad.clone())),
        "with a malformed policy",
    )
    .await?;
    let missing = refused_start(
        args_with_policy(&args, Some(dir.join("missing.toml"))),
        "with a missing policy",
    )
    .await?;

    assert!(
        err.contains("tokens[0].token") && err.contains("16"),
        "{err}"
    );
    assert!(!err.contains("short-secret"), "never echo a token: {err}");
    assert!(missing.contains("missing.toml"), "{missing}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_unauthenticated_serve_answers_on_every_interface() -> Result {
    let mut open = public_args("open")?;
    open.allow_unauthenticated = true;

    let server = Server::start_with(open).await?;

    assert!(server.running.grpc_addr.ip().is_unspecified());
    let mut reg = Registry::connect(format!(
        "http://127.0.0.1:{}",
        server.running.grpc_addr.port()
    ))
    .await?;
    assert!(
        reg.list_commands(pb::ListCommandsRequest::default())
            .await?
            .into_inner()
            .commands
            .is_empty()
    );
    server.shutdown().await
}
