//! A node's place in its cluster: binding and advertising the inter-node addresses,
//! joining through seeds (or bootstrapping), answering peers' RPCs, and the maintenance
//! loop that keeps group 0's node registry, Raft membership and SWIM in step.
//!
//! Join protocol (a new node, empty data directory, `--join a,b`):
//! 1. `Join{token, addresses}` to each seed in turn until one answers; the seed proposes
//!    `AddNode` to group 0 (forwarding to the leader), which assigns the node id.
//! 2. The node records `{cluster id, node id}` in `node.json`, then starts its groups:
//!    group 0 uninitialized, waiting for the leader.
//! 3. The leader's reconciler adds the node to group 0 as a learner, replicates the
//!    catalog to it, promotes it to voter once caught up (up to `max_voters`) and marks it
//!    ACTIVE. The node is ready when it has caught up.
//!
//! A retried `Join` with the same token answers the same id. Seeds never start anything:
//! if no seed answers within `join_timeout_ms` the node exits, naming each seed's error.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::RwLock;
use shoal_consensus::transport::{RaftMessage, RaftRpc, TransportError};
use shoal_consensus::{ClusterOp, Command, NodeAddrs, NodeEntry, NodeState, Registry, Response};
use shoal_membership::swim::{MemberState, NodeIdentity as SwimIdentity};
use shoal_membership::Membership;
use shoal_query::{FragmentRunner, QueryEngine, QueryOptions, QueryOutput, RemoteError};
use shoal_transport::rpc::{
    BytesReply, Caller, ChunkStream, FragmentRequest, HelloReply, JoinReply, JoinRequest,
    MetaRequest, RaftRequest, SqlRequest, CLUSTER_MISMATCH,
};
use shoal_transport::{PeerHandler, Peers};
use tokio::net::{TcpListener, UdpSocket};
use tonic::{Code, Status};

use crate::config::NodeConfig;

/// The inter-node sockets, bound before anything else so their addresses can be advertised.
pub struct Bound {
    pub rpc: TcpListener,
    pub gossip: UdpSocket,
    pub gossip_addr: SocketAddr,
}

/// The address to advertise for a socket bound at `bound`.
pub fn advertise(bound: SocketAddr, configured: &str, key: &str) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    if bound.ip().is_unspecified() {
        return Err(format!(
            "{key} is bound to {bound}, which peers cannot dial; set advertise_{key} to an address they can reach"
        ));
    }
    Ok(bound.to_string())
}

pub async fn bind(cfg: &NodeConfig) -> Result<Bound, String> {
    let rpc = TcpListener::bind(&cfg.rpc_addr)
        .await
        .map_err(|e| format!("cannot listen on rpc_addr {}: {e}", cfg.rpc_addr))?;
    let gossip = UdpSocket::bind(&cfg.gossip_addr)
        .await
        .map_err(|e| format!("cannot bind gossip_addr {}: {e}", cfg.gossip_addr))?;
    let bound = gossip.local_addr().map_err(|e| e.to_string())?;
    let gossip_addr: SocketAddr = advertise(bound, &cfg.advertise_gossip_addr, "gossip_addr")?
        .parse()
        .map_err(|e| format!("advertise_gossip_addr must be ip:port: {e}"))?;
    Ok(Bound {
        rpc,
        gossip,
        gossip_addr,
    })
}

fn status_of(e: shoal_consensus::Error) -> Status {
    use shoal_consensus::Error as E;
    match e {
        // The peer is healthy but cannot do this now: retryable, and not a transport
        // failure (it must not open the caller's circuit breaker).
        E::NotLeader { .. } | E::Unavailable { .. } => Status::aborted(e.to_string()),
        E::Rejected(m) => Status::invalid_argument(m),
        E::DiskFull(m) => Status::resource_exhausted(m),
        other => Status::internal(other.to_string()),
    }
}

