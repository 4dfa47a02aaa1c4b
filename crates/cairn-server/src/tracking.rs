//! Redis client-side caching (`CLIENT TRACKING`) on this node: which connections cached which
//! keys, and the invalidations owed to them when those keys change.
//!
//! The changes come from the change feed ([`crate::feed`]) through one watch of the whole
//! keyspace per node ([`Tracking::spawn`]), so a write made through any node, by any front
//! end, invalidates the keys cached by clients of every node, and a leader's death changes
//! nothing (every replica applies the same log). Default mode remembers the keys a client
//! read (one invalidation per read, then forgotten); BCAST mode sends every change under the
//! client's prefixes. When the watch falls behind its history window, every tracking client is
//! told to drop everything (Redis's `invalidate` with a null key list), then the watch starts
//! again from now. The same happens while one of the node's replicas is out of touch with
//! its group (cut off from its leader): changes committed elsewhere would not reach it.
//!
//! `NOLOOP`: a connection that tracks with it proposes each write to one shard it leads in a
//! log entry of its own ([`crate::node::Node::propose_alone`]), so the write's answer names
//! the entry, and every change at that entry is the connection's own: it is not told of
//! those. While one of its writes is unanswered, changes of that write's keys are held for
//! it, then told unless they are its own. A write whose place is not known (forwarded to
//! another node's leader, spread over shards, refused, of unknown outcome) is told as any
//! other change: NOLOOP saves invalidations, it never costs one that was due.
//!
//! Bounds: at most [`TRACKED_KEYS_MAX`] keys are remembered (past it the oldest-placed are
//! invalidated at once and forgotten, as Redis's `tracking-table-max-keys` does), and at most
//! [`INBOX_MAX`] invalidation messages wait for a connection: one that cannot take them is
//! closed (its client's cache can no longer be trusted, and a client library drops its cache
//! with its connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::node::Node;

/// Most keys remembered for default-mode clients, node-wide.
pub const TRACKED_KEYS_MAX: usize = 1_000_000;
/// Invalidation messages that may wait for one connection.
pub const INBOX_MAX: usize = 4096;
/// Most BCAST prefixes, node-wide.
pub const PREFIXES_MAX: usize = 65_536;
/// Entries remembered per NOLOOP connection as holding its own changes whose changes have
/// not come through yet (the newest; the others are forgotten as the feed passes them).
pub const OWN_LANDED_MAX: usize = 256;
/// Changes held per unanswered write of a NOLOOP connection; past it they are told at once.
pub const OWN_HELD_MAX: usize = 1024;
/// How often tracking clients are told to drop everything while a replica on the node is
/// out of touch with its group.
pub const OUT_OF_TOUCH_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// One change as tracking sees it: the key, and the shard and log index of its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Bytes,
    pub shard: u32,
    pub index: u64,
}

/// A change held for a NOLOOP connection's unanswered write, with whether it was held from
/// the connection's reads (rather than its BCAST prefixes).
type Held = (Change, bool);

/// A NOLOOP connection's writes.
#[derive(Debug, Default)]
struct Own {
    /// Writes proposed and not yet answered: ticket, keys, and the changes of those keys
    /// held meanwhile.
    open: Vec<(u64, Vec<Bytes>, Vec<Held>)>,
    /// Entries (shard, index) that hold only this connection's changes, newest last.
    landed: std::collections::VecDeque<(u32, u64)>,
}

/// What [`Tracking::changed`] does for one client and one change.
enum Told {
    /// Tell its sink.
    Yes(u64),
    /// Its own change: not told.
    Own,
    /// Not told now (held for its write, or not tracking).
    No,
}

/// What a connection is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These keys changed: drop them.
    Keys(Vec<Bytes>),
    /// Drop every key (history was lost, so any key may have changed).
    All,
}

/// How a client tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// The connection its invalidations go to (itself, or its `REDIRECT`).
    pub sink: u64,
    /// BCAST: every change under these prefixes (every key when empty); `None`: default mode,
    /// the keys it read.
    pub bcast: Option<Vec<Bytes>>,
}

/// The node's tracking table.
#[derive(Debug, Default)]
pub struct Tracking {
    inner: Mutex<Table>,
    /// The whole-keyspace watch, once started (by the first client that tracks: until then
    /// the write path pays nothing for tracking).
    running: std::sync::OnceLock<crate::watch::Positioned>,
}

