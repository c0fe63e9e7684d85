//! StartCommandExecution is idempotent on client_token: the same request returns the same
//! execution and delivers once; a different request with the token is ALREADY_EXISTS; a
//! token is scoped to its target.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::parameter_value::Value as V;
use fleetcmd_e2e::device::Version;
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{WAIT, parameter, template_command, thing, value};

use crate::Result;

/// `open`, a template of one INTEGER `pct`, and a device `valve-2`.
async fn given_a_valve(name: &str) -> anyhow::Result<Scene> {
    let template = r#"{"open": "${aws:iot:commandexecution::parameter:pct}"}"#;
    let params = vec![parameter("pct", pb::ParameterType::Integer, None)];
    Scene::given(
        name,
        thing("valve-2"),
        Version::V5,
        template_command("open", template, pb::OutputFormat::Json, params),
    )
    .await
}

/// A start of `open` on `valve-2` at `pct` with `token`.
fn request(pct: i32, token: &str) -> pb::StartCommandExecutionRequest {
    let mut r = start_request(thing("valve-2"), "open", 30);
    r.parameters = HashMap::from([("pct".to_string(), value(V::I(pct)))]);
    r.client_token = token.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_returns_the_same_execution_and_delivers_once() -> Result {
    let mut scene = given_a_valve("idempotent").await?;
    let Scene {
        env, topics, dev, ..
    } = &mut scene;

    let first = env.start_execution(request(40, "retry-1")).await?;
    let again = env.start_execution(request(40, "retry-1")).await?;

    assert_eq!(first, again, "a retry returns the same execution");
    // One delivery: the next request after the first is a new execution's.
    let req = dev.expect_request(topics, WAIT).await?;
    assert_eq!(
        (req.execution_id(), req.payload.as_ref()),
        (Some(first.as_str()), &br#"{"open":40}"#[..])
    );
    let other = env.start_execution(request(41, "retry-2")).await?;
    assert_ne!(other, first);
    let req = dev.expect_request(topics, WAIT).await?;
    assert_eq!(
        req.execution_id(),
        Some(other.as_str()),
        "the retried start delivered nothing more"
    );
    assert_eq!(req.payload.as_ref(), br#"{"open":41}"#);
    let e = env.get(&first, false).await?;
    assert_eq!(e.client_token, "retry-1");
    assert_eq!(e.parameters.get("pct"), Some(&value(V::I(40))));
    let list = env
        .registry
        .list_command_executions(pb::ListCommandExecutionsRequest {
            target: Some(thing("valve-2")),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.command_executions.len(), 2, "{list:?}");
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_request_with_the_token_is_already_exists() -> Result {
    let Scene { mut env, .. } = given_a_valve("idempotent-conflict").await?;
    let first = env.start_execution(request(40, "retry-1")).await?;

    let conflict = env
        .dispatcher
        .start_command_execution(request(41, "retry-1"))
        .await
        .expect_err("same token, different parameters");

    assert_eq!(conflict.code(), tonic::Code::AlreadyExists, "{conflict:?}");
    assert!(
        conflict.message().contains("retry-1") && conflict.message().contains(&first),
        "the error names the token and the execution: {}",
        conflict.message()
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_scoped_to_its_target() -> Result {
    let Scene { mut env, .. } = given_a_valve("idempotent-scope").await?;
    let first = env.start_execution(request(40, "retry-1")).await?;
    let mut elsewhere = request(40, "retry-1");
    elsewhere.target = Some(thing("valve-3"));

    let third = env.start_execution(elsewhere).await?;

    assert_ne!(third, first);
    env.stop().await
}
