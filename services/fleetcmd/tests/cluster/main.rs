#![cfg(feature = "cluster")]
//! The multi-process scenarios of the cluster: every service is a `fleetcmd run <service>`
//! process (this package's binary, built with `--features cluster`) against real NATS, Kafka,
//! a CQL server (or a real ScyllaDB) and Mosquitto, with simulated devices in this process.
//! The harness — engines, processes, fleets, checks — is `fleetcmd_local_cluster`.
//!
//! 1. [`failover`]: registry, two dispatchers, two edges, one projector; 2,000 executions
//!    over 200 devices; one dispatcher is SIGKILLed a third of the way in. Every execution
//!    ends as its device dictates, none is lost or doubled, and reads, the Watch stream and
//!    the log agree.
//! 2. [`projector_restart`]: the projector is stopped (SIGTERM) mid-run and restarted; it
//!    catches up.
//! 3. [`broker_restart`]: Mosquitto is restarted mid-run; the edges reconnect and later
//!    executions complete.
//! 4. [`nats_outage`], [`kafka_outage`]: engine outages give UNAVAILABLE quickly, not
//!    INTERNAL or a hang; after NATS is back calls succeed again. After the Kafka outage only
//!    the error kind is checked, and that nothing answers wrongly.
//! 5. [`read_after_accepted`]: a Get made as soon as a device has `/accepted` shows the
//!    update it accepted.
//! 6. [`things`]: things are created, updated, listed and deleted through the shard owners,
//!    the log and the CQL read model, each readable as soon as its call returns.
//!
//! ```text
//! for e in nats mosquitto kafka cql; do deploy/engines/$e.sh install && deploy/engines/$e.sh start; done
//! FLEETCMD_NATS_URL=nats://127.0.0.1:4222 FLEETCMD_KAFKA_BROKERS=127.0.0.1:9092 \
//! FLEETCMD_CQL_URI=127.0.0.1:9042 FLEETCMD_MQTT_BROKER=127.0.0.1:1884 \
//!   cargo test -p fleetcmd --features cluster --test cluster
//! ```
//!
//! Without the engines every scenario prints a skip line and passes, unless `CI` is set. The
//! outage and restart scenarios stop and restart engines through `deploy/engines/*.sh` (and
//! restart them even when they fail), so they need the engines those scripts manage. Process
//! logs go to a temp dir; on failure the tail of each is printed and the dir is kept. The
//! scenarios run one at a time.

mod broker_restart;
mod failover;
mod kafka_outage;
mod nats_outage;
mod projector_restart;
mod read_after_accepted;
mod rollouts;
mod shard_moves;
mod things;

use fleetcmd_domain::Target;
use std::time::{Duration, Instant};

use fleetcmd_local_cluster::engines::{host_port, managed_by_script};
use fleetcmd_local_cluster::reads::get_is_right_or_unavailable;
use fleetcmd_local_cluster::starts::{create_command, start_and_settle, start_is_unavailable};
use fleetcmd_local_cluster::{
    Cluster, Dispatcher, EngineOutage, Engines, Fleet, OUTAGE_ANSWER_WITHIN, Registry,
    one_at_a_time, unique_id,
};
use tokio::sync::MutexGuard;

/// How long executions may take to reach their final status in the smaller scenarios.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// The `fleetcmd` binary under test.
const FLEETCMD: &str = env!("CARGO_BIN_EXE_fleetcmd");

/// The engines of `test`, held for it alone (scenarios run one at a time); `None` when the
/// engines are not configured (the scenario is skipped).
async fn given_the_engines(test: &str) -> Option<(MutexGuard<'static, ()>, Engines)> {
    let serial = one_at_a_time().await;
    Engines::from_env(test).map(|engines| (serial, engines))
}

/// A cluster of `dispatchers` and `edges` (plus a registry and a projector), its registry,
/// and a command created on it.
async fn given_a_cluster(
    scenario: &str,
    engines: &Engines,
    dispatchers: usize,
    edges: usize,
) -> (Cluster, Registry, String) {
    let cluster = Cluster::start(scenario, engines, FLEETCMD, dispatchers, edges).await;
    let mut registry = cluster.registry();
    let command_id = format!("blink-{}", unique_id());
    create_command(&mut registry, &command_id).await;
    (cluster, registry, command_id)
}

/// An outage scenario's start: a small cluster, one succeeding device (device 0, `target`),
/// and one execution it already SUCCEEDED (`before`, started with the token
/// `<scenario>-before`).
struct Outage {
    /// When the scenario began, before the engines were looked for.
    started: Instant,
    _serial: MutexGuard<'static, ()>,
    cluster: Cluster,
    fleet: Fleet,
    registry: Registry,
    dispatcher: Dispatcher,
    command_id: String,
    target: Target,
    before: String,
    /// The scenario's name and the engine it stops (as `deploy/engines/<engine>.sh` names it).
    scenario: String,
    engine: &'static str,
}

/// [`Outage`] for `test`, which stops `engine` (`nats` or `kafka`); `None` (skipped) when the
/// engines are not configured or that one is not the one `deploy/engines/<engine>.sh` manages.
async fn given_an_outage(test: &str, scenario: &str, engine: &'static str) -> Option<Outage> {
    let started = Instant::now();
    let (serial, engines) = given_the_engines(test).await?;
    let address = match engine {
        "nats" => host_port(&engines.nats_url),
        "kafka" => host_port(&engines.kafka_brokers),
        other => panic!("no outage scenario stops {other}"),
    };
    if !managed_by_script(test, engine, address) {
        return None;
    }
    let (cluster, mut registry, command_id) = given_a_cluster(scenario, &engines, 1, 1).await;
    let mut dispatcher = cluster.dispatcher("dispatcher-0");
    let fleet = Fleet::subscribed(&cluster, 1).await;
    let target = fleet.devices[0].target.clone();
    let before = start_and_settle(
        &mut dispatcher,
        &mut registry,
        &command_id,
        &target,
        &format!("{scenario}-before"),
    )
    .await;
    Some(Outage {
        started,
        _serial: serial,
        cluster,
        fleet,
        registry,
        dispatcher,
        command_id,
        target,
        before,
        scenario: scenario.to_string(),
        engine,
    })
}

impl Outage {
    /// Stops the engine (`label` in messages). With it down: a start (token
    /// `<scenario>-during`) answers UNAVAILABLE within [`OUTAGE_ANSWER_WITHIN`], and reading
    /// `before` gives the right answer or UNAVAILABLE, as fast; no process died. The engine
    /// runs again once the outage returned is restarted or dropped.
    async fn when_the_engine_stops(&mut self, label: &str) -> EngineOutage {
        let outage = EngineOutage::stop(self.engine);
        let scenario = &self.scenario;
        start_is_unavailable(
            scenario,
            label,
            &mut self.dispatcher,
            &self.command_id,
            &self.target,
            &format!("{scenario}-during"),
        )
        .await;
        get_is_right_or_unavailable(
            &mut self.registry,
            &self.before,
            &format!("[{scenario}] Get with {label} down"),
            Some(OUTAGE_ANSWER_WITHIN),
        )
        .await;
        self.cluster.assert_all_alive();
        outage
    }
}
