//! The metadata group: the cluster map, replicated by its own Raft group (group 0) instead of
//! ZooKeeper.
//!
//! The map lives in the group's replica, an engine like a shard's, under five kinds of keys:
//! `config` (shard count and voters per shard, fixed when the cluster is created),
//! `next_id` (the last Raft id handed out), `node/<raft id, 20 digits>` (a [`NodeRecord`]:
//! the node's name, its addresses, whether the metadata leader marked it down and whether it
//! is leaving) and `removed/<raft id, 20 digits>` (a [`Removal`]: a node that left or was
//! replaced, kept so that it is told why when it comes back, and never admitted again under
//! its name). Writes are
//! ordinary commands evaluated by the group's proposer, so they are durable on a majority of
//! the group's voters before they are acknowledged, and only the group's leader makes them.
//! Every node holds a replica ([`meta_voters`] voters, placed by the balancer; the
//! others learners), so any
//! node reads the map locally; those reads may lag the leader by the replication delay, which
//! is fine for what they serve (addresses, status).
//!
//! Each shard's Raft membership is the authority on which nodes hold it. The map keeps a
//! copy, `shard/<id, 10 digits>` (a [`ShardPlacement`]: members, leader, slots, size), which
//! each shard's leader reports when it changes ([`crate::placement::report_shards`]): what the
//! metadata leader's balancer plans from ([`crate::balancer`]), without holding the shards.
//! The shard's leader adds the map's nodes to it as learners ([`crate::placement`]), and the
//! balancer decides who votes and leads.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use cairn_raft::Group;

use crate::command::{Command, Condition, Expiry, KeyRange};
use crate::error::CommandError;
use crate::proposer::{Proposal, ProposalOp};
use crate::reply::Reply;
use crate::shards::{ShardsSetup, open_replica};

/// The metadata group's Raft group id.
pub const META_GROUP: u64 = 0;
/// Fewest voters the metadata group wants (capped by the nodes that stay); it wants as
/// many as a shard when shards have more ([`meta_voters`]). Other nodes hold learner
/// replicas of it.
pub const META_VOTERS_MIN: usize = 3;

/// The voters the metadata group wants in a cluster of `replicas` voters per shard, before
/// the cap by the nodes that stay: as many as a shard (the next odd number), at least
/// [`META_VOTERS_MIN`], so the map survives every loss of nodes the shards survive.
pub fn meta_voters(replicas: usize) -> usize {
    // An odd count: a fourth voter tolerates no more failures than three, and costs an
    // acknowledgement more per write.
    META_VOTERS_MIN.max(replicas | 1)
}
/// Most nodes the map lists (one scan reads them all).
pub const NODES_MAX: usize = 1024;

const CONFIG_KEY: &[u8] = b"config";
const NEXT_ID_KEY: &[u8] = b"next_id";
/// How many shard ids splits have taken: the next child is shard `config.shards + this`.
const SPLITS_KEY: &[u8] = b"splits";
const NODE_PREFIX: &str = "node/";
const REMOVED_PREFIX: &str = "removed/";
const SHARD_PREFIX: &str = "shard/";

/// One node as the cluster map records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub raft_id: u64,
    /// 40 hex characters, the node's name (Redis Cluster's node id).
    pub name: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    /// The metadata leader has not heard from the node for longer than `--down-after-ms`.
    #[serde(default)]
    pub down: bool,
    /// Asked to leave (`cairn cluster remove-node`): the balancer moves its leaderships and
    /// votes to other nodes, then removes it.
    #[serde(default)]
    pub leaving: bool,
}

/// A node removed from the cluster: drained on request, or replaced after being down for
/// longer than `--replace-down-after`. Its record is gone from the map and every group
/// drops it; its name is never admitted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub raft_id: u64,
    pub name: String,
    /// Why, in words (`left on request`, `replaced after being down for 300 s`).
    pub reason: String,
    /// Whether it was drained on request or replaced (a record written before this field
    /// reads as replaced, the stricter of the two).
    #[serde(default)]
    pub cause: RemovalCause,
}

