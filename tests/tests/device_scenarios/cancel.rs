//! CancelCommandExecution: CANCELED (terminal), the device is told on .../cancel/json, later
//! device updates and a second cancel are refused.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{WAIT, thing};
use serde_json::json;

/// `move` started on `arm-1`, delivered and reported IN_PROGRESS by the device.
async fn given_a_moving_arm(name: &str) -> anyhow::Result<(Scene, String)> {
    let mut scene = Scene::thing(name, "arm-1", "move", r#"{"x":1}"#).await?;
    let (id, _) = scene.delivered(30).await?;
    assert_accepted(
        &scene.report(&id, &json!({"status": "IN_PROGRESS"})).await?,
        &id,
    )?;
    scene.next_event(&id, "IN_PROGRESS").await?;
    Ok((scene, id))
}

fn emergency_stop() -> pb::StatusReason {
    pb::StatusReason {
        reason_code: "OPERATOR_ABORT".into(),
        reason_description: "emergency stop".into(),
    }
}

async fn cancel(
    env: &mut fleetcmd_e2e::Env,
    id: &str,
    reason: Option<pb::StatusReason>,
) -> Result<pb::CancelCommandExecutionResponse, tonic::Status> {
    env.dispatcher
        .cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: id.into(),
            target: reason.is_some().then(|| thing("arm-1")),
            status_reason: reason,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tells_the_device_and_is_terminal() -> crate::Result {
    let (mut scene, id) = given_a_moving_arm("cancel").await?;

    let r = cancel(&mut scene.env, &id, Some(emergency_stop())).await?;

    assert_eq!(
        (r.execution_id.as_str(), r.status),
        (id.as_str(), pb::ExecutionStatus::Canceled as i32)
    );
    let notice = scene
        .dev
        .expect_topic(&scene.topics.cancel(&id), WAIT)
        .await?;
    assert_eq!(
        notice.json()?,
        json!({"executionId": id, "status": "CANCELED", "statusReason": {"reasonCode": "OPERATOR_ABORT", "reasonDescription": "emergency stop"}})
    );
    assert_eq!(notice.content_type.as_deref(), Some("application/json"));
    let ev = scene.next_event(&id, "CANCELED").await?;
    assert_eq!(ev["statusReason"]["reasonCode"], "OPERATOR_ABORT");
    let e = scene.env.get(&id, true).await?;
    assert_ended(&e, pb::ExecutionStatus::Canceled);
    assert_eq!(e.status_reason, Some(emergency_stop()));
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cancel_device_updates_and_a_second_cancel_are_refused() -> crate::Result {
    let (mut scene, id) = given_a_moving_arm("cancel-final").await?;
    cancel(&mut scene.env, &id, Some(emergency_stop())).await?;
    let e = scene.env.get(&id, true).await?;

    let reply = scene.report(&id, &json!({"status": "SUCCEEDED"})).await?;
    let again = cancel(&mut scene.env, &id, None)
        .await
        .expect_err("a canceled execution cannot be canceled again");

    let body = assert_rejected(&reply, "TerminalStateReached", &id)?;
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("CANCELED"),
        "{body}"
    );
    assert_unchanged(&e, &scene.env.get(&id, true).await?)?;
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    scene.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_without_a_reason_gives_the_clouds_canceled() -> crate::Result {
    let (mut scene, _) = given_a_moving_arm("cancel-default").await?;
    let id2 = scene.start(30).await?;

    cancel(&mut scene.env, &id2, None).await?;

    let notice = scene
        .dev
        .expect_topic(&scene.topics.cancel(&id2), WAIT)
        .await?;
    assert_eq!(notice.json()?["statusReason"]["reasonCode"], "$CANCELED");
    scene.next_event(&id2, "CREATED").await?;
    scene.next_event(&id2, "CANCELED").await?;
    let e2 = scene.env.get(&id2, false).await?;
    assert_eq!(
        (status_of(&e2), reason_code(&e2)),
        (pb::ExecutionStatus::Canceled, Some("$CANCELED"))
    );
    scene.stop().await
}
