//! Compiles `proto/cairn/**/*.proto` (and the etcd subset `cairn bench --target etcd` speaks)
//! into Rust with the protoc shipped by `protoc-bin-vendored`, so a build needs no system protoc
//! (the path is handed to prost-build directly rather than through the `PROTOC` variable:
//! setting process environment is `unsafe` in edition 2024).

use std::path::PathBuf;

/// The public API's .proto files, relative to the workspace `proto/` directory, compiled with
/// the lean codec (`src/codec.rs`: small per-call buffers, for watches).
const PROTOS: &[&str] = &["cairn/v1/kv.proto", "cairn/v1/cluster.proto"];
/// The node-to-node service: few long-lived streams of large messages, tonic's own codec.
const PROTOS_PEER: &[&str] = &["cairn/peer/v1/raft.proto"];

/// Third-party contracts Cairn only calls (clients, no server traits): etcd's KV subset for the
/// comparison benchmark.
const PROTOS_CLIENT_ONLY: &[&str] = &["etcd/etcdserverpb/rpc.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = |protos: &[&str]| -> Vec<PathBuf> {
        let files: Vec<PathBuf> = protos.iter().map(|p| root.join(p)).collect();
        for f in &files {
            println!("cargo:rerun-if-changed={}", f.display());
        }
        files
    };
    let (files, files_peer, files_client_only) =
        (files(PROTOS), files(PROTOS_PEER), files(PROTOS_CLIENT_ONLY));
    let config = || -> Result<tonic_prost_build::Config, Box<dyn std::error::Error>> {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        // Keys and values as `bytes::Bytes`: zero-copy from the wire into the node.
        config.bytes(["."]);
        Ok(config)
    };
    let includes = [root];
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_with_config(config()?, &files, &includes)?;
    tonic_prost_build::configure().compile_with_config(config()?, &files_peer, &includes)?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(config()?, &files_client_only, &includes)?;
    Ok(())
}
