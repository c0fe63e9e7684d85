//! Kafka outage: a start answers UNAVAILABLE quickly and reads stay right or UNAVAILABLE,
//! with no process dying. After the restart answers must stay right or be UNAVAILABLE; the
//! registry and the edge, which do not use Kafka, live on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetcmd_local_cluster::reads::get_is_right_or_unavailable;
use fleetcmd_local_cluster::starts::try_start;
use tonic::Code;

use crate::given_an_outage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_kafka_outage_gives_unavailable() {
    let Some(mut o) = given_an_outage("s5_kafka_outage", "s5", "kafka").await else {
        return;
    };

    // When Kafka stops: starts fail fast and retryably, reads stay right, nothing dies.
    let mut outage = o.when_the_engine_stops("Kafka").await;

    // Kafka back (a compat engine such as tansu comes back empty): the answers must stay
    // right or be UNAVAILABLE. A dispatcher or projector may die when the broker comes back
    // without the topic (librdkafka 2.12 sometimes segfaults in its metadata cache then).
    // That is printed, not failed: a supervisor restarts such a process, and the outage
    // itself (above) must not kill anything.
    outage.restart();
    let mut codes: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..3 {
        let token = format!("s5-after-{i}");
        let (start, took) = try_start(&mut o.dispatcher, &o.command_id, &o.target, &token).await;
        let code = start
            .as_ref()
            .map_or_else(|s| format!("{:?}", s.code()), |_| "Ok".into());
        *codes.entry(code.clone()).or_default() += 1;
        println!(
            "[s5] Start after the Kafka restart: {code} after {:.1} s",
            took.as_secs_f64()
        );
        // A transport error means the dispatcher is going away: give the exit a moment to
        // show.
        let mut dispatcher_died = o.cluster.exit_status("dispatcher-0").is_some();
        let gone_at = Instant::now();
        while !dispatcher_died
            && matches!(
                start.as_ref().map_err(tonic::Status::code),
                Err(Code::Unknown | Code::Cancelled)
            )
            && gone_at.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            dispatcher_died = o.cluster.exit_status("dispatcher-0").is_some();
        }
        assert!(
            matches!(
                start.as_ref().map_err(tonic::Status::code),
                Ok(_) | Err(Code::Unavailable)
            ) || dispatcher_died,
            "Start after the Kafka restart: {start:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "Start after the Kafka restart answered after {took:?}"
        );
        get_is_right_or_unavailable(
            &mut o.registry,
            &o.before,
            "[s5] Get after the Kafka restart",
            None,
        )
        .await;
        if dispatcher_died {
            break;
        }
    }
    o.cluster.assert_alive("registry");
    o.cluster.assert_alive("edge-0");
    let mut died = Vec::new();
    for name in ["dispatcher-0", "projector"] {
        if let Some(status) = o.cluster.exit_status(name) {
            println!(
                "[s5] WARNING: {name} exited ({status}) after Kafka came back; log tail:\n{}",
                o.cluster.log_tail(name, 15)
            );
            died.push(format!("{name} ({status})"));
        }
    }
    o.fleet.stop().await;
    println!(
        "[s5] Kafka outage: UNAVAILABLE within limits, no process died during it; after the restart \
         starts gave {codes:?}, reads stayed right, exited: {died:?}; total {:.1} s",
        o.started.elapsed().as_secs_f64()
    );
}
