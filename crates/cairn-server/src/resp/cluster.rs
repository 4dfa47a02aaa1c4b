//! Cairn as Redis Cluster clients see it: the `CLUSTER` replies and `MOVED` redirects.
//!
//! Every node replicates every shard and each shard's Raft leader takes its writes, so Cairn
//! presents itself as a Redis Cluster in which a shard's slot range is served by its leader
//! (the range's master) and replicated by its other members (replicas), each at its own RESP
//! address. A node that leads at least one shard is a master; any other node is a replica of
//! the leader of the first shard it holds. One node is a one-node cluster owning all 16384
//! slots. Cluster clients (`redis-cli -c`, redis-py's `RedisCluster`) read this map to send
//! each key to its leader. Plain clients need not: any node forwards a request to the leader,
//! unless `--resp-redirect` is set, when a keyed request whose shard another node leads is
//! answered `MOVED slot ip:port` as Redis Cluster does (reads on a `READONLY` connection
//! excepted: this node's replica serves them).
//!
//! The map is this node's view, from its replica of the metadata group (nodes, addresses,
//! down flags) and of each shard's group (members, leader), so two nodes may disagree for a
//! moment while leadership moves; a client then follows a `MOVED` or refreshes its map, as
//! with Redis. An address whose IP is unspecified (a node listening on every interface) is
//! announced with the IP this connection reached, as Redis announces its own.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use cairn_resp::Frame;

use crate::reply::{ClusterStatus, NodeState};
use crate::resp::introspection::verbatim;
use crate::resp::session::{Session, Shared};
use crate::resp::table::{self, CommandSpec};
use crate::slot::key_slot;

fn bulk(s: impl Into<String>) -> Frame {
    Frame::Bulk(Bytes::from(s.into()))
}

/// `addr` as clients should dial it: an unspecified IP is replaced by `local_ip`.
fn announced(mut addr: SocketAddr, local_ip: IpAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(local_ip);
    }
    addr
}

/// A node's RESP address as the cluster map records it (`ip:port`), [`announced`]; `None`
/// when it does not parse.
fn endpoint(addr: &str, local_ip: IpAddr) -> Option<SocketAddr> {
    Some(announced(addr.parse().ok()?, local_ip))
}

/// `ip:port` as Redis writes it in `MOVED` and `CLUSTER NODES` (an IPv6 address without
/// brackets: clients split at the last colon).
fn host_port(addr: SocketAddr) -> String {
    format!("{}:{}", addr.ip(), addr.port())
}

/// One node of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapNode {
    /// The node's name (its Redis Cluster node id).
    name: String,
    /// Where clients reach its RESP port; `None` when the map's address does not parse.
    resp: Option<SocketAddr>,
    /// Its gRPC port, shown as the cluster bus port.
    bus_port: u16,
    /// The metadata leader marked it down.
    down: bool,
    /// Its config epoch: its position in the map, from 1.
    epoch: usize,
}

/// One shard of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapShard {
    /// Inclusive slot ranges.
    slots: Vec<(u16, u16)>,
    /// A leader is known (it may be missing from the map for a moment after it joined).
    led: bool,
    /// The leader's position in [`ClusterMap::nodes`], when known and in the map.
    leader: Option<usize>,
    /// Positions of the members (voters, then learners) that are in the map.
    members: Vec<usize>,
}

impl MapShard {
    fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(first, last)| u32::from(last).saturating_sub(u32::from(first)) + 1)
            .sum()
    }
}

/// The cluster map in Redis Cluster's terms, as one connection should be told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// Every node, in the map's order.
    nodes: Vec<MapNode>,
    /// This node's position in `nodes`.
    me: usize,
    /// Every shard, by first slot.
    shards: Vec<MapShard>,
}

