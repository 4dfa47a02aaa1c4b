//! Compiles `proto/cairn/v1/*.proto` into Rust with the protoc shipped by `protoc-bin-vendored`,
//! so a build needs no system protoc (the path is handed to prost-build directly rather than
//! through the `PROTOC` variable: setting process environment is `unsafe` in edition 2024).

use std::path::PathBuf;

/// The .proto files (the public API and the node-to-node service), relative to the workspace `proto/` directory.
const PROTOS: &[&str] = &[
    "cairn/v1/kv.proto",
    "cairn/v1/cluster.proto",
    "cairn/peer/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Keys and values as `bytes::Bytes`: zero-copy from the wire into the node.
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(config, &files, &[root])?;
    Ok(())
}
