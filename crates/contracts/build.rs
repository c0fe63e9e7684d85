//! Compiles `proto/` with protox (pure Rust, no system protoc) into OUT_DIR: the public API
//! (`fleetcmd.v1`, with gRPC clients and servers) and the internal contracts
//! (`fleetcmd.internal.v1`: log records and bus messages). Writes the file descriptor set of
//! the public API, which gRPC server reflection serves.

use std::path::PathBuf;

const PUBLIC: [&str; 5] = [
    "fleetcmd/v1/types.proto",
    "fleetcmd/v1/registry.proto",
    "fleetcmd/v1/dispatcher.proto",
    "fleetcmd/v1/things.proto",
    "fleetcmd/v1/rollouts.proto",
];
const INTERNAL: [&str; 3] = [
    "fleetcmd/internal/v1/log.proto",
    "fleetcmd/internal/v1/bus.proto",
    "fleetcmd/internal/v1/snapshot.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script compiled for one checkout may be
    // reused by another that shares the target directory, and must read that one's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in PUBLIC.iter().chain(&INTERNAL) {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let public = protox::compile(PUBLIC, [&root])?;
    std::fs::write(
        out.join("fleetcmd_descriptor.bin"),
        prost::Message::encode_to_vec(&public),
    )?;
    let all = protox::compile(PUBLIC.iter().chain(&INTERNAL), [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(all)?;
    Ok(())
}
