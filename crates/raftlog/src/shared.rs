//! One write-ahead log per node, shared by every Raft group on it.
//!
//! Each group used to own a [`RaftLog`] with its own writer thread and its own fdatasync per
//! batch, so a line-protocol request that touched 16 vshards cost 17 fsyncs (plus the write
//! intent's). Here every group's records go into one [`RaftLog`] (the *WAL*): one writer
//! thread, one `fdatasync` per batch across all groups, as the design asks.
//!
//! ```text
//!  GroupLog(g0) ─┐                                   ┌ frames of every group, in order
//!  GroupLog(g1) ─┼─▶ SharedWal: allocate WAL indexes ┤ one writev + ONE fdatasync per batch
//!  GroupLog(gN) ─┘   (one lock: queue order = index) └ done callbacks of every group
//! ```
//!
//! # Frames
//!
//! A WAL record's payload is a frame, `[u8 kind][u64 group][u64 index][body]`:
//!
//! - `ENTRY` (1): the group's entry `index`; the body is the entry.
//! - `TRUNCATE` (2): the group dropped every entry above `index`.
//! - `RESET` (3): the group dropped every entry (a truncation to nothing, or a fresh group
//!   directory whose id the WAL has seen before).
//!
//! Purges are not frames: a group persists its purge point in its own directory first (the
//! `PURGED` meta file, as a standalone log does), then forgets its entries below it. The WAL
//! itself is purged as a prefix, up to just below the oldest WAL record any group still
//! needs. Because only a prefix ever goes, a truncation frame outlives every entry it
//! cancelled, and replaying the frames in order always rebuilds each group's log.
//!
//! # A group's directory
//!
//! Each group keeps a directory for its small durable values (vote, purge point, the
//! caller's meta keys), locked while open, plus the marker file `IN_WAL`. A directory
//! without the marker is either new (anything the WAL holds under that group id is from an
//! earlier incarnation and is reset) or a per-group log of an older Shoal (its `.seg` files
//! are copied into the WAL, the marker written, then the files deleted; a crash part way
//! repeats the copy after a `RESET`).
//!
//! # What pins the WAL
//!
//! A group that never purges keeps every WAL segment from its oldest live entry on. Vshard
//! groups purge after each flush; [`SharedWal::pinning_group`] names the group holding the
//! oldest segment so the caller can ask it to flush or snapshot.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::error::{Error, IoContext};
use crate::meta::{self, MetaDir, PURGED_FILE};
use crate::segment::{list_segments, remove_segment, segment_file_name, sync_dir};
use crate::{
    check_follows, check_records, waiter, Done, LogConfig, LogStats, RaftLog, RecoveryReport,
};

/// Bytes of a frame header: kind, group, index.
pub const FRAME_HEAD_LEN: usize = 17;
const FRAME_ENTRY: u8 = 1;
const FRAME_TRUNCATE: u8 = 2;
const FRAME_RESET: u8 = 3;
/// Marks a group directory whose entries live in the WAL.
const IN_WAL_FILE: &str = "IN_WAL";
/// WAL records one recovery read fetches at a time.
const RECOVERY_READ_RECORDS: u64 = 1024;
/// Bytes of legacy entries copied into the WAL per append while upgrading a group.
const IMPORT_CHUNK_BYTES: u64 = 32 * 1024 * 1024;

/// The node's write-ahead log; cheap to clone.
#[derive(Clone)]
pub struct SharedWal {
    inner: Arc<Inner>,
}

struct Inner {
    log: RaftLog,
    state: Mutex<WalState>,
}

struct WalState {
    /// WAL index the next frame gets.
    next: u64,
    groups: HashMap<u64, Group>,
}

/// A frame as recovery found it.
#[derive(Clone, Copy)]
struct Frame {
    wal: u64,
    kind: u8,
    index: u64,
}

enum Group {
    /// Frames found at open for a group not opened since; pinned from the first one on.
    Recovered(Vec<Frame>),
    Open(GroupState),
}

