//! In-process gRPC round trips against `fleetcmd serve` (ephemeral ports, a fresh data
//! directory) for the API's input hardening: every call refuses a namespace other than
//! `AWS-IoT`, NaN and infinite DOUBLE values are refused up front naming the value, and an
//! error about a huge request field comes back as INVALID_ARGUMENT with a bounded message
//! rather than a transport failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetcmd_contracts::convert::{STATUS_DETAILS_MAX_BYTES, STATUS_MESSAGE_MAX_BYTES};
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use fleetcmd_standalone::{Running, ServeArgs, start};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Serve arguments for a test: ephemeral loopback ports and a fresh data directory.
fn args(name: &str) -> ServeArgs {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let data_dir: PathBuf = std::env::temp_dir().join(format!(
        "fleetcmd-standalone-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    ServeArgs {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        mqtt_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        policy: None,
        allow_unauthenticated: false,
        topic_root: "$aws".into(),
        shards: 2,
        deletion_wait_secs: 43_200,
        client_token_memory_secs: 900,
        retention_secs: 183 * 24 * 3600,
        log_json: false,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        otlp_endpoint: None,
    }
}

struct Api {
    running: Running,
    data_dir: PathBuf,
    registry: CommandRegistryClient<Channel>,
    dispatcher: CommandDispatcherClient<Channel>,
}

impl Api {
    async fn start(name: &str) -> Self {
        let args = args(name);
        let data_dir = args.data_dir.clone();
        let running = tokio::time::timeout(Duration::from_secs(30), start(args))
            .await
            .expect("fleetcmd serve starts within 30 s")
            .expect("fleetcmd serve starts");
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connecting to the gRPC API");
        Self {
            running,
            data_dir,
            registry: CommandRegistryClient::new(channel.clone()),
            dispatcher: CommandDispatcherClient::new(channel),
        }
    }

    async fn stop(self) {
        drop((self.registry, self.dispatcher));
        tokio::time::timeout(Duration::from_secs(30), self.running.stop())
            .await
            .expect("fleetcmd serve stops within 30 s")
            .expect("fleetcmd serve stops cleanly");
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Asserts INVALID_ARGUMENT whose message contains every needle and whose (first)
/// `google.rpc.BadRequest` violation names `field`; returns the status.
#[track_caller]
fn invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    field: &str,
    needles: &[&str],
) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "message: {}",
        status.message()
    );
    for n in needles {
        assert!(
            status.message().contains(n),
            "{:?} lacks {n:?}",
            status.message()
        );
    }
    let details = status.get_error_details();
    let violation = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .unwrap_or_else(|| panic!("no field violation in {status:?}"));
    assert_eq!(violation.field, field, "{}", status.message());
    status
}

/// Asserts that a status is small enough for any gRPC stack's metadata limits.
#[track_caller]
fn bounded(status: &Status) {
    assert!(
        status.message().len() <= STATUS_MESSAGE_MAX_BYTES,
        "a {}-byte message",
        status.message().len()
    );
    assert!(
        status.details().len() <= STATUS_DETAILS_MAX_BYTES,
        "{} bytes of details",
        status.details().len()
    );
}

fn double(d: f64) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::D(d)),
    }
}

fn double_parameter(name: &str) -> pb::CommandParameter {
    pb::CommandParameter {
        name: name.into(),
        r#type: pb::ParameterType::Double as i32,
        ..Default::default()
    }
}

fn template_command(id: &str, parameters: Vec<pb::CommandParameter>) -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        command_id: id.into(),
        payload_template: r#"{"v": "${aws:iot:commandexecution::parameter:v}"}"#.into(),
        mandatory_parameters: parameters,
        ..Default::default()
    }
}

