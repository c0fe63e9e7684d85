//! Helpers for the gRPC API tests (`tests/api`): request builders, error assertions that
//! check the code, the message and the field named in the `google.rpc.BadRequest` details,
//! paging with [`collect_pages`], Watch streams whose reads are bounded, and a one-shot MQTT
//! device that settles an execution the way a real device does.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use fleetcmd_contracts::pb;
use fleetcmd_domain::paging::{collect_pages, non_empty};
use prost_types::Timestamp;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

pub use crate::{Dispatcher, Registry, WAIT};
use crate::{Server, within};

/// A long timeout for executions that must not time out while a test runs.
pub const LONG_TIMEOUT_SECS: i64 = 3_600;

/// A raw channel to the server (for the health and reflection clients).
pub async fn channel(server: &Server) -> anyhow::Result<Channel> {
    server.channel().await
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

/// A request that validation refuses, for tables of them: (label, request, the field the
/// refusal names, needles of its message), as [`expect_invalid`] checks them.
pub type Refused<R> = (&'static str, R, &'static str, Vec<&'static str>);

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

/// A request of the admin, whom [`crate::with_admin`] adds to a policy.
pub fn as_admin<T>(message: T) -> Request<T> {
    with_token(message, crate::ADMIN_TOKEN)
}

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

/// A target of any raw kind, for checking how the API answers kinds it does not know.
pub fn target_of_kind(kind: i32, id: &str) -> pb::Target {
    pb::Target {
        kind,
        id: id.into(),
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

/// Starts an execution with a long timeout and returns its id.
pub async fn start(
    dispatcher: &mut Dispatcher,
    command_id: &str,
    target: pb::Target,
) -> anyhow::Result<String> {
    start_execution(dispatcher, start_request(command_id, target)).await
}

/// Starts an execution and returns its id.
pub async fn start_execution(
    dispatcher: &mut Dispatcher,
    request: impl tonic::IntoRequest<pb::StartCommandExecutionRequest>,
) -> anyhow::Result<String> {
    Ok(dispatcher
        .start_command_execution(request)
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

/// Asserts that an execution does not exist: NOT_FOUND, naming it.
pub async fn assert_no_execution(registry: &mut Registry, execution_id: &str) {
    let r = get_execution(registry, execution_id)
        .await
        .map(Response::new);
    expect_code(r, Code::NotFound, &[execution_id]);
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

/// Every item of a listing, following page tokens with [`collect_pages`] until the last
/// page; fails if a page is larger than `page_max`, if an item (by `id`) is listed twice, or
/// after 1,000 pages. Returns the items and the number of pages.
async fn all_pages<T, F, Fut>(
    what: &str,
    page_max: usize,
    id: impl Fn(&T) -> &str,
    mut fetch: F,
) -> anyhow::Result<(Vec<T>, usize)>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut pages = 0usize;
    let items = collect_pages(None, |token| {
        pages += 1;
        let page_no = pages;
        let page = fetch(token.unwrap_or_default());
        async move {
            anyhow::ensure!(page_no <= 1_000, "paging {what} does not end");
            let (items, next) = page.await?;
            anyhow::ensure!(
                items.len() <= page_max,
                "page of {} {what} > {page_max}",
                items.len()
            );
            anyhow::Ok((items, non_empty(next)))
        }
    })
    .await?;
    let mut seen = HashSet::new();
    for item in &items {
        anyhow::ensure!(seen.insert(id(item)), "{what} {} listed twice", id(item));
    }
    Ok((items, pages))
}

/// The page size a request asks for (the server's default is 25).
fn page_max(max_results: i32) -> usize {
    if max_results == 0 {
        25
    } else {
        max_results as usize
    }
}

/// Every command matching `base`, following `next_token` until it is empty; asserts that no
/// page is larger than asked and that no command is visited twice.
pub async fn list_all_commands(
    registry: &mut Registry,
    base: pb::ListCommandsRequest,
) -> anyhow::Result<(Vec<pb::CommandSummary>, usize)> {
    let registry = registry.clone();
    all_pages(
        "commands",
        page_max(base.max_results),
        |c: &pb::CommandSummary| c.command_id.as_str(),
        |next_token| {
            let mut registry = registry.clone();
            let request = pb::ListCommandsRequest {
                next_token,
                ..base.clone()
            };
            async move {
                let page = registry.list_commands(request).await?.into_inner();
                Ok((page.commands, page.next_token))
            }
        },
    )
    .await
}

/// Every execution matching `base`, as [`list_all_commands`] does for commands.
pub async fn list_all_executions(
    registry: &mut Registry,
    base: pb::ListCommandExecutionsRequest,
) -> anyhow::Result<(Vec<pb::CommandExecutionSummary>, usize)> {
    let registry = registry.clone();
    all_pages(
        "executions",
        page_max(base.max_results),
        |e: &pb::CommandExecutionSummary| e.execution_id.as_str(),
        |next_token| {
            let mut registry = registry.clone();
            let request = pb::ListCommandExecutionsRequest {
                next_token,
                ..base.clone()
            };
            async move {
                let page = registry
                    .list_command_executions(request)
                    .await?
                    .into_inner();
                Ok((page.command_executions, page.next_token))
            }
        },
    )
    .await
}

/// The names of every thing a listing of things (ListThings, ListThingsInThingGroup)
/// returns, following `next_token`: `fetch` asks for the page of the token it is given.
/// Fails the test if paging does not end or a thing is listed twice.
pub async fn thing_names<F, Fut>(mut fetch: F) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Response<pb::ListThingsResponse>, Status>>,
{
    let (things, _) = all_pages(
        "things",
        100,
        |t: &pb::Thing| t.thing_name.as_str(),
        |next_token| {
            let page = fetch(next_token);
            async move {
                let page = page.await?.into_inner();
                Ok((page.things, page.next_token))
            }
        },
    )
    .await
    .expect("a listing of things");
    things.into_iter().map(|t| t.thing_name).collect()
}

/// The ids of a listing, in order.
pub fn execution_ids(list: &[pb::CommandExecutionSummary]) -> Vec<String> {
    list.iter().map(|e| e.execution_id.clone()).collect()
}

/// The ids of every execution there is, in listing order.
pub async fn all_execution_ids(registry: &mut Registry) -> anyhow::Result<Vec<String>> {
    let every = pb::ListCommandExecutionsRequest::default();
    Ok(execution_ids(
        &list_all_executions(registry, every).await?.0,
    ))
}

/// Asserts that there is no execution at all; `why` says what would have made one.
pub async fn assert_no_executions(registry: &mut Registry, why: &str) -> anyhow::Result<()> {
    let ids = all_execution_ids(registry).await?;
    assert!(ids.is_empty(), "{why}: {ids:?}");
    Ok(())
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
        let stream = within(
            "opening a Watch stream",
            registry.watch_command_executions(request),
        )
        .await??
        .into_inner();
        Ok(Self { stream })
    }

    /// The next event.
    pub async fn next(&mut self) -> anyhow::Result<pb::CommandExecutionEvent> {
        match within("the next Watch event", self.stream.message()).await? {
            Err(status) => anyhow::bail!("watch stream failed: {status}"),
            Ok(None) => anyhow::bail!("watch stream ended"),
            Ok(Some(e)) => Ok(e),
        }
    }

    /// Every event before the first of `marker` (a change that the filter matches, made
    /// last: whatever arrives before it is everything the stream got).
    pub async fn before(&mut self, marker: &str) -> anyhow::Result<Vec<pb::CommandExecutionEvent>> {
        let mut got = Vec::new();
        loop {
            let e = self
                .next()
                .await
                .with_context(|| format!("waiting for the marker {marker}; got {got:?}"))?;
            if e.execution_id == marker {
                return Ok(got);
            }
            got.push(e);
        }
    }

    /// Skips events until one for `execution_id` with `status` arrives.
    pub async fn until(
        &mut self,
        execution_id: &str,
        status: pb::ExecutionStatus,
    ) -> anyhow::Result<pb::CommandExecutionEvent> {
        loop {
            let e = self.next().await.with_context(|| {
                format!("waiting for {execution_id} to be {}", status.as_str_name())
            })?;
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
/// On a timeout the error says how far the exchange got (connected, subscribed, update
/// acknowledged by the broker).
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
    let mut options = MqttOptions::new(client_id.clone(), "127.0.0.1", server.mqtt_port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut progress = "connecting";
    let exchange = async {
        client
            .subscribe(format!("{base}/response/+/json"), QoS::AtLeastOnce)
            .await?;
        let mut published = false;
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => progress = "connected, subscribing",
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
                    progress = "subscribed, update published";
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    progress = "update acknowledged by the broker, no reply yet";
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
    let result = within(format!("the reply to {body} on {base}"), exchange).await;
    let _ = client.disconnect().await;
    result
        .with_context(|| format!("device {client_id}: {progress}"))
        .and_then(|r| r)
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
