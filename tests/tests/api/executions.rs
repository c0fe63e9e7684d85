//! Executions: start, get, and client tokens.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, client, template_command, test_args, thing};
use pb::ExecutionStatus as St;
use tonic::Code;

use crate::{ARN_PREFIX, Result, given, level_parameter};

fn get(id: &str, target: Option<pb::Target>) -> pb::GetCommandExecutionRequest {
    pb::GetCommandExecutionRequest {
        execution_id: id.into(),
        target,
        include_result: false,
    }
}

// ---- start and get --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_then_get_returns_every_field() -> Result {
    let (server, mut reg, mut disp) = given("start-get", &["reboot"]).await?;
    let before = now_ms();
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 0,
        client_token: "tok-1".into(),
        ..start_request("reboot", thing("lab-1:a"))
    };

    let id = start_execution(&mut disp, req).await?;
    // Read-your-writes: Get right after Start.
    let e = get_execution(&mut reg, &id).await?;
    let after = now_ms();

    assert!(
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{id}"
    );
    assert_eq!(
        (e.execution_id.as_str(), e.command_id.as_str()),
        (id.as_str(), "reboot")
    );
    assert_eq!(e.command_arn, format!("{ARN_PREFIX}command/reboot"));
    assert_eq!(e.target, Some(thing("lab-1:a")));
    assert_eq!(e.target_arn, format!("{ARN_PREFIX}thing/lab-1:a"));
    assert_eq!(
        (e.status(), e.status_reason.clone(), e.terminal),
        (St::Created, None, false)
    );
    assert_eq!(e.execution_timeout_seconds, 10, "0 means the default, 10 s");
    assert_eq!(e.client_token, "tok-1");
    assert!(e.parameters.is_empty() && e.result.is_empty());
    let created = ms(&e.created_at);
    assert!((before..=after).contains(&created));
    assert_eq!(
        (e.started_at, e.last_updated_at),
        (e.created_at, e.created_at)
    );
    assert_eq!(e.completed_at, None);
    assert_eq!(
        ms(&e.time_to_live),
        created + 183 * 24 * 3600 * 1000,
        "kept six months"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_targets_and_43200_s_is_the_longest_timeout() -> Result {
    let (server, mut reg, mut disp) = given("start-client", &["reboot"]).await?;
    let thing_execution = start(&mut disp, "reboot", thing("lab-1:a")).await?;
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 43_200,
        ..start_request("reboot", client("dev.1@x"))
    };

    let id2 = start_execution(&mut disp, req).await?;

    let e2 = get_execution(&mut reg, &id2).await?;
    assert_eq!(
        (e2.target, e2.target_arn.as_str()),
        (
            Some(client("dev.1@x")),
            format!("{ARN_PREFIX}client/dev.1@x").as_str()
        )
    );
    assert_eq!(e2.execution_timeout_seconds, 43_200);
    assert_ne!(thing_execution, id2);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_execution_checks_the_optional_target() -> Result {
    let (server, mut reg, mut disp) = given("get-target", &["reboot"]).await?;
    let id = start(&mut disp, "reboot", thing("lab-1:a")).await?;

    assert_eq!(
        reg.get_command_execution(get(&id, Some(thing("lab-1:a"))))
            .await?
            .into_inner()
            .execution_id,
        id
    );
    expect_code(
        reg.get_command_execution(get(&id, Some(thing("lab-2"))))
            .await,
        Code::NotFound,
        &[&id, "thing/lab-2"],
    );
    expect_code(
        reg.get_command_execution(get(&id, Some(client("lab-1:a"))))
            .await,
        Code::NotFound,
        &[&id],
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_execution_of_an_unknown_or_malformed_request_is_refused() -> Result {
    let (server, mut reg, mut disp) = given("get-errors", &["reboot"]).await?;
    let id = start(&mut disp, "reboot", thing("lab-1:a")).await?;
    expect_code(
        reg.get_command_execution(get("0190aaaa-0000-7000-8000-000000000000", None))
            .await,
        Code::NotFound,
        &["0190aaaa-0000-7000-8000-000000000000"],
    );
    expect_invalid(
        reg.get_command_execution(get("a/b", None)).await,
        "execution_id",
        &["[a-zA-Z0-9_-]+"],
    );
    expect_invalid(
        reg.get_command_execution(get("", None)).await,
        "execution_id",
        &["empty"],
    );
    expect_invalid(
        reg.get_command_execution(get(&id, Some(target_of_kind(0, "x"))))
            .await,
        "target.kind",
        &["THING, CLIENT"],
    );
    expect_invalid(
        reg.get_command_execution(get(&id, Some(target_of_kind(5, "x"))))
            .await,
        "target.kind",
        &["5"],
    );
    expect_invalid(
        reg.get_command_execution(get(&id, Some(thing("a/b"))))
            .await,
        "target.id",
        &["thing name"],
    );
    server.shutdown().await
}

// ---- client tokens --------------------------------------------------------------------------

/// Creates the `dim` template command and returns a start of it on `thing/t1` carrying
/// `token`.
async fn create_dim_and_tokened_start(
    server: &Server,
    token: &str,
) -> anyhow::Result<pb::StartCommandExecutionRequest> {
    server
        .registry()
        .await?
        .create_command(template_command(
            "dim",
            &format!("{{\"l\": \"{}\"}}", placeholder("level")),
            pb::OutputFormat::Json,
            vec![level_parameter()],
        ))
        .await?;
    Ok(pb::StartCommandExecutionRequest {
        client_token: token.into(),
        parameters: HashMap::from([("level".into(), pv_i(10))]),
        ..start_request("dim", thing("t1"))
    })
}

/// The ids of the executions on t1, in listing order.
async fn executions_on_t1(reg: &mut Registry) -> anyhow::Result<Vec<String>> {
    let on_t1 = pb::ListCommandExecutionsRequest {
        target: Some(thing("t1")),
        ..Default::default()
    };
    Ok(execution_ids(&list_all_executions(reg, on_t1).await?.0))
}

/// Asserts that a start was refused because `token` already started `first` otherwise.
#[track_caller]
fn expect_token_conflict(
    start: std::result::Result<tonic::Response<pb::StartCommandExecutionResponse>, tonic::Status>,
    token: &str,
    first: &str,
) {
    let s = expect_code(start, Code::AlreadyExists, &["client_token", token, first]);
    assert_eq!(error_reason(&s).as_deref(), Some("CONFLICT"));
}

/// A server, its clients, and one tokened start of `dim` already made (its id).
async fn given_a_tokened_start(
    name: &str,
) -> anyhow::Result<(
    Server,
    Registry,
    Dispatcher,
    pb::StartCommandExecutionRequest,
    String,
)> {
    let (server, reg, mut disp) = given(name, &[]).await?;
    let req = create_dim_and_tokened_start(&server, "retry-me").await?;
    let first = start_execution(&mut disp, req.clone()).await?;
    Ok((server, reg, disp, req, first))
}

/// Client tokens leave the shard owners' memory (here as soon as their start is projected;
/// the restart's rebuild drops them): a retry is then answered from the read model — the
/// same execution — and a different request with the token still conflicts.
#[tokio::test]
async fn client_tokens_stay_idempotent_after_they_leave_the_owners_memory() -> Result {
    let mut args = test_args("token-memory");
    args.client_token_memory_secs = 0;
    let server = Server::start_with(args.clone()).await?;
    let req = create_dim_and_tokened_start(&server, "retry-later").await?;
    let first = server
        .dispatcher()
        .await?
        .start_command_execution(req.clone())
        .await?
        .into_inner()
        .execution_id;
    let data_dir = server.stop().await?;
    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;

    let again = start_execution(&mut disp, req.clone()).await?;
    let conflict = disp
        .start_command_execution(pb::StartCommandExecutionRequest {
            parameters: HashMap::from([("level".into(), pv_i(11))]),
            ..req.clone()
        })
        .await;

    assert_eq!(first, again, "same token, same request: the same execution");
    expect_token_conflict(conflict, "retry-later", &first);
    assert_eq!(executions_on_t1(&mut reg).await?, vec![first]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_token_returns_the_same_execution() -> Result {
    let (server, mut reg, mut disp, req, first) = given_a_tokened_start("token-retry").await?;

    let again = start_execution(&mut disp, req.clone()).await?;

    assert_eq!(first, again, "same token, same request: same execution");
    assert_eq!(executions_on_t1(&mut reg).await?, vec![first]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_token_on_a_different_request_is_already_exists() -> Result {
    let (server, mut reg, mut disp, req, first) = given_a_tokened_start("token-conflict").await?;
    let different = [
        pb::StartCommandExecutionRequest {
            parameters: HashMap::from([("level".into(), pv_i(11))]),
            ..req.clone()
        },
        pb::StartCommandExecutionRequest {
            parameters: HashMap::new(),
            ..req.clone()
        },
        pb::StartCommandExecutionRequest {
            execution_timeout_seconds: 60,
            ..req.clone()
        },
    ];
    for d in different {
        expect_token_conflict(disp.start_command_execution(d).await, "retry-me", &first);
    }
    // Nothing started.
    assert_eq!(executions_on_t1(&mut reg).await?, vec![first]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_scoped_to_its_target_and_no_token_starts_anew() -> Result {
    let (server, mut reg, mut disp, req, first) = given_a_tokened_start("token-scope").await?;
    let untokened = pb::StartCommandExecutionRequest {
        client_token: String::new(),
        ..req.clone()
    };

    let other = start_execution(
        &mut disp,
        pb::StartCommandExecutionRequest {
            target: Some(thing("t2")),
            ..req
        },
    )
    .await?;
    let a = start_execution(&mut disp, untokened.clone()).await?;
    let b = start_execution(&mut disp, untokened).await?;

    assert_ne!(other, first);
    assert_ne!(a, b);
    assert_eq!(all_execution_ids(&mut reg).await?.len(), 4);
    server.shutdown().await
}
