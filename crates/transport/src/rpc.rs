//! The inter-node RPC service `shoal.peer.v1.Peer`: hand-written prost messages (no .proto,
//! no protoc) served through tonic's generic gRPC machinery.
//!
//! Every request carries its envelope in metadata: `x-shoal-cluster` (the sender's cluster
//! id, empty only for a node that has not joined yet), `x-shoal-node` (sender node id) and
//! `x-shoal-term` (the sender's view of group 0's term). The server checks the cluster id
//! once, before any handler runs: a different id is refused with `FAILED_PRECONDITION`
//! and a log line naming both ids.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

pub const SERVICE: &str = "shoal.peer.v1.Peer";
pub const HDR_CLUSTER: &str = "x-shoal-cluster";
pub const HDR_NODE: &str = "x-shoal-node";
pub const HDR_TERM: &str = "x-shoal-term";

/// Prefix of the message of a cluster-id refusal (clients match on it).
pub const CLUSTER_MISMATCH: &str = "cluster id mismatch";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub cluster_id: String,
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
    #[prost(uint32, tag = "3")]
    pub vshards: u32,
    #[prost(string, tag = "4")]
    pub rpc_addr: String,
    #[prost(string, tag = "5")]
    pub gossip_addr: String,
    #[prost(uint64, tag = "6")]
    pub generation: u64,
    /// Group 0's leader as this node sees it (0 = unknown).
    #[prost(uint64, tag = "7")]
    pub meta_leader: u64,
    #[prost(uint64, tag = "8")]
    pub meta_term: u64,
    /// The answering node's wall clock (unix ns) when it answered, for clock-offset
    /// measurement (0 from older nodes).
    #[prost(int64, tag = "9")]
    pub wall_ns: i64,
    /// The answering node's load report (JSON of the control plane's `NodeLoad`; empty from
    /// older nodes or before the first sample).
    #[prost(bytes = "bytes", tag = "10")]
    pub load: Bytes,
    /// The protocol version the answering node speaks (`version`; 0 from older nodes).
    #[prost(uint32, tag = "11")]
    pub protocol: u32,
    /// Its release.
    #[prost(string, tag = "12")]
    pub release: String,
    /// Group 0 records the calling node DECOMMISSIONED: its identity is refused for good
    /// (how a decommissioned node that was down, and so missed that entry, learns it).
    #[prost(bool, tag = "13")]
    pub caller_decommissioned: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinRequest {
    /// Random per joining process: a retried join answers the same id.
    #[prost(uint64, tag = "1")]
    pub token: u64,
    #[prost(string, tag = "2")]
    pub rpc_addr: String,
    #[prost(string, tag = "3")]
    pub gossip_addr: String,
    #[prost(string, tag = "4")]
    pub http_addr: String,
    #[prost(string, tag = "5")]
    pub pg_addr: String,
    /// The protocol version the joining node speaks (`version`; 0 from older nodes).
    #[prost(uint32, tag = "6")]
    pub protocol: u32,
    #[prost(string, tag = "7")]
    pub release: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinReply {
    #[prost(string, tag = "1")]
    pub cluster_id: String,
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
    #[prost(uint32, tag = "3")]
    pub vshards: u32,
    /// Whether the new node holds vshard replicas.
    #[prost(bool, tag = "4")]
    pub hosts_vshards: bool,
    /// The protocol version the answering node speaks (0 from older nodes).
    #[prost(uint32, tag = "5")]
    pub protocol: u32,
    #[prost(string, tag = "6")]
    pub release: String,
    /// The cluster's gossip key (SWIM datagrams are authenticated with it); empty from a
    /// cluster without one. Sent over mutual TLS when the cluster uses TLS.
    #[prost(bytes = "vec", tag = "7")]
    pub gossip_key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    #[prost(uint32, tag = "1")]
    pub group: u32,
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(bytes = "bytes", tag = "3")]
    pub header: Bytes,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub entries: Vec<Bytes>,
    /// The node the message is meant for (0: any). A node answering at an address that
    /// used to be another node's (say, one whose disk was wiped and that joined again
    /// under a new id) must refuse it: acting on another node's Raft traffic would count
    /// its log and votes as that node's.
    #[prost(uint64, tag = "5")]
    pub to_node: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesReply {
    #[prost(bytes = "bytes", tag = "1")]
    pub body: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaRequest {
    /// JSON of a group-0 command.
    #[prost(bytes = "bytes", tag = "1")]
    pub command: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SqlRequest {
    #[prost(string, tag = "1")]
    pub sql: String,
}

/// A piece of a query plan to run against the receiver's vshard replicas.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FragmentRequest {
    /// The fragment, serialized with datafusion-proto and Shoal's extension codec.
    #[prost(bytes = "bytes", tag = "1")]
    pub plan: Bytes,
    /// The partition (vshard) to run.
    #[prost(uint32, tag = "2")]
    pub partition: u32,
}

/// A streamed answer: Arrow IPC chunks.
pub type ChunkStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<BytesReply, Status>> + Send + 'static>>;

/// How long a fragment's stream may run at most (the caller's statement timeout usually
/// ends it much sooner by dropping it).
pub const FRAGMENT_DEADLINE: Duration = Duration::from_secs(3600);

/// Who sent a request, from its envelope.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub cluster_id: String,
    pub node_id: u64,
    pub term: u64,
}

/// What a node does with each RPC. Implemented by the server crate.
#[async_trait::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// This node's cluster id (requests from any other cluster are refused before a
    /// handler sees them).
    fn cluster_id(&self) -> String;
    async fn hello(&self, caller: Caller) -> Result<HelloReply, Status>;
    async fn join(&self, caller: Caller, req: JoinRequest) -> Result<JoinReply, Status>;
    async fn raft(&self, caller: Caller, req: RaftRequest) -> Result<BytesReply, Status>;
    async fn forward_meta(&self, caller: Caller, req: MetaRequest) -> Result<BytesReply, Status>;
    /// Runs one SQL statement here and answers its result as an Arrow IPC stream.
    async fn sql(&self, caller: Caller, req: SqlRequest) -> Result<BytesReply, Status>;
    /// Runs one partition of a plan fragment here and streams its output.
    async fn fragment(&self, caller: Caller, req: FragmentRequest) -> Result<ChunkStream, Status>;
}