impl ClusterMap {
    /// The map of `status` for a connection that reached this node at `local_ip`; `own_resp`
    /// is this node's RESP address as configured (the map may record an older one).
    pub fn new(status: ClusterStatus, own_resp: SocketAddr, local_ip: IpAddr) -> ClusterMap {
        let mut nodes: Vec<MapNode> = status
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| MapNode {
                name: n.id.clone(),
                resp: endpoint(&n.resp_addr, local_ip),
                bus_port: n.grpc_addr.parse::<SocketAddr>().map_or(0, |a| a.port()),
                down: n.state == NodeState::Down,
                epoch: i + 1,
            })
            .collect();
        let me = match nodes.iter().position(|n| n.name == status.node_id) {
            Some(me) => me,
            None => {
                nodes.push(MapNode {
                    name: status.node_id.clone(),
                    resp: None,
                    bus_port: 0,
                    down: false,
                    epoch: nodes.len() + 1,
                });
                nodes.len() - 1
            }
        };
        nodes[me].resp = Some(announced(own_resp, local_ip));
        let position = |name: &String| nodes.iter().position(|n| &n.name == name);
        let mut shards: Vec<MapShard> = status
            .shards
            .iter()
            .map(|s| MapShard {
                slots: s.slots.clone(),
                led: s.leader.is_some(),
                leader: s.leader.as_ref().and_then(position),
                members: s.replicas.iter().filter_map(position).collect(),
            })
            .collect();
        shards.sort_by_key(|s| s.slots.first().map_or(0, |r| r.0));
        ClusterMap { nodes, me, shards }
    }

    /// The node listed as a shard's master: its leader; while it has none (an election) or the
    /// leader's address is unknown, this node if it holds a replica (it serves or forwards the
    /// request once a leader is known), else the first member with an address.
    fn serving(&self, shard: &MapShard) -> Option<usize> {
        let reachable = |i: &usize| self.nodes[*i].resp.is_some();
        shard
            .leader
            .filter(reachable)
            .or_else(|| Some(self.me).filter(|me| shard.members.contains(me) && reachable(me)))
            .or_else(|| shard.members.iter().copied().find(reachable))
    }

    /// Nodes that lead at least one shard.
    fn masters(&self) -> BTreeSet<usize> {
        self.shards.iter().filter_map(|s| s.leader).collect()
    }

    /// The master a node leading no shard replicates: the leader of the first shard it holds
    /// that has a leader. `None` for a node that holds no such shard (Redis shows it as a
    /// master without slots).
    fn replica_of(&self, node: usize) -> Option<usize> {
        self.shards
            .iter()
            .filter(|s| s.members.contains(&node))
            .find_map(|s| s.leader.filter(|&l| l != node))
    }

    /// Slot ranges of the shards `node` leads, adjacent ranges merged.
    fn led_ranges(&self, node: usize) -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for shard in self.shards.iter().filter(|s| s.leader == Some(node)) {
            for &(first, last) in &shard.slots {
                match ranges.last_mut() {
                    Some(prev) if u32::from(prev.1) + 1 == u32::from(first) => prev.1 = last,
                    _ => ranges.push((first, last)),
                }
            }
        }
        ranges
    }

    /// A node as `CLUSTER SLOTS` lists it: `[ip, port, id, {}]`.
    fn slots_node(&self, i: usize) -> Option<Frame> {
        let node = &self.nodes[i];
        let addr = node.resp?;
        Some(Frame::Array(vec![
            bulk(addr.ip().to_string()),
            Frame::Integer(i64::from(addr.port())),
            bulk(node.name.clone()),
            Frame::Map(Vec::new()),
        ]))
    }

    /// `CLUSTER SLOTS`: each slot range with its master, then its replicas (down ones left out,
    /// as Redis leaves out failed replicas); adjacent ranges with the same nodes merged.
    pub fn slots(&self) -> Frame {
        let mut ranges: Vec<(u16, u16, usize, Vec<usize>)> = Vec::new();
        for shard in &self.shards {
            let Some(master) = self.serving(shard) else {
                continue;
            };
            let replicas: Vec<usize> = shard
                .members
                .iter()
                .copied()
                .filter(|&i| i != master && !self.nodes[i].down && self.nodes[i].resp.is_some())
                .collect();
            for &(first, last) in &shard.slots {
                match ranges.last_mut() {
                    Some(prev)
                        if u32::from(prev.1) + 1 == u32::from(first)
                            && prev.2 == master
                            && prev.3 == replicas =>
                    {
                        prev.1 = last;
                    }
                    _ => ranges.push((first, last, master, replicas.clone())),
                }
            }
        }
        Frame::Array(
            ranges
                .into_iter()
                .map(|(first, last, master, replicas)| {
                    let mut entry = vec![
                        Frame::Integer(i64::from(first)),
                        Frame::Integer(i64::from(last)),
                    ];
                    entry.extend(
                        std::iter::once(master)
                            .chain(replicas)
                            .filter_map(|i| self.slots_node(i)),
                    );
                    Frame::Array(entry)
                })
                .collect(),
        )
    }

    /// `CLUSTER SHARDS`: each shard with its slot ranges and its members, the leader first.
    pub fn shards(&self) -> Frame {
        Frame::Array(
            self.shards
                .iter()
                .map(|shard| {
                    let slots = shard
                        .slots
                        .iter()
                        .flat_map(|&(a, b)| {
                            [Frame::Integer(i64::from(a)), Frame::Integer(i64::from(b))]
                        })
                        .collect();
                    let order = shard.leader.into_iter().chain(
                        shard
                            .members
                            .iter()
                            .copied()
                            .filter(|&i| Some(i) != shard.leader),
                    );
                    let nodes = order
                        .filter_map(|i| {
                            let node = &self.nodes[i];
                            let addr = node.resp?;
                            let role = if shard.leader == Some(i) {
                                "master"
                            } else {
                                "replica"
                            };
                            let health = if node.down { "failed" } else { "online" };
                            Some(Frame::Map(vec![
                                (bulk("id"), bulk(node.name.clone())),
                                (bulk("port"), Frame::Integer(i64::from(addr.port()))),
                                (bulk("ip"), bulk(addr.ip().to_string())),
                                (bulk("endpoint"), bulk(addr.ip().to_string())),
                                (bulk("role"), bulk(role)),
                                (bulk("replication-offset"), Frame::Integer(0)),
                                (bulk("health"), bulk(health)),
                            ]))
                        })
                        .collect();
                    Frame::Map(vec![
                        (bulk("slots"), Frame::Array(slots)),
                        (bulk("nodes"), Frame::Array(nodes)),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES`: one line per node of the map.
    pub fn nodes(&self) -> String {
        let masters = self.masters();
        let mut text = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let master = if masters.contains(&i) {
                None
            } else {
                self.replica_of(i)
            };
            let mut flags = Vec::new();
            if i == self.me {
                flags.push("myself");
            }
            flags.push(if master.is_some() { "slave" } else { "master" });
            if node.down {
                flags.push("fail");
            }
            if node.resp.is_none() {
                flags.push("noaddr");
            }
            let addr = node.resp.map_or_else(|| ":0".to_string(), host_port);
            let master = master.map_or("-", |m| self.nodes[m].name.as_str());
            let link = if node.down {
                "disconnected"
            } else {
                "connected"
            };
            let _ = write!(
                text,
                "{} {addr}@{} {} {master} 0 0 {} {link}",
                node.name,
                node.bus_port,
                flags.join(","),
                node.epoch
            );
            for (first, last) in self.led_ranges(i) {
                if first == last {
                    let _ = write!(text, " {first}");
                } else {
                    let _ = write!(text, " {first}-{last}");
                }
            }
            text.push('\n');
        }
        text
    }

    /// `CLUSTER INFO`: the state is `fail` while a shard has no leader.
    pub fn info(&self) -> String {
        let assigned: u32 = self.shards.iter().map(MapShard::slot_count).sum();
        let ok: u32 = self
            .shards
            .iter()
            .filter(|s| s.led)
            .map(MapShard::slot_count)
            .sum();
        let state = if self.shards.iter().all(|s| s.led) {
            "ok"
        } else {
            "fail"
        };
        format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{ok}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{}\r\ncluster_my_epoch:{}\r\ncluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n",
            assigned - ok,
            self.nodes.len(),
            self.masters().len(),
            self.nodes.len(),
            self.nodes[self.me].epoch,
        )
    }
}

/// `CLUSTER INFO|MYID|KEYSLOT|SLOTS|SHARDS|NODES`.
pub fn cluster(args: &[Bytes], session: &Session, shared: &Shared) -> Frame {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let Some(spec) = table::lookup_sub("cluster", &sub) else {
        return Frame::Error(Bytes::from(format!(
            "ERR unknown subcommand '{}'. Try CLUSTER HELP.",
            String::from_utf8_lossy(&args[1])
        )));
    };
    if !spec.arity_ok(args.len()) {
        return Frame::Error(Bytes::from(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        )));
    }
    let node = &shared.node;
    let map = || {
        ClusterMap::new(
            node.cluster_status(),
            node.options().resp_addr,
            session.local_addr.ip(),
        )
    };
    match sub.as_str() {
        "info" => verbatim(map().info(), session.protocol),
        "myid" => bulk(node.id()),
        "keyslot" => Frame::Integer(i64::from(key_slot(&args[2]))),
        "slots" => map().slots(),
        "shards" => map().shards(),
        "nodes" => verbatim(map().nodes(), session.protocol),
        _ => Frame::Error(Bytes::from_static(b"ERR unhandled subcommand")),
    }
}

/// With `--resp-redirect`, `MOVED slot ip:port` for a keyed command whose first key's shard
/// another node leads, as Redis Cluster answers; `None` to serve the command here (no
/// redirects, no key, this node leads or no leader is known, or a read on a `READONLY`
/// connection).
pub fn redirect(
    spec: &CommandSpec,
    args: &[Bytes],
    session: &Session,
    shared: &Shared,
) -> Option<Frame> {
    if !shared.redirect || (session.readonly && spec.is_read()) {
        return None;
    }
    let key = args.get(usize::try_from(spec.first_key).ok().filter(|&i| i > 0)?)?;
    let leader = shared.node.leader_elsewhere(key)?;
    let to = endpoint(&leader.resp_addr, session.local_addr.ip())?;
    Some(Frame::Error(Bytes::from(format!(
        "MOVED {} {}",
        key_slot(key),
        host_port(to)
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{NodeInfo, RaftStats, ShardInfo};

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    fn node(name: &str, resp_addr: &str, state: NodeState) -> NodeInfo {
        NodeInfo {
            id: name.into(),
            grpc_addr: "127.0.0.1:7070".into(),
            http_addr: "127.0.0.1:7080".into(),
            resp_addr: resp_addr.into(),
            state,
        }
    }

    fn shard(id: u32, slots: (u16, u16), leader: Option<&str>, replicas: &[&str]) -> ShardInfo {
        ShardInfo {
            id,
            slots: vec![slots],
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            learners: Vec::new(),
            leader: leader.map(str::to_string),
            raft: RaftStats::default(),
        }
    }

    /// Three nodes, four shards: `a` leads shards 0 and 1, `b` shard 2, nobody shard 3
    /// (an election), `c` leads nothing and is down.
    fn three_nodes(me: &str) -> ClusterMap {
        let all = ["a", "b", "c"];
        let c_state = if me == "c" {
            NodeState::Up
        } else {
            NodeState::Down
        };
        let status = ClusterStatus {
            node_id: me.into(),
            nodes: vec![
                node("a", "127.0.0.1:7001", NodeState::Up),
                node("b", "0.0.0.0:7002", NodeState::Up),
                // The map never shows the node answering as down.
                node("c", "127.0.0.3:7003", c_state),
            ],
            shards: vec![
                shard(1, (4096, 8191), Some("a"), &all),
                shard(0, (0, 4095), Some("a"), &all),
                shard(2, (8192, 12287), Some("b"), &all),
                shard(3, (12288, 16383), None, &all),
            ],
            metadata: None,
            moves: Vec::new(),
        };
        let own = match me {
            "a" => "127.0.0.1:7001",
            "b" => "0.0.0.0:7002",
            _ => "127.0.0.3:7003",
        };
        ClusterMap::new(status, own.parse().unwrap(), LOCAL)
    }

    fn slots_node(ip: &str, port: i64, name: &str) -> Frame {
        Frame::Array(vec![
            bulk(ip),
            Frame::Integer(port),
            bulk(name),
            Frame::Map(Vec::new()),
        ])
    }

    #[test]
    fn one_node_owns_every_slot() {
        let status = ClusterStatus {
            node_id: "n".into(),
            nodes: vec![node("n", "0.0.0.0:6379", NodeState::Up)],
            shards: (0..4)
                .map(|i| {
                    shard(
                        i,
                        (i as u16 * 4096, i as u16 * 4096 + 4095),
                        Some("n"),
                        &["n"],
                    )
                })
                .collect(),
            metadata: None,
            moves: Vec::new(),
        };
        let map = ClusterMap::new(status, "0.0.0.0:6379".parse().unwrap(), LOCAL);
        assert_eq!(
            map.slots(),
            Frame::Array(vec![Frame::Array(vec![
                Frame::Integer(0),
                Frame::Integer(16383),
                slots_node("10.0.0.9", 6379, "n"),
            ])])
        );
        assert_eq!(
            map.nodes(),
            "n 10.0.0.9:6379@7070 myself,master - 0 0 1 connected 0-16383\n"
        );
        let info = map.info();
        assert!(
            info.starts_with(
                "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n"
            ),
            "{info}"
        );
        assert!(info.contains("cluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n"), "{info}");
    }

    #[test]
    fn slots_name_each_leader_at_its_own_address() {
        let map = three_nodes("b");
        let a = || slots_node("127.0.0.1", 7001, "a");
        let b = || slots_node("10.0.0.9", 7002, "b");
        // `c` is down: not offered as a replica. Shard 3 has no leader: this node stands in,
        // so its range merges with shard 2's.
        assert_eq!(
            map.slots(),
            Frame::Array(vec![
                Frame::Array(vec![Frame::Integer(0), Frame::Integer(8191), a(), b()]),
                Frame::Array(vec![Frame::Integer(8192), Frame::Integer(16383), b(), a()]),
            ])
        );
        // On `a`, shard 3's stand-in is `a`.
        let Frame::Array(ranges) = three_nodes("a").slots() else {
            panic!("not an array");
        };
        assert_eq!(
            ranges[2],
            Frame::Array(vec![
                Frame::Integer(12288),
                Frame::Integer(16383),
                a(),
                slots_node("10.0.0.9", 7002, "b"),
            ])
        );
    }

    #[test]
    fn nodes_lines_give_roles_flags_and_led_slots() {
        let map = three_nodes("b");
        assert_eq!(
            map.nodes(),
            "a 127.0.0.1:7001@7070 master - 0 0 1 connected 0-8191\n\
             b 10.0.0.9:7002@7070 myself,master - 0 0 2 connected 8192-12287\n\
             c 127.0.0.3:7003@7070 slave,fail a 0 0 3 disconnected\n"
        );
        // On `c` itself, `c` is up, and still nobody's master.
        let on_c = three_nodes("c").nodes();
        assert!(
            on_c.contains("c 127.0.0.3:7003@7070 myself,slave a 0 0 3 connected\n"),
            "{on_c}"
        );
    }

    #[test]
    fn info_counts_masters_and_leaderless_slots() {
        let info = three_nodes("a").info();
        for line in [
            "cluster_state:fail\r\n",
            "cluster_slots_assigned:16384\r\n",
            "cluster_slots_ok:12288\r\n",
            "cluster_slots_fail:4096\r\n",
            "cluster_known_nodes:3\r\n",
            "cluster_size:2\r\n",
            "cluster_my_epoch:1\r\n",
        ] {
            assert!(info.contains(line), "{line} missing from {info}");
        }
    }

    #[test]
    fn shards_list_the_leader_first() {
        let map = three_nodes("a");
        let Frame::Array(shards) = map.shards() else {
            panic!("not an array");
        };
        assert_eq!(shards.len(), 4);
        let Frame::Map(fields) = &shards[2] else {
            panic!("not a map");
        };
        let Frame::Array(nodes) = &fields[1].1 else {
            panic!("no nodes");
        };
        let field = |node: &Frame, key: &str| match node {
            Frame::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| *k == bulk(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        };
        let roles: Vec<_> = nodes.iter().map(|n| field(n, "role")).collect();
        assert_eq!(
            roles,
            [
                Some(bulk("master")),
                Some(bulk("replica")),
                Some(bulk("replica"))
            ]
        );
        assert_eq!(field(&nodes[0], "id"), Some(bulk("b")));
        assert_eq!(field(&nodes[0], "ip"), Some(bulk("10.0.0.9")));
        assert_eq!(field(&nodes[2], "health"), Some(bulk("failed")));
    }

    #[test]
    fn addresses_are_announced_as_clients_dial_them() {
        assert_eq!(
            endpoint("0.0.0.0:6379", LOCAL),
            Some("10.0.0.9:6379".parse().unwrap())
        );
        assert_eq!(
            endpoint("127.0.0.2:6379", LOCAL),
            Some("127.0.0.2:6379".parse().unwrap())
        );
        assert_eq!(endpoint("cairn-1:6379", LOCAL), None);
        assert_eq!(host_port("[::1]:6379".parse().unwrap()), "::1:6379");
    }
}
