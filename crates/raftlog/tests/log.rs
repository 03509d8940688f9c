//! Behaviour of `RaftLog` through its public API and the files it leaves on disk.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use bytes::Bytes;
use shoal_raftlog::{Error, LogConfig, RaftLog, RECORD_HEADER_LEN};

/// Small segments so a few dozen entries span many files, and a tiny cache so reads of
/// older entries go to disk.
fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 300,
        cache_max_bytes: 100,
        fsync: false,
        ..LogConfig::default()
    }
}

/// Distinct, variable-length content per index (and per version, for rewrites).
fn payload(index: u64, version: u32) -> Bytes {
    let len = 5 + (index % 7) as usize * 9;
    let text = format!("v{version}-entry-{index}-").repeat(len / 10 + 1);
    Bytes::from(text.into_bytes())
}

fn records(range: std::ops::RangeInclusive<u64>, version: u32) -> Vec<(u64, Bytes)> {
    range.map(|i| (i, payload(i, version))).collect()
}

/// Appends `range` in batches of 1, 2, 3, ... records.
fn append_range(log: &RaftLog, range: std::ops::RangeInclusive<u64>, version: u32) {
    let all = records(range, version);
    let mut rest = &all[..];
    let mut batch = 1;
    while !rest.is_empty() {
        let n = batch.min(rest.len());
        log.append_blocking(rest[..n].to_vec()).unwrap();
        rest = &rest[n..];
        batch += 1;
    }
}

fn assert_reads(log: &RaftLog, range: std::ops::RangeInclusive<u64>, version: u32) {
    let got = log.read(*range.start(), *range.end() + 1).unwrap();
    assert_eq!(got, records(range, version));
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("at least one segment")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn record_len(index: u64) -> u64 {
    RECORD_HEADER_LEN + payload(index, 1).len() as u64
}

#[test]
fn round_trip_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        append_range(&log, 1..=100, 1);
        assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(100)));
        let stats = log.stats();
        assert!(stats.segments > 5, "expected many segments, got {stats:?}");
        assert_eq!(stats.segments, segment_files(dir.path()).len());
        assert!(stats.cached_bytes <= 100, "cache over its bound: {stats:?}");
        assert_eq!(stats.records_appended, 100);
        assert_reads(&log, 1..=100, 1);
        assert_reads(&log, 37..=53, 1);
        // Missing indexes are simply absent.
        assert_eq!(log.read(95, 500).unwrap(), records(95..=100, 1));
        assert!(log.read(0, 1).unwrap().is_empty());
        assert!(log.read(50, 50).unwrap().is_empty());
    }
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert!(log.recovery().torn_tail.is_none());
    assert_eq!(log.recovery().records_found, 100);
    assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(100)));
    assert_reads(&log, 1..=100, 1);
    log.append_blocking(records(101..=101, 1)).unwrap();
    drop(log);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_reads(&log, 99..=101, 1);
}

#[test]
fn group_commit_shares_fsyncs_across_threads() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_max_bytes: 4096,
        fsync: true,
        ..LogConfig::default()
    };
    {
        let log = Arc::new(RaftLog::open(dir.path(), cfg.clone()).unwrap());
        let next_index = Arc::new(Mutex::new(1u64));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let log = log.clone();
                let next_index = next_index.clone();
                thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        let (tx, rx) = mpsc::sync_channel(1);
                        {
                            // Index assignment and enqueue under one lock keep appends
                            // contiguous; the wait for the fsync happens outside it.
                            let mut next = next_index.lock().unwrap();
                            let index = *next;
                            let done = Box::new(move |r| tx.send(r).unwrap());
                            log.append(vec![(index, payload(index, 1))], done).unwrap();
                            *next += 1;
                        }
                        rx.recv().unwrap().unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let stats = log.stats();
        let appends = THREADS * PER_THREAD;
        assert_eq!(stats.appends, appends);
        assert!(
            stats.fsyncs < appends,
            "group commit should share fsyncs: {} fsyncs for {appends} appends",
            stats.fsyncs
        );
    }
    let log = RaftLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.last_index(), Some(THREADS * PER_THREAD));
    assert_reads(&log, 1..=THREADS * PER_THREAD, 1);
}

