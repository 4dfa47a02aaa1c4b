//! Splitting a shard: what a replica does when it applies a [`WriteOp::Split`] entry.
//!
//! The entry says which top part of the shard's slot range goes to a new shard (the child).
//! Every replica of the parent applies it at the same log position, so every one of them
//! builds the same child replica, as TiKV's stores each split a region when they apply the
//! split command:
//!
//! 1. The child's replica directory is created empty (an uninitialised replica, which a crash
//!    may leave behind; applying the entry again builds it).
//! 2. A staging engine in it receives every key of the moving slots with its value, its
//!    version (the parent's log index that last wrote it) and its deadline, in version order,
//!    then one batch at the split's log index with the child's system records and the
//!    applied marker: the split entry's log id and the parent's membership. It is synced,
//!    and `CURRENT` is renamed to it ([`Replica::install`]): the child now exists, durably.
//! 3. The child's log starts purged at the split entry ([`LogStore::seed`]): it never held
//!    anything before, and its first election is in a later term than the entry's.
//! 4. Only then does the parent's batch delete its own copies of those keys, at the same
//!    log index.
//!
//! Versions in the child keep growing from the parent's: a key keeps the version it had,
//! and the child's first entry is one past the split entry. Deadlines are absolute, so they
//! move as they are; keys already expired move too (hidden from readers as before, and
//! deleted by the child's active expiry), so that what a replica copies does not depend on
//! its clock.
//!
//! [`LogStore::seed`]: crate::LogStore::seed

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::slot::key_slot;
use cairn_storage::io::Io;
use cairn_storage::{Engine, Options, WriteBatch};

use crate::codec::{decode_applied, encode_applied_raw};
use crate::replica::Replica;
use crate::types::LogId;

/// Keys read from the parent per engine read while building a child.
const COPY_BATCH_KEYS: usize = 1024;

/// One split as the parent's replica applies it.
#[derive(Debug, Clone)]
pub struct SplitAt {
    /// The parent's engine, as it stands before the split entry.
    pub parent: Arc<Engine>,
    /// The split entry's log id.
    pub log_id: LogId,
    /// The parent's membership as its marker encodes it (the child starts with the same).
    pub membership: Bytes,
    /// The new shard's id.
    pub child: u32,
    /// The moving slots, inclusive.
    pub first_slot: u16,
    pub last_slot: u16,
}

impl SplitAt {
    /// Whether `key` moves to the child.
    pub fn moves(&self, key: &[u8]) -> bool {
        (self.first_slot..=self.last_slot).contains(&key_slot(key))
    }
}

/// What a split tells the parent's batch to write besides the deletes: system records.
pub type SystemRecords = Vec<(Bytes, Bytes)>;

/// The keys of `at.parent` that move to the child (expired ones too), each with its version,
/// in version order. Blocking: one walk of the parent's keys.
pub fn moving_keys(at: &SplitAt) -> Vec<(u64, Bytes)> {
    let mut moving: Vec<(u64, Bytes)> = at
        .parent
        .all_keys()
        .into_iter()
        .filter(|(key, _)| at.moves(key))
        .map(|(key, meta)| (meta.version, key))
        .collect();
    moving.sort_unstable();
    moving
}

