//! The segmented Raft log, which is also Shoal's write-ahead log.
//!
//! One [`RaftLog`] per Raft group, in a directory of its own. The openraft glue in
//! `shoal-consensus` stores opaque entry bytes at log indexes here, plus a few small
//! durable values (vote, committed log id) through [`RaftLog::save_meta`]. Applied
//! entries end up in `shoal-storage`; once that has flushed them to Parquet, the log is
//! purged below the flushed index.
//!
//! ```text
//!  consensus (openraft LogStore) ── append / read / truncate / purge / meta ──> RaftLog
//!                                                                                 │
//!        caller threads: validate, put records in the tail cache, enqueue ────────┤
//!        writer thread:  write + one fdatasync per batch, then complete ──────────┘
//! ```
//!
//! # Directory layout
//!
//! ```text
//!  <dir>/00000000000000000001.seg   segments, by sequence number (never reused)
//!  <dir>/00000000000000000002.seg   the last one is the active segment
//!  <dir>/PURGED                     purge point (u64), in the meta file format
//!  <dir>/meta.<key>                 values stored with save_meta
//!  <dir>/LOCK                       flock held while the log is open
//! ```
//!
//! # On-disk format (version 1, little-endian)
//!
//! Every segment starts with a 16-byte header: magic `b"SHOALLOG"`, u32 format
//! version (1), u32 reserved (0). Records follow back to back:
//!
//! ```text
//!  [u32 payload_len][u32 crc32(index bytes ++ payload)][u64 index][payload]
//! ```
//!
//! The checksum is CRC-32 (IEEE, `crc32fast`). Meta files are
//! `[b"SHOALMET"][u32 version][u32 len][u32 crc32(value)][value]`. A segment or meta
//! file with a newer version is refused with [`Error::UnsupportedVersion`]. The layouts
//! are defined in one place, the `format` module.
//!
//! # Invariants
//!
//! - The records on disk, across all segments in sequence order, carry one contiguous
//!   run of indexes. Truncation cuts files (never leaves stale records behind) and
//!   deletes later segments newest first, so a crash part way leaves a prefix. An
//!   append that starts a new run (empty log) only happens when no records are on disk.
//! - Readable entries are those above the persisted purge point and at or below the
//!   last appended index; purged records may linger in a partially purged segment but
//!   are never returned.
//! - Only the last segment can hold records that were not fsynced: a segment is
//!   fsynced before the next one is created. So only the last segment can have a torn
//!   tail.
//! - Entries are readable from the moment `append` returns (they sit in the tail
//!   cache); `done` is called only once they are fsynced. The cache never drops an
//!   entry before it is durable.
//!
//! # Group commit
//!
//! Callers never write files. `append` validates, caches and enqueues; a single writer
//! thread takes every request queued at that moment, writes all their records (one
//! `writev` per segment touched), issues one `fdatasync` and then completes all of
//! them. Under concurrency the fsync cost is shared by every append in the batch.
//! Truncate and purge go through the same queue, so they are ordered after every append
//! queued before them.
//!
//! # Recovery
//!
//! [`RaftLog::open`] scans every segment and verifies every checksum. A damaged record
//! (partial, impossible length, checksum mismatch) at the end of the last segment, with
//! no valid record after it, is a write cut short by a crash: the file is cut at the
//! last whole record and a `warn!` names the file, offset and bytes cut (also in
//! [`RaftLog::recovery`]). Damage with a valid record after it, damage in any other
//! segment, or a valid record at an unexpected index is corruption:
//! [`Error::Corrupt`], and the node must stop. One consequence: if a filesystem
//! persisted the pages of one unsynced batch out of order before a crash, the log
//! reports corruption rather than guessing; nothing in that batch was acknowledged, so
//! an operator may cut the file at the reported offset.
//!
//! # Bounds
//!
//! The writer queue holds at most [`LogConfig::max_pending_appends`] requests and
//! [`LogConfig::max_pending_bytes`] payload bytes; `append` blocks while it is full.
//! Records are at most [`LogConfig::max_record_bytes`]; meta values at most
//! [`MAX_META_VALUE_BYTES`]. The tail cache holds [`LogConfig::cache_max_bytes`] of
//! durable entries plus whatever is pending. `read` returns what it is asked for: the
//! caller bounds the range.

mod config;
mod error;
mod format;
mod index;
mod meta;
mod queue;
mod recovery;
mod segment;
mod shared;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle, ThreadId};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

