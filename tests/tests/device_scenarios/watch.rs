//! WatchCommandExecutions filtered by command, by target, by statuses, and by all three gets
//! exactly the matching status changes, in order, as devices report them.

use anyhow::Context;
use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::{Watch, watch_request};
use fleetcmd_e2e::device::{Device, Topics};
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{Env, static_json_command, thing};
use serde_json::{Value as Json, json};

/// The device reports `body` for the execution `(command, id)`; the update is accepted and
/// its status event seen.
async fn report_and_see(
    dev: &mut Device,
    topics: &Topics,
    obs: &mut Device,
    (command_id, id): (&str, &str),
    body: &Json,
) -> anyhow::Result<()> {
    assert_accepted(&dev.report_json(topics, id, body).await?, id)?;
    let status = body["status"].as_str().context("a status")?;
    next_event(obs, command_id, id, status).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watch_gets_exactly_its_changes_in_order() -> crate::Result {
    use pb::ExecutionStatus as S;
    let mut env = Env::start("watch").await?;
    let t1 = Topics::thing("w-dev-1");
    let t2 = Topics::thing("w-dev-2");
    let mut obs = env.observer(&["w-a", "w-b"]).await?;
    let mut d1 = env.device("w-dev-1", &t1).await?;
    let mut d2 = env.device("w-dev-2", &t2).await?;
    env.create(static_json_command("w-a", r#"{"a":1}"#)).await?;
    env.create(static_json_command("w-b", r#"{"b":1}"#)).await?;

    let reg = &mut env.registry;
    let mut by_command = Watch::open(reg, watch_request("w-a", None, &[])).await?;
    let mut by_target = Watch::open(reg, watch_request("", Some(thing("w-dev-1")), &[])).await?;
    let by_status_filter = watch_request("", None, &[S::Succeeded, S::Failed]);
    let mut by_status = Watch::open(reg, by_status_filter).await?;
    let by_all_filter = watch_request("w-a", Some(thing("w-dev-1")), &[S::Succeeded]);
    let mut by_all = Watch::open(reg, by_all_filter).await?;

    // Each step waits for its event, so the streams see the steps in this order.
    let e1 = env.start_simple(thing("w-dev-1"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &e1, "CREATED").await?;
    let e2 = env.start_simple(thing("w-dev-1"), "w-b", 30).await?;
    next_event(&mut obs, "w-b", &e2, "CREATED").await?;
    let progress = json!({"status": "IN_PROGRESS"});
    report_and_see(&mut d1, &t1, &mut obs, ("w-a", &e1), &progress).await?;
    let e3 = env.start_simple(thing("w-dev-2"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &e3, "CREATED").await?;
    let fail = json!({"status": "FAILED", "statusReason": {"reasonCode": "NOPE"}});
    report_and_see(&mut d1, &t1, &mut obs, ("w-b", &e2), &fail).await?;
    let ok = json!({"status": "SUCCEEDED", "result": {"n": {"s": "1"}}});
    report_and_see(&mut d1, &t1, &mut obs, ("w-a", &e1), &ok).await?;
    let succeeded = json!({"status": "SUCCEEDED"});
    report_and_see(&mut d2, &t2, &mut obs, ("w-a", &e3), &succeeded).await?;
    // A final change that every watch matches: whatever a stream yields before it is all it got.
    let marker = env.start_simple(thing("w-dev-1"), "w-a", 30).await?;
    next_event(&mut obs, "w-a", &marker, "CREATED").await?;
    report_and_see(&mut d1, &t1, &mut obs, ("w-a", &marker), &succeeded).await?;

    // Each event as `<execution> <STATUS>`, the executions by their names here.
    let names = [(&e1, "e1"), (&e2, "e2"), (&e3, "e3")];
    let summary = |events: &[pb::CommandExecutionEvent]| -> String {
        let each: Vec<String> = events
            .iter()
            .map(|e| {
                let name = names
                    .iter()
                    .find(|(id, _)| **id == e.execution_id)
                    .map_or(e.execution_id.as_str(), |(_, name)| name);
                let status = S::try_from(e.status).unwrap_or(S::Unspecified);
                format!("{name} {}", status.as_str_name())
            })
            .collect();
        each.join(", ")
    };

    let got = by_command.before(&marker).await?;
    assert_eq!(
        summary(&got),
        "e1 CREATED, e1 IN_PROGRESS, e3 CREATED, e1 SUCCEEDED, e3 SUCCEEDED"
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

    let got = by_target.before(&marker).await?;
    assert_eq!(
        summary(&got),
        "e1 CREATED, e2 CREATED, e1 IN_PROGRESS, e2 FAILED, e1 SUCCEEDED"
    );
    assert_eq!(
        got[3]
            .status_reason
            .as_ref()
            .map(|r| r.reason_code.as_str()),
        Some("NOPE")
    );

    let got = by_status.before(&marker).await?;
    assert_eq!(summary(&got), "e2 FAILED, e1 SUCCEEDED, e3 SUCCEEDED");

    let got = by_all.before(&marker).await?;
    assert_eq!(summary(&got), "e1 SUCCEEDED");
    drop((by_command, by_target, by_status, by_all));
    env.stop().await
}
