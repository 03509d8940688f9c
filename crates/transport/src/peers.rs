//! Connections to peers: one lazily connecting HTTP/2 channel per peer (every Raft group
//! and every other RPC to that peer multiplex over it; tonic reconnects it after a break),
//! a circuit breaker per peer, and an active prober that closes the breaker of a peer that
//! came back without waiting for traffic to try it.
//!
//! Breaker: CLOSED → (`breaker_failures` consecutive transport failures) → OPEN (calls fail
//! at once) → after `breaker_open` one trial call is let through (HALF_OPEN): success
//! closes it, failure opens it again. The prober probes every OPEN or HALF_OPEN peer every
//! `probe_interval` with a `Hello` and closes the breaker when one answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use shoal_consensus::transport::{RaftMessage, RaftTransport, TransportError};
use tonic::{Code, Status};

use crate::rpc::{channel, Caller, MetaRequest, PeerClient, RaftRequest};

#[derive(Clone, Debug)]
pub struct PeersConfig {
    pub max_message_bytes: usize,
    pub connect_timeout: Duration,
    /// Consecutive transport failures that open a peer's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls before letting one trial through.
    pub breaker_open: Duration,
    /// How often the prober probes peers whose breaker is open.
    pub probe_interval: Duration,
    /// Deadline of a forwarded group-0 command.
    pub forward_timeout: Duration,
    /// Mutual TLS with every peer (`certs_dir`), or plaintext.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    failures: u32,
    since: Instant,
}

impl Breaker {
    fn allow(&mut self, open_for: Duration) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open | BreakerState::HalfOpen if self.since.elapsed() >= open_for => {
                self.state = BreakerState::HalfOpen;
                self.since = Instant::now();
                true
            }
            _ => false,
        }
    }
}

pub struct Peer {
    pub node: u64,
    pub addr: String,
    client: PeerClient,
    breaker: Mutex<Breaker>,
}

impl Peer {
    pub fn client(&self) -> PeerClient {
        self.client.clone()
    }
}

/// Whether a failed call says the peer (or the path to it) is unhealthy, as opposed to a
/// healthy peer refusing this one request.
fn is_transport_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (s.code() == Code::Unknown && s.message().contains("connect"))
}

/// The node's view of its peers.
pub struct Peers {
    cfg: PeersConfig,
    envelope: Arc<RwLock<Caller>>,
    peers: RwLock<HashMap<u64, Arc<Peer>>>,
    resolve: Box<dyn Fn(u64) -> Option<String> + Send + Sync>,
}

impl Peers {
    /// `resolve` maps a node id to its advertised RPC address (from group 0's registry).
    pub fn new(
        cfg: PeersConfig,
        envelope: Arc<RwLock<Caller>>,
        resolve: impl Fn(u64) -> Option<String> + Send + Sync + 'static,
    ) -> Arc<Peers> {
        Arc::new(Peers {
            cfg,
            envelope,
            peers: Default::default(),
            resolve: Box::new(resolve),
        })
    }

    pub fn envelope(&self) -> &Arc<RwLock<Caller>> {
        &self.envelope
    }

    /// A client for an address that is not (yet) a known node, e.g. a seed.
    pub fn client_for_addr(&self, addr: &str) -> Result<PeerClient, String> {
        let ch = channel(addr, self.cfg.connect_timeout, self.cfg.tls.as_ref())?;
        Ok(PeerClient::new(
            ch,
            self.cfg.max_message_bytes,
            self.envelope.clone(),
        ))
    }

    /// The peer entry for `node`, (re)built when its address changed.
    pub fn peer(&self, node: u64, addr_hint: &str) -> Result<Arc<Peer>, TransportError> {
        let addr = (self.resolve)(node)
            .filter(|a| !a.is_empty())
            .or_else(|| (!addr_hint.is_empty()).then(|| addr_hint.to_string()))
            .ok_or_else(|| TransportError::Unreachable {
                node,
                reason: "no known address".into(),
            })?;
        if let Some(p) = self.peers.read().get(&node) {
            if p.addr == addr {
                return Ok(p.clone());
            }
        }
        let client = self
            .client_for_addr(&addr)
            .map_err(|reason| TransportError::Unreachable { node, reason })?;
        let peer = Arc::new(Peer {
            node,
            addr: addr.clone(),
            client,
            breaker: Mutex::new(Breaker {
                state: BreakerState::Closed,
                failures: 0,
                since: Instant::now(),
            }),
        });
        self.peers.write().insert(node, peer.clone());
        Ok(peer)
    }