pub use config::{LogConfig, DEFAULT_MAX_PENDING_APPENDS};
pub use error::Error;
pub use format::{FORMAT_VERSION, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use meta::{MAX_META_KEY_LEN, MAX_META_VALUE_BYTES};
pub use recovery::{RecoveryReport, TornTail};
pub use shared::{GroupLog, SharedWal, FRAME_HEAD_LEN};
pub use writer::Done;

use error::IoContext;
use format::RecordHeader;
use index::{LogIndex, Lookup};
use queue::Queue;
use recovery::SegmentMeta;
use writer::{Command, Writer};

/// Upper bound on the bytes one positional read fetches when it coalesces adjacent
/// records; a single larger record is read on its own.
const READ_COALESCE_MAX_BYTES: u64 = 8 * 1024 * 1024;
const LOCK_FILE: &str = "LOCK";

/// A point-in-time view of the log's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStats {
    pub segments: usize,
    /// Bytes of all segment files, up to their last whole record.
    pub disk_bytes: u64,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// Append requests completed durably since open.
    pub appends: u64,
    /// Records in those requests.
    pub records_appended: u64,
    /// fsync/fdatasync calls since open, on segments, meta files and the directory.
    pub fsyncs: u64,
    pub cached_bytes: u64,
    pub cached_entries: u64,
    /// Requests and payload bytes waiting for the writer thread.
    pub pending_appends: usize,
    pub pending_bytes: u64,
}

/// Told by the writer thread what each group commit cost, for the node's metrics. Called on
/// the writer thread: keep it to a few atomic operations.
pub trait LogObserver: Send + Sync {
    /// One batch of appends (every request the writer took at once) was written: `bytes`
    /// of records with their headers.
    fn batch_written(&self, bytes: u64);
    /// One fdatasync of the active segment took `took`.
    fn fsynced(&self, took: std::time::Duration);
}

/// State shared by callers and the writer thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub cfg: LogConfig,
    pub state: Mutex<State>,
    /// Held shared by readers across their positional reads and exclusively by
    /// truncation, so no read sees a file being cut. Lock order: `files`, then `state`.
    pub files: RwLock<()>,
    pub queue: Queue<Command>,
    /// Serializes enqueueing so queue order is index order, and keeps appends out while
    /// a truncate or purge is in flight. Lock order: `order`, queue, `state`.
    order: Mutex<()>,
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
    pub records: AtomicU64,
    /// The directory's lock and its meta values.
    meta: meta::MetaDir,
    /// Set once ([`RaftLog::observe`]).
    pub observer: std::sync::OnceLock<Arc<dyn LogObserver>>,
}

pub(crate) struct State {
    pub index: LogIndex,
    pub segments: BTreeMap<u64, SegmentMeta>,
    pub purged: Option<u64>,
    /// Set once a write or fsync failed; every later operation is refused.
    pub failed: Option<String>,
}

