//! The node-wide WAL: many groups' logs in one `RaftLog`, through `SharedWal` and `GroupLog`,
//! and the files it leaves on disk.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shoal_raftlog::{Error, GroupLog, LogConfig, RaftLog, SharedWal};

/// Small segments, so purges delete files after a few dozen entries, and a tiny cache, so
/// reads go to disk.
fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 400,
        cache_max_bytes: 100,
        fsync: false,
        ..LogConfig::default()
    }
}

fn body(group: u64, index: u64, version: u32) -> Bytes {
    Bytes::from(format!("g{group}-i{index}-v{version}-").repeat(1 + (index % 3) as usize))
}

fn append(log: &GroupLog, range: std::ops::RangeInclusive<u64>, version: u32) {
    let g = log.group_id();
    let recs = range.map(|i| (i, body(g, i, version))).collect();
    log.append_blocking(recs).expect("append");
}

fn assert_log(log: &GroupLog, range: std::ops::RangeInclusive<u64>, version: u32) {
    let g = log.group_id();
    assert_eq!(log.first_index(), Some(*range.start()), "group {g} first");
    assert_eq!(log.last_index(), Some(*range.end()), "group {g} last");
    let got = log.read(0, u64::MAX).expect("read");
    let want: Vec<(u64, Bytes)> = range.map(|i| (i, body(g, i, version))).collect();
    assert_eq!(got, want, "group {g} entries");
}

fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

struct Dirs {
    _tmp: tempfile::TempDir,
    wal: PathBuf,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    Dirs {
        wal: tmp.path().join("wal"),
        root: tmp.path().to_path_buf(),
        _tmp: tmp,
    }
}

impl Dirs {
    fn group(&self, id: u64) -> PathBuf {
        self.root.join(format!("g{id}"))
    }

    fn open(&self) -> SharedWal {
        SharedWal::open(&self.wal, small_config()).expect("open wal")
    }
}

#[test]
fn interleaved_groups_round_trip_across_reopen() {
    let d = dirs();
    {
        let wal = d.open();
        let logs: Vec<GroupLog> = (0..3)
            .map(|g| wal.group(g, &d.group(g)).expect("group"))
            .collect();
        // Every group's batches alternate in the WAL; group g starts at index g + 1.
        for round in 0..10u64 {
            for (g, log) in logs.iter().enumerate() {
                let lo = g as u64 + 1 + round * 2;
                append(log, lo..=lo + 1, 1);
            }
        }
        for (g, log) in logs.iter().enumerate() {
            assert_log(log, g as u64 + 1..=g as u64 + 20, 1);
        }
    }
    let wal = d.open();
    for g in 0..3u64 {
        let log = wal.group(g, &d.group(g)).expect("reopen group");
        assert_log(&log, g + 1..=g + 20, 1);
        assert!(
            wal_segments(&d.group(g)).is_empty(),
            "no per-group segment files"
        );
    }
    assert!(wal_segments(&d.wal).len() > 1, "the WAL holds the records");
}

#[test]
fn truncation_survives_reopen_and_later_appends_replace_entries() {
    let d = dirs();
    {
        let wal = d.open();
        let a = wal.group(1, &d.group(1)).expect("a");
        let b = wal.group(2, &d.group(2)).expect("b");
        append(&a, 1..=10, 1);
        append(&b, 1..=5, 1);
        a.truncate_after(Some(6)).expect("truncate");
        assert_eq!(a.last_index(), Some(6));
        append(&a, 7..=9, 2);
        b.truncate_after(None).expect("truncate all");
        assert_eq!(b.last_index(), None);
        append(&b, 3..=4, 2);
        // An append must continue the log.
        assert!(matches!(
            a.append_blocking(vec![(12, body(1, 12, 2))]),
            Err(Error::NonContiguous {
                expected: 10,
                got: 12
            })
        ));
    }
    let wal = d.open();
    let a = wal.group(1, &d.group(1)).expect("a");
    let got = a.read(1, 100).expect("read");
    assert_eq!(got.len(), 9);
    for (i, b) in got {
        assert_eq!(b, body(1, i, if i <= 6 { 1 } else { 2 }), "entry {i}");
    }
    let b = wal.group(2, &d.group(2)).expect("b");
    assert_log(&b, 3..=4, 2);
}

