//! The node's book of its shard replicas' incarnations (`replicas.json` in the data
//! directory): which replica of a shard is the live one, and which were removed.
//!
//! A node holds a replica of a shard only while it is a member of the shard's group: a leader
//! that adds it creates one by contacting it ([`cairn_raft::GroupHost`]), and a node the group
//! dropped deletes its replica (its engine directory and its log). The same node may be added
//! again later: each replica of a shard on a node is one *incarnation*, numbered from 0, with
//! a directory and a log of its own (`shards/NNNNN` and the group's id in the WAL for the
//! first, `shards/NNNNN.G` and the group's id plus `G << 32` after), so that nothing of a
//! removed incarnation (its log's purge point, its committed marker, a file its deletion left
//! behind at a crash) can be mistaken for the new one's.
//!
//! A removal is written here, durably, before anything of the replica is deleted, with the
//! term of the leader whose membership dropped the node. A leader's message of an older
//! term never creates a replica again: it comes from a deposed leader that still counts this
//! node (Raft needs the removed member to stay silent; an empty replica answering that leader
//! could let it commit with a majority of an outdated membership).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_io::Io;
use serde::{Deserialize, Serialize};

/// Name of the book in the data directory.
pub const BOOK_FILE: &str = "replicas.json";

/// One shard's replica on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// Which incarnation is the newest (0: the first).
    pub generation: u32,
    /// Set once that incarnation was removed: the term of the leader whose membership
    /// dropped this node.
    pub removed_term: Option<u64>,
    /// The term of the latest removal of an earlier incarnation: this one's log votes in
    /// that term at least before its group starts, so it never takes a message of a term
    /// before the removal (a deposed leader's), even after a crash that lost its own vote.
    #[serde(default)]
    pub floor_term: u64,
    /// With `removed_term`: the log index of the membership that dropped this node (0 in a
    /// book from before it was kept).
    #[serde(default)]
    pub removed_index: u64,
    /// The index of the membership that dropped the latest earlier incarnation: with
    /// `floor_term`, the floor this one's membership must pass before it stands for
    /// election or votes (`cairn_raft::MembershipFloor`: a snapshot can carry a membership
    /// from before the removal that names this node a voter).
    #[serde(default)]
    pub floor_index: u64,
}

impl Incarnation {
    /// The first incarnation, live.
    pub const FIRST: Incarnation = Incarnation {
        generation: 0,
        removed_term: None,
        floor_term: 0,
        removed_index: 0,
        floor_index: 0,
    };

    /// The membership floor of this incarnation, if an earlier one was removed.
    pub fn membership_floor(self) -> Option<cairn_raft::MembershipFloor> {
        (self.generation > 0).then_some(cairn_raft::MembershipFloor {
            term: self.floor_term,
            index: self.floor_index,
        })
    }

    /// Whether incarnation `generation` of the shard is dead (removed, or replaced by a
    /// newer one).
    pub fn is_dead(self, generation: u32) -> bool {
        generation < self.generation
            || (generation == self.generation && self.removed_term.is_some())
    }

    /// The incarnation a leader of `term` may create, if any: the newest one again while it
    /// is live, the next one after a removal in an older or the same term, none after a
    /// removal in a newer term (the message is a deposed leader's).
    pub fn next_for(self, term: u64) -> Option<Incarnation> {
        match self.removed_term {
            None => Some(self),
            Some(removed) if term >= removed => Some(Incarnation {
                generation: self.generation + 1,
                removed_term: None,
                floor_term: removed.max(self.floor_term),
                removed_index: 0,
                floor_index: self.removed_index.max(self.floor_index),
            }),
            Some(_) => None,
        }
    }
}

/// The book, as the node holds it and as `replicas.json` records it.
#[derive(Debug)]
pub struct ReplicaBook {
    io: Arc<dyn Io>,
    path: PathBuf,
    /// The file was there when the node opened (a data directory from before the book has
    /// none: every replica in it is a first incarnation).
    existed: bool,
    shards: parking_lot::Mutex<BTreeMap<u32, Incarnation>>,
}

impl ReplicaBook {
    /// Reads the book in `data_dir` (empty if there is none: every replica is a first
    /// incarnation).
    pub fn load(io: Arc<dyn Io>, data_dir: &Path) -> anyhow::Result<ReplicaBook> {
        let path = data_dir.join(BOOK_FILE);
        let existed = io.exists(&path)?;
        let shards = if existed {
            let bytes = io.open(&path)?.read_all()?;
            serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        } else {
            BTreeMap::new()
        };
        Ok(ReplicaBook {
            io,
            path,
            existed,
            shards: parking_lot::Mutex::new(shards),
        })
    }

    /// Whether the file was there when the node opened.
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// Shard `id`'s newest incarnation here.
    pub fn get(&self, id: u32) -> Incarnation {
        self.shards
            .lock()
            .get(&id)
            .copied()
            .unwrap_or(Incarnation::FIRST)
    }

    /// Whether the book has anything on shard `id` (a node that created the cluster opens
    /// its first layout's shards only when it does not).
    pub fn knows(&self, id: u32) -> bool {
        self.shards.lock().contains_key(&id)
    }

    /// Records shard `id`'s newest incarnation, durably, before returning.
    pub fn set(&self, id: u32, incarnation: Incarnation) -> std::io::Result<()> {
        let mut shards = self.shards.lock();
        if shards.get(&id) == Some(&incarnation) {
            return Ok(());
        }
        let mut next = shards.clone();
        next.insert(id, incarnation);
        let bytes = serde_json::to_vec_pretty(&next).expect("the book serialises");
        cairn_io::write_file_atomic(&*self.io, &self.path, &bytes)?;
        *shards = next;
        Ok(())
    }
}

