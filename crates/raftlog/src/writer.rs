//! The writer thread: the only code that changes segment files.
//!
//! ```text
//!  append() ──┐                          ┌─> write records of every queued append
//!  append() ──┼─> bounded queue ─> take ─┤   (writev, rolling segments as needed)
//!  truncate ──┘    (in order)      all   ├─> ONE fdatasync for the whole batch
//!                                        ├─> record disk locations in the index
//!                                        └─> complete every callback of the batch
//! ```
//!
//! Truncate and purge requests travel through the same queue, so they are ordered
//! after every append queued before them; the appends before one are written and
//! fsynced as a batch of their own first.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, IoContext};
use crate::format::{RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::index::Loc;
use crate::meta::{write_meta_file, PURGED_FILE};
use crate::recovery::SegmentMeta;
use crate::segment::{
    create_segment, remove_segment, segment_file_name, sync_dir, truncate_segment,
};
use crate::{Shared, State};

/// How often an append that hit a full disk is tried again, and for how long.
pub(crate) const DISK_FULL_RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
pub(crate) const DISK_FULL_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The end of the records on disk at some moment.
struct Mark {
    active: Option<(u64, u64)>,
    disk_last: Option<u64>,
    next_seq: u64,
}

/// Called once with the outcome of a queued request, on the writer thread.
pub type Done = Box<dyn FnOnce(Result<(), Error>) + Send>;

pub(crate) enum Command {
    Append {
        records: Vec<(u64, Bytes)>,
        done: Done,
    },
    Truncate {
        last_kept: Option<u64>,
        done: Done,
    },
    Purge {
        upto: u64,
        done: Done,
    },
}

impl Command {
    fn into_done(self) -> Done {
        match self {
            Command::Append { done, .. }
            | Command::Truncate { done, .. }
            | Command::Purge { done, .. } => done,
        }
    }
}

/// The segment appends go to.
struct Active {
    seq: u64,
    file: Arc<File>,
    len: u64,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Option<Active>,
    next_seq: u64,
    /// Highest index written to a segment, purged or not. Appends must follow it.
    disk_last: Option<u64>,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, next_seq: u64, disk_last: Option<u64>) -> Writer {
        let active = {
            let state = shared.state.lock();
            state.segments.iter().next_back().map(|(&seq, seg)| Active {
                seq,
                file: seg.file.clone(),
                len: seg.len,
            })
        };
        Writer {
            shared,
            active,
            next_seq,
            disk_last,
        }
    }

    /// Serves the queue until it is closed and drained.
    pub fn run(mut self) {
        let _close = CloseOnExit(self.shared.clone());
        while let Some(batch) = self.shared.queue.pop_all() {
            self.process(batch);
        }
    }

    fn process(&mut self, batch: Vec<Command>) {
        let mut appends = Vec::new();
        for command in batch {
            match command {
                Command::Append { records, done } => appends.push((records, done)),
                Command::Truncate { last_kept, done } => {
                    self.flush_appends(std::mem::take(&mut appends));
                    let result = self.guarded(|w| w.truncate(last_kept));
                    complete(done, result);
                }
                Command::Purge { upto, done } => {
                    self.flush_appends(std::mem::take(&mut appends));
                    let result = self.guarded(|w| w.purge(upto));
                    complete(done, result);
                }
            }
        }
        self.flush_appends(appends);
    }

    /// Runs a disk operation unless the log already failed, and fails the log if the
    /// operation does — except for a full disk: every operation leaves the log as it was
    /// when it fails for want of space (appends cut their partial records off again, a
    /// metadata file is replaced by rename only), so the caller may simply try again later.
    fn guarded(&mut self, op: impl FnOnce(&mut Writer) -> Result<(), Error>) -> Result<(), Error> {
        if let Some(reason) = &self.shared.state.lock().failed {
            return Err(Error::Failed {
                reason: reason.clone(),
            });
        }
        op(self).inspect_err(|e| {
            if e.is_storage_full() {
                tracing::warn!(error = %e, "raft log: disk full; the log is unchanged");
                return;
            }
            tracing::error!(error = %e, "raft log write failed; refusing further use");
            self.shared.state.lock().failed = Some(e.to_string());
        })
    }

    fn flush_appends(&mut self, appends: Vec<(Vec<(u64, Bytes)>, Done)>) {
        if appends.is_empty() {
            return;
        }
        let mut placed = Vec::new();
        let result = self.guarded(|w| {
            placed = w.write_batch(&appends)?;
            Ok(())
        });
        if result.is_ok() {
            self.publish(&placed, appends.len() as u64);
        }
        for (_, done) in appends {
            complete(done, result.as_ref().map(|_| ()).map_err(Error::duplicate));
        }
    }

    /// Writes and syncs one batch of appends. A full disk (ENOSPC from a write or from
    /// fdatasync) is waited out: the batch's partial records are cut off again and the
    /// whole batch rewritten every [`DISK_FULL_RETRY_EVERY`] for up to
    /// [`DISK_FULL_RETRY_FOR`]; after that the batch fails with the log unchanged. (Callers
    /// check free space before appending; this covers the append already under way when
    /// the disk filled up.)
    fn write_batch(
        &mut self,
        appends: &[(Vec<(u64, Bytes)>, Done)],
    ) -> Result<Vec<(u64, Loc)>, Error> {
        let mark = self.mark();
        let started = std::time::Instant::now();
        loop {
            let attempt = self
                .write_records(appends.iter().flat_map(|(records, _)| records))
                .and_then(|placed| {
                    // Only flush barriers: everything before them is already durable.
                    if !placed.is_empty() {
                        self.sync_active()?;
                    }
                    Ok(placed)
                });
            match attempt {
                Ok(placed) => {
                    if let Some(o) = self.shared.observer.get() {
                        let bytes = appends
                            .iter()
                            .flat_map(|(records, _)| records)
                            .map(|(_, r)| RECORD_HEADER_LEN + r.len() as u64)
                            .sum();
                        o.batch_written(bytes);
                    }
                    if started.elapsed() > DISK_FULL_RETRY_EVERY {
                        tracing::info!(
                            waited_ms = started.elapsed().as_millis() as u64,
                            "raft log: space returned; the append went through"
                        );
                    }
                    return Ok(placed);
                }
                Err(e) if e.is_storage_full() => {
                    self.rollback(&mark)?;
                    if started.elapsed() >= DISK_FULL_RETRY_FOR {
                        return Err(e);
                    }
                    if started.elapsed() < DISK_FULL_RETRY_EVERY {
                        tracing::warn!(error = %e, "raft log: disk full mid-append; retrying until space returns");
                    }
                    std::thread::sleep(DISK_FULL_RETRY_EVERY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the records on disk end now (see [`Writer::rollback`]).
    fn mark(&self) -> Mark {
        Mark {
            active: self.active.as_ref().map(|a| (a.seq, a.len)),
            disk_last: self.disk_last,
            next_seq: self.next_seq,
        }
    }

    /// Undoes unpublished writes back to `mark`: segments created since are removed, the
    /// active segment is cut back to its length then. Nothing written since the mark was
    /// published, so no reader can be looking at it.
    fn rollback(&mut self, mark: &Mark) -> Result<(), Error> {
        let shared = self.shared.clone();
        let mut state = shared.state.lock();
        let created: Vec<u64> = state
            .segments
            .range(mark.next_seq..)
            .map(|(&s, _)| s)
            .rev()
            .collect();
        for seq in created {
            if let Some(seg) = state.segments.remove(&seq) {
                remove_segment(&seg.path)?;
            }
        }
        self.active = None;
        if let Some((seq, len)) = mark.active {
            let seg = state.segments.get(&seq).ok_or_else(|| Error::Corrupt {
                file: shared.dir.join(segment_file_name(seq)),
                offset: len,
                reason: "internal invariant broken: the active segment is gone".to_string(),
            })?;
            seg.file
                .set_len(len)
                .ctx(|| format!("cut {} back to {len} bytes", seg.path.display()))?;
            self.active = Some(Active {
                seq,
                file: seg.file.clone(),
                len,
            });
        }
        self.disk_last = mark.disk_last;
        self.next_seq = mark.next_seq;
        Ok(())
    }

    /// Writes records to the active segment, rolling to new segments as they fill.
    /// Returns where each record went. Nothing is fsynced here except segments left
    /// behind by a roll.
    fn write_records<'a>(
        &mut self,
        records: impl Iterator<Item = &'a (u64, Bytes)>,
    ) -> Result<Vec<(u64, Loc)>, Error> {
        let records: Vec<&(u64, Bytes)> = records.collect();
        let mut placed = Vec::with_capacity(records.len());
        let max = self.shared.cfg.segment_max_bytes;
        let mut i = 0;
        while i < records.len() {
            self.check_follows(records[i].0)?;
            let active = self.active_segment()?;
            let mut end = i;
            let mut chunk = 0u64;
            while let Some((_, payload)) = records.get(end) {
                let used = active.len + chunk;
                let record = RECORD_HEADER_LEN + payload.len() as u64;
                if used > SEGMENT_HEADER_LEN && used + record > max {
                    break;
                }
                chunk += record;
                end += 1;
            }
            if end == i {
                self.roll()?;
                continue;
            }
            self.write_chunk(&records[i..end], &mut placed)?;
            i = end;
        }
        Ok(placed)
    }

    /// An append must continue the records on disk; enqueue-time checks guarantee it,
    /// so a mismatch is a bug that must not reach the disk.
    fn check_follows(&self, index: u64) -> Result<(), Error> {
        match self.disk_last {
            Some(last) if last.checked_add(1) != Some(index) => Err(Error::Corrupt {
                file: self.shared.dir.clone(),
                offset: 0,
                reason: format!(
                    "internal invariant broken: append of index {index} does not follow \
                     index {last} on disk"
                ),
            }),
            _ => Ok(()),
        }
    }

    fn write_chunk(
        &mut self,
        records: &[&(u64, Bytes)],
        placed: &mut Vec<(u64, Loc)>,
    ) -> Result<(), Error> {
        let Some(active) = self.active.as_mut() else {
            return Err(Error::Closed);
        };
        let headers: Vec<[u8; RECORD_HEADER_LEN as usize]> = records
            .iter()
            .map(|(index, payload)| RecordHeader::for_payload(*index, payload).encode())
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(records.len() * 2);
        for (header, (_, payload)) in headers.iter().zip(records) {
            slices.push(IoSlice::new(header));
            slices.push(IoSlice::new(payload));
        }
        let path = self.shared.dir.join(segment_file_name(active.seq));
        write_all_vectored(&active.file, &mut slices)
            .ctx(|| format!("append {} records to {}", records.len(), path.display()))?;
        for (index, payload) in records {
            let loc = Loc {
                seq: active.seq,
                offset: active.len,
                len: payload.len() as u32,
            };
            placed.push((*index, loc));
            active.len += RECORD_HEADER_LEN + payload.len() as u64;
            self.disk_last = Some(*index);
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), Error> {
        let Some(active) = &self.active else {
            return Ok(());
        };
        if !self.shared.cfg.fsync {
            return Ok(());
        }
        let started = std::time::Instant::now();
        active.file.sync_data().ctx(|| {
            format!(
                "fdatasync {}",
                self.shared
                    .dir
                    .join(segment_file_name(active.seq))
                    .display()
            )
        })?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = self.shared.observer.get() {
            o.fsynced(started.elapsed());
        }
        Ok(())
    }

    /// The segment appends go to, created if there is none (a fresh or fully purged
    /// log).
    fn active_segment(&mut self) -> Result<&Active, Error> {
        if self.active.is_none() {
            self.start_segment()?;
        }
        self.active.as_ref().ok_or(Error::Closed)
    }

    /// Makes the full active segment durable and starts a new one, so only the last
    /// segment can ever hold unsynced (tearable) records.
    fn roll(&mut self) -> Result<(), Error> {
        self.sync_active()?;
        self.start_segment()
    }

    fn start_segment(&mut self) -> Result<(), Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let dir = &self.shared.dir;
        let (file, fsyncs) = create_segment(dir, seq, self.shared.cfg.fsync)?;
        self.shared.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        let file = Arc::new(file);
        self.shared.state.lock().segments.insert(
            seq,
            SegmentMeta {
                path: dir.join(segment_file_name(seq)),
                file: file.clone(),
                len: SEGMENT_HEADER_LEN,
                first: None,
                last: None,
            },
        );
        self.active = Some(Active {
            seq,
            file,
            len: SEGMENT_HEADER_LEN,
        });
        Ok(())
    }

    /// Makes durable records readable from disk and lets the cache drop them.
    fn publish(&self, placed: &[(u64, Loc)], appends: u64) {
        let mut state = self.shared.state.lock();
        let State {
            index, segments, ..
        } = &mut *state;
        for &(idx, loc) in placed {
            if !index.set_loc(idx, loc) {
                // The index only loses entries through truncate and purge, which this
                // thread runs after finishing earlier appends.
                tracing::error!(
                    index = idx,
                    "raft log: written entry missing from the index"
                );
            }
            if let Some(seg) = segments.get_mut(&loc.seq) {
                seg.first.get_or_insert(idx);
                seg.last = Some(idx);
                seg.len = seg
                    .len
                    .max(loc.offset + RECORD_HEADER_LEN + u64::from(loc.len));
            }
        }
        index.evict();
        drop(state);
        self.shared.appends.fetch_add(appends, Ordering::Relaxed);
        self.shared
            .records
            .fetch_add(placed.len() as u64, Ordering::Relaxed);
    }

    /// Removes every entry above `last_kept`, on disk first, then in memory.
    fn truncate(&mut self, last_kept: Option<u64>) -> Result<(), Error> {
        let shared = self.shared.clone();
        // Readers hold this shared while they pread; no read may see a file cut under it.
        let _files = shared.files.write();
        let (first, last) = {
            let state = shared.state.lock();
            (state.index.first(), state.index.last())
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(());
        };
        let keep = match last_kept {
            Some(k) if k >= last => return Ok(()),
            Some(k) if k >= first => Some(k),
            // Nothing readable survives; purged records still on disk go too, so the
            // records on disk stay one contiguous run.
            _ => None,
        };
        match keep {
            Some(k) => self.truncate_to(k),
            None => self.remove_all_segments(),
        }
    }

    fn truncate_to(&mut self, keep: u64) -> Result<(), Error> {
        let shared = self.shared.clone();
        let fsync = shared.cfg.fsync;
        let mut state = shared.state.lock();
        let Some(loc) = state.index.loc(keep) else {
            return Err(Error::Corrupt {
                file: shared.dir.clone(),
                offset: 0,
                reason: format!("internal invariant broken: index {keep} has no disk location"),
            });
        };
        let end = loc.offset + RECORD_HEADER_LEN + u64::from(loc.len);
        // Later segments go first, newest first, so a crash part way leaves a prefix.
        let later: Vec<u64> = state
            .segments
            .range(loc.seq + 1..)
            .map(|(&s, _)| s)
            .rev()
            .collect();
        for seq in &later {
            if let Some(seg) = state.segments.remove(seq) {
                remove_segment(&seg.path)?;
            }
        }
        let Some(seg) = state.segments.get_mut(&loc.seq) else {
            return Err(Error::Corrupt {
                file: shared.dir.join(segment_file_name(loc.seq)),
                offset: loc.offset,
                reason: "internal invariant broken: segment of a live entry is gone".to_string(),
            });
        };
        let fsyncs = truncate_segment(&seg.file, &seg.path, end, fsync)?;
        shared.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        seg.len = end;
        seg.last = Some(keep);
        self.active = Some(Active {
            seq: loc.seq,
            file: seg.file.clone(),
            len: end,
        });
        self.disk_last = Some(keep);
        state.index.truncate_after(Some(keep));
        drop(state);
        if !later.is_empty() && fsync {
            sync_dir(&shared.dir)?;
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn remove_all_segments(&mut self) -> Result<(), Error> {
        let shared = self.shared.clone();
        let mut state = shared.state.lock();
        let seqs: Vec<u64> = state.segments.keys().rev().copied().collect();
        for seq in &seqs {
            if let Some(seg) = state.segments.remove(seq) {
                remove_segment(&seg.path)?;
            }
        }
        state.index.truncate_after(None);
        self.active = None;
        self.disk_last = None;
        drop(state);
        self.sync_dir_counted()
    }

    /// Persists the purge point, forgets purged entries, then deletes segments that
    /// hold nothing above it. The purge point is durable before any file goes, so a
    /// crash in between only leaves files that the next open deletes.
    fn purge(&mut self, upto: u64) -> Result<(), Error> {
        let shared = self.shared.clone();
        if shared.state.lock().purged.is_some_and(|p| p >= upto) {
            return Ok(());
        }
        let fsyncs = write_meta_file(
            &shared.dir,
            PURGED_FILE,
            &upto.to_le_bytes(),
            shared.cfg.fsync,
        )?;
        shared.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        let active_seq = self.active.as_ref().map(|a| a.seq);
        let doomed: Vec<(u64, SegmentMeta)> = {
            let mut state = shared.state.lock();
            state.purged = Some(upto);
            state.index.purge_upto(upto);
            let seqs: Vec<u64> = state
                .segments
                .iter()
                .filter(|(&seq, seg)| match seg.last {
                    Some(last) => last <= upto,
                    None => Some(seq) != active_seq,
                })
                .map(|(&seq, _)| seq)
                .collect();
            seqs.into_iter()
                .filter_map(|seq| Some((seq, state.segments.remove(&seq)?)))
                .collect()
        };
        if self.disk_last.is_some_and(|l| l <= upto) {
            // Every segment with records is in `doomed`: records on disk are contiguous.
            self.disk_last = None;
        }
        if doomed.iter().any(|(seq, _)| Some(*seq) == active_seq) {
            self.active = None;
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // A reader that looked up a doomed file before the lock was released keeps it
        // open; on Unix its data stays readable until the last handle closes.
        for (_, seg) in &doomed {
            remove_segment(&seg.path)?;
        }
        self.sync_dir_counted()
    }

    fn sync_dir_counted(&self) -> Result<(), Error> {
        if !self.shared.cfg.fsync {
            return Ok(());
        }
        sync_dir(&self.shared.dir)?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Calls a completion callback; a panicking callback must not take the writer down
/// with it (every later caller would hang).
fn complete(done: Done, result: Result<(), Error>) {
    if catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
        tracing::error!("raft log: an append/truncate/purge completion callback panicked");
    }
}

/// On writer exit, normal or by panic: refuse new requests and fail queued ones, so no
/// caller waits forever.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        for command in self.0.queue.close_and_drain() {
            complete(command.into_done(), Err(Error::Closed));
        }
    }
}

fn write_all_vectored(mut file: &File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
