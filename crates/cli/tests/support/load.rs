//! Load for cluster tests: a writer whose every acknowledged row must survive, and the
//! check that each is there exactly once, on every replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{eventually, rows, Node};

/// Rows of `n`'s own replicas per vshard (hot and flushed).
pub async fn local_rows_by_vshard(n: &Node) -> Option<BTreeMap<u64, i64>> {
    let r = rows(
        n,
        "SELECT vshard, CAST(hot_rows + parquet_rows AS BIGINT) FROM system.replicas WHERE role IN ('leader', 'follower')",
    )
    .await?;
    r.as_array()?
        .iter()
        .map(|row| Some((row[0].as_u64()?, row[1].as_i64()?)))
        .collect()
}

/// A writer that writes ids 0, 1, 2, … one small request at a time through the nodes in
/// turn, retrying each request (same idempotency key) until it is acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(urls: Arc<Mutex<Vec<String>>>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client");
            let mut next = 0u64;
            let mut turn = 0usize;
            while !s.load(Ordering::SeqCst) {
                // Ten rows per request, ten symbols, so every request touches many vshards.
                let body: String = (next..next + 10)
                    .map(|i| {
                        format!(
                            "scale,sym=s{} id={i}i {}\n",
                            i % 10,
                            1_700_000_000_000_000_000u64 + i
                        )
                    })
                    .collect();
                loop {
                    let url = {
                        let u = urls.lock().expect("urls");
                        turn += 1;
                        u[turn % u.len()].clone()
                    };
                    let r = http
                        .post(format!("{url}/write?db=x"))
                        .header("Idempotency-Key", format!("w{next}"))
                        .body(body.clone())
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 204) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                next += 10;
                a.store(next, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Writer { stop, acked, task }
    }

    /// Stops after the request in flight is acknowledged; returns the rows written.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.acked.load(Ordering::SeqCst)
    }
}

/// Every node sees exactly `n` rows, each id once, and every replica of every vshard holds
/// the same rows.
pub async fn every_row_once_everywhere(ns: &[&Node], table: &str, n: u64) {
    for node in ns {
        eventually(
            "every acknowledged row, once, through every node",
            || async {
                let r = rows(
                    node,
                    &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
                )
                .await?;
                (r[0][0].as_u64()? == n && r[0][1].as_u64()? == n).then_some(())
            },
        )
        .await;
    }
    eventually(
        "every replica of every vshard holds the same rows",
        || async {
            let mut by_vshard: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
            for node in ns {
                for (v, c) in local_rows_by_vshard(node).await? {
                    by_vshard.entry(v).or_default().insert(c);
                }
            }
            let total: i64 = by_vshard
                .values()
                .map(|c| c.iter().next().copied().unwrap_or(0))
                .sum();
            (by_vshard.values().all(|c| c.len() == 1) && total as u64 == n).then_some(())
        },
    )
    .await;
}