/// Limits of the RPC service itself (the connection count is bounded by the listener).
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Largest request or response message; the length prefix is checked before anything
    /// is allocated.
    pub max_message_bytes: usize,
    /// Requests other than Raft messages worked on at once; more are refused at once with
    /// `RESOURCE_EXHAUSTED` (retryable) instead of queueing without bound.
    pub max_inflight: usize,
    /// Raft messages handled at once (their own budget, so queries cannot starve
    /// heartbeats into elections).
    pub max_inflight_raft: usize,
}

struct Inner<H> {
    handler: Arc<H>,
    limits: ServiceLimits,
    work: Arc<Semaphore>,
    raft: Arc<Semaphore>,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
}

/// The tower service tonic's server runs.
pub struct PeerService<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for PeerService<H> {
    fn clone(&self) -> Self {
        PeerService {
            inner: self.inner.clone(),
        }
    }
}

impl<H> NamedService for PeerService<H> {
    const NAME: &'static str = SERVICE;
}

impl<H: PeerHandler> PeerService<H> {
    pub fn new(handler: Arc<H>, limits: ServiceLimits) -> Self {
        let work = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
        let raft = Arc::new(Semaphore::new(limits.max_inflight_raft.max(1)));
        PeerService {
            inner: Arc::new(Inner {
                handler,
                limits,
                work,
                raft,
                inflight: Default::default(),
            }),
        }
    }

    /// Requests being worked on now (all kinds).
    pub fn inflight(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inner.inflight.clone()
    }
}