#[derive(Default)]
struct GroupState {
    /// Group index of `wal[0]`.
    first: u64,
    /// WAL index of each entry, from `first` on.
    wal: VecDeque<u64>,
    purged: Option<u64>,
}

impl GroupState {
    fn last(&self) -> Option<u64> {
        (!self.wal.is_empty()).then(|| self.first + self.wal.len() as u64 - 1)
    }

    fn first_index(&self) -> Option<u64> {
        (!self.wal.is_empty()).then_some(self.first)
    }

    fn truncate_after(&mut self, last_kept: Option<u64>) {
        match last_kept {
            Some(k) if k >= self.first => {
                let keep = (k - self.first + 1).min(self.wal.len() as u64) as usize;
                self.wal.truncate(keep);
            }
            _ => self.wal.clear(),
        }
    }

    fn purge_upto(&mut self, upto: u64) {
        while !self.wal.is_empty() && self.first <= upto {
            self.wal.pop_front();
            self.first += 1;
        }
        if self.wal.is_empty() {
            self.first = 0;
        }
    }

    fn push(&mut self, index: u64, wal: u64) {
        if self.wal.is_empty() {
            self.first = index;
        }
        self.wal.push_back(wal);
    }
}

impl Group {
    /// The oldest WAL record this group still needs.
    fn pin(&self) -> Option<u64> {
        match self {
            Group::Recovered(frames) => frames.first().map(|f| f.wal),
            Group::Open(g) => g.wal.front().copied(),
        }
    }
}

fn put_head(head: &mut [u8], kind: u8, group: u64, index: u64) {
    head[0] = kind;
    head[1..9].copy_from_slice(&group.to_le_bytes());
    head[9..17].copy_from_slice(&index.to_le_bytes());
}

fn frame(kind: u8, group: u64, index: u64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::zeroed(FRAME_HEAD_LEN);
    put_head(&mut b, kind, group, index);
    b.extend_from_slice(body);
    b.freeze()
}

fn parse_frame(rec: &[u8]) -> Option<(u8, u64, u64)> {
    let head = rec.get(..FRAME_HEAD_LEN)?;
    let kind = head[0];
    let group = u64::from_le_bytes(head[1..9].try_into().ok()?);
    let index = u64::from_le_bytes(head[9..17].try_into().ok()?);
    matches!(kind, FRAME_ENTRY | FRAME_TRUNCATE | FRAME_RESET).then_some((kind, group, index))
}

impl SharedWal {
    /// Opens (creating if absent) the WAL in `dir` and reads every frame in it. Each group's
    /// log is rebuilt when the group is opened with [`SharedWal::group`].
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<SharedWal, Error> {
        let log = RaftLog::open(dir, cfg)?;
        let mut groups: HashMap<u64, Vec<Frame>> = HashMap::new();
        if let (Some(first), Some(last)) = (log.first_index(), log.last_index()) {
            let mut at = first;
            while at <= last {
                let end = last.min(at + RECOVERY_READ_RECORDS - 1) + 1;
                for (wal, rec) in log.read(at, end)? {
                    let Some((kind, group, index)) = parse_frame(&rec) else {
                        return Err(Error::Corrupt {
                            file: dir.to_path_buf(),
                            offset: 0,
                            reason: format!("WAL record {wal} is not a group frame"),
                        });
                    };
                    groups
                        .entry(group)
                        .or_default()
                        .push(Frame { wal, kind, index });
                }
                at = end;
            }
        }
        let next = log.last_index().or(log.purged_upto()).map_or(1, |i| i + 1);
        if !groups.is_empty() {
            tracing::info!(dir = %dir.display(), groups = groups.len(), "WAL opened");
        }
        Ok(SharedWal {
            inner: Arc::new(Inner {
                log,
                state: Mutex::new(WalState {
                    next,
                    groups: groups
                        .into_iter()
                        .map(|(g, frames)| (g, Group::Recovered(frames)))
                        .collect(),
                }),
            }),
        })
    }

