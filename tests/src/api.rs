//! Helpers for the gRPC API tests (`tests/api.rs`): request builders, error assertions that
//! check the code, the message and the field named in the `google.rpc.BadRequest` details,
//! paging loops, Watch streams with a timeout guard, and a one-shot MQTT device that settles
//! an execution the way a real device does.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use prost_types::Timestamp;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use crate::Server;

pub type Registry = CommandRegistryClient<Channel>;
pub type Dispatcher = CommandDispatcherClient<Channel>;

/// How long any single wait on the server (a stream event, an MQTT reply) may take before the
/// test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// A long timeout for executions that must not time out while a test runs.
pub const LONG_TIMEOUT_SECS: i64 = 3_600;

/// A raw channel to the server (for the health and reflection clients).
pub async fn channel(server: &Server) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(server.grpc_endpoint())?
        .connect()
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Asserts that `result` failed with `code` and that its message contains every needle;
/// returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    needles: &[&str],
) -> Status {
    let status = match result {
        Ok(r) => panic!(
            "expected {code:?} containing {needles:?}, got success: {:?}",
            r.get_ref()
        ),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "unexpected code; message: {}",
        status.message()
    );
    for n in needles {
        assert!(
            status.message().contains(n),
            "message {:?} does not contain {n:?}",
            status.message()
        );
    }
    status
}

/// The field of the first `google.rpc.BadRequest` violation, if any.
pub fn violation_field(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
}

/// The `google.rpc.ErrorInfo` reason, if any.
pub fn error_reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// Asserts INVALID_ARGUMENT naming `field` (in the message and in the field violation) and
/// containing every needle.
#[track_caller]
pub fn expect_invalid<T: Debug>(
    result: Result<Response<T>, Status>,
    field: &str,
    needles: &[&str],
) -> Status {
    let status = expect_code(result, Code::InvalidArgument, needles);
    assert!(
        status.message().contains(field),
        "message {:?} does not name the field {field:?}",
        status.message()
    );
    assert_eq!(
        violation_field(&status).as_deref(),
        Some(field),
        "field violation of {:?}",
        status.message()
    );
    status
}

// ---------------------------------------------------------------------------------------------
// Request builders

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    r
}

/// A request carrying an arbitrary `authorization` value.
pub fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", value.parse().expect("ASCII value"));
    r
}

pub fn pv_s(s: &str) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::S(s.into())),
    }
}
pub fn pv_i(i: i32) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::I(i)),
    }
}
pub fn pv_l(l: i64) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::L(l)),
    }
}
pub fn pv_d(d: f64) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::D(d)),
    }
}
pub fn pv_b(b: bool) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::B(b)),
    }
}
pub fn pv_bin(b: &[u8]) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::Bin(b.to_vec())),
    }
}
pub fn pv_ul(ul: &str) -> pb::ParameterValue {
    pb::ParameterValue {
        value: Some(pb::parameter_value::Value::Ul(ul.into())),
    }
}

/// A parameter with no value, default or condition.
pub fn param(name: &str, ty: pb::ParameterType) -> pb::CommandParameter {
    pb::CommandParameter {
        name: name.into(),
        r#type: ty as i32,
        ..Default::default()
    }
}

pub fn condition(
    op: pb::ComparisonOperator,
    operand: pb::condition_operand::Operand,
) -> pb::ValueCondition {
    pb::ValueCondition {
        comparison_operator: op as i32,
        operand: Some(pb::ConditionOperand {
            operand: Some(operand),
        }),
    }
}

pub fn op_number(n: &str) -> pb::condition_operand::Operand {
    pb::condition_operand::Operand::Number(n.into())
}
pub fn op_numbers(ns: &[&str]) -> pb::condition_operand::Operand {
    pb::condition_operand::Operand::Numbers(pb::StringList {
        values: ns.iter().map(|s| s.to_string()).collect(),
    })
}
pub fn op_string(s: &str) -> pb::condition_operand::Operand {
    pb::condition_operand::Operand::String(s.into())
}
pub fn op_strings(ss: &[&str]) -> pb::condition_operand::Operand {
    pb::condition_operand::Operand::Strings(pb::StringList {
        values: ss.iter().map(|s| s.to_string()).collect(),
    })
}
pub fn op_range(min: &str, max: &str) -> pb::condition_operand::Operand {
    pb::condition_operand::Operand::NumberRange(pb::NumberRange {
        min: min.into(),
        max: max.into(),
    })
}

/// A placeholder for parameter `name`.
pub fn placeholder(name: &str) -> String {
    format!("${{aws:iot:commandexecution::parameter:{name}}}")
}

/// The execution-timeout placeholder.
pub const TIMEOUT_PLACEHOLDER: &str = "${aws:iot:commandexecution::executionTimeoutSec}";

