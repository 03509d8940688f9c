//! `shoal bench scale-out` and `shoal bench move`: the cost of elastic placement, measured
//! on nodes this process starts on loopback (a temporary directory, removed after).
//!
//! - `scale-out`: one node loaded with `--rows` ticks (flushed to Parquet), then
//!   `--nodes - 1` more join; the time until the cluster is balanced (no move under way,
//!   every vshard on three replicas, every node within one of the mean).
//! - `move`: one vshard (`vshards = 1`) of `--rows` ticks on three of four nodes; a plain
//!   `cp -r` + `sync` of the source's copy of it on the same disk, then the move of that
//!   replica to the fourth node, timed from `ALTER VSHARD` to COMPLETED, with a writer
//!   sending small requests all along: its p50/p99 before and during the move.
//!
//! Numbers are printed (and written as JSON with `--json`); nothing here asserts on them.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::bench::percentile;

#[derive(Args, Debug)]
pub struct ScaleOutArgs {
    /// Ticks loaded into the first node before the others join.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Nodes in the end.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// `snapshot_max_bytes_per_sec` of every node (0: no limit).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    rate: u64,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    /// Ticks in the one vshard that moves.
    #[arg(long, default_value_t = 2_000_000)]
    rows: u64,
    /// `snapshot_max_bytes_per_sec` of every node (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long the writer runs before the move, for its latencies without one.
    #[arg(long, default_value_t = 10)]
    baseline_secs: u64,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Longest any phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(3600);

struct Cluster {
    nodes: Vec<shoal_server::NodeHandle>,
    dir: std::path::PathBuf,
    http: reqwest::Client,
}

fn config(
    dir: std::path::PathBuf,
    join: Vec<String>,
    vshards: u32,
    rate: u64,
) -> shoal_server::NodeConfig {
    let mut cfg = crate::demo::node_config(dir, join);
    cfg.vshards = vshards;
    cfg.snapshot_max_bytes_per_sec = rate;
    // Loaded rows reach Parquet soon, so moves ship snapshots rather than logs.
    cfg.flush_age_ms = 2_000;
    cfg
}

impl Cluster {
    async fn start(n: usize, vshards: u32, rate: u64, tag: &str) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("shoal-bench-{tag}-{}", std::process::id()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| e.to_string())?;
        let mut c = Cluster {
            nodes: vec![],
            dir,
            http,
        };
        for _ in 0..n {
            c.add(vshards, rate).await?;
        }
        Ok(c)
    }

    async fn add(&mut self, vshards: u32, rate: u64) -> Result<(), String> {
        let i = self.nodes.len() + 1;
        let join = self
            .nodes
            .first()
            .map(|f| vec![f.rpc_addr.to_string()])
            .unwrap_or_default();
        let cfg = config(self.dir.join(format!("n{i}")), join, vshards, rate);
        let mut node = shoal_server::start(cfg).await?;
        node.ready().await?;
        crate::demo::wait_ready(&self.http, &node).await?;
        self.nodes.push(node);
        Ok(())
    }

