//! The in-memory index of readable entries and the tail cache. No I/O.
//!
//! One slot per readable log index, in order, with no gaps:
//!
//! ```text
//!   base        cache_front                      last
//!    |              |                              |
//!   [loc][loc][loc][loc+bytes][loc+bytes][bytes][bytes]
//!    on disk only   on disk and cached     pending: queued for the writer, cache only
//! ```
//!
//! Invariants: indexes are contiguous from `base`; every slot has a disk location, its
//! bytes, or both; pending slots (no location yet) are always a suffix and are never
//! evicted, because the cache is their only copy until the writer has fsynced them.

use std::collections::VecDeque;

use bytes::Bytes;

/// Where a record lives on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Sequence number of the segment file.
    pub seq: u64,
    /// Offset of the record header in the segment file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

#[derive(Debug)]
struct Slot {
    loc: Option<Loc>,
    cached: Option<Bytes>,
}

/// What a reader gets for one index.
pub(crate) enum Lookup {
    Cached(Bytes),
    OnDisk(Loc),
}

#[derive(Debug)]
pub(crate) struct LogIndex {
    base: u64,
    slots: VecDeque<Slot>,
    /// Lowest index that may still be cached; everything below it is disk-only.
    cache_front: u64,
    cached_bytes: u64,
    cached_entries: u64,
    cache_max_bytes: u64,
}

impl LogIndex {
    pub fn new(cache_max_bytes: u64) -> LogIndex {
        LogIndex {
            base: 0,
            slots: VecDeque::new(),
            cache_front: 0,
            cached_bytes: 0,
            cached_entries: 0,
            cache_max_bytes,
        }
    }

    pub fn first(&self) -> Option<u64> {
        (!self.slots.is_empty()).then_some(self.base)
    }

    pub fn last(&self) -> Option<u64> {
        (!self.slots.is_empty()).then(|| self.base + self.slots.len() as u64 - 1)
    }

    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    pub fn cached_entries(&self) -> u64 {
        self.cached_entries
    }

    /// Adds an entry that is queued for the writer. The caller has checked contiguity.
    pub fn push_pending(&mut self, index: u64, bytes: Bytes) {
        self.push(index, None, Some(bytes));
    }

    /// Adds an entry found on disk during recovery, with its bytes if they should be
    /// considered for the cache.
    pub fn push_durable(&mut self, index: u64, loc: Loc, bytes: Option<Bytes>) {
        self.push(index, Some(loc), bytes);
        self.evict();
    }

    fn push(&mut self, index: u64, loc: Option<Loc>, cached: Option<Bytes>) {
        if self.slots.is_empty() {
            self.base = index;
            self.cache_front = index;
        }
        debug_assert_eq!(
            Some(index),
            self.last().map_or(Some(index), |l| l.checked_add(1))
        );
        if let Some(bytes) = &cached {
            self.cached_bytes += bytes.len() as u64;
            self.cached_entries += 1;
        }
        self.slots.push_back(Slot { loc, cached });
    }

    /// Records where the writer put a pending entry. Returns false if the index is not
    /// in the log (a broken invariant: the caller reports it).
    pub fn set_loc(&mut self, index: u64, loc: Loc) -> bool {
        match self.slot_mut(index) {
            Some(slot) => {
                slot.loc = Some(loc);
                true
            }
            None => false,
        }
    }

    pub fn lookup(&self, index: u64) -> Option<Lookup> {
        let slot = self.slot(index)?;
        match (&slot.cached, slot.loc) {
            (Some(bytes), _) => Some(Lookup::Cached(bytes.clone())),
            (None, Some(loc)) => Some(Lookup::OnDisk(loc)),
            (None, None) => None,
        }
    }

    pub fn loc(&self, index: u64) -> Option<Loc> {
        self.slot(index)?.loc
    }

