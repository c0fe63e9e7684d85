//! A measurement, not a check (run on purpose: `--ignored`): how long a shard takes to move
//! when its dispatcher is SIGKILLed — from the kill until every shard answers starts again
//! through the survivor — over several kills, alternating the two dispatchers and restarting
//! the killed one each time. Prints p50 and max; BENCHMARKS.md records the figures.

use std::time::{Duration, Instant};

use fleetcmd_domain::Target;
use fleetcmd_domain::shard::shard_of;
use fleetcmd_local_cluster::starts::try_start;
use fleetcmd_local_cluster::{Dispatcher, SHARDS};
use tonic::Code;

use crate::{given_a_cluster, given_the_engines};

const MOVES: usize = 10;

/// One thing per shard (no device needs to answer: a start only has to be accepted).
fn one_target_per_shard(prefix: &str) -> Vec<Target> {
    let mut targets: Vec<Option<Target>> = vec![None; SHARDS as usize];
    let mut i = 0u64;
    while targets.iter().any(Option::is_none) {
        let t = Target::thing(format!("{prefix}-{i}")).expect("thing name");
        let s = shard_of(&t.resource_name(), SHARDS) as usize;
        targets[s].get_or_insert(t);
        i += 1;
    }
    targets.into_iter().flatten().collect()
}

/// Starts on every shard through `d` until each has answered once; when the last one did.
async fn until_every_shard_answers(
    d: &Dispatcher,
    command_id: &str,
    targets: &[Target],
    round: usize,
) -> Instant {
    let mut tasks = Vec::new();
    for (s, t) in targets.iter().enumerate() {
        let mut d = d.clone();
        let (command_id, t) = (command_id.to_string(), t.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let token = format!("m{round}-s{s}");
                match try_start(&mut d, &command_id, &t, &token).await.0 {
                    Ok(_) => return Instant::now(),
                    Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("start on shard {s}: {:?} {}", e.code(), e.message()),
                }
            }
        }));
    }
    let mut last = Instant::now();
    for t in tasks {
        last = last.max(t.await.expect("probe task"));
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_shard_moves_after_sigkill() {
    let Some((_serial, engines)) = given_the_engines("shard_moves").await else {
        return;
    };
    let (mut cluster, _registry, command_id) = given_a_cluster("moves", &engines, 2, 1).await;
    let names = ["dispatcher-0", "dispatcher-1"];
    let targets = one_target_per_shard("move");
    let mut moves = Vec::with_capacity(MOVES);
    for round in 0..MOVES {
        let (killed, survivor) = (names[round % 2], names[(round + 1) % 2]);
        let d = cluster.dispatcher(survivor);
        // Both members serve before each kill (the previous victim is back and rebalanced).
        until_every_shard_answers(&d, &command_id, &targets, 2 * round).await;
        let killed_at = Instant::now();
        cluster.kill(killed);
        let served = until_every_shard_answers(&d, &command_id, &targets, 2 * round + 1).await;
        let took = served - killed_at;
        println!(
            "[moves] round {round}: {killed} killed, every shard served again after {:.2} s",
            took.as_secs_f64()
        );
        moves.push(took);
        cluster.start_process(killed);
        cluster.wait_serving(&[killed]).await;
    }
    moves.sort();
    let p50 = moves[moves.len() / 2];
    let max = moves[moves.len() - 1];
    println!(
        "[moves] {} SIGKILLs: p50 {:.2} s, max {:.2} s, min {:.2} s",
        moves.len(),
        p50.as_secs_f64(),
        max.as_secs_f64(),
        moves[0].as_secs_f64()
    );
}
