//! Node wiring and client protocols: a node is its data directory (locked), its Raft groups
//! (recovered), the query engine, and the HTTP API.
//!
//! Start-up order: lock the data directory → bind HTTP (`/health/live` answers at once,
//! `/health/ready` says 503 "recovering") → open every Raft group and replay log tails →
//! ready. Shutdown: ready → 503, stop accepting, finish in-flight requests (up to
//! `drain_timeout_ms`), flush every vshard, stop the groups.

pub mod admin;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod console;
pub mod datadir;
pub mod format;
pub mod gate;
pub mod http;
pub mod ingest;
pub mod lifecycle;
pub mod metrics;
pub mod pg;
pub mod pgauth;
pub mod pgconn;
pub mod pgframe;
pub mod requests;

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
    pub rpc_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub cluster_id: String,
    pub node_id: u64,
    pub created: bool,
    ready_rx: Option<oneshot::Receiver<Result<(), String>>>,
    stop_tx: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
    /// TLS (`certs_dir`), with its daily expiry check.
    certs: Option<(Arc<certs::CertWatch>, tokio::task::JoinHandle<()>)>,
}

impl NodeHandle {
    /// The node's TLS material (`certs_dir`), to reload on SIGHUP ([`certs::CertWatch::reload`]:
    /// new handshakes use the new certificates, live connections keep theirs).
    pub fn certs(&self) -> Option<Arc<certs::CertWatch>> {
        self.certs.as_ref().map(|(w, _)| w.clone())
    }

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

/// HTTPS handshakes under way at once; the excess is closed at accept.
const HTTP_MAX_TLS_HANDSHAKES: usize = 256;

/// Group 0 must have confirmed a read index to this node within this long for it to be
/// ready (its quorum is reachable from here).
const READY_META_CONFIRMED_WITHIN: Duration = Duration::from_secs(3);

/// Whether this node can serve writes and strong reads now, and if not, why (the body of
/// `/health/ready`'s 503): group 0 reachable with a quorum (a strong read's catalog
/// barrier, and every schema change, needs it), this node registered, and, when it holds
/// replicas, at least one of them with a reachable leader.
fn readiness(
    registry: &Registry,
    controller: &shoal_cluster::controller::Controller,
    membership: &shoal_membership::Membership,
    me: u64,
) -> Result<(), String> {
    let v = registry.meta_view();
    if !v.caught_up {
        return Err(match v.leader {
            None => "waiting for group 0 to elect a leader (no quorum yet)".into(),
            Some(l) => format!("catching up group 0 from leader {l}"),
        });
    }
    match registry.catalog().read().nodes.get(&me).map(|n| n.state) {
        None => return Err("registering this node in group 0".into()),
        Some(shoal_consensus::NodeState::Draining) => {
            return Err("draining (group 0 records this node DRAINING; `shoal node undrain` or a restart ends it)".into())
        }
        Some(shoal_consensus::NodeState::Decommissioning) => {
            return Err("being decommissioned".into())
        }
        Some(shoal_consensus::NodeState::Decommissioned) => {
            return Err("decommissioned".into())
        }
        Some(_) => {}
    }
    match controller.meta_confirmed_ago() {
        Some(ago) if ago <= READY_META_CONFIRMED_WITHIN => {}
        Some(ago) => {
            return Err(format!(
                "group 0 has not confirmed a quorum to this node for {} ms (leader {:?} unreachable or without a majority)",
                ago.as_millis(),
                v.leader
            ))
        }
        None => return Err("confirming group 0's quorum".into()),
    }
    let states = registry.vshard_states();
    let reachable = |l: u64| {
        l == me
            || matches!(
                membership.state_of(l),
                Some(shoal_membership::MemberState::Alive)
            )
    };
    if !states.is_empty() && !states.values().any(|g| g.leader.is_some_and(reachable)) {
        return Err(format!(
            "none of the {} vshard replicas here has a reachable leader",
            states.len()
        ));
    }
    Ok(())
}

/// The control plane's configuration.
fn controller_config(
    cfg: &NodeConfig,
    dir: &DataDir,
    addrs: &shoal_consensus::NodeAddrs,
) -> shoal_cluster::controller::ControllerConfig {
    let ms = Duration::from_millis;
    shoal_cluster::controller::ControllerConfig {
        node_id: dir.identity.node_id,
        bootstrap: dir.created && cfg.join.is_empty(),
        addrs: addrs.clone(),
        vshards: dir.identity.vshards,
        max_voters: cfg.max_voters,
        placement: shoal_cluster::placement::PlacementConfig {
            replication_factor: cfg.replication_factor,
            dead_replica_timeout: ms(cfg.dead_replica_timeout_ms),
            max_moves: cfg.rebalance_max_moves,
            cpu_threshold: cfg.rebalance_cpu_threshold,
            max_disk_fraction: cfg.rebalance_max_disk_fraction,
            vshard_cooldown: ms(cfg.rebalance_vshard_cooldown_ms),
        },
        control_interval: ms(cfg.control_interval_ms),
        rebalance_interval: ms(cfg.rebalance_interval_ms),
        leader_balance_interval: ms(cfg.leader_balance_interval_ms),
        report_interval: ms(cfg.report_interval_ms),
        quiesce_after: ms(cfg.quiesce_after_ms),
        replica_gc_grace: ms(cfg.replica_gc_grace_ms),
        move_stall_timeout: ms(cfg.move_stall_timeout_ms),
        decommission_stall: ms(cfg.decommission_stall_ms),
    }
}

fn groups_config(cfg: &NodeConfig, dir: &DataDir, rpc_addr: &str) -> GroupsConfig {
    GroupsConfig {
        node_id: dir.identity.node_id,
        node_addr: rpc_addr.to_string(),
        bootstrap: dir.created && cfg.join.is_empty(),
        snapshot_max_bytes_per_sec: cfg.snapshot_max_bytes_per_sec,
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
            parquet_compression: cfg.part_compression().unwrap_or_default(),
            column_cache: std::sync::Arc::new(shoal_storage::ColumnCache::new(
                cfg.column_cache_bytes,
            )),
            ..Default::default()
        },
        flush_hot_bytes: cfg.flush_hot_bytes,
        flush_age_ms: cfg.flush_age_ms,
        wal_max_bytes: cfg.wal_max_bytes,
        flush_check_interval_ms: cfg.flush_check_interval_ms,
        min_free_disk_bytes: cfg.min_free_disk_bytes,
        heartbeat_interval_ms: cfg.raft_heartbeat_ms,
        max_clock_offset_ms: cfg.max_clock_offset_ms,
        election_timeout_min_ms: cfg.raft_election_min_ms,
        election_timeout_max_ms: cfg.raft_election_max_ms,
    }
}