/// The WAL group of incarnation `generation` of Raft group `group`.
pub fn wal_group(group: u64, generation: u32) -> u64 {
    group | (u64::from(generation) << 32)
}

/// The Raft group and incarnation a WAL group belongs to.
pub fn of_wal_group(wal_group: u64) -> (u64, u32) {
    (wal_group & 0xffff_ffff, (wal_group >> 32) as u32)
}

/// Directory of incarnation `generation` of shard `id`'s replica.
pub fn replica_dir(data_dir: &Path, id: u32, generation: u32) -> PathBuf {
    let shards = data_dir.join("shards");
    match generation {
        0 => shards.join(format!("{id:05}")),
        g => shards.join(format!("{id:05}.{g}")),
    }
}

/// The shard and incarnation a directory under `shards/` holds, from its name.
pub fn parse_replica_dir(name: &str) -> Option<(u32, u32)> {
    let (id, generation) = match name.split_once('.') {
        Some((id, g)) => (id, g.parse().ok()?),
        None => (name, 0),
    };
    if id.len() != 5 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_follow_removals_and_refuse_older_terms() {
        let live = Incarnation::FIRST;
        assert_eq!(live.next_for(1), Some(live));
        assert!(!live.is_dead(0));
        let removed = Incarnation {
            generation: 0,
            removed_term: Some(7),
            removed_index: 40,
            ..Incarnation::FIRST
        };
        assert!(removed.is_dead(0));
        assert_eq!(removed.next_for(6), None, "a deposed leader's message");
        let next = Incarnation {
            generation: 1,
            removed_term: None,
            floor_term: 7,
            removed_index: 0,
            floor_index: 40,
        };
        assert_eq!(
            next.membership_floor(),
            Some(cairn_raft::MembershipFloor { term: 7, index: 40 })
        );
        assert_eq!(live.membership_floor(), None);
        assert_eq!(removed.next_for(7), Some(next));
        assert_eq!(removed.next_for(9), Some(next));
        assert!(next.is_dead(0) && !next.is_dead(1));
    }

    #[test]
    fn directories_and_log_groups_name_their_incarnation() {
        let data = Path::new("/d");
        for (id, g) in [(0, 0), (3, 0), (12, 1), (32767, 42)] {
            let dir = replica_dir(data, id, g);
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_replica_dir(name), Some((id, g)));
            let group = u64::from(id) + 1;
            assert_eq!(of_wal_group(wal_group(group, g)), (group, g));
        }
        assert_eq!(wal_group(5, 0), 5);
        assert_eq!(parse_replica_dir("tmp"), None);
        assert_eq!(parse_replica_dir("00001.x"), None);
    }

    /// A replica the node removed comes back only for a leader of the removal's term or
    /// later: a deposed leader's message creates nothing, and the new incarnation's log votes
    /// in the removal's term before its group starts (no older leader's message is taken), it
    /// votes for no candidate before its log names it a member, and it is opened again at
    /// restart, in its own directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_replica_comes_back_only_for_a_leader_of_its_removal_term_or_later() {
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn Io> = Arc::new(cairn_io::StdIo);
        // As if shard 3's group had dropped this node in term 7.
        ReplicaBook::load(io, dir.path())
            .unwrap()
            .set(
                3,
                Incarnation {
                    generation: 0,
                    removed_term: Some(7),
                    removed_index: 12,
                    ..Incarnation::FIRST
                },
            )
            .unwrap();
        let options = || crate::node::tests::options(dir.path());
        let node = crate::Node::open(options()).await.unwrap();
        assert!(node.shards().get(3).is_none(), "a removed replica opened");
        let group = crate::shard::group_of_shard(3);
        assert!(
            node.groups().get_or_open(group, 6).await.is_none(),
            "a deposed leader's message created a replica"
        );
        assert!(node.shards().get(3).is_none());
        let created = node
            .groups()
            .get_or_open(group, 7)
            .await
            .expect("a replica for a leader of the removal's term");
        assert!(created.status().term >= 7, "{:?}", created.status());
        assert!(!created.may_vote(), "an empty replica would vote");
        assert!(node.shards().get(3).is_some());
        assert!(dir.path().join("shards/00003.1").exists());
        assert!(!dir.path().join("shards/00003").exists());
        node.shutdown().await.unwrap();
        drop((node, created));
        // The log is released once the node's last tasks have ended.
        let node = loop {
            match crate::Node::open(options()).await {
                Ok(node) => break node,
                Err(e) if e.to_string().contains("in use") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let shard = node
            .shards()
            .get(3)
            .expect("the live incarnation opened again");
        assert!(shard.group.status().term >= 7);
        assert_eq!(
            ReplicaBook::load(Arc::new(cairn_io::StdIo), dir.path())
                .unwrap()
                .get(3),
            Incarnation {
                generation: 1,
                removed_term: None,
                floor_term: 7,
                removed_index: 0,
                floor_index: 12,
            }
        );
        node.shutdown().await.unwrap();
    }

    #[test]
    fn the_book_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn Io> = Arc::new(cairn_io::StdIo);
        let book = ReplicaBook::load(io.clone(), dir.path()).unwrap();
        assert!(!book.knows(2));
        let removed = Incarnation {
            generation: 3,
            removed_term: Some(11),
            floor_term: 4,
            removed_index: 90,
            floor_index: 30,
        };
        book.set(2, removed).unwrap();
        let again = ReplicaBook::load(io, dir.path()).unwrap();
        assert_eq!(again.get(2), removed);
        assert_eq!(again.get(1), Incarnation::FIRST);
        assert!(again.knows(2) && !again.knows(1));
    }
}
