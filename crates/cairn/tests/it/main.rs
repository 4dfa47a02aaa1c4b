//! Black-box tests of the `cairn` binary: each test starts real server processes on loopback
//! through [`support::Node`], talks to them as a user would, and cleans up after itself.

mod cli;
mod clients;
mod cluster;
mod differential;
mod durability;
mod elastic;
mod grpc;
mod http;
mod linearizability;
mod pubsub;
mod resp;
mod support;
mod tracking;
mod watch;