/// Starts a node: returns once its ports are bound and it has an identity (a new node
/// with seeds has joined); recovery continues in the background (see [`NodeHandle::ready`]).
pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, String> {
    cfg.validate()?;
    let certs = match cfg.certs_dir.as_str() {
        "" => None,
        dir => Some(
            certs::CertWatch::load(std::path::Path::new(dir), &cfg.tls_names())
                .map_err(|e| format!("certs_dir: {e}"))?,
        ),
    };
    let tls = certs.as_ref().map(|c| c.tls.clone());
    let locked = DataDir::lock(&cfg.data_dir, cfg.vshards)?;
    let security = cfg.security(locked.existing.is_none() && cfg.join.is_empty())?;
    if let config::Security::Insecure { exposed } = &security {
        tracing::warn!(
            ports = %exposed.join(", "),
            tls = tls.is_some(),
            "--insecure: serving beyond loopback without requiring authentication{}",
            if tls.is_some() { "" } else { " and without TLS" }
        );
    }
    let listener = tokio::net::TcpListener::bind(&cfg.http_addr)
        .await
        .map_err(|e| format!("cannot listen on http_addr {}: {e}", cfg.http_addr))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pg_listener = tokio::net::TcpListener::bind(&cfg.pg_addr)
        .await
        .map_err(|e| format!("cannot listen on pg_addr {}: {e}", cfg.pg_addr))?;
    let pg_addr = pg_listener.local_addr().map_err(|e| e.to_string())?;
    let bound = cluster::bind(&cfg).await?;
    let rpc_addr = bound.rpc.local_addr().map_err(|e| e.to_string())?;
    let addrs = shoal_consensus::NodeAddrs {
        rpc: cluster::advertise(rpc_addr, &cfg.advertise_rpc_addr, "rpc_addr")?,
        gossip: bound.gossip_addr.to_string(),
        http: cluster::advertise(http_addr, &cfg.advertise_http_addr, "http_addr")?,
        pg: cluster::advertise(pg_addr, &cfg.advertise_pg_addr, "pg_addr")?,
    };

    // Identity: stored, or a new cluster, or the one the seeds let us join.
    let envelope = Arc::new(parking_lot::RwLock::new(shoal_transport::Caller::default()));
    let catalog_addrs: Arc<OnceLock<shoal_consensus::CatalogHandle>> = Arc::new(OnceLock::new());
    let resolve = {
        let c = catalog_addrs.clone();
        move |id: u64| {
            c.get()
                .and_then(|h| h.read().nodes.get(&id).map(|n| n.addrs.rpc.clone()))
        }
    };
    let peers = shoal_transport::Peers::new(
        shoal_transport::PeersConfig {
            max_message_bytes: cfg.rpc_max_message_bytes,
            connect_timeout: Duration::from_millis(cfg.rpc_connect_timeout_ms),
            breaker_failures: cfg.breaker_failures,
            breaker_open: Duration::from_millis(cfg.breaker_open_ms),
            probe_interval: Duration::from_millis(cfg.prober_interval_ms),
            forward_timeout: Duration::from_secs(10),
            tls: tls.clone(),
        },
        envelope.clone(),
        resolve,
    );
    let mut joined_key: Option<Vec<u8>> = None;
    let fresh = match (&locked.existing, cfg.join.is_empty()) {
        (Some(id), false) => {
            envelope.write().cluster_id = id.cluster_id.clone();
            envelope.write().node_id = id.node_id;
            cluster::check_seeds(&peers, &cfg.join, &id.cluster_id).await?;
            None
        }
        (Some(_), true) => None,
        (None, true) => Some(datadir::NodeIdentity::bootstrap(cfg.vshards)),
        (None, false) => {
            let reply = cluster::join(
                &peers,
                &cfg.join,
                &addrs,
                Duration::from_millis(cfg.join_timeout_ms),
            )
            .await?;
            joined_key = Some(reply.gossip_key.clone());
            Some(datadir::NodeIdentity {
                format_version: datadir::NODE_FORMAT_VERSION,
                cluster_id: reply.cluster_id,
                node_id: reply.node_id,
                vshards: reply.vshards,
            })
        }
    };
    // The gossip key: made when bootstrapping, received when joining, stored before the
    // identity (so a node with an identity has its key), read on every later start.
    let gossip_key = match (&fresh, joined_key) {
        (None, _) => locked.gossip_key()?,
        (Some(_), Some(k)) if k.is_empty() => None,
        (Some(_), Some(k)) => {
            let k: [u8; datadir::GOSSIP_KEY_BYTES] = k
                .try_into()
                .map_err(|_| "the seed sent a gossip key of the wrong length".to_string())?;
            locked.store_gossip_key(&k)?;
            Some(k)
        }
        (Some(_), None) => {
            let k = datadir::new_gossip_key()?;
            locked.store_gossip_key(&k)?;
            Some(k)
        }
    };
    if gossip_key.is_none() {
        tracing::warn!(
            "SWIM gossip is not authenticated: this cluster was bootstrapped before Shoal \
             had gossip keys (keep gossip_addr on a private network)"
        );
    }
    let dir = locked.into_dir(fresh)?;
    {
        let mut env = envelope.write();
        env.cluster_id = dir.identity.cluster_id.clone();
        env.node_id = dir.identity.node_id;
    }

    let admission = pgconn::Admission::new(pgconn::PgLimits {
        max_sessions: cfg.pg_max_connections,
        max_pending: cfg.pg_max_pending_connections,
        auth_timeout: Duration::from_millis(cfg.pg_auth_timeout_ms),
        max_message_bytes: usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX),
    });
    let auth_method = pgauth::AuthMethod::parse(&cfg.pg_auth)?;
    let gate = gate::Gate::new(
        auth_method == pgauth::AuthMethod::ScramSha256 || security == config::Security::Secure,
    );
    // This node's own recorder (several nodes may share a process): see `metrics`.
    let node_metrics = Arc::new(crate::metrics::NodeMetrics::new(dir.identity.node_id));
    let request_ids = Arc::new(requests::RequestIds::new(dir.identity.node_id));
    let pg = Arc::new(pg::PgState {
        engine: Arc::new(OnceLock::new()),
        metrics: node_metrics.clone(),
        request_ids: request_ids.clone(),
        startup: Arc::new(pgauth::ShoalStartup::new(
            auth_method,
            gate.clone(),
            admission.sessions(),
            node_metrics.pg_refused.clone(),
            tls.clone(),
        )),
        admission,
        tls: tls.as_ref().map(|t| {
            Arc::new(pgconn::PgTls {
                tls: t.clone(),
                acceptor: tokio_rustls::TlsAcceptor::from(t.server_config(false, &[])),
            })
        }),
    });
    let state = Arc::new(AppState {
        engine: OnceLock::new(),
        draining: Default::default(),
        max_body_bytes: cfg.max_body_bytes,
        permits: Arc::new(Semaphore::new(cfg.http_max_concurrent_requests.max(1))),
        readiness: OnceLock::new(),
        gate: gate.clone(),
        metrics: node_metrics,
        request_ids: request_ids.clone(),
    });
    let lifecycle = Arc::new(lifecycle::Lifecycle::new(
        dir.identity.node_id,
        lifecycle::DrainConfig {
            wait_unready: Duration::from_millis(cfg.drain_wait_unready_ms),
            transfer_timeout: Duration::from_millis(cfg.drain_transfer_timeout_ms),
        },
        state.clone(),
    ));
    let admin = Arc::new(admin::AdminState::new(
        match cfg.admin_token()? {
            Some(t) => admin::AdminAuth::Token(t),
            None => admin::AdminAuth::LoopbackOnly,
        },
        dir.identity.node_id,
        state.clone(),
        lifecycle.clone(),
        tls.as_ref(),
    )?);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let cluster_id = dir.identity.cluster_id.clone();
    let node_id = dir.identity.node_id;
    let created = dir.created;
    if created && cfg.join.is_empty() {
        tracing::info!(cluster_id = %cluster_id, vshards = dir.identity.vshards, "bootstrapped a new cluster (this node is its first member)");
    } else if created {
        tracing::info!(cluster_id = %cluster_id, node_id, "joined an existing cluster");
    }

    let generation = dir.next_generation(shoal_common::time::now_nanos() as u64 / 1_000)?;
    let shared = Arc::new(cluster::Shared {
        cluster_id: cluster_id.clone(),
        node_id,
        vshards: dir.identity.vshards,
        generation,
        addrs: addrs.clone(),
        gossip_addr: bound.gossip_addr,
        registry: OnceLock::new(),
        engine: OnceLock::new(),
        controller: OnceLock::new(),
        max_message_bytes: cfg.rpc_max_message_bytes,
        gossip_key,
    });
    let rpc = shoal_transport::RpcServer::start(
        bound.rpc,
        shared.clone(),
        shoal_transport::ServerLimits {
            service: shoal_transport::rpc::ServiceLimits {
                max_message_bytes: cfg.rpc_max_message_bytes,
                max_inflight: cfg.rpc_max_inflight,
                max_inflight_raft: cfg.rpc_max_inflight_raft,
            },
            max_connections: cfg.rpc_max_connections,
            max_streams_per_connection: 1024,
            drain_timeout: Duration::from_millis(cfg.drain_timeout_ms),
        },
        tls.clone(),
    )
    .map_err(|e| format!("rpc server: {e}"))?;
    let membership = Arc::new(shoal_membership::Membership::start(
        shoal_membership::NodeIdentity {
            node_id,
            gossip_addr: bound.gossip_addr,
            generation,
        },
        &shoal_membership::SwimConfig {
            probe_interval: Duration::from_millis(cfg.swim_probe_interval_ms),
            probe_timeout: Duration::from_millis(cfg.swim_probe_timeout_ms),
            suspect_timeout: Duration::from_millis(cfg.swim_suspect_timeout_ms),
            max_packet_bytes: 1400,
        },
        &cluster_id,
        gossip_key.as_ref(),
        bound.gossip,
    )?);
    let gossip_addr = bound.gossip_addr;
    let fronts = Fronts {
        http: listener,
        tls: tls.clone(),
        cert_expiry: certs
            .as_ref()
            .map(|c| c.expires_ms.clone())
            .unwrap_or_default(),
        http_state: state,
        admin,
        lifecycle,
        pg: pg_listener,
        pg_state: pg,
        policy: shoal_query::EnginePolicy {
            files: shoal_query::FileAccess {
                dir: cfg
                    .sql_file_dir()
                    .map_err(|e| format!("sql_file_dir: {e}"))?,
            },
            catalog: shoal_query::CatalogLimits {
                max_tables: cfg.max_tables,
                max_columns_per_table: cfg.max_columns_per_table,
                max_new_tables_per_request: cfg.max_new_tables_per_request,
            },
        },
    };
    let net = Net {
        shared,
        peers,
        membership,
        rpc,
        catalog_addrs,
        addrs,
    };
    let done = tokio::spawn(run(cfg, dir, fronts, net, stop_rx, ready_tx));
    Ok(NodeHandle {
        http_addr,
        pg_addr,
        rpc_addr,
        gossip_addr,
        cluster_id,
        node_id,
        created,
        ready_rx: Some(ready_rx),
        stop_tx: Some(stop_tx),
        done,
        certs: certs.map(|w| {
            let daily = w.spawn_daily();
            (w, daily)
        }),
    })
}

