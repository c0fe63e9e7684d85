//! The `fleetcmd` binary's library: `serve` (everything in one process on the embedded
//! adapters), the API client verbs, and the device simulator.

pub mod client;
pub mod serve;
pub mod simulator;