/// What a node's RPC handler knows.
pub struct Shared {
    pub cluster_id: String,
    pub node_id: u64,
    pub vshards: u32,
    pub generation: u64,
    pub addrs: NodeAddrs,
    pub gossip_addr: SocketAddr,
    pub registry: OnceLock<Arc<Registry>>,
    pub engine: OnceLock<Arc<QueryEngine>>,
    /// Whether this node held vshard replicas when it started (from `node.json`); what it
    /// registers with. Group 0's registry decides from then on (the maintenance loop
    /// follows it).
    pub hosts_vshards: bool,
    /// Replicas per vshard; a joining node hosts vshards while fewer nodes do.
    pub replication_factor: usize,
    /// Largest RPC message (a streamed fragment's chunks stay well below it).
    pub max_message_bytes: usize,
}

impl Shared {
    fn registry(&self) -> Result<&Arc<Registry>, Status> {
        self.registry
            .get()
            .ok_or_else(|| Status::aborted("the node is still starting"))
    }
}

#[async_trait::async_trait]
impl PeerHandler for Shared {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    async fn hello(&self, _caller: Caller) -> Result<HelloReply, Status> {
        let view = self
            .registry
            .get()
            .map(|r| r.meta_view())
            .unwrap_or_default();
        Ok(HelloReply {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            vshards: self.vshards,
            rpc_addr: self.addrs.rpc.clone(),
            gossip_addr: self.gossip_addr.to_string(),
            generation: self.generation,
            meta_leader: view.leader.unwrap_or(0),
            meta_term: view.term,
            wall_ns: shoal_common::time::now_nanos(),
        })
    }

    async fn join(&self, _caller: Caller, req: JoinRequest) -> Result<JoinReply, Status> {
        let registry = self.registry()?;
        let addrs = NodeAddrs {
            rpc: req.rpc_addr,
            gossip: req.gossip_addr,
            http: req.http_addr,
            pg: req.pg_addr,
        };
        if addrs.rpc.is_empty() || addrs.gossip.is_empty() {
            return Err(Status::invalid_argument(
                "a join needs rpc and gossip addresses",
            ));
        }
        let hosts = registry.catalog().read().vshard_hosts().len() < self.replication_factor;
        let op = ClusterOp::AddNode {
            id: 0,
            token: req.token,
            addrs: addrs.clone(),
            state: NodeState::Joining,
            hosts_vshards: hosts,
            max_hosts: Some(self.replication_factor as u32),
        };
        match registry
            .propose_meta(Command::Cluster(op))
            .await
            .map_err(status_of)?
        {
            Response::Node { id } => {
                // A retried join answers what the first one decided.
                let hosts_vshards = registry
                    .catalog()
                    .read()
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.hosts_vshards);
                tracing::info!(node = id, rpc = %addrs.rpc, hosts_vshards, "registered a joining node");
                Ok(JoinReply {
                    cluster_id: self.cluster_id.clone(),
                    node_id: id,
                    vshards: self.vshards,
                    hosts_vshards,
                })
            }
            Response::Rejected(m) => Err(Status::failed_precondition(m)),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn raft(&self, caller: Caller, req: RaftRequest) -> Result<BytesReply, Status> {
        if req.to_node != 0 && req.to_node != self.node_id {
            // Once a minute at most: the sender retries with backoff until its registry
            // moves on.
            static WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = shoal_common::time::now_nanos() as u64 / 1_000_000;
            let last = WARNED_MS.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= 60_000
                && WARNED_MS
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                to = req.to_node,
                from = caller.node_id,
                    "refused Raft traffic meant for another node (this address now belongs to node {})",
                    self.node_id
                );
            }
            return Err(Status::failed_precondition(format!(
                "{WRONG_NODE}: this is node {}, not node {} (that identity is gone from this address)",
                self.node_id, req.to_node
            )));
        }
        let registry = self.registry()?;
        let kind = RaftRpc::from_u32(req.kind).ok_or_else(|| {
            Status::invalid_argument(format!("unknown Raft message kind {}", req.kind))
        })?;
        let msg = RaftMessage {
            group: req.group,
            kind,
            header: req.header,
            entries: req.entries,
        };
        let body = registry.handle_raft(msg).await.map_err(status_of)?;
        Ok(BytesReply { body })
    }

    async fn forward_meta(&self, _caller: Caller, req: MetaRequest) -> Result<BytesReply, Status> {
        let registry = self.registry()?;
        let body = registry
            .handle_forwarded_meta(&req.command)
            .await
            .map_err(status_of)?;
        Ok(BytesReply { body })
    }

    async fn sql(&self, _caller: Caller, req: SqlRequest) -> Result<BytesReply, Status> {
        let engine = self
            .engine
            .get()
            .ok_or_else(|| Status::aborted("the node is still starting"))?;
        let out = engine
            .execute(&req.sql, &QueryOptions::default())
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let body = match out {
            QueryOutput::Rows { schema, batches } => {
                crate::format::to_json(&schema, &batches).map_err(Status::internal)?
            }
            QueryOutput::Command { tag, rows } => {
                serde_json::to_vec(&serde_json::json!({"command": tag, "rows": rows}))
                    .unwrap_or_default()
            }
        };
        Ok(BytesReply { body: body.into() })
    }

    async fn fragment(&self, _caller: Caller, req: FragmentRequest) -> Result<ChunkStream, Status> {
        let engine = self
            .engine
            .get()
            .ok_or_else(|| Status::aborted("the node is still starting"))?;
        let stream = engine
            .run_fragment(&req.plan, req.partition)
            .map_err(|e| query_status(&e))?;
        let chunks =
            shoal_query::distributed::ipc_chunks(stream, self.max_message_bytes).map(|c| {
                c.map(|body| BytesReply { body })
                    .map_err(|e| query_status(&e))
            });
        Ok(Box::pin(chunks))
    }
}

