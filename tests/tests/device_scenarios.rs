//! End-to-end scenarios: real MQTT devices (rumqttc, MQTT 5 and 3.1.1) and gRPC clients
//! against an in-process `fleetcmd serve` on loopback sockets.
//!
//! Synchronisation is event-driven throughout: a device waits for SUBACK before anything is
//! started, statuses are awaited through the `$aws/events/commandExecution/...` topics (the
//! edge publishes them after the projector's commit, so a Get issued afterwards sees the
//! change), and "nothing else happened" is proven with a later marker that travels the same
//! ordered path, never with a sleep.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ciborium::Value as Cbor;
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use fleetcmd_contracts::pb::parameter_value::Value as V;
use fleetcmd_e2e::device::{
    Device, DeviceOptions, EXPECT_TIMEOUT, Format, Message, Topics, cbor_to_json, to_cbor,
};
use fleetcmd_e2e::{
    Server, client, millis, parameter, static_command, static_json_command, template_command,
    test_args, thing, value,
};
use serde_json::{Value as Json, json};
use tonic::transport::Channel;

type Registry = CommandRegistryClient<Channel>;
type Dispatcher = CommandDispatcherClient<Channel>;

const ARN_PREFIX: &str = "arn:aws:iot:local:000000000000";
const WAIT: Duration = EXPECT_TIMEOUT;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

struct Env {
    server: Server,
    registry: Registry,
    dispatcher: Dispatcher,
}

impl Env {
    async fn start(name: &str) -> anyhow::Result<Self> {
        Self::with(Server::start(name).await?).await
    }

    async fn with(server: Server) -> anyhow::Result<Self> {
        let registry = server.registry().await?;
        let dispatcher = server.dispatcher().await?;
        Ok(Self {
            server,
            registry,
            dispatcher,
        })
    }

    fn port(&self) -> u16 {
        self.server.mqtt_port()
    }

    /// A device of `topics` with every device subscription in place (SUBACK received).
    async fn device(&self, client_id: &str, topics: &Topics) -> anyhow::Result<Device> {
        let mut d = Device::v5(self.port(), client_id).await?;
        d.subscribe(&topics.device_filters()).await?;
        Ok(d)
    }

    /// An MQTT observer of the status events of `command_ids`.
    async fn observer(&self, command_ids: &[&str]) -> anyhow::Result<Device> {
        let mut d = Device::v5(self.port(), &format!("observer-{}", command_ids.join("-"))).await?;
        let filters: Vec<String> = command_ids
            .iter()
            .map(|c| format!("$aws/events/commandExecution/{c}/+"))
            .collect();
        d.subscribe(&filters).await?;
        Ok(d)
    }

    async fn create(&mut self, request: pb::CreateCommandRequest) -> anyhow::Result<()> {
        let id = request.command_id.clone();
        self.registry
            .create_command(request)
            .await
            .with_context(|| format!("creating command {id}"))?;
        Ok(())
    }

    async fn start_execution(
        &mut self,
        request: pb::StartCommandExecutionRequest,
    ) -> anyhow::Result<String> {
        let r = self
            .dispatcher
            .start_command_execution(request)
            .await
            .context("StartCommandExecution")?;
        Ok(r.into_inner().execution_id)
    }

    async fn start_simple(
        &mut self,
        target: pb::Target,
        command_id: &str,
        timeout_secs: i64,
    ) -> anyhow::Result<String> {
        self.start_execution(start_request(target, command_id, timeout_secs))
            .await
    }

    async fn get(
        &mut self,
        execution_id: &str,
        include_result: bool,
    ) -> anyhow::Result<pb::CommandExecution> {
        let r = self
            .registry
            .get_command_execution(pb::GetCommandExecutionRequest {
                execution_id: execution_id.into(),
                target: None,
                include_result,
            })
            .await
            .with_context(|| format!("GetCommandExecution {execution_id}"))?;
        Ok(r.into_inner())
    }
}

fn start_request(
    target: pb::Target,
    command_id: &str,
    timeout_secs: i64,
) -> pb::StartCommandExecutionRequest {
    pb::StartCommandExecutionRequest {
        target: Some(target),
        command_id: command_id.into(),
        execution_timeout_seconds: timeout_secs,
        ..Default::default()
    }
}

fn status_of(e: &pb::CommandExecution) -> pb::ExecutionStatus {
    pb::ExecutionStatus::try_from(e.status).unwrap_or(pb::ExecutionStatus::Unspecified)
}

fn reason_code(e: &pb::CommandExecution) -> Option<&str> {
    e.status_reason.as_ref().map(|r| r.reason_code.as_str())
}