    /// Runs `f` against `node` behind its breaker.
    pub async fn call<T, F, Fut>(
        &self,
        node: u64,
        addr_hint: &str,
        f: F,
    ) -> Result<T, TransportError>
    where
        F: FnOnce(PeerClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let peer = self.peer(node, addr_hint)?;
        if !peer.breaker.lock().allow(self.cfg.breaker_open) {
            return Err(TransportError::Unreachable {
                node,
                reason: "circuit breaker open".into(),
            });
        }
        let r = f(peer.client()).await;
        self.record(&peer, r.as_ref().err());
        r.map_err(|s| match s.code() {
            Code::DeadlineExceeded => TransportError::Timeout {
                node,
                after: Duration::ZERO,
            },
            Code::Unavailable
            | Code::Cancelled
            | Code::Aborted
            | Code::NotFound
            | Code::ResourceExhausted => TransportError::Unreachable {
                node,
                reason: s.message().to_string(),
            },
            _ => TransportError::Remote {
                node,
                reason: format!("{:?}: {}", s.code(), s.message()),
            },
        })
    }

    fn record(&self, peer: &Peer, err: Option<&Status>) {
        let mut b = peer.breaker.lock();
        match err {
            Some(s) if is_transport_failure(s) => {
                b.failures += 1;
                let trip = match b.state {
                    BreakerState::Closed => b.failures >= self.cfg.breaker_failures,
                    BreakerState::HalfOpen => true,
                    BreakerState::Open => false,
                };
                if trip {
                    if b.state == BreakerState::Closed {
                        tracing::warn!(node = peer.node, addr = %peer.addr, failures = b.failures, error = %s.message(), "circuit breaker opened");
                    }
                    b.state = BreakerState::Open;
                    b.since = Instant::now();
                }
            }
            _ => {
                if b.state != BreakerState::Closed {
                    tracing::info!(node = peer.node, addr = %peer.addr, "peer answered; circuit breaker closed");
                }
                b.state = BreakerState::Closed;
                b.failures = 0;
            }
        }
    }

    /// Every known peer's breaker state.
    pub fn breakers(&self) -> Vec<(u64, BreakerState)> {
        let mut v: Vec<_> = self
            .peers
            .read()
            .values()
            .map(|p| (p.node, p.breaker.lock().state))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    pub fn breaker(&self, node: u64) -> Option<BreakerState> {
        self.peers.read().get(&node).map(|p| p.breaker.lock().state)
    }

    /// Probes every peer whose breaker is not closed, until the returned handle is aborted.
    pub fn spawn_prober(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.cfg.probe_interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(peers) = weak.upgrade() else { return };
                let open: Vec<Arc<Peer>> = peers
                    .peers
                    .read()
                    .values()
                    .filter(|p| p.breaker.lock().state != BreakerState::Closed)
                    .cloned()
                    .collect();
                let ttl = peers.cfg.connect_timeout;
                let probes = open.into_iter().map(|p| {
                    let peers = peers.clone();
                    async move {
                        let r = p.client().hello(ttl).await;
                        if r.is_ok() {
                            peers.record(&p, None);
                        }
                    }
                });
                futures::future::join_all(probes).await;
            }
        })
    }
}

/// Consensus's transport over the peer connections.
pub struct ClusterTransport {
    pub peers: Arc<Peers>,
}

#[async_trait::async_trait]
impl RaftTransport for ClusterTransport {
    async fn send_raft(
        &self,
        target: u64,
        addr_hint: &str,
        msg: RaftMessage,
        ttl: Duration,
    ) -> Result<Bytes, TransportError> {
        let req = RaftRequest {
            group: msg.group,
            kind: msg.kind as u32,
            header: msg.header,
            entries: msg.entries,
            to_node: target,
        };
        self.peers
            .call(
                target,
                addr_hint,
                |mut c| async move { c.raft(req, ttl).await },
            )
            .await
            .map(|r| r.body)
            .map_err(|e| match e {
                TransportError::Timeout { node, .. } => {
                    TransportError::Timeout { node, after: ttl }
                }
                other => other,
            })
    }

    async fn forward_meta(&self, target: u64, command: Bytes) -> Result<Bytes, TransportError> {
        let ttl = self.peers.cfg.forward_timeout;
        self.peers
            .call(target, "", |mut c| async move {
                c.forward_meta(MetaRequest { command }, ttl).await
            })
            .await
            .map(|r| r.body)
    }
}