/// The cluster side of a node, started before recovery.
struct Net {
    shared: Arc<cluster::Shared>,
    peers: Arc<shoal_transport::Peers>,
    membership: Arc<shoal_membership::Membership>,
    rpc: shoal_transport::RpcServer,
    catalog_addrs: Arc<OnceLock<shoal_consensus::CatalogHandle>>,
    addrs: shoal_consensus::NodeAddrs,
}

/// The client-facing listeners, bound before recovery.
struct Fronts {
    http: tokio::net::TcpListener,
    /// `certs_dir`: HTTPS instead of HTTP.
    tls: Option<Arc<shoal_transport::tls::Tls>>,
    /// When the certificates expire (unix ms, 0 without TLS), for the load reports.
    cert_expiry: Arc<std::sync::atomic::AtomicU64>,
    http_state: Arc<AppState>,
    admin: Arc<admin::AdminState>,
    lifecycle: Arc<lifecycle::Lifecycle>,
    pg: tokio::net::TcpListener,
    pg_state: Arc<pg::PgState>,
    /// Where SQL may write server files, catalog bounds.
    policy: shoal_query::EnginePolicy,
}

async fn run(
    cfg: NodeConfig,
    dir: DataDir,
    fronts: Fronts,
    net: Net,
    stop_rx: oneshot::Receiver<()>,
    ready_tx: oneshot::Sender<Result<(), String>>,
) -> Result<(), String> {
    let Fronts {
        http: listener,
        tls,
        cert_expiry,
        http_state: state,
        admin,
        lifecycle,
        pg: pg_listener,
        pg_state: pg,
        policy,
    } = fronts;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pg_addr = pg_listener.local_addr().map_err(|e| e.to_string())?;
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    // The HTTPS listener takes `tls`; `/metrics` counts its refused handshakes.
    let tls_stats = tls.clone();
    let app = http::with_request_ids(
        state.clone(),
        http::router(state.clone()).merge(admin::router(admin.clone())),
    );
    let server = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let stop = async move {
            let _ = http_stop_rx.await;
        };
        match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            Some(tls) => {
                // `tap_io` only for axum's `ConnectInfo<SocketAddr>` (it has that for any
                // tapped listener, and only for `TcpListener` otherwise).
                let listener = axum::serve::ListenerExt::tap_io(
                    http::TlsListener::new(listener, tls, HTTP_MAX_TLS_HANDSHAKES)?,
                    |_| {},
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    });

    let (pg_stop_tx, pg_stop_rx) = oneshot::channel::<()>();
    let pg_server = tokio::spawn(pg::serve(pg_listener, pg.clone(), async move {
        let _ = pg_stop_rx.await;
    }));

    let started = std::time::Instant::now();
    let Net {
        shared,
        peers,
        membership,
        rpc,
        catalog_addrs,
        addrs,
    } = net;
    let prober = peers.spawn_prober();
    let transport = Arc::new(shoal_transport::ClusterTransport {
        peers: peers.clone(),
    });
    let opened = Registry::open(
        groups_config(&cfg, &dir, &addrs.rpc),
        transport,
        Duration::from_millis(cfg.startup_timeout_ms),
    )
    .await;
    let registry = match opened {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("recovery failed: {e}");
            let _ = ready_tx.send(Err(msg.clone()));
            let _ = http_stop_tx.send(());
            rpc.shutdown().await;
            return Err(msg);
        }
    };
    let _ = catalog_addrs.set(registry.catalog());
    state.gate.set_catalog(registry.catalog());
    {
        // A suspected or dead leader: its groups here campaign as soon as its lease ends.
        let registry = registry.clone();
        membership.subscribe(move |e| {
            // A LEFT node drained first, so it leads little or nothing; what it still
            // led elects at once rather than after an election timeout.
            if matches!(
                e.new,
                shoal_membership::MemberState::Suspect
                    | shoal_membership::MemberState::Dead
                    | shoal_membership::MemberState::Left
            ) {
                registry.on_member_down(e.node);
            }
        });
    }
    {
        let m = membership.clone();
        registry.set_liveness(Arc::new(move |id| {
            matches!(m.state_of(id), Some(shoal_membership::MemberState::Alive))
        }));
    }
    let clocks = Arc::new(shoal_membership::clock::ClockOffsets::new(
        Duration::from_millis(cfg.max_clock_offset_ms),
    ));
    {
        let c = clocks.clone();
        let catalog = registry.catalog();
        let me = dir.identity.node_id;
        registry.set_clock_check(Arc::new(move || {
            let has_peers = catalog
                .read()
                .nodes
                .values()
                .any(|n| n.id != me && n.state != shoal_consensus::NodeState::Decommissioned);
            c.healthy(has_peers)
        }));
    }
    let _ = shared.registry.set(registry.clone());
    let sampler = Arc::new(
        shoal_cluster::reports::LoadSampler::new(
            cfg.data_dir.clone(),
            env!("CARGO_PKG_VERSION").to_string(),
        )
        .with_cert_expiry(cert_expiry),
    );
    let controller = Arc::new(shoal_cluster::controller::Controller::new(
        controller_config(&cfg, &dir, &addrs),
        shoal_cluster::controller::Parts {
            registry: registry.clone(),
            membership: membership.clone(),
            peers: peers.clone(),
            clocks: clocks.clone(),
            envelope: peers.envelope().clone(),
            sampler,
        },
    ));
    let partitions = match cfg.query_target_partitions {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let liveness = {
        let m = membership.clone();
        shoal_query::Lookup(Some(Arc::new(move |id| m.state_of(id).map(|s| s.as_str()))))
    };
    let breaker = {
        let p = peers.clone();
        shoal_query::Lookup(Some(Arc::new(move |id| p.breaker(id).map(|b| b.as_str()))))
    };
    let clock_offset = {
        let c = clocks.clone();
        shoal_query::LookupI64(Some(Arc::new(move |id| c.offset_ms(id))))
    };
    let node = shoal_query::NodeInfo {
        clock_offset,
        http_addr: addrs.http.clone(),
        pg_addr: addrs.pg.clone(),
        rpc_addr: addrs.rpc.clone(),
        gossip_addr: addrs.gossip.clone(),
        liveness,
        breaker,
        reports: Some(Arc::new(cluster::Reports(controller.clone()))),
    };
    let _ = (http_addr, pg_addr);
    let fragments = Arc::new(cluster::PeerFragments {
        peers: peers.clone(),
    });
    let engine = Arc::new(QueryEngine::new(
        registry.clone(),
        partitions,
        node,
        Some(fragments),
        policy,
    ));
    // Before the engine: once `/health/ready` can say ready, scrapes have every metric.
    state.metrics.set_sources(crate::metrics::Sources {
        registry: registry.clone(),
        controller: controller.clone(),
        membership: membership.clone(),
        gate: state.gate.clone(),
        tls: tls_stats,
        data_dir: cfg.data_dir.clone(),
        replication_factor: cfg.replication_factor,
        peers: peers.clone(),
        clocks: clocks.clone(),
        connections: connection_metrics(&cfg, &state, &pg, &rpc),
    });
    registry.wal().observe(state.metrics.wal_observer());
    let _ = shared.engine.set(engine.clone());
    let _ = pg.engine.set(engine.clone());
    let _ = state.engine.set(engine);
    let users_seeded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(seed_users(
        registry.clone(),
        pgauth::parse_users(&cfg.pg_users)?,
        cfg.init_admin_password()?
            .map(|pw| (cfg.init_admin_user.clone(), pw)),
        users_seeded.clone(),
    ));
    let _ = shared.controller.set(controller.clone());
    {
        // Membership changes wake the duties that follow them (placement, membership).
        let c = controller.clone();
        membership.subscribe(move |_| c.wake());
    }
    {
        let registry = registry.clone();
        let controller = controller.clone();
        let membership = membership.clone();
        let me = dir.identity.node_id;
        let _ = state.readiness.set(Arc::new(move || {
            readiness(&registry, &controller, &membership, me)?;
            if !users_seeded.load(std::sync::atomic::Ordering::Acquire) {
                return Err("storing the users the configuration names in group 0".into());
            }
            Ok(())
        }));
    }
    lifecycle.set_parts(registry.clone(), controller.clone());
    let _ = admin.registry.set(registry.clone());
    let _ = admin.controller.set(controller.clone());
    let maintenance = controller.spawn();
    let metrics_upkeep = state.metrics.spawn_upkeep();
    let flusher = registry.spawn_flusher();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered; ready"
    );
    let _ = ready_tx.send(Ok(()));

    // Until asked to stop, or until group 0 records this node DECOMMISSIONED: its identity
    // is then refused for good, so the process drains and exits saying so.
    let decommissioned = {
        let controller = controller.clone();
        async move {
            while !controller.decommissioned() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let fate = tokio::select! {
        _ = stop_rx => None,
        _ = decommissioned => Some(format!(
            "node {} was decommissioned: the cluster refuses this identity for good; wipe the data directory ({}) to join this host again as a new node",
            dir.identity.node_id,
            cfg.data_dir.display()
        )),
    };
    if let Some(why) = &fate {
        tracing::error!("{why}; exiting");
    }
    // The phased drain (see `lifecycle`): unready and still serving, then no new
    // connections, then every leadership to a peer, then in-flight requests finish.
    let stopping = std::time::Instant::now();
    tracing::info!("shutting down: draining");
    let mut report = lifecycle::DrainReport::default();
    if !lifecycle.draining() {
        lifecycle.begin(&mut report).await;
    }
    let _ = http_stop_tx.send(());
    let _ = pg_stop_tx.send(());
    let _ = pg_server.await;
    lifecycle.hand_off(&mut report).await;
    let drain = Duration::from_millis(cfg.drain_timeout_ms);
    let t = std::time::Instant::now();
    match tokio::time::timeout(drain, server).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            drain_timeout_ms = cfg.drain_timeout_ms,
            "in-flight requests did not finish in time; cutting them"
        ),
    }
    tracing::info!(
        unready_wait_ms = report.unready_wait_ms,
        handoff_ms = report.handoff_ms,
        requests_ms = t.elapsed().as_millis() as u64,
        still_leading = report.still_leading.len(),
        "drained"
    );
    state.draining.store(true, Ordering::Release);
    // Inter-node requests in flight (a peer's query, a forwarded write) finish first.
    rpc.shutdown().await;
    membership.leave(Duration::from_secs(1)).await;
    maintenance.abort();
    prober.abort();
    flusher.abort();
    metrics_upkeep.abort();
    registry.shutdown(drain).await;
    drop(dir);
    tracing::info!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "stopped"
    );
    match fate {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// How long start-up keeps trying to store the users the config names.
const SEED_USERS_DEADLINE: Duration = Duration::from_secs(600);

/// Stores the users the config names in group 0: the first admin (`init_admin_password`,
/// only while the cluster has no users) and the deprecated `pg_users` (each one missing, as
/// an admin). Retried until group 0 commits them or [`SEED_USERS_DEADLINE`] passes.
async fn seed_users(
    registry: Arc<Registry>,
    pg_users: Vec<(String, String)>,
    init_admin: Option<(String, config::Secret)>,
    seeded: Arc<std::sync::atomic::AtomicBool>,
) {
    use shoal_consensus::users::{make_verifier, Role, UserOp};
    let admin = || std::iter::once(Role::Admin).collect();
    let mut ops = vec![];
    if let Some((name, pw)) = init_admin {
        ops.push(UserOp::Bootstrap {
            name,
            verifier: make_verifier(&pw.0),
        });
    }
    if !pg_users.is_empty() {
        tracing::warn!(
            users = pg_users.len(),
            "pg_users is deprecated: its users are stored in the cluster as admins (SCRAM verifiers); remove pg_users and its plain-text passwords from the configuration"
        );
    }
    for (name, pw) in pg_users {
        ops.push(UserOp::Create {
            name,
            verifier: make_verifier(&pw),
            roles: admin(),
            if_not_exists: true,
        });
    }
    if ops.is_empty() {
        seeded.store(true, std::sync::atomic::Ordering::Release);
        return;
    }
    let deadline = tokio::time::Instant::now() + SEED_USERS_DEADLINE;
    for op in ops {
        loop {
            let cmd =
                shoal_consensus::Command::Cluster(shoal_consensus::ClusterOp::User(op.clone()));
            match registry.propose_meta(cmd).await {
                Ok(shoal_consensus::Response::Rejected(why)) => {
                    tracing::error!(why, "a user from the configuration was refused");
                    break;
                }
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "storing the configured users; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store the configured users");
                    return;
                }
            }
        }
    }
    seeded.store(true, std::sync::atomic::Ordering::Release);
}

