//! Multi-process fleetcmd clusters for the cluster scenarios (`services/fleetcmd/tests/cluster`):
//! every service is a `fleetcmd run <service>` child process of a binary the caller names,
//! against real NATS, Kafka, a CQL server and an MQTT broker started by the project's own
//! `deploy/engines/<engine>.sh` scripts, with simulated devices in the test process.
//!
//! - [`engines`]: which engines to use (from the environment), whether a script manages
//!   them, and outages that restart the engine even when the test fails;
//! - [`cluster`]: the child processes — ports, `--set` configuration, logs, health waits,
//!   SIGKILL and SIGTERM, and log tails when a test fails;
//! - [`fleet`]: simulated devices with a deterministic mix of behaviours, and what they saw;
//! - [`starts`]: starting many executions with retries through a failover;
//! - [`reads`]: listing, reading and watching executions, and the checks on them;
//! - [`log`]: the event log folded back into executions, to compare with what is read.
//!
//! Each cluster is isolated: its own Kafka topic and group prefix, keyspace, MQTT topic root
//! and device ids. Scenarios run [`one_at_a_time`]: some of them stop shared engines.

pub mod cluster;
pub mod engines;
pub mod fleet;
pub mod log;
pub mod reads;
pub mod starts;

use std::time::Duration;

use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use tonic::transport::Channel;

pub use cluster::Cluster;
pub use engines::{EngineOutage, Engines};
pub use fleet::Fleet;
pub use tonic_health::pb::health_check_response::ServingStatus;

pub type Registry = CommandRegistryClient<Channel>;
pub type Dispatcher = CommandDispatcherClient<Channel>;
pub type Things = fleetcmd_contracts::pb::thing_registry_client::ThingRegistryClient<Channel>;
/// A rollouts client.
pub type Rollouts = fleetcmd_contracts::pb::rollouts_client::RolloutsClient<Channel>;

/// Shards = partitions of each cluster's log topic.
pub const SHARDS: u32 = 16;
/// How long a process may take to report SERVING (first start: topic, keyspace, group join).
pub const READY_WAIT: Duration = Duration::from_secs(90);
/// Timeout of executions on silent devices: they must reach the cloud TIMED_OUT quickly.
pub const SILENT_TIMEOUT_SECS: i64 = 3;
/// Timeout of every other execution: long enough never to fire during a run.
pub const LONG_TIMEOUT_SECS: i64 = 600;
/// How long a start may keep being retried (a dispatcher failover takes a Kafka session
/// timeout, 6 s, plus the rebalance and the rebuild).
pub const START_RETRY_BUDGET: Duration = Duration::from_secs(45);
/// An engine outage must turn into an error within this.
pub const OUTAGE_ANSWER_WITHIN: Duration = Duration::from_secs(12);

/// A short random id for the names of one run.
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// The scenarios share the engines and stop some of them: each holds this for its whole run,
/// so they run one at a time even when the test harness runs tests in parallel (as
/// `cargo test --workspace` does).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