/// Waits for the next status event of `execution_id` on the observer and checks that it is
/// `status` on the event topic of `command_id`: events of one execution arrive in order, so
/// this also proves that no other status change came in between.
async fn next_event(
    obs: &mut Device,
    command_id: &str,
    execution_id: &str,
    status: &str,
) -> anyhow::Result<Json> {
    let m = obs
        .expect(
            &format!("the next status event of {execution_id} (expecting {status})"),
            |m| m.json().is_ok_and(|b| b["executionId"] == execution_id),
            WAIT,
        )
        .await?;
    let body = m.json()?;
    ensure!(
        body["status"] == status,
        "expected a {status} event for {execution_id}, got {body}"
    );
    ensure!(
        m.topic == format!("$aws/events/commandExecution/{command_id}/{status}"),
        "{status} event on the wrong topic {}",
        m.topic
    );
    ensure!(
        body["eventType"] == "COMMAND_EXECUTION",
        "eventType in {body}"
    );
    ensure!(
        body["commandArn"] == format!("{ARN_PREFIX}:command/{command_id}"),
        "commandArn in {body}"
    );
    ensure!(
        body["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "timestamp (epoch ms) in {body}"
    );
    ensure!(
        body["targetArn"]
            .as_str()
            .is_some_and(|t| t.starts_with(ARN_PREFIX)),
        "targetArn in {body}"
    );
    Ok(body)
}

/// Asserts that a reply was a rejection with `code`; returns its body.
fn assert_rejected(
    reply: &fleetcmd_e2e::device::Reply,
    code: &str,
    execution_id: &str,
) -> anyhow::Result<Json> {
    let body = reply.body()?;
    ensure!(
        !reply.accepted,
        "expected a {code} rejection, got accepted on {}: {body}",
        reply.message.topic
    );
    ensure!(body["error"] == code, "expected error {code}, got {body}");
    ensure!(body["executionId"] == execution_id, "executionId in {body}");
    ensure!(
        body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
        "errorMessage in {body}"
    );
    Ok(body)
}

fn assert_accepted(reply: &fleetcmd_e2e::device::Reply, execution_id: &str) -> anyhow::Result<()> {
    let body = reply.body()?;
    ensure!(
        reply.accepted,
        "expected accepted, got rejected on {}: {body}",
        reply.message.topic
    );
    ensure!(
        body == json!({ "executionId": execution_id }),
        "accepted body {body}"
    );
    Ok(())
}

fn result_value(e: &pb::CommandExecution, key: &str) -> Option<pb::result_value::Value> {
    e.result.get(key).and_then(|v| v.value.clone())
}

/// The same execution record, ignoring nothing: a rejected update must leave it untouched.
fn assert_unchanged(
    before: &pb::CommandExecution,
    after: &pb::CommandExecution,
) -> anyhow::Result<()> {
    ensure!(
        before == after,
        "the execution changed:\nbefore {before:?}\nafter  {after:?}"
    );
    Ok(())
}

/// Waits until Get shows `status`: each loop either sees it or awaits the execution's next
/// status event (the observer subscribed before the first Get, so no change is missed).
async fn wait_status(
    env: &mut Env,
    obs: &mut Device,
    execution_id: &str,
    status: pb::ExecutionStatus,
) -> anyhow::Result<pb::CommandExecution> {
    for _ in 0..10 {
        let e = env.get(execution_id, true).await?;
        if status_of(&e) == status {
            return Ok(e);
        }
        obs.expect(
            &format!("a status event of {execution_id} (waiting for {status:?})"),
            |m| m.json().is_ok_and(|b| b["executionId"] == execution_id),
            WAIT,
        )
        .await?;
    }
    bail!("{execution_id} did not reach {status:?} within 10 status events")
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// MQTT 5 device, static JSON / template / raw commands: exact payload on the right topic
/// with content type and remaining-timeout expiry; IN_PROGRESS then SUCCEEDED with a result;
/// Get with and without the result; CREATED, IN_PROGRESS, SUCCEEDED events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_with_progress_and_result() -> anyhow::Result<()> {
    let mut env = Env::start("success").await?;
    let topics = Topics::thing("lamp-1");
    let mut obs = env.observer(&["reboot", "set-level", "blink"]).await?;
    let mut dev = env.device("lamp-1", &topics).await?;
    let payload = r#"{"action":"reboot","delay":0}"#;
    env.create(static_json_command("reboot", payload)).await?;

    // Static JSON command.
    let id = env.start_simple(thing("lamp-1"), "reboot", 30).await?;
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(req.topic, topics.request(&id, "json"));
    assert_eq!(
        req.payload.as_ref(),
        payload.as_bytes(),
        "the body is exactly the command payload"
    );
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    let expiry = req
        .message_expiry_secs
        .context("MQTT 5 request without message expiry")?;
    assert!(
        (28..=30).contains(&expiry),
        "message expiry {expiry} should be the remaining timeout (≤30, ≥28)"
    );

    let created = next_event(&mut obs, "reboot", &id, "CREATED").await?;
    assert_eq!(created["targetArn"], format!("{ARN_PREFIX}:thing/lamp-1"));
    assert!(
        created.get("statusReason").is_none(),
        "CREATED has no reason: {created}"
    );
    let e = env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Created);
    assert_eq!(
        (
            e.command_id.as_str(),
            e.execution_timeout_seconds,
            e.terminal
        ),
        ("reboot", 30, false)
    );
    assert_eq!(e.target, Some(thing("lamp-1")));
    assert_eq!(e.command_arn, format!("{ARN_PREFIX}:command/reboot"));
    assert_eq!(e.target_arn, format!("{ARN_PREFIX}:thing/lamp-1"));
    assert_eq!(
        millis(e.started_at.as_ref()),
        millis(e.created_at.as_ref()),
        "startedAt matches createdAt"
    );
    assert_eq!(e.completed_at, None);

    let progress = json!({"status": "IN_PROGRESS", "statusReason": {"reasonCode": "DOWNLOADING", "reasonDescription": "50%"}});
    assert_accepted(&dev.report_json(&topics, &id, &progress).await?, &id)?;
    let ev = next_event(&mut obs, "reboot", &id, "IN_PROGRESS").await?;
    assert_eq!(
        ev["statusReason"],
        json!({"reasonCode": "DOWNLOADING", "reasonDescription": "50%"})
    );
    let e = env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::InProgress);
    assert_eq!(reason_code(&e), Some("DOWNLOADING"));
    assert_eq!((e.terminal, e.completed_at), (false, None));

    let done = json!({"status": "SUCCEEDED", "result": {
        "s": {"s": "rebooted"}, "b": {"b": true}, "bin": {"bin": BASE64.encode([0u8, 1, 254, 255])}
    }});
    assert_accepted(&dev.report_json(&topics, &id, &done).await?, &id)?;
    let ev = next_event(&mut obs, "reboot", &id, "SUCCEEDED").await?;
    assert_eq!(
        ev["result"], done["result"],
        "fleetcmd adds the result to events"
    );
    assert!(ev["timestamp"].as_i64() >= created["timestamp"].as_i64());

    let e = env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert!(e.terminal);
    assert_eq!(
        e.status_reason, None,
        "SUCCEEDED without a reason clears the progress reason"
    );
    assert_eq!(
        result_value(&e, "s"),
        Some(pb::result_value::Value::S("rebooted".into()))
    );
    assert_eq!(
        result_value(&e, "b"),
        Some(pb::result_value::Value::B(true))
    );
    assert_eq!(
        result_value(&e, "bin"),
        Some(pb::result_value::Value::Bin(vec![0, 1, 254, 255]))
    );
    assert_eq!(e.result.len(), 3);
    let completed = millis(e.completed_at.as_ref()).context("completed_at set on SUCCEEDED")?;
    assert!(completed >= millis(e.created_at.as_ref()).unwrap_or(i64::MAX));
    assert!(millis(e.started_at.as_ref()).is_some());
    let without = env.get(&id, false).await?;
    assert!(
        without.result.is_empty(),
        "include_result=false hides the result"
    );
    assert_eq!(status_of(&without), pb::ExecutionStatus::Succeeded);

    // Template with typed parameters: defaults, conditions, embedded text and the timeout.
    let template = r#"{"level": "${aws:iot:commandexecution::parameter:level}", "label": "${aws:iot:commandexecution::parameter:label}", "on": "${aws:iot:commandexecution::parameter:on}", "blob": "${aws:iot:commandexecution::parameter:blob}", "timeout": "${aws:iot:commandexecution::executionTimeoutSec}", "note": "level ${aws:iot:commandexecution::parameter:level}"}"#;
    let mut level = parameter("level", pb::ParameterType::Integer, None);
    level.value_conditions = vec![pb::ValueCondition {
        comparison_operator: pb::ComparisonOperator::InRange as i32,
        operand: Some(pb::ConditionOperand {
            operand: Some(pb::condition_operand::Operand::NumberRange(
                pb::NumberRange {
                    min: "0".into(),
                    max: "100".into(),
                },
            )),
        }),
    }];
    let params = vec![
        level,
        parameter("label", pb::ParameterType::String, None),
        parameter("on", pb::ParameterType::Boolean, Some(V::B(true))),
        parameter("blob", pb::ParameterType::Binary, None),
    ];
    env.create(template_command(
        "set-level",
        template,
        pb::OutputFormat::Json,
        params,
    ))
    .await?;
    let mut start = start_request(thing("lamp-1"), "set-level", 20);
    start.parameters = HashMap::from([
        ("level".to_string(), value(V::I(80))),
        ("label".to_string(), value(V::S("kitchen".into()))),
        ("blob".to_string(), value(V::Bin(vec![1, 2, 3]))),
    ]);
    let mut too_high = start.clone();
    too_high.parameters.insert("level".into(), value(V::I(120)));
    let err = env
        .dispatcher
        .start_command_execution(too_high)
        .await
        .expect_err("level 120 is outside 0..100");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("level"), "{}", err.message());

    let id2 = env.start_execution(start).await?;
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(
        req.topic,
        topics.request(&id2, "json"),
        "the rejected start delivered nothing"
    );
    assert_eq!(
        std::str::from_utf8(&req.payload)?,
        r#"{"level":80,"label":"kitchen","on":true,"blob":"AQID","timeout":20,"note":"level 80"}"#
    );
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    let expiry = req.message_expiry_secs.context("no expiry")?;
    assert!(
        (18..=20).contains(&expiry),
        "expiry {expiry} for a 20 s timeout"
    );
    next_event(&mut obs, "set-level", &id2, "CREATED").await?;
    let e = env.get(&id2, false).await?;
    assert_eq!(e.parameters.get("level"), Some(&value(V::I(80))));
    assert_eq!(
        e.parameters.get("on"),
        Some(&value(V::B(true))),
        "the default actually used is recorded"
    );
    assert_eq!(e.parameters.len(), 4);
    assert_accepted(
        &dev.report_json(&topics, &id2, &json!({"status": "SUCCEEDED"}))
            .await?,
        &id2,
    )?;
    next_event(&mut obs, "set-level", &id2, "SUCCEEDED").await?;

    // Any other content type goes to the suffix-less topic, with its content type.
    env.create(static_command("blink", b"BLINK 3", "text/plain"))
        .await?;
    let id3 = env.start_simple(thing("lamp-1"), "blink", 10).await?;
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(req.topic, topics.request(&id3, ""));
    assert_eq!(req.payload.as_ref(), b"BLINK 3");
    assert_eq!(req.content_type.as_deref(), Some("text/plain"));
    assert!(
        req.message_expiry_secs
            .is_some_and(|s| (8..=10).contains(&s)),
        "{req:?}"
    );
    next_event(&mut obs, "blink", &id3, "CREATED").await?;
    env.server.shutdown().await
}