    /// Drops cached bytes of the oldest durable entries until the cache fits its bound.
    pub fn evict(&mut self) {
        while self.cached_bytes > self.cache_max_bytes {
            let Some(pos) = self.position(self.cache_front) else {
                break;
            };
            let slot = &mut self.slots[pos];
            if slot.loc.is_none() {
                // Pending from here on; those must stay.
                break;
            }
            if let Some(bytes) = slot.cached.take() {
                self.cached_bytes -= bytes.len() as u64;
                self.cached_entries -= 1;
            }
            self.cache_front += 1;
        }
    }

    /// Removes every entry above `last_kept` (all of them for `None`).
    pub fn truncate_after(&mut self, last_kept: Option<u64>) {
        let keep = match last_kept {
            None => 0,
            Some(k) if k < self.base => 0,
            Some(k) => usize::try_from(k - self.base + 1).unwrap_or(usize::MAX),
        };
        while self.slots.len() > keep {
            if let Some(slot) = self.slots.pop_back() {
                self.forget(&slot);
            }
        }
        if let Some(last) = self.last() {
            self.cache_front = self.cache_front.min(last + 1);
        }
    }

    /// Removes every entry at or below `upto`.
    pub fn purge_upto(&mut self, upto: u64) {
        while !self.slots.is_empty() && self.base <= upto {
            if let Some(slot) = self.slots.pop_front() {
                self.forget(&slot);
            }
            self.base += 1;
        }
        self.cache_front = self.cache_front.max(self.base);
    }

    fn forget(&mut self, slot: &Slot) {
        if let Some(bytes) = &slot.cached {
            self.cached_bytes -= bytes.len() as u64;
            self.cached_entries -= 1;
        }
    }

    fn position(&self, index: u64) -> Option<usize> {
        let pos = usize::try_from(index.checked_sub(self.base)?).ok()?;
        (pos < self.slots.len()).then_some(pos)
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        self.slots.get(self.position(index)?)
    }

    fn slot_mut(&mut self, index: u64) -> Option<&mut Slot> {
        let pos = self.position(index)?;
        self.slots.get_mut(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(offset: u64) -> Loc {
        Loc {
            seq: 1,
            offset,
            len: 4,
        }
    }

    fn is_cached(index: &LogIndex, i: u64) -> bool {
        matches!(index.lookup(i), Some(Lookup::Cached(_)))
    }

    #[test]
    fn eviction_keeps_pending_and_the_newest_durable_entries() {
        let mut index = LogIndex::new(8);
        for i in 10..14 {
            index.push_pending(i, Bytes::from_static(b"abcd"));
        }
        // All pending: nothing may be evicted although the cache is over its bound.
        index.evict();
        assert_eq!(index.cached_bytes(), 16);
        for i in 10..13 {
            assert!(index.set_loc(i, loc(i)));
        }
        index.evict();
        assert_eq!(index.cached_bytes(), 8);
        assert!(!is_cached(&index, 10));
        assert!(!is_cached(&index, 11));
        assert!(is_cached(&index, 12));
        assert!(is_cached(&index, 13));
        assert!(matches!(index.lookup(10), Some(Lookup::OnDisk(l)) if l == loc(10)));
        assert!(!index.set_loc(99, loc(0)));
    }

    #[test]
    fn truncate_and_purge_adjust_range_and_cache_accounting() {
        let mut index = LogIndex::new(1024);
        for i in 1..=10 {
            index.push_durable(i, loc(i), Some(Bytes::from_static(b"abcd")));
        }
        index.truncate_after(Some(7));
        assert_eq!((index.first(), index.last()), (Some(1), Some(7)));
        assert_eq!(index.cached_bytes(), 28);
        index.purge_upto(3);
        assert_eq!((index.first(), index.last()), (Some(4), Some(7)));
        assert_eq!(index.cached_entries(), 4);
        assert!(index.lookup(3).is_none());
        index.truncate_after(Some(2));
        assert_eq!((index.first(), index.last()), (None, None));
        assert_eq!(index.cached_bytes(), 0);
        // After emptying, the log may start anywhere.
        index.push_pending(100, Bytes::from_static(b"x"));
        assert_eq!((index.first(), index.last()), (Some(100), Some(100)));
    }
}
