//! What `cairn bench` loads: a Cairn cluster through `cairn-client`, or an etcd cluster through
//! etcd's own KV gRPC service (`cairn_proto::etcd`, a subset compiled for this comparison), so
//! both systems meet the same generator, histograms and connection layout. The worker sees one
//! [`Conn`] and two operations; nothing else in the benchmark knows which system it talks to.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use cairn_proto::etcd::kv_client::KvClient;
use cairn_proto::etcd::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Cairn's gRPC API through cairn-client (endpoints: Cairn gRPC addresses)
    Cairn,
    /// etcd's KV gRPC service, `Put` and `Range` (endpoints: etcd client URLs)
    Etcd,
}

impl Target {
    /// The name in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cairn => "cairn",
            Target::Etcd => "etcd",
        }
    }
}

/// One connection (one HTTP/2 connection, lazily established) to one endpoint of the system
/// under test. Clones share the connection.
#[derive(Debug, Clone)]
pub enum Conn {
    /// A Cairn client; requests for keys led elsewhere are forwarded by the node (or routed by
    /// the client), as for any application.
    Cairn(cairn_client::Client),
    /// etcd's KV client over one tonic channel; the member forwards writes to its leader.
    Etcd(KvClient<Channel>),
}

impl Conn {
    /// A connection to `endpoint` with cairn-client's connect timeout and the given per-request
    /// timeout for both targets, so a slow request fails the same way on either side.
    pub fn open(
        target: Target,
        endpoint: &str,
        request_timeout: Duration,
        near_cache_bytes: Option<u64>,
    ) -> anyhow::Result<Self> {
        match target {
            Target::Cairn => {
                let config = cairn_client::ClientConfig {
                    request_timeout,
                    near_cache_bytes,
                    ..cairn_client::ClientConfig::default()
                };
                Ok(Conn::Cairn(cairn_client::Client::with_config(
                    endpoint, config,
                )?))
            }
            Target::Etcd => {
                let uri = if endpoint.contains("://") {
                    endpoint.to_string()
                } else {
                    format!("http://{endpoint}")
                };
                let channel = Endpoint::from_shared(uri)
                    .with_context(|| format!("invalid endpoint {endpoint:?}"))?
                    .connect_timeout(cairn_client::CONNECT_TIMEOUT_DEFAULT)
                    .timeout(request_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(Conn::Etcd(KvClient::new(channel)))
            }
        }
    }

    /// One request that proves the endpoint answers as the target it is meant to be (a Cairn
    /// status; an etcd linearizable read, which also needs a leader).
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Cairn(client) => client.status().await.map(drop)?,
            Conn::Etcd(client) => client
                .range(RangeRequest {
                    key: Bytes::from_static(b"cairn-bench-probe"),
                    count_only: true,
                    ..RangeRequest::default()
                })
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Read `key`: linearizable, or with `stale` from the answering node's own replica (Cairn's
    /// stale read, etcd's serializable Range). A missing key is not an error.
    pub async fn get(&mut self, key: Bytes, stale: bool) -> anyhow::Result<()> {
        match self {
            // A plain get goes through the near cache when there is one.
            Conn::Cairn(client) if !stale => client.get(key).await.map(drop)?,
            Conn::Cairn(client) => client.get_with(key, stale).await.map(drop)?,
            Conn::Etcd(client) => client
                .range(RangeRequest {
                    key,
                    serializable: stale,
                    ..RangeRequest::default()
                })
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Write `key` unconditionally; returns once the system acknowledged it.
    pub async fn put(&mut self, key: Bytes, value: Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Cairn(client) => client.put(key, value).await.map(drop)?,
            Conn::Etcd(client) => client
                .put(PutRequest {
                    key,
                    value,
                    ..PutRequest::default()
                })
                .await
                .map(drop)?,
        }
        Ok(())
    }
}