/// Writes 1..=20 over several segments and closes the log.
fn write_twenty(dir: &Path) {
    let log = RaftLog::open(dir, small_config()).unwrap();
    append_range(&log, 1..=20, 1);
}

/// Reopens after tail damage and checks: cut at `cut_offset` of the last segment,
/// `bytes_cut` reported, `last` is the last index, and appending continues after it.
fn assert_recovers_tail(dir: &Path, cut_offset: u64, bytes_cut: u64, last: u64) {
    let segment = last_segment(dir);
    let log = RaftLog::open(dir, small_config()).unwrap();
    let torn = log
        .recovery()
        .torn_tail
        .clone()
        .expect("the torn-tail repair must be taken");
    assert_eq!(torn.file, segment);
    assert_eq!((torn.offset, torn.bytes_cut), (cut_offset, bytes_cut));
    assert_eq!(file_len(&segment), cut_offset);
    assert_eq!(log.last_index(), Some(last));
    assert_reads(&log, 1..=last, 1);
    log.append_blocking(records(last + 1..=last + 3, 2))
        .unwrap();
    drop(log);
    let log = RaftLog::open(dir, small_config()).unwrap();
    assert!(log.recovery().torn_tail.is_none());
    assert_eq!(log.last_index(), Some(last + 3));
    assert_reads(&log, 1..=last, 1);
    assert_reads(&log, last + 1..=last + 3, 2);
}

#[test]
fn torn_tail_cut_mid_record_is_cut_at_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    let segment = last_segment(dir.path());
    let len = file_len(&segment);
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let record_start = len - record_len(20);
    assert_recovers_tail(dir.path(), record_start, record_len(20) - 5, 19);
}

#[test]
fn torn_tail_garbage_after_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    let segment = last_segment(dir.path());
    let len = file_len(&segment);
    let garbage: Vec<u8> = (0..37u32).map(|i| (i * 37 + 11) as u8).collect();
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&garbage)
        .unwrap();
    assert_recovers_tail(dir.path(), len, 37, 20);
}

#[test]
fn torn_tail_flipped_byte_in_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    let segment = last_segment(dir.path());
    let len = file_len(&segment);
    flip_byte(&segment, len - 1);
    let record_start = len - record_len(20);
    assert_recovers_tail(dir.path(), record_start, record_len(20), 19);
}

#[test]
fn torn_segment_header_of_new_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    // A crash right after creating the next segment, before its header was written.
    let mut name = last_segment(dir.path());
    let seq: u64 = name.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    name.set_file_name(format!("{:020}.seg", seq + 1));
    fs::write(&name, b"SHOA").unwrap();
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    let torn = log
        .recovery()
        .torn_tail
        .clone()
        .expect("header repair reported");
    assert_eq!((torn.file, torn.offset, torn.bytes_cut), (name, 0, 4));
    assert_eq!(log.last_index(), Some(20));
    log.append_blocking(records(21..=21, 1)).unwrap();
    drop(log);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_reads(&log, 1..=21, 1);
}

