//! A node's place in its cluster: binding and advertising the inter-node addresses,
//! joining through seeds (or bootstrapping), and answering peers' RPCs. Keeping group 0's
//! registry, Raft membership, placement and SWIM in step is the control plane's
//! (`shoal_cluster::controller`).
//!
//! Join protocol (a new node, empty data directory, `--join a,b`):
//! 1. `Join{token, addresses}` to each seed in turn until one answers; the seed proposes
//!    `AddNode` to group 0 (forwarding to the leader), which assigns the node id.
//! 2. The node records `{cluster id, node id}` in `node.json`, then starts its groups:
//!    group 0 uninitialized, waiting for the leader.
//! 3. The control plane on group 0's leader adds the node to group 0 as a learner,
//!    replicates the catalog to it, marks it ACTIVE once caught up and makes it a voter
//!    when that keeps the voter count odd (up to `max_voters`). The node is ready when it
//!    has caught up. Replicas of vshards are placed on it from then on.
//!
//! A retried `Join` with the same token answers the same id. Seeds never start anything:
//! if no seed answers within `join_timeout_ms` the node exits, naming each seed's error.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use shoal_consensus::transport::{RaftMessage, RaftRpc, TransportError};
use shoal_consensus::{ClusterOp, Command, NodeAddrs, NodeState, Registry, Response};
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
    /// The control plane (its load report goes out with every `Hello`).
    pub controller: OnceLock<Arc<shoal_cluster::controller::Controller>>,
    /// Largest RPC message (a streamed fragment's chunks stay well below it).
    pub max_message_bytes: usize,
    /// The cluster's gossip key, handed to joining nodes.
    pub gossip_key: Option<[u8; crate::datadir::GOSSIP_KEY_BYTES]>,
}

impl Shared {
    fn registry(&self) -> Result<&Arc<Registry>, Status> {
        self.registry
            .get()
            .ok_or_else(|| Status::aborted("the node is still starting"))
    }
}

impl Shared {
    /// Whether group 0 (as applied here) records node `id` DECOMMISSIONED.
    fn decommissioned(&self, id: u64) -> bool {
        self.registry.get().is_some_and(|r| {
            r.catalog()
                .read()
                .nodes
                .get(&id)
                .is_some_and(|n| n.state == shoal_consensus::NodeState::Decommissioned)
        })
    }
}

#[async_trait::async_trait]
impl PeerHandler for Shared {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    async fn hello(&self, caller: Caller) -> Result<HelloReply, Status> {
        let view = self
            .registry
            .get()
            .map(|r| r.meta_view())
            .unwrap_or_default();
        Ok(HelloReply {
            caller_decommissioned: self.decommissioned(caller.node_id),
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            vshards: self.vshards,
            rpc_addr: self.addrs.rpc.clone(),
            gossip_addr: self.gossip_addr.to_string(),
            generation: self.generation,
            meta_leader: view.leader.unwrap_or(0),
            meta_term: view.term,
            wall_ns: shoal_common::time::now_nanos(),
            protocol: shoal_transport::version::announced(),
            release: shoal_transport::version::RELEASE.to_string(),
            load: self
                .controller
                .get()
                .map(|c| {
                    serde_json::to_vec(&*c.local_load())
                        .unwrap_or_default()
                        .into()
                })
                .unwrap_or_default(),
        })
    }

    async fn join(&self, _caller: Caller, req: JoinRequest) -> Result<JoinReply, Status> {
        if let Some(why) = shoal_transport::version::refuse(req.protocol, &req.release) {
            tracing::warn!(rpc = %req.rpc_addr, error = %why, "refused a join");
            return Err(Status::failed_precondition(why));
        }
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
        // A new node holds no replica yet: the control plane places replicas on it once it
        // is ACTIVE (growing vshards to the replication factor, then rebalancing).
        let op = ClusterOp::AddNode {
            id: 0,
            token: req.token,
            addrs: addrs.clone(),
            state: NodeState::Joining,
            hosts_vshards: false,
            max_hosts: None,
        };
        match registry
            .propose_meta(Command::Cluster(op))
            .await
            .map_err(status_of)?
        {
            Response::Node { id } => {
                tracing::info!(node = id, rpc = %addrs.rpc, "registered a joining node");
                Ok(JoinReply {
                    cluster_id: self.cluster_id.clone(),
                    node_id: id,
                    vshards: self.vshards,
                    hosts_vshards: false,
                    protocol: shoal_transport::version::announced(),
                    release: shoal_transport::version::RELEASE.to_string(),
                    gossip_key: self.gossip_key.map(|k| k.to_vec()).unwrap_or_default(),
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
        if self.decommissioned(caller.node_id) {
            // A decommissioned node that restarted (or never heard): no vote or append
            // of its may disturb the groups it left.
            return Err(Status::permission_denied(format!(
                "node {} is decommissioned: the cluster refuses it for good",
                caller.node_id
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
                protocol: shoal_transport::version::announced(),
                release: shoal_transport::version::RELEASE.to_string(),
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
                    if let Some(why) =
                        shoal_transport::version::refuse(reply.protocol, &reply.release)
                    {
                        return Err(format!("seed {seed}: {why}"));
                    }
                    tracing::info!(seed = %seed, node_id = reply.node_id, cluster_id = %reply.cluster_id, "joined the cluster");
                    return Ok(reply);
                }
                // A release the cluster does not speak is final: no retry makes it fit.
                Err(e) if e.starts_with(shoal_transport::version::MISMATCH) => {
                    return Err(format!("seed {seed} refused this node: {e}"));
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
            Ok(h) => {
                if let Some(why) = shoal_transport::version::refuse(h.protocol, &h.release) {
                    return Err(format!("seed {seed}: {why}"));
                }
            }
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

/// Prefix of the refusal of Raft traffic addressed to another node id.
pub const WRONG_NODE: &str = "wrong node";

/// The control plane's reports, as the `system` tables show them.
pub struct Reports(pub Arc<shoal_cluster::controller::Controller>);

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reports")
    }
}

impl shoal_query::system::ClusterReports for Reports {
    fn leader_of(&self, v: u32) -> Option<u64> {
        self.0.reported_leader(v)
    }

    fn vshard_bytes(&self, v: u32) -> Option<u64> {
        self.0.reported_vshard_bytes(v)
    }

    fn node(&self, node: u64) -> Option<shoal_query::system::NodeReport> {
        let l = self.0.load_of(node)?;
        Some(shoal_query::system::NodeReport {
            leaderships: l.vshards.iter().filter(|v| v.leader_term.is_some()).count() as u64,
            data_bytes: l.data_bytes,
            disk_free_bytes: l.disk_free_bytes,
            cpu: l.cpu,
            version: l.version.clone(),
            started_ms: l.started_ms,
            cert_expires_ms: l.cert_expires_ms,
        })
    }

    fn decommission(&self, node: u64) -> Option<String> {
        self.0.decommission_progress(node).map(|p| p.to_string())
    }
}