/// How long a peer may take to open a fragment's stream (it decodes the plan first).
const FRAGMENT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs plan fragments on peers over the RPC connections (behind their circuit breakers).
pub struct PeerFragments {
    pub peers: Arc<Peers>,
}

#[async_trait::async_trait]
impl FragmentRunner for PeerFragments {
    async fn run(
        &self,
        node: u64,
        plan: bytes::Bytes,
        partition: u32,
    ) -> Result<BoxStream<'static, Result<bytes::Bytes, RemoteError>>, RemoteError> {
        let req = FragmentRequest { plan, partition };
        let stream = self
            .peers
            .call(node, "", |mut c| async move {
                c.fragment(req, FRAGMENT_OPEN_TIMEOUT).await
            })
            .await
            .map_err(|e| match e {
                TransportError::Remote { reason, .. } => {
                    RemoteError::from_wire(node, false, &reason)
                }
                other => RemoteError::unreachable(node, other),
            })?;
        Ok(stream
            .map(move |m| {
                m.map(|r| r.body).map_err(|s| {
                    let elsewhere = matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::Aborted
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    );
                    RemoteError::from_wire(node, elsewhere, s.message())
                })
            })
            .boxed())
    }
}

/// A query error as a gRPC status: `ABORTED` (retry on another replica, without counting
/// against this node's breaker) when the node cannot serve it now, else `INTERNAL`; the
/// message keeps the kind and SQLSTATE.
fn query_status(e: &shoal_query::QueryError) -> Status {
    let (elsewhere, text) = shoal_query::distributed::to_wire(e);
    if elsewhere {
        Status::aborted(text)
    } else {
        Status::internal(text)
    }
}

fn join_token() -> u64 {
    let mut b = shoal_common::time::now_nanos().to_le_bytes().to_vec();
    b.extend_from_slice(&std::process::id().to_le_bytes());
    shoal_common::hash::partition_hash(&b) | 1
}

