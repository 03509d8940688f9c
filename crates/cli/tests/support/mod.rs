//! A real `shoal` process for integration tests: free ports, a temp data directory, and
//! readiness by polling `/health/ready` with a deadline (never a fixed sleep).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod load;

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// How long a node may take to start or recover in a test.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct Node {
    pub child: Option<Child>,
    pub addr: String,
    /// host:port of the Postgres listener.
    pub pg_addr: String,
    pub data_dir: PathBuf,
    /// host:port of the inter-node RPC listener and of the gossip socket.
    pub rpc_addr: String,
    pub gossip_addr: String,
    pub node_id: u64,
    pub stderr: Arc<Mutex<String>>,
    extra: Vec<String>,
    /// Extra environment for the next (re)start.
    pub env: Vec<(String, String)>,
    /// The process started at least once (its pinned ports are its own from then on).
    started_once: bool,
    /// Bind addresses for rpc and gossip (port 0 unless pinned, so restarts keep them).
    binds: (String, String),
}

/// A port that was free a moment ago (TCP and UDP).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Node {
    /// Starts a node on `data_dir` with extra flags and waits until it is ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut node = Node::new(data_dir, extra, false);
        node.spawn();
        node.wait_ready().await;
        node
    }

    /// A node whose rpc and gossip ports stay the same across restarts (cluster tests:
    /// peers keep dialing the same address). Does not wait for readiness.
    pub fn spawn_pinned(data_dir: &Path, extra: &[&str]) -> Node {
        let mut node = Node::new(data_dir, extra, true);
        node.spawn();
        node
    }

    /// A node bound to the given rpc and gossip addresses. Does not wait for readiness.
    pub fn spawn_bound(data_dir: &Path, rpc: &str, gossip: &str, extra: &[&str]) -> Node {
        let mut node = Node::new(data_dir, extra, false);
        node.binds = (rpc.to_string(), gossip.to_string());
        node.spawn();
        node
    }

    fn new(data_dir: &Path, extra: &[&str], pinned: bool) -> Node {
        let binds = if pinned {
            (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            )
        } else {
            ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string())
        };
        Node {
            child: None,
            addr: String::new(),
            pg_addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            rpc_addr: String::new(),
            gossip_addr: String::new(),
            node_id: 0,
            stderr: Default::default(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            started_once: false,
            binds,
        }
    }

    /// Replaces the extra flags used by the next (re)start.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Starts the process and reads its address line. A pinned node's first start retries
    /// with other ports when one it picked was taken in the meantime (another test bound
    /// it between `free_port` and the bind); later starts must keep their ports.
    pub fn spawn(&mut self) {
        for attempt in 0.. {
            match self.try_spawn() {
                Ok(()) => {
                    self.started_once = true;
                    return;
                }
                Err(stderr) => {
                    let repick = !self.started_once
                        && self.binds.0 != "127.0.0.1:0"
                        && stderr.contains("Address already in use")
                        && attempt < 5;
                    assert!(
                        repick,
                        "shoal exited before printing its address; stderr:\n{stderr}"
                    );
                    if let Ok(mut s) = self.stderr.lock() {
                        s.clear();
                    }
                    self.binds = (
                        format!("127.0.0.1:{}", free_port()),
                        format!("127.0.0.1:{}", free_port()),
                    );
                }
            }
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(BIN)
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .arg("--pg-addr")
            .arg("127.0.0.1:0")
            .arg("--rpc-addr")
            .arg(&self.binds.0)
            .arg("--gossip-addr")
            .arg(&self.binds.1)
            .args(&self.extra)
            // Every test node shares the build machine's disk, often fuller than the 92.5 %
            // past which no replica is placed: only a really full disk stops placement here.
            .env("SHOAL_REBALANCE_MAX_DISK_FRACTION", "0.995")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SHOAL_LOG", "info,openraft=warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shoal");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read stdout");
            if n == 0 {
                let _ = child.wait();
                // The stderr reader may still be copying the last lines.
                let until = Instant::now() + Duration::from_secs(2);
                while !self.stderr_text().contains("shoal:") && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(self.stderr_text());
            }
            if line.contains("listening") {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .unwrap_or_default()
                        .to_string()
                };
                self.addr = field("http=");
                self.pg_addr = field("pg=");
                self.rpc_addr = field("rpc=");
                self.gossip_addr = field("gossip=");
                self.node_id = field("node_id=").parse().unwrap_or(0);
                break;
            }
            assert!(Instant::now() < deadline, "no address printed");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        self.child = Some(child);
        Ok(())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca().is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// The cluster CA when the node serves TLS (`--certs-dir D`: `D/ca.crt`).
    pub fn ca(&self) -> Option<PathBuf> {
        let i = self.extra.iter().position(|f| f == "--certs-dir")?;
        Some(Path::new(&self.extra[i + 1]).join("ca.crt"))
    }

    /// An HTTP client for this node (trusting only its CA when it serves TLS).
    pub fn http(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = self.ca() {
            let pem = std::fs::read(&ca).expect("read ca.crt");
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca pem"));
        }
        b.build().expect("client")
    }

    pub async fn wait_ready(&self) {
        let client = self.http();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(r) = client.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node not ready in time; stderr:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no flush, no graceful anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait")
    }

    /// Sends SIGTERM and returns at once (see [`Node::wait_exit`]).
    pub fn terminate(&self) {
        if let Some(c) = self.child.as_ref() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Waits (without blocking the async runtime) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || c.wait().expect("wait"))
            .await
            .expect("join")
    }

    /// Starts the node again on the same data directory (new port).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// SIGTERM (which flushes every hot buffer to Parquet), then start again.
    pub async fn restart_graceful(&mut self) {
        let status = self.stop();
        assert!(status.success(), "graceful stop failed: {status}");
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn sql(&self, sql: &str) -> (u16, serde_json::Value) {
        self.try_sql(sql).await.expect("sql request")
    }

    /// [`Node::sql`], `None` when the node does not answer (it exited).
    pub async fn try_sql(&self, sql: &str) -> Option<(u16, serde_json::Value)> {
        let r = self
            .http()
            .post(self.url("/v1/sql"))
            .body(sql.to_string())
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let text = r.text().await.ok()?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Some((status, v))
    }

    /// The single integer a `SELECT count(*) …` returns.
    pub async fn count(&self, sql: &str) -> i64 {
        let (status, v) = self.sql(sql).await;
        assert_eq!(status, 200, "{sql}: {v}");
        v["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql}: no integer in {v}"))
    }

    pub async fn write(&self, body: &str) -> (u16, String) {
        let r = self
            .http()
            .post(self.url("/write?db=test"))
            .body(body.to_string())
            .send()
            .await
            .expect("write request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }
}

/// `shoal start` on `data_dir` with every port on loopback picked by the kernel, plus
/// `extra` flags: for tests that only watch a start fail (or a one-off process).
pub fn start_command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "--data-dir"]).arg(data_dir).args([
        "--http-addr",
        "127.0.0.1:0",
        "--pg-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--gossip-addr",
        "127.0.0.1:0",
    ]);
    cmd.args(extra);
    cmd
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