#[test]
fn corruption_followed_by_good_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        fsync: false,
        ..LogConfig::default()
    };
    {
        let log = RaftLog::open(dir.path(), cfg.clone()).unwrap();
        append_range(&log, 1..=20, 1);
    }
    let segment = last_segment(dir.path());
    assert_eq!(segment_files(dir.path()).len(), 1);
    let record3 = 16 + record_len(1) + record_len(2);
    flip_byte(&segment, record3 + RECORD_HEADER_LEN + 2);
    match RaftLog::open(dir.path(), cfg) {
        Err(Error::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!((file, offset), (segment.clone(), record3));
            assert!(reason.contains("not a torn tail"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    // Nothing was cut: the file still holds all twenty records.
    assert_eq!(
        file_len(&segment),
        16 + (1..=20).map(record_len).sum::<u64>()
    );
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    let first = segment_files(dir.path()).remove(0);
    // The tail of the first segment: a torn tail only counts in the last segment.
    flip_byte(&first, file_len(&first) - 1);
    match RaftLog::open(dir.path(), small_config()) {
        Err(Error::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn truncate_after_then_reopen_removes_entries_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        append_range(&log, 1..=60, 1);
        let before = segment_files(dir.path()).len();
        log.truncate_after(Some(25)).unwrap();
        assert_eq!(log.last_index(), Some(25));
        assert!(segment_files(dir.path()).len() < before);
        assert_eq!(log.read(20, 61).unwrap(), records(20..=25, 1));
        // The index space above 25 is reused with different content.
        append_range(&log, 26..=30, 2);
    }
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(30)));
    assert_reads(&log, 1..=25, 1);
    assert_reads(&log, 26..=30, 2);
    assert!(log.read(31, 61).unwrap().is_empty());

    log.truncate_after(None).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    drop(log);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert!(log.read(0, 100).unwrap().is_empty());
    // An empty log starts anywhere.
    append_range(&log, 500..=502, 3);
    assert_reads(&log, 500..=502, 3);
}

#[test]
fn truncate_is_ordered_after_queued_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    append_range(&log, 1..=10, 1);
    let completed = Arc::new(AtomicUsize::new(0));
    for i in 11..=20 {
        let completed = completed.clone();
        let done = Box::new(move |r: Result<(), Error>| {
            r.unwrap();
            completed.fetch_add(1, Ordering::SeqCst);
        });
        log.append(records(i..=i, 1), done).unwrap();
    }
    log.truncate_after(Some(15)).unwrap();
    assert_eq!(completed.load(Ordering::SeqCst), 10);
    assert_eq!(log.last_index(), Some(15));
    drop(log);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.last_index(), Some(15));
    assert_reads(&log, 1..=15, 1);
}

#[test]
fn purge_upto_then_reopen_keeps_first_index_and_deletes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let files_before;
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        append_range(&log, 1..=60, 1);
        files_before = segment_files(dir.path());
        log.purge_upto(30).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (Some(31), Some(60)));
        assert_eq!(log.read(1, 61).unwrap(), records(31..=60, 1));
    }
    let files_after = segment_files(dir.path());
    assert!(files_after.len() < files_before.len());
    assert!(
        !files_before[0].exists(),
        "segment holding only purged entries remains"
    );
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (Some(31), Some(60)));
    assert_eq!(log.purged_upto(), Some(30));
    // Entries of a partially purged segment stay hidden after reopen.
    assert_eq!(log.read(25, 36).unwrap(), records(31..=35, 1));
    append_range(&log, 61..=62, 1);

    // Purge past the end: the log is empty and restarts above the purge point only.
    log.purge_upto(70).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert!(segment_files(dir.path()).is_empty());
    assert!(matches!(
        log.append_blocking(records(70..=70, 1)),
        Err(Error::NonContiguous {
            expected: 71,
            got: 70
        })
    ));
    append_range(&log, 71..=72, 1);
    drop(log);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (Some(71), Some(72)));
    assert_reads(&log, 71..=72, 1);
}

