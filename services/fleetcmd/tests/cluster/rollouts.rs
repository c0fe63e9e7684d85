//! s8: a rollout in cluster mode: started through the registry, hosted by the dispatcher
//! that owns its shard, its attempts started on the targets' shards (of either dispatcher),
//! and settled when the executions end (here by the cloud's timeout: no device answers),
//! learnt from the projector's status changes over NATS or read back from CQL.
//! s9: the only dispatcher, owner of a running rollout, is SIGKILLed and started again: the
//! rollout goes on from its log and completes, and no target is started twice.

use std::collections::HashMap;
use std::time::Duration;

use fleetcmd_contracts::pb;
use fleetcmd_local_cluster::Rollouts;
use fleetcmd_local_cluster::reads::list_all;
use tonic::Code;

use super::{given_a_cluster, given_the_engines};

/// `n` bare clients with no device behind them: each attempt ends by the cloud's timeout.
fn sleepers(root: &str, n: usize) -> Vec<pb::Target> {
    (0..n)
        .map(|i| pb::Target {
            kind: pb::TargetKind::Client as i32,
            id: format!("{root}-sleeper-{i}"),
        })
        .collect()
}

fn rollout_of(
    id: String,
    command_id: String,
    targets: Vec<pb::Target>,
    per_minute: u32,
) -> pb::StartRolloutRequest {
    pb::StartRolloutRequest {
        rollout_id: id,
        spec: Some(pb::RolloutSpec {
            command_id,
            execution_timeout_seconds: 1,
            targets: Some(pb::RolloutTargets {
                selector: Some(pb::rollout_targets::Selector::List(pb::TargetList {
                    targets,
                })),
            }),
            rate: Some(pb::RolloutRate {
                rate: Some(pb::rollout_rate::Rate::MaxPerMinute(per_minute)),
            }),
            client_token: "s8".into(),
            ..Default::default()
        }),
    }
}

/// Starts `request`, retrying while the shard owners are still joining.
async fn start(rollouts: &mut Rollouts, request: &pb::StartRolloutRequest) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match rollouts.start_rollout(request.clone()).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!(
                "start {}: {:?} {}",
                request.rollout_id,
                s.code(),
                s.message()
            ),
        }
    }
}

/// Polls GetRollout until `done` holds (answers UNAVAILABLE while the owner moves).
async fn until(
    rollouts: &mut Rollouts,
    id: &str,
    within: Duration,
    done: impl Fn(&pb::Rollout) -> bool,
) -> pb::Rollout {
    tokio::time::timeout(within, async {
        loop {
            let got = rollouts
                .get_rollout(pb::GetRolloutRequest {
                    rollout_id: id.to_owned(),
                })
                .await;
            if let Ok(r) = got {
                let r = r.into_inner();
                if done(&r) {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("rollout {id} did not get there within {within:?}"))
}

fn completed(r: &pb::Rollout) -> bool {
    r.status == pb::RolloutStatus::Completed as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_rollout_starts_every_target_once_and_completes_on_the_real_engines() {
    let test = "s8_a_rollout_starts_every_target_once_and_completes_on_the_real_engines";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    let (mut cluster, _registry, command_id) = given_a_cluster("s8", &engines, 2, 1).await;
    let mut rollouts = cluster.rollouts();
    let id = format!("{}-r1", cluster.root());
    let request = rollout_of(id.clone(), command_id, sleepers(cluster.root(), 6), 60_000);
    start(&mut rollouts, &request).await;
    let done = until(&mut rollouts, &id, Duration::from_secs(60), completed).await;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (
            counts.timed_out,
            counts.notified,
            counts.in_flight,
            done.target_count
        ),
        (6, 6, 0, 6),
        "{counts:?}"
    );
    // Listed by asking every shard's owner, across both dispatchers.
    let listed = rollouts
        .list_rollouts(pb::ListRolloutsRequest {
            command_id: done
                .spec
                .as_ref()
                .map(|s| s.command_id.clone())
                .unwrap_or_default(),
            ..Default::default()
        })
        .await
        .expect("[s8] ListRollouts")
        .into_inner();
    let ids: Vec<&str> = listed
        .rollouts
        .iter()
        .map(|r| r.rollout_id.as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    cluster.assert_all_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_a_rollout_resumes_after_its_owner_is_sigkilled_and_starts_no_target_twice() {
    let test = "s9_a_rollout_resumes_after_its_owner_is_sigkilled_and_starts_no_target_twice";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    let (mut cluster, registry, command_id) = given_a_cluster("s9", &engines, 1, 1).await;
    let mut rollouts = cluster.rollouts();
    let id = format!("{}-r1", cluster.root());
    // 40 targets at 300 a minute: 8 s of starts, killed a quarter of the way in.
    let targets = sleepers(cluster.root(), 40);
    let request = rollout_of(id.clone(), command_id.clone(), targets.clone(), 300);
    start(&mut rollouts, &request).await;
    until(&mut rollouts, &id, Duration::from_secs(60), |r| {
        r.counts.as_ref().is_some_and(|c| c.notified >= 10)
    })
    .await;
    cluster.kill("dispatcher-0");
    println!("[s9] SIGKILLed dispatcher-0, the rollout's owner");
    cluster.start_process("dispatcher-0");
    cluster.wait_serving(&["dispatcher-0"]).await;
    let done = until(&mut rollouts, &id, Duration::from_secs(120), completed).await;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (
            counts.timed_out,
            counts.notified,
            counts.in_flight,
            done.target_count
        ),
        (40, 40, 0, 40),
        "{counts:?}"
    );
    let executions = list_all(&registry, &command_id)
        .await
        .unwrap_or_else(|e| panic!("[s9] listing: {e}"));
    let mut per_target: HashMap<String, usize> = HashMap::new();
    for e in &executions {
        let target = e.target.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        *per_target.entry(target).or_default() += 1;
    }
    let twice: Vec<_> = per_target.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "[s9] started twice: {twice:?}");
    assert_eq!(per_target.len(), 40, "[s9] every target started once");
    cluster.assert_all_alive();
}