// Cluster helpers shared by the cluster and .slt suites.

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, or fails the test naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`eventually`], but on a timeout prints what every node of `nodes` says of the
/// placement (moves, replicas, its log's tail) before failing, so a stuck control plane can
/// be read from the test output.
pub async fn eventually_in<T, F, Fut>(what: &str, nodes: &[&Node], f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(what, DEADLINE, nodes, f).await
}

/// [`eventually_in`] with its own deadline (moving dozens of replicas takes minutes).
pub async fn within<T, F, Fut>(what: &str, limit: Duration, nodes: &[&Node], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            dump(nodes).await;
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints what every running node of `nodes` says of the placement (moves, vshards, its
/// replicas) and the tail of its log.
pub async fn dump(nodes: &[&Node]) {
    for n in nodes {
        if n.child.is_none() {
            continue;
        }
        let q = |sql: &'static str| async move {
            n.try_sql(sql)
                .await
                .map_or_else(|| "(no answer)".to_string(), |(_, v)| v.to_string())
        };
        let moves = q("SELECT move_id, vshard, from_node, to_node, state, attempts, last_error FROM system.moves ORDER BY move_id").await;
        let shards =
            q("SELECT vshard, replicas, leader, moving FROM system.shards ORDER BY vshard").await;
        let local = q("SELECT vshard, role, leader, voters, joint_from, learners, followers FROM system.replicas ORDER BY vshard").await;
        let log = n.stderr_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        // Errors anywhere in the log (a panicked or hung duty, a joint config left behind)
        // are what a tail misses.
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked") || l.contains("joint"))
            .take(20)
            .collect();
        eprintln!(
            "--- node {} ({}):\nmoves {}\nshards {}\nreplicas {}\nerrors:\n{}\nlog tail:\n{}",
            n.node_id,
            n.addr,
            moves,
            shards,
            local,
            errors.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// `SHOW NODES` as (id, lifecycle, swim state, group-0 role) rows.
pub async fn nodes(n: &Node) -> Vec<(u64, String, String, String)> {
    nodes_full(n)
        .await
        .into_iter()
        .map(|(a, b, c, d, _)| (a, b, c, d))
        .collect()
}

/// Like [`nodes`], plus this node's circuit-breaker state towards each node.
pub async fn nodes_full(n: &Node) -> Vec<(u64, String, String, String, String)> {
    let (status, v) = n
        .sql("SELECT node_id, lifecycle, state, group0_role, breaker FROM system.nodes ORDER BY node_id")
        .await;
    if status != 200 {
        return vec![];
    }
    v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_u64().unwrap_or(0),
                        r[1].as_str().unwrap_or("").to_string(),
                        r[2].as_str().unwrap_or("").to_string(),
                        r[3].as_str().unwrap_or("").to_string(),
                        r[4].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn rows(n: &Node, sql: &str) -> Option<serde_json::Value> {
    let (status, v) = n.sql(sql).await;
    (status == 200).then(|| v["rows"].clone())
}

/// Group 0's placement as `n` sees it: each vshard's replicas.
pub async fn placement(n: &Node) -> Option<Vec<Vec<u64>>> {
    let r = rows(n, "SELECT replicas FROM system.shards ORDER BY vshard").await?;
    r.as_array()?
        .iter()
        .map(|row| {
            row[0]
                .as_str()
                .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        })
        .collect()
}

/// Moves under way as `n` sees them.
pub async fn active_moves(n: &Node) -> Option<i64> {
    let r = rows(
        n,
        "SELECT count(*) FROM system.moves WHERE state IN ('PENDING', 'CATCHING_UP', 'SWAPPING')",
    )
    .await?;
    r[0][0].as_i64()
}

/// Replicas per node as group 0 places them (`system.nodes.replicas`), for ACTIVE nodes.
pub async fn replica_counts(n: &Node) -> Option<std::collections::BTreeMap<u64, i64>> {
    let r = rows(
        n,
        "SELECT node_id, replicas FROM system.nodes WHERE lifecycle = 'ACTIVE' ORDER BY node_id",
    )
    .await?;
    r.as_array()?
        .iter()
        .map(|row| Some((row[0].as_u64()?, row[1].as_i64()?)))
        .collect()
}

/// `Some` once no move is under way, every vshard has `rf` replicas and every ACTIVE node
/// holds within one of the mean.
pub async fn balanced(n: &Node, rf: usize) -> Option<()> {
    if active_moves(n).await? != 0 {
        return None;
    }
    if !placement(n).await?.iter().all(|r| r.len() == rf) {
        return None;
    }
    let c = replica_counts(n).await?;
    let (min, max) = (c.values().min()?, c.values().max()?);
    (max - min <= 1).then_some(())
}

/// Waits until every vshard has the same three voters.
pub async fn all_replicated(n: &Node) {
    eventually("every vshard has 3 voters", || async {
        let r = rows(n, "SELECT DISTINCT voters FROM system.replicas").await?;
        (r.as_array().map(Vec::len) == Some(1) && r[0][0].as_str() == Some("1,2,3")).then_some(())
    })
    .await;
}

/// `Some` once `n` sees node `id` in lifecycle state `state` (`ACTIVE`, `DECOMMISSIONED`, …).
pub async fn has_lifecycle(n: &Node, id: u64, state: &str) -> Option<()> {
    nodes(n)
        .await
        .iter()
        .any(|r| r.0 == id && r.1 == state)
        .then_some(())
}

/// [`cluster_with`], then waits (up to 240 s) until its replicas are balanced at RF 3.
pub async fn balanced_cluster(dirs: &[&std::path::Path], extra: &[&str]) -> Vec<Node> {
    let ns = cluster_with(dirs, extra).await;
    let all: Vec<&Node> = ns.iter().collect();
    within(
        "the cluster balanced",
        Duration::from_secs(240),
        &all,
        || async { balanced(&ns[0], 3).await },
    )
    .await;
    ns
}

/// Starts a first node and `more` nodes joining it; waits until every node is ready and
/// sees every node ACTIVE and ALIVE.
pub async fn cluster(dirs: &[&std::path::Path]) -> Vec<Node> {
    cluster_with(dirs, &[]).await
}

/// [`cluster`] with extra flags for every node.
pub async fn cluster_with(dirs: &[&std::path::Path], extra: &[&str]) -> Vec<Node> {
    let first = Node::spawn_pinned(dirs[0], extra);
    first.wait_ready().await;
    let seed = first.rpc_addr.clone();
    let mut nodes_v = vec![first];
    for d in &dirs[1..] {
        let mut flags = vec!["--join", &seed];
        flags.extend_from_slice(extra);
        let n = Node::spawn_pinned(d, &flags);
        nodes_v.push(n);
    }
    for n in &nodes_v {
        n.wait_ready().await;
    }
    let count = nodes_v.len();
    for n in &nodes_v {
        eventually("every node ACTIVE and ALIVE everywhere", || async {
            let rows = nodes(n).await;
            (rows.len() == count && rows.iter().all(|r| r.1 == "ACTIVE" && r.2 == "ALIVE"))
                .then_some(())
        })
        .await;
    }
    nodes_v
}

/// A virtualenv with psycopg 3, asyncpg and influxdb-client, made on first use under the user's cache dir
/// (`SHOAL_TEST_VENV` overrides); `None`, with the reason printed, when it cannot be made.
pub fn python_venv() -> Option<std::path::PathBuf> {
    venv_with(
        "psycopg, asyncpg, influxdb_client",
        &["psycopg[binary]>=3.1", "asyncpg", "influxdb-client"],
        "python clients",
    )
}

/// The same virtualenv with Selenium, for the web console's browser test; `None`, with
/// the reason printed, when it cannot be made.
pub fn selenium_venv() -> Option<std::path::PathBuf> {
    venv_with("selenium", &["selenium>=4.10"], "browser test")
}

/// The tests' virtualenv (made if missing), its python once `modules` import there,
/// pip-installing `packages` if they do not yet; `None`, with SKIP and `what` printed, when
/// that fails.
fn venv_with(modules: &str, packages: &[&str], what: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SHOAL_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            std::path::PathBuf::from(home).join(".cache/shoal-pyvenv")
        });
    let python = dir.join("bin/python");
    let ready = |py: &std::path::Path| {
        Command::new(py)
            .args(["-c", &format!("import {modules}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if ready(&python) {
        return Some(python);
    }
    let mut steps: Vec<(&str, Vec<std::ffi::OsString>)> = vec![];
    if !python.exists() {
        steps.push((
            "python3",
            vec!["-m".into(), "venv".into(), dir.clone().into()],
        ));
    }
    let mut pip: Vec<std::ffi::OsString> =
        vec!["-m".into(), "pip".into(), "install".into(), "-q".into()];
    pip.extend(packages.iter().map(std::ffi::OsString::from));
    steps.push((python.to_str()?, pip));
    for (prog, args) in steps {
        match Command::new(prog).args(&args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                println!(
                    "SKIP ({what}): {prog} {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return None;
            }
            Err(e) => {
                println!("SKIP ({what}): cannot run {prog}: {e}");
                return None;
            }
        }
    }
    ready(&python).then_some(python)
}

/// `shoal cert <args> --certs-dir dir`: whether it succeeded, and its stdout and stderr.
pub fn shoal_cert(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("cert")
        .args(args)
        .arg("--certs-dir")
        .arg(dir)
        .output()
        .expect("run shoal cert");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A Postgres connection to `node` as `user` (its connection task runs in the background).
pub async fn pg_connect(
    node: &Node,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = node.pg_addr.rsplit_once(':').expect("host:port");
    let conf = format!("host={host} port={port} user={user} password={password} dbname=shoal");
    let (client, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