#[test]
fn the_wal_is_purged_only_below_what_every_group_still_needs() {
    let d = dirs();
    let wal = d.open();
    let busy = wal.group(1, &d.group(1)).expect("busy");
    let slow = wal.group(2, &d.group(2)).expect("slow");
    append(&slow, 1..=2, 1);
    for i in 1..=60 {
        append(&busy, i..=i, 1);
    }
    let before = wal_segments(&d.wal).len();
    assert!(before > 3, "{before} segments");
    busy.purge_upto(55).expect("purge busy");
    assert_eq!(busy.first_index(), Some(56));
    assert_eq!(
        wal_segments(&d.wal).len(),
        before,
        "the slow group's entries in the first segment keep every segment"
    );
    assert_eq!(
        wal.pinning_group(400),
        Some(2),
        "the slow group pins the WAL"
    );
    assert_eq!(
        wal.pinning_group(1 << 20),
        None,
        "under the bound nobody is asked"
    );
    slow.purge_upto(2).expect("purge slow");
    slow.flush().expect("the WAL purge runs behind the queue");
    assert_eq!(slow.first_index(), None);
    assert_eq!(slow.purged_upto(), Some(2));
    let after = wal_segments(&d.wal).len();
    assert!(after < before, "{after} segments left of {before}");
    assert_ne!(
        wal.pinning_group(0),
        Some(2),
        "a group with no entries pins nothing"
    );
    // Only purged entries went.
    assert_log(&busy, 56..=60, 1);
    drop((busy, slow, wal));
    let wal = d.open();
    let busy = wal.group(1, &d.group(1)).expect("busy");
    let slow = wal.group(2, &d.group(2)).expect("slow");
    assert_log(&busy, 56..=60, 1);
    assert_eq!(slow.last_index(), None);
    assert_eq!(slow.purged_upto(), Some(2));
    // An empty log starts above its purge point (a snapshot was installed), also after a
    // reopen that replays older entries of the same group.
    assert!(matches!(
        slow.append_blocking(vec![(2, body(2, 2, 1))]),
        Err(Error::NonContiguous { .. })
    ));
    slow.purge_upto(40).expect("purge past the end");
    append(&slow, 41..=42, 3);
    drop((busy, slow, wal));
    let wal = d.open();
    let slow = wal.group(2, &d.group(2)).expect("slow");
    assert_log(&slow, 41..=42, 3);
}

#[test]
fn a_fresh_group_directory_forgets_what_the_wal_held_under_its_id() {
    let d = dirs();
    {
        let wal = d.open();
        let g = wal.group(7, &d.group(7)).expect("group");
        append(&g, 1..=4, 1);
    }
    fs::remove_dir_all(d.group(7)).expect("remove group dir");
    {
        let wal = d.open();
        let g = wal.group(7, &d.group(7)).expect("group again");
        assert_eq!(g.last_index(), None, "a new directory starts empty");
        append(&g, 10..=11, 2);
    }
    let wal = d.open();
    let g = wal.group(7, &d.group(7)).expect("group again");
    assert_log(&g, 10..=11, 2);
}

#[test]
fn meta_values_live_in_the_group_directory_and_one_handle_per_group() {
    let d = dirs();
    let wal = d.open();
    let g = wal.group(3, &d.group(3)).expect("group");
    g.save_meta("vote", b"term 4").expect("save");
    assert!(matches!(
        wal.group(3, &d.group(3)),
        Err(Error::Locked { .. })
    ));
    drop(g);
    let g = wal.group(3, &d.group(3)).expect("reopen after drop");
    assert_eq!(g.load_meta("vote").expect("load"), Some(b"term 4".to_vec()));
    assert_eq!(g.load_meta("none").expect("load"), None);
}

/// A per-group log written by an older Shoal is copied into the WAL and its segment files
/// deleted; its meta values and purge point stay where they were.
#[test]
fn an_older_per_group_log_is_moved_into_the_wal() {
    let d = dirs();
    let gdir = d.group(5);
    {
        let old = RaftLog::open(&gdir, small_config()).expect("old log");
        let recs = (1..=30).map(|i| (i, body(5, i, 1))).collect();
        old.append_blocking(recs).expect("append");
        old.purge_upto(10).expect("purge");
        old.save_meta("vote", b"v").expect("vote");
    }
    assert!(!wal_segments(&gdir).is_empty());
    {
        let wal = d.open();
        let g = wal.group(5, &gdir).expect("upgrade");
        assert_log(&g, 11..=30, 1);
        assert_eq!(g.purged_upto(), Some(10));
        assert_eq!(g.load_meta("vote").expect("vote"), Some(b"v".to_vec()));
        assert!(wal_segments(&gdir).is_empty(), "old segments deleted");
        append(&g, 31..=32, 1);
    }
    let wal = d.open();
    let g = wal.group(5, &gdir).expect("reopen");
    assert_log(&g, 11..=32, 1);
}