/// A CreateCommandRequest with a payload template rendered to `format`.
pub fn template_command(
    id: &str,
    template: &str,
    parameters: Vec<pb::CommandParameter>,
    format: pb::OutputFormat,
) -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        command_id: id.into(),
        payload_template: template.into(),
        preprocessor: Some(pb::Preprocessor {
            aws_json_substitution: Some(pb::AwsJsonSubstitution {
                output_format: format as i32,
            }),
        }),
        mandatory_parameters: parameters,
        ..Default::default()
    }
}

/// A start request with a long timeout (executions must not time out under the test).
pub fn start_request(command_id: &str, target: pb::Target) -> pb::StartCommandExecutionRequest {
    pb::StartCommandExecutionRequest {
        target: Some(target),
        command_id: command_id.into(),
        execution_timeout_seconds: LONG_TIMEOUT_SECS,
        ..Default::default()
    }
}

/// Starts an execution and returns its id.
pub async fn start(
    dispatcher: &mut Dispatcher,
    command_id: &str,
    target: pb::Target,
) -> anyhow::Result<String> {
    Ok(dispatcher
        .start_command_execution(start_request(command_id, target))
        .await?
        .into_inner()
        .execution_id)
}

pub async fn get_execution(
    registry: &mut Registry,
    execution_id: &str,
) -> Result<pb::CommandExecution, Status> {
    registry
        .get_command_execution(pb::GetCommandExecutionRequest {
            execution_id: execution_id.into(),
            target: None,
            include_result: true,
        })
        .await
        .map(Response::into_inner)
}

pub async fn get_command(registry: &mut Registry, command_id: &str) -> Result<pb::Command, Status> {
    registry
        .get_command(pb::GetCommandRequest {
            command_id: command_id.into(),
        })
        .await
        .map(Response::into_inner)
}

/// Asserts that a command does not exist.
pub async fn assert_no_command(registry: &mut Registry, command_id: &str) {
    let r = registry
        .get_command(pb::GetCommandRequest {
            command_id: command_id.into(),
        })
        .await;
    expect_code(r, Code::NotFound, &[command_id]);
}

// ---------------------------------------------------------------------------------------------
// Time