    /// Opens group `id`'s log, keeping its small values in `dir`. Copies an older Shoal's
    /// per-group log found in `dir` into the WAL first. One handle per group at a time.
    pub fn group(&self, id: u64, dir: &Path) -> Result<GroupLog, Error> {
        std::fs::create_dir_all(dir).ctx(|| format!("create log directory {}", dir.display()))?;
        let legacy = !list_segments(dir)?.is_empty();
        let in_wal = dir.join(IN_WAL_FILE).exists();
        let imported = if legacy && !in_wal {
            Some(read_legacy(dir, self.inner.log_config())?)
        } else {
            None
        };
        let meta = MetaDir::open(dir, self.inner.log_config().fsync)?;
        let purged = meta::read_purge_point(dir)?;
        let handle = GroupLog {
            wal: self.inner.clone(),
            id,
            meta,
        };
        if !in_wal {
            // New directory, or one being upgraded: whatever the WAL holds for this id is
            // from an earlier incarnation.
            {
                let mut st = self.inner.state.lock();
                if matches!(st.groups.get(&id), Some(Group::Open(_))) {
                    return Err(Error::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                st.groups.insert(
                    id,
                    Group::Open(GroupState {
                        purged,
                        ..GroupState::default()
                    }),
                );
            }
            handle.truncate_after(None)?;
            if let Some(entries) = imported {
                handle.import(entries)?;
            }
            handle.meta.write(IN_WAL_FILE, b"")?;
        } else {
            let mut st = self.inner.state.lock();
            let state = match st.groups.remove(&id) {
                Some(Group::Open(g)) => {
                    st.groups.insert(id, Group::Open(g));
                    return Err(Error::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                Some(Group::Recovered(frames)) => {
                    replay(&frames, purged).map_err(|reason| Error::Corrupt {
                        file: self.inner.log.dir().to_path_buf(),
                        offset: 0,
                        reason: format!("group {id}: {reason}"),
                    })?
                }
                None => GroupState {
                    purged,
                    ..GroupState::default()
                },
            };
            st.groups.insert(id, Group::Open(state));
        }
        if legacy {
            // Imported (now or before a crash): the WAL holds these entries.
            for seq in list_segments(dir)? {
                remove_segment(&dir.join(segment_file_name(seq)))?;
            }
            sync_dir(dir)?;
            tracing::info!(group = id, dir = %dir.display(), "per-group raft log moved into the node's WAL");
        }
        Ok(handle)
    }

    /// The group whose oldest live entry holds back the WAL's oldest segment, once the WAL
    /// takes more than `max_bytes` on disk; asking it to snapshot (or flush) lets the WAL
    /// shrink.
    pub fn pinning_group(&self, max_bytes: u64) -> Option<u64> {
        let stats = self.inner.log.stats();
        if stats.segments <= 1 || stats.disk_bytes <= max_bytes {
            return None;
        }
        let st = self.inner.state.lock();
        st.groups
            .iter()
            .filter_map(|(id, g)| g.pin().map(|w| (w, *id)))
            .min()
            .map(|(_, id)| id)
    }

    /// Forgets the records of every group found at open that was not opened since: they
    /// stop pinning the WAL. A group opened later under such an id gets a fresh directory,
    /// and a fresh directory starts with a reset, so nothing forgotten comes back.
    pub fn forget_recovered(&self) {
        let mut st = self.inner.state.lock();
        st.groups.retain(|_, g| matches!(g, Group::Open(_)));
        drop(st);
        let _ = self.inner.purge_unneeded();
    }

    /// Forgets the records of group `id`, closed for good (its `GroupLog` dropped): they
    /// stop pinning the WAL. Does nothing to a group that is open.
    pub fn forget_group(&self, id: u64) {
        let mut st = self.inner.state.lock();
        if matches!(st.groups.get(&id), Some(Group::Recovered(_))) {
            st.groups.remove(&id);
        }
        drop(st);
        let _ = self.inner.purge_unneeded();
    }

    /// Counters of the WAL itself (all groups).
    pub fn stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    /// Reports every group commit to `observer` from now on (see [`RaftLog::observe`]).
    pub fn observe(&self, observer: Arc<dyn crate::LogObserver>) {
        self.inner.log.observe(observer);
    }

    pub fn recovery(&self) -> &RecoveryReport {
        self.inner.log.recovery()
    }

    pub fn dir(&self) -> &Path {
        self.inner.log.dir()
    }
}

impl Inner {
    fn log_config(&self) -> &LogConfig {
        self.log.config()
    }

    /// Purges the WAL below the oldest record any group needs, without waiting for it.
    /// Purging only deletes whole segments, so this does nothing while there is one.
    fn purge_unneeded(&self) -> Result<(), Error> {
        if self.log.stats().segments <= 1 {
            return Ok(());
        }
        let upto = {
            let st = self.state.lock();
            let oldest = st.groups.values().filter_map(Group::pin).min();
            oldest.unwrap_or(st.next).saturating_sub(1)
        };
        if upto > self.log.purged_upto().unwrap_or(0) {
            // Waiting would hold up every group's appends behind the purge's own fsyncs.
            self.log.purge_upto_in_background(upto)?;
        }
        Ok(())
    }
}

/// Rebuilds a group's log from its frames, in WAL order.
fn replay(frames: &[Frame], purged: Option<u64>) -> Result<GroupState, String> {
    let mut g = GroupState {
        purged,
        ..GroupState::default()
    };
    for f in frames {
        match f.kind {
            FRAME_ENTRY => {
                if purged.is_some_and(|p| f.index <= p) {
                    continue;
                }
                match g.last() {
                    Some(last) if last + 1 != f.index => {
                        return Err(format!(
                            "WAL record {} holds index {} right after index {last}",
                            f.wal, f.index
                        ))
                    }
                    _ => g.push(f.index, f.wal),
                }
            }
            FRAME_TRUNCATE => g.truncate_after(Some(f.index)),
            _ => g.truncate_after(None),
        }
    }
    Ok(g)
}

/// Every entry of an older Shoal's per-group log in `dir`.
fn read_legacy(dir: &Path, cfg: &LogConfig) -> Result<Vec<(u64, Bytes)>, Error> {
    let log = RaftLog::open(dir, cfg.clone())?;
    match (log.first_index(), log.last_index()) {
        (Some(first), Some(last)) => log.read(first, last + 1),
        _ => Ok(vec![]),
    }
}

/// One group's log inside the node's WAL, with the API of a standalone [`RaftLog`].
pub struct GroupLog {
    wal: Arc<Inner>,
    id: u64,
    meta: MetaDir,
}

impl GroupLog {
    /// Appends records and returns once they are durable. See [`RaftLog::append_blocking`].
    pub fn append_blocking(&self, records: Vec<(u64, Bytes)>) -> Result<(), Error> {
        let (done, outcome) = waiter();
        self.append(records, done)?;
        outcome.wait()
    }

    /// Enqueues records; `done` runs on the WAL's writer thread once they (and everything
    /// queued before them, of every group) are fsynced. Readable on return. See
    /// [`RaftLog::append`].
    pub fn append(&self, records: Vec<(u64, Bytes)>, done: Done) -> Result<(), Error> {
        check_records(self.wal.log_config(), &records)?;
        let frames = records
            .iter()
            .map(|(index, body)| (*index, frame(FRAME_ENTRY, self.id, *index, body)))
            .collect();
        self.append_frames(frames, done)
    }

    /// [`GroupLog::append`] for records whose first [`FRAME_HEAD_LEN`] bytes are left free
    /// for the frame header, which is written there: the body is not copied. Reads return
    /// the record without those bytes.
    pub fn append_framed(&self, records: Vec<(u64, BytesMut)>, done: Done) -> Result<(), Error> {
        let frames = records
            .into_iter()
            .map(|(index, mut rec)| {
                if rec.len() < FRAME_HEAD_LEN {
                    return Err(Error::NoFrameRoom {
                        len: rec.len() as u64,
                        needed: FRAME_HEAD_LEN as u64,
                    });
                }
                put_head(&mut rec[..FRAME_HEAD_LEN], FRAME_ENTRY, self.id, index);
                Ok((index, rec.freeze()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        check_records(self.wal.log_config(), &frames)?;
        self.append_frames(frames, done)
    }

    /// Queues framed entries `(group index, frame)` under the WAL's lock, which fixes their
    /// order in the WAL.
    fn append_frames(&self, frames: Vec<(u64, Bytes)>, done: Done) -> Result<(), Error> {
        let mut st = self.wal.state.lock();
        let next = st.next;
        let g = open_state(&mut st, self.id)?;
        if let Some(&(first, _)) = frames.first() {
            check_follows(g.last(), g.purged, first)?;
        }
        let count = frames.len() as u64;
        let mut indexes = Vec::with_capacity(frames.len());
        let mut records = Vec::with_capacity(frames.len());
        for (k, (index, f)) in frames.into_iter().enumerate() {
            indexes.push(index);
            records.push((next + k as u64, f));
        }
        self.wal.log.append(records, done)?;
        let g = open_state(&mut st, self.id)?;
        for (k, index) in indexes.into_iter().enumerate() {
            g.push(index, next + k as u64);
        }
        st.next = next + count;
        Ok(())
    }

    /// Waits until every append queued so far (by any group) is durable.
    pub fn flush(&self) -> Result<(), Error> {
        self.append_blocking(Vec::new())
    }

    /// Entries with index in `[start, end)`, in order; see [`RaftLog::read`].
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>, Error> {
        // (group index, WAL index) of each wanted entry.
        let wanted: Vec<(u64, u64)> = {
            let mut st = self.wal.state.lock();
            let g = open_state(&mut st, self.id)?;
            let (Some(first), Some(last)) = (g.first_index(), g.last()) else {
                return Ok(vec![]);
            };
            let lo = start.max(first);
            let hi = end.min(last.saturating_add(1));
            (lo..hi).map(|i| (i, g.wal[(i - first) as usize])).collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut k = 0;
        while k < wanted.len() {
            // A run of consecutive WAL records is one read.
            let mut j = k + 1;
            while j < wanted.len() && wanted[j].1 == wanted[j - 1].1 + 1 {
                j += 1;
            }
            let recs = self.wal.log.read(wanted[k].1, wanted[j - 1].1 + 1)?;
            for (wal, rec) in recs {
                let Some(&(index, _)) = wanted[k..j].iter().find(|w| w.1 == wal) else {
                    continue;
                };
                match parse_frame(&rec) {
                    Some((FRAME_ENTRY, group, i)) if group == self.id && i == index => {
                        out.push((index, rec.slice(FRAME_HEAD_LEN..)));
                    }
                    _ => {
                        return Err(Error::Corrupt {
                            file: self.wal.log.dir().to_path_buf(),
                            offset: 0,
                            reason: format!(
                                "WAL record {wal} is not entry {index} of group {}",
                                self.id
                            ),
                        })
                    }
                }
            }
            k = j;
        }
        Ok(out)
    }

    /// Removes every entry above `last_kept` (`None`: all). Durable on return.
    pub fn truncate_after(&self, last_kept: Option<u64>) -> Result<(), Error> {
        let outcome = {
            let mut st = self.wal.state.lock();
            let next = st.next;
            let g = open_state(&mut st, self.id)?;
            if let (Some(k), Some(last)) = (last_kept, g.last()) {
                if last <= k {
                    return Ok(());
                }
            }
            let rec = match last_kept {
                Some(k) => frame(FRAME_TRUNCATE, self.id, k, &[]),
                None => frame(FRAME_RESET, self.id, 0, &[]),
            };
            let (done, outcome) = waiter();
            self.wal.log.append(vec![(next, rec)], done)?;
            open_state(&mut st, self.id)?.truncate_after(last_kept);
            st.next = next + 1;
            outcome
        };
        outcome.wait()
    }

    /// Marks every entry at or below `upto` as no longer needed: they stop being readable,
    /// the purge point is persisted, and WAL segments nobody needs any more are deleted.
    /// Purge points only move forward.
    pub fn purge_upto(&self, upto: u64) -> Result<(), Error> {
        {
            let mut st = self.wal.state.lock();
            let g = open_state(&mut st, self.id)?;
            if g.purged.is_some_and(|p| p >= upto) {
                return Ok(());
            }
        }
        self.meta.write(PURGED_FILE, &upto.to_le_bytes())?;
        {
            let mut st = self.wal.state.lock();
            let g = open_state(&mut st, self.id)?;
            g.purged = Some(g.purged.map_or(upto, |p| p.max(upto)));
            g.purge_upto(upto);
        }
        self.wal.purge_unneeded()
    }

    /// Lowest readable index, `None` if empty.
    pub fn first_index(&self) -> Option<u64> {
        self.with_state(|g| g.first_index())
    }

    /// Highest appended index (readable, possibly not yet durable), `None` if empty.
    pub fn last_index(&self) -> Option<u64> {
        self.with_state(|g| g.last())
    }

    /// The persisted purge point, if any.
    pub fn purged_upto(&self) -> Option<u64> {
        self.with_state(|g| g.purged)
    }

    /// Durably stores a small value in the group's directory; see [`RaftLog::save_meta`].
    pub fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.meta.save_user(key, value)
    }

    pub fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.meta.load_user(key)
    }

    /// The WAL's counters, with this group's first and last index.
    pub fn stats(&self) -> LogStats {
        let mut s = self.wal.log.stats();
        s.first_index = self.first_index();
        s.last_index = self.last_index();
        s.fsyncs += self.meta.fsyncs();
        s
    }

    pub fn recovery(&self) -> &RecoveryReport {
        self.wal.log.recovery()
    }

    /// The group's own directory (meta values).
    pub fn dir(&self) -> &Path {
        self.meta.dir()
    }

    pub fn group_id(&self) -> u64 {
        self.id
    }

    fn with_state<T>(&self, f: impl FnOnce(&GroupState) -> Option<T>) -> Option<T> {
        let mut st = self.wal.state.lock();
        open_state(&mut st, self.id).ok().and_then(|g| f(g))
    }

    /// Copies an older per-group log's entries in, durably, after a reset.
    fn import(&self, entries: Vec<(u64, Bytes)>) -> Result<(), Error> {
        let mut chunk = vec![];
        let mut bytes = 0u64;
        for e in entries {
            bytes += e.1.len() as u64;
            chunk.push(e);
            if bytes >= IMPORT_CHUNK_BYTES {
                self.append_blocking(std::mem::take(&mut chunk))?;
                bytes = 0;
            }
        }
        self.append_blocking(chunk)
    }
}

impl Drop for GroupLog {
    fn drop(&mut self) {
        // The entries stay in the WAL (and keep pinning it) until the group is opened again.
        let mut st = self.wal.state.lock();
        if let Some(Group::Open(g)) = st.groups.remove(&self.id) {
            let frames = g
                .wal
                .iter()
                .enumerate()
                .map(|(k, &wal)| Frame {
                    wal,
                    kind: FRAME_ENTRY,
                    index: g.first + k as u64,
                })
                .collect();
            st.groups.insert(self.id, Group::Recovered(frames));
        }
    }
}

fn open_state(st: &mut WalState, id: u64) -> Result<&mut GroupState, Error> {
    match st.groups.get_mut(&id) {
        Some(Group::Open(g)) => Ok(g),
        _ => Err(Error::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_wal_and_group_logs_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<SharedWal>();
        is::<GroupLog>();
    }
}