/// What `shoal_connections` and `shoal_connections_refused_total` read, per protocol.
fn connection_metrics(
    cfg: &config::NodeConfig,
    http: &AppState,
    pg: &pg::PgState,
    rpc: &shoal_transport::RpcServer,
) -> Vec<crate::metrics::Connections> {
    use crate::metrics::{Connections, Reading};
    use std::sync::atomic::Ordering::Relaxed;
    let taken = |slots: Arc<Semaphore>, max: usize| -> Reading {
        Arc::new(move || max.saturating_sub(slots.available_permits()) as u64)
    };
    let count =
        |n: Arc<std::sync::atomic::AtomicU64>| -> Reading { Arc::new(move || n.load(Relaxed)) };
    let admission = pg.admission.clone();
    vec![
        Connections {
            protocol: "http",
            open: taken(
                http.permits.clone(),
                cfg.http_max_concurrent_requests.max(1),
            ),
            refused: vec![(
                "http_max_concurrent_requests",
                count(http.metrics.http_refused.clone()),
            )],
        },
        Connections {
            protocol: "postgres",
            open: taken(pg.admission.sessions(), cfg.pg_max_connections.max(1)),
            refused: vec![
                ("pg_max_connections", count(http.metrics.pg_refused.clone())),
                (
                    "pg_max_pending_connections",
                    Arc::new(move || admission.evicted()),
                ),
            ],
        },
        Connections {
            protocol: "rpc",
            open: taken(rpc.connection_slots.clone(), rpc.max_connections),
            refused: vec![(
                "rpc_max_connections",
                count(rpc.refused_connections.clone()),
            )],
        },
    ]
}
