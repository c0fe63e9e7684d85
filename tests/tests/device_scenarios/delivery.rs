//! Durable delivery: an execution waits for its device. A device that was offline when its
//! executions started gets them, in start order, as soon as it subscribes to its requests,
//! with a clean session too (MQTT 5 and 3.1.1); one that drops before answering gets it
//! again on its next subscription; an execution that timed out meanwhile is never delivered.
//!
//! "Not delivered" is proven with a marker started after it: a device's waiting executions
//! are delivered in start order, so when the marker is the first request to arrive, the
//! earlier one was not sent.

use fleetcmd_e2e::device::{Device, DeviceOptions, Topics, Version};
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{Env, WAIT, static_json_command, thing};
use serde_json::json;

use crate::Result;

/// A server with `ping`, an observer of its status events, and nobody connected as `lamp-1`.
async fn given_an_offline_device(name: &str) -> anyhow::Result<(Env, Device, Topics)> {
    let mut env = Env::start(name).await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;
    let obs = env.observer(&["ping"]).await?;
    Ok((env, obs, Topics::thing("lamp-1")))
}

/// `lamp-1` connecting with a clean session and subscribing to its requests and replies.
async fn comes_online(env: &Env, version: Version, topics: &Topics) -> anyhow::Result<Device> {
    let options = match version {
        Version::V5 => DeviceOptions::v5("lamp-1"),
        Version::V311 => DeviceOptions::v311("lamp-1"),
    };
    let mut device = Device::connect(env.port(), options).await?;
    device.subscribe(&topics.device_filters()).await?;
    Ok(device)
}

