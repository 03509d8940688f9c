//! `shoal bench ingest|query`: load and query a running node over HTTP and print throughput,
//! latency percentiles and the machine's load (optionally as JSON for scripts).
//!
//! Ingest data is either a line-protocol file (e.g. from `../shared/bench/gen_ticks.py`) or
//! ticks generated here: table `trades` (ts, symbol, side, price, size), `--symbols` symbols
//! with Zipf popularity, strictly increasing timestamps over one day, deterministic for a seed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Write ticks as line protocol over HTTP from concurrent writers.
    Ingest(IngestArgs),
    /// Run the benchmark queries Q1–Q5 and report warm latencies.
    Query(QueryArgs),
    /// Load one node, join more, and time until the replicas are balanced.
    ScaleOut(crate::bench_cluster::ScaleOutArgs),
    /// Move one large vshard replica; compare with a plain file copy; write latencies.
    Move(crate::bench_cluster::MoveArgs),
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// The node's HTTP address; several, comma-separated, spread the writers over them.
    #[arg(long, env = "SHOAL_HTTP_ADDR", default_value = "127.0.0.1:7480")]
    host: String,
    /// Instead of writing to --host, start this many nodes in this process on loopback
    /// (a temporary directory, removed after), wait until every vshard has its replicas,
    /// and spread the writers over them. 1 = a single node; 3 = replicated ingest.
    #[arg(long, default_value_t = 0)]
    start_nodes: usize,
    /// How the ticks travel: `v1` (POST /write, InfluxDB 1.x) or `v2` (POST /api/v2/write).
    #[arg(long, default_value = "v1")]
    protocol: String,
    /// A line-protocol file to load; without it, ticks are generated.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Rows to generate (ignored with --file).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Distinct symbols to generate.
    #[arg(long, default_value_t = 500)]
    symbols: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Lines per request.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// With --start-nodes: `secure` serves HTTPS (a CA and node certificate made for the
    /// run) and requires a user, so the writers send an API token, as clients of an
    /// exposed cluster do; `both` runs `plain` then `secure` on fresh nodes and prints the
    /// ratio (the cost of TLS and authentication, measured in the same run).
    #[arg(long, default_value = "plain")]
    security: String,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// The node's HTTP address.
    #[arg(long, env = "SHOAL_HTTP_ADDR", default_value = "127.0.0.1:7480")]
    host: String,
    /// Runs of each query after one warm-up run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The symbol Q3 bars.
    #[arg(long, default_value = "SYM0001")]
    symbol: String,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(args: BenchArgs) -> Result<(), String> {
    match args.what {
        BenchCommand::Ingest(a) => ingest(a).await,
        BenchCommand::Query(a) => query(a).await,
        BenchCommand::ScaleOut(a) => crate::bench_cluster::scale_out(a).await,
        BenchCommand::Move(a) => crate::bench_cluster::move_one(a).await,
    }
}

/// A small deterministic PRNG (splitmix64): the same seed gives the same ticks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Generates `rows` ticks as line-protocol lines, in time order.
pub(crate) fn generate(rows: u64, symbols: u32, seed: u64) -> Vec<String> {
    ticks(rows, symbols, seed).collect()
}

/// [`generate`]'s lines, one at a time (for loads larger than memory should hold).
pub(crate) fn ticks(rows: u64, symbols: u32, seed: u64) -> impl Iterator<Item = String> {
    const START_NS: i64 = 1_704_153_600_000_000_000; // 2024-01-02T00:00:00Z
    const SPAN_NS: i64 = 86_400_000_000_000;
    let mut rng = Rng(seed);
    let symbols = symbols.max(1) as usize;
    // Zipf weights 1/r, as a cumulative table for inverse sampling.
    let mut cdf: Vec<f64> = (1..=symbols).map(|r| 1.0 / r as f64).collect();
    for i in 1..symbols {
        cdf[i] += cdf[i - 1];
    }
    let total = cdf[symbols - 1];
    let mut price: Vec<f64> = (0..symbols).map(|_| 10.0 + rng.unit() * 490.0).collect();
    let step = (SPAN_NS / rows.max(1) as i64).max(1);
    (0..rows).map(move |i| {
        let x = rng.unit() * total;
        let s = cdf.partition_point(|&c| c < x).min(symbols - 1);
        price[s] = (price[s] * (1.0 + (rng.unit() - 0.5) * 0.0008)).max(0.01);
        let size = 1 + (rng.next() % 1000) * (1 + rng.next() % 100);
        let side = if rng.next() & 1 == 0 { "B" } else { "S" };
        let ts = START_NS + i as i64 * step + (rng.next() % step as u64) as i64 / 2;
        format!(
            "trades,side={side},symbol=SYM{:04} price={:.2},size={size}i {ts}",
            s + 1,
            price[s]
        )
    })
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 1-minute load average and core count, so a reader can tell a busy machine.
fn machine() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({"load_1m": load, "cores": cores})
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())
}

