//! The cloud timeout: TIMED_OUT ($NO_RESPONSE_FROM_DEVICE) is not terminal and has no
//! completed_at; IN_PROGRESS is then refused; a late SUCCEEDED, or a device TIMED_OUT,
//! settles it.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{WAIT, millis};
use serde_json::json;

use crate::Result;

/// Two `probe` executions on `slow-1` with a 1 s timeout (`late` and `settled`), both
/// timed out by the cloud.
async fn given_two_cloud_timeouts(name: &str) -> anyhow::Result<(Scene, String, String)> {
    let mut scene = Scene::thing(name, "slow-1", "probe", r#"{"probe":1}"#).await?;
    let late = scene.start(1).await?;
    let settled = scene.start(1).await?;
    for id in [&late, &settled] {
        let req = scene.dev.expect_request(&scene.topics, WAIT).await?;
        assert_eq!(req.execution_id(), Some(id.as_str()));
        // The edge sends 1 (never 0), but rmqtt rounds the remaining 0.99 s down to 0 and
        // then omits the property when it forwards; any other broker may pass the 1 through.
        assert!(req.message_expiry_secs.is_none_or(|s| s <= 1), "{req:?}");
    }
    for id in [&late, &settled] {
        let created = scene.next_event(id, "CREATED").await?;
        let ev = scene.next_event(id, "TIMED_OUT").await?;
        assert_eq!(ev["statusReason"]["reasonCode"], "$NO_RESPONSE_FROM_DEVICE");
        let waited =
            ev["timestamp"].as_i64().unwrap_or(0) - created["timestamp"].as_i64().unwrap_or(0);
        assert!(
            waited >= 1000,
            "timed out after {waited} ms, before the 1 s timeout"
        );
    }
    Ok((scene, late, settled))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_timeout_is_timed_out_but_not_terminal() -> Result {
    let (mut scene, late, settled) = given_two_cloud_timeouts("timeout").await?;
    for id in [&late, &settled] {
        let e = scene.env.get(id, true).await?;

        assert_eq!(status_of(&e), pb::ExecutionStatus::TimedOut);
        assert_eq!(reason_code(&e), Some("$NO_RESPONSE_FROM_DEVICE"));
        assert!(!e.terminal, "a cloud TIMED_OUT is not terminal");
        assert_eq!(
            e.completed_at, None,
            "no completed_at for a cloud TIMED_OUT"
        );
    }
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_after_a_cloud_timeout_is_refused_and_changes_nothing() -> Result {
    let (mut scene, late, _) = given_two_cloud_timeouts("timeout-in-progress").await?;
    let before = scene.env.get(&late, true).await?;

    let reply = scene
        .report(&late, &json!({"status": "IN_PROGRESS"}))
        .await?;

    assert_rejected(&reply, "InvalidStateTransition", &late)?;
    assert_unchanged(&before, &scene.env.get(&late, true).await?)?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_success_settles_a_cloud_timeout_for_good() -> Result {
    let (mut scene, late, _) = given_two_cloud_timeouts("timeout-late-success").await?;
    let done = json!({"status": "SUCCEEDED", "result": {"took_ms": {"s": "1500"}}});

    assert_accepted(&scene.report(&late, &done).await?, &late)?;

    scene.next_event(&late, "SUCCEEDED").await?;
    let e = scene.env.get(&late, true).await?;
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
    let reply = scene.report(&late, &json!({"status": "FAILED"})).await?;
    assert_rejected(&reply, "TerminalStateReached", &late)?;
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_own_timeout_after_the_clouds_is_terminal_and_replaces_the_reason() -> Result {
    let (mut scene, _, settled) = given_two_cloud_timeouts("timeout-device").await?;
    let own = json!({"status": "TIMED_OUT", "statusReason": {"reasonCode": "DEVICE_TIMEOUT", "reasonDescription": "gave up"}});

    assert_accepted(&scene.report(&settled, &own).await?, &settled)?;

    let ev = scene.next_event(&settled, "TIMED_OUT").await?;
    assert_eq!(ev["statusReason"]["reasonCode"], "DEVICE_TIMEOUT");
    let e = scene.env.get(&settled, true).await?;
    assert_ended(&e, pb::ExecutionStatus::TimedOut);
    assert_eq!(reason_code(&e), Some("DEVICE_TIMEOUT"));
    let reply = scene
        .report(&settled, &json!({"status": "SUCCEEDED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &settled)?;
    scene.stop().await
}