/// Why the cluster removed a node: what its process tells by its exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemovalCause {
    /// Drained with `cairn cluster remove-node`: it did what it was asked, and exits 0.
    Left,
    /// Down for longer than `--replace-down-after`, its replicas recreated elsewhere: it
    /// exits with an error, for its operator to notice.
    #[default]
    Replaced,
}

impl RemovalCause {
    /// The name a refused `Join` carries for it ([`crate::peer::REMOVED_METADATA`]).
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalCause::Left => "left",
            RemovalCause::Replaced => "replaced",
        }
    }

    /// Reads [`RemovalCause::as_str`].
    pub fn parse(s: &str) -> Option<RemovalCause> {
        match s {
            "left" => Some(RemovalCause::Left),
            "replaced" => Some(RemovalCause::Replaced),
            _ => None,
        }
    }
}

/// Where a shard lives and who leads it, as its leader last reported it to the map
/// (`shard/<id, 10 digits>`): how a node that holds no replica of the shard routes to it,
/// and how the metadata leader's balancer sees it. Each leader reports its group's
/// committed membership only (never one a new leader could undo) whenever it, the
/// leadership, the shard's slots or its size change ([`crate::placement::report_shards`]).
/// The map keeps the report of the highest (term, membership index): a deposed leader's
/// late report never replaces its successor's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    pub shard: u32,
    /// The reporting leader's term.
    pub term: u64,
    /// Log index of the membership entry the report lists.
    pub membership_index: u64,
    pub leader: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// The learners within [`crate::placement::PROMOTE_LAG_ENTRIES_MAX`] entries of the
    /// leader's log.
    pub caught_up: BTreeSet<u64>,
    pub first_slot: u16,
    pub last_slot: u16,
    /// Live bytes of the leader's replica (on disk, less what a merge would reclaim).
    pub live_bytes: u64,
    /// The shards split from this one (each reports itself once its group has a leader).
    pub children: Vec<u32>,
}

impl ShardPlacement {
    fn version(&self) -> (u64, u64) {
        (self.term, self.membership_index)
    }

    /// Whether `new`, reported by a leader, is to replace this report in the map: it is not
    /// older, and it tells something new (its size only once it moved by a sixteenth).
    pub fn replaced_by(&self, new: &ShardPlacement) -> bool {
        if new.version() != self.version() {
            return new.version() > self.version();
        }
        let moved = self.live_bytes.abs_diff(new.live_bytes) > self.live_bytes / 16 + 4096;
        moved
            || (new.leader, &new.voters, &new.learners, &new.caught_up)
                != (self.leader, &self.voters, &self.learners, &self.caught_up)
            || (new.first_slot, new.last_slot) != (self.first_slot, self.last_slot)
            || new.children != self.children
    }

    /// Every node holding a replica, voters first.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// Settings fixed when the cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub shards: u32,
    /// Voters per shard (capped by the number of nodes).
    pub replicas: u32,
    /// Each shard's data lives on its voters only (and learners being added); otherwise
    /// every node holds a replica of every shard, the nodes beyond the voters as learners.
    #[serde(default)]
    pub replicas_only: bool,
}

/// The metadata group's replica on this node.
#[derive(Debug)]
pub struct Meta {
    pub group: Group,
    pub(crate) proposals: mpsc::Sender<Proposal>,
    /// Serialises this node's read-modify-write updates of the map (registering a node reads
    /// the records, then writes one).
    updates: Mutex<()>,
    /// The node's wall clock (writes are proposed at its time).
    clock: std::sync::Arc<dyn cairn_storage::Clock>,
}

fn node_key(raft_id: u64) -> Bytes {
    Bytes::from(format!("{NODE_PREFIX}{raft_id:020}"))
}

fn removal_key(raft_id: u64) -> Bytes {
    Bytes::from(format!("{REMOVED_PREFIX}{raft_id:020}"))
}

fn shard_key(id: u32) -> Bytes {
    Bytes::from(format!("{SHARD_PREFIX}{id:010}"))
}

