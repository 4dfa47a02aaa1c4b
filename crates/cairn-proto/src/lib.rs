//! `cairn-proto`: the generated Rust types, clients and server traits of Cairn's public gRPC API
//! (`proto/cairn/v1/*.proto`). It exists so the server and the client crate share one compiled
//! copy of the wire contract without depending on each other. [`etcd`] is not Cairn's: a
//! subset of etcd's KV client, compiled here only for the comparison benchmark.

/// The public services' codec: prost with small per-call buffers.
pub mod codec;
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

/// `etcdserverpb`: a client for a subset of etcd v3.4's `KV` service (`Put` and `Range`). It
/// exists only so `cairn bench --target etcd` can load an etcd cluster for the comparison
/// benchmark; Cairn neither serves nor otherwise uses it.
pub mod etcd {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}