/// FAILED and REJECTED are terminal: the reason is kept, completed_at set, and any later
/// update is refused with TerminalStateReached without changing the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_and_rejection_are_terminal() -> anyhow::Result<()> {
    let mut env = Env::start("failure").await?;
    let topics = Topics::thing("pump-1");
    let mut obs = env.observer(&["flush"]).await?;
    let mut dev = env.device("pump-1", &topics).await?;
    env.create(static_json_command("flush", r#"{"flush":true}"#))
        .await?;

    let failed = env.start_simple(thing("pump-1"), "flush", 30).await?;
    let rejected = env.start_simple(thing("pump-1"), "flush", 30).await?;
    next_event(&mut obs, "flush", &failed, "CREATED").await?;
    next_event(&mut obs, "flush", &rejected, "CREATED").await?;

    let fail = json!({"status": "FAILED", "statusReason": {"reasonCode": "VALVE_STUCK", "reasonDescription": "valve 3 did not open"}});
    assert_accepted(&dev.report_json(&topics, &failed, &fail).await?, &failed)?;
    let ev = next_event(&mut obs, "flush", &failed, "FAILED").await?;
    assert_eq!(ev["statusReason"], fail["statusReason"]);
    let e = env.get(&failed, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Failed);
    assert_eq!(
        e.status_reason,
        Some(pb::StatusReason {
            reason_code: "VALVE_STUCK".into(),
            reason_description: "valve 3 did not open".into()
        })
    );
    assert!(e.terminal && e.completed_at.is_some());

    let reject = json!({"status": "REJECTED", "statusReason": {"reasonCode": "UNSUPPORTED"}});
    assert_accepted(
        &dev.report_json(&topics, &rejected, &reject).await?,
        &rejected,
    )?;
    next_event(&mut obs, "flush", &rejected, "REJECTED").await?;
    let r = env.get(&rejected, true).await?;
    assert_eq!(status_of(&r), pb::ExecutionStatus::Rejected);
    assert_eq!(reason_code(&r), Some("UNSUPPORTED"));
    assert!(r.terminal && r.completed_at.is_some());

    // Later updates, of any status, are refused.
    for (id, was, before) in [(&failed, "FAILED", &e), (&rejected, "REJECTED", &r)] {
        for status in ["SUCCEEDED", "IN_PROGRESS", "TIMED_OUT"] {
            let reply = dev
                .report_json(&topics, id, &json!({ "status": status }))
                .await?;
            let body = assert_rejected(&reply, "TerminalStateReached", id)?;
            assert_eq!(reply.message.topic, topics.rejected(id, Format::Json));
            let msg = body["errorMessage"].as_str().unwrap_or_default();
            assert!(msg.contains(status) && msg.contains(was), "{msg}");
        }
        assert_unchanged(before, &env.get(id, true).await?)?;
    }
    // No event came of the refused updates: the next event is a marker's.
    let marker = env.start_simple(thing("pump-1"), "flush", 30).await?;
    next_event(&mut obs, "flush", &marker, "CREATED").await?;
    let stray: Vec<Message> = obs.take_received();
    assert!(stray.is_empty(), "no events for refused updates: {stray:?}");
    env.server.shutdown().await
}

/// Cloud timeout: TIMED_OUT ($NO_RESPONSE_FROM_DEVICE) is not terminal and has no
/// completed_at; IN_PROGRESS is then refused; a late SUCCEEDED, or a device TIMED_OUT,
/// settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_timeout_then_late_reports() -> anyhow::Result<()> {
    let mut env = Env::start("timeout").await?;
    let topics = Topics::thing("slow-1");
    let mut obs = env.observer(&["probe"]).await?;
    let mut dev = env.device("slow-1", &topics).await?;
    env.create(static_json_command("probe", r#"{"probe":1}"#))
        .await?;

    let late = env.start_simple(thing("slow-1"), "probe", 1).await?;
    let settled = env.start_simple(thing("slow-1"), "probe", 1).await?;
    for id in [&late, &settled] {
        let req = dev.expect_request(&topics, WAIT).await?;
        assert_eq!(req.execution_id(), Some(id.as_str()));
        // The edge sends 1 (never 0), but rmqtt rounds the remaining 0.99 s down to 0 and
        // then omits the property when it forwards; any other broker may pass the 1 through.
        assert!(req.message_expiry_secs.is_none_or(|s| s <= 1), "{req:?}");
    }
    for id in [&late, &settled] {
        let created = next_event(&mut obs, "probe", id, "CREATED").await?;
        let ev = next_event(&mut obs, "probe", id, "TIMED_OUT").await?;
        assert_eq!(ev["statusReason"]["reasonCode"], "$NO_RESPONSE_FROM_DEVICE");
        let waited =
            ev["timestamp"].as_i64().unwrap_or(0) - created["timestamp"].as_i64().unwrap_or(0);
        assert!(
            waited >= 1000,
            "timed out after {waited} ms, before the 1 s timeout"
        );
        let e = env.get(id, true).await?;
        assert_eq!(status_of(&e), pb::ExecutionStatus::TimedOut);
        assert_eq!(reason_code(&e), Some("$NO_RESPONSE_FROM_DEVICE"));
        assert!(!e.terminal, "a cloud TIMED_OUT is not terminal");
        assert_eq!(
            e.completed_at, None,
            "no completed_at for a cloud TIMED_OUT"
        );
    }

    // IN_PROGRESS after the cloud timeout is refused and changes nothing.
    let before = env.get(&late, true).await?;
    let reply = dev
        .report_json(&topics, &late, &json!({"status": "IN_PROGRESS"}))
        .await?;
    assert_rejected(&reply, "InvalidStateTransition", &late)?;
    assert_unchanged(&before, &env.get(&late, true).await?)?;

    // A late SUCCEEDED settles it.
    let done = json!({"status": "SUCCEEDED", "result": {"took_ms": {"s": "1500"}}});
    assert_accepted(&dev.report_json(&topics, &late, &done).await?, &late)?;
    next_event(&mut obs, "probe", &late, "SUCCEEDED").await?;
    let e = env.get(&late, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert!(e.terminal);
    assert!(
        millis(e.completed_at.as_ref())
            .is_some_and(|c| c >= millis(e.created_at.as_ref()).unwrap_or(0) + 1000)
    );
    assert_eq!(
        result_value(&e, "took_ms"),
        Some(pb::result_value::Value::S("1500".into()))
    );
    assert_eq!(e.status_reason, None);

    // The device's own TIMED_OUT after the cloud's is terminal and replaces the reason.
    let own = json!({"status": "TIMED_OUT", "statusReason": {"reasonCode": "DEVICE_TIMEOUT", "reasonDescription": "gave up"}});
    assert_accepted(&dev.report_json(&topics, &settled, &own).await?, &settled)?;
    let ev = next_event(&mut obs, "probe", &settled, "TIMED_OUT").await?;
    assert_eq!(ev["statusReason"]["reasonCode"], "DEVICE_TIMEOUT");
    let e = env.get(&settled, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::TimedOut);
    assert_eq!(reason_code(&e), Some("DEVICE_TIMEOUT"));
    assert!(
        e.terminal && e.completed_at.is_some(),
        "a device TIMED_OUT is terminal: {e:?}"
    );
    let reply = dev
        .report_json(&topics, &settled, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &settled)?;
    let reply = dev
        .report_json(&topics, &late, &json!({"status": "FAILED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &late)?;
    env.server.shutdown().await
}

/// CancelCommandExecution: CANCELED (terminal), the device is told on .../cancel/json,
/// later device updates and a second cancel are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_notifies_the_device_and_is_final() -> anyhow::Result<()> {
    let mut env = Env::start("cancel").await?;
    let topics = Topics::thing("arm-1");
    let mut obs = env.observer(&["move"]).await?;
    let mut dev = env.device("arm-1", &topics).await?;
    env.create(static_json_command("move", r#"{"x":1}"#))
        .await?;

    let id = env.start_simple(thing("arm-1"), "move", 30).await?;
    dev.expect_request(&topics, WAIT).await?;
    assert_accepted(
        &dev.report_json(&topics, &id, &json!({"status": "IN_PROGRESS"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "move", &id, "CREATED").await?;
    next_event(&mut obs, "move", &id, "IN_PROGRESS").await?;

    let reason = pb::StatusReason {
        reason_code: "OPERATOR_ABORT".into(),
        reason_description: "emergency stop".into(),
    };
    let r = env
        .dispatcher
        .cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: id.clone(),
            target: Some(thing("arm-1")),
            status_reason: Some(reason.clone()),
        })
        .await?
        .into_inner();
    assert_eq!(
        (r.execution_id.as_str(), r.status),
        (id.as_str(), pb::ExecutionStatus::Canceled as i32)
    );

    let notice = dev.expect_topic(&topics.cancel(&id), WAIT).await?;
    assert_eq!(
        notice.json()?,
        json!({"executionId": id, "status": "CANCELED", "statusReason": {"reasonCode": "OPERATOR_ABORT", "reasonDescription": "emergency stop"}})
    );
    assert_eq!(notice.content_type.as_deref(), Some("application/json"));
    let ev = next_event(&mut obs, "move", &id, "CANCELED").await?;
    assert_eq!(ev["statusReason"]["reasonCode"], "OPERATOR_ABORT");
    let e = env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Canceled);
    assert_eq!(e.status_reason, Some(reason));
    assert!(e.terminal && e.completed_at.is_some());

    let reply = dev
        .report_json(&topics, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    let body = assert_rejected(&reply, "TerminalStateReached", &id)?;
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("CANCELED"),
        "{body}"
    );
    assert_unchanged(&e, &env.get(&id, true).await?)?;
    let again = env
        .dispatcher
        .cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a canceled execution cannot be canceled again");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");

    // Without a reason the cloud's $CANCELED is used.
    let id2 = env.start_simple(thing("arm-1"), "move", 30).await?;
    env.dispatcher
        .cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: id2.clone(),
            ..Default::default()
        })
        .await?;
    let notice = dev.expect_topic(&topics.cancel(&id2), WAIT).await?;
    assert_eq!(notice.json()?["statusReason"]["reasonCode"], "$CANCELED");
    next_event(&mut obs, "move", &id2, "CREATED").await?;
    next_event(&mut obs, "move", &id2, "CANCELED").await?;
    let e2 = env.get(&id2, false).await?;
    assert_eq!(
        (status_of(&e2), reason_code(&e2)),
        (pb::ExecutionStatus::Canceled, Some("$CANCELED"))
    );
    env.server.shutdown().await
}

/// A device may only act on its own executions: another device's execution id on its own
/// topic, a bogus id on the other's topic, or the right id under the other target kind are
/// all ResourceNotFound and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cannot_update_other_devices_executions() -> anyhow::Result<()> {
    let mut env = Env::start("isolation").await?;
    let a = Topics::thing("door-a");
    let b = Topics::thing("door-b");
    let mut obs = env.observer(&["unlock"]).await?;
    let mut dev_a = env.device("door-a", &a).await?;
    let mut dev_b = env.device("door-b", &b).await?;
    env.create(static_json_command("unlock", r#"{"unlock":true}"#))
        .await?;

    let id = env.start_simple(thing("door-a"), "unlock", 30).await?;
    dev_a.expect_request(&a, WAIT).await?;
    next_event(&mut obs, "unlock", &id, "CREATED").await?;
    let before = env.get(&id, true).await?;

    // B reports on its own topic with A's execution id.
    let reply = dev_b
        .report_json(&b, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_eq!(reply.message.topic, b.rejected(&id, Format::Json));
    assert_rejected(&reply, "ResourceNotFound", &id)?;

    // B reports on A's topic with a bogus id (and listens for the answer there).
    let bogus = "00000000-0000-7000-8000-000000000000";
    dev_b
        .subscribe(&[format!(
            "$aws/commands/things/door-a/executions/{bogus}/response/+/json"
        )])
        .await?;
    let reply = dev_b
        .report_json(&a, bogus, &json!({"status": "FAILED"}))
        .await?;
    assert_rejected(&reply, "ResourceNotFound", bogus)?;

    // The right id under the client kind with the same name is another target.
    let as_client = Topics::client("door-a");
    dev_b.subscribe(&as_client.reply_filters()).await?;
    let reply = dev_b
        .report_json(&as_client, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_rejected(&reply, "ResourceNotFound", &id)?;

    assert_unchanged(&before, &env.get(&id, true).await?)?;
    // A's own report still works, and the only status change was A's.
    assert_accepted(
        &dev_a
            .report_json(&a, &id, &json!({"status": "SUCCEEDED"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "unlock", &id, "SUCCEEDED").await?;
    assert_eq!(
        status_of(&env.get(&id, false).await?),
        pb::ExecutionStatus::Succeeded
    );
    env.server.shutdown().await
}

/// Malformed updates get /rejected with InvalidJson or InvalidRequest in the update's
/// format, echo a valid clientToken, and leave the execution unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_are_rejected_and_change_nothing() -> anyhow::Result<()> {
    let mut env = Env::start("malformed").await?;
    let topics = Topics::thing("meter-1");
    let mut obs = env.observer(&["read"]).await?;
    let mut dev = env.device("meter-1", &topics).await?;
    env.create(static_json_command("read", r#"{"read":"all"}"#))
        .await?;
    let id = env.start_simple(thing("meter-1"), "read", 30).await?;
    dev.expect_request(&topics, WAIT).await?;
    next_event(&mut obs, "read", &id, "CREATED").await?;
    let before = env.get(&id, true).await?;

    let long_key = "k".repeat(33);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "invalid JSON",
            b"{\"status\": \"SUCCEEDED\"".to_vec(),
            "InvalidJson",
            "JSON",
        ),
        (
            "not an object",
            b"[\"SUCCEEDED\"]".to_vec(),
            "InvalidJson",
            "object",
        ),
        (
            "no status",
            br#"{"result": {"a": {"s": "x"}}}"#.to_vec(),
            "InvalidRequest",
            "status",
        ),
        (
            "unknown status",
            br#"{"status": "DONE"}"#.to_vec(),
            "InvalidRequest",
            "DONE",
        ),
        (
            "status not a string",
            br#"{"status": 3}"#.to_vec(),
            "InvalidRequest",
            "status",
        ),
        (
            "bad reasonCode",
            br#"{"status": "FAILED", "statusReason": {"reasonCode": "disk full"}}"#.to_vec(),
            "InvalidRequest",
            "reasonCode",
        ),
        (
            "cloud reasonCode",
            br#"{"status": "FAILED", "statusReason": {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}}"#
                .to_vec(),
            "InvalidRequest",
            "reserved",
        ),
        (
            "result key too long",
            json!({"status": "SUCCEEDED", "result": {long_key.as_str(): {"s": "x"}}})
                .to_string()
                .into_bytes(),
            "InvalidRequest",
            "32",
        ),
        (
            "bad result type",
            br#"{"status": "SUCCEEDED", "result": {"n": {"i": 3}}}"#.to_vec(),
            "InvalidRequest",
            "result.n",
        ),
        (
            "bad base64",
            br#"{"status": "SUCCEEDED", "result": {"n": {"bin": "%%%"}}}"#.to_vec(),
            "InvalidRequest",
            "base64",
        ),
        (
            "CREATED",
            br#"{"status": "CREATED"}"#.to_vec(),
            "InvalidStateTransition",
            "CREATED",
        ),
        (
            "CANCELED",
            br#"{"status": "CANCELED"}"#.to_vec(),
            "InvalidRequest",
            "CANCELED",
        ),
    ];
    for (what, body, code, needle) in cases {
        let reply = dev.report(&topics, &id, Format::Json, body).await?;
        assert_eq!(
            reply.message.topic,
            topics.rejected(&id, Format::Json),
            "{what}"
        );
        let body = assert_rejected(&reply, code, &id).with_context(|| what.to_string())?;
        let msg = body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should mention {needle:?}"
        );
    }

    // A valid clientToken is echoed even on a rejection.
    let reply = dev
        .report_json(
            &topics,
            &id,
            &json!({"status": "DONE", "clientToken": "tok-7"}),
        )
        .await?;
    assert_eq!(
        assert_rejected(&reply, "InvalidRequest", &id)?["clientToken"],
        "tok-7"
    );

    // Invalid CBOR on /response/cbor: the rejection comes on /rejected/cbor, in CBOR.
    let reply = dev
        .report(&topics, &id, Format::Cbor, vec![0xff, 0x00, 0x13])
        .await?;
    assert_eq!(reply.message.topic, topics.rejected(&id, Format::Cbor));
    assert!(reply.message.json().is_err(), "a CBOR reply, not JSON");
    assert_rejected(&reply, "InvalidJson", &id)?;
    // Valid CBOR, bad shape: InvalidRequest.
    let no_status = to_cbor(&Cbor::Map(vec![(
        Cbor::Text("result".into()),
        Cbor::Map(vec![]),
    )]));
    let reply = dev.report(&topics, &id, Format::Cbor, no_status).await?;
    assert_rejected(&reply, "InvalidRequest", &id)?;

    assert_unchanged(&before, &env.get(&id, true).await?)?;
    // None of that made an event: the next one is the valid update's.
    assert_accepted(
        &dev.report_json(&topics, &id, &json!({"status": "SUCCEEDED"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "read", &id, "SUCCEEDED").await?;
    assert!(obs.take_received().is_empty());
    env.server.shutdown().await
}

/// A CBOR template is delivered as CBOR on /request/cbor; CBOR updates are answered in CBOR
/// on /response/accepted/cbor and their `bin` results are byte strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbor_requests_and_updates() -> anyhow::Result<()> {
    let mut env = Env::start("cbor").await?;
    let topics = Topics::thing("tag-1");
    let mut obs = env.observer(&["configure"]).await?;
    let mut dev = env.device("tag-1", &topics).await?;
    let template = r#"{"level": "${aws:iot:commandexecution::parameter:level}", "key": "${aws:iot:commandexecution::parameter:key}", "name": "${aws:iot:commandexecution::parameter:name}", "t": "${aws:iot:commandexecution::executionTimeoutSec}"}"#;
    let params = vec![
        parameter("level", pb::ParameterType::Long, Some(V::L(7))),
        parameter("key", pb::ParameterType::Binary, None),
        parameter("name", pb::ParameterType::String, None),
    ];
    env.create(template_command(
        "configure",
        template,
        pb::OutputFormat::Cbor,
        params,
    ))
    .await?;
    let mut start = start_request(thing("tag-1"), "configure", 15);
    start.parameters = HashMap::from([
        (
            "key".to_string(),
            value(V::Bin(vec![0xde, 0xad, 0xbe, 0xef])),
        ),
        ("name".to_string(), value(V::S("tag".into()))),
    ]);
    let id = env.start_execution(start).await?;

    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(req.topic, topics.request(&id, "cbor"));
    assert_eq!(req.content_type.as_deref(), Some("application/cbor"));
    assert!(
        req.message_expiry_secs
            .is_some_and(|s| (13..=15).contains(&s)),
        "{req:?}"
    );
    let text = |s: &str| Cbor::Text(s.into());
    assert_eq!(
        req.cbor()?,
        Cbor::Map(vec![
            (text("level"), Cbor::Integer(7.into())),
            (text("key"), Cbor::Bytes(vec![0xde, 0xad, 0xbe, 0xef])),
            (text("name"), text("tag")),
            (text("t"), Cbor::Integer(15.into())),
        ])
    );
    next_event(&mut obs, "configure", &id, "CREATED").await?;

    let progress = to_cbor(&Cbor::Map(vec![
        (text("status"), text("IN_PROGRESS")),
        (text("clientToken"), text("c-1")),
    ]));
    let reply = dev.report(&topics, &id, Format::Cbor, progress).await?;
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.message.topic, topics.accepted(&id, Format::Cbor));
    assert_eq!(
        reply.message.cbor()?,
        Cbor::Map(vec![
            (text("executionId"), text(&id)),
            (text("clientToken"), text("c-1"))
        ]),
        "the accepted reply is CBOR"
    );
    next_event(&mut obs, "configure", &id, "IN_PROGRESS").await?;

    let done = to_cbor(&Cbor::Map(vec![
        (text("status"), text("SUCCEEDED")),
        (
            text("result"),
            Cbor::Map(vec![
                (
                    text("raw"),
                    Cbor::Map(vec![(text("bin"), Cbor::Bytes(vec![0, 255]))]),
                ),
                (text("ok"), Cbor::Map(vec![(text("b"), Cbor::Bool(true))])),
                (text("msg"), Cbor::Map(vec![(text("s"), text("applied"))])),
            ]),
        ),
    ]));
    let reply = dev.report(&topics, &id, Format::Cbor, done).await?;
    assert!(reply.accepted, "{:?}", reply.body());
    let ev = next_event(&mut obs, "configure", &id, "SUCCEEDED").await?;
    assert_eq!(
        ev["result"]["raw"],
        json!({"bin": "AP8="}),
        "events carry bin as base64"
    );
    let e = env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert_eq!(
        result_value(&e, "raw"),
        Some(pb::result_value::Value::Bin(vec![0, 255]))
    );
    assert_eq!(
        result_value(&e, "ok"),
        Some(pb::result_value::Value::B(true))
    );
    assert_eq!(
        result_value(&e, "msg"),
        Some(pb::result_value::Value::S("applied".into()))
    );
    assert_eq!(e.parameters.get("level"), Some(&value(V::L(7))));

    // A terminal-state rejection in CBOR.
    let again = to_cbor(&Cbor::Map(vec![(text("status"), text("FAILED"))]));
    let reply = dev.report(&topics, &id, Format::Cbor, again).await?;
    assert_eq!(reply.message.topic, topics.rejected(&id, Format::Cbor));
    let body = cbor_to_json(&reply.message.cbor()?)?;
    assert_eq!(body["error"], "TerminalStateReached");
    env.server.shutdown().await
}

/// An MQTT 3.1.1 device gets the bare payload (no properties) and completes the same flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_device_success() -> anyhow::Result<()> {
    let mut env = Env::start("v311").await?;
    let topics = Topics::thing("legacy-1");
    let mut obs = env.observer(&["ping"]).await?;
    let mut dev = Device::v311(env.port(), "legacy-1").await?;
    dev.subscribe(&topics.device_filters()).await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;

    let id = env.start_simple(thing("legacy-1"), "ping", 10).await?;
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(req.topic, topics.request(&id, "json"));
    assert_eq!(req.payload.as_ref(), br#"{"ping":"pong"}"#);
    assert_eq!(
        (req.content_type, req.message_expiry_secs),
        (None, None),
        "MQTT 3.1.1 has no properties"
    );
    next_event(&mut obs, "ping", &id, "CREATED").await?;

    assert_accepted(
        &dev.report_json(&topics, &id, &json!({"status": "IN_PROGRESS"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "ping", &id, "IN_PROGRESS").await?;
    let done = json!({"status": "SUCCEEDED", "result": {"rtt": {"s": "3ms"}}, "deviceId": "legacy-1", "executionId": id});
    assert_accepted(&dev.report_json(&topics, &id, &done).await?, &id)?;
    next_event(&mut obs, "ping", &id, "SUCCEEDED").await?;
    let e = env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert_eq!(
        result_value(&e, "rtt"),
        Some(pb::result_value::Value::S("3ms".into()))
    );
    assert!(e.completed_at.is_some());
    let reply = dev
        .report_json(&topics, &id, &json!({"status": "FAILED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &id)?;
    env.server.shutdown().await
}

/// Client-id targets use `clients/<id>` topics and client ARNs, and are not things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_targets() -> anyhow::Result<()> {
    let mut env = Env::start("clients").await?;
    let as_client = Topics::client("sensor-77");
    let as_thing = Topics::thing("sensor-77");
    let mut obs = env.observer(&["sample"]).await?;
    let mut dev = env.device("sensor-77", &as_client).await?;
    let mut thing_dev = env.device("sensor-77-thing", &as_thing).await?;
    env.create(static_json_command("sample", r#"{"rate":10}"#))
        .await?;

    let id = env.start_simple(client("sensor-77"), "sample", 10).await?;
    let req = dev.expect_request(&as_client, WAIT).await?;
    assert_eq!(
        req.topic,
        format!("$aws/commands/clients/sensor-77/executions/{id}/request/json")
    );
    let ev = next_event(&mut obs, "sample", &id, "CREATED").await?;
    assert_eq!(ev["targetArn"], format!("{ARN_PREFIX}:client/sensor-77"));

    // Under the thing kind, this execution does not exist.
    let reply = thing_dev
        .report_json(&as_thing, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_rejected(&reply, "ResourceNotFound", &id)?;

    let reply = dev
        .report_json(&as_client, &id, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_accepted(&reply, &id)?;
    assert_eq!(
        reply.message.topic,
        format!("$aws/commands/clients/sensor-77/executions/{id}/response/accepted/json")
    );
    let ev = next_event(&mut obs, "sample", &id, "SUCCEEDED").await?;
    assert_eq!(ev["targetArn"], format!("{ARN_PREFIX}:client/sensor-77"));
    let e = env.get(&id, false).await?;
    assert_eq!(e.target, Some(client("sensor-77")));
    assert_eq!(e.target_arn, format!("{ARN_PREFIX}:client/sensor-77"));
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);

    // The thing of the same name got no request for the client's execution: its first
    // request is the thing execution started afterwards.
    let thing_id = env.start_simple(thing("sensor-77"), "sample", 10).await?;
    let req = thing_dev.expect_request(&as_thing, WAIT).await?;
    assert_eq!(req.execution_id(), Some(thing_id.as_str()));
    env.server.shutdown().await
}

/// A persistent-session device that is offline when the execution starts gets the queued
/// request when it reconnects, and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_gets_the_queued_request() -> anyhow::Result<()> {
    let mut env = Env::start("offline").await?;
    let topics = Topics::thing("van-9");
    let mut obs = env.observer(&["locate"]).await?;
    let options = DeviceOptions::v5("van-9").persistent(600);
    let mut dev = Device::connect(env.port(), options.clone()).await?;
    assert!(!dev.session_present);
    dev.subscribe(&topics.device_filters()).await?;
    dev.disconnect().await?;
    // A witness subscribed to the same requests: once it has the request, the broker has
    // routed it (and queued it for the offline session).
    let mut witness = Device::v5(env.port(), "witness").await?;
    witness.subscribe(&topics.request_filters()).await?;
    env.create(static_json_command("locate", r#"{"gps":true}"#))
        .await?;

    let id = env.start_simple(thing("van-9"), "locate", 30).await?;
    let seen = witness.expect_request(&topics, WAIT).await?;
    assert_eq!(seen.execution_id(), Some(id.as_str()));
    next_event(&mut obs, "locate", &id, "CREATED").await?;

    let mut dev = Device::connect(env.port(), options).await?;
    assert!(dev.session_present, "the broker kept the session");
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(req.topic, topics.request(&id, "json"));
    assert_eq!(req.payload.as_ref(), br#"{"gps":true}"#);
    assert!(req.message_expiry_secs.is_some_and(|s| s <= 30), "{req:?}");
    // The stored subscriptions also cover the replies.
    assert_accepted(
        &dev.report_json(&topics, &id, &json!({"status": "SUCCEEDED"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "locate", &id, "SUCCEEDED").await?;
    let e = env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert!(e.terminal);
    env.server.shutdown().await
}

/// WatchCommandExecutions filtered by command, by target, by statuses, and by all three
/// gets exactly the matching status changes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_filter_and_order_events() -> anyhow::Result<()> {
    use pb::ExecutionStatus as S;
    let mut env = Env::start("watch").await?;
    let t1 = Topics::thing("w-dev-1");
    let t2 = Topics::thing("w-dev-2");
    let mut obs = env.observer(&["w-a", "w-b"]).await?;
    let mut d1 = env.device("w-dev-1", &t1).await?;
    let mut d2 = env.device("w-dev-2", &t2).await?;
    env.create(static_json_command("w-a", r#"{"a":1}"#)).await?;
    env.create(static_json_command("w-b", r#"{"b":1}"#)).await?;

    let watch = |command: &str, target: Option<pb::Target>, statuses: Vec<S>| {
        pb::WatchCommandExecutionsRequest {
            command_id: command.into(),
            target,
            statuses: statuses.into_iter().map(|s| s as i32).collect(),
        }
    };
    let mut by_command = env
        .registry
        .watch_command_executions(watch("w-a", None, vec![]))
        .await?
        .into_inner();
    let mut by_target = env
        .registry
        .watch_command_executions(watch("", Some(thing("w-dev-1")), vec![]))
        .await?
        .into_inner();
    let mut by_status = env
        .registry
        .watch_command_executions(watch("", None, vec![S::Succeeded, S::Failed]))
        .await?
        .into_inner();
    let mut by_all = env
        .registry
        .watch_command_executions(watch("w-a", Some(thing("w-dev-1")), vec![S::Succeeded]))
        .await?
        .into_inner();

    // Each step waits for its event, so the streams see the steps in this order.
    let e1 = env.start_simple(thing("w-dev-1"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &e1, "CREATED").await?;
    let e2 = env.start_simple(thing("w-dev-1"), "w-b", 30).await?;
    next_event(&mut obs, "w-b", &e2, "CREATED").await?;
    assert_accepted(
        &d1.report_json(&t1, &e1, &json!({"status": "IN_PROGRESS"}))
            .await?,
        &e1,
    )?;
    next_event(&mut obs, "w-a", &e1, "IN_PROGRESS").await?;
    let e3 = env.start_simple(thing("w-dev-2"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &e3, "CREATED").await?;
    let fail = json!({"status": "FAILED", "statusReason": {"reasonCode": "NOPE"}});
    assert_accepted(&d1.report_json(&t1, &e2, &fail).await?, &e2)?;
    next_event(&mut obs, "w-b", &e2, "FAILED").await?;
    let ok = json!({"status": "SUCCEEDED", "result": {"n": {"s": "1"}}});
    assert_accepted(&d1.report_json(&t1, &e1, &ok).await?, &e1)?;
    next_event(&mut obs, "w-a", &e1, "SUCCEEDED").await?;
    assert_accepted(
        &d2.report_json(&t2, &e3, &json!({"status": "SUCCEEDED"}))
            .await?,
        &e3,
    )?;
    next_event(&mut obs, "w-a", &e3, "SUCCEEDED").await?;
    // A final change that every watch matches: whatever a stream yields before it is all it got.
    let marker = env.start_simple(thing("w-dev-1"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &marker, "CREATED").await?;
    assert_accepted(
        &d1.report_json(&t1, &marker, &json!({"status": "SUCCEEDED"}))
            .await?,
        &marker,
    )?;
    next_event(&mut obs, "w-a", &marker, "SUCCEEDED").await?;

    async fn until_marker(
        name: &str,
        stream: &mut tonic::Streaming<pb::CommandExecutionEvent>,
        marker: &str,
    ) -> anyhow::Result<Vec<pb::CommandExecutionEvent>> {
        let mut got = Vec::new();
        loop {
            let ev = tokio::time::timeout(WAIT, stream.message())
                .await
                .with_context(|| format!("watch {name}: no event within {WAIT:?}; got {got:?}"))??
                .with_context(|| format!("watch {name}: stream ended"))?;
            if ev.execution_id == marker {
                return Ok(got);
            }
            got.push(ev);
        }
    }
    let summary = |events: &[pb::CommandExecutionEvent]| -> Vec<(String, S)> {
        events
            .iter()
            .map(|e| {
                (
                    e.execution_id.clone(),
                    S::try_from(e.status).unwrap_or(S::Unspecified),
                )
            })
            .collect()
    };
    let o = |id: &String, s: S| (id.clone(), s);

    let got = until_marker("by command", &mut by_command, &marker).await?;
    assert_eq!(
        summary(&got),
        vec![
            o(&e1, S::Created),
            o(&e1, S::InProgress),
            o(&e3, S::Created),
            o(&e1, S::Succeeded),
            o(&e3, S::Succeeded)
        ]
    );
    assert!(got.iter().all(|e| e.command_id == "w-a"));
    let done = got
        .iter()
        .find(|e| e.execution_id == e1 && e.status == S::Succeeded as i32)
        .context("e1 SUCCEEDED")?;
    assert!(done.terminal);
    assert_eq!(done.target, Some(thing("w-dev-1")));
    assert_eq!(
        done.result.get("n").and_then(|v| v.value.clone()),
        Some(pb::result_value::Value::S("1".into()))
    );
    assert!(done.timestamp.is_some());
    assert!(!got[0].terminal && !got[1].terminal);

    let got = until_marker("by target", &mut by_target, &marker).await?;
    assert_eq!(
        summary(&got),
        vec![
            o(&e1, S::Created),
            o(&e2, S::Created),
            o(&e1, S::InProgress),
            o(&e2, S::Failed),
            o(&e1, S::Succeeded)
        ]
    );
    assert_eq!(
        got[3]
            .status_reason
            .as_ref()
            .map(|r| r.reason_code.as_str()),
        Some("NOPE")
    );

    let got = until_marker("by status", &mut by_status, &marker).await?;
    assert_eq!(
        summary(&got),
        vec![
            o(&e2, S::Failed),
            o(&e1, S::Succeeded),
            o(&e3, S::Succeeded)
        ]
    );

    let got = until_marker("by command, target and status", &mut by_all, &marker).await?;
    assert_eq!(summary(&got), vec![o(&e1, S::Succeeded)]);
    // An open Watch stream keeps the server's graceful shutdown waiting (see the report of
    // `stop_returns_with_an_open_watch_stream`): close them first.
    drop((by_command, by_target, by_status, by_all));
    env.server.shutdown().await
}

/// StartCommandExecution is idempotent on client_token: the same request returns the same
/// execution and delivers once; a different request with the token is ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_start_retries() -> anyhow::Result<()> {
    let mut env = Env::start("idempotent").await?;
    let topics = Topics::thing("valve-2");
    let mut dev = env.device("valve-2", &topics).await?;
    let template = r#"{"open": "${aws:iot:commandexecution::parameter:pct}"}"#;
    let params = vec![parameter("pct", pb::ParameterType::Integer, None)];
    env.create(template_command(
        "open",
        template,
        pb::OutputFormat::Json,
        params,
    ))
    .await?;
    let request = |pct: i32, token: &str| {
        let mut r = start_request(thing("valve-2"), "open", 30);
        r.parameters = HashMap::from([("pct".to_string(), value(V::I(pct)))]);
        r.client_token = token.into();
        r
    };

    let first = env.start_execution(request(40, "retry-1")).await?;
    let again = env.start_execution(request(40, "retry-1")).await?;
    assert_eq!(first, again, "a retry returns the same execution");
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

    // One delivery: the next request after the first is a new execution's.
    let req = dev.expect_request(&topics, WAIT).await?;
    assert_eq!(
        (req.execution_id(), req.payload.as_ref()),
        (Some(first.as_str()), &br#"{"open":40}"#[..])
    );
    let other = env.start_execution(request(41, "retry-2")).await?;
    assert_ne!(other, first);
    let req = dev.expect_request(&topics, WAIT).await?;
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

    // A token is scoped to its target.
    let mut elsewhere = request(40, "retry-1");
    elsewhere.target = Some(thing("valve-3"));
    let third = env.start_execution(elsewhere).await?;
    assert_ne!(third, first);
    env.server.shutdown().await
}

/// After a restart on the same data directory, executions are still readable, a live
/// execution's timer still fires, device reports are checked against the rebuilt state,
/// and client tokens are remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_executions_and_timers() -> anyhow::Result<()> {
    let mut env = Env::start("restart").await?;
    let topics = Topics::thing("gate-5");
    let mut obs = env.observer(&["open-gate"]).await?;
    let mut dev = env.device("gate-5", &topics).await?;
    env.create(static_json_command("open-gate", r#"{"open":true}"#))
        .await?;

    let done = env.start_simple(thing("gate-5"), "open-gate", 30).await?;
    let ok = json!({"status": "SUCCEEDED", "result": {"state": {"s": "open"}}});
    assert_accepted(&dev.report_json(&topics, &done, &ok).await?, &done)?;
    next_event(&mut obs, "open-gate", &done, "CREATED").await?;
    next_event(&mut obs, "open-gate", &done, "SUCCEEDED").await?;
    let mut live_req = start_request(thing("gate-5"), "open-gate", 3);
    live_req.client_token = "restart-token".into();
    let live = env.start_execution(live_req.clone()).await?;
    next_event(&mut obs, "open-gate", &live, "CREATED").await?;
    let live_before = env.get(&live, true).await?;
    let done_before = env.get(&done, true).await?;
    drop((dev, obs));

    let stopping = std::time::Instant::now();
    let dir = env.server.stop().await?;
    let mut args = test_args("restart");
    let _ = std::fs::remove_dir_all(&args.data_dir);
    args.data_dir = dir;
    let mut env = Env::with(Server::start_with(args).await?).await?;
    let mut obs = env.observer(&["open-gate"]).await?;
    let mut dev = env.device("gate-5", &topics).await?;
    let restart = stopping.elapsed();

    assert_unchanged(&done_before, &env.get(&done, true).await?)?;
    let e = env.get(&live, true).await?;
    assert_eq!(e.created_at, live_before.created_at);
    // The timer is due 3 s after the start; a restart takes a fraction of that.
    assert_eq!(
        status_of(&e),
        pb::ExecutionStatus::Created,
        "still live after a restart that took {restart:?} (if that is over 3 s the check cannot be made)"
    );
    // The same request with the same token is still the same execution.
    assert_eq!(env.start_execution(live_req).await?, live);

    // The timer, rebuilt from the log, fires.
    let e = wait_status(&mut env, &mut obs, &live, pb::ExecutionStatus::TimedOut).await?;
    assert_eq!(reason_code(&e), Some("$NO_RESPONSE_FROM_DEVICE"));
    assert!(!e.terminal && e.completed_at.is_none());
    let timed_out_at = millis(e.last_updated_at.as_ref()).unwrap_or(0);
    assert!(
        timed_out_at >= millis(e.created_at.as_ref()).unwrap_or(i64::MAX) + 3000,
        "{e:?}"
    );

    // Device reports meet the rebuilt state.
    let reply = dev
        .report_json(&topics, &done, &json!({"status": "FAILED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &done)?;
    assert_accepted(
        &dev.report_json(&topics, &live, &json!({"status": "SUCCEEDED"}))
            .await?,
        &live,
    )?;
    let e = wait_status(&mut env, &mut obs, &live, pb::ExecutionStatus::Succeeded).await?;
    assert!(e.terminal && e.completed_at.is_some());
    env.server.shutdown().await
}
