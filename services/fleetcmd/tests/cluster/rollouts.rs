//! s8: a rollout in cluster mode: started through the registry, hosted by the dispatcher
//! that owns its shard, its attempts started on the targets' shards (of either dispatcher),
//! and settled when the executions end (here by the cloud's timeout: no device answers),
//! learnt from the projector's status changes over NATS or read back from CQL.

use std::time::Duration;

use fleetcmd_contracts::pb;
use tonic::Code;

use super::{given_a_cluster, given_the_engines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_rollout_starts_every_target_once_and_completes_on_the_real_engines() {
    let test = "s8_a_rollout_starts_every_target_once_and_completes_on_the_real_engines";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    let (mut cluster, _registry, command_id) = given_a_cluster("s8", &engines, 2, 1).await;
    let mut rollouts = cluster.rollouts();
    let targets: Vec<pb::Target> = (0..6)
        .map(|i| pb::Target {
            kind: pb::TargetKind::Client as i32,
            id: format!("{}-sleeper-{i}", cluster.root()),
        })
        .collect();
    let request = pb::StartRolloutRequest {
        rollout_id: format!("{}-r1", cluster.root()),
        spec: Some(pb::RolloutSpec {
            command_id,
            execution_timeout_seconds: 1,
            targets: Some(pb::RolloutTargets {
                selector: Some(pb::rollout_targets::Selector::List(pb::TargetList {
                    targets,
                })),
            }),
            rate: Some(pb::RolloutRate {
                rate: Some(pb::rollout_rate::Rate::MaxPerMinute(60_000)),
            }),
            client_token: "s8".into(),
            ..Default::default()
        }),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match rollouts.start_rollout(request.clone()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("[s8] start: {:?} {}", s.code(), s.message()),
        }
    }
    let id = request.rollout_id.clone();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let got = rollouts
                .get_rollout(pb::GetRolloutRequest {
                    rollout_id: id.clone(),
                })
                .await;
            if let Ok(r) = got {
                let r = r.into_inner();
                if r.status == pb::RolloutStatus::Completed as i32 {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("[s8] the rollout completed within a minute");
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
    cluster.assert_all_alive();
}
