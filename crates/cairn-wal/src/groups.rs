//! The in-memory index of every group's log: where each live entry is (still in memory, or at
//! a file offset), the group's vote, committed and purge records, and how many live entries
//! each segment file holds (a sealed segment with none can be deleted).
//!
//! The same `apply` runs at submit time (entries are `Pending` until written, so they are
//! readable the moment `submit` returns) and during recovery (every entry `Written`), so the
//! index after a restart is the index before it, minus what was never made durable.
//!
//! Rules, in stream order: an entry at index `i` replaces whatever the group held at `i` and
//! above (a conflicting suffix is gone); a truncate from `i` removes `i` and above; a purge
//! through `i` removes `i` and below and remembers `i`; a range `[first, end)` (restated at the
//! start of every segment) removes everything outside it. A group's live entries are always
//! contiguous: the log refuses an op that would leave a hole (`wal::check_ops`).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::format::{Kind, Rec};

/// Where a written entry's record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    /// Offset of the record (its header) in the segment file.
    pub(crate) offset: u64,
    /// Length of the whole record, header included.
    pub(crate) len: u32,
    /// Format version of the segment (records of format 1 have a shorter header).
    pub(crate) version: u32,
}

/// One live entry.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// Submitted, not yet written: served from memory. `id` tells the write that lands it
    /// apart from a later one at the same index.
    Pending {
        id: u64,
        payload: Bytes,
    },
    Written(Loc),
}

/// One group's log.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub(crate) entries: BTreeMap<u64, Slot>,
    pub(crate) vote: Option<Bytes>,
    pub(crate) committed: Option<Bytes>,
    /// Last purged index, with the caller's bytes for it.
    pub(crate) purged: Option<(u64, Bytes)>,
}

impl Group {
    /// Index of the last live entry.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }
}

/// Every group, and the live written entries per segment.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub(crate) groups: BTreeMap<u64, Group>,
    /// Segment id → live written entries in it.
    pub(crate) live: HashMap<u64, u64>,
}

impl Groups {
    fn release(live: &mut HashMap<u64, u64>, slot: Slot) {
        if let Slot::Written(loc) = slot {
            if let Some(n) = live.get_mut(&loc.segment) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Applies one record. `slot` is where an entry record's data is (ignored for others).
    pub(crate) fn apply(&mut self, rec: &Rec, slot: Option<Slot>) {
        let live = &mut self.live;
        let g = self.groups.entry(rec.group).or_default();
        match rec.kind {
            Kind::Entry => {
                if g.purged.as_ref().is_some_and(|(p, _)| rec.index <= *p) {
                    return;
                }
                // The common case, an append at the next index, has nothing to replace.
                if g.last_index().is_some_and(|last| last >= rec.index) {
                    for (_, slot) in g.entries.split_off(&rec.index) {
                        Groups::release(live, slot);
                    }
                }
                let slot = slot.expect("an entry comes with its slot");
                if let Slot::Written(loc) = &slot {
                    *live.entry(loc.segment).or_default() += 1;
                }
                g.entries.insert(rec.index, slot);
            }
            Kind::Truncate => {
                if g.last_index().is_some_and(|last| last >= rec.index) {
                    for (_, slot) in g.entries.split_off(&rec.index) {
                        Groups::release(live, slot);
                    }
                }
            }
            Kind::Purge => {
                if g.purged.as_ref().is_some_and(|(p, _)| *p > rec.index) {
                    return;
                }
                let keep = g.entries.split_off(&(rec.index.saturating_add(1)));
                for (_, slot) in std::mem::replace(&mut g.entries, keep) {
                    Groups::release(live, slot);
                }
                g.purged = Some((rec.index, rec.payload.clone()));
            }
            Kind::Range => {
                let end = crate::format::u64_at(&rec.payload, 0);
                for (_, slot) in g.entries.split_off(&end) {
                    Groups::release(live, slot);
                }
                let keep = g.entries.split_off(&rec.index);
                for (_, slot) in std::mem::replace(&mut g.entries, keep) {
                    Groups::release(live, slot);
                }
            }
            Kind::Vote => g.vote = Some(rec.payload.clone()),
            Kind::Committed => g.committed = Some(rec.payload.clone()),
        }
    }

    /// Turns the pending entry `id` at `group`/`index` into a written one, if it is still live.
    pub(crate) fn landed(&mut self, group: u64, index: u64, id: u64, loc: Loc) {
        let Some(slot) = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.entries.get_mut(&index))
        else {
            return;
        };
        if matches!(slot, Slot::Pending { id: pending, .. } if *pending == id) {
            *slot = Slot::Written(loc);
            *self.live.entry(loc.segment).or_default() += 1;
        }
    }

    /// The first group whose live entries are not contiguous from its purge point: a segment
    /// that held live entries is missing.
    pub(crate) fn find_hole(&self) -> Option<(u64, u64)> {
        for (&id, g) in &self.groups {
            let mut expect = g.purged.as_ref().map(|(p, _)| p + 1);
            for &index in g.entries.keys() {
                if let Some(e) = expect {
                    if index != e {
                        return Some((id, e));
                    }
                }
                expect = Some(index + 1);
            }
        }
        None
    }
}

/// What the records written so far say about one group (entries as a range: a group's live
/// entries are contiguous). The flusher keeps one per group to restate them at the start of
/// every new segment.
#[derive(Debug, Default, Clone)]
pub(crate) struct GroupView {
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
    /// Live entries `[first, last]`.
    range: Option<(u64, u64)>,
}

/// The written view of every group.
#[derive(Debug, Default)]
pub(crate) struct View(BTreeMap<u64, GroupView>);

impl View {
    /// The view recovery leaves (no entry is pending then).
    pub(crate) fn of(groups: &Groups) -> View {
        View(
            groups
                .groups
                .iter()
                .map(|(&id, g)| {
                    let range = g
                        .entries
                        .keys()
                        .next()
                        .map(|&first| (first, g.last_index().expect("non-empty")));
                    let view = GroupView {
                        vote: g.vote.clone(),
                        committed: g.committed.clone(),
                        purged: g.purged.clone(),
                        range,
                    };
                    (id, view)
                })
                .collect(),
        )
    }