#[test]
fn newer_segment_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_twenty(dir.path());
    let first = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&first, bytes).unwrap();
    match RaftLog::open(dir.path(), small_config()) {
        Err(e @ Error::UnsupportedVersion { .. }) => {
            let Error::UnsupportedVersion {
                file,
                found,
                supported,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((file, *found, *supported), (&first, 2, 1));
            assert!(e.to_string().contains("newer"), "{e}");
        }
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn meta_save_load_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        assert_eq!(log.load_meta("vote").unwrap(), None);
        log.save_meta("vote", b"term=1,node=1").unwrap();
        log.save_meta("vote", b"term=2,node=3").unwrap();
        log.save_meta("committed", b"17").unwrap();
        log.save_meta("empty", b"").unwrap();
        assert!(matches!(
            log.save_meta("../escape", b"x"),
            Err(Error::InvalidMetaKey { .. })
        ));
    }
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.load_meta("vote").unwrap(),
        Some(b"term=2,node=3".to_vec())
    );
    assert_eq!(log.load_meta("committed").unwrap(), Some(b"17".to_vec()));
    assert_eq!(log.load_meta("empty").unwrap(), Some(Vec::new()));
    assert_eq!(log.load_meta("purged").unwrap(), None);
}

#[test]
fn bad_appends_are_refused_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        max_record_bytes: 200,
        ..small_config()
    };
    let log = RaftLog::open(dir.path(), cfg).unwrap();
    append_range(&log, 1..=3, 1);
    assert!(matches!(
        log.append_blocking(records(5..=5, 1)),
        Err(Error::NonContiguous {
            expected: 4,
            got: 5
        })
    ));
    assert!(matches!(
        log.append_blocking(vec![(4, payload(4, 1)), (6, payload(6, 1))]),
        Err(Error::NonContiguous {
            expected: 5,
            got: 6
        })
    ));
    assert!(matches!(
        log.append_blocking(vec![(4, Bytes::from(vec![0u8; 201]))]),
        Err(Error::RecordTooLarge {
            bytes: 201,
            max: 200
        })
    ));
    assert_eq!(log.last_index(), Some(3));
    append_range(&log, 4..=4, 1);
    assert_reads(&log, 1..=4, 1);
}

#[test]
fn async_appends_are_readable_at_once_and_flushed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let completed = Arc::new(AtomicUsize::new(0));
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        for i in 1..=50 {
            let completed = completed.clone();
            let done = Box::new(move |r: Result<(), Error>| {
                r.unwrap();
                completed.fetch_add(1, Ordering::SeqCst);
            });
            log.append(records(i..=i, 1), done).unwrap();
            assert_eq!(log.read(i, i + 1).unwrap(), records(i..=i, 1));
        }
        assert_eq!(log.last_index(), Some(50));
    }
    // Dropping the log completed every queued append.
    assert_eq!(completed.load(Ordering::SeqCst), 50);
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_reads(&log, 1..=50, 1);
}

#[test]
fn a_directory_is_opened_once_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert!(matches!(
        RaftLog::open(dir.path(), small_config()),
        Err(Error::Locked { .. })
    ));
    drop(log);
    // Released with the log. Polled: another test of this binary that spawns a process
    // (the tmpfs one) can hold a forked copy of the lock's descriptor for the moment
    // between its fork and its exec.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match RaftLog::open(dir.path(), small_config()) {
            Ok(_) => break,
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("reopening after the log was dropped: {e}"),
        }
    }
}

#[test]
fn disk_reads_detect_bit_rot() {
    let dir = tempfile::tempdir().unwrap();
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    append_range(&log, 1..=20, 1);
    let first = segment_files(dir.path()).remove(0);
    // Index 1 is long out of the tiny cache, so this read goes to disk.
    flip_byte(&first, 16 + RECORD_HEADER_LEN);
    assert!(matches!(log.read(1, 2), Err(Error::Corrupt { .. })));
    assert_reads(&log, 18..=20, 1);
}

