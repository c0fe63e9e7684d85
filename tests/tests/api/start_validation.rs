//! Executions: every rule of StartCommandExecution, refused beyond it and accepted at it.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, client, template_command, thing};
use pb::ParameterType as T;
use tonic::Code;

use crate::{Result, given, level_parameter};

/// `static` (a static command) and `dim`, a template of a required `level` (0..=100, no
/// default), a `mode` (eco or boost, default eco) and an UNSIGNEDLONG `n` (default 1).
async fn given_static_and_dim(name: &str) -> anyhow::Result<(Server, Registry, Dispatcher)> {
    let (server, mut reg, disp) = given(name, &["static"]).await?;
    let template = format!(
        "{{\"level\": \"{}\", \"mode\": \"{}\", \"n\": \"{}\"}}",
        placeholder("level"),
        placeholder("mode"),
        placeholder("n")
    );
    let params = vec![
        pb::CommandParameter {
            default_value: None,
            ..level_parameter()
        },
        pb::CommandParameter {
            default_value: Some(pv_s("eco")),
            value_conditions: vec![condition(
                pb::ComparisonOperator::InSet,
                op_strings(&["eco", "boost"]),
            )],
            ..param("mode", T::String)
        },
        pb::CommandParameter {
            default_value: Some(pv_ul("1")),
            ..param("n", T::Unsignedlong)
        },
    ];
    reg.create_command(template_command(
        "dim",
        &template,
        pb::OutputFormat::Json,
        params,
    ))
    .await?;
    Ok((server, reg, disp))
}

/// A valid start of `dim` on `thing/t1` with `level` 50.
fn base() -> pb::StartCommandExecutionRequest {
    pb::StartCommandExecutionRequest {
        parameters: HashMap::from([("level".into(), pv_i(50))]),
        ..start_request("dim", thing("t1"))
    }
}

fn with_params(p: Vec<(&str, pb::ParameterValue)>) -> pb::StartCommandExecutionRequest {
    pb::StartCommandExecutionRequest {
        parameters: p.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..base()
    }
}