    /// Follows one written record (the same rules as [`Groups::apply`]).
    pub(crate) fn apply(&mut self, rec: &Rec) {
        let g = self.0.entry(rec.group).or_default();
        match rec.kind {
            Kind::Entry => {
                if g.purged.as_ref().is_some_and(|(p, _)| rec.index <= *p) {
                    return;
                }
                g.range = match g.range {
                    Some((first, _)) if first <= rec.index => Some((first, rec.index)),
                    _ => Some((rec.index, rec.index)),
                };
            }
            Kind::Truncate => {
                g.range = g
                    .range
                    .filter(|&(first, _)| first < rec.index)
                    .map(|(first, last)| (first, last.min(rec.index - 1)));
            }
            Kind::Purge => {
                if g.purged.as_ref().is_some_and(|(p, _)| *p > rec.index) {
                    return;
                }
                g.purged = Some((rec.index, rec.payload.clone()));
                g.range = g
                    .range
                    .map(|(first, last)| (first.max(rec.index.saturating_add(1)), last))
                    .filter(|(first, last)| first <= last);
            }
            Kind::Range => {
                let end = crate::format::u64_at(&rec.payload, 0);
                g.range = g
                    .range
                    .map(|(first, last)| (first.max(rec.index), last.min(end.saturating_sub(1))))
                    .filter(|(first, last)| first <= last && end > 0);
            }
            Kind::Vote => g.vote = Some(rec.payload.clone()),
            Kind::Committed => g.committed = Some(rec.payload.clone()),
        }
    }