/// Builds the child's replica in `dir` from `at.parent` (step 1 and 2 above) with the keys
/// `moving` ([`moving_keys`]) and the system records `system` in its engine, and answers it
/// (open: hand it to [`crate::StateMachine::of_replica`]). Synchronous and blocking (run it
/// off the async runtime). Answers `None`, building nothing, when `dir` already holds an
/// initialised replica (the entry is being applied again after a restart that found the
/// child built).
pub fn build_child(
    io: Arc<dyn Io>,
    dir: &Path,
    options: Options,
    at: &SplitAt,
    moving: &[(u64, Bytes)],
    system: &[(Bytes, Bytes)],
) -> io::Result<Option<Replica>> {
    let storage = |e: cairn_storage::Error| io::Error::other(e);
    let replica = Replica::open(io.clone(), dir, options.clone()).map_err(storage)?;
    if let Some(marker) = replica.engine().last_applied() {
        let (applied, _) = decode_applied(&marker)?;
        if applied.is_some() {
            return Ok(None);
        }
    }
    let staging = replica.staging_dir();
    let engine = Engine::open_with_io(&staging, options, io.clone()).map_err(storage)?;
    // One batch per version (a batch stamps one version on every record), a bounded number
    // of keys read per engine call.
    let mut start = 0;
    while start < moving.len() {
        let version = moving[start].0;
        let end = start
            + moving[start..]
                .iter()
                .take(COPY_BATCH_KEYS)
                .take_while(|(v, _)| *v == version)
                .count();
        let keys: Vec<&[u8]> = moving[start..end].iter().map(|(_, k)| &k[..]).collect();
        // Expired keys too: what a replica copies must not depend on its clock.
        let entries = at.parent.get_many_with_expired(&keys).map_err(storage)?;
        let mut batch = WriteBatch::new();
        for entry in entries.into_iter().flatten() {
            batch.put_with_expiry(&entry.key, &entry.value, entry.expires_at_ms);
        }
        if !batch.is_empty() {
            batch.set_version(version);
            engine.write(batch).map_err(storage)?;
        }
        start = end;
    }
    let mut last = WriteBatch::new();
    for (key, value) in system {
        last.put_system(key, value);
    }
    last.set_version(at.log_id.index);
    last.set_last_applied(&encode_applied_raw(Some(&at.log_id), &at.membership));
    engine.write(last).map_err(storage)?;
    engine.sync().map_err(storage)?;
    io.sync_dir(&staging)?;
    replica.install(engine).map_err(storage)?;
    Ok(Some(replica))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cairn_storage::io::sim::{PowerCut, SimIo};
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::codec::encode_membership;
    use crate::types::StoredMembership;

    fn options() -> Options {
        Options {
            sync: cairn_storage::SyncPolicy::Never,
            ..Options::default()
        }
    }

    #[test]
    fn a_child_gets_the_moving_keys_with_their_versions_and_deadlines() {
        let io_sim = SimIo::new(7);
        let io: Arc<dyn Io> = Arc::new(io_sim.clone());
        let parent =
            Arc::new(Engine::open_with_io(Path::new("/p"), options(), io.clone()).expect("parent"));
        let keys: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
        for (n, chunk) in keys.chunks(7).enumerate() {
            let mut batch = WriteBatch::new();
            for key in chunk {
                let deadline = (n % 3 == 0).then_some(u64::MAX / 2);
                batch.put_with_expiry(key.as_bytes(), key.as_bytes(), deadline);
            }
            batch.set_version(10 + n as u64 * 3);
            parent.write(batch).expect("write");
        }
        let at = SplitAt {
            parent: parent.clone(),
            log_id: LogId::new(
                LeaderId {
                    term: 4,
                    node_id: 2,
                },
                1000,
            ),
            membership: encode_membership(&StoredMembership::default()),
            child: 9,
            first_slot: 8192,
            last_slot: 16383,
        };
        let system = vec![(Bytes::from_static(b"s"), Bytes::from_static(b"range"))];
        let moving = moving_keys(&at);
        let built = build_child(
            io.clone(),
            Path::new("/c"),
            options(),
            &at,
            &moving,
            &system,
        );
        let built = built.expect("build").expect("built");
        // Durable when it returns: a power cut now keeps the whole child.
        let image: Arc<dyn Io> = Arc::new(io_sim.crash_image(PowerCut::DropUnsynced));
        let cut = Replica::open(image, Path::new("/c"), options()).expect("after a power cut");
        assert_eq!(cut.engine().len(), built.engine().len());
        assert_eq!(cut.engine().last_applied(), built.engine().last_applied());
        drop(cut);
        drop(built);
        // The retired empty engine goes in the background: wait for it before reopening.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let child = Replica::open(io.clone(), Path::new("/c"), options()).expect("reopen");
        let engine = child.engine();
        let moved: BTreeSet<&String> = keys.iter().filter(|k| at.moves(k.as_bytes())).collect();
        assert!(
            moved.len() > 100 && moved.len() < 400,
            "{} moved",
            moved.len()
        );
        assert_eq!(engine.len(), moved.len() as u64);
        for key in &keys {
            let got = engine.get_entry(key.as_bytes()).expect("read");
            if moved.contains(key) {
                let got = got.expect("a moved key is in the child");
                let want = parent
                    .get_entry(key.as_bytes())
                    .expect("read")
                    .expect("parent");
                assert_eq!(
                    (got.value, got.version, got.expires_at_ms),
                    (want.value, want.version, want.expires_at_ms)
                );
            } else {
                assert!(got.is_none(), "{key} stayed in the parent");
            }
        }
        assert_eq!(engine.system_get(b"s").as_deref(), Some(&b"range"[..]));
        let (applied, _) = decode_applied(&engine.last_applied().expect("marker")).expect("marker");
        assert_eq!(applied, Some(at.log_id));
        // Applied again (a restart that replays the entry): the built child is kept as it is.
        drop(engine);
        drop(child);
        let again = build_child(io, Path::new("/c"), options(), &at, &moving, &system);
        let again = again.expect("again");
        assert!(again.is_none());
    }
}
