//! The fleetcmd domain: everything that decides, nothing that performs I/O.
//!
//! It holds the command and execution models, the execution state machine as
//! `decide`/`apply`, validation of every limit of AWS IoT Commands, MQTT topic parsing and
//! building, payload template rendering, the shard function, the access policy, and the
//! port traits the adapters implement. There is no clock, socket or runtime in here: time
//! is passed in as milliseconds since the Unix epoch, so every rule is testable as a pure
//! function.

pub mod ca;
pub mod command;
pub mod credential;
pub mod device;
pub mod device_acl;
pub mod error;
pub mod event;
pub mod execution;
pub mod group;
pub mod ids;
pub mod limits;
pub mod model;
pub mod paging;
pub mod policy;
pub mod ports;
pub mod presence;
pub mod protocol;
pub mod query;
pub mod rollout;
pub mod shard;
pub mod start;
pub mod template;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod thing;
pub mod topics;

pub use error::{Rejection, RejectionCode, ValidationError};
pub use ids::{CommandId, ExecutionId, Target, TargetKind};
pub use model::*;
