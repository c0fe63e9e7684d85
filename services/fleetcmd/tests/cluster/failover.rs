//! Failover: 2,000 executions over 200 devices on two dispatchers; one dispatcher is
//! SIGKILLed a third of the way in. Every execution ends as its device dictates, none is lost
//! or doubled, and reads, the Watch stream and the log agree.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_local_cluster::Fleet;
use fleetcmd_local_cluster::log::read_log;
use fleetcmd_local_cluster::reads::{Settle, Watcher, get_all};
use fleetcmd_local_cluster::starts::{StartStats, jobs, spawn_starts};
use tokio::sync::watch;

use crate::{given_a_cluster, given_the_engines};

const DEVICES: usize = 200;
const PER_DEVICE: usize = 10;
const CONCURRENCY: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_failover_2000_executions_with_a_dispatcher_killed() {
    let Some((_serial, engines)) = given_the_engines("s1_failover").await else {
        return;
    };
    let t0 = Instant::now();
    let (mut cluster, mut registry, command_id) = given_a_cluster("s1", &engines, 2, 2).await;
    let dispatchers = vec![
        cluster.dispatcher("dispatcher-0"),
        cluster.dispatcher("dispatcher-1"),
    ];
    let fleet = Fleet::subscribed(&cluster, DEVICES).await;
    let watcher = Watcher::open(&mut registry, &command_id).await;
    let setup = t0.elapsed();

    // When: 2,000 starts over both dispatchers, and dispatcher-0 SIGKILLed after a third.
    let jobs = jobs(&fleet, PER_DEVICE, 0, "s1");
    let total = jobs.len();
    let (acks, mut acked) = watch::channel(0usize);
    let stats = Arc::new(Mutex::new(StartStats::default()));
    let run_started = Instant::now();
    let starter = spawn_starts(
        dispatchers,
        &command_id,
        jobs,
        CONCURRENCY,
        acks,
        stats.clone(),
    );
    let kill_at = total / 3;
    let reached =
        tokio::time::timeout(Duration::from_secs(120), acked.wait_for(|n| *n >= kill_at)).await;
    assert!(
        reached.is_ok_and(|r| r.is_ok()),
        "only {} of {kill_at} starts acknowledged in time",
        *acked.borrow()
    );
    cluster.kill("dispatcher-0");
    println!(
        "[s1] SIGKILLed dispatcher-0 after {} acknowledged starts ({:.1} s)",
        *acked.borrow(),
        run_started.elapsed().as_secs_f64()
    );
    let (started, errors) = tokio::time::timeout(Duration::from_secs(240), starter)
        .await
        .expect("all starts answered within 240 s")
        .expect("starter task");
    let starts_took = run_started.elapsed();

    // Then: every start was acknowledged, retried only where the killed dispatcher was.
    let failures: Vec<&String> = errors
        .iter()
        .filter(|e| !e.starts_with("skipped"))
        .collect();
    assert!(
        errors.is_empty(),
        "{} start(s) failed ({} skipped after that), e.g. {:?}; the shards of the killed dispatcher \
         did not move to dispatcher-1 (see its \"shard assignment change\" lines)",
        failures.len(),
        errors.len() - failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(started.len(), total, "every start acknowledged");
    let retries = std::mem::take(&mut stats.lock().unwrap_or_else(|e| e.into_inner()).retries);
    let retried = started.iter().filter(|s| s.attempts > 1).count();
    let slowest = started.iter().map(|s| s.took).max().unwrap_or_default();
    println!(
        "[s1] {total} starts acknowledged in {:.1} s ({retried} needed retries, slowest {:.1} s); retries by (dispatcher, code): {retries:?}",
        starts_took.as_secs_f64(),
        slowest.as_secs_f64()
    );
    for ((d, code), n) in &retries {
        assert!(
            code == "Unavailable" || *d == 0,
            "{n} start(s) failed with {code} on the surviving dispatcher-{d}: only UNAVAILABLE is retryable there"
        );
        assert_ne!(
            code, "DeadlineExceeded",
            "{n} start(s) hung for 30 s on dispatcher-{d}"
        );
    }
    let ids: HashSet<&str> = started.iter().map(|s| s.execution_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        total,
        "distinct client tokens got distinct executions"
    );

    // Every execution ends as its device dictates; none doubled, none lost.
    let listed = Settle::new(&registry, &command_id, &fleet, Duration::from_secs(90))
        .all("s1", &started)
        .await;
    let settled = run_started.elapsed();
    let listed_ids: HashSet<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(
        listed.len(),
        total,
        "ListCommandExecutions returns exactly {total} executions"
    );
    assert_eq!(
        listed_ids, ids,
        "the listed executions are exactly the acknowledged ones"
    );

    // Get agrees with the listing and with the log.
    let expected = fleet.expected(&started);
    let reads = get_all(&registry, ids.iter().map(|s| s.to_string()).collect(), 32).await;
    let log = read_log(&engines.kafka_brokers, cluster.topic(), &command_id).await;
    log.assert_consistent(total);
    let mut read = Vec::new();
    for s in &started {
        let r = match &reads[&s.execution_id] {
            Ok(r) => r,
            Err(e) => panic!("GetCommandExecution {}: {e}", s.execution_id),
        };
        assert_eq!(
            r.client_token, s.job.token,
            "{}: the client token",
            s.execution_id
        );
        assert_eq!(
            r.target.as_ref().map(|t| t.id.as_str()),
            Some(s.job.target.id.as_str())
        );
        let (status, terminal) = expected[&s.execution_id];
        assert_eq!(
            (r.status, r.terminal),
            (status_to_pb(status), terminal),
            "{}: Get status",
            s.execution_id
        );
        read.push(r);
    }
    let diffs = log.differences(read);
    assert!(
        diffs.is_empty(),
        "{} read/log differences, e.g.:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(10)].join("\n")
    );

    // The Watch stream (opened before the run) ends each execution in its read status.
    watcher
        .assert_ends_as_read(&started, &reads, Duration::from_secs(20))
        .await;

    // Each execution was delivered to its own device and answered once.
    let seen = fleet.check_deliveries(&started, &ids);
    cluster.assert_alive("dispatcher-1");
    cluster.assert_alive("projector");
    let summary = fleet.stop().await;
    println!(
        "[s1] setup {:.1} s; {total} executions acknowledged in {:.1} s, all settled after {:.1} s; \
         {} log events; {} watch events; devices: {} requests ({} duplicates, \
         {} silent executions expired before delivery), \
         {} updates accepted, {} resent after a retryable rejection ({} of them \
         had landed already); total {:.1} s",
        setup.as_secs_f64(),
        starts_took.as_secs_f64(),
        settled.as_secs_f64(),
        log.events,
        watcher.len(),
        seen.requests,
        seen.duplicates,
        seen.expired_undelivered,
        summary.accepted,
        seen.update_retries,
        seen.resent_after_unknown,
        t0.elapsed().as_secs_f64()
    );
}
