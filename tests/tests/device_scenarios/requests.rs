//! Requests: what a device receives, on which topic, with which properties.

use std::collections::HashMap;

use anyhow::Context;
use ciborium::Value as Cbor;
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::parameter_value::Value as V;
use fleetcmd_e2e::api::{condition, op_range};
use fleetcmd_e2e::device::{Device, DeviceOptions, Topics, Version};
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{
    Env, WAIT, millis, parameter, static_command, static_json_command, template_command, thing,
    value,
};

use crate::{Result, given_a_client_and_its_thing_namesake, given_a_legacy_device};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_json_request_arrives_exactly_with_its_content_type_and_expiry() -> Result {
    let payload = r#"{"action":"reboot","delay":0}"#;
    let mut scene = Scene::thing("static-request", "lamp-1", "reboot", payload).await?;

    let id = scene.start(30).await?;

    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(req.topic, scene.topics.request(&id, "json"));
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
    let created = scene.next_event(&id, "CREATED").await?;
    assert_eq!(created["targetArn"], format!("{ARN_PREFIX}:thing/lamp-1"));
    assert!(
        created.get("statusReason").is_none(),
        "CREATED has no reason: {created}"
    );
    let e = scene.env.get(&id, true).await?;
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
    scene.stop().await
}

/// `set-level`: a JSON template of typed parameters, with defaults, conditions, embedded
/// text and the timeout.
fn set_level() -> pb::CreateCommandRequest {
    let template = r#"{"level": "${aws:iot:commandexecution::parameter:level}", "label": "${aws:iot:commandexecution::parameter:label}", "on": "${aws:iot:commandexecution::parameter:on}", "blob": "${aws:iot:commandexecution::parameter:blob}", "timeout": "${aws:iot:commandexecution::executionTimeoutSec}", "note": "level ${aws:iot:commandexecution::parameter:level}"}"#;
    let mut level = parameter("level", pb::ParameterType::Integer, None);
    level.value_conditions = vec![condition(
        pb::ComparisonOperator::InRange,
        op_range("0", "100"),
    )];
    let params = vec![
        level,
        parameter("label", pb::ParameterType::String, None),
        parameter("on", pb::ParameterType::Boolean, Some(V::B(true))),
        parameter("blob", pb::ParameterType::Binary, None),
    ];
    template_command("set-level", template, pb::OutputFormat::Json, params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_template_renders_typed_parameters_defaults_and_the_timeout() -> Result {
    let mut scene = Scene::given("template", thing("lamp-1"), Version::V5, set_level()).await?;
    let mut start = start_request(thing("lamp-1"), "set-level", 20);
    start.parameters = HashMap::from([
        ("level".to_string(), value(V::I(80))),
        ("label".to_string(), value(V::S("kitchen".into()))),
        ("blob".to_string(), value(V::Bin(vec![1, 2, 3]))),
    ]);
    let mut too_high = start.clone();
    too_high.parameters.insert("level".into(), value(V::I(120)));

    let err = scene
        .env
        .dispatcher
        .start_command_execution(too_high)
        .await
        .expect_err("level 120 is outside 0..100");
    let id2 = scene.env.start_execution(start).await?;

    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("level"), "{}", err.message());
    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(
        req.topic,
        scene.topics.request(&id2, "json"),
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
    scene.next_event(&id2, "CREATED").await?;
    let e = scene.env.get(&id2, false).await?;
    assert_eq!(e.parameters.get("level"), Some(&value(V::I(80))));
    assert_eq!(
        e.parameters.get("on"),
        Some(&value(V::B(true))),
        "the default actually used is recorded"
    );
    assert_eq!(e.parameters.len(), 4);
    assert_accepted(
        &scene
            .report(&id2, &serde_json::json!({"status": "SUCCEEDED"}))
            .await?,
        &id2,
    )?;
    scene.next_event(&id2, "SUCCEEDED").await?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_types_go_to_the_suffixless_topic_with_their_content_type() -> Result {
    let mut scene = Scene::given(
        "raw-request",
        thing("lamp-1"),
        Version::V5,
        static_command("blink", b"BLINK 3", "text/plain"),
    )
    .await?;

    let id3 = scene.start(10).await?;

    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(req.topic, scene.topics.request(&id3, ""));
    assert_eq!(req.payload.as_ref(), b"BLINK 3");
    assert_eq!(req.content_type.as_deref(), Some("text/plain"));
    assert!(
        req.message_expiry_secs
            .is_some_and(|s| (8..=10).contains(&s)),
        "{req:?}"
    );
    scene.next_event(&id3, "CREATED").await?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cbor_template_is_delivered_as_cbor_on_request_cbor() -> Result {
    let mut scene = Scene::given("cbor-request", thing("tag-1"), Version::V5, configure()).await?;

    let id = scene.env.start_execution(configure_start()).await?;

    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(req.topic, scene.topics.request(&id, "cbor"));
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
    scene.next_event(&id, "CREATED").await?;
    scene.stop().await
}

/// `configure`: a CBOR template of a LONG `level` (default 7), a BINARY `key` and a STRING
/// `name`.
pub fn configure() -> pb::CreateCommandRequest {
    let template = r#"{"level": "${aws:iot:commandexecution::parameter:level}", "key": "${aws:iot:commandexecution::parameter:key}", "name": "${aws:iot:commandexecution::parameter:name}", "t": "${aws:iot:commandexecution::executionTimeoutSec}"}"#;
    let params = vec![
        parameter("level", pb::ParameterType::Long, Some(V::L(7))),
        parameter("key", pb::ParameterType::Binary, None),
        parameter("name", pb::ParameterType::String, None),
    ];
    template_command("configure", template, pb::OutputFormat::Cbor, params)
}

/// A start of `configure` on `thing/tag-1` with a 15 s timeout.
pub fn configure_start() -> pb::StartCommandExecutionRequest {
    let mut start = start_request(thing("tag-1"), "configure", 15);
    start.parameters = HashMap::from([
        (
            "key".to_string(),
            value(V::Bin(vec![0xde, 0xad, 0xbe, 0xef])),
        ),
        ("name".to_string(), value(V::S("tag".into()))),
    ]);
    start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt311_device_gets_the_bare_payload() -> Result {
    let mut scene = given_a_legacy_device("v311-request").await?;

    let id = scene.start(10).await?;

    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(req.topic, scene.topics.request(&id, "json"));
    assert_eq!(req.payload.as_ref(), br#"{"ping":"pong"}"#);
    assert_eq!(
        (req.content_type, req.message_expiry_secs),
        (None, None),
        "MQTT 3.1.1 has no properties"
    );
    scene.next_event(&id, "CREATED").await?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_target_gets_its_request_on_clients_topics_but_its_thing_namesake_not() -> Result {
    let (mut scene, as_thing, mut thing_dev) =
        given_a_client_and_its_thing_namesake("client-request").await?;

    let id = scene.start(10).await?;
    let thing_id = scene
        .env
        .start_simple(thing("sensor-77"), "sample", 10)
        .await?;

    let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
    assert_eq!(
        req.topic,
        format!("$aws/commands/clients/sensor-77/executions/{id}/request/json")
    );
    let ev = scene.next_event(&id, "CREATED").await?;
    assert_eq!(ev["targetArn"], format!("{ARN_PREFIX}:client/sensor-77"));
    // The thing of the same name got no request for the client's execution: its first
    // request is the thing execution started afterwards.
    let req = thing_dev.expect_request(&as_thing, WAIT).await?;
    assert_eq!(req.execution_id(), Some(thing_id.as_str()));
    scene.stop().await
}

/// A persistent-session device that is offline when the execution starts gets the queued
/// request when it reconnects, and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_the_queued_request_when_it_reconnects() -> Result {
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
        &dev.report_json(&topics, &id, &serde_json::json!({"status": "SUCCEEDED"}))
            .await?,
        &id,
    )?;
    next_event(&mut obs, "locate", &id, "SUCCEEDED").await?;
    let e = env.get(&id, false).await?;
    assert_eq!(status_of(&e), pb::ExecutionStatus::Succeeded);
    assert!(e.terminal);
    env.stop().await
}