#[test]
fn interrupted_purge_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let log = RaftLog::open(dir.path(), small_config()).unwrap();
        append_range(&log, 1..=60, 1);
        for file in segment_files(dir.path()) {
            fs::copy(&file, saved.path().join(file.file_name().unwrap())).unwrap();
        }
        log.purge_upto(30).unwrap();
    }
    // Put the deleted files back: as if the crash came after the purge point was
    // persisted but before the files were removed.
    let deleted: Vec<PathBuf> = segment_files(saved.path())
        .into_iter()
        .map(|f| dir.path().join(f.file_name().unwrap()))
        .filter(|f| !f.exists())
        .collect();
    assert!(!deleted.is_empty());
    for file in &deleted {
        fs::copy(saved.path().join(file.file_name().unwrap()), file).unwrap();
    }
    let log = RaftLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.recovery().purged_segments_removed, deleted.len());
    assert!(deleted.iter().all(|f| !f.exists()));
    assert_eq!((log.first_index(), log.last_index()), (Some(31), Some(60)));
    assert_reads(&log, 31..=60, 1);
}

#[test]
fn oversized_records_and_a_tiny_queue_still_make_progress() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_max_bytes: 300,
        cache_max_bytes: 0,
        max_pending_appends: 1,
        max_pending_bytes: 1,
        fsync: false,
        ..LogConfig::default()
    };
    let big = |i: u64| Bytes::from(vec![i as u8; 1000]);
    {
        let log = RaftLog::open(dir.path(), cfg.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 1..=20 {
            let tx = tx.clone();
            // Blocks while the one-slot queue is full; must never deadlock.
            log.append(vec![(i, big(i))], Box::new(move |r| tx.send(r).unwrap()))
                .unwrap();
        }
        for _ in 1..=20 {
            rx.recv().unwrap().unwrap();
        }
        // Each record is larger than a segment: one segment per record.
        assert_eq!(log.stats().segments, 20);
    }
    let log = RaftLog::open(dir.path(), cfg).unwrap();
    let got = log.read(1, 21).unwrap();
    assert_eq!(got, (1..=20).map(|i| (i, big(i))).collect::<Vec<_>>());
}

/// A 1 MiB tmpfs mounted for one test (root only), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Result<SmallDisk, String> {
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("needs root to mount a small tmpfs".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.path().join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8]);
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn an_append_that_hits_a_full_disk_waits_for_space_and_leaves_no_partial_record() {
    let disk = match SmallDisk::mount() {
        Ok(d) => d,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let dir = disk.dir.path().join("log");
    fs::create_dir(&dir).unwrap();
    let cfg = LogConfig {
        segment_max_bytes: 256 * 1024,
        fsync: true,
        ..LogConfig::default()
    };
    let log = Arc::new(RaftLog::open(&dir, cfg.clone()).unwrap());
    log.append_blocking(records(1..=10, 1)).unwrap();
    let filler = disk.fill();

    let big = Bytes::from(vec![7u8; 64 * 1024]);
    let (tx, rx) = mpsc::channel();
    let appender = {
        let (log, big) = (log.clone(), big.clone());
        thread::spawn(move || {
            let r = log.append_blocking(vec![(11, big)]);
            let _ = tx.send(());
            r
        })
    };
    // The append cannot finish while the disk is full…
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "an append of 64 KiB finished on a full disk"
    );
    // …and goes through, once, when space returns.
    fs::remove_file(&filler).unwrap();
    appender
        .join()
        .unwrap()
        .expect("the append succeeds once space returns");
    assert_reads(&log, 1..=10, 1);
    assert_eq!(log.read(11, 12).unwrap(), vec![(11, big.clone())]);
    drop(log);

    // On disk: exactly the records, no leftovers of the attempts that hit the full disk.
    let log = RaftLog::open(&dir, cfg).unwrap();
    assert_reads(&log, 1..=10, 1);
    assert_eq!(log.read(11, 12).unwrap(), vec![(11, big)]);
    let expected: u64 = (1..=10).map(record_len).sum::<u64>()
        + RECORD_HEADER_LEN
        + 64 * 1024
        + shoal_raftlog::SEGMENT_HEADER_LEN;
    let on_disk: u64 = segment_files(&dir).iter().map(|p| file_len(p)).sum();
    assert_eq!(on_disk, expected, "segment bytes after the retried append");
    log.append_blocking(records(12..=12, 1)).unwrap();
}