/// A crash during the copy leaves the old segments and part of the copy in the WAL; the
/// next open resets the group and copies again, so nothing is doubled or lost.
#[test]
fn an_interrupted_move_into_the_wal_is_redone() {
    let d = dirs();
    let gdir = d.group(6);
    {
        let old = RaftLog::open(&gdir, small_config()).expect("old log");
        let recs = (1..=20).map(|i| (i, body(6, i, 1))).collect();
        old.append_blocking(recs).expect("append");
    }
    // What a crash after writing part of the copy leaves: the WAL holds some of the
    // group's entries, the old segments are still there and the marker is not.
    let saved: Vec<(PathBuf, Vec<u8>)> = wal_segments(&gdir)
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    {
        let wal = d.open();
        let g = wal.group(6, &gdir).expect("upgrade");
        append(&g, 21..=25, 1);
    }
    for (p, bytes) in &saved {
        fs::write(p, bytes).expect("restore old segment");
    }
    fs::remove_file(gdir.join("IN_WAL")).expect("remove marker");
    let wal = d.open();
    let g = wal.group(6, &gdir).expect("redo upgrade");
    assert_log(&g, 1..=20, 1);
}

#[test]
fn a_torn_wal_tail_loses_only_the_unsynced_batch() {
    let d = dirs();
    {
        let wal = d.open();
        let a = wal.group(1, &d.group(1)).expect("a");
        let b = wal.group(2, &d.group(2)).expect("b");
        append(&a, 1..=3, 1);
        append(&b, 1..=3, 1);
    }
    let last = wal_segments(&d.wal).pop().expect("segment");
    let mut f = OpenOptions::new().append(true).open(&last).expect("open");
    f.write_all(&[0x55; 37]).expect("garbage");
    drop(f);
    let wal = d.open();
    assert!(
        wal.recovery().torn_tail.is_some(),
        "the torn tail is reported"
    );
    let a = wal.group(1, &d.group(1)).expect("a");
    let b = wal.group(2, &d.group(2)).expect("b");
    assert_log(&a, 1..=3, 1);
    assert_log(&b, 1..=3, 1);
}

/// Appends of many groups queued at once share the WAL's fsyncs: the WAL never fsyncs more
/// often than it was asked to append.
#[test]
fn appends_of_many_groups_share_one_writer() {
    let d = dirs();
    let cfg = LogConfig {
        fsync: true,
        ..LogConfig::default()
    };
    let wal = SharedWal::open(&d.wal, cfg).expect("open");
    let logs: Vec<GroupLog> = (0..16)
        .map(|g| wal.group(g, &d.group(g)).expect("group"))
        .collect();
    let before = wal.stats();
    let (tx, rx) = std::sync::mpsc::channel();
    for round in 1..=20u64 {
        for log in &logs {
            let tx = tx.clone();
            log.append(
                vec![(round, body(log.group_id(), round, 1))],
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            )
            .expect("append");
        }
    }
    for _ in 0..16 * 20 {
        assert!(rx.recv().expect("done"), "append failed");
    }
    let after = wal.stats();
    let appends = after.appends - before.appends;
    let fsyncs = after.fsyncs - before.fsyncs;
    assert_eq!(appends, 16 * 20);
    assert!(fsyncs <= appends, "{fsyncs} fsyncs for {appends} appends");
    for log in &logs {
        assert_log(log, 1..=20, 1);
    }
}

/// A record built with room for the frame header in front reads back without it, from the
/// cache and from disk, interleaved with plain appends; one without the room is refused.
#[test]
fn framed_appends_read_back_without_the_header() {
    use bytes::{BufMut, BytesMut};
    use shoal_raftlog::FRAME_HEAD_LEN;
    let framed = |g: u64, i: u64| {
        let mut b = BytesMut::new();
        b.put_bytes(0xAA, FRAME_HEAD_LEN);
        b.put_slice(&body(g, i, 1));
        (i, b)
    };
    let d = dirs();
    {
        let wal = d.open();
        let a = wal.group(1, &d.group(1)).expect("group 1");
        append(&a, 1..=3, 1);
        let (done, rx) = {
            let (tx, rx) = std::sync::mpsc::channel();
            let done: shoal_raftlog::Done = Box::new(move |r| {
                let _ = tx.send(r);
            });
            (done, rx)
        };
        a.append_framed((4..=9).map(|i| framed(1, i)).collect(), done)
            .expect("framed");
        rx.recv().expect("outcome").expect("durable");
        append(&a, 10..=12, 1);
        assert_log(&a, 1..=12, 1);
        let short = vec![(13, BytesMut::from(&b"tiny"[..]))];
        assert!(matches!(
            a.append_framed(short, Box::new(|_| {})),
            Err(Error::NoFrameRoom { len: 4, .. })
        ));
        assert_eq!(a.last_index(), Some(12), "a refused append leaves nothing");
    }
    let wal = d.open();
    let a = wal.group(1, &d.group(1)).expect("reopen group 1");
    assert_log(&a, 1..=12, 1);
}
