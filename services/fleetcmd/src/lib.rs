//! The `fleetcmd` binary's library: `serve` (everything in one process on the embedded
//! adapters), `run` (one service per process on the cluster engines, feature `cluster`), the
//! API client verbs, the device simulator and the load generator.

pub mod bench;
pub mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod serve;
pub mod simulator;
