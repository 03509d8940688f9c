//! Replica replacement: which vshard hosts give up their replicas, and to whom.
//!
//! Decided on group 0's leader from the node registry and SWIM's view, then proposed to
//! group 0 as [`ClusterOp::ReplaceNode`](crate::ClusterOp::ReplaceNode); the vshard groups'
//! leaders then make Raft membership follow (learner → caught up → voter → the old replica
//! removed, see `Registry::reconcile_members`). Pure: no I/O and no clock — the caller says
//! how long each node has been down.
//!
//! Two reasons to replace a host:
//! - **Superseded**: a node registered later under the same RPC address. An address is one
//!   process, so the old identity is gone for good — typically a node whose disk was wiped
//!   and that joined again. The old node is retired (DECOMMISSIONED), so it also leaves
//!   group 0's voters; it could never come back anyway (its Raft state is gone, and a node
//!   that forgot its votes must never vote under its old id).
//! - **Dead too long**: SWIM has reported the host down for `dead_replica_timeout`. Its
//!   replicas move to an alive, ACTIVE node that hosts none; the old node stays registered
//!   and may come back (as a node without replicas). With no such node, nothing moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_consensus::NodeEntry;
use shoal_consensus::NodeState;

/// One change to propose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The host giving up its replicas (or, with `retire`, the identity being retired).
    pub old: u64,
    /// The node taking its replicas, if the old one hosted any and a taker exists.
    pub new: Option<u64>,
    /// Mark `old` DECOMMISSIONED (its identity is gone for good).
    pub retire: bool,
    /// For the log line.
    pub why: String,
}

/// What the plan needs to know of a node besides its registry entry.
pub trait Liveness {
    /// Whether SWIM reports the node ALIVE now.
    fn alive(&self, node: u64) -> bool;
    /// How long SWIM has reported the node down (SUSPECT does not count), if it does.
    fn down_for(&self, node: u64) -> Option<Duration>;
}

