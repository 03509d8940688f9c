//! Who is in the cluster and alive, as far as the network can tell: SWIM membership (foca)
//! over UDP with subscribers, and the clock offsets to peers.
//!
//! Layering: advisory only, and depends on nothing of Shoal's but `common`. Raft (group 0) is the source
//! of truth for who belongs to the cluster; SWIM says who answers. It knows nothing of
//! Raft groups, SQL or placement.
//!
//! ```text
//!   UDP ◀──▶ Membership (foca) ──subscribers──▶ failover, routing, the control plane
//! ```

pub mod clock;
pub mod seal;
pub mod swim;

pub use swim::{MemberEvent, MemberState, Membership, NodeIdentity, SwimConfig};
