//! The inter-node transport: the RPC service `shoal.peer.v1.Peer` and its bounded server,
//! connections to peers with circuit breakers and a reachability prober, and
//! `ClusterTransport`, consensus's `RaftTransport` over those connections.
//!
//! ```text
//!   peer ──gRPC/HTTP2──▶ RpcServer (conn cap, msg cap, in-flight budgets) ──▶ PeerHandler
//!   Raft groups ──RaftTransport──▶ ClusterTransport ──▶ Peers (channel + breaker per node)
//! ```
//!
//! Layering: this crate depends on `consensus` only for the `RaftTransport` seam (the trait
//! and its message and error types); it never depends on membership, the control plane,
//! query or server. What a request means is the `PeerHandler`'s business (server).

pub mod peers;
pub mod rpc;
pub mod server;
pub mod tls;
pub mod version;

pub use peers::{BreakerState, ClusterTransport, Peers, PeersConfig};
pub use rpc::{Caller, PeerClient, PeerHandler};
pub use server::{RpcServer, ServerLimits};
