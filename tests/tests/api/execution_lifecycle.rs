//! Executions: delete (terminal ones only) and cancel.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, thing};
use pb::ExecutionStatus as St;
use tonic::Code;

use crate::{Result, given};

fn delete(id: &str, target: Option<pb::Target>) -> pb::DeleteCommandExecutionRequest {
    pb::DeleteCommandExecutionRequest {
        execution_id: id.into(),
        target,
    }
}

fn cancel(
    id: &str,
    target: Option<pb::Target>,
    reason: Option<(&str, &str)>,
) -> pb::CancelCommandExecutionRequest {
    pb::CancelCommandExecutionRequest {
        execution_id: id.into(),
        target,
        status_reason: reason.map(|(c, d)| pb::StatusReason {
            reason_code: c.into(),
            reason_description: d.into(),
        }),
    }
}

/// `reboot` and one CREATED execution of it on `thing/t1` (its id).
async fn given_a_created_execution(
    name: &str,
) -> anyhow::Result<(Server, Registry, Dispatcher, String)> {
    let (server, reg, mut disp) = given(name, &["reboot"]).await?;
    let created = start(&mut disp, "reboot", thing("t1")).await?;
    Ok((server, reg, disp, created))
}

// ---- delete ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_created_execution_is_refused_as_not_terminal() -> Result {
    let (server, mut reg, _, created) = given_a_created_execution("delete-created").await?;

    let s = expect_code(
        reg.delete_command_execution(delete(&created, None)).await,
        Code::FailedPrecondition,
        &[&created, "CREATED", "terminal"],
    );

    assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
    assert_eq!(
        get_execution(&mut reg, &created).await?.status(),
        St::Created
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_execution_is_deleted_and_then_gone_everywhere() -> Result {
    let (server, mut reg, mut disp, created) = given_a_created_execution("delete-settled").await?;
    let t1 = thing("t1");
    let done = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &done, St::Succeeded).await?;

    expect_code(
        reg.delete_command_execution(delete(&done, Some(thing("t2"))))
            .await,
        Code::NotFound,
        &[&done],
    );
    expect_invalid(
        reg.delete_command_execution(delete(&done, Some(target_of_kind(9, "t1"))))
            .await,
        "target.kind",
        &["9"],
    );
    expect_invalid(
        reg.delete_command_execution(delete("x y", None)).await,
        "execution_id",
        &["' '"],
    );
    assert_eq!(
        get_execution(&mut reg, &done).await?.status(),
        St::Succeeded,
        "refused deletes changed nothing"
    );

    reg.delete_command_execution(delete(&done, Some(t1.clone())))
        .await?;

    assert_no_execution(&mut reg, &done).await;
    assert_eq!(all_execution_ids(&mut reg).await?, vec![created.clone()]);
    expect_code(
        reg.delete_command_execution(delete(&done, None)).await,
        Code::NotFound,
        &[&done],
    );
    expect_code(
        disp.cancel_command_execution(cancel(&done, None, None))
            .await,
        Code::NotFound,
        &[&done],
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_timed_out_execution_is_terminal_and_deletable() -> Result {
    let (server, mut reg, mut disp) = given("delete-device-timeout", &["reboot"]).await?;
    let t1 = thing("t1");
    let device_timeout = start(&mut disp, "reboot", t1.clone()).await?;

    settle(&server, &mut reg, &t1, &device_timeout, St::TimedOut).await?;

    let e = get_execution(&mut reg, &device_timeout).await?;
    assert!(e.terminal && e.completed_at.is_some());
    reg.delete_command_execution(delete(&device_timeout, None))
        .await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_timed_out_execution_is_deletable_only_once_settled() -> Result {
    let (server, mut reg, mut disp, created) =
        given_a_created_execution("delete-cloud-timeout").await?;
    let mut watch = Watch::open(&mut reg, watch_request("reboot", None, &[St::TimedOut])).await?;
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 1,
        ..start_request("reboot", thing("t3"))
    };
    let timed_out = start_execution(&mut disp, req).await?;

    let event = watch.until(&timed_out, St::TimedOut).await?;

    assert!(!event.terminal);
    let e = get_execution(&mut reg, &timed_out).await?;
    assert_eq!(
        (e.status(), e.terminal, e.completed_at),
        (St::TimedOut, false, None)
    );
    assert_eq!(
        e.status_reason.map(|r| r.reason_code).as_deref(),
        Some("$NO_RESPONSE_FROM_DEVICE")
    );
    expect_code(
        reg.delete_command_execution(delete(&timed_out, None)).await,
        Code::FailedPrecondition,
        &[&timed_out, "TIMED_OUT", "not terminal"],
    );
    assert_eq!(
        get_execution(&mut reg, &timed_out).await?.status(),
        St::TimedOut
    );
    // Settled by a cancel, it can go.
    let canceled = disp
        .cancel_command_execution(cancel(&timed_out, None, None))
        .await?
        .into_inner();
    assert_eq!(canceled.status(), St::Canceled);
    reg.delete_command_execution(delete(&timed_out, Some(thing("t3"))))
        .await?;
    assert_no_execution(&mut reg, &timed_out).await;
    assert_eq!(all_execution_ids(&mut reg).await?, vec![created]);
    // Running::stop waits for open Watch streams, so end ours first.
    drop(watch);
    server.shutdown().await
}

// ---- cancel ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_created_execution_gives_the_default_reason() -> Result {
    let (server, mut reg, mut disp, a) = given_a_created_execution("cancel-created").await?;
    let before = now_ms();

    let r = disp
        .cancel_command_execution(cancel(&a, None, None))
        .await?
        .into_inner();

    assert_eq!(
        (r.execution_id.as_str(), r.status()),
        (a.as_str(), St::Canceled)
    );
    let e = get_execution(&mut reg, &a).await?;
    assert_eq!((e.status(), e.terminal), (St::Canceled, true));
    assert!(ms(&e.completed_at) >= before && ms(&e.completed_at) <= now_ms());
    assert_eq!(e.last_updated_at, e.completed_at);
    assert_eq!(
        e.status_reason.map(|r| r.reason_code).as_deref(),
        Some("$CANCELED")
    );
    server.shutdown().await
}

/// `reboot`, and one execution of it on `thing/t1` that its device reported IN_PROGRESS.
async fn given_an_execution_in_progress(
    name: &str,
) -> anyhow::Result<(Server, Registry, Dispatcher, String)> {
    let (server, mut reg, disp, b) = given_a_created_execution(name).await?;
    settle(&server, &mut reg, &thing("t1"), &b, St::InProgress).await?;
    Ok((server, reg, disp, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_execution_in_progress_keeps_the_callers_reason() -> Result {
    let (server, mut reg, mut disp, b) = given_an_execution_in_progress("cancel-running").await?;

    // With the matching target.
    disp.cancel_command_execution(cancel(
        &b,
        Some(thing("t1")),
        Some(("OPERATOR_ABORT", "wrong device")),
    ))
    .await?;

    let e = get_execution(&mut reg, &b).await?;
    assert_eq!(e.status(), St::Canceled);
    assert_eq!(
        e.status_reason,
        Some(pb::StatusReason {
            reason_code: "OPERATOR_ABORT".into(),
            reason_description: "wrong device".into()
        })
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_of_a_canceled_execution_has_its_next_update_refused() -> Result {
    let (server, _, mut disp, b) = given_an_execution_in_progress("cancel-device").await?;
    disp.cancel_command_execution(cancel(&b, None, None))
        .await?;

    let (accepted, reply) = device_update(
        &server,
        &thing("t1"),
        &b,
        serde_json::json!({"status": "SUCCEEDED"}),
    )
    .await?;

    assert!(!accepted, "{reply}");
    assert_eq!(reply["error"], "TerminalStateReached");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_terminal_execution_is_failed_precondition_and_changes_nothing() -> Result {
    let (server, mut reg, mut disp, a) = given_a_created_execution("cancel-terminal").await?;
    let t1 = thing("t1");
    disp.cancel_command_execution(cancel(&a, None, None))
        .await?;
    let c = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &c, St::Succeeded).await?;

    // Canceled and succeeded.
    for id in [&a, &c] {
        let before = get_execution(&mut reg, id).await?;
        let s = expect_code(
            disp.cancel_command_execution(cancel(id, None, None)).await,
            Code::FailedPrecondition,
            &[id, "already completed", before.status().as_str_name()],
        );
        assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
        assert_eq!(get_execution(&mut reg, id).await?, before);
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_unknown_or_malformed_request_is_refused_and_changes_nothing() -> Result {
    let (server, mut reg, mut disp, d) = given_a_created_execution("cancel-errors").await?;
    expect_code(
        disp.cancel_command_execution(cancel(&d, Some(thing("t2")), None))
            .await,
        Code::NotFound,
        &[&d],
    );
    expect_code(
        disp.cancel_command_execution(cancel("0190aaaa-0000-7000-8000-000000000000", None, None))
            .await,
        Code::NotFound,
        &["0190aaaa-0000-7000-8000-000000000000"],
    );
    let (long_code, long_description) = ("C".repeat(65), "d".repeat(1025));
    let reason_code = "status_reason.reason_code";
    // (the request, the field named, what the message says)
    let cases: [(pb::CancelCommandExecutionRequest, &str, &[&str]); 7] = [
        (cancel("", None, None), "execution_id", &["empty"]),
        (
            cancel(&d, Some(target_of_kind(0, "t1")), None),
            "target.kind",
            &[],
        ),
        (
            cancel(&d, None, Some(("", "why"))),
            reason_code,
            &["required"],
        ),
        (
            cancel(&d, None, Some(("$MINE", ""))),
            reason_code,
            &["[A-Z0-9_-]+", "reserved"],
        ),
        (
            cancel(&d, None, Some(("lower", ""))),
            reason_code,
            &["[A-Z0-9_-]+"],
        ),
        (
            cancel(&d, None, Some((&long_code, ""))),
            reason_code,
            &["64"],
        ),
        (
            cancel(&d, None, Some(("OK", &long_description))),
            "status_reason.reason_description",
            &["1024"],
        ),
    ];
    for (request, field, needles) in cases {
        expect_invalid(disp.cancel_command_execution(request).await, field, needles);
    }
    let e = get_execution(&mut reg, &d).await?;
    assert_eq!(
        (e.status(), e.terminal, e.completed_at),
        (St::Created, false, None)
    );
    server.shutdown().await
}