pub fn ts_from_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn ms(ts: &Option<Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("timestamp is set");
    ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Paging

/// Every command matching `base`, following `next_token` until it is empty; asserts that no
/// page is larger than asked and that no command is visited twice.
pub async fn list_all_commands(
    registry: &mut Registry,
    base: pb::ListCommandsRequest,
) -> anyhow::Result<(Vec<pb::CommandSummary>, usize)> {
    let page_max = if base.max_results == 0 {
        25
    } else {
        base.max_results as usize
    };
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        anyhow::ensure!(pages <= 1_000, "paging does not end");
        let page = registry
            .list_commands(pb::ListCommandsRequest {
                next_token: token.clone(),
                ..base.clone()
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            page.commands.len() <= page_max,
            "page of {} > {page_max}",
            page.commands.len()
        );
        for c in page.commands {
            anyhow::ensure!(
                seen.insert(c.command_id.clone()),
                "command {} listed twice",
                c.command_id
            );
            all.push(c);
        }
        if page.next_token.is_empty() {
            return Ok((all, pages));
        }
        token = page.next_token;
    }
}

/// Every execution matching `base`, as [`list_all_commands`] does for commands.
pub async fn list_all_executions(
    registry: &mut Registry,
    base: pb::ListCommandExecutionsRequest,
) -> anyhow::Result<(Vec<pb::CommandExecutionSummary>, usize)> {
    let page_max = if base.max_results == 0 {
        25
    } else {
        base.max_results as usize
    };
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        anyhow::ensure!(pages <= 1_000, "paging does not end");
        let page = registry
            .list_command_executions(pb::ListCommandExecutionsRequest {
                next_token: token.clone(),
                ..base.clone()
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            page.command_executions.len() <= page_max,
            "page of {} > {page_max}",
            page.command_executions.len()
        );
        for e in page.command_executions {
            anyhow::ensure!(
                seen.insert(e.execution_id.clone()),
                "execution {} listed twice",
                e.execution_id
            );
            all.push(e);
        }
        if page.next_token.is_empty() {
            return Ok((all, pages));
        }
        token = page.next_token;
    }
}

/// The ids of a listing, in order.
pub fn execution_ids(list: &[pb::CommandExecutionSummary]) -> Vec<String> {
    list.iter().map(|e| e.execution_id.clone()).collect()
}

/// The ids, sorted (for comparing sets).
pub fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------------
// Watch

/// A WatchCommandExecutions stream whose reads fail after [`WAIT`] instead of hanging.
pub struct Watch {
    stream: tonic::Streaming<pb::CommandExecutionEvent>,
}

impl Watch {
    /// Opens a watch. The server subscribes before it answers, so every change made after
    /// this returns is seen.
    pub async fn open(
        registry: &mut Registry,
        request: pb::WatchCommandExecutionsRequest,
    ) -> anyhow::Result<Self> {
        let stream = registry
            .watch_command_executions(request)
            .await?
            .into_inner();
        Ok(Self { stream })
    }

    /// The next event.
    pub async fn next(&mut self) -> anyhow::Result<pb::CommandExecutionEvent> {
        match tokio::time::timeout(WAIT, self.stream.message()).await {
            Err(_) => anyhow::bail!("no watch event within {WAIT:?}"),
            Ok(Err(status)) => anyhow::bail!("watch stream failed: {status}"),
            Ok(Ok(None)) => anyhow::bail!("watch stream ended"),
            Ok(Ok(Some(e))) => Ok(e),
        }
    }

    /// Skips events until one for `execution_id` with `status` arrives.
    pub async fn until(
        &mut self,
        execution_id: &str,
        status: pb::ExecutionStatus,
    ) -> anyhow::Result<pb::CommandExecutionEvent> {
        loop {
            let e = self.next().await?;
            if e.execution_id == execution_id && e.status == status as i32 {
                return Ok(e);
            }
        }
    }
}

pub fn watch_request(
    command_id: &str,
    target: Option<pb::Target>,
    statuses: &[pb::ExecutionStatus],
) -> pb::WatchCommandExecutionsRequest {
    pb::WatchCommandExecutionsRequest {
        command_id: command_id.into(),
        target,
        statuses: statuses.iter().map(|s| *s as i32).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// A one-shot MQTT device

static NEXT_DEVICE: AtomicU64 = AtomicU64::new(0);

/// The topic prefix of one execution under the default `$aws` root.
pub fn execution_topic(target: &pb::Target, execution_id: &str) -> String {
    let kind = if target.kind == pb::TargetKind::Client as i32 {
        "clients"
    } else {
        "things"
    };
    format!(
        "$aws/commands/{kind}/{}/executions/{execution_id}",
        target.id
    )
}

/// Publishes one device update (QoS 1) on `.../response/json` and returns the reply:
/// `(accepted, body)` from `.../response/accepted/json` or `.../response/rejected/json`.
pub async fn device_update(
    server: &Server,
    target: &pb::Target,
    execution_id: &str,
    body: serde_json::Value,
) -> anyhow::Result<(bool, serde_json::Value)> {
    let base = execution_topic(target, execution_id);
    let client_id = format!(
        "e2e-api-{}-{}",
        std::process::id(),
        NEXT_DEVICE.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(client_id, "127.0.0.1", server.mqtt_port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let exchange = async {
        client
            .subscribe(format!("{base}/response/+/json"), QoS::AtLeastOnce)
            .await?;
        let mut published = false;
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    client
                        .publish(
                            format!("{base}/response/json"),
                            QoS::AtLeastOnce,
                            false,
                            serde_json::to_vec(&body)?,
                        )
                        .await?;
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let accepted = if p.topic == format!("{base}/response/accepted/json") {
                        true
                    } else if p.topic == format!("{base}/response/rejected/json") {
                        false
                    } else {
                        continue;
                    };
                    let reply: serde_json::Value = serde_json::from_slice(&p.payload)?;
                    return anyhow::Ok((accepted, reply));
                }
                _ => {}
            }
        }
    };
    let result = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no MQTT reply within {WAIT:?}"))?;
    let _ = client.disconnect().await;
    result
}

/// Settles an execution as its device would (`{"status": ...}` over MQTT), asserts the update
/// was accepted, and returns once the change is readable (its Watch event arrived).
pub async fn settle(
    server: &Server,
    registry: &mut Registry,
    target: &pb::Target,
    execution_id: &str,
    status: pb::ExecutionStatus,
) -> anyhow::Result<pb::CommandExecutionEvent> {
    let mut watch =
        Watch::open(registry, watch_request("", Some(target.clone()), &[status])).await?;
    let (accepted, reply) = device_update(
        server,
        target,
        execution_id,
        serde_json::json!({ "status": status.as_str_name() }),
    )
    .await?;
    anyhow::ensure!(
        accepted,
        "update of {execution_id} to {} was rejected: {reply}",
        status.as_str_name()
    );
    watch.until(execution_id, status).await
}

// ---------------------------------------------------------------------------------------------
// Cleanup

/// Stops the server and removes its data directory.
pub async fn stop(server: Server) -> anyhow::Result<()> {
    let dir = server.stop().await?;
    std::fs::remove_dir_all(&dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}