/// The execution ids of the next `n` distinct requests `device` receives, in arrival order
/// (a device that subscribes to several request filters may see a request more than once).
async fn next_requests(
    device: &mut Device,
    topics: &Topics,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < n {
        let request = device.expect_request(topics, WAIT).await?;
        let id = request.execution_id().unwrap_or_default().to_owned();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_at_start_gets_its_executions_in_start_order_once_it_subscribes() -> Result
{
    for version in [Version::V5, Version::V311] {
        let name = format!("delivery-offline-{version:?}");
        let (mut env, _obs, topics) = given_an_offline_device(&name).await?;
        let mut started = Vec::new();
        for _ in 0..3 {
            started.push(env.start_simple(thing("lamp-1"), "ping", 60).await?);
        }
        let mut device = comes_online(&env, version, &topics).await?;
        assert_eq!(
            next_requests(&mut device, &topics, 3).await?,
            started,
            "{version:?}"
        );
        for id in &started {
            let reply = device
                .report_json(&topics, id, &json!({"status": "SUCCEEDED"}))
                .await?;
            assert_accepted(&reply, id)?;
        }
        device.disconnect().await?;
        env.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_drops_before_answering_gets_it_again_and_an_answered_one_never() -> Result {
    let (mut env, _obs, topics) = given_an_offline_device("delivery-again").await?;
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    let first = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    assert_eq!(
        next_requests(&mut device, &topics, 1).await?,
        std::slice::from_ref(&first)
    );
    // Gone without an answer (a clean session keeps nothing for it).
    device.disconnect().await?;
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    assert_eq!(
        next_requests(&mut device, &topics, 1).await?,
        std::slice::from_ref(&first)
    );
    let reply = device
        .report_json(&topics, &first, &json!({"status": "IN_PROGRESS"}))
        .await?;
    assert_accepted(&reply, &first)?;
    device.disconnect().await?;
    // Answered: it no longer waits. A later execution is the first to arrive.
    let marker = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    assert_eq!(next_requests(&mut device, &topics, 1).await?, [marker]);
    device.disconnect().await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_timed_out_while_its_device_was_offline_is_never_delivered() -> Result {
    let (mut env, mut obs, topics) = given_an_offline_device("delivery-timed-out").await?;
    let expired = env.start_simple(thing("lamp-1"), "ping", 1).await?;
    wait_status(
        &mut env,
        &mut obs,
        &expired,
        fleetcmd_contracts::pb::ExecutionStatus::TimedOut,
    )
    .await?;
    let marker = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    assert_eq!(next_requests(&mut device, &topics, 1).await?, [marker]);
    device.disconnect().await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lamp_toggled_five_times_while_offline_gets_only_the_last_toggle() -> Result {
    let mut env = Env::start("delivery-supersede").await?;
    env.create(fleetcmd_contracts::pb::CreateCommandRequest {
        supersede_pending: true,
        ..static_json_command("toggle", r#"{"toggle":true}"#)
    })
    .await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;
    let topics = Topics::thing("lamp-1");
    let ping = env.start_simple(thing("lamp-1"), "ping", 60).await?;
    let mut toggles = Vec::new();
    for _ in 0..5 {
        toggles.push(env.start_simple(thing("lamp-1"), "toggle", 60).await?);
    }
    let last = toggles.pop().unwrap_or_default();
    for older in &toggles {
        let e = env.get(older, false).await?;
        assert_ended(&e, fleetcmd_contracts::pb::ExecutionStatus::Canceled);
        assert_eq!(reason_code(&e), Some("$SUPERSEDED"), "{older}");
    }
    // Another command's execution is not superseded, and keeps its place in line.
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    assert_eq!(next_requests(&mut device, &topics, 2).await?, [ping, last]);
    device.disconnect().await?;
    env.stop().await
}

/// The requests `device` holds right now (arrived, not yet taken).
fn requests_held(device: &mut Device, topics: &Topics) -> Vec<String> {
    device
        .take_received()
        .iter()
        .filter(|m| topics.is_request(&m.topic))
        .filter_map(|m| m.execution_id().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_with_max_in_flight_one_gets_one_execution_at_a_time_in_start_order() -> Result {
    let (mut env, _obs, topics) = given_an_offline_device("delivery-one-at-a-time").await?;
    let mut things = env.server.things().await?;
    things
        .create_thing(fleetcmd_contracts::pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            max_in_flight: 1,
            ..Default::default()
        })
        .await?;
    let mut device = comes_online(&env, Version::V5, &topics).await?;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(env.start_simple(thing("lamp-1"), "ping", 60).await?);
    }
    // A repeat of a request already handled may still come (the subscription's delivery of
    // what waits can cross the start's own): devices de-duplicate by execution id, so does
    // this one.
    let mut done: Vec<String> = Vec::new();
    for (i, id) in started.iter().enumerate() {
        let next = loop {
            let request = device.expect_request(&topics, WAIT).await?;
            let got = request.execution_id().unwrap_or_default().to_owned();
            if !done.contains(&got) {
                break got;
            }
        };
        assert_eq!(&next, id, "execution {i} is the next to arrive");
        let reply = device
            .report_json(&topics, id, &json!({"status": "IN_PROGRESS"}))
            .await?;
        assert_accepted(&reply, id)?;
        // Still live: the next one waits. Its request would have come before this reply.
        let others: Vec<String> = requests_held(&mut device, &topics)
            .into_iter()
            .filter(|h| h != id && !done.contains(h))
            .collect();
        assert!(
            others.is_empty(),
            "{i}: {others:?} arrived while {id} is live"
        );
        let reply = device
            .report_json(&topics, id, &json!({"status": "SUCCEEDED"}))
            .await?;
        assert_accepted(&reply, id)?;
        done.push(id.clone());
    }
    device.disconnect().await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_default_limit_holds_a_bare_clients_second_execution_until_the_first_is_canceled()
-> Result {
    let mut env = Env::start_with(fleetcmd_e2e::ServeArgs {
        max_in_flight: Some(1),
        ..fleetcmd_e2e::test_args("delivery-default-limit")
    })
    .await?;
    env.create(static_json_command("ping", r#"{"ping":"pong"}"#))
        .await?;
    let topics = Topics::client("sensor-7");
    let mut device = Device::connect(env.port(), DeviceOptions::v5("sensor-7")).await?;
    device.subscribe(&topics.device_filters()).await?;
    let first = env
        .start_simple(fleetcmd_e2e::client("sensor-7"), "ping", 60)
        .await?;
    let second = env
        .start_simple(fleetcmd_e2e::client("sensor-7"), "ping", 60)
        .await?;
    assert_eq!(
        next_requests(&mut device, &topics, 1).await?,
        std::slice::from_ref(&first)
    );
    env.dispatcher
        .cancel_command_execution(fleetcmd_contracts::pb::CancelCommandExecutionRequest {
            execution_id: first.clone(),
            target: Some(fleetcmd_e2e::client("sensor-7")),
            ..Default::default()
        })
        .await?;
    // Held until now: the first's cancel notice is the next message, before the second's
    // request (which, sent at its start, would have come first). A repeat of the first's
    // request may come before it (the subscription's delivery of what waits can cross the
    // start's own; devices de-duplicate by execution id).
    let is_first = |m: &fleetcmd_e2e::device::Message| {
        topics.is_request(&m.topic) && m.execution_id() == Some(first.as_str())
    };
    let next = loop {
        let m = device.recv(WAIT).await?;
        if !is_first(&m) {
            break m;
        }
    };
    assert_eq!(next.topic, topics.cancel(&first));
    let after = loop {
        let m = device.expect_request(&topics, WAIT).await?;
        if !is_first(&m) {
            break m.execution_id().unwrap_or_default().to_owned();
        }
    };
    assert_eq!(after, second);
    device.disconnect().await?;
    env.stop().await
}