    /// Records that restate every group: written first in a new segment, they make every older
    /// segment's vote, committed, purge and truncate records redundant.
    pub(crate) fn restate(&self) -> Vec<Rec> {
        let mut out = Vec::new();
        for (&group, g) in &self.0 {
            let rec = |kind, index, payload| Rec {
                kind,
                group,
                index,
                payload,
            };
            if let Some((index, payload)) = &g.purged {
                out.push(rec(Kind::Purge, *index, payload.clone()));
            }
            if let Some(vote) = &g.vote {
                out.push(rec(Kind::Vote, 0, vote.clone()));
            }
            if let Some(committed) = &g.committed {
                out.push(rec(Kind::Committed, 0, committed.clone()));
            }
            match g.range {
                Some((first, last)) => out.push(rec(
                    Kind::Range,
                    first,
                    Bytes::copy_from_slice(&(last + 1).to_le_bytes()),
                )),
                None => out.push(rec(Kind::Truncate, 0, Bytes::new())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, group: u64, index: u64) -> Rec {
        let payload = if kind == Kind::Range {
            Bytes::copy_from_slice(&(index + 3).to_le_bytes())
        } else {
            Bytes::new()
        };
        Rec {
            kind,
            group,
            index,
            payload,
        }
    }

    fn written(segment: u64) -> Option<Slot> {
        Some(Slot::Written(Loc {
            segment,
            offset: 0,
            len: 0,
            version: 2,
        }))
    }

    #[test]
    fn entries_truncate_purge_and_count_live_per_segment() {
        let mut g = Groups::default();
        for i in 1..=10 {
            g.apply(&rec(Kind::Entry, 7, i), written(if i <= 5 { 1 } else { 2 }));
        }
        assert_eq!(g.live[&1], 5);
        assert_eq!(g.live[&2], 5);
        // A conflicting entry at 8 replaces 8..=10.
        g.apply(&rec(Kind::Entry, 7, 8), written(3));
        assert_eq!(g.groups[&7].last_index(), Some(8));
        assert_eq!((g.live[&2], g.live[&3]), (2, 1));
        g.apply(&rec(Kind::Truncate, 7, 7), None);
        assert_eq!(g.groups[&7].last_index(), Some(6));
        g.apply(&rec(Kind::Purge, 7, 5), None);
        assert_eq!(g.live[&1], 0);
        assert_eq!(
            g.groups[&7].entries.keys().copied().collect::<Vec<_>>(),
            vec![6]
        );
        // Entries at or below the purge point are ignored.
        g.apply(&rec(Kind::Entry, 7, 4), written(4));
        assert!(!g.groups[&7].entries.contains_key(&4));
        assert_eq!(g.find_hole(), None);
    }

    #[test]
    fn range_keeps_only_its_entries_and_holes_are_found() {
        let mut g = Groups::default();
        for i in 1..=10 {
            g.apply(&rec(Kind::Entry, 1, i), written(1));
        }
        g.apply(&rec(Kind::Range, 1, 4), None); // [4, 7)
        assert_eq!(
            g.groups[&1].entries.keys().copied().collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        g.apply(&rec(Kind::Purge, 1, 1), None);
        assert_eq!(g.find_hole(), Some((1, 2)));
    }

    #[test]
    fn the_view_restates_what_replay_would_rebuild() {
        let mut g = Groups::default();
        let mut view = View::default();
        let mut apply = |r: Rec, segment: u64| {
            let slot = (r.kind == Kind::Entry).then(|| written(segment).unwrap());
            g.apply(&r, slot);
            view.apply(&r);
        };
        for i in 1..=9 {
            apply(rec(Kind::Entry, 1, i), 1);
        }
        apply(rec(Kind::Truncate, 1, 8), 1);
        apply(rec(Kind::Purge, 1, 3), 1);
        apply(rec(Kind::Vote, 1, 0), 1);
        apply(rec(Kind::Entry, 2, 5), 1);
        apply(rec(Kind::Truncate, 2, 0), 1);
        // Replaying only the restated records over stale older entries gives the same index.
        let mut stale = Groups::default();
        for i in 1..=20 {
            stale.apply(&rec(Kind::Entry, 1, i), written(0));
            stale.apply(&rec(Kind::Entry, 2, i), written(0));
        }
        for r in view.restate() {
            stale.apply(&r, None);
        }
        for id in [1, 2] {
            assert_eq!(
                stale.groups[&id].entries.keys().collect::<Vec<_>>(),
                g.groups[&id].entries.keys().collect::<Vec<_>>(),
                "group {id}"
            );
            assert_eq!(stale.groups[&id].vote, g.groups[&id].vote);
            assert_eq!(
                stale.groups[&id].purged.as_ref().map(|p| p.0),
                g.groups[&id].purged.as_ref().map(|p| p.0)
            );
        }
    }

    #[test]
    fn a_pending_entry_lands_only_if_still_live() {
        let mut g = Groups::default();
        let pending = |id| {
            Some(Slot::Pending {
                id,
                payload: Bytes::new(),
            })
        };
        g.apply(&rec(Kind::Entry, 1, 1), pending(1));
        g.apply(&rec(Kind::Entry, 1, 1), pending(2));
        let loc = Loc {
            segment: 9,
            offset: 0,
            len: 0,
            version: 2,
        };
        g.landed(1, 1, 1, loc);
        assert!(matches!(
            g.groups[&1].entries[&1],
            Slot::Pending { id: 2, .. }
        ));
        assert_eq!(g.live.get(&9), None);
        g.landed(1, 1, 2, loc);
        assert!(matches!(g.groups[&1].entries[&1], Slot::Written(_)));
        assert_eq!(g.live[&9], 1);
    }
}