/// The replacements to propose now. `dead_replica_timeout` zero never replaces a host for
/// being down (superseded identities are still retired).
pub fn plan(
    nodes: &BTreeMap<u64, NodeEntry>,
    live: &dyn Liveness,
    dead_replica_timeout: Duration,
) -> Vec<Replacement> {
    let current = |n: &&NodeEntry| n.state != NodeState::Decommissioned;
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    // Nodes that could take a host's replicas: alive, caught up, hosting none.
    let takers = |taken: &mut BTreeSet<u64>, prefer: Option<u64>| -> Option<u64> {
        let ok =
            |n: &NodeEntry| n.state == NodeState::Active && !n.hosts_vshards && live.alive(n.id);
        let pick = prefer
            .and_then(|p| nodes.get(&p))
            .filter(|n| ok(n) && !taken.contains(&n.id))
            .or_else(|| {
                nodes
                    .values()
                    .find(|n| ok(n) && current(n) && !taken.contains(&n.id))
            })
            .map(|n| n.id);
        if let Some(id) = pick {
            taken.insert(id);
        }
        pick
    };
    let mut out = vec![];
    for old in nodes.values().filter(current) {
        let successor = nodes
            .values()
            .filter(current)
            .find(|n| n.id > old.id && !old.addrs.rpc.is_empty() && n.addrs.rpc == old.addrs.rpc);
        if let Some(s) = successor {
            let new = if old.hosts_vshards {
                match takers(&mut taken, Some(s.id)) {
                    Some(t) => Some(t),
                    // Retiring it now would leave its replicas to nobody; wait until the
                    // successor (or another node) can take them.
                    None => continue,
                }
            } else {
                None
            };
            out.push(Replacement {
                old: old.id,
                new,
                retire: true,
                why: format!(
                    "node {} registered at its address {} (a new identity: its data is gone)",
                    s.id, old.addrs.rpc
                ),
            });
            continue;
        }
        if !old.hosts_vshards || dead_replica_timeout.is_zero() {
            continue;
        }
        let Some(down) = live.down_for(old.id) else {
            continue;
        };
        if down < dead_replica_timeout {
            continue;
        }
        if let Some(new) = takers(&mut taken, None) {
            out.push(Replacement {
                old: old.id,
                new: Some(new),
                retire: false,
                why: format!(
                    "down for {} s (dead_replica_timeout_ms = {})",
                    down.as_secs(),
                    dead_replica_timeout.as_millis()
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_consensus::NodeAddrs;

    struct View {
        alive: BTreeSet<u64>,
        down: BTreeMap<u64, Duration>,
    }
    impl Liveness for View {
        fn alive(&self, node: u64) -> bool {
            self.alive.contains(&node)
        }
        fn down_for(&self, node: u64) -> Option<Duration> {
            self.down.get(&node).copied()
        }
    }

    fn node(id: u64, rpc: &str, hosts: bool, state: NodeState) -> (u64, NodeEntry) {
        (
            id,
            NodeEntry {
                id,
                addrs: NodeAddrs {
                    rpc: rpc.into(),
                    ..Default::default()
                },
                state,
                token: 0,
                hosts_vshards: hosts,
            },
        )
    }

    fn three_hosts_and(extra: &[(u64, &str, bool, NodeState)]) -> BTreeMap<u64, NodeEntry> {
        let mut m: BTreeMap<u64, NodeEntry> = [
            node(1, "a:1", true, NodeState::Active),
            node(2, "b:1", true, NodeState::Active),
            node(3, "c:1", true, NodeState::Active),
        ]
        .into();
        for (id, rpc, hosts, state) in extra {
            m.extend([node(*id, rpc, *hosts, *state)]);
        }
        m
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn a_healthy_cluster_moves_nothing() {
        let nodes = three_hosts_and(&[(4, "d:1", false, NodeState::Active)]);
        let v = View {
            alive: [1, 2, 3, 4].into(),
            down: [].into(),
        };
        assert_eq!(plan(&nodes, &v, T), vec![]);
    }

    #[test]
    fn a_host_down_past_the_timeout_hands_its_replicas_to_an_alive_non_host() {
        let nodes = three_hosts_and(&[
            (4, "d:1", false, NodeState::Joining),
            (5, "e:1", false, NodeState::Active),
            (6, "f:1", false, NodeState::Active),
        ]);
        let v = View {
            // 4 is still joining, 5 is down: 6 takes over.
            alive: [1, 3, 4, 6].into(),
            down: [(2, T), (5, T * 2)].into(),
        };
        let p = plan(&nodes, &v, T);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].old, p[0].new, p[0].retire), (2, Some(6), false));
    }

    #[test]
    fn a_host_down_briefly_or_with_no_taker_keeps_its_replicas() {
        let nodes = three_hosts_and(&[(4, "d:1", false, NodeState::Active)]);
        let briefly = View {
            alive: [1, 3, 4].into(),
            down: [(2, T / 2)].into(),
        };
        assert_eq!(plan(&nodes, &briefly, T), vec![]);
        let no_taker = View {
            alive: [1, 3].into(),
            down: [(2, T * 3), (4, T)].into(),
        };
        assert_eq!(plan(&nodes, &no_taker, T), vec![]);
        // A zero timeout turns replacement of down hosts off.
        let long = View {
            alive: [1, 3, 4].into(),
            down: [(2, T * 100)].into(),
        };
        assert_eq!(plan(&nodes, &long, Duration::ZERO), vec![]);
    }

    #[test]
    fn two_dead_hosts_never_get_the_same_taker() {
        let nodes = three_hosts_and(&[(4, "d:1", false, NodeState::Active)]);
        let v = View {
            alive: [1, 4].into(),
            down: [(2, T), (3, T)].into(),
        };
        let p = plan(&nodes, &v, T);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].old, p[0].new), (2, Some(4)));
    }

    #[test]
    fn a_node_registered_again_at_the_same_address_retires_the_old_identity() {
        // Node 3's disk was wiped; it joined again as node 4 on the same address.
        let nodes = three_hosts_and(&[(4, "c:1", false, NodeState::Joining)]);
        let v = View {
            alive: [1, 2, 4].into(),
            down: [(3, Duration::from_secs(1))].into(),
        };
        // Not while the successor is still joining: the old host's replicas need a taker.
        assert_eq!(plan(&nodes, &v, T), vec![]);
        let caught_up = three_hosts_and(&[(4, "c:1", false, NodeState::Active)]);
        let p = plan(&caught_up, &v, T);
        assert_eq!((p[0].old, p[0].new, p[0].retire), (3, Some(4), true));
        // A retired identity is not planned again, and a non-host is only retired.
        let mut done = caught_up.clone();
        done.get_mut(&3).unwrap().state = NodeState::Decommissioned;
        done.get_mut(&3).unwrap().hosts_vshards = false;
        done.get_mut(&4).unwrap().hosts_vshards = true;
        assert_eq!(plan(&done, &v, T), vec![]);
        let non_host = [
            node(1, "a:1", true, NodeState::Active),
            node(2, "b:1", false, NodeState::Active),
            node(5, "b:1", false, NodeState::Active),
        ]
        .into();
        let p = plan(&non_host, &v, T);
        assert_eq!((p[0].old, p[0].new, p[0].retire), (2, None, true));
    }
}
