//! `shoal demo --nodes N`: an N-node cluster on loopback in one process, with sample ticks
//! loaded, for trying clustering in one command (like `cockroach demo`). Every node binds
//! free ports; data goes to a temporary directory (removed on exit) unless `--data-dir`.
//! Ctrl-C stops every node cleanly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use shoal_server::{NodeConfig, NodeHandle};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Nodes to start (1–9).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Keep the nodes' data here (n1, n2, …) instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Sample ticks to load into table `trades`.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Log filter for the nodes (they share this process's stderr).
    #[arg(long, default_value = "warn,openraft=error")]
    log: String,
}

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const BATCH_LINES: usize = 5_000;

pub(crate) fn node_config(dir: PathBuf, join: Vec<String>) -> NodeConfig {
    NodeConfig {
        data_dir: dir,
        http_addr: "127.0.0.1:0".into(),
        pg_addr: "127.0.0.1:0".into(),
        rpc_addr: "127.0.0.1:0".into(),
        gossip_addr: "127.0.0.1:0".into(),
        join,
        // The whole demo stops at once: no load balancer to wait for.
        drain_wait_unready_ms: 0,
        ..NodeConfig::default()
    }
}

pub(crate) async fn wait_ready(client: &reqwest::Client, node: &NodeHandle) -> Result<(), String> {
    wait_ready_at(client, node, "http").await
}

/// [`wait_ready`] for a node serving `scheme` (`http` or `https`).
pub(crate) async fn wait_ready_at(
    client: &reqwest::Client,
    node: &NodeHandle,
    scheme: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("{scheme}://{}/health/ready", node.http_addr);
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {} not ready after {READY_TIMEOUT:?}",
                node.node_id
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    if !(1..=9).contains(&args.nodes) {
        return Err(format!(
            "--nodes must be between 1 and 9, not {}",
            args.nodes
        ));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("bad --log {:?}: {e}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let (base, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id())),
            true,
        ),
    };
    let result = run_cluster(&args, &base, temporary).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

async fn run_cluster(
    args: &DemoArgs,
    base: &std::path::Path,
    temporary: bool,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    let mut nodes: Vec<NodeHandle> = Vec::with_capacity(args.nodes);
    let first = shoal_server::start(node_config(base.join("n1"), vec![])).await?;
    let seed = first.rpc_addr.to_string();
    nodes.push(first);
    nodes[0].ready().await?;
    wait_ready(&client, &nodes[0]).await?;
    for i in 2..=args.nodes {
        let mut n =
            shoal_server::start(node_config(base.join(format!("n{i}")), vec![seed.clone()]))
                .await?;
        n.ready().await?;
        nodes.push(n);
    }
    for n in &nodes {
        wait_ready(&client, n).await?;
    }

    // Sample data through node 1 (any node would do).
    let lines = crate::bench::generate(args.rows, 50, 42);
    let write_url = format!("http://{}/write?db=demo", nodes[0].http_addr);
    for chunk in lines.chunks(BATCH_LINES) {
        let r = client
            .post(&write_url)
            .body(chunk.join("\n"))
            .send()
            .await
            .map_err(|e| format!("loading sample ticks: {e}"))?;
        if !r.status().is_success() {
            let status = r.status();
            return Err(format!(
                "loading sample ticks: {status}: {}",
                r.text().await.unwrap_or_default()
            ));
        }
    }

    let where_ = if temporary {
        format!("{} (removed on exit)", base.display())
    } else {
        base.display().to_string()
    };
    println!(
        "Shoal demo: a {}-node cluster on loopback; data in {where_}",
        nodes.len()
    );
    for n in &nodes {
        println!(
            "  node {}  http=http://{}  pg={}  rpc={}  gossip={}",
            n.node_id, n.http_addr, n.pg_addr, n.rpc_addr, n.gossip_addr
        );
    }
    let n1 = &nodes[0];
    let last = &nodes[nodes.len() - 1];
    println!(
        "Loaded {} sample ticks into table trades (every vshard has a replica on up to 3 nodes; any node reads and writes).",
        args.rows
    );
    println!("Try:");
    println!(
        "  curl -s http://{}/v1/sql -d 'SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY n DESC LIMIT 5'",
        last.http_addr
    );
    println!("  curl -s http://{}/v1/sql -d 'SHOW NODES'", last.http_addr);
    println!(
        "  psql -h {} -p {} -c 'SHOW NODES'",
        last.pg_addr.ip(),
        last.pg_addr.port()
    );
    println!("  shoal sql --host {}", n1.http_addr);
    println!("Ctrl-C stops every node.");
    println!("shoal demo: ready");

    crate::start::shutdown_signal().await;
    println!("shoal demo: stopping");
    for n in nodes.into_iter().rev() {
        n.shutdown().await?;
    }
    println!("shoal demo: stopped");
    Ok(())
}
