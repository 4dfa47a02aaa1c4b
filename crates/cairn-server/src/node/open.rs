//! Opening a node: its identity, WAL, metadata group and shards from its data directory (a
//! new directory bootstraps a one-node cluster, or joins one with `--join`), then waiting
//! until it leads the groups it alone votes in.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cairn_raft::{Groups, NodeAddr, Peers};
use cairn_wal::{Wal, WalOptions};

use super::{ELECTION_WAIT, Node, NodeOptions, OutOfTouch};
use crate::config::SyncMode;
use crate::health::WriteHealth;
use crate::meta::{ClusterConfig, Meta, NodeRecord};
use crate::scan::ScanCursors;
use crate::shards::{FIRST_NODE_ID, NodeIdentity, Shards, ShardsSetup, meta_dir, wal_dir};

impl Node {
    /// Open (or create) the node's data directory, start every shard's Raft group (a new
    /// directory bootstraps a one-node cluster) and wait until this node leads the groups it
    /// alone votes in.
    pub async fn open(options: NodeOptions) -> anyhow::Result<Arc<Node>> {
        let io = options.io.clone();
        let peers = Arc::new(
            Peers::over(options.network.clone()).with_snapshot_rate(options.move_bytes_per_sec),
        );
        let identity = match NodeIdentity::load(&*io, &options.data_dir)? {
            Some(identity) => identity,
            None => {
                let identity = match &options.join {
                    None => NodeIdentity::new(None, FIRST_NODE_ID, options.shards, false),
                    Some(addr) => {
                        let name = crate::shards::new_node_name();
                        let me = NodeRecord {
                            raft_id: 0,
                            name: name.clone(),
                            grpc_addr: options.grpc_addr.to_string(),
                            http_addr: options.http_addr.to_string(),
                            resp_addr: options.resp_addr.to_string(),
                            down: false,
                            leaving: false,
                        };
                        let (raft_id, shards) = crate::peer::join(&peers, addr, &me).await?;
                        tracing::info!(raft_id, shards, via = %addr, "joined the cluster");
                        NodeIdentity::new(Some(name), raft_id, shards, true)
                    }
                };
                identity.create(&*io, &options.data_dir)?;
                identity
            }
        };
        identity.refuse_if_removed(&*io, &options.data_dir)?;
        if identity.shards != options.shards && !identity.joined {
            tracing::info!(
                recorded = identity.shards,
                asked = options.shards,
                "data directory keeps the shard count it was created with"
            );
        }
        let dir = wal_dir(&options.data_dir);
        let wal = Wal::open(
            &dir,
            WalOptions {
                io: io.clone(),
                segment_bytes_max: options.tuning.wal_segment_bytes_max,
                fsync_batches: options.sync == SyncMode::Always,
                on_fsync: Some(crate::metrics::wal_fsync_observer()),
            },
        )
        .map_err(|e| {
            anyhow::anyhow!("cannot open the write-ahead log in {}: {e}", dir.display())
        })?;
        let wal = Arc::new(wal);
        let groups = Arc::new(Groups::new(identity.raft_id));
        let health = Arc::new(WriteHealth::default());
        let feed_wake = Arc::new(tokio::sync::watch::channel(0u64).0);
        let setup = ShardsSetup {
            io: io.clone(),
            data_dir: options.data_dir.clone(),
            identity: identity.clone(),
            value_bytes_max: options.value_bytes_max,
            engine_segment_bytes_max: options.tuning.engine_segment_bytes_max,
            wal: wal.clone(),
            peers: peers.clone(),
            groups: groups.clone(),
            config: cairn_raft::config::shard_config(),
            health: health.clone(),
            advertise: NodeAddr {
                grpc: options.grpc_addr.to_string(),
            },
            clock: options.clock.clone(),
            feed_limits: options.watch_history,
            feed_wake: feed_wake.clone(),
        };
        let meta = Meta::open(&setup, &meta_dir(&options.data_dir)).await?;
        let shards = Shards::open(setup).await?;
        let (forgets, forget_queue) = tokio::sync::mpsc::channel(crate::txn::FORGETS_QUEUED_MAX);
        let node = Arc::new(Node {
            identity,
            options,
            shards,
            meta,
            peers,
            liveness: Default::default(),
            handovers_refused: Default::default(),
            reported: Default::default(),
            placements_seen: std::sync::atomic::AtomicU64::new(u64::MAX),
            followed: Default::default(),
            feed_demand: Default::default(),
            follow_wake: Default::default(),
            placements: Default::default(),
            dropped: Default::default(),
            checkpoint_waiting: Default::default(),
            removed: tokio::sync::watch::Sender::new(None),
            wal,
            groups,
            health,
            stopping: AtomicBool::new(false),
            splitting: AtomicBool::new(false),
            split_refused_at: Default::default(),
            // Started from the wall clock so that ids stay unique across restarts.
            txn_counter: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            ),
            #[cfg(test)]
            read_pause: Default::default(),
            #[cfg(test)]
            txn_pause: Default::default(),
            cursors: ScanCursors::default(),
            started: Instant::now(),
            forgets,
            pubsub: Default::default(),
            fanouts: Default::default(),
            feed_wake,
            touch: tokio::sync::watch::channel(OutOfTouch::default()).0,
        });
        Node::spawn_forgetter(&node, forget_queue);
        node.await_sole_leadership().await?;
        node.check_addresses_unchanged()?;
        if !node.identity.joined && node.meta.is_leader() {
            let config = ClusterConfig {
                shards: node.identity.shards,
                replicas: node.options.replicas,
                replicas_only: node.options.replicas_only,
            };
            node.meta
                .bootstrap(node.my_record(), config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot write the cluster map: {e}"))?;
        }
        node.refresh_placements();
        tracing::info!(
            node_id = %node.identity.node_id,
            raft_id = node.identity.raft_id,
            shards = node.identity.shards,
            keys = node.dbsize(),
            "node opened"
        );
        Ok(node)
    }