/// Every rule, one request just beyond it.
fn beyond_every_rule() -> Vec<Refused<pb::StartCommandExecutionRequest>> {
    vec![
        (
            "bad command id",
            pb::StartCommandExecutionRequest {
                command_id: "a b".into(),
                ..base()
            },
            "command_id",
            vec!["[a-zA-Z0-9_-]+"],
        ),
        (
            "empty command id",
            pb::StartCommandExecutionRequest {
                command_id: String::new(),
                ..base()
            },
            "command_id",
            vec!["empty"],
        ),
        (
            "no target",
            pb::StartCommandExecutionRequest {
                target: None,
                ..base()
            },
            "target",
            vec!["required"],
        ),
        (
            "unspecified target kind",
            pb::StartCommandExecutionRequest {
                target: Some(target_of_kind(0, "t1")),
                ..base()
            },
            "target.kind",
            vec!["THING, CLIENT"],
        ),
        (
            "unknown target kind",
            pb::StartCommandExecutionRequest {
                target: Some(target_of_kind(3, "t1")),
                ..base()
            },
            "target.kind",
            vec!["3"],
        ),
        (
            "empty target id",
            pb::StartCommandExecutionRequest {
                target: Some(thing("")),
                ..base()
            },
            "target.id",
            vec!["empty"],
        ),
        (
            "thing name with a slash",
            pb::StartCommandExecutionRequest {
                target: Some(thing("a/b")),
                ..base()
            },
            "target.id",
            vec!["[a-zA-Z0-9:_-]+"],
        ),
        (
            "client id with a wildcard",
            pb::StartCommandExecutionRequest {
                target: Some(client("dev+1")),
                ..base()
            },
            "target.id",
            vec!["'+'"],
        ),
        (
            "target id of 129",
            pb::StartCommandExecutionRequest {
                target: Some(thing(&"t".repeat(129))),
                ..base()
            },
            "target.id",
            vec!["128"],
        ),
        (
            "timeout of 43,201",
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 43_201,
                ..base()
            },
            "execution_timeout_seconds",
            vec!["43200", "43201"],
        ),
        (
            "negative timeout",
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: -1,
                ..base()
            },
            "execution_timeout_seconds",
            vec!["negative"],
        ),
        (
            "client token of 65",
            pb::StartCommandExecutionRequest {
                client_token: "k".repeat(65),
                ..base()
            },
            "client_token",
            vec!["1–64"],
        ),
        (
            "client token with a space",
            pb::StartCommandExecutionRequest {
                client_token: "a b".into(),
                ..base()
            },
            "client_token",
            vec!["printable ASCII"],
        ),
        (
            "client token not ASCII",
            pb::StartCommandExecutionRequest {
                client_token: "é".into(),
                ..base()
            },
            "client_token",
            vec!["printable ASCII"],
        ),
        (
            "unknown parameter",
            with_params(vec![("level", pv_i(1)), ("ghost", pv_i(1))]),
            "parameters[\"ghost\"]",
            vec!["declares no parameter", "ghost", "level"],
        ),
        (
            "parameter of the wrong type",
            with_params(vec![("level", pv_s("50"))]),
            "parameters[\"level\"]",
            vec!["INTEGER", "STRING"],
        ),
        (
            "value above IN_RANGE",
            with_params(vec![("level", pv_i(120))]),
            "parameters[\"level\"]",
            vec!["120", "IN_RANGE", "[0, 100]"],
        ),
        (
            "value below IN_RANGE",
            with_params(vec![("level", pv_i(-1))]),
            "parameters[\"level\"]",
            vec!["-1", "IN_RANGE"],
        ),
        (
            "value outside IN_SET",
            with_params(vec![("level", pv_i(1)), ("mode", pv_s("turbo"))]),
            "parameters[\"mode\"]",
            vec!["turbo", "IN_SET"],
        ),
        (
            "missing required parameter",
            with_params(vec![("mode", pv_s("eco"))]),
            "parameters[\"level\"]",
            vec!["required", "no default"],
        ),
        (
            "empty STRING value",
            with_params(vec![("level", pv_i(1)), ("mode", pv_s(""))]),
            "parameters[\"mode\"]",
            vec!["at least 1 character"],
        ),
        (
            "value with no member",
            with_params(vec![("level", pb::ParameterValue { value: None })]),
            "parameters[\"level\"]",
            vec!["exactly one of"],
        ),
        (
            "UL that is not digits",
            with_params(vec![("level", pv_i(1)), ("n", pv_ul("1e3"))]),
            "parameters[\"n\"].ul",
            vec!["digits"],
        ),
        (
            "parameters for a static command",
            pb::StartCommandExecutionRequest {
                command_id: "static".into(),
                ..with_params(vec![("level", pv_i(1))])
            },
            "parameters",
            vec!["static payload", "no parameters"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_every_bad_request_and_starts_nothing() -> Result {
    let (server, mut reg, mut disp) = given_static_and_dim("start-errors").await?;
    for (label, req, field, needles) in beyond_every_rule() {
        let s = expect_invalid(disp.start_command_execution(req).await, field, &needles);
        assert!(
            s.message().starts_with(&format!("invalid {field}: ")),
            "{label}: {}",
            s.message()
        );
    }
    expect_code(
        disp.start_command_execution(pb::StartCommandExecutionRequest {
            command_id: "ghost".into(),
            ..base()
        })
        .await,
        Code::NotFound,
        &["command ghost not found"],
    );
    assert_no_executions(&mut reg, "refused starts created executions").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_accepts_the_edges_of_the_same_rules() -> Result {
    let (server, mut reg, mut disp) = given_static_and_dim("start-edges").await?;
    for (req, timeout) in [
        (
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 0,
                ..with_params(vec![("level", pv_i(0))])
            },
            10,
        ),
        (
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 43_200,
                ..with_params(vec![("level", pv_i(100))])
            },
            43_200,
        ),
        (
            pb::StartCommandExecutionRequest {
                client_token: "~".repeat(64),
                ..with_params(vec![("level", pv_i(7)), ("mode", pv_s("boost"))])
            },
            LONG_TIMEOUT_SECS,
        ),
        (
            pb::StartCommandExecutionRequest {
                target: Some(thing(&"t".repeat(128))),
                ..base()
            },
            LONG_TIMEOUT_SECS,
        ),
        (
            pb::StartCommandExecutionRequest {
                command_id: "static".into(),
                parameters: HashMap::new(),
                ..base()
            },
            LONG_TIMEOUT_SECS,
        ),
    ] {
        let id = start_execution(&mut disp, req).await?;
        assert_eq!(
            get_execution(&mut reg, &id)
                .await?
                .execution_timeout_seconds,
            timeout
        );
    }
    assert_eq!(all_execution_ids(&mut reg).await?.len(), 5);
    server.shutdown().await
}
