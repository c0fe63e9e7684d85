//! Rollouts: one command to a list, a group or a query, each target started once (the
//! attempt's client token is the rollout's), progress followed with WatchRollout until the
//! rollout ends, cancel with and without force, bad starts refused naming the field, and
//! the policy narrowing a rollout to the targets its caller was granted.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{
    Rollouts, Server, Things, client, policed_args, static_json_command, thing, with_admin, within,
};
use tonic::Code;

use crate::Result;

/// A SNAPSHOT rollout of `reboot` to `targets` at `per_minute`.
fn spec(targets: pb::rollout_targets::Selector, per_minute: u32) -> pb::RolloutSpec {
    pb::RolloutSpec {
        command_id: "reboot".into(),
        execution_timeout_seconds: LONG_TIMEOUT_SECS,
        targets: Some(pb::RolloutTargets {
            selector: Some(targets),
        }),
        rate: Some(pb::RolloutRate {
            rate: Some(pb::rollout_rate::Rate::MaxPerMinute(per_minute)),
        }),
        client_token: "deploy-1".into(),
        ..Default::default()
    }
}

fn list(targets: &[pb::Target]) -> pb::rollout_targets::Selector {
    pb::rollout_targets::Selector::List(pb::TargetList {
        targets: targets.to_vec(),
    })
}

fn start(id: &str, spec: pb::RolloutSpec) -> pb::StartRolloutRequest {
    pb::StartRolloutRequest {
        rollout_id: id.into(),
        spec: Some(spec),
    }
}

/// Follows WatchRollout until `done` holds for an update (failing after WAIT).
async fn watch_until(
    rollouts: &mut Rollouts,
    id: &str,
    done: impl Fn(&pb::Rollout) -> bool,
) -> anyhow::Result<pb::Rollout> {
    let mut stream = rollouts
        .watch_rollout(pb::WatchRolloutRequest {
            rollout_id: id.into(),
        })
        .await?
        .into_inner();
    within(format!("rollout {id} to get there"), async {
        loop {
            let Some(r) = stream.message().await? else {
                anyhow::bail!("the watch of {id} ended first");
            };
            if done(&r) {
                return Ok(r);
            }
        }
    })
    .await?
}

fn status(r: &pb::Rollout) -> pb::RolloutStatus {
    pb::RolloutStatus::try_from(r.status).unwrap_or(pb::RolloutStatus::Unspecified)
}

/// Every execution of `reboot`, by id, with its target.
async fn executions(registry: &mut Registry) -> anyhow::Result<Vec<pb::CommandExecutionSummary>> {
    let every = pb::ListCommandExecutionsRequest::default();
    Ok(list_all_executions(registry, every).await?.0)
}

/// Waits until `n` executions exist and returns them.
async fn launched(
    registry: &mut Registry,
    n: usize,
) -> anyhow::Result<Vec<pb::CommandExecutionSummary>> {
    fleetcmd_e2e::eventually(format!("{n} executions to start"), || {
        let mut registry = registry.clone();
        async move {
            let found = executions(&mut registry).await?;
            Ok((found.len() >= n).then_some(found))
        }
    })
    .await
}

fn join(name: &str) -> pb::AddThingToThingGroupRequest {
    pb::AddThingToThingGroupRequest {
        thing_group_name: "lab".into(),
        thing_name: name.into(),
    }
}

/// Registers `things` and a static group `lab` holding `members`.
async fn given_the_lab(things: &mut Things, all: &[&str], members: &[&str]) -> anyhow::Result<()> {
    for name in all {
        things
            .create_thing(pb::CreateThingRequest {
                thing_name: (*name).into(),
                ..Default::default()
            })
            .await?;
    }
    things
        .create_thing_group(pb::CreateThingGroupRequest {
            thing_group_name: "lab".into(),
            ..Default::default()
        })
        .await?;
    for name in members {
        things.add_thing_to_thing_group(join(name)).await?;
    }
    Ok(())
}

