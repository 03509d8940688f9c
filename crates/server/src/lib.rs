//! Node wiring and client protocols: a node is its data directory (locked), its Raft groups
//! (recovered), the query engine, and the HTTP API.
//!
//! Start-up order: lock the data directory → bind HTTP (`/health/live` answers at once,
//! `/health/ready` says 503 "recovering") → open every Raft group and replay log tails →
//! ready. Shutdown: ready → 503, stop accepting, finish in-flight requests (up to
//! `drain_timeout_ms`), flush every vshard, stop the groups.

pub mod config;
pub mod datadir;
pub mod format;
pub mod http;
pub mod ingest;
pub mod pg;
pub mod pgauth;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shoal_consensus::{GroupsConfig, Registry};
use shoal_query::QueryEngine;
use tokio::sync::{oneshot, Semaphore};

pub use config::NodeConfig;

use crate::datadir::DataDir;
use crate::http::AppState;

/// A started node.
pub struct NodeHandle {
    pub http_addr: SocketAddr,
    pub pg_addr: SocketAddr,
    pub cluster_id: String,
    pub node_id: u64,
    pub created: bool,
    ready_rx: Option<oneshot::Receiver<Result<(), String>>>,
    stop_tx: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
}

impl NodeHandle {
    /// Waits until recovery finished and the node serves (or failed to).
    pub async fn ready(&mut self) -> Result<(), String> {
        match self.ready_rx.take() {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err("node stopped during start-up".into())),
            None => Ok(()),
        }
    }

    /// Asks the node to shut down and waits for it.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.done.await.map_err(|e| e.to_string())?
    }

    /// Waits for the node to stop by itself (it only does on a fatal error).
    pub async fn wait(&mut self) -> Result<(), String> {
        (&mut self.done).await.map_err(|e| e.to_string())?
    }
}

fn groups_config(cfg: &NodeConfig, dir: &DataDir) -> GroupsConfig {
    GroupsConfig {
        node_id: dir.identity.node_id,
        node_addr: cfg.rpc_addr.clone(),
        data_dir: cfg.data_dir.clone(),
        vshards: dir.identity.vshards,
        log: shoal_raftlog::LogConfig {
            segment_max_bytes: cfg.wal_segment_bytes,
            cache_max_bytes: cfg.wal_cache_bytes,
            fsync: cfg.wal_fsync,
            ..Default::default()
        },
        store: shoal_storage::StoreConfig {
            parquet_row_group_rows: cfg.parquet_row_group_rows,
            ..Default::default()
        },
        flush_hot_bytes: cfg.flush_hot_bytes,
        flush_age_ms: cfg.flush_age_ms,
        flush_check_interval_ms: cfg.flush_check_interval_ms,
        min_free_disk_bytes: cfg.min_free_disk_bytes,
        heartbeat_interval_ms: cfg.raft_heartbeat_ms,
        election_timeout_min_ms: cfg.raft_election_min_ms,
        election_timeout_max_ms: cfg.raft_election_max_ms,
    }
}

