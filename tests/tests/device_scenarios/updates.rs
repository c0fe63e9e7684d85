//! Device updates that are accepted: progress, success with a result, failure and
//! rejection, in JSON and CBOR, over MQTT 5 and 3.1.1; and the terminal states they lead to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ciborium::Value as Cbor;
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::parameter_value::Value as V;
use fleetcmd_e2e::device::{Format, Message, Version, cbor_to_json, to_cbor};
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{WAIT, client, millis, thing, value};
use serde_json::json;

use crate::requests::{configure, configure_start};
use crate::{Result, given_a_client_and_its_thing_namesake, given_a_legacy_device};

/// `reboot` started on `lamp-1` (30 s), its request received and its CREATED event seen.
async fn given_a_delivered_execution(
    name: &str,
) -> anyhow::Result<(Scene, String, serde_json::Value)> {
    let mut scene =
        Scene::thing(name, "lamp-1", "reboot", r#"{"action":"reboot","delay":0}"#).await?;
    let (id, created) = scene.delivered(30).await?;
    Ok((scene, id, created))
}

const PROGRESS: &str = r#"{"status": "IN_PROGRESS", "statusReason": {"reasonCode": "DOWNLOADING", "reasonDescription": "50%"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_is_accepted_announced_and_readable_with_its_reason() -> Result {
    let (mut scene, id, _) = given_a_delivered_execution("progress").await?;

    let reply = scene.report(&id, &serde_json::from_str(PROGRESS)?).await?;

    assert_accepted(&reply, &id)?;
    let ev = scene.next_event(&id, "IN_PROGRESS").await?;
    assert_eq!(
        ev["statusReason"],
        json!({"reasonCode": "DOWNLOADING", "reasonDescription": "50%"})
    );
    let e = scene.env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::InProgress);
    assert_eq!(reason_code(&e), Some("DOWNLOADING"));
    assert_eq!((e.terminal, e.completed_at), (false, None));
    scene.stop().await
}

/// The edge answers `/accepted` only once the update is readable: a Get made as soon as the
/// device has the reply, before any event is awaited, already shows it, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_right_after_accepted_shows_the_update() -> Result {
    let (mut scene, id, _) = given_a_delivered_execution("read-after-accepted").await?;
    let reply = scene.report(&id, &serde_json::from_str(PROGRESS)?).await?;
    assert_accepted(&reply, &id)?;
    let e = scene.env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::InProgress);
    assert_eq!(reason_code(&e), Some("DOWNLOADING"));

    let done = json!({"status": "SUCCEEDED"});
    assert_accepted(&scene.report(&id, &done).await?, &id)?;
    let e = scene.env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert!(e.terminal, "terminal as soon as /accepted is out");
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_with_a_result_is_terminal_announced_and_readable() -> Result {
    let (mut scene, id, created) = given_a_delivered_execution("success").await?;
    assert_accepted(
        &scene.report(&id, &serde_json::from_str(PROGRESS)?).await?,
        &id,
    )?;
    scene.next_event(&id, "IN_PROGRESS").await?;
    let done = json!({"status": "SUCCEEDED", "result": {
        "s": {"s": "rebooted"}, "b": {"b": true}, "bin": {"bin": BASE64.encode([0u8, 1, 254, 255])}
    }});

    assert_accepted(&scene.report(&id, &done).await?, &id)?;

    let ev = scene.next_event(&id, "SUCCEEDED").await?;
    assert_eq!(
        ev["result"], done["result"],
        "fleetcmd adds the result to events"
    );
    assert!(ev["timestamp"].as_i64() >= created["timestamp"].as_i64());
    let e = scene.env.get(&id, true).await?;
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
    let completed = millis(e.completed_at.as_ref()).expect("completed_at set on SUCCEEDED");
    assert!(completed >= millis(e.created_at.as_ref()).unwrap_or(i64::MAX));
    assert!(millis(e.started_at.as_ref()).is_some());
    let without = scene.env.get(&id, false).await?;
    assert!(
        without.result.is_empty(),
        "include_result=false hides the result"
    );
    assert_eq!(status_of(&without), pb::ExecutionStatus::Succeeded);
    scene.stop().await
}

// ---- failed and rejected --------------------------------------------------------------------

