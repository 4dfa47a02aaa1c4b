//! `cairn-proto`: the generated Rust types, clients and server traits of Cairn's public gRPC API
//! (`proto/cairn/v1/*.proto`). It exists so the server and the client crate share one compiled
//! copy of the wire contract without depending on each other.

/// Key → hash slot, as Redis Cluster computes it.
pub mod slot;

/// `cairn.v1`: the `Kv` and `Cluster` services.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("cairn.v1");
}

/// `cairn.peer.v1`: the node-to-node `Raft` service (not a client API).
pub mod peer {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("cairn.peer.v1");
}
