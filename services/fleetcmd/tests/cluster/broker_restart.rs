//! MQTT broker restart: Mosquitto is restarted mid-run; the edges report NOT_SERVING, then
//! reconnect, the devices resubscribe, and executions before and after all end as their
//! devices dictate.

use std::time::{Duration, Instant};

use fleetcmd_local_cluster::engines::managed_by_script;
use fleetcmd_local_cluster::reads::Settle;
use fleetcmd_local_cluster::starts::{jobs, start_all};
use fleetcmd_local_cluster::{EngineOutage, Fleet, ServingStatus};

use crate::{SETTLE_WITHIN, given_a_cluster, given_the_engines};

const DEVICES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_mqtt_broker_restart_edges_recover() {
    let test = "s3_mqtt_broker_restart";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    if !managed_by_script(test, "mosquitto", &engines.mqtt_broker()) {
        return;
    }
    let t0 = Instant::now();
    let (mut cluster, registry, command_id) = given_a_cluster("s3", &engines, 1, 2).await;
    let dispatchers = vec![cluster.dispatcher("dispatcher-0")];
    let fleet = Fleet::subscribed(&cluster, DEVICES).await;
    let all_jobs = jobs(&fleet, 4, 0, "s3");
    let (before, after) = all_jobs.split_at(80);
    let mut started = start_all(dispatchers.clone(), &command_id, before.to_vec(), 32).await;
    let settle = Settle::new(&registry, &command_id, &fleet, SETTLE_WITHIN);
    settle.all("s3 before the restart", &started).await;

    // When: the broker restarts (its persistence keeps the sessions).
    let restart_at = Instant::now();
    let mut outage = EngineOutage::stop("mosquitto");
    for e in ["edge-0", "edge-1"] {
        cluster
            .wait_health(e, ServingStatus::NotServing, Duration::from_secs(30))
            .await;
    }
    outage.restart();

    // Then: the edges serve again, the devices resubscribe, later executions complete.
    for e in ["edge-0", "edge-1"] {
        let took = cluster
            .wait_health(e, ServingStatus::Serving, Duration::from_secs(60))
            .await;
        println!(
            "[s3] {e} serving again {:.1} s after the broker came back",
            took.as_secs_f64()
        );
    }
    fleet.wait_subscribed(2, Duration::from_secs(60)).await;
    let recovered = restart_at.elapsed();
    let sessions_kept = fleet.seen().sessions_kept();
    started.extend(start_all(dispatchers, &command_id, after.to_vec(), 32).await);
    settle.exactly("s3 after the restart", &started).await;
    cluster.assert_all_alive();
    fleet.stop().await;
    println!(
        "[s3] broker restarted; edges and {DEVICES} devices back within {:.1} s ({sessions_kept} devices found their session); \
         {} executions before and after all final; total {:.1} s",
        recovered.as_secs_f64(),
        started.len(),
        t0.elapsed().as_secs_f64()
    );
}
