//! `shoal start`: merge config file, environment and flags (flags win), then run a node until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Args;
use shoal_server::NodeConfig;

#[derive(Args, Debug, Default)]
pub struct StartArgs {
    /// TOML config file (every key: shoal.example.toml).
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./shoal-data]
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP address; port 0 picks a free port [default: 127.0.0.1:7480]
    #[arg(long, env = "SHOAL_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Postgres wire address (reserved) [default: 127.0.0.1:7432]
    #[arg(long, env = "SHOAL_PG_ADDR")]
    pg_addr: Option<String>,
    /// Inter-node RPC address (cluster mode) [default: 127.0.0.1:7400]
    #[arg(long, env = "SHOAL_RPC_ADDR")]
    rpc_addr: Option<String>,
    /// SWIM gossip address (cluster mode) [default: 127.0.0.1:7401]
    #[arg(long, env = "SHOAL_GOSSIP_ADDR")]
    gossip_addr: Option<String>,
    /// Seeds to join, comma separated (cluster mode; not available yet)
    #[arg(long, env = "SHOAL_JOIN", value_delimiter = ',')]
    join: Option<Vec<String>>,
    /// vshards of a new cluster [default: 16]
    #[arg(long, env = "SHOAL_VSHARDS")]
    vshards: Option<u32>,
    /// Largest request body, bytes [default: 67108864]
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// Flush a vshard's hot buffer at this many bytes [default: 134217728]
    #[arg(long, env = "SHOAL_FLUSH_HOT_BYTES")]
    flush_hot_bytes: Option<u64>,
    /// Flush a vshard's hot buffer when its oldest row is this old, ms [default: 60000]
    #[arg(long, env = "SHOAL_FLUSH_AGE_MS")]
    flush_age_ms: Option<u64>,
    /// fsync the Raft log before acknowledging writes [default: true]
    #[arg(long, env = "SHOAL_WAL_FSYNC")]
    wal_fsync: Option<bool>,
    /// Refuse writes (507) below this much free disk, bytes [default: 67108864]
    #[arg(long, env = "SHOAL_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// On shutdown, wait this long for in-flight work, ms [default: 30000]
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT_MS")]
    drain_timeout_ms: Option<u64>,
    /// Log filter [default: info]
    #[arg(long, env = "SHOAL_LOG")]
    log: Option<String>,
}

/// Config file, then environment and flags (clap already resolved env vs flag).
pub fn resolve(args: &StartArgs) -> Result<NodeConfig, String> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            NodeConfig::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    macro_rules! over {
        ($($field:ident),*) => { $( if let Some(v) = &args.$field { cfg.$field = v.clone(); } )* };
    }
    over!(
        data_dir,
        http_addr,
        pg_addr,
        rpc_addr,
        gossip_addr,
        join,
        vshards,
        max_body_bytes,
        flush_hot_bytes,
        flush_age_ms,
        wal_fsync,
        min_free_disk_bytes,
        drain_timeout_ms,
        log
    );
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(args: StartArgs) -> Result<(), String> {
    let cfg = resolve(&args)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log))
        .map_err(|e| format!("bad log filter {:?}: {e}", cfg.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut node = shoal_server::start(cfg.clone()).await?;
    // Scripts and tests read the bound address from this line (port 0 picks a free port).
    println!(
        "shoal: listening http={} data_dir={}",
        node.http_addr,
        cfg.data_dir.display()
    );
    tracing::info!(http = %node.http_addr, cluster_id = %node.cluster_id, node_id = node.node_id, "listening; recovering");
    tokio::select! {
        r = node.ready() => r?,
        _ = shutdown_signal() => return node.shutdown().await,
    }
    println!("shoal: ready");
    tokio::select! {
        r = node.wait() => r,
        _ = shutdown_signal() => node.shutdown().await,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