fn caller_of<T>(req: &Request<T>) -> Caller {
    let m = req.metadata();
    let text = |k: &str| {
        m.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    Caller {
        cluster_id: text(HDR_CLUSTER),
        node_id: text(HDR_NODE).parse().unwrap_or(0),
        term: text(HDR_TERM).parse().unwrap_or(0),
    }
}

/// Refuses a request from another cluster. Only `Hello` and `Join` may come without an id
/// (a node that has not joined anything yet).
fn check_cluster(ours: &str, caller: &Caller, anonymous_ok: bool) -> Result<(), Status> {
    if caller.cluster_id == ours || (anonymous_ok && caller.cluster_id.is_empty()) {
        return Ok(());
    }
    tracing::warn!(
        ours = %ours,
        theirs = %caller.cluster_id,
        from_node = caller.node_id,
        "refused an RPC from another cluster"
    );
    Err(Status::failed_precondition(format!(
        "{CLUSTER_MISMATCH}: this node is in cluster {ours}, the caller (node {}) is in cluster {}",
        caller.node_id,
        if caller.cluster_id.is_empty() {
            "<none>"
        } else {
            &caller.cluster_id
        }
    )))
}

struct InflightGuard(Arc<std::sync::atomic::AtomicUsize>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Which in-flight budget a method draws from.
enum Budget {
    /// Joins, forwarded writes, SQL: `rpc_max_inflight`.
    Work,
    /// Raft messages: `rpc_max_inflight_raft`.
    Raft,
    /// `Hello` (constant work; health probes must not be shed).
    Free,
}

/// Checks a request's cluster id and takes its in-flight budget; both are held until the
/// returned guard drops.
fn admit<H: PeerHandler>(
    inner: &Inner<H>,
    caller: &Caller,
    anonymous_ok: bool,
    budget: Budget,
) -> Result<(Option<tokio::sync::OwnedSemaphorePermit>, InflightGuard), Status> {
    check_cluster(&inner.handler.cluster_id(), caller, anonymous_ok)?;
    let permit =
        match budget {
            Budget::Work => {
                Some(
                    inner.work.clone().try_acquire_owned().map_err(|_| {
                        Status::resource_exhausted("rpc_max_inflight reached; retry")
                    })?,
                )
            }
            Budget::Raft => {
                Some(inner.raft.clone().try_acquire_owned().map_err(|_| {
                    Status::resource_exhausted("rpc_max_inflight_raft reached; retry")
                })?)
            }
            Budget::Free => None,
        };
    inner
        .inflight
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok((permit, InflightGuard(inner.inflight.clone())))
}

macro_rules! unary {
    ($inner:expr, $req:expr, $Req:ty, $Resp:ty, $anon:expr, $budget:expr, |$h:ident, $c:ident, $m:ident| $body:expr) => {{
        let inner = $inner.clone();
        Box::pin(async move {
            let max = inner.limits.max_message_bytes;
            let svc = tower::service_fn(move |r: Request<$Req>| {
                let inner = inner.clone();
                async move {
                    let $c = caller_of(&r);
                    let _admitted = admit(&inner, &$c, $anon, $budget)?;
                    let $h = inner.handler.clone();
                    let $m = r.into_inner();
                    $body.await.map(Response::new)
                }
            });
            let mut grpc = Grpc::new(ProstCodec::<$Resp, $Req>::default())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            Ok(grpc.unary(svc, $req).await)
        })
    }};
}

impl<H: PeerHandler, B> Service<http::Request<B>> for PeerService<H>
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            "/shoal.peer.v1.Peer/Hello" => {
                unary!(
                    self.inner,
                    req,
                    HelloRequest,
                    HelloReply,
                    true,
                    Budget::Free,
                    |h, c, _m| h.hello(c)
                )
            }
            "/shoal.peer.v1.Peer/Join" => {
                unary!(
                    self.inner,
                    req,
                    JoinRequest,
                    JoinReply,
                    true,
                    Budget::Work,
                    |h, c, m| h.join(c, m)
                )
            }
            "/shoal.peer.v1.Peer/Raft" => {
                unary!(
                    self.inner,
                    req,
                    RaftRequest,
                    BytesReply,
                    false,
                    Budget::Raft,
                    |h, c, m| h.raft(c, m)
                )
            }
            "/shoal.peer.v1.Peer/ForwardMeta" => {
                unary!(
                    self.inner,
                    req,
                    MetaRequest,
                    BytesReply,
                    false,
                    Budget::Work,
                    |h, c, m| h.forward_meta(c, m)
                )
            }
            "/shoal.peer.v1.Peer/Sql" => {
                unary!(
                    self.inner,
                    req,
                    SqlRequest,
                    BytesReply,
                    false,
                    Budget::Work,
                    |h, c, m| h.sql(c, m)
                )
            }
            "/shoal.peer.v1.Peer/Fragment" => {
                let inner = self.inner.clone();
                Box::pin(async move {
                    let max = inner.limits.max_message_bytes;
                    let svc = tower::service_fn(move |r: Request<FragmentRequest>| {
                        let inner = inner.clone();
                        async move {
                            let c = caller_of(&r);
                            let admitted = admit(&inner, &c, false, Budget::Work)?;
                            let stream = inner.handler.fragment(c, r.into_inner()).await?;
                            // The budget stays taken for as long as the stream runs.
                            let stream = stream.map(move |m| {
                                let _ = &admitted;
                                m
                            });
                            Ok::<_, Status>(Response::new(Box::pin(stream) as ChunkStream))
                        }
                    });
                    let mut grpc = Grpc::new(ProstCodec::<BytesReply, FragmentRequest>::default())
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max);
                    Ok(grpc.server_streaming(svc, req).await)
                })
            }
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client for one peer over a shared HTTP/2 connection (cloning is cheap).
#[derive(Clone)]
pub struct PeerClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
    envelope: Arc<parking_lot::RwLock<Caller>>,
}