fn write_json(path: &Option<std::path::PathBuf>, v: &serde_json::Value) -> Result<(), String> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?)
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Nodes a bench started, and where they keep their data.
struct Started {
    nodes: Vec<shoal_server::NodeHandle>,
    dir: std::path::PathBuf,
    /// How clients reach them.
    target: Target,
}

/// How the bench's clients reach the nodes: scheme, a client trusting their CA, and the
/// API token writers send (a secure run).
#[derive(Clone)]
struct Target {
    scheme: &'static str,
    http: reqwest::Client,
    token: Option<String>,
}

impl Target {
    fn plain() -> Result<Target, String> {
        Ok(Target {
            scheme: "http",
            http: http_client()?,
            token: None,
        })
    }
}

/// The first admin's password in a secure bench (the nodes live only for the run).
const BENCH_ADMIN_PASSWORD: &str = "bench-admin-password";

/// Longest wait for started nodes to be ready and their vshards replicated.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Starts `n` nodes on loopback (the first bootstraps, the rest join it) and waits until
/// every node serves and every vshard has min(n, 3) voters.
async fn start_nodes(n: usize, secure: bool) -> Result<Started, String> {
    if !(1..=9).contains(&n) {
        return Err(format!("--start-nodes must be between 1 and 9, not {n}"));
    }
    let dir = std::env::temp_dir().join(format!(
        "shoal-bench-{}-{}",
        std::process::id(),
        if secure { "secure" } else { "plain" }
    ));
    let certs = dir.join("certs");
    let mut target = Target::plain()?;
    if secure {
        use shoal_server::certs as c;
        c::create_ca(&certs, 1)?;
        c::create_node(&certs, &["127.0.0.1".into(), "localhost".into()], 1)?;
        let pem = std::fs::read(certs.join("ca.crt")).map_err(|e| e.to_string())?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
        target.scheme = "https";
        target.http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .map_err(|e| e.to_string())?;
    }
    let client = target.http.clone();
    let mut nodes: Vec<shoal_server::NodeHandle> = vec![];
    for i in 1..=n {
        let join = nodes.first().map(|f| vec![f.rpc_addr.to_string()]);
        let mut cfg = crate::demo::node_config(dir.join(format!("n{i}")), join.unwrap_or_default());
        if secure {
            cfg.certs_dir = certs.to_string_lossy().into_owned();
            cfg.init_admin_password =
                shoal_server::config::Secret(BENCH_ADMIN_PASSWORD.to_string());
        }
        let mut node = shoal_server::start(cfg).await?;
        node.ready().await?;
        crate::demo::wait_ready_at(&client, &node, target.scheme).await?;
        nodes.push(node);
    }
    let sql = |body: &str| {
        let r = client
            .post(format!("{}://{}/v1/sql", target.scheme, nodes[0].http_addr))
            .body(body.to_string());
        if secure {
            r.basic_auth("admin", Some(BENCH_ADMIN_PASSWORD))
        } else {
            r
        }
    };
    // Replicas per vshard the placement grows to: three, or the node count, but never an
    // even count short of three (two nodes keep one replica each).
    let want = match n.min(3) {
        2 => 1,
        w => w,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let r = sql("SELECT replicas FROM system.shards").send().await;
        let replicated = match r {
            Ok(r) if r.status().is_success() => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                v["rows"].as_array().is_some_and(|rows| {
                    !rows.is_empty()
                        && rows
                            .iter()
                            .all(|row| row[0].as_str().map(|s| s.split(',').count()) == Some(want))
                })
            }
            _ => false,
        };
        if replicated {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "vshards did not reach {want} replicas within {START_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if secure {
        // Writers authenticate with an API token, as InfluxDB clients do.
        let r = sql("CREATE TOKEN FOR admin")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        let token = v["rows"][0][1]
            .as_str()
            .ok_or_else(|| format!("CREATE TOKEN answered {v}"))?;
        target.token = Some(token.to_string());
    }
    eprintln!(
        "started {n} node(s) in {} (every vshard on {want} node(s){})",
        dir.display(),
        if secure {
            "; HTTPS, token required"
        } else {
            ""
        }
    );
    Ok(Started { nodes, dir, target })
}

