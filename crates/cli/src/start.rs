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
    /// Postgres wire-protocol address (psql, psycopg) [default: 127.0.0.1:7432]
    #[arg(long, env = "SHOAL_PG_ADDR")]
    pg_addr: Option<String>,
    /// Inter-node RPC address (cluster mode) [default: 127.0.0.1:7400]
    #[arg(long, env = "SHOAL_RPC_ADDR")]
    rpc_addr: Option<String>,
    /// SWIM gossip address (cluster mode) [default: 127.0.0.1:7401]
    #[arg(long, env = "SHOAL_GOSSIP_ADDR")]
    gossip_addr: Option<String>,
    /// Address peers use for RPC when it differs from --rpc-addr (needed with 0.0.0.0).
    #[arg(long, env = "SHOAL_ADVERTISE_RPC_ADDR")]
    advertise_rpc_addr: Option<String>,
    #[arg(long, env = "SHOAL_ADVERTISE_GOSSIP_ADDR")]
    advertise_gossip_addr: Option<String>,
    #[arg(long, env = "SHOAL_ADVERTISE_HTTP_ADDR")]
    advertise_http_addr: Option<String>,
    #[arg(long, env = "SHOAL_ADVERTISE_PG_ADDR")]
    advertise_pg_addr: Option<String>,
    /// Seeds (other nodes' --rpc-addr), comma-separated; one reachable seed is enough.
    #[arg(long, env = "SHOAL_JOIN", value_delimiter = ',')]
    join: Option<Vec<String>>,
    #[arg(long, env = "SHOAL_JOIN_TIMEOUT_MS")]
    join_timeout_ms: Option<u64>,
    #[arg(long, env = "SHOAL_MAX_VOTERS")]
    max_voters: Option<usize>,
    #[arg(long, env = "SHOAL_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    #[arg(long, env = "SHOAL_DEAD_REPLICA_TIMEOUT_MS")]
    dead_replica_timeout_ms: Option<u64>,
    #[arg(long, env = "SHOAL_MAX_CLOCK_OFFSET_MS")]
    max_clock_offset_ms: Option<u64>,
    #[arg(long, env = "SHOAL_QUIESCE_AFTER_MS")]
    quiesce_after_ms: Option<u64>,
    #[arg(long, env = "SHOAL_LEADER_BALANCE_INTERVAL_MS")]
    leader_balance_interval_ms: Option<u64>,
    /// Placement planning interval, ms [default: 5000]
    #[arg(long, env = "SHOAL_REBALANCE_INTERVAL_MS")]
    rebalance_interval_ms: Option<u64>,
    /// Replica moves in flight at most [default: 4]
    #[arg(long, env = "SHOAL_REBALANCE_MAX_MOVES")]
    rebalance_max_moves: Option<usize>,
    /// Pause balancing above this CPU share [default: 0.8]
    #[arg(long, env = "SHOAL_REBALANCE_CPU_THRESHOLD")]
    rebalance_cpu_threshold: Option<f64>,
    /// No replica to nodes whose disk is fuller than this [default: 0.925]
    #[arg(long, env = "SHOAL_REBALANCE_MAX_DISK_FRACTION")]
    rebalance_max_disk_fraction: Option<f64>,
    /// Per-vshard pause after a move, ms [default: 30000]
    #[arg(long, env = "SHOAL_REBALANCE_VSHARD_COOLDOWN_MS")]
    rebalance_vshard_cooldown_ms: Option<u64>,
    /// Snapshot send rate, bytes/s; 0 = no limit [default: 33554432]
    #[arg(long, env = "SHOAL_SNAPSHOT_MAX_BYTES_PER_SEC")]
    snapshot_max_bytes_per_sec: Option<u64>,
    /// No-progress time before a move step counts as failed, ms [default: 60000]
    #[arg(long, env = "SHOAL_MOVE_STALL_TIMEOUT_MS")]
    move_stall_timeout_ms: Option<u64>,
    /// No-progress time before a decommission is reported stalled, ms [default: 120000]
    #[arg(long, env = "SHOAL_DECOMMISSION_STALL_MS")]
    decommission_stall_ms: Option<u64>,
    /// Keep a removed replica's files this long, ms [default: 60000]
    #[arg(long, env = "SHOAL_REPLICA_GC_GRACE_MS")]
    replica_gc_grace_ms: Option<u64>,
    /// Control-plane cadence, ms [default: 250]
    #[arg(long, env = "SHOAL_CONTROL_INTERVAL_MS")]
    control_interval_ms: Option<u64>,
    /// Load report interval, ms [default: 2000]
    #[arg(long, env = "SHOAL_REPORT_INTERVAL_MS")]
    report_interval_ms: Option<u64>,
    #[arg(long, env = "SHOAL_RPC_MAX_MESSAGE_BYTES")]
    rpc_max_message_bytes: Option<usize>,
    #[arg(long, env = "SHOAL_RPC_MAX_CONNECTIONS")]
    rpc_max_connections: Option<usize>,
    #[arg(long, env = "SHOAL_RPC_MAX_INFLIGHT")]
    rpc_max_inflight: Option<usize>,
    #[arg(long, env = "SHOAL_RPC_MAX_INFLIGHT_RAFT")]
    rpc_max_inflight_raft: Option<usize>,
    #[arg(long, env = "SHOAL_RPC_CONNECT_TIMEOUT_MS")]
    rpc_connect_timeout_ms: Option<u64>,
    #[arg(long, env = "SHOAL_BREAKER_FAILURES")]
    breaker_failures: Option<u32>,
    #[arg(long, env = "SHOAL_BREAKER_OPEN_MS")]
    breaker_open_ms: Option<u64>,
    #[arg(long, env = "SHOAL_PROBER_INTERVAL_MS")]
    prober_interval_ms: Option<u64>,
    #[arg(long, env = "SHOAL_SWIM_PROBE_INTERVAL_MS")]
    swim_probe_interval_ms: Option<u64>,
    #[arg(long, env = "SHOAL_SWIM_PROBE_TIMEOUT_MS")]
    swim_probe_timeout_ms: Option<u64>,
    #[arg(long, env = "SHOAL_SWIM_SUSPECT_TIMEOUT_MS")]
    swim_suspect_timeout_ms: Option<u64>,
    /// vshards of a new cluster [default: 16]
    #[arg(long, env = "SHOAL_VSHARDS")]
    vshards: Option<u32>,
    /// Largest request body, bytes [default: 67108864]
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// Tables the cluster may hold [default: 10000]
    #[arg(long, env = "SHOAL_MAX_TABLES")]
    max_tables: Option<usize>,
    /// Columns per table [default: 1024]
    #[arg(long, env = "SHOAL_MAX_COLUMNS_PER_TABLE")]
    max_columns_per_table: Option<usize>,
    /// Tables one request may create [default: 1000]
    #[arg(long, env = "SHOAL_MAX_NEW_TABLES_PER_REQUEST")]
    max_new_tables_per_request: Option<usize>,
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
    /// Drain: keep serving this long after /health/ready turns 503, ms [default: 5000]
    #[arg(long, env = "SHOAL_DRAIN_WAIT_UNREADY_MS")]
    drain_wait_unready_ms: Option<u64>,
    /// Drain: longest time to hand leaderships to peers, ms [default: 10000]
    #[arg(long, env = "SHOAL_DRAIN_TRANSFER_TIMEOUT_MS")]
    drain_transfer_timeout_ms: Option<u64>,
    /// Admin API bearer token (prefer --admin-token-file) [default: none: loopback only]
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<shoal_server::config::Secret>,
    /// File holding the admin API bearer token [default: none]
    #[arg(long, env = "SHOAL_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// How often the flush policy runs, ms [default: 500]
    #[arg(long, env = "SHOAL_FLUSH_CHECK_INTERVAL_MS")]
    flush_check_interval_ms: Option<u64>,
    /// Segment size of the node's WAL, bytes [default: 67108864]
    #[arg(long, env = "SHOAL_WAL_SEGMENT_BYTES")]
    wal_segment_bytes: Option<u64>,
    /// Recent WAL entries kept in memory for the whole node, bytes [default: 268435456]
    #[arg(long, env = "SHOAL_WAL_CACHE_BYTES")]
    wal_cache_bytes: Option<u64>,
    /// Once the WAL is larger on disk, the group holding its oldest segment is flushed,
    /// bytes [default: 1073741824]
    #[arg(long, env = "SHOAL_WAL_MAX_BYTES")]
    wal_max_bytes: Option<u64>,
    /// Rows per Parquet row group [default: 262144]
    #[arg(long, env = "SHOAL_PARQUET_ROW_GROUP_ROWS")]
    parquet_row_group_rows: Option<usize>,
    /// Decoded column chunks of flushed parts kept in memory, bytes; 0 = off [default: 1073741824]
    #[arg(long, env = "SHOAL_COLUMN_CACHE_BYTES")]
    column_cache_bytes: Option<u64>,
    /// Back the heap with 2 MiB transparent huge pages [default: false]
    #[arg(long, env = "SHOAL_TRANSPARENT_HUGE_PAGES")]
    transparent_huge_pages: Option<bool>,
    /// Compression of flushed Parquet parts: lz4, zstd or none [default: lz4]
    #[arg(long, env = "SHOAL_PARQUET_COMPRESSION")]
    parquet_compression: Option<String>,
    /// DataFusion target partitions; 0 = cores [default: 0]
    #[arg(long, env = "SHOAL_QUERY_TARGET_PARTITIONS")]
    query_target_partitions: Option<usize>,
    /// HTTP requests worked on at once [default: 256]
    #[arg(long, env = "SHOAL_HTTP_MAX_CONCURRENT_REQUESTS")]
    http_max_concurrent_requests: Option<usize>,
    /// Postgres-protocol connections at once [default: 256]
    #[arg(long, env = "SHOAL_PG_MAX_CONNECTIONS")]
    pg_max_connections: Option<usize>,
    /// Postgres connections still authenticating at once [default: 64]
    #[arg(long, env = "SHOAL_PG_MAX_PENDING_CONNECTIONS")]
    pg_max_pending_connections: Option<usize>,
    /// Time to authenticate a Postgres connection, ms [default: 10000]
    #[arg(long, env = "SHOAL_PG_AUTH_TIMEOUT_MS")]
    pg_auth_timeout_ms: Option<u64>,
    /// Client authentication: trust (once users exist) or scram-sha-256 (always) [default: trust]
    #[arg(long, env = "SHOAL_PG_AUTH")]
    pg_auth: Option<String>,
    /// Deprecated: users created as admins at start, comma separated name:password pairs
    #[arg(long, env = "SHOAL_PG_USERS", value_delimiter = ',')]
    pg_users: Option<Vec<String>>,
    /// Name of the first admin user [default: admin]
    #[arg(long, env = "SHOAL_INIT_ADMIN_USER")]
    init_admin_user: Option<String>,
    /// Password of the first admin, created if the cluster has no users (prefer the file)
    #[arg(long, env = "SHOAL_INIT_ADMIN_PASSWORD", hide_env_values = true)]
    init_admin_password: Option<shoal_server::config::Secret>,
    /// File holding the first admin's password [default: none]
    #[arg(long, env = "SHOAL_INIT_ADMIN_PASSWORD_FILE")]
    init_admin_password_file: Option<String>,
    /// Directory with ca.crt, node.crt, node.key: TLS on every port [default: none]
    #[arg(long, env = "SHOAL_CERTS_DIR")]
    certs_dir: Option<String>,
    /// Serve beyond loopback without TLS and authentication (only on trusted networks)
    #[arg(long, env = "SHOAL_INSECURE")]
    insecure: bool,
    /// Directory SQL COPY … TO may write under; empty = none [default: ""]
    #[arg(long, env = "SHOAL_SQL_FILE_DIR")]
    sql_file_dir: Option<String>,
    /// Longest start-up recovery, ms [default: 120000]
    #[arg(long, env = "SHOAL_STARTUP_TIMEOUT_MS")]
    startup_timeout_ms: Option<u64>,
    /// Raft heartbeat interval, ms [default: 200]
    #[arg(long, env = "SHOAL_RAFT_HEARTBEAT_MS")]
    raft_heartbeat_ms: Option<u64>,
    /// Raft election timeout minimum, ms [default: 600]
    #[arg(long, env = "SHOAL_RAFT_ELECTION_MIN_MS")]
    raft_election_min_ms: Option<u64>,
    /// Raft election timeout maximum, ms [default: 1200]
    #[arg(long, env = "SHOAL_RAFT_ELECTION_MAX_MS")]
    raft_election_max_ms: Option<u64>,
    /// Log filter [default: info,openraft=warn]
    #[arg(long, env = "SHOAL_LOG")]
    log: Option<String>,
    /// Log lines as `text` or `json` (one object per line) [default: text]
    #[arg(long, env = "SHOAL_LOG_FORMAT")]
    log_format: Option<String>,
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
        advertise_rpc_addr,
        advertise_gossip_addr,
        advertise_http_addr,
        advertise_pg_addr,
        join,
        join_timeout_ms,
        max_voters,
        replication_factor,
        dead_replica_timeout_ms,
        max_clock_offset_ms,
        quiesce_after_ms,
        leader_balance_interval_ms,
        rebalance_interval_ms,
        rebalance_max_moves,
        rebalance_cpu_threshold,
        rebalance_max_disk_fraction,
        rebalance_vshard_cooldown_ms,
        snapshot_max_bytes_per_sec,
        move_stall_timeout_ms,
        decommission_stall_ms,
        replica_gc_grace_ms,
        control_interval_ms,
        report_interval_ms,
        rpc_max_message_bytes,
        rpc_max_connections,
        rpc_max_inflight,
        rpc_max_inflight_raft,
        rpc_connect_timeout_ms,
        breaker_failures,
        breaker_open_ms,
        prober_interval_ms,
        swim_probe_interval_ms,
        swim_probe_timeout_ms,
        swim_suspect_timeout_ms,
        vshards,
        max_body_bytes,
        max_tables,
        max_columns_per_table,
        max_new_tables_per_request,
        flush_hot_bytes,
        flush_age_ms,
        flush_check_interval_ms,
        wal_segment_bytes,
        wal_cache_bytes,
        wal_max_bytes,
        wal_fsync,
        min_free_disk_bytes,
        parquet_row_group_rows,
        column_cache_bytes,
        transparent_huge_pages,
        parquet_compression,
        query_target_partitions,
        http_max_concurrent_requests,
        pg_max_connections,
        pg_max_pending_connections,
        pg_auth_timeout_ms,
        pg_auth,
        pg_users,
        init_admin_user,
        init_admin_password,
        init_admin_password_file,
        certs_dir,
        sql_file_dir,
        startup_timeout_ms,
        drain_timeout_ms,
        drain_wait_unready_ms,
        drain_transfer_timeout_ms,
        admin_token,
        admin_token_file,
        raft_heartbeat_ms,
        raft_election_min_ms,
        raft_election_max_ms,
        log,
        log_format
    );
    // A flag that is present wins; absent, the file's value stays.
    if args.insecure {
        cfg.insecure = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(args: StartArgs) -> Result<(), String> {
    let cfg = resolve(&args)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log))
        .map_err(|e| format!("bad log filter {:?}: {e}", cfg.log))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    // A test hook, not a setting: the fault harness' clock-skew nemesis runs a node whose
    // wall clock is off by this many milliseconds.
    if let Ok(v) = std::env::var("SHOAL_TEST_CLOCK_SKEW_MS") {
        let ms: i64 = v
            .trim()
            .parse()
            .map_err(|_| format!("SHOAL_TEST_CLOCK_SKEW_MS: {v:?} is not a number of ms"))?;
        tracing::warn!(
            skew_ms = ms,
            "this node's wall clock is skewed on purpose (SHOAL_TEST_CLOCK_SKEW_MS, a test hook)"
        );
        shoal_common::time::set_skew_for_tests(ms.saturating_mul(1_000_000));
    }

    crate::memory::set_huge_pages(cfg.transparent_huge_pages);
    let hup = listen_for_sighup();
    let mut node = shoal_server::start(cfg.clone()).await?;
    // Scripts and tests read the bound address from this line (port 0 picks a free port).
    println!(
        "shoal: listening http={} pg={} rpc={} gossip={} node_id={} data_dir={}",
        node.http_addr,
        node.pg_addr,
        node.rpc_addr,
        node.gossip_addr,
        node.node_id,
        cfg.data_dir.display()
    );
    tracing::info!(http = %node.http_addr, cluster_id = %node.cluster_id, node_id = node.node_id, "listening; recovering");
    let _reloader = reload_on_sighup(hup, node.certs());
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