/// Joins through the seeds; returns the cluster's answer. Never bootstraps.
pub async fn join(
    peers: &Peers,
    seeds: &[String],
    addrs: &NodeAddrs,
    timeout: Duration,
) -> Result<JoinReply, String> {
    let token = join_token();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(200);
    let mut errors: Vec<(String, String)> =
        seeds.iter().map(|s| (s.clone(), String::new())).collect();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        for (seed, last) in errors.iter_mut() {
            let req = JoinRequest {
                token,
                rpc_addr: addrs.rpc.clone(),
                gossip_addr: addrs.gossip.clone(),
                http_addr: addrs.http.clone(),
                pg_addr: addrs.pg.clone(),
            };
            let r = match peers.client_for_addr(seed) {
                Ok(mut c) => c
                    .join(req, Duration::from_secs(15))
                    .await
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(e),
            };
            match r {
                Ok(reply) => {
                    tracing::info!(seed = %seed, node_id = reply.node_id, cluster_id = %reply.cluster_id, "joined the cluster");
                    return Ok(reply);
                }
                Err(e) => {
                    tracing::warn!(seed = %seed, attempt, error = %e, "seed not usable; trying the next");
                    *last = e;
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let detail: Vec<String> = errors.iter().map(|(s, e)| format!("{s}: {e}")).collect();
            return Err(format!(
                "could not join through any seed within {} ms ({} attempts): {}",
                timeout.as_millis(),
                attempt,
                detail.join("; ")
            ));
        }
        let jitter = Duration::from_millis(join_token() % 100);
        tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A node with data checks that its seeds are in its own cluster: any seed that answers
/// with another cluster id makes the start fail. Unreachable seeds are only logged.
pub async fn check_seeds(peers: &Peers, seeds: &[String], cluster_id: &str) -> Result<(), String> {
    for seed in seeds {
        let r = match peers.client_for_addr(seed) {
            Ok(mut c) => c.hello(Duration::from_secs(3)).await,
            Err(e) => return Err(e),
        };
        match r {
            Ok(h) if h.cluster_id != cluster_id => {
                return Err(format!(
                    "this node's data belongs to cluster {cluster_id}, but seed {seed} is in cluster {}; refusing to join another cluster",
                    h.cluster_id
                ))
            }
            Ok(_) => {}
            Err(s) if s.message().starts_with(CLUSTER_MISMATCH) => {
                return Err(format!(
                    "this node's data belongs to cluster {cluster_id}, but seed {seed} refused it: {}",
                    s.message()
                ))
            }
            Err(s) => tracing::warn!(seed = %seed, error = %s.message(), "seed unreachable; continuing"),
        }
    }
    Ok(())
}

/// Runs until aborted: keeps this node registered with its current addresses, lets the
/// group-0 leader reconcile Raft membership with the registry, keeps the RPC envelope's
/// term current, and introduces SWIM to registered nodes it does not see alive.
/// What the maintenance loop is told at start.
pub struct MaintenanceConfig {
    /// This node bootstrapped the cluster (it registers itself ACTIVE).
    pub bootstrap: bool,
    pub max_voters: usize,
    /// `quiesce_after_ms` (zero: never quiesce).
    pub quiesce_after: Duration,
    /// `leader_balance_interval_ms` (zero: never balance).
    pub balance_every: Duration,
    /// `dead_replica_timeout_ms` (zero: never replace a host for being down).
    pub dead_replica_timeout: Duration,
    /// The data directory, whose `node.json` records whether this node hosts vshards.
    pub data_dir: std::path::PathBuf,
    /// For `Hello` round trips that measure clock offsets.
    pub peers: Arc<Peers>,
    pub clocks: Arc<shoal_membership::clock::ClockOffsets>,
}

/// Measures the clock offset to every registered peer (one `Hello` each, concurrently,
/// 1 s at most).
async fn measure_clocks(
    registry: &Registry,
    peers: &Peers,
    clocks: &shoal_membership::clock::ClockOffsets,
    me: u64,
) {
    let nodes = registry.catalog().read().nodes.clone();
    let probes = nodes
        .values()
        .filter(|n| n.id != me && n.state != NodeState::Decommissioned)
        // Not only those SWIM calls alive: a restarted node may still be catching up in
        // SWIM's view; an unreachable one fails fast behind its breaker.
        .map(|n| async move {
            let sent = shoal_common::time::now_nanos();
            let r = peers
                .call(n.id, &n.addrs.rpc, |mut c| async move {
                    c.hello(Duration::from_secs(1)).await
                })
                .await;
            let received = shoal_common::time::now_nanos();
            (n.id, r.map(|h| (h.wall_ns, sent, received)))
        });
    for (id, r) in futures::future::join_all(probes).await {
        if let Ok((wall, sent, received)) = r {
            if wall != 0 {
                clocks.record(
                    id,
                    shoal_membership::clock::Sample::from_round_trip(sent, wall, received),
                );
            }
        }
    }
    for n in nodes
        .values()
        .filter(|n| n.state == NodeState::Decommissioned)
    {
        clocks.forget(n.id);
    }
    // Judged (and a change logged) after every round, not only when a read asks.
    let has_peers = nodes
        .values()
        .any(|n| n.id != me && n.state != NodeState::Decommissioned);
    clocks.healthy(has_peers);
}

/// Prefix of the refusal of Raft traffic addressed to another node id.
pub const WRONG_NODE: &str = "wrong node";

/// How long SWIM has reported each node down, as seen by this node's maintenance loop.
#[derive(Default)]
struct DownSince(std::collections::BTreeMap<u64, tokio::time::Instant>);

struct SwimLiveness<'a> {
    membership: &'a Membership,
    down: &'a DownSince,
}

impl shoal_cluster::placement::Liveness for SwimLiveness<'_> {
    fn alive(&self, node: u64) -> bool {
        self.membership.state_of(node) == Some(MemberState::Alive)
    }
    fn down_for(&self, node: u64) -> Option<Duration> {
        self.down.0.get(&node).map(|t| t.elapsed())
    }
}

impl DownSince {
    /// Notes who SWIM reports DEAD or LEFT (or does not know at all) now.
    fn update(&mut self, membership: &Membership, nodes: impl Iterator<Item = u64>) {
        let now = tokio::time::Instant::now();
        let mut seen = std::collections::BTreeMap::new();
        for id in nodes {
            let down = matches!(
                membership.state_of(id),
                None | Some(MemberState::Dead | MemberState::Left)
            );
            if down {
                seen.insert(id, self.0.get(&id).copied().unwrap_or(now));
            }
        }
        self.0 = seen;
    }
}

/// On group 0's leader: proposes the replica replacements `placement::plan` asks for.
async fn replace_hosts(
    registry: &Registry,
    membership: &Membership,
    down: &DownSince,
    dead_replica_timeout: Duration,
) {
    let nodes = registry.catalog().read().nodes.clone();
    let live = SwimLiveness { membership, down };
    for r in shoal_cluster::placement::plan(&nodes, &live, dead_replica_timeout) {
        tracing::warn!(old = r.old, new = ?r.new, retire = r.retire, why = %r.why, "replacing a node's vshard replicas");
        let op = ClusterOp::ReplaceNode {
            old: r.old,
            new: r.new,
            retire: r.retire,
        };
        if let Err(e) = registry.propose_meta(Command::Cluster(op)).await {
            tracing::warn!(old = r.old, error = %e, "replacing a node's replicas failed; will retry");
        }
    }
}

/// Makes this node host vshards, or stop, as group 0's registry says, and records it in
/// `node.json` so a restart opens the right groups before it serves.
async fn follow_hosting(registry: &Registry, data_dir: &std::path::Path, entry: &NodeEntry) {
    let want = entry.hosts_vshards && entry.state != NodeState::Decommissioned;
    if want == registry.hosts_vshards() {
        return;
    }
    if want {
        if let Err(e) = crate::datadir::set_hosts_vshards(data_dir, true) {
            tracing::warn!(error = %e, "recording that this node hosts vshards; will retry");
            return;
        }
        if let Err(e) = registry.start_hosting().await {
            tracing::warn!(error = %e, "starting to host vshards; will retry");
        }
    } else {
        registry.stop_hosting().await;
        if let Err(e) = crate::datadir::set_hosts_vshards(data_dir, false) {
            tracing::warn!(error = %e, "recording that this node no longer hosts vshards");
        }
    }
}

pub fn spawn_maintenance(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    membership: Arc<Membership>,
    envelope: Arc<RwLock<Caller>>,
    cfg: MaintenanceConfig,
) -> tokio::task::JoinHandle<()> {
    let MaintenanceConfig {
        bootstrap,
        max_voters,
        quiesce_after,
        balance_every,
        dead_replica_timeout,
        data_dir,
        peers,
        clocks,
    } = cfg;
    tokio::spawn(async move {
        let mut balanced_at = tokio::time::Instant::now();
        let mut down = DownSince::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            tick.tick().await;
            round += 1;
            let view = registry.meta_view();
            envelope.write().term = view.term;
            if !view.caught_up {
                continue;
            }
            let me = shared.node_id;
            let entry = registry.catalog().read().nodes.get(&me).cloned();
            let op = match &entry {
                None => Some(ClusterOp::AddNode {
                    id: me,
                    token: 0,
                    addrs: shared.addrs.clone(),
                    state: if bootstrap {
                        NodeState::Active
                    } else {
                        NodeState::Joining
                    },
                    hosts_vshards: shared.hosts_vshards,
                    max_hosts: None,
                }),
                // Whether it hosts vshards is group 0's to say (a replacement may have
                // changed it while this node was away); the node follows, below.
                Some(n) if n.addrs != shared.addrs => Some(ClusterOp::UpdateAddrs {
                    id: me,
                    addrs: shared.addrs.clone(),
                    hosts_vshards: None,
                }),
                Some(_) => None,
            };
            if let Some(n) = &entry {
                follow_hosting(&registry, &data_dir, n).await;
            }
            if let Some(op) = op {
                if let Err(e) = registry.propose_meta(Command::Cluster(op)).await {
                    tracing::debug!(error = %e, "registering this node's addresses; will retry");
                }
            }
            if let Err(e) = registry
                .reconcile_members(max_voters, shared.replication_factor)
                .await
            {
                tracing::debug!(error = %e, "reconciling group 0 membership; will retry");
            }
            if view.leader == Some(me) {
                let ids = registry
                    .catalog()
                    .read()
                    .nodes
                    .keys()
                    .copied()
                    .collect::<Vec<_>>();
                down.update(&membership, ids.into_iter().filter(|id| *id != me));
                if round.is_multiple_of(4) {
                    replace_hosts(&registry, &membership, &down, dead_replica_timeout).await;
                }
            } else {
                // Only the leader decides; a new leader starts counting afresh.
                down = DownSince::default();
            }
            if round % 8 == 5 {
                measure_clocks(&registry, &peers, &clocks, me).await;
            }
            registry.shed_leaders_if_disk_full().await;
            // Closed timestamps go out every tick (only those that moved).
            registry.publish_closed().await;
            if !balance_every.is_zero() && balanced_at.elapsed() >= balance_every {
                balanced_at = tokio::time::Instant::now();
                registry.balance_leaders().await;
            }
            if !quiesce_after.is_zero() {
                registry.quiesce_idle(quiesce_after).await;
            }
            // Every 2 s: announce to registered nodes SWIM does not see alive (a fresh
            // start, a healed partition, a node back from the dead).
            if round % 8 == 1 {
                let nodes = registry.catalog().read().nodes.clone();
                for n in nodes.values() {
                    if n.id == me || n.state == NodeState::Decommissioned {
                        continue;
                    }
                    if matches!(
                        membership.state_of(n.id),
                        Some(MemberState::Alive | MemberState::Suspect)
                    ) {
                        continue;
                    }
                    if let Ok(addr) = n.addrs.gossip.parse() {
                        membership
                            .announce(SwimIdentity {
                                node_id: n.id,
                                gossip_addr: addr,
                                generation: 0,
                            })
                            .await;
                    }
                }
            }
        }
    })
}