impl State {
    fn check_usable(&self) -> Result<(), Error> {
        match &self.failed {
            Some(reason) => Err(Error::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A segmented, checksummed Raft log with group commit. `Send + Sync`; share it with
/// `Arc<RaftLog>`. Dropping it flushes queued appends and stops the writer thread.
pub struct RaftLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    writer_id: ThreadId,
    report: RecoveryReport,
}

impl RaftLog {
    /// Opens (creating if absent) the log in `dir`: scans and verifies every segment,
    /// cuts a torn tail, refuses corruption and newer formats. See the crate docs.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<RaftLog, Error> {
        cfg.validate()?;
        let meta = meta::MetaDir::open(dir, cfg.fsync)?;
        let purged = meta::read_purge_point(dir)?;
        let recovered = recovery::recover(dir, &cfg, purged)?;
        if recovered.report.records_found > 0 || recovered.report.segments_scanned > 0 {
            tracing::info!(
                dir = %dir.display(),
                segments = recovered.report.segments_scanned,
                records = recovered.report.records_found,
                first = ?recovered.index.first(),
                last = ?recovered.index.last(),
                "raft log opened"
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            queue: Queue::new(cfg.max_pending_appends, cfg.max_pending_bytes),
            cfg,
            state: Mutex::new(State {
                index: recovered.index,
                segments: recovered.segments,
                purged,
                failed: None,
            }),
            files: RwLock::new(()),
            order: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            records: AtomicU64::new(0),
            meta,
            observer: std::sync::OnceLock::new(),
        });
        let writer = Writer::new(shared.clone(), recovered.next_seq, recovered.disk_last);
        let handle = thread::Builder::new()
            .name("shoal-raftlog-writer".to_string())
            .spawn(move || writer.run())
            .ctx(|| "spawn the raft log writer thread".to_string())?;
        Ok(RaftLog {
            shared,
            writer_id: handle.thread().id(),
            writer: Some(handle),
            report: recovered.report,
        })
    }

    /// Appends records and returns once they are written and fsynced (shared with every
    /// other append queued at the same time). Indexes must be contiguous and follow
    /// `last_index()`; an empty log (fresh, fully truncated or fully purged) starts at
    /// any index above the purge point. An empty `records` waits for earlier appends.
    pub fn append_blocking(&self, records: Vec<(u64, Bytes)>) -> Result<(), Error> {
        self.assert_not_writer("append_blocking");
        let (done, outcome) = waiter();
        self.append(records, done)?;
        outcome.wait()
    }

    /// Enqueues records for the writer thread and returns; `done` is called from the
    /// writer thread once they are fsynced, or with the error. The records are readable
    /// through [`read`](Self::read) as soon as this returns. Blocks only while the writer
    /// queue is full. If this returns an error, `done` is never called.
    ///
    /// `done` runs on the writer thread: it must be quick and must not call blocking
    /// methods of this log.
    pub fn append(&self, records: Vec<(u64, Bytes)>, done: Done) -> Result<(), Error> {
        let bytes = check_records(&self.shared.cfg, &records)?;
        let _order = self.shared.order.lock();
        self.shared.queue.push_with(bytes, || {
            let mut state = self.shared.state.lock();
            state.check_usable()?;
            if let Some(&(first, _)) = records.first() {
                check_follows(state.index.last(), state.purged, first)?;
                for (idx, payload) in &records {
                    state.index.push_pending(*idx, payload.clone());
                }
            }
            Ok(Command::Append { records, done })
        })
    }

    /// Waits until every append queued so far is durable.
    pub fn flush(&self) -> Result<(), Error> {
        self.append_blocking(Vec::new())
    }

    /// Entries with index in `[start, end)`, in order. Purged indexes and indexes past
    /// the end are simply absent. Recent entries come from memory; older ones are read
    /// from disk and their checksums verified.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>, Error> {
        let _files = self.shared.files.read();
        let mut out = Vec::new();
        let mut runs: Vec<DiskRun> = Vec::new();
        {
            let state = self.shared.state.lock();
            state.check_usable()?;
            let (Some(first), Some(last)) = (state.index.first(), state.index.last()) else {
                return Ok(out);
            };
            let lo = start.max(first);
            let hi = end.min(last.saturating_add(1));
            for idx in lo..hi {
                match state.index.lookup(idx) {
                    Some(Lookup::Cached(bytes)) => out.push((idx, bytes)),
                    Some(Lookup::OnDisk(loc)) => {
                        add_to_runs(&mut runs, &state, &self.shared.dir, out.len(), idx, loc)?;
                        out.push((idx, Bytes::new()));
                    }
                    None => {
                        tracing::error!(
                            index = idx,
                            "raft log: entry with neither bytes nor location"
                        );
                    }
                }
            }
        }
        for run in runs {
            run.read_into(&mut out)?;
        }
        Ok(out)
    }

    /// Removes every entry with index above `last_kept` (`None`: all entries). Ordered
    /// after every append queued before it, and durable on return.
    pub fn truncate_after(&self, last_kept: Option<u64>) -> Result<(), Error> {
        self.control(|done| Command::Truncate { last_kept, done })
    }

    /// Marks every entry at or below `upto` as no longer needed: they stop being
    /// readable at once, the purge point is persisted, and segment files holding nothing
    /// above `upto` are deleted. Purge points only move forward.
    pub fn purge_upto(&self, upto: u64) -> Result<(), Error> {
        self.control(|done| Command::Purge { upto, done })
    }

    /// Like [`purge_upto`](Self::purge_upto), but returns once the purge is queued: the
    /// writer thread does it after every append queued before it, and logs a failure
    /// (which also fails the log, as any write failure does). For a log shared by many
    /// callers, none of whom should wait for another's purge.
    pub fn purge_upto_in_background(&self, upto: u64) -> Result<(), Error> {
        let _order = self.shared.order.lock();
        let dir = self.shared.dir.clone();
        let done: Done = Box::new(move |result| {
            if let Err(e) = result {
                tracing::error!(dir = %dir.display(), upto, error = %e, "raft log purge failed");
            }
        });
        self.shared
            .queue
            .push_with(0, || Ok(Command::Purge { upto, done }))
    }

    /// Lowest readable index, `None` if the log is empty.
    pub fn first_index(&self) -> Option<u64> {
        self.shared.state.lock().index.first()
    }

    /// Highest appended index (readable, possibly not yet durable), `None` if empty.
    pub fn last_index(&self) -> Option<u64> {
        self.shared.state.lock().index.last()
    }

    /// The persisted purge point, if any.
    pub fn purged_upto(&self) -> Option<u64> {
        self.shared.state.lock().purged
    }

    /// Durably stores a small value under `key` (ASCII letters, digits, `_`, `-`; at
    /// most [`MAX_META_KEY_LEN`] bytes). Replaces atomically: temp file, fsync, rename,
    /// fsync of the directory.
    pub fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.shared.meta.save_user(key, value)
    }