#[derive(Debug, Default)]
struct Table {
    /// Default mode: key → clients that read it since its last invalidation.
    keys: HashMap<Bytes, Vec<u64>>,
    /// Clients with tracking on.
    clients: HashMap<u64, Mode>,
    /// BCAST prefixes: (prefix, client).
    prefixes: Vec<(Bytes, u64)>,
    /// Connections that take invalidations.
    inboxes: HashMap<u64, mpsc::Sender<Invalidation>>,
    /// NOLOOP connections' writes in flight and where their answered writes landed.
    own: HashMap<u64, Own>,
    /// The last ticket handed out for a NOLOOP write.
    next_ticket: u64,
}

impl Table {
    /// Sends `invalidation` to `sink`; a full inbox closes it (its connection ends).
    fn send(&mut self, sink: u64, invalidation: Invalidation) {
        if let Some(inbox) = self.inboxes.get(&sink) {
            if inbox.try_send(invalidation).is_err() {
                tracing::info!(
                    client = sink,
                    "closing a connection that cannot take its invalidations"
                );
                self.inboxes.remove(&sink);
            }
        }
    }
}

impl Tracking {
    /// Turns tracking on for connection `id` (or changes its mode).
    pub fn enable(&self, id: u64, mode: Mode) -> Result<(), &'static str> {
        let mut table = self.inner.lock();
        table.prefixes.retain(|(_, client)| *client != id);
        if let Some(prefixes) = &mode.bcast {
            let wanted = prefixes.len().max(1);
            if table.prefixes.len() + wanted > PREFIXES_MAX {
                table.clients.remove(&id);
                return Err("ERR too many tracking prefixes on this node");
            }
            if prefixes.is_empty() {
                table.prefixes.push((Bytes::new(), id));
            }
            for prefix in prefixes {
                table.prefixes.push((prefix.clone(), id));
            }
        }
        table.clients.insert(id, mode);
        Ok(())
    }

    /// Turns tracking off for connection `id`. Keys it read stay in the table until they
    /// change (or are evicted): nothing is sent for them.
    pub fn disable(&self, id: u64) {
        let mut table = self.inner.lock();
        table.own.remove(&id);
        table.clients.remove(&id);
        table.prefixes.retain(|(_, client)| *client != id);
    }

    /// Whether connection `id` tracks, and how.
    pub fn mode(&self, id: u64) -> Option<Mode> {
        self.inner.lock().clients.get(&id).cloned()
    }

    /// A new inbox for connection `id` (replacing any earlier one).
    pub fn inbox(&self, id: u64) -> mpsc::Receiver<Invalidation> {
        let (tx, rx) = mpsc::channel(INBOX_MAX);
        self.inner.lock().inboxes.insert(id, tx);
        rx
    }

    /// Whether connection `id` takes invalidations (its redirect target is there).
    pub fn has_inbox(&self, id: u64) -> bool {
        self.inner.lock().inboxes.contains_key(&id)
    }

    /// Connection `id` is gone.
    pub fn close(&self, id: u64) {
        let mut table = self.inner.lock();
        table.own.remove(&id);
        table.clients.remove(&id);
        table.prefixes.retain(|(_, client)| *client != id);
        table.inboxes.remove(&id);
    }

    /// Connection `id` is about to read `keys`: remember them, when it tracks in default mode.
    pub fn reading(&self, id: u64, keys: &[Bytes]) {
        let mut table = self.inner.lock();
        if !matches!(table.clients.get(&id), Some(Mode { bcast: None, .. })) {
            return;
        }
        for key in keys {
            let readers = table.keys.entry(key.clone()).or_default();
            if !readers.contains(&id) {
                readers.push(id);
            }
        }
        // Over the bound: forget some keys, telling their readers they changed.
        while table.keys.len() > TRACKED_KEYS_MAX {
            let Some(key) = table.keys.keys().next().cloned() else {
                break;
            };
            let readers = table.keys.remove(&key).unwrap_or_default();
            for reader in readers {
                if let Some(sink) = table.clients.get(&reader).map(|m| m.sink) {
                    table.send(sink, Invalidation::Keys(vec![key.clone()]));
                }
            }
        }
    }

    /// A write of NOLOOP connection `id` to `keys` is about to be proposed: changes of those
    /// keys are held for `id` until [`Tracking::own_write_answered`] with the ticket returned.
    pub fn own_write_begins(&self, id: u64, keys: Vec<Bytes>) -> u64 {
        let mut table = self.inner.lock();
        // Node-wide, so a ticket from before tracking was turned off and on again matches
        // no write of the new session.
        table.next_ticket += 1;
        let ticket = table.next_ticket;
        table
            .own
            .entry(id)
            .or_default()
            .open
            .push((ticket, keys, Vec::new()));
        ticket
    }

    /// The write of `ticket` was answered; `landed`: the entry that holds its changes and
    /// nothing else, when known. Held changes that are not its own are told now.
    pub fn own_write_answered(&self, id: u64, ticket: u64, landed: Option<(u32, u64)>) {
        let mut table = self.inner.lock();
        let Some(own) = table.own.get_mut(&id) else {
            return;
        };
        let Some(at) = own.open.iter().position(|(t, _, _)| *t == ticket) else {
            return;
        };
        let (_, _, held) = own.open.remove(at);
        if let Some(landed) = landed {
            own.landed.push_back(landed);
            if own.landed.len() > OWN_LANDED_MAX {
                own.landed.pop_front();
            }
        }
        let mut due = Vec::new();
        for (change, reader) in held {
            if landed != Some((change.shard, change.index)) {
                push_once(&mut due, &change.key);
            } else if reader {
                // Its own change: it stays a reader (see `changed`).
                let readers = table.keys.entry(change.key).or_default();
                if !readers.contains(&id) {
                    readers.push(id);
                }
            }
        }
        if let (false, Some(sink)) = (due.is_empty(), table.clients.get(&id).map(|m| m.sink)) {
            table.send(sink, Invalidation::Keys(due));
        }
    }

    /// `keys` changed (tests: each at an entry of its own).
    #[cfg(test)]
    pub fn changed_keys(&self, keys: &[Bytes]) {
        let changes: Vec<Change> = keys
            .iter()
            .map(|key| Change {
                key: key.clone(),
                shard: 0,
                index: u64::MAX,
            })
            .collect();
        self.changed(&changes);
    }

    /// These changes were applied: tell every client that read a key (and forget it for
    /// them) and every BCAST client whose prefix it starts with, one message per connection,
    /// except a NOLOOP client's own changes (held while its write is unanswered).
    pub fn changed(&self, changes: &[Change]) {
        let mut table = self.inner.lock();
        if table.clients.is_empty() && table.keys.is_empty() {
            return;
        }
        let table = &mut *table;
        let mut owed: HashMap<u64, Vec<Bytes>> = HashMap::new();
        for change in changes {
            let key = &change.key;
            // What `client` is told of this change (see `Told`). A reader whose own change it is stays a reader: a read it made after its write
            // may have been remembered before this change came through, and must not be
            // forgotten with it.
            let mut tell = |client: u64, reader: bool| -> Told {
                let Some(mode) = table.clients.get(&client) else {
                    return Told::No;
                };
                if let Some(own) = table.own.get_mut(&client) {
                    // Entries of this shard before this one are behind the feed: forgotten.
                    own.landed
                        .retain(|&(s, i)| s != change.shard || i >= change.index);
                    if own.landed.contains(&(change.shard, change.index)) {
                        return Told::Own;
                    }
                    if let Some((_, _, held)) = own
                        .open
                        .iter_mut()
                        .find(|(_, keys, held)| held.len() < OWN_HELD_MAX && keys.contains(key))
                    {
                        held.push((change.clone(), reader));
                        return Told::No;
                    }
                }
                Told::Yes(mode.sink)
            };
            if let Some(readers) = table.keys.remove(key) {
                let mut kept = Vec::new();
                for reader in readers {
                    match tell(reader, true) {
                        Told::Yes(sink) => push_once(owed.entry(sink).or_default(), key),
                        Told::Own => kept.push(reader),
                        Told::No => {}
                    }
                }
                if !kept.is_empty() {
                    table.keys.insert(key.clone(), kept);
                }
            }
            for (prefix, client) in &table.prefixes {
                if key.starts_with(prefix) {
                    if let Told::Yes(sink) = tell(*client, false) {
                        push_once(owed.entry(sink).or_default(), key);
                    }
                }
            }
        }
        for (sink, keys) in owed {
            table.send(sink, Invalidation::Keys(keys));
        }
    }

    /// Every key may have changed: every tracking client drops everything.
    pub fn flush_all(&self) {
        let mut table = self.inner.lock();
        table.keys.clear();
        let sinks: Vec<u64> = table.clients.values().map(|m| m.sink).collect();
        for sink in sinks {
            table.send(sink, Invalidation::All);
        }
    }

    /// Keys remembered (for tests and INFO).
    pub fn tracked_keys(&self) -> usize {
        self.inner.lock().keys.len()
    }

    /// Starts following every change of the keyspace on this node's feeds, invalidating,
    /// until the node stops; does nothing more when it already runs. Once its watch stands
    /// ([`Tracking::started`], which `CLIENT TRACKING on` waits for before it answers), a
    /// key read is invalidated by any later change.
    pub fn start(self: &Arc<Self>, node: &Arc<Node>) {
        self.running.get_or_init(|| {
            self.follow_touch(node);
            self.follow_keyspace(node)
        });
    }

    /// The whole-keyspace watch, once started.
    pub fn started(&self) -> Option<crate::watch::Positioned> {
        self.running.get().cloned()
    }

    fn follow_keyspace(self: &Arc<Self>, node: &Arc<Node>) -> crate::watch::Positioned {
        let tracking = self.clone();
        let flushing = self.clone();
        crate::watch::follow_keyspace(
            node,
            move |events| {
                let changes: Vec<Change> = events
                    .into_iter()
                    .map(|e| Change {
                        key: e.event.key,
                        shard: e.shard,
                        index: e.revision,
                    })
                    .collect();
                tracking.changed(&changes);
            },
            move || {
                tracing::warn!(
                    "client tracking fell behind the change history; every tracking client drops its cache"
                );
                flushing.flush_all();
            },
        )
    }
}