const FAIL: &str = r#"{"status": "FAILED", "statusReason": {"reasonCode": "VALVE_STUCK", "reasonDescription": "valve 3 did not open"}}"#;

/// `flush` started twice on `pump-1` (30 s), both CREATED: the first is to fail, the second
/// to be rejected by the device.
async fn given_two_executions_to_end(name: &str) -> anyhow::Result<(Scene, String, String)> {
    let mut scene = Scene::thing(name, "pump-1", "flush", r#"{"flush":true}"#).await?;
    let failed = scene.start(30).await?;
    let rejected = scene.start(30).await?;
    scene.next_event(&failed, "CREATED").await?;
    scene.next_event(&rejected, "CREATED").await?;
    Ok((scene, failed, rejected))
}

/// The device reports FAILED (accepted, announced with its reason); returns the record.
async fn fail(scene: &mut Scene, id: &str) -> anyhow::Result<pb::CommandExecution> {
    let fail: serde_json::Value = serde_json::from_str(FAIL)?;
    assert_accepted(&scene.report(id, &fail).await?, id)?;
    let ev = scene.next_event(id, "FAILED").await?;
    assert_eq!(ev["statusReason"], fail["statusReason"]);
    scene.env.get(id, true).await
}

/// The device reports REJECTED (accepted, announced); returns the record.
async fn reject(scene: &mut Scene, id: &str) -> anyhow::Result<pb::CommandExecution> {
    let reject = json!({"status": "REJECTED", "statusReason": {"reasonCode": "UNSUPPORTED"}});
    assert_accepted(&scene.report(id, &reject).await?, id)?;
    scene.next_event(id, "REJECTED").await?;
    scene.env.get(id, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_is_terminal_and_keeps_its_reason() -> Result {
    let (mut scene, failed, _) = given_two_executions_to_end("failed").await?;

    let e = fail(&mut scene, &failed).await?;

    assert_ended(&e, pb::ExecutionStatus::Failed);
    assert_eq!(
        e.status_reason,
        Some(pb::StatusReason {
            reason_code: "VALVE_STUCK".into(),
            reason_description: "valve 3 did not open".into()
        })
    );
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_is_terminal_and_keeps_its_reason() -> Result {
    let (mut scene, _, rejected) = given_two_executions_to_end("rejected").await?;

    let r = reject(&mut scene, &rejected).await?;

    assert_ended(&r, pb::ExecutionStatus::Rejected);
    assert_eq!(reason_code(&r), Some("UNSUPPORTED"));
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_after_failed_or_rejected_are_refused_and_announce_nothing() -> Result {
    let (mut scene, failed, rejected) = given_two_executions_to_end("after-terminal").await?;
    let e = fail(&mut scene, &failed).await?;
    let r = reject(&mut scene, &rejected).await?;

    for (id, was, before) in [(&failed, "FAILED", &e), (&rejected, "REJECTED", &r)] {
        for status in ["SUCCEEDED", "IN_PROGRESS", "TIMED_OUT"] {
            let reply = scene.report(id, &json!({ "status": status })).await?;
            let body = assert_rejected(&reply, "TerminalStateReached", id)?;
            assert_eq!(reply.message.topic, scene.topics.rejected(id, Format::Json));
            let msg = body["errorMessage"].as_str().unwrap_or_default();
            assert!(msg.contains(status) && msg.contains(was), "{msg}");
        }
        assert_unchanged(before, &scene.env.get(id, true).await?)?;
    }

    // No event came of the refused updates: the next event is a marker's.
    let marker = scene.start(30).await?;
    scene.next_event(&marker, "CREATED").await?;
    let stray: Vec<Message> = scene.obs.take_received();
    assert!(stray.is_empty(), "no events for refused updates: {stray:?}");
    scene.stop().await
}

// ---- CBOR -----------------------------------------------------------------------------------

fn text(s: &str) -> Cbor {
    Cbor::Text(s.into())
}

/// `configure` (a CBOR template) started on `tag-1`, delivered, CREATED seen.
async fn given_a_cbor_execution(name: &str) -> anyhow::Result<(Scene, String)> {
    let mut scene = Scene::given(name, thing("tag-1"), Version::V5, configure()).await?;
    let id = scene.env.start_execution(configure_start()).await?;
    scene.dev.expect_request(&scene.topics, WAIT).await?;
    scene.next_event(&id, "CREATED").await?;
    Ok((scene, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbor_updates_are_answered_in_cbor_and_their_bin_results_are_bytes() -> Result {
    let (mut scene, id) = given_a_cbor_execution("cbor-updates").await?;
    let progress = to_cbor(&Cbor::Map(vec![
        (text("status"), text("IN_PROGRESS")),
        (text("clientToken"), text("c-1")),
    ]));
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

    let reply = scene
        .dev
        .report(&scene.topics, &id, Format::Cbor, progress)
        .await?;

    assert!(reply.accepted, "{reply:?}");
    assert_eq!(
        reply.message.topic,
        scene.topics.accepted(&id, Format::Cbor)
    );
    assert_eq!(
        reply.message.cbor()?,
        Cbor::Map(vec![
            (text("executionId"), text(&id)),
            (text("clientToken"), text("c-1"))
        ]),
        "the accepted reply is CBOR"
    );
    scene.next_event(&id, "IN_PROGRESS").await?;

    let reply = scene
        .dev
        .report(&scene.topics, &id, Format::Cbor, done)
        .await?;

    assert!(reply.accepted, "{:?}", reply.body());
    let ev = scene.next_event(&id, "SUCCEEDED").await?;
    assert_eq!(
        ev["result"]["raw"],
        json!({"bin": "AP8="}),
        "events carry bin as base64"
    );
    let e = scene.env.get(&id, true).await?;
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
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_state_rejection_comes_in_cbor() -> Result {
    let (mut scene, id) = given_a_cbor_execution("cbor-terminal").await?;
    let done = to_cbor(&Cbor::Map(vec![(text("status"), text("SUCCEEDED"))]));
    let reply = scene
        .dev
        .report(&scene.topics, &id, Format::Cbor, done)
        .await?;
    assert!(reply.accepted);
    let again = to_cbor(&Cbor::Map(vec![(text("status"), text("FAILED"))]));

    let reply = scene
        .dev
        .report(&scene.topics, &id, Format::Cbor, again)
        .await?;

    assert_eq!(
        reply.message.topic,
        scene.topics.rejected(&id, Format::Cbor)
    );
    let body = cbor_to_json(&reply.message.cbor()?)?;
    assert_eq!(body["error"], "TerminalStateReached");
    scene.stop().await
}

// ---- MQTT 3.1.1 and client targets ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt311_device_completes_an_execution() -> Result {
    let mut scene = given_a_legacy_device("v311").await?;
    let (id, _) = scene.delivered(10).await?;
    let done = json!({"status": "SUCCEEDED", "result": {"rtt": {"s": "3ms"}}, "deviceId": "legacy-1", "executionId": id});

    assert_accepted(
        &scene.report(&id, &json!({"status": "IN_PROGRESS"})).await?,
        &id,
    )?;
    scene.next_event(&id, "IN_PROGRESS").await?;
    assert_accepted(&scene.report(&id, &done).await?, &id)?;
    scene.next_event(&id, "SUCCEEDED").await?;

    let e = scene.env.get(&id, true).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert_eq!(
        result_value(&e, "rtt"),
        Some(pb::result_value::Value::S("3ms".into()))
    );
    assert!(e.completed_at.is_some());
    let reply = scene.report(&id, &json!({"status": "FAILED"})).await?;
    assert_rejected(&reply, "TerminalStateReached", &id)?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_targets_update_is_answered_on_clients_topics_with_client_arns() -> Result {
    let (mut scene, ..) = given_a_client_and_its_thing_namesake("client-update").await?;
    let (id, _) = scene.delivered(10).await?;

    let reply = scene.report(&id, &json!({"status": "SUCCEEDED"})).await?;

    assert_accepted(&reply, &id)?;
    assert_eq!(
        reply.message.topic,
        format!("$aws/commands/clients/sensor-77/executions/{id}/response/accepted/json")
    );
    let ev = scene.next_event(&id, "SUCCEEDED").await?;
    assert_eq!(ev["targetArn"], format!("{ARN_PREFIX}:client/sensor-77"));
    let e = scene.env.get(&id, false).await?;
    assert_eq!(e.target, Some(client("sensor-77")));
    assert_eq!(e.target_arn, format!("{ARN_PREFIX}:client/sensor-77"));
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    scene.stop().await
}