    /// The value last stored under `key`, `None` if there is none.
    pub fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.shared.meta.load_user(key)
    }

    /// Reports every group commit to `observer` from now on (the first observer set stays).
    pub fn observe(&self, observer: Arc<dyn LogObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    pub fn stats(&self) -> LogStats {
        let (pending_appends, pending_bytes) = self.shared.queue.depth();
        let state = self.shared.state.lock();
        LogStats {
            segments: state.segments.len(),
            disk_bytes: state.segments.values().map(|s| s.len).sum(),
            first_index: state.index.first(),
            last_index: state.index.last(),
            appends: self.shared.appends.load(Ordering::Relaxed),
            records_appended: self.shared.records.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed) + self.shared.meta.fsyncs(),
            cached_bytes: state.index.cached_bytes(),
            cached_entries: state.index.cached_entries(),
            pending_appends,
            pending_bytes,
        }
    }

    /// What open found and repaired (torn tail cut, interrupted purge finished).
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.shared.cfg
    }

    /// Queues a truncate or purge behind every earlier append and waits for it. Holds
    /// the order lock throughout, so no append is validated against the state it changes
    /// before it has changed it.
    fn control(&self, command: impl FnOnce(Done) -> Command) -> Result<(), Error> {
        self.assert_not_writer("truncate_after/purge_upto");
        let _order = self.shared.order.lock();
        let (done, outcome) = waiter();
        self.shared.queue.push_with(0, || Ok(command(done)))?;
        outcome.wait()
    }

    /// A blocking call from a completion callback would wait for the writer thread
    /// that is running it: a certain deadlock. Fail loudly instead.
    fn assert_not_writer(&self, method: &str) {
        assert!(
            thread::current().id() != self.writer_id,
            "RaftLog::{method} called from a completion callback on the writer thread; \
             this would deadlock"
        );
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        self.shared.queue.close();
        let Some(handle) = self.writer.take() else {
            return;
        };
        if thread::current().id() == self.writer_id {
            // Dropped from a completion callback: the writer drains the queue and exits
            // on its own once this callback returns.
            return;
        }
        if handle.join().is_err() {
            tracing::error!(dir = %self.shared.dir.display(), "raft log writer thread panicked");
        }
    }
}

/// The outcome of a queued request, for a caller that waits for it.
pub(crate) struct Outcome(mpsc::Receiver<Result<(), Error>>);

impl Outcome {
    pub fn wait(self) -> Result<(), Error> {
        self.0.recv().unwrap_or(Err(Error::Closed))
    }
}

/// A completion callback and the outcome it delivers.
pub(crate) fn waiter() -> (Done, Outcome) {
    let (tx, rx) = mpsc::sync_channel(1);
    let done: Done = Box::new(move |result| {
        // The receiver only goes away if the caller stopped waiting.
        let _ = tx.send(result);
    });
    (done, Outcome(rx))
}