impl Meta {
    /// Opens the replica in `dir` and starts the group (bootstrapped with this node alone when
    /// this node creates the cluster).
    pub async fn open(setup: &ShardsSetup, dir: &Path) -> anyhow::Result<Meta> {
        let opened = open_replica(setup, dir, META_GROUP, "meta".into()).await?;
        Ok(Meta {
            group: opened.group,
            proposals: opened.proposals,
            updates: Mutex::new(()),
            clock: setup.clock.clone(),
        })
    }

    /// The cluster's settings, once the first node has written them.
    pub fn config(&self) -> Option<ClusterConfig> {
        let value = self.group.sm.engine().get(CONFIG_KEY).ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Every node of the map, by Raft id, as this replica has applied it (a node with a
    /// [`Removal`] is not one, even if its record is still there).
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let gone: std::collections::BTreeSet<u64> =
            self.removals().iter().map(|r| r.raft_id).collect();
        let mut nodes: Vec<NodeRecord> = self.scan(NODE_PREFIX);
        nodes.retain(|n| !gone.contains(&n.raft_id));
        nodes
    }

    /// Every node removed from the cluster, by Raft id.
    pub fn removals(&self) -> Vec<Removal> {
        self.scan(REMOVED_PREFIX)
    }

    /// Why node `raft_id` was removed, if it was.
    pub fn removal(&self, raft_id: u64) -> Option<Removal> {
        let value = self.group.sm.engine().get(&removal_key(raft_id)).ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Every shard's placement as its leader last reported it, by shard id.
    pub fn shards(&self) -> Vec<ShardPlacement> {
        self.scan_up_to(SHARD_PREFIX, crate::shards::SHARD_IDS_MAX as usize)
    }

    /// Shard `id`'s placement as its leader last reported it.
    pub fn shard(&self, id: u32) -> Option<ShardPlacement> {
        let value = self.group.sm.engine().get(&shard_key(id)).ok()??;
        serde_json::from_slice(&value).ok()
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &'static str) -> Vec<T> {
        self.scan_up_to(prefix, NODES_MAX)
    }

    fn scan_up_to<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &'static str,
        limit: usize,
    ) -> Vec<T> {
        let range = KeyRange::prefix(Bytes::from_static(prefix.as_bytes()));
        let engine = self.group.sm.engine();
        let start = crate::node::as_ref_bound(&range.start);
        let end = crate::node::as_ref_bound(&range.end);
        match engine.scan(start, end, limit) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|e| serde_json::from_slice(&e.value).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster map");
                Vec::new()
            }
        }
    }

    /// The record of node `raft_id`.
    pub fn node(&self, raft_id: u64) -> Option<NodeRecord> {
        let value = self.group.sm.engine().get(&node_key(raft_id)).ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// The gRPC address of the metadata group's leader, as this replica knows it (`None`:
    /// no leader known).
    pub fn leader_addr(&self) -> Option<String> {
        let status = self.group.status();
        status
            .leader
            .and_then(|l| status.nodes.get(&l).map(|a| a.grpc.clone()))
    }

    /// Whether this node leads the metadata group.
    pub fn is_leader(&self) -> bool {
        self.group.leading().is_some()
    }

    /// As leader, waits until the replica has applied everything committed (a new leader may
    /// not have applied its predecessor's last writes), so a read-modify-write reads the map as
    /// it is.
    async fn up_to_date(&self) -> Result<(), CommandError> {
        self.group.linearize().await.map_err(|e| {
            CommandError::TryAgain(format!("this node cannot update the cluster map now: {e}"))
        })
    }

    async fn write(&self, cmd: Command) -> Result<Reply, CommandError> {
        crate::proposer::submit(
            &self.proposals,
            ProposalOp::Command(cmd),
            self.clock.now_ms(),
        )
        .await
    }

    async fn put(&self, key: Bytes, value: Vec<u8>) -> Result<(), CommandError> {
        self.write(Command::Set {
            key,
            value: Bytes::from(value),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        })
        .await
        .map(|_| ())
    }

    async fn put_node(&self, record: &NodeRecord) -> Result<(), CommandError> {
        let value = serde_json::to_vec(record).expect("a node record serialises");
        self.put(node_key(record.raft_id), value).await
    }

    /// As the leader of a cluster this node created: writes the settings and this node's
    /// record if the map does not have them yet, and keeps this node's addresses current.
    pub async fn bootstrap(
        &self,
        me: NodeRecord,
        config: ClusterConfig,
    ) -> Result<(), CommandError> {
        let _guard = self.updates.lock().await;
        if self.config().is_none() {
            let value = serde_json::to_vec(&config).expect("a config serialises");
            self.put(Bytes::from_static(CONFIG_KEY), value).await?;
            self.put(
                Bytes::from_static(NEXT_ID_KEY),
                me.raft_id.to_string().into_bytes(),
            )
            .await?;
        }
        let known = self.node(me.raft_id);
        let mut me = me;
        me.leaving = known.as_ref().is_some_and(|k| k.leaving);
        if known.as_ref() != Some(&me) {
            self.put_node(&me).await?;
        }
        Ok(())
    }

    /// As the metadata leader: admits a node named `name` (or updates the addresses of the
    /// node already known by that name) and returns its Raft id.
    pub async fn register(&self, mut record: NodeRecord) -> Result<u64, CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        if let Some(gone) = self.removals().into_iter().find(|r| r.name == record.name) {
            return Err(CommandError::Invalid(gone.refusal()));
        }
        let known = self.nodes().into_iter().find(|n| n.name == record.name);
        record.raft_id = match &known {
            Some(n) => n.raft_id,
            None => {
                if self.nodes().len() >= NODES_MAX {
                    return Err(CommandError::Invalid(format!(
                        "the cluster already has {NODES_MAX} nodes"
                    )));
                }
                match self
                    .write(Command::IncrBy {
                        key: Bytes::from_static(NEXT_ID_KEY),
                        delta: 1,
                    })
                    .await?
                {
                    Reply::Int(id) if id > 0 => id as u64,
                    other => {
                        return Err(CommandError::Invalid(format!(
                            "unexpected next node id {other:?}"
                        )));
                    }
                }
            }
        };
        record.down = false;
        record.leaving = known.as_ref().is_some_and(|k| k.leaving);
        if known.as_ref() != Some(&record) {
            self.put_node(&record).await?;
        }
        Ok(record.raft_id)
    }

    /// As the metadata leader: a shard id never used, for the child of a split (ids are never
    /// reused, even when the split they were taken for did not happen).
    pub async fn take_shard_id(&self) -> Result<u32, CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        let config = self
            .config()
            .ok_or_else(|| CommandError::TryAgain("the cluster map is not written yet".into()))?;
        match self
            .write(Command::IncrBy {
                key: Bytes::from_static(SPLITS_KEY),
                delta: 1,
            })
            .await?
        {
            Reply::Int(n) if n > 0 => u32::try_from(i64::from(config.shards) - 1 + n)
                .ok()
                .filter(|&id| id < crate::shards::SHARD_IDS_MAX)
                .ok_or_else(|| {
                    CommandError::Invalid(format!(
                        "no shard ids left (a node holds ids below {})",
                        crate::shards::SHARD_IDS_MAX
                    ))
                }),
            other => Err(CommandError::Invalid(format!(
                "unexpected split count {other:?}"
            ))),
        }
    }

    /// As the metadata leader: records a shard leader's report, unless the map holds a
    /// newer one or one that tells the same ([`ShardPlacement::replaced_by`]). Returns
    /// whether it wrote it.
    pub async fn report_shard(&self, report: &ShardPlacement) -> Result<bool, CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        if self
            .shard(report.shard)
            .is_some_and(|known| !known.replaced_by(report))
        {
            return Ok(false);
        }
        let value = serde_json::to_vec(report).expect("a shard placement serialises");
        self.put(shard_key(report.shard), value)
            .await
            .map(|()| true)
    }

    /// As the metadata leader: records whether node `raft_id` is down.
    pub async fn set_down(&self, raft_id: u64, down: bool) -> Result<(), CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        let Some(mut record) = self.node(raft_id) else {
            return Ok(());
        };
        if record.down == down {
            return Ok(());
        }
        record.down = down;
        self.put_node(&record).await
    }

    /// As the metadata leader: marks node `raft_id` as leaving (the balancer drains it).
    pub async fn set_leaving(&self, raft_id: u64) -> Result<(), CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        let Some(mut record) = self.node(raft_id) else {
            return Err(CommandError::Invalid(format!(
                "node {raft_id} is not in the cluster"
            )));
        };
        if record.leaving {
            return Ok(());
        }
        record.leaving = true;
        self.put_node(&record).await
    }

    /// As the metadata leader: removes node `raft_id` from the map for `reason`, leaving a
    /// [`Removal`] in its place (written first, so a crash between the two writes leaves a
    /// node both recorded and removed, which every reader treats as removed), if its record
    /// as the map holds it now still satisfies `still` (the node is still leaving, or still
    /// down). Returns whether it removed the node.
    pub async fn remove(
        &self,
        raft_id: u64,
        cause: RemovalCause,
        reason: String,
        still: impl Fn(&NodeRecord) -> bool,
    ) -> Result<bool, CommandError> {
        let _guard = self.updates.lock().await;
        self.up_to_date().await?;
        let Some(record) = self.node(raft_id).filter(|r| still(r)) else {
            return Ok(false);
        };
        let removal = Removal {
            raft_id,
            name: record.name,
            reason,
            cause,
        };
        let value = serde_json::to_vec(&removal).expect("a removal serialises");
        self.put(removal_key(raft_id), value).await?;
        self.write(Command::Del {
            keys: vec![node_key(raft_id)],
        })
        .await
        .map(|_| true)
    }
}

