//! Projector restart: the projector is stopped (SIGTERM) mid-run and started again; the
//! dispatcher keeps accepting meanwhile, and the projector catches up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_contracts::pb;
use fleetcmd_local_cluster::Fleet;
use fleetcmd_local_cluster::log::read_log;
use fleetcmd_local_cluster::reads::{Settle, get_all};
use fleetcmd_local_cluster::starts::{StartStats, jobs, spawn_starts, start_all};
use tokio::sync::watch;
use tonic::Code;

use crate::{SETTLE_WITHIN, given_a_cluster, given_the_engines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_projector_restart_catches_up() {
    let Some((_serial, engines)) = given_the_engines("s2_projector_restart").await else {
        return;
    };
    let t0 = Instant::now();
    let (mut cluster, mut registry, command_id) = given_a_cluster("s2", &engines, 1, 1).await;
    let dispatchers = vec![cluster.dispatcher("dispatcher-0")];
    let fleet = Fleet::subscribed(&cluster, 50).await;
    let all_jobs = jobs(&fleet, 6, 0, "s2");
    let (before, rest) = all_jobs.split_at(100);
    let (during, after) = rest.split_at(100);

    // Before: 100 executions, and the projector stopped mid-run.
    let (acks, mut acked) = watch::channel(0usize);
    let stats = Arc::new(Mutex::new(StartStats::default()));
    let first = spawn_starts(
        dispatchers.clone(),
        &command_id,
        before.to_vec(),
        32,
        acks,
        stats.clone(),
    );
    let _ = tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|n| *n >= 50)).await;
    let stopped_at = Instant::now();
    let status = cluster.terminate("projector");
    println!(
        "[s2] projector stopped by SIGTERM ({status}) after {} starts",
        *acked.borrow()
    );
    assert!(
        status.success(),
        "the projector exits cleanly on SIGTERM: {status}"
    );
    let (mut started, errors) = first.await.expect("starter");
    assert!(errors.is_empty(), "starts failed: {errors:?}");

    // During: the dispatcher still accepts starts (answering once its read-your-writes wait
    // gives up) and devices still report; nothing of it is readable yet.
    let during_started = start_all(dispatchers.clone(), &command_id, during.to_vec(), 100).await;
    let probe = &during_started[0].execution_id;
    let read = registry
        .get_command_execution(pb::GetCommandExecutionRequest {
            execution_id: probe.clone(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&read, Err(s) if s.code() == Code::NotFound),
        "with the projector down, a new execution is not readable yet: {read:?}"
    );
    started.extend(during_started);
    let down_for = stopped_at.elapsed();

    // After: restarted, it catches up, and new executions work as before.
    cluster.start_process("projector");
    cluster.wait_serving(&["projector"]).await;
    started.extend(start_all(dispatchers, &command_id, after.to_vec(), 32).await);
    Settle::new(&registry, &command_id, &fleet, SETTLE_WITHIN)
        .exactly("s2", &started)
        .await;
    let expected = fleet.expected(&started);
    let reads = get_all(&registry, expected.keys().cloned().collect(), 32).await;
    for (id, r) in &reads {
        let r = r.as_ref().unwrap_or_else(|e| panic!("Get {id}: {e}"));
        assert_eq!(
            r.status,
            status_to_pb(expected[id].0),
            "{id}: Get after the catch-up"
        );
    }
    let log = read_log(&engines.kafka_brokers, cluster.topic(), &command_id).await;
    assert!(
        log.problems.is_empty(),
        "the log is inconsistent: {:?}",
        log.problems
    );
    let diffs = log.differences(reads.values().map(|r| r.as_ref().expect("checked above")));
    assert!(
        diffs.is_empty(),
        "read/log differences after the catch-up: {:?}",
        &diffs[..diffs.len().min(10)]
    );
    cluster.assert_all_alive();
    fleet.stop().await;
    println!(
        "[s2] {} executions ({} while the projector was down for {:.1} s) all readable with final statuses; total {:.1} s",
        started.len(),
        during.len(),
        down_for.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