/// Starts a node: returns once the HTTP port is bound; recovery continues in the background
/// (see [`NodeHandle::ready`]).
pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, String> {
    cfg.validate()?;
    let dir = DataDir::open(&cfg.data_dir, cfg.vshards)?;
    let listener = tokio::net::TcpListener::bind(&cfg.http_addr)
        .await
        .map_err(|e| format!("cannot listen on http_addr {}: {e}", cfg.http_addr))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pg_listener = tokio::net::TcpListener::bind(&cfg.pg_addr)
        .await
        .map_err(|e| format!("cannot listen on pg_addr {}: {e}", cfg.pg_addr))?;
    let pg_addr = pg_listener.local_addr().map_err(|e| e.to_string())?;
    let pg = Arc::new(pg::PgState {
        engine: Arc::new(OnceLock::new()),
        connections: Arc::new(Semaphore::new(cfg.pg_max_connections.max(1))),
        startup: Arc::new(pgauth::ShoalStartup::new(
            pgauth::AuthMethod::parse(&cfg.pg_auth)?,
            pgauth::parse_users(&cfg.pg_users)?,
        )),
    });
    let state = Arc::new(AppState {
        engine: OnceLock::new(),
        draining: Default::default(),
        max_body_bytes: cfg.max_body_bytes,
        permits: Arc::new(Semaphore::new(cfg.http_max_concurrent_requests.max(1))),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let cluster_id = dir.identity.cluster_id.clone();
    let node_id = dir.identity.node_id;
    let created = dir.created;
    if created {
        tracing::info!(cluster_id = %cluster_id, vshards = dir.identity.vshards, "bootstrapped a new single-node cluster");
    }
    let fronts = Fronts {
        http: listener,
        http_state: state,
        pg: pg_listener,
        pg_state: pg,
    };
    let done = tokio::spawn(run(cfg, dir, fronts, stop_rx, ready_tx));
    Ok(NodeHandle {
        http_addr,
        pg_addr,
        cluster_id,
        node_id,
        created,
        ready_rx: Some(ready_rx),
        stop_tx: Some(stop_tx),
        done,
    })
}

/// The client-facing listeners, bound before recovery.
struct Fronts {
    http: tokio::net::TcpListener,
    http_state: Arc<AppState>,
    pg: tokio::net::TcpListener,
    pg_state: Arc<pg::PgState>,
}

async fn run(
    cfg: NodeConfig,
    dir: DataDir,
    fronts: Fronts,
    stop_rx: oneshot::Receiver<()>,
    ready_tx: oneshot::Sender<Result<(), String>>,
) -> Result<(), String> {
    let Fronts {
        http: listener,
        http_state: state,
        pg: pg_listener,
        pg_state: pg,
    } = fronts;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pg_addr = pg_listener.local_addr().map_err(|e| e.to_string())?;
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let app = http::router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop_rx.await;
            })
            .await
    });

    let (pg_stop_tx, pg_stop_rx) = oneshot::channel::<()>();
    let pg_server = tokio::spawn(pg::serve(pg_listener, pg.clone(), async move {
        let _ = pg_stop_rx.await;
    }));

    let started = std::time::Instant::now();
    let opened = Registry::open(
        groups_config(&cfg, &dir),
        Duration::from_millis(cfg.startup_timeout_ms),
    )
    .await;
    let registry = match opened {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("recovery failed: {e}");
            let _ = ready_tx.send(Err(msg.clone()));
            let _ = http_stop_tx.send(());
            return Err(msg);
        }
    };
    let partitions = match cfg.query_target_partitions {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let node = shoal_query::NodeInfo {
        http_addr: http_addr.to_string(),
        pg_addr: pg_addr.to_string(),
        rpc_addr: cfg.rpc_addr.clone(),
        gossip_addr: cfg.gossip_addr.clone(),
    };
    let engine = Arc::new(QueryEngine::new(registry.clone(), partitions, node));
    let _ = pg.engine.set(engine.clone());
    let _ = state.engine.set(engine);
    let flusher = registry.spawn_flusher();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered; ready"
    );
    let _ = ready_tx.send(Ok(()));

    let _ = stop_rx.await;
    tracing::info!("shutting down: draining requests");
    state.draining.store(true, Ordering::Release);
    let _ = http_stop_tx.send(());
    let _ = pg_stop_tx.send(());
    let _ = pg_server.await;
    let drain = Duration::from_millis(cfg.drain_timeout_ms);
    match tokio::time::timeout(drain, server).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            drain_timeout_ms = cfg.drain_timeout_ms,
            "in-flight requests did not finish in time; cutting them"
        ),
    }
    flusher.abort();
    registry.shutdown(drain).await;
    drop(dir);
    tracing::info!("stopped");
    Ok(())
}
