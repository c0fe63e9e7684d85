//! NATS outage: starts and command creation (routed over NATS) answer UNAVAILABLE quickly,
//! reads stay right or UNAVAILABLE, nothing dies; once NATS is back the same calls succeed,
//! and the start retried with its token exists once.

use std::time::Instant;

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_contracts::pb;
use fleetcmd_domain::ExecutionStatus;
use fleetcmd_local_cluster::reads::{list_all, try_get};
use fleetcmd_local_cluster::starts::start_and_settle;
use fleetcmd_local_cluster::{OUTAGE_ANSWER_WITHIN, unique_id};
use tonic::Code;

use crate::given_an_outage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_nats_outage_gives_unavailable_then_recovers() {
    let Some(mut o) = given_an_outage("s4_nats_outage", "s4", "nats").await else {
        return;
    };

    // When NATS stops: starts (routed over NATS) fail fast and retryably; Get reads the read
    // model, not NATS: a right answer or UNAVAILABLE, never a wrong one.
    let mut outage = o.when_the_engine_stops("NATS").await;
    // CreateCommand (routed over NATS through the registry) fails fast too.
    let t = Instant::now();
    let create = o
        .registry
        .create_command(pb::CreateCommandRequest {
            command_id: format!("other-{}", unique_id()),
            payload: Some(pb::Payload {
                content: b"{}".to_vec(),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        })
        .await;
    println!(
        "[s4] CreateCommand with NATS down: {:?} after {:.1} s",
        create.as_ref().map(|_| ()).map_err(tonic::Status::code),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        create.as_ref().err().map(tonic::Status::code),
        Some(Code::Unavailable),
        "CreateCommand with NATS down"
    );
    assert!(
        t.elapsed() < OUTAGE_ANSWER_WITHIN,
        "CreateCommand with NATS down answered after {:?}",
        t.elapsed()
    );
    let health_during = o.cluster.health("dispatcher-0").await;
    println!("[s4] dispatcher health with NATS down: {health_during:?}");

    // Then, NATS back: the same calls succeed again (the retried start keeps its token).
    outage.restart();
    let back = Instant::now();
    let (d, r, c, target) = (&mut o.dispatcher, &mut o.registry, &o.command_id, &o.target);
    let during = start_and_settle(d, r, c, target, "s4-during").await;
    let recovered = back.elapsed();
    let after = start_and_settle(d, r, c, target, "s4-after").await;
    assert_ne!(during, after);
    let (get, _) = try_get(&mut o.registry, &o.before).await;
    assert_eq!(
        get.expect("Get after NATS is back").status,
        status_to_pb(ExecutionStatus::Succeeded)
    );
    // The start tried during the outage exists once at most, under its token.
    let listed = list_all(&o.registry, &o.command_id).await.expect("list");
    assert_eq!(
        listed.len(),
        3,
        "before, during (retried with its token) and after: {listed:?}"
    );
    o.cluster.assert_all_alive();
    o.fleet.stop().await;
    println!(
        "[s4] NATS outage: UNAVAILABLE within limits; calls succeed {:.1} s after NATS is back; total {:.1} s",
        recovered.as_secs_f64(),
        o.started.elapsed().as_secs_f64()
    );
}
