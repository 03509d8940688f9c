//! Durability with a real process: concurrent writers, SIGKILL mid-ingest, restart; every
//! acknowledged row is present exactly once. And a torn log tail is cut on recovery.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Node;

const WRITERS: u64 = 4;
const ROWS_PER_REQUEST: u64 = 200;
/// Acknowledged requests after which the node is killed (writers keep going meanwhile).
const KILL_AFTER_ACKS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_ingest_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().expect("tmp");
    // A small flush threshold so the kill also lands around flushes and log purges.
    let mut node = Node::start(dir.path(), &["--flush-hot-bytes", "200000"]).await;
    let url = node.url("/write?db=t");
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for w in 0..WRITERS {
        let (url, acked, acks, stop) = (url.clone(), acked.clone(), acks.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut seq = 0u64;
            // Bounded: at most 10 000 requests per writer.
            while !stop.load(Ordering::Acquire) && seq < 10_000 {
                let first = (w << 40) | (seq * ROWS_PER_REQUEST);
                let body: String = (0..ROWS_PER_REQUEST)
                    .map(|i| {
                        let id = first + i;
                        format!(
                            "events,writer=w{w},symbol=S{} id={id}i,v={i} {}\n",
                            id % 97,
                            1_700_000_000_000_000_000 + id
                        )
                    })
                    .collect();
                match http.post(&url).body(body).send().await {
                    Ok(r) if r.status() == 204 => {
                        acked
                            .lock()
                            .expect("lock")
                            .extend(first..first + ROWS_PER_REQUEST);
                        acks.fetch_add(1, Ordering::AcqRel);
                    }
                    _ => break,
                }
                seq += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acks.load(Ordering::Acquire) < KILL_AFTER_ACKS {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill9();
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    eprintln!("acknowledged rows before SIGKILL: {}", acked.len());

    node.restart().await;
    eprintln!(
        "writes interrupted by the kill and finished at restart: {}",
        node.stderr_text()
            .matches("finishing a write interrupted")
            .count()
    );
    let (status, v) = node.sql("SELECT id FROM events").await;
    assert_eq!(status, 200, "{v}");
    let mut present: Vec<u64> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_u64().expect("id"))
        .collect();
    present.sort_unstable();
    let before = present.len();
    present.dedup();
    assert_eq!(
        before,
        present.len(),
        "{} rows are duplicated",
        before - present.len()
    );
    let missing: Vec<&u64> = acked
        .iter()
        .filter(|id| present.binary_search(id).is_err())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged ids missing after restart, e.g. {missing:?}"
    );
    // Every present row belongs to a request some writer sent, and every request is whole:
    // its rows span many vshards, and a write interrupted by the kill is finished (or was
    // never begun) at restart, never left half applied.
    let mut per_request: std::collections::BTreeMap<(u64, u64), u64> = Default::default();
    for id in &present {
        let (w, rest) = (id >> 40, id & ((1 << 40) - 1));
        assert!(
            w < WRITERS && rest < 10_000 * ROWS_PER_REQUEST,
            "row {id} was never sent"
        );
        *per_request.entry((w, rest / ROWS_PER_REQUEST)).or_default() += 1;
    }
    let partial: Vec<_> = per_request
        .iter()
        .filter(|(_, n)| **n != ROWS_PER_REQUEST)
        .take(5)
        .collect();
    assert!(
        partial.is_empty(),
        "requests half visible after restart ((writer, request), rows): {partial:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_is_cut_on_recovery() {
    let dir = tempfile::tempdir().expect("tmp");
    // No age-based flush during the test, so every row stays in the log.
    let mut node = Node::start(dir.path(), &["--flush-age-ms", "3600000", "--vshards", "1"]).await;
    for i in 0..10 {
        let (status, text) = node.write(&format!("m,symbol=A v={i} {i}\n")).await;
        assert_eq!(status, 204, "{text}");
    }
    node.kill9();
    // Cut the last record of the node's WAL (vshard 0's last entry) in half, as a crash
    // mid-write would.
    let log_dir = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment");
    let len = std::fs::metadata(last).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open");
    f.set_len(len - 20).expect("truncate");
    drop(f);

    node.restart().await;
    assert_eq!(
        node.count("SELECT count(*) FROM m").await,
        9,
        "exactly the torn record is gone"
    );
    let log = node.stderr_text();
    assert!(
        log.contains("torn"),
        "recovery must say loudly that it cut the log:\n{log}"
    );
    // And the node keeps taking writes at the right place.
    assert_eq!(node.write("m,symbol=A v=99 99\n").await.0, 204);
    assert_eq!(node.count("SELECT count(*) FROM m").await, 10);
}
