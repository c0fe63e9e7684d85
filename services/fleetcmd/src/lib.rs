//! The `fleetcmd` binary's library: `run` (one service per process on the cluster engines,
//! feature `cluster`). The one-process server is `fleetcmd_standalone`, the API client verbs
//! `fleetcmd_cli`, the device simulator `fleetcmd_simulator` and the load generator
//! `fleetcmd_bench`; the binary parses flags, wires them and dispatches.

#[cfg(feature = "cluster")]
pub mod cluster;
