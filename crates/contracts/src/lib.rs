//! The fleetcmd contracts: generated protobuf and gRPC code for the public API
//! (`fleetcmd.v1`) and for the internal contracts (`fleetcmd.internal.v1`: the event log's
//! records and the messages on the bus), and the conversions between those types and the
//! domain's. Generated types stop here: services convert with `TryFrom` (naming the missing
//! or bad field) and `From`, or encode and decode domain values with [`codec`].

pub mod audit;
pub mod auth;
pub mod codec;
pub mod convert;

/// Generated code, nested as the packages are (the internal package refers to the public
/// one as `super::super::v1`).
mod generated {
    pub mod fleetcmd {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs)]
            tonic::include_proto!("fleetcmd.v1");
        }
        pub mod internal {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic, missing_docs)]
                tonic::include_proto!("fleetcmd.internal.v1");
            }
        }
    }
}

/// Generated code for package `fleetcmd.v1`.
pub use generated::fleetcmd::v1 as pb;

/// Generated code for package `fleetcmd.internal.v1`.
pub use generated::fleetcmd::internal::v1 as internal;

/// The encoded file descriptor set of the public API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleetcmd_descriptor");