impl Removal {
    /// What a removed node is told when it asks to be admitted again.
    pub fn refusal(&self) -> String {
        format!(
            "node {} (raft id {}) was removed from the cluster: {}; start it with an empty \
             data directory to join as a new node",
            self.name, self.raft_id, self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(term: u64, membership_index: u64) -> ShardPlacement {
        ShardPlacement {
            shard: 3,
            term,
            membership_index,
            leader: 1,
            voters: BTreeSet::from([1, 2, 3]),
            learners: BTreeSet::new(),
            caught_up: BTreeSet::new(),
            first_slot: 0,
            last_slot: 99,
            live_bytes: 1 << 20,
            children: Vec::new(),
        }
    }

    #[test]
    fn the_map_keeps_the_newest_report_of_a_shard() {
        let known = placement(5, 40);
        // Newer by term or by membership: replaces, whatever it says.
        assert!(known.replaced_by(&placement(6, 10)));
        assert!(known.replaced_by(&placement(5, 41)));
        // A deposed leader's late report never does, even if it tells something new.
        let mut late = placement(4, 90);
        late.leader = 2;
        assert!(!known.replaced_by(&late));
        let mut late = placement(5, 39);
        late.voters.insert(4);
        assert!(!known.replaced_by(&late));
        // Same version: only when something changed.
        assert!(!known.replaced_by(&placement(5, 40)));
        for change in [
            |p: &mut ShardPlacement| p.leader = 2,
            |p: &mut ShardPlacement| p.learners = BTreeSet::from([4]),
            |p: &mut ShardPlacement| p.caught_up = BTreeSet::from([4]),
            |p: &mut ShardPlacement| p.last_slot = 49,
            |p: &mut ShardPlacement| p.children = vec![7],
            |p: &mut ShardPlacement| p.live_bytes = 2 << 20,
        ] {
            let mut new = placement(5, 40);
            change(&mut new);
            assert!(known.replaced_by(&new), "{new:?}");
        }
        // A size that moved by less than a sixteenth is not worth a write.
        let mut new = placement(5, 40);
        new.live_bytes += 1 << 14;
        assert!(!known.replaced_by(&new));
    }
}
