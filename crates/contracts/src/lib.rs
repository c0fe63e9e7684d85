//! The fleetcmd API contracts: generated protobuf and gRPC code for `fleetcmd.v1`, and the
//! conversions between those types and the domain's. Generated types stop here: services
//! convert with `TryFrom` (naming the missing or bad field) and `From`.

pub mod auth;
pub mod convert;

/// Generated code for package `fleetcmd.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("fleetcmd.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleetcmd_descriptor");
