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
        mqtt_tls_addr: "127.0.0.1:0".parse().unwrap(),
        device_auth: None,
        mqtt_event_readers: Vec::new(),
        data_dir,
        policy: None,
        allow_unauthenticated: false,
        grpc_tls: false,
        allow_plaintext_grpc: false,
        audit_log: None,
        topic_root: "$aws".into(),
        shards: 2,
        deletion_wait_secs: 43_200,
        client_token_memory_secs: 900,
        retention_secs: 183 * 24 * 3600,
        max_in_flight: None,
        log_json: false,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        otlp_endpoint: None,
        tls_dir: None,
        tls_sans: Vec::new(),
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
/// `google.rpc.BadRequest` violation names `field`; returns the status. `what` names the
/// case in every failure.
#[track_caller]
fn invalid(
    what: &str,
    result: Result<tonic::Response<String>, Status>,
    field: &str,
    needles: &[&str],
) -> Status {
    let status = result.expect_err(&format!("{what}: the call must fail"));
    let message = status.message();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{what}: message {message}"
    );
    for n in needles {
        assert!(message.contains(n), "{what}: {message:?} lacks {n:?}");
    }
    let details = status.get_error_details();
    let violation = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .unwrap_or_else(|| panic!("{what}: no field violation in {status:?}"));
    assert_eq!(violation.field, field, "{what}: {message}");
    status
}

/// Asserts that a status is small enough for any gRPC stack's metadata limits.
#[track_caller]
fn bounded(what: &str, status: &Status) {
    assert!(
        status.message().len() <= STATUS_MESSAGE_MAX_BYTES,
        "{what}: a {}-byte message",
        status.message().len()
    );
    assert!(
        status.details().len() <= STATUS_DETAILS_MAX_BYTES,
        "{what}: {} bytes of details",
        status.details().len()
    );
}

/// A request to one of the calls under test, so that the cases can be listed as data.
enum Call {
    ListCommands(pb::ListCommandsRequest),
    ListExecutions(pb::ListCommandExecutionsRequest),
    Create(pb::CreateCommandRequest),
    Start(pb::StartCommandExecutionRequest),
}

/// The answer with its message in Debug form: the checks only look at refusals, and a call
/// that wrongly succeeds shows what it answered.
fn shown<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
) -> Result<tonic::Response<String>, Status> {
    result.map(|response| response.map(|message| format!("{message:?}")))
}