impl Started {
    fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.http_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn stop(self) -> Result<(), String> {
        for n in self.nodes.into_iter().rev() {
            n.shutdown().await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

async fn ingest(mut a: IngestArgs) -> Result<(), String> {
    let modes: &[bool] = match a.security.as_str() {
        "plain" => &[false],
        "secure" => &[true],
        "both" => &[false, true],
        other => return Err(format!("--security {other:?}: use plain, secure or both")),
    };
    if a.start_nodes == 0 && a.security != "plain" {
        return Err(
            "--security needs --start-nodes (the bench makes the certificates and the user)".into(),
        );
    }
    let mut rates = vec![];
    for &secure in modes {
        let started = match a.start_nodes {
            0 => None,
            n => Some(start_nodes(n, secure).await?),
        };
        let target = match &started {
            Some(s) => {
                a.host = s.hosts();
                s.target.clone()
            }
            None => Target::plain()?,
        };
        let result = ingest_into(&a, &target).await;
        if let Some(s) = started {
            s.stop().await?;
        }
        rates.push(result?);
    }
    if let [plain, secure] = rates[..] {
        println!(
            "secure / plain: {:.3} of the plain rows/s (HTTPS and a token on every request)",
            secure / plain
        );
    }
    Ok(())
}

/// Loads the ticks into `a.host` and prints the figures; returns the rows per second.
async fn ingest_into(a: &IngestArgs, target: &Target) -> Result<f64, String> {
    let path = match a.protocol.as_str() {
        "v1" => "write?db=bench&precision=ns",
        "v2" => "api/v2/write?bucket=bench&precision=ns",
        other => return Err(format!("--protocol {other:?}: use v1 or v2")),
    };
    let urls: Vec<String> = a
        .host
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{}://{h}/{path}", target.scheme))
        .collect();
    if urls.is_empty() {
        return Err("--host names no node".into());
    }
    let lines: Vec<String> = match &a.file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("reading {}: {e}", f.display()))?
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        None => generate(a.rows, a.symbols, a.seed),
    };
    let total = lines.len() as u64;
    let batch = a.batch.max(1);
    // Each body with its row count, ready before the clock starts: the timed loop only
    // sends (a `Bytes` clone is a reference count), as the peers' loaders in
    // bench/compare.py do, so the client takes as little of the shared cores as it can.
    let bodies: Vec<(bytes::Bytes, u64)> = lines
        .chunks(batch)
        .map(|c| (bytes::Bytes::from(c.join("\n")), c.len() as u64))
        .collect();
    drop(lines);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let done_rows = Arc::new(AtomicU64::new(0));
    let http = target.http.clone();
    let token = target.token.clone();
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..a.writers.max(1) {
        let url = urls[w % urls.len()].clone();
        let (bodies, next, done_rows, http, url, token) = (
            bodies.clone(),
            next.clone(),
            done_rows.clone(),
            http.clone(),
            url.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((body, rows)) = bodies.get(i) else {
                    return Ok::<_, String>(latencies);
                };
                let t = Instant::now();
                let mut req = http.post(&url).body(body.clone());
                if let Some(token) = &token {
                    req = req.header("authorization", format!("Token {token}"));
                }
                let r = req.send().await.map_err(|e| e.to_string())?;
                if r.status() != 204 {
                    let status = r.status();
                    return Err(format!(
                        "write failed with {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                done_rows.fetch_add(*rows, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let done_rows = done_rows.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done_rows.load(Ordering::Relaxed);
                let pct = d as f64 * 100.0 / total.max(1) as f64;
                let bar = "#".repeat((pct / 5.0) as usize);
                eprint!("\r[{bar:<20}] {pct:5.1}% {d}/{total} rows");
            }
        })
    };
    let mut latencies = vec![];
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(l) => latencies.extend(l),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    progress.abort();
    eprintln!();
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let rows = done_rows.load(Ordering::Relaxed);
    let result = json!({
        "bench": "ingest",
        "rows": rows,
        "writers": a.writers,
        "batch_lines": batch,
        "protocol": a.protocol,
        "scheme": target.scheme,
        "authenticated": target.token.is_some(),
        "nodes": urls.len(),
        "seconds": secs,
        "rows_per_sec": rows as f64 / secs,
        "batch_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
        "machine": machine(),
    });
    println!(
        "ingest: {rows} rows in {secs:.2} s = {:.0} rows/s ({} writers, {batch} lines/request, protocol {}{}, {} node(s)); batch p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load {}",
        rows as f64 / secs,
        a.writers,
        a.protocol,
        if target.token.is_some() {
            " over HTTPS with a token"
        } else {
            ""
        },
        urls.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        result["machine"]["load_1m"].as_str().unwrap_or("?"),
    );
    write_json(&a.json, &result)?;
    Ok(rows as f64 / secs)
}

/// The benchmark queries (issue 7), in Shoal's dialect.
fn queries(symbol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Q1", "SELECT symbol, count(*) FROM trades GROUP BY symbol".into()),
        (
            "Q2",
            "SELECT symbol, avg(price), max(price), sum(size) FROM trades GROUP BY symbol".into(),
        ),
        (
            "Q3",
            format!(
                "SELECT date_bin(INTERVAL '1 minute', ts) AS bar, first_value(price ORDER BY ts) AS open, \
                 max(price) AS high, min(price) AS low, last_value(price ORDER BY ts) AS close, sum(size) AS volume \
                 FROM trades WHERE symbol = '{}' GROUP BY bar ORDER BY bar",
                symbol.replace('\'', "''")
            ),
        ),
        (
            "Q4",
            "SELECT count(*), avg(price), sum(size) FROM trades \
             WHERE ts >= '2024-01-02T06:00:00Z' AND ts < '2024-01-02T07:00:00Z'"
                .into(),
        ),
        (
            "Q5",
            "SELECT date_bin(INTERVAL '1 minute', ts) AS minute, avg(price) FROM trades GROUP BY minute ORDER BY minute"
                .into(),
        ),
    ]
}

async fn query(a: QueryArgs) -> Result<(), String> {
    let http = http_client()?;
    let url = format!("http://{}/v1/sql?format=csv", a.host);
    let mut out = vec![];
    for (name, sql) in queries(&a.symbol) {
        let mut times = vec![];
        let mut first_ms = 0.0;
        for run in 0..=a.runs.max(1) {
            let t = Instant::now();
            let r = http
                .post(&url)
                .body(sql.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body = r.text().await.map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{name} failed with {status}: {body}"));
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if run > 0 {
                times.push(ms);
            } else {
                first_ms = ms;
            }
        }
        times.sort_by(f64::total_cmp);
        let median = percentile(&times, 0.5);
        println!(
            "{name}: median {median:.1} ms, min {:.1} ms, max {:.1} ms ({} warm runs); first run {first_ms:.1} ms",
            times[0],
            times[times.len() - 1],
            times.len()
        );
        out.push(json!({"query": name, "sql": sql, "median_ms": median,
            "min_ms": times[0], "max_ms": times[times.len() - 1], "runs": times.len(),
            "first_ms": first_ms}));
    }
    write_json(
        &a.json,
        &json!({"bench": "query", "queries": out, "machine": machine()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ticks_are_deterministic_and_ordered() {
        let a = generate(1000, 50, 7);
        assert_eq!(a, generate(1000, 50, 7));
        assert_ne!(a, generate(1000, 50, 8));
        let ts: Vec<i64> = a
            .iter()
            .map(|l| l.rsplit(' ').next().expect("ts").parse().expect("int"))
            .collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(a.iter().all(|l| l.starts_with("trades,side=")));
    }
}
