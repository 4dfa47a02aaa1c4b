//! What the node reports about itself: the cluster map as its replicas see it, and per-shard
//! statistics for metrics and `INFO`.

use super::Node;
use crate::reply::{ClusterStatus, MoveInfo, NodeInfo, NodeState, ShardInfo, ShardStats};

impl Node {
    /// The cluster map: every node of the metadata group's map (this node's replica of it),
    /// and every shard with its members and leader as this node's replica of its group sees
    /// them, or for a shard this node holds no replica of, as its leader last reported them
    /// to the map (its Raft figures then zero but the term).
    pub fn cluster_status(&self) -> ClusterStatus {
        let me = self.my_record();
        let mut records = self.meta.nodes();
        if !records.iter().any(|r| r.raft_id == me.raft_id) {
            records.push(me.clone());
        }
        let name_of = |id: u64| {
            records
                .iter()
                .find(|r| r.raft_id == id)
                .map_or_else(|| format!("raft-{id}"), |r| r.name.clone())
        };
        let info = |id: u32, slots: Vec<(u16, u16)>, group: &cairn_raft::Group, raft| {
            let g = group.status();
            ShardInfo {
                id,
                slots,
                replicas: g
                    .voters
                    .iter()
                    .chain(&g.learners)
                    .map(|id| name_of(*id))
                    .collect(),
                learners: g.learners.iter().map(|id| name_of(*id)).collect(),
                leader: g.leader.map(name_of),
                raft,
            }
        };
        // Slots as the node routes them (the slot map), so that no slot is listed twice
        // while a split is being applied.
        let mut ranges: std::collections::BTreeMap<u32, Vec<(u16, u16)>> = Default::default();
        for slot in 0..crate::slot::SLOT_COUNT {
            let owner = self.shards.owner(slot);
            if owner == crate::shards::UNMAPPED {
                continue;
            }
            let list = ranges.entry(owner).or_default();
            match list.last_mut() {
                Some((_, last)) if *last + 1 == slot => *last = slot,
                _ => list.push((slot, slot)),
            }
        }
        let mut shards: Vec<ShardInfo> = self
            .shards
            .list()
            .iter()
            .map(|s| {
                info(
                    s.id,
                    ranges.remove(&s.id).unwrap_or_default(),
                    &s.group,
                    s.raft_stats(),
                )
            })
            .collect();
        // The shards routed here that this node holds no replica of.
        for p in self.meta.shards() {
            let Some(slots) = ranges.remove(&p.shard) else {
                continue;
            };
            shards.push(ShardInfo {
                id: p.shard,
                slots,
                replicas: p.members().map(name_of).collect(),
                learners: p.learners.iter().map(|id| name_of(*id)).collect(),
                leader: Some(name_of(p.leader)),
                raft: crate::reply::RaftStats {
                    term: p.term,
                    leader: false,
                    last_log_index: 0,
                    committed: 0,
                    applied: 0,
                    snapshot: 0,
                    purged: 0,
                    leader_changes: 0,
                },
            });
        }
        shards.sort_by_key(|s| s.id);
        let metadata = Some(Box::new(info(
            0,
            Vec::new(),
            &self.meta.group,
            crate::reply::RaftStats::of(&self.meta.group),
        )));
        let nodes = records
            .iter()
            .map(|r| NodeInfo {
                id: r.name.clone(),
                grpc_addr: r.grpc_addr.clone(),
                http_addr: r.http_addr.clone(),
                resp_addr: r.resp_addr.clone(),
                state: if r.down && r.raft_id != me.raft_id {
                    NodeState::Down
                } else if r.leaving {
                    NodeState::Leaving
                } else {
                    NodeState::Up
                },
            })
            .collect();
        let moves = self
            .peers()
            .transfers()
            .into_iter()
            .map(|t| MoveInfo {
                shard: t.group.checked_sub(1).map(|s| s as u32),
                from: me.name.clone(),
                to: name_of(t.target),
                sent_bytes: t.sent_bytes,
                total_bytes: t.total_bytes,
                elapsed_ms: t.elapsed.as_millis() as u64,
            })
            .collect();
        ClusterStatus {
            moves,
            node_id: me.name,
            nodes,
            shards,
            metadata,
        }
    }

    /// Storage statistics of every shard.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .list()
            .iter()
            .map(|s| {
                let st = s.engine().stats();
                ShardStats {
                    shard: s.id,
                    live_keys: st.live_keys,
                    segments: st.segments,
                    disk_bytes: st.disk_bytes,
                    dead_bytes: st.dead_bytes,
                    writes: st.writes,
                    syncs: st.syncs,
                    cache_hits: st.cache_hits,
                    cache_misses: st.cache_misses,
                    merges: st.merges,
                    last_applied: s.last_applied(),
                    expiring_keys: s.expiry.index.lock().len() as u64,
                    raft: s.raft_stats(),
                }
            })
            .collect()
    }
}