/// SIGHUP, listened for from the start of the process (before the node starts: the
/// default action would end it).
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn listen_for_sighup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let s = signal(SignalKind::hangup()).ok();
        if s.is_none() {
            tracing::warn!("cannot listen for SIGHUP: certificates reload only on restart");
        }
        s
    }
    #[cfg(not(unix))]
    None
}

/// On every SIGHUP: reloads the node's certificates, or says there are none to reload.
fn reload_on_sighup(
    hup: Hangup,
    certs: Option<std::sync::Arc<shoal_server::certs::CertWatch>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Some(mut hup) = hup else { return };
            while hup.recv().await.is_some() {
                let Some(certs) = &certs else {
                    tracing::info!("SIGHUP: nothing to reload (no certs_dir)");
                    continue;
                };
                match certs.reload() {
                    Ok(()) => {
                        tracing::info!(dir = %certs.tls.dir().display(), "SIGHUP: reloaded the TLS certificates")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the TLS certificates did not reload; the old ones stay in use")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (hup, certs);
    })
}

pub(crate) async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        start: StartArgs,
    }

    /// Every config key is also a flag (and so an env var): nothing is file-only.
    #[test]
    fn every_config_key_has_a_flag() {
        let help = Wrapper::command().render_long_help().to_string();
        let keys = toml::Value::try_from(NodeConfig::default()).expect("toml");
        for key in keys.as_table().expect("table").keys() {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "config key {key} has no flag {flag}");
            let env = format!("SHOAL_{}", key.to_uppercase());
            assert!(help.contains(&env), "config key {key} has no env var {env}");
        }
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "vshards = 4\nflush_age_ms = 1000\n").expect("write");
        let w = Wrapper::try_parse_from([
            "x",
            "--config",
            path.to_str().expect("utf8"),
            "--vshards",
            "8",
        ])
        .expect("parse");
        let cfg = resolve(&w.start).expect("resolve");
        assert_eq!(cfg.vshards, 8, "flag wins");
        assert_eq!(cfg.flush_age_ms, 1000, "file value kept");
        assert_eq!(cfg.http_addr, "127.0.0.1:7480", "default kept");
    }
}
