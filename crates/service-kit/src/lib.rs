//! What fleetcmd's services share, so that no service depends on another: reaching the owner
//! of a shard over the bus ([`ShardClient`]), waiting until a write is readable
//! ([`ProjectionWatch`]), and serving gRPC with health, reflection and telemetry
//! ([`grpc::GrpcServer`]).

pub mod grpc;
pub mod presence;
pub mod projection;
pub mod shard_client;

pub use projection::{ProjectionWatch, READ_YOUR_WRITES_TIMEOUT, await_projection};
pub use shard_client::{CallError, ShardClient, call_status, input_name, unexpected};