    async fn sql(&self, node: usize, sql: &str) -> Result<serde_json::Value, String> {
        let r = self
            .http
            .post(format!("http://{}/v1/sql", self.nodes[node].http_addr))
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = r.status().is_success();
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["rows"].clone())
        } else {
            Err(v.to_string())
        }
    }

    /// Polls `f` every 200 ms until it says yes.
    async fn until<F, Fut>(&self, what: &str, mut f: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while !f().await {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Writes the generated ticks through node 0, two writers of 5,000-line requests,
    /// generating each request as it goes (a load may be larger than memory should hold).
    async fn load(&self, rows: u64) -> Result<f64, String> {
        let mut lines = crate::bench::ticks(rows, 500, 42);
        let url = format!("http://{}/write?db=b", self.nodes[0].http_addr);
        let started = Instant::now();
        let (mut sent, mut reported) = (0u64, 0u64);
        loop {
            let bodies: Vec<String> = (0..2)
                .map(|_| lines.by_ref().take(5_000).collect::<Vec<_>>().join("\n"))
                .filter(|b| !b.is_empty())
                .collect();
            if bodies.is_empty() {
                break;
            }
            let sends = bodies
                .iter()
                .map(|b| self.http.post(&url).body(b.clone()).send());
            for r in futures::future::join_all(sends).await {
                let r = r.map_err(|e| e.to_string())?;
                if r.status() != 204 {
                    return Err(format!("load: {}", r.text().await.unwrap_or_default()));
                }
            }
            sent = (sent + 10_000).min(rows);
            if sent - reported >= (rows / 10).max(1) {
                reported = sent;
                eprintln!(
                    "loaded {sent} of {rows} rows in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Until every replica on every node has flushed its hot rows.
    async fn flushed(&self) -> Result<(), String> {
        self.until("every replica flushed", || async {
            for i in 0..self.nodes.len() {
                match self
                    .sql(
                        i,
                        "SELECT CAST(coalesce(sum(hot_rows), 0) AS BIGINT) FROM system.replicas",
                    )
                    .await
                {
                    Ok(r) if r[0][0].as_i64() == Some(0) => {}
                    _ => return false,
                }
            }
            true
        })
        .await
    }

    async fn stop(self) -> Result<(), String> {
        for n in self.nodes.into_iter().rev() {
            n.shutdown().await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Bytes under `path`, recursively.
fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn print(
    label: &str,
    v: &serde_json::Value,
    path: &Option<std::path::PathBuf>,
) -> Result<(), String> {
    println!(
        "{label}: {}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?)
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}

pub async fn scale_out(a: ScaleOutArgs) -> Result<(), String> {
    if !(2..=9).contains(&a.nodes) {
        return Err("--nodes must be between 2 and 9".into());
    }
    let mut c = Cluster::start(1, 16, a.rate, "scale").await?;
    let load_s = c.load(a.rows).await?;
    c.flushed().await?;
    let bytes = dir_bytes(&c.dir.join("n1").join("groups"));
    eprintln!(
        "loaded {} rows in {load_s:.1} s; node 1 holds {bytes} bytes of groups",
        a.rows
    );
    let started = Instant::now();
    for _ in 1..a.nodes {
        c.add(16, a.rate).await?;
    }
    let joined_s = started.elapsed().as_secs_f64();
    c.until("balanced", || async {
        let moving = c
            .sql(0, "SELECT count(*) FROM system.moves WHERE state IN ('PENDING', 'CATCHING_UP', 'SWAPPING')")
            .await;
        let placed = c.sql(0, "SELECT replicas FROM system.shards").await;
        let counts = c
            .sql(0, "SELECT replicas FROM system.nodes WHERE lifecycle = 'ACTIVE'")
            .await;
        let (Ok(m), Ok(p), Ok(n)) = (moving, placed, counts) else {
            return false;
        };
        let three = p
            .as_array()
            .is_some_and(|r| r.iter().all(|x| x[0].as_str().is_some_and(|s| s.split(',').count() == 3)));
        let n: Vec<i64> = n
            .as_array()
            .map(|r| r.iter().filter_map(|x| x[0].as_i64()).collect())
            .unwrap_or_default();
        m[0][0].as_i64() == Some(0)
            && three
            && n.len() == a.nodes
            && n.iter().max().unwrap_or(&0) - n.iter().min().unwrap_or(&0) <= 1
    })
    .await?;
    let balanced_s = started.elapsed().as_secs_f64();
    let moves = c
        .sql(0, "SELECT count(*), CAST(coalesce(sum(bytes_total), 0) AS BIGINT) FROM system.moves WHERE state = 'COMPLETED'")
        .await?;
    let v = json!({
        "rows": a.rows,
        "nodes": a.nodes,
        "snapshot_max_bytes_per_sec": a.rate,
        "load_seconds": load_s,
        "groups_bytes_on_node1": bytes,
        "joined_seconds": joined_s,
        "balanced_seconds": balanced_s,
        "moves_completed": moves[0][0],
        "snapshot_bytes_moved": moves[0][1],
    });
    c.stop().await?;
    print("scale-out", &v, &a.json)
}

pub async fn move_one(a: MoveArgs) -> Result<(), String> {
    let c = Cluster::start(4, 1, a.rate, "move").await?;
    let load_s = c.load(a.rows).await?;
    c.flushed().await?;
    // Followers that fell behind during the load may still be installing a snapshot; the
    // copy below reads one replica's files, so wait until every replica holds the same rows.
    c.until("every replica of vshard 0 caught up", || async {
        let mut rows = vec![];
        for i in 0..c.nodes.len() {
            match c
                .sql(
                    i,
                    "SELECT CAST(parquet_rows AS BIGINT), CAST(hot_rows AS BIGINT) \
                     FROM system.replicas WHERE vshard = 0",
                )
                .await
            {
                Ok(r) => rows.extend(
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| (x[0].as_i64(), x[1].as_i64())),
                ),
                Err(_) => return false,
            }
        }
        rows.len() >= 3 && rows.iter().all(|r| *r == rows[0] && r.1 == Some(0))
    })
    .await?;
    let r = c
        .sql(0, "SELECT replicas FROM system.shards WHERE vshard = 0")
        .await?;
    let replicas: Vec<u64> = r[0][0]
        .as_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.node_id).collect();
    let to = ids
        .iter()
        .copied()
        .find(|id| !replicas.contains(id))
        .ok_or("every node holds the vshard")?;
    let from = *replicas.iter().max().ok_or("no replica")?;
    let from_ix = ids.iter().position(|x| *x == from).ok_or("source")?;
    let src = c
        .dir
        .join(format!("n{}", from_ix + 1))
        .join("groups")
        .join("g1")
        .join("data");
    let bytes = dir_bytes(&src);
    // The plain copy of the same bytes on the same disk, made durable.
    let copy_to = c.dir.join("plain-copy");
    let t = Instant::now();
    let cp = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&copy_to)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    let sync = std::process::Command::new("sync")
        .status()
        .map_err(|e| e.to_string())?;
    if !cp.success() || !sync.success() {
        return Err("the plain copy failed".into());
    }
    let copy_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&copy_to);

    // A writer, one small request at a time, all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lat = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(f64, f64)>::new()));
    let writer = {
        let (stop, lat, http) = (stop.clone(), lat.clone(), c.http.clone());
        let url = format!("http://{}/write?db=b", c.nodes[0].http_addr);
        let origin = Instant::now();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = format!(
                    "trades,side=B,symbol=W{:03} price=1.5,size=1i {}",
                    i % 100,
                    1_704_240_000_000_000_000u64 + i
                );
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 204);
                if ok {
                    lat.lock().push((
                        origin.elapsed().as_secs_f64(),
                        t.elapsed().as_secs_f64() * 1e3,
                    ));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let origin = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.baseline_secs)).await;
    let move_at = origin.elapsed().as_secs_f64();
    let t = Instant::now();
    c.sql(
        0,
        &format!("ALTER VSHARD 0 MOVE REPLICA FROM {from} TO {to}"),
    )
    .await?;
    c.until("the move completed", || async {
        matches!(
            c.sql(0, "SELECT state FROM system.moves ORDER BY move_id DESC LIMIT 1").await,
            Ok(r) if r[0][0].as_str() == Some("COMPLETED")
        )
    })
    .await?;
    let move_s = t.elapsed().as_secs_f64();
    let done_at = origin.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    let lat = lat.lock().clone();
    let stats = |from: f64, to: f64| {
        let mut v: Vec<f64> = lat
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        json!({"requests": v.len(), "p50_ms": percentile(&v, 0.5), "p99_ms": percentile(&v, 0.99)})
    };
    let moved = c
        .sql(
            0,
            "SELECT bytes_total FROM system.moves ORDER BY move_id DESC LIMIT 1",
        )
        .await?;
    let v = json!({
        "rows": a.rows,
        "load_seconds": load_s,
        "vshard_bytes_on_source": bytes,
        "snapshot_bytes_recorded": moved[0][0],
        "snapshot_max_bytes_per_sec": a.rate,
        "plain_copy_seconds": copy_s,
        "move_seconds": move_s,
        "move_over_copy": move_s / copy_s.max(1e-9),
        "writes_without_move": stats(0.0, move_at),
        "writes_during_move": stats(move_at, done_at),
    });
    c.stop().await?;
    print("move", &v, &a.json)
}