impl PeerClient {
    pub fn new(
        channel: tonic::transport::Channel,
        max_message_bytes: usize,
        envelope: Arc<parking_lot::RwLock<Caller>>,
    ) -> PeerClient {
        PeerClient {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            envelope,
        }
    }

    async fn unary<Q, R>(
        &mut self,
        method: &'static str,
        msg: Q,
        ttl: Duration,
    ) -> Result<R, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let req = self.request(msg, ttl).await?;
        let path = http::uri::PathAndQuery::from_static(method);
        let codec = ProstCodec::<Q, R>::default();
        let call = self.grpc.unary(req, path, codec);
        match tokio::time::timeout(ttl, call).await {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {ttl:?}"
            ))),
        }
    }

    /// A request carrying this node's envelope, once the connection is ready.
    async fn request<Q>(&mut self, msg: Q, ttl: Duration) -> Result<Request<Q>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection: {e}")))?;
        let mut req = Request::new(msg);
        req.set_timeout(ttl);
        {
            let env = self.envelope.read();
            let m = req.metadata_mut();
            if let Ok(v) = env.cluster_id.parse() {
                m.insert(HDR_CLUSTER, v);
            }
            if let Ok(v) = env.node_id.to_string().parse() {
                m.insert(HDR_NODE, v);
            }
            if let Ok(v) = env.term.to_string().parse() {
                m.insert(HDR_TERM, v);
            }
        }
        Ok(req)
    }

    /// Starts a fragment on the peer: waits up to `open` for the stream to open; the stream
    /// itself may run up to [`FRAGMENT_DEADLINE`].
    pub async fn fragment(
        &mut self,
        req: FragmentRequest,
        open: Duration,
    ) -> Result<tonic::Streaming<BytesReply>, Status> {
        let req = self.request(req, FRAGMENT_DEADLINE).await?;
        let path = http::uri::PathAndQuery::from_static("/shoal.peer.v1.Peer/Fragment");
        let codec = ProstCodec::<FragmentRequest, BytesReply>::default();
        let call = self.grpc.server_streaming(req, path, codec);
        match tokio::time::timeout(open, call).await {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the fragment did not start within {open:?}"
            ))),
        }
    }

    pub async fn hello(&mut self, ttl: Duration) -> Result<HelloReply, Status> {
        self.unary("/shoal.peer.v1.Peer/Hello", HelloRequest {}, ttl)
            .await
    }

    pub async fn join(&mut self, req: JoinRequest, ttl: Duration) -> Result<JoinReply, Status> {
        self.unary("/shoal.peer.v1.Peer/Join", req, ttl).await
    }

    pub async fn raft(&mut self, req: RaftRequest, ttl: Duration) -> Result<BytesReply, Status> {
        self.unary("/shoal.peer.v1.Peer/Raft", req, ttl).await
    }

    pub async fn forward_meta(
        &mut self,
        req: MetaRequest,
        ttl: Duration,
    ) -> Result<BytesReply, Status> {
        self.unary("/shoal.peer.v1.Peer/ForwardMeta", req, ttl)
            .await
    }

    pub async fn sql(&mut self, sql: String, ttl: Duration) -> Result<BytesReply, Status> {
        self.unary("/shoal.peer.v1.Peer/Sql", SqlRequest { sql }, ttl)
            .await
    }
}

/// A lazily connecting channel to `addr` with Shoal's transport settings.
pub fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&Arc<crate::tls::Tls>>,
) -> Result<tonic::transport::Channel, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true);
    let Some(tls) = tls else {
        return Ok(ep.connect_lazy());
    };
    // Mutual TLS: the peer's certificate must be the cluster CA's and name the address
    // dialled; ours goes the other way. `connect_timeout` bounds connect and handshake.
    let name = crate::tls::server_name(addr)?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(&[b"h2"]));
    let addr = addr.to_string();
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })),
    )
}
