//! The cluster layer's moving parts that are not Raft: the inter-node RPC service and its
//! bounded server, connections to peers with circuit breakers and a prober, and SWIM
//! membership.
//!
//! ```text
//!   peer ──gRPC/HTTP2──▶ RpcServer (conn cap, msg cap, in-flight budgets) ──▶ PeerHandler
//!   Raft groups ──RaftTransport──▶ ClusterTransport ──▶ Peers (channel + breaker per node)
//!   UDP ◀──▶ Membership (foca) ──subscribers──▶ routing hints, SHOW NODES
//! ```

pub mod clock;
pub mod peers;
pub mod rpc;
pub mod server;
pub mod swim;

pub use peers::{BreakerState, ClusterTransport, Peers, PeersConfig};
pub use rpc::{Caller, PeerClient, PeerHandler};
pub use server::{RpcServer, ServerLimits};
pub use swim::{MemberEvent, MemberState, Membership, NodeIdentity, SwimConfig};