/// Sizes and order of a batch, checked before touching shared state. Returns the bytes the
/// batch takes in the writer queue.
pub(crate) fn check_records(cfg: &LogConfig, records: &[(u64, Bytes)]) -> Result<u64, Error> {
    let max = cfg.max_record_bytes;
    let mut bytes = 0u64;
    for (i, (idx, payload)) in records.iter().enumerate() {
        let len = payload.len() as u64;
        if len > max {
            return Err(Error::RecordTooLarge { bytes: len, max });
        }
        if let Some((prev, _)) = i.checked_sub(1).and_then(|p| records.get(p)) {
            if prev.checked_add(1) != Some(*idx) {
                return Err(Error::NonContiguous {
                    expected: prev.saturating_add(1),
                    got: *idx,
                });
            }
        }
        bytes += RECORD_HEADER_LEN + len;
    }
    Ok(bytes)
}

/// The first index of an append must follow the last entry, or, in an empty log, lie
/// above the purge point.
pub(crate) fn check_follows(
    last: Option<u64>,
    purged: Option<u64>,
    first: u64,
) -> Result<(), Error> {
    match (last, purged) {
        (Some(last), _) if last.checked_add(1) != Some(first) => Err(Error::NonContiguous {
            expected: last.saturating_add(1),
            got: first,
        }),
        (None, Some(purged)) if first <= purged => Err(Error::NonContiguous {
            expected: purged.saturating_add(1),
            got: first,
        }),
        _ => Ok(()),
    }
}

pub(crate) fn lock_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("open {}", path.display()))?;
    let locked = fs4::fs_std::FileExt::try_lock_exclusive(&file)
        .ctx(|| format!("lock {}", path.display()))?;
    if !locked {
        return Err(Error::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(file)
}

/// Adjacent records of one segment, fetched with a single positional read.
struct DiskRun {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
    /// (position in the output, index, offset within the run, payload length)
    entries: Vec<(usize, u64, usize, u32)>,
}

fn add_to_runs(
    runs: &mut Vec<DiskRun>,
    state: &State,
    dir: &Path,
    out_pos: usize,
    idx: u64,
    loc: index::Loc,
) -> Result<(), Error> {
    let record_len = RECORD_HEADER_LEN + u64::from(loc.len);
    if let Some(run) = runs.last_mut() {
        let seg = state.segments.get(&loc.seq);
        let same_file = seg.is_some_and(|s| Arc::ptr_eq(&s.file, &run.file));
        if same_file
            && run.offset + run.len == loc.offset
            && run.len + record_len <= READ_COALESCE_MAX_BYTES
        {
            run.entries.push((out_pos, idx, run.len as usize, loc.len));
            run.len += record_len;
            return Ok(());
        }
    }
    let Some(seg) = state.segments.get(&loc.seq) else {
        return Err(Error::Corrupt {
            file: dir.join(segment::segment_file_name(loc.seq)),
            offset: loc.offset,
            reason: format!("internal invariant broken: index {idx} points at a missing segment"),
        });
    };
    runs.push(DiskRun {
        file: seg.file.clone(),
        path: seg.path.clone(),
        offset: loc.offset,
        len: record_len,
        entries: vec![(out_pos, idx, 0, loc.len)],
    });
    Ok(())
}

impl DiskRun {
    /// Reads the run and fills in its entries, verifying each record's frame.
    fn read_into(self, out: &mut [(u64, Bytes)]) -> Result<(), Error> {
        let mut buf = vec![0u8; self.len as usize];
        segment::read_exact_at(&self.file, &mut buf, self.offset)
            .ctx(|| format!("read {} at offset {}", self.path.display(), self.offset))?;
        let buf = Bytes::from(buf);
        for (out_pos, idx, at, len) in self.entries {
            let corrupt = |reason: String| Error::Corrupt {
                file: self.path.clone(),
                offset: self.offset + at as u64,
                reason,
            };
            let mut head = [0u8; RECORD_HEADER_LEN as usize];
            head.copy_from_slice(&buf[at..at + RECORD_HEADER_LEN as usize]);
            let header = RecordHeader::decode(&head);
            let payload_at = at + RECORD_HEADER_LEN as usize;
            let payload = buf.slice(payload_at..payload_at + len as usize);
            if header.index != idx || header.payload_len != len {
                return Err(corrupt(format!(
                    "record frame says index {} / {} bytes, index expected {idx} / {len} bytes",
                    header.index, header.payload_len
                )));
            }
            if !header.checks(&payload) {
                return Err(corrupt(format!("checksum mismatch reading index {idx}")));
            }
            if let Some(slot) = out.get_mut(out_pos) {
                slot.1 = payload;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_log_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RaftLog>();
    }
}
