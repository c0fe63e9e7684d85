//! The execution dispatcher: the owners of shards of targets. An owner is the single writer
//! of its shard's log partition: it validates every input against the current state, appends
//! the resulting events, and only then answers. It keeps a timer per live execution, hands
//! deliveries to the edge, and serves the `CommandDispatcher` gRPC API.
//! Other services reach the owners through `fleetcmd_service_kit::ShardClient`.

pub mod grpc;
pub mod owner;

pub use owner::{OwnerConfig, run_owners};