impl Tracking {
    /// While a replica on this node is out of touch with its group ([`Node::out_of_touch`]),
    /// tells every tracking client to drop everything, at once and then every
    /// [`OUT_OF_TOUCH_FLUSH_INTERVAL`]: the replica applies nothing the rest of its group
    /// commits, so no invalidation would come for a key another node changes, and a value
    /// read meanwhile (a read that still found a leader) would be cached for good.
    fn follow_touch(self: &Arc<Self>, node: &Arc<Node>) {
        let mut touch = node.touch_changes();
        let tracking = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                if touch.borrow_and_update().is_empty() {
                    if touch.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let Some(tracking) = tracking.upgrade() else {
                    return;
                };
                tracking.flush_all();
                drop(tracking);
                tokio::select! {
                    changed = touch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep(OUT_OF_TOUCH_FLUSH_INTERVAL) => {}
                }
            }
        });
    }
}

fn push_once(keys: &mut Vec<Bytes>, key: &Bytes) {
    if keys.last() != Some(key) {
        keys.push(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn own(id: u64) -> Mode {
        Mode {
            sink: id,
            bcast: None,
        }
    }

    #[test]
    fn a_read_key_is_invalidated_once_then_forgotten() {
        let t = Tracking::default();
        let mut inbox = t.inbox(1);
        t.enable(1, own(1)).unwrap();
        t.reading(1, &[b("a"), b("b")]);
        t.changed_keys(&[b("a"), b("zzz")]);
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("a")]));
        t.changed_keys(&[b("a")]);
        assert!(
            inbox.try_recv().is_err(),
            "forgotten after its invalidation"
        );
        assert_eq!(t.tracked_keys(), 1);
    }

    #[test]
    fn invalidations_go_to_the_redirect_and_bcast_follows_prefixes() {
        let t = Tracking::default();
        let mut target = t.inbox(9);
        t.enable(
            2,
            Mode {
                sink: 9,
                bcast: Some(vec![b("user:"), b("cfg")]),
            },
        )
        .unwrap();
        t.changed_keys(&[b("user:1"), b("other"), b("cfg")]);
        assert_eq!(
            target.try_recv().unwrap(),
            Invalidation::Keys(vec![b("user:1"), b("cfg")])
        );
        // Off: nothing more, and a read by a client without tracking is not remembered.
        t.disable(2);
        t.reading(2, &[b("user:1")]);
        t.changed_keys(&[b("user:1")]);
        assert!(target.try_recv().is_err());
        assert_eq!(t.tracked_keys(), 0);
    }

    #[test]
    fn a_connection_that_cannot_take_its_invalidations_loses_its_inbox() {
        let t = Tracking::default();
        let _inbox = t.inbox(1);
        t.enable(
            1,
            Mode {
                sink: 1,
                bcast: Some(vec![]),
            },
        )
        .unwrap();
        for i in 0..=INBOX_MAX {
            t.changed_keys(&[b(&format!("k{i}"))]);
        }
        assert!(!t.has_inbox(1), "the connection is to be closed");
    }

    fn at(key: &str, index: u64) -> Change {
        Change {
            key: b(key),
            shard: 0,
            index,
        }
    }

    #[test]
    fn noloop_skips_a_clients_own_changes_and_holds_others_until_its_write_is_answered() {
        let t = Tracking::default();
        let mut inbox = t.inbox(1);
        t.enable(
            1,
            Mode {
                sink: 1,
                bcast: Some(vec![]),
            },
        )
        .unwrap();
        // Its own change arrives before the answer: held, then dropped as its own; another
        // client's change of the same key meanwhile is told once the write is answered.
        let ticket = t.own_write_begins(1, vec![b("a")]);
        t.changed(&[at("a", 5), at("a", 6), at("b", 6)]);
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("b")]));
        assert!(
            inbox.try_recv().is_err(),
            "changes of `a` wait for the answer"
        );
        t.own_write_answered(1, ticket, Some((0, 5)));
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("a")]));
        assert!(inbox.try_recv().is_err(), "its own change at 5 is not told");
        // The answer before the change: the change at its entry is skipped when it comes.
        let ticket = t.own_write_begins(1, vec![b("c")]);
        t.own_write_answered(1, ticket, Some((0, 7)));
        t.changed(&[at("c", 7)]);
        assert!(inbox.try_recv().is_err());
        t.changed(&[at("c", 8)]);
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("c")]));
        // A write whose entry is not known: whatever was held is told.
        let ticket = t.own_write_begins(1, vec![b("d")]);
        t.changed(&[at("d", 9)]);
        assert!(inbox.try_recv().is_err());
        t.own_write_answered(1, ticket, None);
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("d")]));
    }

    /// `SET k; GET k` pipelined by a NOLOOP client: the GET's key is remembered before the
    /// SET's change comes through, and that change, its own, must not forget it.
    #[test]
    fn a_noloop_clients_read_after_its_own_write_stays_tracked() {
        let t = Tracking::default();
        let mut inbox = t.inbox(1);
        t.enable(1, own(1)).unwrap();
        // The change comes before the write's answer (held, then found to be its own).
        let ticket = t.own_write_begins(1, vec![b("k")]);
        t.reading(1, &[b("k")]);
        t.changed(&[at("k", 3)]);
        t.own_write_answered(1, ticket, Some((0, 3)));
        assert!(inbox.try_recv().is_err(), "its own change is not told");
        t.changed(&[at("k", 4)]);
        assert_eq!(
            inbox.try_recv().unwrap(),
            Invalidation::Keys(vec![b("k")]),
            "another client's change after its read is told"
        );
        // The answer before the change.
        let ticket = t.own_write_begins(1, vec![b("j")]);
        t.own_write_answered(1, ticket, Some((0, 5)));
        t.reading(1, &[b("j")]);
        t.changed(&[at("j", 5)]);
        assert!(inbox.try_recv().is_err());
        t.changed(&[at("j", 6)]);
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::Keys(vec![b("j")]));
    }

    #[test]
    fn losing_history_flushes_every_client() {
        let t = Tracking::default();
        let mut inbox = t.inbox(1);
        t.enable(1, own(1)).unwrap();
        t.reading(1, &[b("a")]);
        t.flush_all();
        assert_eq!(inbox.try_recv().unwrap(), Invalidation::All);
        assert_eq!(t.tracked_keys(), 0);
    }
}