impl Api {
    async fn call(&mut self, call: Call) -> Result<tonic::Response<String>, Status> {
        match call {
            Call::ListCommands(r) => shown(self.registry.list_commands(r).await),
            Call::ListExecutions(r) => shown(self.registry.list_command_executions(r).await),
            Call::Create(r) => shown(self.registry.create_command(r).await),
            Call::Start(r) => shown(self.dispatcher.start_command_execution(r).await),
        }
    }
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

fn list_commands_in(namespace: &str) -> Call {
    let namespace = namespace.into();
    Call::ListCommands(pb::ListCommandsRequest {
        namespace,
        ..Default::default()
    })
}

fn list_executions_in(namespace: &str) -> Call {
    let namespace = namespace.into();
    Call::ListExecutions(pb::ListCommandExecutionsRequest {
        namespace,
        ..Default::default()
    })
}

/// A valid template command `c`, but in `namespace`.
fn create_in(namespace: &str) -> Call {
    let mut request = template_command("c", vec![double_parameter("v")]);
    request.namespace = namespace.into();
    Call::Create(request)
}

/// A valid static JSON command `c`, changed by `change`.
fn create_static(change: impl FnOnce(&mut pb::CreateCommandRequest)) -> Call {
    let mut request = pb::CreateCommandRequest {
        command_id: "c".into(),
        payload: Some(pb::Payload {
            content: b"{}".to_vec(),
            content_type: "application/json".into(),
        }),
        ..Default::default()
    };
    change(&mut request);
    Call::Create(request)
}

/// A start of the template command `set-v` on `lamp-1`, changed by `change`.
fn start_set_v(change: impl FnOnce(&mut pb::StartCommandExecutionRequest)) -> Call {
    let mut request = pb::StartCommandExecutionRequest {
        command_id: "set-v".into(),
        target: Some(thing("lamp-1")),
        ..Default::default()
    };
    change(&mut request);
    Call::Start(request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_refuses_other_namespaces_as_the_other_calls_do() {
    let mut api = Api::start("namespace").await;
    for namespace in ["AWS-IoT-FleetWise", "aws-iot", "x"] {
        let list = api.call(list_commands_in(namespace)).await;
        let s = invalid(namespace, list, "namespace", &["only AWS-IoT", namespace]);
        let executions = api.call(list_executions_in(namespace)).await;
        let e = invalid(namespace, executions, "namespace", &[namespace]);
        assert_eq!(s.message(), e.message(), "one rule, one message");
        let create = api.call(create_in(namespace)).await;
        invalid(namespace, create, "namespace", &[namespace]);
    }
    // Empty and AWS-IoT are the one namespace.
    for namespace in ["", "AWS-IoT"] {
        api.call(list_commands_in(namespace))
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
        for field in ["default_value", "value"] {
            let mut p = double_parameter("v");
            let value = match field {
                "value" => &mut p.value,
                _ => &mut p.default_value,
            };
            *value = Some(double(d));
            let create = api
                .call(Call::Create(template_command(&format!("d{i}"), vec![p])))
                .await;
            let what = format!("{field} {d}");
            let field = format!("mandatory_parameters[0].{field}");
            invalid(&what, create, &field, &["must be finite"]);
        }
    }

    // StartCommandExecution: a parameter value, for an existing command and for any other.
    api.call(Call::Create(template_command(
        "set-v",
        vec![double_parameter("v")],
    )))
    .await
    .expect("a valid template command");
    for command_id in ["set-v", "no-such-command"] {
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let start = api
                .call(start_set_v(|r| {
                    r.command_id = command_id.into();
                    r.parameters = HashMap::from([("v".to_string(), double(d))]);
                }))
                .await;
            let what = format!("{command_id} with {d}");
            invalid(&what, start, "parameters[\"v\"]", &["must be finite"]);
        }
    }
    // A finite value still starts.
    api.call(start_set_v(|r| {
        r.parameters = HashMap::from([("v".to_string(), double(1e300))]);
    }))
    .await
    .expect("a finite DOUBLE starts");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_about_huge_fields_are_invalid_argument_with_bounded_messages() {
    let mut api = Api::start("bounded").await;
    api.call(Call::Create(template_command(
        "set-v",
        vec![double_parameter("v")],
    )))
    .await
    .expect("a valid template command");
    for len in [5_000, 100_000] {
        let huge = "n".repeat(len);
        let length = format!("({len} characters)");
        let truncated_key = format!("parameters[\"{}…\"]", "n".repeat(64));
        let huge_ul = pb::ParameterValue {
            value: Some(pb::parameter_value::Value::Ul("9".repeat(len))),
        };
        // (what, the call, the field named, what the message says)
        let cases: [(&str, Call, &str, &[&str]); 9] = [
            (
                "a namespace in ListCommandExecutions",
                list_executions_in(&huge),
                "namespace",
                &["only AWS-IoT", &length],
            ),
            (
                "a namespace in CreateCommand",
                create_in(&huge),
                "namespace",
                &[&length],
            ),
            (
                "a namespace in ListCommands",
                list_commands_in(&huge),
                "namespace",
                &[&length],
            ),
            (
                "a content type",
                create_static(|c| c.payload.as_mut().unwrap().content_type = huge.clone()),
                "payload.content_type",
                &[&length],
            ),
            (
                "a tag key",
                create_static(|c| c.tags = HashMap::from([(huge.clone(), "v".to_string())])),
                "tags",
                &[&length],
            ),
            (
                "an unknown parameter name",
                start_set_v(|r| r.parameters = HashMap::from([(huge.clone(), double(1.0))])),
                &truncated_key,
                &["declares no parameter", &length],
            ),
            (
                "a UL string",
                start_set_v(|r| r.parameters = HashMap::from([("v".to_string(), huge_ul)])),
                "parameters[\"v\"].ul",
                &[&length],
            ),
            // A client token and a target id are refused without being echoed.
            (
                "a target id",
                start_set_v(|r| r.target = Some(thing(&huge))),
                "target.id",
                &[],
            ),
            (
                "a client token",
                start_set_v(|r| r.client_token = huge.clone()),
                "client_token",
                &[],
            ),
        ];
        for (what, call, field, needles) in cases {
            let what = format!("{what} of {len} characters");
            let s = invalid(&what, api.call(call).await, field, needles);
            bounded(&what, &s);
        }
    }
    api.stop().await;
}
