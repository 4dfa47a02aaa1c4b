//! Routing: which node serves one shard's part of a request.
//!
//! Every node replicates every shard (the first `--replicas` nodes as voters, the others as
//! learners: see [`crate::placement`]), so each node knows each shard's leader from its own
//! replica of the group. A write, or a linearizable read, is served here when this node leads
//! the shard, and forwarded to the leader otherwise ([`crate::peer::forward`]). A
//! linearizable read on a leader first confirms the leader's lease (skipped when the leader
//! is the group's only voter: no other node can be elected). A stale read is served by any
//! replica on this node as it stands.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_raft::{Lead, Role};
use futures::future::join_all;

use super::write::Part;
use super::{Node, Scope};
use crate::command::Command;
use crate::error::CommandError;
use crate::meta::{Meta, NodeRecord};
use crate::peer::FORWARD_HOPS_MAX;

/// How long a write forwarded to a leader that has since lost leadership may still take to
/// answer before it is given up as "outcome unknown".
pub const FORWARD_GRACE_AFTER_MOVE: std::time::Duration = std::time::Duration::from_secs(1);
use crate::proposer::ProposalOp;
use crate::reply::{Entry, Reply};
use crate::shard::Shard;

impl Node {
    /// The metadata group's replica on this node.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// This node's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.identity.raft_id
    }

    /// This node as the cluster map should record it.
    pub fn my_record(&self) -> NodeRecord {
        NodeRecord {
            raft_id: self.identity.raft_id,
            name: self.identity.node_id.clone(),
            grpc_addr: self.options.grpc_addr.to_string(),
            http_addr: self.options.http_addr.to_string(),
            resp_addr: self.options.resp_addr.to_string(),
            down: false,
            leaving: false,
        }
    }

    /// The id and gRPC address of `shard`'s leader when another node leads it; `Ok(None)` when
    /// this node does; `TRYAGAIN` when no leader is known.
    fn remote_leader(&self, shard: &Shard) -> Result<Option<(u64, String)>, CommandError> {
        if shard.group.leading().is_some() {
            return Ok(None);
        }
        if shard.feed.is_retired() {
            return Err(CommandError::TryAgain(format!(
                "this node's replica of shard {} was just removed",
                shard.id
            )));
        }
        let status = shard.group.status();
        if let Some(why) = status.stopped {
            // A stopped sole voter's replica is final: no other node can take writes.
            if status.voters.len() == 1 && status.voters.contains(&status.node) {
                return Ok(None);
            }
            return Err(CommandError::Fatal(format!(
                "shard {} stopped: {why}",
                shard.id
            )));
        }
        match status.leader {
            Some(leader) if leader == status.node => Ok(None),
            Some(leader) => match status.nodes.get(&leader) {
                Some(addr) => Ok(Some((leader, addr.grpc.clone()))),
                None => Err(CommandError::TryAgain(format!(
                    "shard {} is led by node {leader}, whose address is unknown here",
                    shard.id
                ))),
            },
            None => Err(CommandError::TryAgain(format!(
                "shard {} has no leader at the moment",
                shard.id
            ))),
        }
    }

    fn hop(hops: u32) -> Result<u32, CommandError> {
        if hops >= FORWARD_HOPS_MAX {
            return Err(CommandError::TryAgain(
                "the shard's leader moved while the request was being forwarded".into(),
            ));
        }
        Ok(hops + 1)
    }

    /// One shard's part of a write: to this node's proposer when it leads the shard (its
    /// proposer refuses with `TRYAGAIN` if leadership has just moved), else to the leader.
    pub(super) async fn send_routed(
        &self,
        shard_id: u32,
        cmd: Command,
        now_ms: u64,
        hops: u32,
        alone: bool,
    ) -> Result<Part, CommandError> {
        let Some(shard) = self.shards.get(shard_id) else {
            let only = matches!(cmd, Command::Flush).then_some(Scope::shard(shard_id));
            let outcome = self.forward_by_map(shard_id, &cmd, hops, false, only).await;
            return Ok(Part::Done(outcome));
        };
        // The common case, this node leads: one atomic load, straight to its proposer (which
        // refuses with TRYAGAIN if leadership has just moved).
        if shard.group.lead() != Lead::No {
            let rx = self
                .send_with(shard_id, ProposalOp::Command(cmd), now_ms, alone)
                .await?;
            return Ok(Part::Local(rx));
        }
        // While the shard has no reachable leader nothing has been sent, so waiting for one
        // keeps the caller's order of writes (the next write is not routed before this one).
        let deadline = std::time::Instant::now() + super::ROUTE_RETRY_WINDOW;
        let mut backoff = super::ROUTE_RETRY_FIRST;
        loop {
            let outcome = match self.remote_leader(&shard) {
                Ok(None) => break,
                Ok(Some((leader, addr))) => {
                    let hops = Self::hop(hops)?;
                    let only = matches!(cmd, Command::Flush).then_some(Scope::shard(shard_id));
                    crate::metrics::forwarded(cmd.name(), shard_id);
                    let forwarded =
                        crate::peer::forward(&self.peers, &addr, &cmd, hops, false, only, None);
                    // A leader that hands over or steps down answers quickly; one cut off with
                    // the write does not, and the write may or may not commit.
                    let stuck = async {
                        shard.group.leader_moved_from(leader).await;
                        tokio::time::sleep(FORWARD_GRACE_AFTER_MOVE).await;
                    };
                    tokio::select! {
                        result = forwarded => result,
                        () = stuck => {
                            Err(CommandError::OutcomeUnknown(format!(
                                "shard {shard_id}'s leader changed while the write was forwarded \
                                 to node {leader}"
                            )))
                        }
                    }
                }
                // A replica that is not (yet) in the group, or was just removed, knows no
                // leader: the map does.
                Err(CommandError::TryAgain(_)) if !self.in_group(&shard) => {
                    let only = matches!(cmd, Command::Flush).then_some(Scope::shard(shard_id));
                    self.forward_once_by_map(shard_id, &cmd, hops, false, only)
                        .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Err(CommandError::TryAgain(_))
                    if hops == 0 && std::time::Instant::now() + backoff < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(super::ROUTE_RETRY_MAX);
                }
                outcome => return Ok(Part::Done(outcome)),
            }
        }
        let rx = self
            .send_with(shard_id, ProposalOp::Command(cmd), now_ms, alone)
            .await?;
        Ok(Part::Local(rx))
    }

    /// Sends `cmd`, for shard `shard_id` of which this node holds no replica that knows its
    /// leader, to the leader the cluster map's placement names (which forwards it once more
    /// if the leadership moved since); `TRYAGAIN` is retried for a while, as for any routed
    /// request, since the map catches up with a new leader within a placement round.
    /// `only` limits a FLUSHDB or a whole-keyspace read to the shard.
    pub(super) async fn forward_by_map(
        &self,
        shard_id: u32,
        cmd: &Command,
        hops: u32,
        stale: bool,
        only: Option<Scope>,
    ) -> Result<Reply, CommandError> {
        let deadline = std::time::Instant::now() + super::ROUTE_RETRY_WINDOW;
        let mut backoff = super::ROUTE_RETRY_FIRST;
        loop {
            match self
                .forward_once_by_map(shard_id, cmd, hops, stale, only)
                .await
            {
                Err(CommandError::TryAgain(_))
                    if hops == 0 && std::time::Instant::now() + backoff < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(super::ROUTE_RETRY_MAX);
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt of [`Node::forward_by_map`].
    pub(super) async fn forward_once_by_map(
        &self,
        shard_id: u32,
        cmd: &Command,
        hops: u32,
        stale: bool,
        only: Option<Scope>,
    ) -> Result<Reply, CommandError> {
        let placement = self.meta.shard(shard_id).ok_or_else(|| {
            CommandError::TryAgain(format!(
                "shard {shard_id} is neither held here nor in this node's map yet"
            ))
        })?;
        if placement.leader == self.raft_id() {
            return Err(CommandError::TryAgain(format!(
                "the map names this node as shard {shard_id}'s leader, which it no longer is"
            )));
        }
        let addr = self
            .meta
            .node(placement.leader)
            .map(|r| r.grpc_addr)
            .ok_or_else(|| {
                CommandError::TryAgain(format!(
                    "shard {shard_id}'s leader, node {}, is not in this node's map",
                    placement.leader
                ))
            })?;
        let hops = Self::hop(hops)?;
        crate::metrics::forwarded(cmd.name(), shard_id);
        let floor = self.read_floor(shard_id, cmd);
        crate::peer::forward(&self.peers, &addr, cmd, hops, stale, only, floor).await
    }

    /// The floor a read of `shard_id` forwarded from here carries: the position this node's
    /// feed of the shard has told (a watch token given out before the read names no more),
    /// the one such a token named ([`Node::read_after_token`]), or the floor the read came
    /// here with, whichever is further. A replica that serves
    /// the read from its own state (a stale read, a part of a whole-keyspace read) must
    /// have applied it: else a client that reads through a node without a whole replica of
    /// the shard, then watches from the token that node gave out, could miss a change the
    /// read did not see (served by a lagging replica) that the token counts as told.
    pub(super) fn read_floor(&self, shard_id: u32, cmd: &Command) -> Option<(u32, u64)> {
        if cmd.is_write() {
            return None;
        }
        let own = self.feed_for(shard_id).map(|feed| feed.last());
        let asked = super::READ_FLOOR
            .try_with(|&(shard, index)| (shard == shard_id).then_some(index))
            .ok()
            .flatten();
        let named = Self::token_floor(shard_id);
        own.max(asked)
            .max(named)
            .filter(|&index| index > 0)
            .map(|index| (shard_id, index))
    }

    /// The position in shard `shard_id` the watch token of the read being served named
    /// ([`Node::read_after_token`]).
    fn token_floor(shard_id: u32) -> Option<u64> {
        super::TOKEN_FLOOR
            .try_with(|token| token.0.get(&shard_id).map(|pos| pos.done()))
            .ok()
            .flatten()
    }

    /// Waits until this node's replica of `shard` has applied the floor the read being
    /// served came with ([`Node::read_floor`] on the asking node), or the position the
    /// read's watch token named ([`Node::read_after_token`]), for at most
    /// [`super::READ_FLOOR_WAIT`]; `TRYAGAIN` if it does not get there.
    pub(super) async fn reach_read_floor(&self, shard: &Shard) -> Result<(), CommandError> {
        let asked = super::READ_FLOOR
            .try_with(|&(id, index)| (id == shard.id).then_some(index))
            .ok()
            .flatten();
        let Some(floor) = asked.max(Self::token_floor(shard.id)) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + super::READ_FLOOR_WAIT;
        loop {
            let applied = shard.group.applied_index();
            if applied >= floor {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::TryAgain(format!(
                    "this replica of shard {} has applied up to {applied}, behind the \
                     position {floor} the read must see",
                    shard.id
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Whether this node's replica of `shard` is still part of its group: a member by its own
    /// log, not being removed, and not dropped by the group as the map's placement tells
    /// ([`crate::placement::dropped_by`]). A voter the group removed is not told so (its
    /// leader stops sending to it with the change that removes it): it keeps its old
    /// membership, loses its leader, and campaigns in vain until this node deletes it. A
    /// request that met it would wait for a leader it will never know; the map knows one.
    fn in_group(&self, shard: &Shard) -> bool {
        shard.group.is_in_own_membership()
            && !shard.feed.is_retired()
            && !self
                .placements
                .read()
                .get(&shard.id)
                .is_some_and(|placement| {
                    crate::placement::dropped_by(
                        placement,
                        self.raft_id(),
                        shard.group.membership_log_id().unwrap_or((0, 0)),
                    )
                })
    }

    /// A read: single-key reads and MGET/EXISTS go to each key's shard leader (or this node's
    /// replica when `stale`); reads of the whole keyspace (KEYS, SCAN, DBSIZE, RANDOMKEY,
    /// range scans; `only`: of that shard alone) are served from this node's replicas, and
    /// from the leaders of the shards it holds none of ([`super::fanout`]); status from this
    /// node.
    pub(super) async fn read_routed(
        &self,
        cmd: &Command,
        hops: u32,
        stale: bool,
        only: Option<Scope>,
    ) -> Result<Reply, CommandError> {
        if let Some(key) = cmd.single_read_key() {
            let shard = self.shards.shard_of_key(key);
            return self.read_on(shard, cmd, hops, stale).await;
        }
        match cmd {
            Command::ShardRead { shard, .. } => self.read_on(*shard, cmd, hops, stale).await,
            Command::Publish { messages } => Ok(Reply::Int(self.deliver(messages, false) as i64)),
            Command::ShardPublish { messages } => {
                Ok(Reply::Int(self.deliver(messages, true) as i64))
            }
            Command::MGet { keys } => {
                if let Some(shard) = self.single_shard(keys) {
                    return self.read_on(shard, cmd, hops, stale).await;
                }
                let entries = self.read_atomic(keys, hops, stale).await?;
                Ok(Reply::Values(
                    entries.into_iter().map(|e| e.map(|e| e.value)).collect(),
                ))
            }
            Command::Lcs { a, b, mode } => {
                let keys = [a.clone(), b.clone()];
                if let Some(shard) = self.single_shard(&keys) {
                    return self.read_on(shard, cmd, hops, stale).await;
                }
                let entries = self.read_atomic(&keys, hops, stale).await?;
                crate::lcs::of_entries(&entries, *mode).map(Reply::Lcs)
            }
            Command::Exists { keys } => {
                if let Some(shard) = self.single_shard(keys) {
                    return self.read_on(shard, cmd, hops, stale).await;
                }
                let entries = self.read_atomic(keys, hops, stale).await?;
                Ok(Reply::Int(
                    entries.iter().filter(|e| e.is_some()).count() as i64
                ))
            }
            cmd if super::fanout::is_keyspace_read(cmd) => {
                self.read_keyspace(cmd, hops, stale, only).await
            }
            _ => self.read(cmd),
        }
    }

    /// Keys of several shards as of one instant (a transaction seen whole or not at all): a
    /// double collect. Every shard's part is read (each part at one instant, refused with
    /// `Locked` when a transaction holds a key of it), then every part again. When every key
    /// has the same version both times, or is missing both times with no key of its shard
    /// deleted in between, the first reads all held at the instant between the two passes:
    /// a transaction that wrote one of these keys before the first pass took its locks on
    /// the others before, so they would have been locked or changed by the second.
    /// Otherwise the read runs again, up to [`super::read::READ_SETTLE_ATTEMPTS`] times.
    async fn read_atomic(
        &self,
        keys: &[Bytes],
        hops: u32,
        stale: bool,
    ) -> Result<Vec<Option<Entry>>, CommandError> {
        let parts: Vec<(u32, Vec<usize>)> = self.by_shard(keys).into_iter().collect();
        let read = |shard: u32, keys: Vec<Bytes>| async move {
            match self
                .read_on(shard, &Command::ShardRead { shard, keys }, hops, stale)
                .await?
            {
                Reply::Guarded { entries, deletes } => Ok((entries, deletes)),
                other => Err(unexpected(&other)),
            }
        };
        let pass = || async {
            let answers = join_all(parts.iter().enumerate().map(|(n, (shard, positions))| {
                let keys = positions.iter().map(|&i| keys[i].clone()).collect();
                async move {
                    #[cfg(test)]
                    self.test_pause_before_part(n).await;
                    #[cfg(not(test))]
                    let _ = n;
                    read(*shard, keys).await
                }
            }))
            .await;
            let mut out = vec![None; keys.len()];
            // Per part: the shard's delete count, when a key of the part was missing.
            let mut deletes = Vec::with_capacity(parts.len());
            for ((_, positions), answer) in parts.iter().zip(answers) {
                let (entries, deleted) = answer?;
                deletes.push(entries.iter().any(Option::is_none).then_some(deleted));
                for (&i, entry) in positions.iter().zip(entries) {
                    out[i] = entry;
                }
            }
            Ok::<_, CommandError>((out, deletes))
        };
        let version = |e: &Option<Entry>| e.as_ref().map(|e| e.version);
        for _ in 0..super::read::READ_SETTLE_ATTEMPTS {
            let (first, first_deletes) = pass().await?;
            let (second, second_deletes) = pass().await?;
            // A key missing in both passes may have been created and deleted in between:
            // its shard's delete count tells (versions only ever grow, so a present key
            // cannot come back to the same one).
            if first.iter().map(version).eq(second.iter().map(version))
                && first_deletes == second_deletes
            {
                return Ok(first);
            }
        }
        Err(CommandError::TryAgain(
            "transactions kept changing the keys being read".into(),
        ))
    }

    fn single_shard(&self, keys: &[Bytes]) -> Option<u32> {
        let first = self.shards.shard_of_key(keys.first()?);
        keys.iter()
            .all(|k| self.shards.shard_of_key(k) == first)
            .then_some(first)
    }

    fn by_shard(&self, keys: &[Bytes]) -> BTreeMap<u32, Vec<usize>> {
        let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            out.entry(self.shards.shard_of_key(key))
                .or_default()
                .push(i);
        }
        out
    }

    /// A read of keys that all live in shard `shard_id`.
    pub(super) async fn read_on(
        &self,
        shard_id: u32,
        cmd: &Command,
        hops: u32,
        stale: bool,
    ) -> Result<Reply, CommandError> {
        let Some(shard) = self.shards.get(shard_id) else {
            return self.forward_by_map(shard_id, cmd, hops, stale, None).await;
        };
        match shard.group.lead() {
            Lead::Alone => return self.read_owned(&shard, cmd),
            Lead::WithOthers => match shard.group.linearize().await {
                Ok(()) => return self.read_owned(&shard, cmd),
                Err(e) => tracing::debug!(shard = shard_id, error = %e, "lease lost; rerouting"),
            },
            Lead::No => {}
        }
        // A stale read is served by this replica, unless it is behind what the read's watch
        // token named (a learner still catching up, whose token came from the feed this node
        // follows further on): the leader serves that one.
        if stale
            && self.in_group(&shard)
            && Self::token_floor(shard_id).is_none_or(|floor| shard.group.applied_index() >= floor)
        {
            self.reach_read_floor(&shard).await?;
            return self.read_owned(&shard, cmd);
        }
        let leader = match self.remote_leader(&shard) {
            Err(CommandError::TryAgain(_)) if !self.in_group(&shard) => {
                return self
                    .forward_once_by_map(shard_id, cmd, hops, stale, None)
                    .await;
            }
            leader => leader?,
        };
        match leader {
            Some((leader, addr)) => {
                let hops = Self::hop(hops)?;
                crate::metrics::forwarded(cmd.name(), shard_id);
                let floor = self.read_floor(shard_id, cmd);
                let forwarded =
                    crate::peer::forward(&self.peers, &addr, cmd, hops, stale, None, floor);
                tokio::select! {
                    result = forwarded => result,
                    // Retried toward the new leader by the caller.
                    () = shard.group.leader_moved_from(leader) => Err(CommandError::TryAgain(
                        format!("shard {shard_id}'s leader changed during the read")
                    )),
                }
            }
            // Reads go on after a storage failure stopped a sole voter's group.
            None if shard.group.status().stopped.is_some() => self.read_owned(&shard, cmd),
            // Leadership arrived after the cached state was read: confirm it.
            None if shard.group.linearize().await.is_ok() => self.read_owned(&shard, cmd),
            None => Err(CommandError::TryAgain(format!(
                "shard {shard_id} is changing leader"
            ))),
        }
    }

    /// A read of this node's replica of `shard`, answered only if the shard still owns every
    /// key after it: a split applied during the read may have moved (and deleted) one.
    fn read_owned(&self, shard: &Shard, cmd: &Command) -> Result<Reply, CommandError> {
        let reply = self.read_in(Some(shard), cmd)?;
        let owned = match cmd {
            Command::ShardRead { keys, .. } => shard.owns_keys(keys),
            cmd => match cmd.single_key() {
                Some(key) => shard.owns(crate::slot::key_slot(key)),
                None => shard.owns_keys(cmd.read_keys()),
            },
        };
        if !owned {
            return Err(CommandError::TryAgain(format!(
                "shard {} split during the read; retry",
                shard.id
            )));
        }
        Ok(reply)
    }

    /// The node that leads `key`'s shard, when it is another node (for `MOVED` redirects):
    /// its record in the cluster map. The leader this node's replica of the shard knows, or,
    /// where it holds none (data on the voters only), the one the map's placement names.
    pub fn leader_elsewhere(&self, key: &[u8]) -> Option<NodeRecord> {
        let leader = match self.shards.for_key(key) {
            Some(shard) => {
                let status = shard.group.status();
                if status.role == Role::Leader {
                    return None;
                }
                status.leader?
            }
            None => {
                self.placements
                    .read()
                    .get(&self.shards.shard_of_key(key))?
                    .leader
            }
        };
        if leader == self.raft_id() {
            return None;
        }
        // A leader the map marks down (its successor has not reported yet): forwarded, not
        // redirected to a port that does not answer.
        self.meta.node(leader).filter(|r| !r.down)
    }
}

fn unexpected(reply: &Reply) -> CommandError {
    CommandError::Invalid(format!("unexpected reply from a shard: {reply:?}"))
}