    /// Refuses to start a member of a multi-node cluster on other addresses than those it is
    /// registered with: every group's membership names its gRPC address, so its peers would
    /// not reach it, and cluster clients would be sent to its old RESP address. (A one-node
    /// cluster just records its new addresses.)
    fn check_addresses_unchanged(&self) -> anyhow::Result<()> {
        let me = self.my_record();
        let Some(recorded) = self.meta.node(me.raft_id) else {
            return Ok(());
        };
        let others = self.meta.nodes().iter().any(|r| r.raft_id != me.raft_id);
        let moved = (recorded.grpc_addr != me.grpc_addr)
            || (recorded.http_addr != me.http_addr)
            || (recorded.resp_addr != me.resp_addr);
        anyhow::ensure!(
            !(others && moved),
            "node {} is registered in its cluster at gRPC {}, HTTP {}, RESP {}, but was started \
             with gRPC {}, HTTP {}, RESP {}: its peers and cluster clients would not find it. \
             Start it with its registered addresses (changing a member's addresses is not \
             supported yet; a node with a new data directory can --join as a new member)",
            me.raft_id,
            recorded.grpc_addr,
            recorded.http_addr,
            recorded.resp_addr,
            me.grpc_addr,
            me.http_addr,
            me.resp_addr
        );
        Ok(())
    }

    /// Waits until this node leads every group in which it is the only voter (a restarted
    /// one-node cluster elects itself after one election timeout) and has applied everything
    /// its log holds.
    async fn await_sole_leadership(&self) -> anyhow::Result<()> {
        let mut waited = std::collections::BTreeSet::new();
        // A parent that replays a split opens the child as it applies it: until the set of
        // shards stops growing, the new ones are waited for too (a sole voter reads straight
        // from its engine, which must have applied its log first).
        loop {
            let shards = self.shards.list();
            let fresh: Vec<_> = shards.iter().filter(|s| !waited.contains(&s.id)).collect();
            if fresh.is_empty() && !waited.is_empty() {
                return Ok(());
            }
            let meta = waited
                .is_empty()
                .then(|| ("meta".to_string(), &self.meta.group));
            let groups = meta
                .into_iter()
                .chain(fresh.iter().map(|s| (format!("shard {}", s.id), &s.group)));
            self.await_sole_leadership_of(groups).await?;
            waited.extend(fresh.iter().map(|s| s.id));
            if shards.is_empty() {
                return Ok(());
            }
        }
    }

    async fn await_sole_leadership_of(
        &self,
        groups: impl Iterator<Item = (String, &cairn_raft::Group)>,
    ) -> anyhow::Result<()> {
        let me = self.identity.raft_id;
        for (name, group) in groups {
            // A node that joined waits for each group's leader to add it.
            if !group
                .is_initialized()
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
            {
                continue;
            }
            // A replica with a vote but nothing in its log nor applied (created for a leader
            // whose first entries had not arrived yet) has no membership to wait for.
            let now = group.status();
            if now.last_log_index.is_none() && now.applied.is_none() && now.snapshot.is_none() {
                continue;
            }
            let status = group
                .wait_for_membership(ELECTION_WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if !status.voters.iter().eq([&me]) {
                continue;
            }
            group
                .wait_for_leader(me, ELECTION_WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("{name} did not elect this node: {e}"))?;
            // The log may hold entries appended before a crash but never known to be
            // committed; the new term commits them. A sole voter reads straight from the
            // engine, so the node serves nothing until they are applied: a read must never see
            // a state that a later read contradicts (read-index round: applied ≥ the term's
            // first entry).
            let term = group
                .leading()
                .ok_or_else(|| anyhow::anyhow!("{name} lost its leader at open"))?;
            group
                .make_ready(&term)
                .await
                .map_err(|e| anyhow::anyhow!("{name} did not apply its log: {e:?}"))?;
        }
        Ok(())
    }
}