async fn given_a_server(name: &str) -> anyhow::Result<(Server, Registry, Rollouts)> {
    let server = Server::start(name).await?;
    let mut registry = server.registry().await?;
    registry
        .create_command(static_json_command("reboot", r#"{"reboot":true}"#))
        .await?;
    let rollouts = server.rollouts().await?;
    Ok((server, registry, rollouts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_starts_each_target_once_and_completes_as_they_settle() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-list").await?;
    let targets = [thing("lamp-1"), thing("lamp-2"), client("sensor-7")];
    let request = start("r-1", spec(list(&targets), 60_000));
    let started = rollouts.start_rollout(request.clone()).await?.into_inner();
    assert_eq!(started.rollout_id, "r-1");

    let running = launched(&mut registry, 3).await?;
    let mut seen: Vec<&str> = running
        .iter()
        .map(|e| e.target.as_ref().map_or("", |t| t.id.as_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["lamp-1", "lamp-2", "sensor-7"],
        "one execution per target"
    );
    for e in &running {
        let target = e.target.clone().expect("a target");
        settle(
            &server,
            &mut registry,
            &target,
            &e.execution_id,
            pb::ExecutionStatus::Succeeded,
        )
        .await?;
    }
    let done = watch_until(&mut rollouts, "r-1", |r| {
        status(r) == pb::RolloutStatus::Completed
    })
    .await?;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (counts.succeeded, counts.notified, counts.in_flight),
        (3, 3, 0)
    );
    assert_eq!(done.target_count, 3);
    assert!(done.completed_at.is_some());

    // The same start again (same token, same spec) is the same rollout and starts nothing.
    let again = rollouts.start_rollout(request).await?.into_inner();
    assert_eq!(again.status, pb::RolloutStatus::Completed as i32);
    assert_eq!(executions(&mut registry).await?.len(), 3);
    let got = rollouts
        .get_rollout(pb::GetRolloutRequest {
            rollout_id: "r-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(status(&got), pb::RolloutStatus::Completed);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rollout_reaches_its_members_and_a_failure_counts_once_final() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-group").await?;
    let mut things = server.things().await?;
    given_the_lab(
        &mut things,
        &["lab-1", "lab-2", "office-1"],
        &["lab-1", "lab-2"],
    )
    .await?;
    let group = pb::rollout_targets::Selector::Group("lab".into());
    rollouts
        .start_rollout(start("r-lab", spec(group, 60_000)))
        .await?;
    let running = launched(&mut registry, 2).await?;
    let outcomes = [pb::ExecutionStatus::Succeeded, pb::ExecutionStatus::Failed];
    for (e, outcome) in running.iter().zip(outcomes) {
        let target = e.target.clone().expect("a target");
        assert!(target.id.starts_with("lab-"), "{target:?} is no member");
        settle(&server, &mut registry, &target, &e.execution_id, outcome).await?;
    }
    let done = watch_until(&mut rollouts, "r-lab", |r| {
        status(r) == pb::RolloutStatus::Completed
    })
    .await?;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (counts.succeeded, counts.failed, done.target_count),
        (1, 1, 2)
    );
    assert_eq!(
        executions(&mut registry).await?.len(),
        2,
        "office-1 got nothing"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_rollout_reaches_things_that_join_its_group_while_it_runs() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-continuous").await?;
    let mut things = server.things().await?;
    given_the_lab(&mut things, &["lab-1", "lab-2"], &["lab-1"]).await?;
    let mut continuous = spec(pb::rollout_targets::Selector::Group("lab".into()), 60_000);
    continuous.target_selection = pb::TargetSelection::Continuous as i32;
    rollouts.start_rollout(start("r-cont", continuous)).await?;
    let first = launched(&mut registry, 1).await?;
    assert_eq!(
        first[0].target.as_ref().map(|t| t.id.as_str()),
        Some("lab-1")
    );
    // A thing that joins later gets it too, when the owner next reads the group.
    things.add_thing_to_thing_group(join("lab-2")).await?;
    let both = launched(&mut registry, 2).await?;
    let mut names: Vec<&str> = both
        .iter()
        .filter_map(|e| e.target.as_ref().map(|t| t.id.as_str()))
        .collect();
    names.sort();
    assert_eq!(names, ["lab-1", "lab-2"]);
    // It never completes by itself: it runs until canceled.
    let running = rollouts
        .get_rollout(pb::GetRolloutRequest {
            rollout_id: "r-cont".into(),
        })
        .await?
        .into_inner();
    assert_eq!(status(&running), pb::RolloutStatus::InProgress);
    let after = rollouts
        .cancel_rollout(pb::CancelRolloutRequest {
            rollout_id: "r-cont".into(),
            force: true,
        })
        .await?
        .into_inner();
    assert_eq!(after.status, pb::RolloutStatus::Canceled as i32);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_new_starts_and_force_cancels_the_live_executions() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-cancel").await?;
    let targets = [thing("lamp-1"), thing("lamp-2"), thing("lamp-3")];
    // One start a minute: the first goes out now, the others would wait.
    rollouts
        .start_rollout(start("r-slow", spec(list(&targets), 1)))
        .await?;
    let running = launched(&mut registry, 1).await?;
    let after = rollouts
        .cancel_rollout(pb::CancelRolloutRequest {
            rollout_id: "r-slow".into(),
            force: true,
        })
        .await?
        .into_inner();
    assert_eq!(after.status, pb::RolloutStatus::Canceled as i32);
    let live = running[0].execution_id.clone();
    fleetcmd_e2e::eventually("the live execution to be canceled", || {
        let mut registry = registry.clone();
        let live = live.clone();
        async move {
            let e = get_execution(&mut registry, &live)
                .await
                .map_err(anyhow::Error::from)?;
            Ok((e.status == pb::ExecutionStatus::Canceled as i32).then_some(()))
        }
    })
    .await?;
    let done = watch_until(&mut rollouts, "r-slow", |r| {
        r.counts.as_ref().is_some_and(|c| c.in_flight == 0)
    })
    .await?;
    let counts = done.counts.expect("counts");
    assert_eq!((counts.canceled, counts.queued), (1, 2), "{counts:?}");
    assert_eq!(
        executions(&mut registry).await?.len(),
        1,
        "nothing started after the cancel"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_listed_newest_first_by_command_and_status_page_by_page() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-list-all").await?;
    registry
        .create_command(static_json_command("blink", r#"{"blink":1}"#))
        .await?;
    // One start a minute: each rollout stays IN_PROGRESS with its first attempt live.
    for (id, command) in [("r-a", "reboot"), ("r-b", "blink"), ("r-c", "reboot")] {
        let mut s = spec(list(&[thing("lamp-1"), thing("lamp-2")]), 1);
        s.command_id = command.into();
        rollouts.start_rollout(start(id, s)).await?;
    }
    rollouts
        .cancel_rollout(pb::CancelRolloutRequest {
            rollout_id: "r-b".into(),
            force: true,
        })
        .await?;
    let mut listed: Vec<pb::Rollout> = Vec::new();
    let mut token = String::new();
    for _ in 0..5 {
        let page = rollouts
            .list_rollouts(pb::ListRolloutsRequest {
                max_results: 1,
                next_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.rollouts.len() <= 1);
        listed.extend(page.rollouts);
        token = page.next_token;
        if token.is_empty() {
            break;
        }
    }
    let mut ids: Vec<&str> = listed.iter().map(|r| r.rollout_id.as_str()).collect();
    // Newest first (the id breaks ties), every rollout once.
    let order: Vec<(i64, String)> = listed
        .iter()
        .map(|r| (-ms(&r.created_at), r.rollout_id.clone()))
        .collect();
    let mut sorted_order = order.clone();
    sorted_order.sort();
    assert_eq!(order, sorted_order, "newest first");
    ids.sort();
    assert_eq!(ids, ["r-a", "r-b", "r-c"]);
    let names = |page: pb::ListRolloutsResponse| -> Vec<String> {
        let mut ids: Vec<String> = page.rollouts.into_iter().map(|r| r.rollout_id).collect();
        ids.sort();
        ids
    };
    let reboots = rollouts
        .list_rollouts(pb::ListRolloutsRequest {
            command_id: "reboot".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(names(reboots), ["r-a", "r-c"]);
    let canceled = rollouts
        .list_rollouts(pb::ListRolloutsRequest {
            status: pb::RolloutStatus::Canceled as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(names(canceled), ["r-b"]);
    server.shutdown().await
}

#[tokio::test]
async fn bad_rollouts_are_refused_naming_the_field_and_start_nothing() -> Result {
    let (server, mut registry, mut rollouts) = given_a_server("rollout-bad").await?;
    let mut no_rate = spec(list(&[thing("lamp-1")]), 60);
    no_rate.rate = None;
    expect_invalid(
        rollouts.start_rollout(start("r-1", no_rate)).await,
        "spec.rate",
        &["max_per_minute"],
    );
    expect_invalid(
        rollouts
            .start_rollout(start("r/1", spec(list(&[thing("lamp-1")]), 60)))
            .await,
        "rollout_id",
        &["[a-zA-Z0-9_-]"],
    );
    let mut unknown = spec(list(&[thing("lamp-1")]), 60);
    unknown.command_id = "missing".into();
    expect_code(
        rollouts.start_rollout(start("r-2", unknown)).await,
        Code::NotFound,
        &["missing"],
    );
    let mut continuous = spec(
        pb::rollout_targets::Selector::Query("connectivity.connected:true".into()),
        60,
    );
    continuous.target_selection = pb::TargetSelection::Continuous as i32;
    expect_invalid(
        rollouts.start_rollout(start("r-3", continuous)).await,
        "spec.targets.query",
        &["CONTINUOUS", "connectivity"],
    );
    let mut listed = spec(list(&[thing("lamp-1")]), 60);
    listed.target_selection = pb::TargetSelection::Continuous as i32;
    expect_invalid(
        rollouts.start_rollout(start("r-4", listed)).await,
        "spec.target_selection",
        &["group or query"],
    );
    expect_code(
        rollouts
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: "r-9".into(),
            })
            .await,
        Code::NotFound,
        &["rollout r-9 not found"],
    );
    expect_invalid(
        rollouts
            .list_rollouts(pb::ListRolloutsRequest {
                next_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        "next_token",
        &["token"],
    );
    assert!(executions(&mut registry).await?.is_empty());
    server.shutdown().await
}

const POLICY: &str = r#"
[[tokens]]
name = "lab-operator"
token = "lab-operator-0123456789abcdef"
[[tokens.allow]]
actions = ["StartRollout", "GetRollout"]
commands = ["reboot"]
targets = ["thing/lab-*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_only_the_targets_its_caller_was_granted() -> Result {
    let server = Server::start_with(policed_args("rollout-policy", &with_admin(POLICY))?).await?;
    let mut registry = server.registry().await?;
    registry
        .create_command(as_admin(static_json_command(
            "reboot",
            r#"{"reboot":true}"#,
        )))
        .await?;
    let mut things = server.things().await?;
    for name in ["lab-1", "office-1"] {
        things
            .create_thing(as_admin(pb::CreateThingRequest {
                thing_name: name.into(),
                ..Default::default()
            }))
            .await?;
    }
    let mut rollouts = server.rollouts().await?;
    let operator = "lab-operator-0123456789abcdef";
    // A list naming a thing outside the grant is refused whole.
    expect_code(
        rollouts
            .start_rollout(with_token(
                start(
                    "r-list",
                    spec(list(&[thing("lab-1"), thing("office-1")]), 60_000),
                ),
                operator,
            ))
            .await,
        Code::PermissionDenied,
        &["thing/office-1"],
    );
    // A query over every thing reaches only the granted ones; the others are counted.
    let every =
        pb::rollout_targets::Selector::Query("thing_name:lab-* OR thing_name:office-*".into());
    rollouts
        .start_rollout(with_token(start("r-all", spec(every, 60_000)), operator))
        .await?;
    let running = fleetcmd_e2e::eventually("the granted thing's execution", || {
        let mut registry = registry.clone();
        async move {
            let page = registry
                .list_command_executions(as_admin(pb::ListCommandExecutionsRequest::default()))
                .await?
                .into_inner();
            Ok((!page.command_executions.is_empty()).then_some(page.command_executions))
        }
    })
    .await?;
    let targets: Vec<&str> = running
        .iter()
        .filter_map(|e| e.target.as_ref().map(|t| t.id.as_str()))
        .collect();
    assert_eq!(targets, ["lab-1"]);
    let got = rollouts
        .get_rollout(with_token(
            pb::GetRolloutRequest {
                rollout_id: "r-all".into(),
            },
            operator,
        ))
        .await?
        .into_inner();
    let counts = got.counts.expect("counts");
    assert_eq!((counts.skipped_unauthorized, got.target_count), (1, 2));
    // Not granted: cancel, and any other command.
    expect_code(
        rollouts
            .cancel_rollout(with_token(
                pb::CancelRolloutRequest {
                    rollout_id: "r-all".into(),
                    force: false,
                },
                operator,
            ))
            .await,
        Code::PermissionDenied,
        &["CancelRollout"],
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_restart_and_still_learns_of_its_settles() -> Result {
    let args = fleetcmd_e2e::test_args("rollout-restart");
    let server = Server::start_with(args.clone()).await?;
    let mut registry = server.registry().await?;
    registry
        .create_command(static_json_command("reboot", r#"{"reboot":true}"#))
        .await?;
    let mut rollouts = server.rollouts().await?;
    let targets = [thing("lamp-1"), thing("lamp-2")];
    rollouts
        .start_rollout(start("r-1", spec(list(&targets), 1)))
        .await?;
    let running = launched(&mut registry, 1).await?;
    let data_dir = server.stop().await?;

    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut registry = server.registry().await?;
    let mut rollouts = server.rollouts().await?;
    let target = running[0].target.clone().expect("a target");
    settle(
        &server,
        &mut registry,
        &target,
        &running[0].execution_id,
        pb::ExecutionStatus::Succeeded,
    )
    .await?;
    let after = watch_until(&mut rollouts, "r-1", |r| {
        r.counts.as_ref().is_some_and(|c| c.succeeded == 1)
    })
    .await?;
    let counts = after.counts.expect("counts");
    assert_eq!((counts.queued, counts.in_flight), (1, 0), "{counts:?}");
    assert_eq!(status(&after), pb::RolloutStatus::InProgress);
    assert_eq!(
        executions(&mut registry).await?.len(),
        1,
        "the restart started nothing again"
    );
    server.shutdown().await
}
