//! WatchCommandExecutions: filters, event contents, and shutdown.

use std::time::Duration;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, thing, within};
use pb::ExecutionStatus as St;
use tonic::Code;

use crate::{Result, given};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refuses_invalid_filters() -> Result {
    let (server, mut reg, _) = given("watch-invalid", &[]).await?;
    expect_invalid(
        reg.watch_command_executions(watch_request("a b", None, &[]))
            .await,
        "command_id",
        &["' '"],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request("", Some(target_of_kind(0, "t")), &[]))
            .await,
        "target.kind",
        &[],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request("", Some(thing("a/b")), &[]))
            .await,
        "target.id",
        &[],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request("", None, &[St::Created, St::Unspecified]))
            .await,
        "statuses[1]",
        &["UNSPECIFIED"],
    );
    let bad_status = pb::WatchCommandExecutionsRequest {
        statuses: vec![99],
        ..Default::default()
    };
    expect_invalid(
        reg.watch_command_executions(bad_status).await,
        "statuses[0]",
        &["99"],
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watch_gets_exactly_the_changes_its_filter_matches_in_order() -> Result {
    let (server, mut reg, mut disp) = given("watch", &["alpha", "beta"]).await?;
    let (t1, t2) = (thing("t1"), thing("t2"));
    let mut all = Watch::open(&mut reg, watch_request("", None, &[])).await?;
    let mut by_command = Watch::open(&mut reg, watch_request("alpha", None, &[])).await?;
    let mut by_target = Watch::open(&mut reg, watch_request("", Some(t2.clone()), &[])).await?;
    let mut by_status = Watch::open(&mut reg, watch_request("", None, &[St::Succeeded])).await?;
    let mut combined = Watch::open(
        &mut reg,
        watch_request("alpha", Some(t2.clone()), &[St::Canceled, St::Succeeded]),
    )
    .await?;
    let mut unrelated = Watch::open(&mut reg, watch_request("beta", Some(t1.clone()), &[])).await?;

    // Each step is readable before the next starts, so every stream sees them in this order.
    let a1 = start(&mut disp, "alpha", t1.clone()).await?;
    let a2 = start(&mut disp, "beta", t2.clone()).await?;
    settle(&server, &mut reg, &t2, &a2, St::Succeeded).await?;
    let a3 = start(&mut disp, "alpha", t2.clone()).await?;
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: a1.clone(),
        ..Default::default()
    })
    .await?;
    // The last step matches every filter but `unrelated`'s: anything unexpected before it shows.
    settle(&server, &mut reg, &t2, &a3, St::Succeeded).await?;
    // And `unrelated` gets its own last step.
    let a4 = start(&mut disp, "beta", t1.clone()).await?;

    type Expected<'a> = Vec<(&'a String, St)>;
    let expectations: Vec<(&str, &mut Watch, Expected)> = vec![
        (
            "all",
            &mut all,
            vec![
                (&a1, St::Created),
                (&a2, St::Created),
                (&a2, St::Succeeded),
                (&a3, St::Created),
                (&a1, St::Canceled),
                (&a3, St::Succeeded),
                (&a4, St::Created),
            ],
        ),
        (
            "command alpha",
            &mut by_command,
            vec![
                (&a1, St::Created),
                (&a3, St::Created),
                (&a1, St::Canceled),
                (&a3, St::Succeeded),
            ],
        ),
        (
            "target t2",
            &mut by_target,
            vec![
                (&a2, St::Created),
                (&a2, St::Succeeded),
                (&a3, St::Created),
                (&a3, St::Succeeded),
            ],
        ),
        (
            "SUCCEEDED",
            &mut by_status,
            vec![(&a2, St::Succeeded), (&a3, St::Succeeded)],
        ),
        (
            "alpha on t2, CANCELED or SUCCEEDED",
            &mut combined,
            vec![(&a3, St::Succeeded)],
        ),
        ("beta on t1", &mut unrelated, vec![(&a4, St::Created)]),
    ];
    for (label, watch, expected) in expectations {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let e = watch.next().await?;
            got.push((e.execution_id.clone(), e.status()));
        }
        let expected: Vec<(String, St)> = expected
            .into_iter()
            .map(|(id, s)| (id.clone(), s))
            .collect();
        assert_eq!(got, expected, "watch {label}");
    }
    drop((all, by_command, by_target, by_status, combined, unrelated));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_carry_the_whole_change() -> Result {
    let (server, mut reg, mut disp) = given("watch-events", &["alpha"]).await?;
    let t1 = thing("t1");
    let mut w = Watch::open(&mut reg, watch_request("alpha", None, &[])).await?;
    let before = now_ms();

    let a5 = start(&mut disp, "alpha", t1.clone()).await?;
    let created = w.next().await?;
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: a5.clone(),
        status_reason: Some(pb::StatusReason {
            reason_code: "STOP".into(),
            reason_description: "enough".into(),
        }),
        ..Default::default()
    })
    .await?;
    let canceled = w.next().await?;

    assert_eq!(
        (created.execution_id.as_str(), created.command_id.as_str()),
        (a5.as_str(), "alpha")
    );
    assert_eq!(
        (created.target.clone(), created.status(), created.terminal),
        (Some(t1.clone()), St::Created, false)
    );
    assert!(ms(&created.timestamp) >= before);
    assert_eq!(
        (
            canceled.execution_id.as_str(),
            canceled.status(),
            canceled.terminal
        ),
        (a5.as_str(), St::Canceled, true)
    );
    assert_eq!(
        canceled.status_reason.map(|r| r.reason_code).as_deref(),
        Some("STOP")
    );
    assert_eq!(
        canceled.timestamp,
        get_execution(&mut reg, &a5).await?.completed_at
    );
    drop(w);
    server.shutdown().await
}

/// A graceful stop does not wait for open Watch streams: they end with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_open_watch_streams() -> Result {
    let server = Server::start("stop-watch").await?;
    let mut registry = server.registry().await?;
    let mut stream = registry
        .watch_command_executions(pb::WatchCommandExecutionsRequest::default())
        .await?
        .into_inner();

    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;

    assert!(stopped.is_ok(), "stop() waited on an open Watch stream");
    stopped??;
    let end = within("the end of the Watch stream", stream.message()).await?;
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(event)) => panic!("unexpected event after shutdown: {event:?}"),
    }
    Ok(())
}