fn thing(name: &str) -> pb::Target {
    pb::Target {
        kind: pb::TargetKind::Thing as i32,
        id: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_refuses_other_namespaces_as_the_other_calls_do() {
    let mut api = Api::start("namespace").await;
    for namespace in ["AWS-IoT-FleetWise", "aws-iot", "x"] {
        let list = api
            .registry
            .list_commands(pb::ListCommandsRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await;
        let s = invalid(list, "namespace", &["only AWS-IoT", namespace]);
        let executions = api
            .registry
            .list_command_executions(pb::ListCommandExecutionsRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await;
        let e = invalid(executions, "namespace", &[namespace]);
        assert_eq!(s.message(), e.message(), "one rule, one message");
        let create = api
            .registry
            .create_command(pb::CreateCommandRequest {
                namespace: namespace.into(),
                ..template_command("c", vec![double_parameter("v")])
            })
            .await;
        invalid(create, "namespace", &[namespace]);
    }
    // Empty and AWS-IoT are the one namespace.
    for namespace in ["", "AWS-IoT"] {
        api.registry
            .list_commands(pb::ListCommandsRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{namespace:?}: {e}"));
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_doubles_are_refused_naming_the_value() {
    let mut api = Api::start("doubles").await;
    for (i, d) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        // CreateCommand: default and fixed values.
        let mut p = double_parameter("v");
        p.default_value = Some(double(d));
        let create = api
            .registry
            .create_command(template_command(&format!("d{i}"), vec![p]))
            .await;
        invalid(
            create,
            "mandatory_parameters[0].default_value",
            &["must be finite"],
        );
        let mut p = double_parameter("v");
        p.value = Some(double(d));
        let create = api
            .registry
            .create_command(template_command(&format!("d{i}"), vec![p]))
            .await;
        invalid(create, "mandatory_parameters[0].value", &["must be finite"]);
    }

    // StartCommandExecution: a parameter value, for an existing command and for any other.
    api.registry
        .create_command(template_command("set-v", vec![double_parameter("v")]))
        .await
        .expect("a valid template command");
    for command_id in ["set-v", "no-such-command"] {
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let start = api
                .dispatcher
                .start_command_execution(pb::StartCommandExecutionRequest {
                    command_id: command_id.into(),
                    target: Some(thing("lamp-1")),
                    parameters: HashMap::from([("v".to_string(), double(d))]),
                    ..Default::default()
                })
                .await;
            invalid(start, "parameters[\"v\"]", &["must be finite"]);
        }
    }
    // A finite value still starts.
    api.dispatcher
        .start_command_execution(pb::StartCommandExecutionRequest {
            command_id: "set-v".into(),
            target: Some(thing("lamp-1")),
            parameters: HashMap::from([("v".to_string(), double(1e300))]),
            ..Default::default()
        })
        .await
        .expect("a finite DOUBLE starts");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_about_huge_fields_are_invalid_argument_with_bounded_messages() {
    let mut api = Api::start("bounded").await;
    api.registry
        .create_command(template_command("set-v", vec![double_parameter("v")]))
        .await
        .expect("a valid template command");
    for len in [5_000, 100_000] {
        let huge = "n".repeat(len);
        let length = format!("({len} characters)");

        let s = invalid(
            api.registry
                .list_command_executions(pb::ListCommandExecutionsRequest {
                    namespace: huge.clone(),
                    ..Default::default()
                })
                .await,
            "namespace",
            &["only AWS-IoT", &length],
        );
        bounded(&s);
        let s = invalid(
            api.registry
                .create_command(pb::CreateCommandRequest {
                    namespace: huge.clone(),
                    ..template_command("c", vec![double_parameter("v")])
                })
                .await,
            "namespace",
            &[&length],
        );
        bounded(&s);
        let s = invalid(
            api.registry
                .list_commands(pb::ListCommandsRequest {
                    namespace: huge.clone(),
                    ..Default::default()
                })
                .await,
            "namespace",
            &[&length],
        );
        bounded(&s);

        // A content type, a tag key, an unknown parameter name and a UL string.
        let s = invalid(
            api.registry
                .create_command(pb::CreateCommandRequest {
                    command_id: "c".into(),
                    payload: Some(pb::Payload {
                        content: b"{}".to_vec(),
                        content_type: huge.clone(),
                    }),
                    ..Default::default()
                })
                .await,
            "payload.content_type",
            &[&length],
        );
        bounded(&s);
        let s = invalid(
            api.registry
                .create_command(pb::CreateCommandRequest {
                    command_id: "c".into(),
                    payload: Some(pb::Payload {
                        content: b"{}".to_vec(),
                        content_type: "application/json".into(),
                    }),
                    tags: HashMap::from([(huge.clone(), "v".to_string())]),
                    ..Default::default()
                })
                .await,
            "tags",
            &[&length],
        );
        bounded(&s);
        let truncated_key = format!("parameters[\"{}…\"]", "n".repeat(64));
        let s = invalid(
            api.dispatcher
                .start_command_execution(pb::StartCommandExecutionRequest {
                    command_id: "set-v".into(),
                    target: Some(thing("lamp-1")),
                    parameters: HashMap::from([(huge.clone(), double(1.0))]),
                    ..Default::default()
                })
                .await,
            &truncated_key,
            &["declares no parameter", &length],
        );
        bounded(&s);
        let s = invalid(
            api.dispatcher
                .start_command_execution(pb::StartCommandExecutionRequest {
                    command_id: "set-v".into(),
                    target: Some(thing("lamp-1")),
                    parameters: HashMap::from([(
                        "v".to_string(),
                        pb::ParameterValue {
                            value: Some(pb::parameter_value::Value::Ul("9".repeat(len))),
                        },
                    )]),
                    ..Default::default()
                })
                .await,
            "parameters[\"v\"].ul",
            &[&length],
        );
        bounded(&s);
        // A client token and a target id are refused without being echoed.
        let s = invalid(
            api.dispatcher
                .start_command_execution(pb::StartCommandExecutionRequest {
                    command_id: "set-v".into(),
                    target: Some(thing(&huge)),
                    ..Default::default()
                })
                .await,
            "target.id",
            &[],
        );
        bounded(&s);
        let s = invalid(
            api.dispatcher
                .start_command_execution(pb::StartCommandExecutionRequest {
                    command_id: "set-v".into(),
                    target: Some(thing("lamp-1")),
                    client_token: huge.clone(),
                    ..Default::default()
                })
                .await,
            "client_token",
            &[],
        );
        bounded(&s);
    }
    api.stop().await;
}
