//! Whether nodes may be decommissioned: the safety check that runs before any is marked
//! DECOMMISSIONING, so a decommission that cannot finish never starts. Pure: a
//! [`ClusterView`] and the nodes to remove in, every reason to refuse out (each naming the
//! vshard it blocks where there is one).
//!
//! A decommission can finish when, with the leaving nodes gone:
//! - at least `replication_factor` usable nodes remain (ACTIVE, alive, not superseded);
//! - every vshard with replicas on them has that many usable nodes holding none of it to
//!   take them;
//! - the bytes to copy fit on those nodes below `max_disk_fraction` (each vshard's bytes
//!   on at least one candidate, and all of them on the candidates together).
//!
//! A leaving node that is down is fine: its replicas are rebuilt from the others, and its
//! vshards' sizes are taken from the replicas that report them.

use std::collections::{BTreeMap, BTreeSet};

use shoal_consensus::NodeState;

use crate::placement::PlacementConfig;
use crate::view::ClusterView;

/// One reason a decommission would not finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// The vshard it blocks, when it is about one.
    pub vshard: Option<u32>,
    pub reason: String,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vshard {
            Some(v) => write!(f, "vshard {v}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn blocker(vshard: Option<u32>, reason: String) -> Blocker {
    Blocker { vshard, reason }
}

/// A usable node's room for more data below `max_disk_fraction`, in bytes (unbounded when
/// it has not reported its disk).
fn headroom(view: &ClusterView, cfg: &PlacementConfig, n: u64) -> u64 {
    let Some(l) = view.nodes.get(&n).and_then(|x| x.load.as_ref()) else {
        return u64::MAX;
    };
    if l.disk_total_bytes == 0 {
        return u64::MAX;
    }
    let floor = ((1.0 - cfg.max_disk_fraction) * l.disk_total_bytes as f64) as u64;
    l.disk_free_bytes.saturating_sub(floor)
}

/// Vshard `v`'s size as its replicas report it (the largest report; 0 when none did).
fn vshard_bytes(view: &ClusterView, v: u32) -> u64 {
    view.nodes
        .values()
        .filter_map(|n| n.load.as_ref())
        .flat_map(|l| l.vshards.iter())
        .filter(|x| x.vshard == v)
        .map(|x| x.bytes)
        .max()
        .unwrap_or(0)
}

/// Every reason decommissioning `leaving` would not finish; empty when it can start.
pub fn check(view: &ClusterView, leaving: &[u64], cfg: &PlacementConfig) -> Vec<Blocker> {
    let mut out = vec![];
    let leaving: BTreeSet<u64> = leaving.iter().copied().collect();
    for n in &leaving {
        match view.nodes.get(n).map(|x| x.state) {
            None => out.push(blocker(None, format!("node {n} is not registered"))),
            Some(NodeState::Decommissioned) => {
                out.push(blocker(None, format!("node {n} is already decommissioned")))
            }
            Some(_) => {}
        }
    }
    if !out.is_empty() {
        return out;
    }
    let usable: BTreeSet<u64> = view
        .nodes
        .values()
        .filter(|n| {
            !leaving.contains(&n.id)
                && n.state == NodeState::Active
                && n.alive
                && view.successor(n.id).is_none()
        })
        .map(|n| n.id)
        .collect();
    if usable.len() < cfg.replication_factor {
        out.push(blocker(
            None,
            format!(
                "only {} live ACTIVE node(s) would remain ({}), fewer than replication_factor = {}; add a node first",
                usable.len(),
                usable.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                cfg.replication_factor
            ),
        ));
    }
    let mut total = 0u64;
    let mut targets: BTreeSet<u64> = BTreeSet::new();
    for v in 0..view.vshards {
        let holders = &view.replicas[v as usize];
        let going = holders.iter().filter(|h| leaving.contains(h)).count();
        if going == 0 {
            continue;
        }
        let candidates: Vec<u64> = usable
            .iter()
            .copied()
            .filter(|n| !holders.contains(n))
            .collect();
        if candidates.len() < going {
            out.push(blocker(
                Some(v),
                format!(
                    "{going} replica(s) to move but {} live ACTIVE node(s) hold none of it (replicas on {})",
                    candidates.len(),
                    holders.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                ),
            ));
            continue;
        }
        let bytes = vshard_bytes(view, v);
        if !candidates.iter().any(|n| headroom(view, cfg, *n) >= bytes) {
            out.push(blocker(
                Some(v),
                format!(
                    "{bytes} bytes to copy and no candidate node ({}) has that much room below rebalance_max_disk_fraction = {}",
                    candidates.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                    cfg.max_disk_fraction
                ),
            ));
            continue;
        }
        total = total.saturating_add(bytes.saturating_mul(going as u64));
        targets.extend(candidates);
    }
    let room: u64 = targets
        .iter()
        .map(|n| headroom(view, cfg, *n))
        .fold(0u64, u64::saturating_add);
    if total > room {
        out.push(blocker(
            None,
            format!(
                "{total} bytes to copy but the nodes that could take them have {room} bytes of room below rebalance_max_disk_fraction = {}",
                cfg.max_disk_fraction
            ),
        ));
    }
    out
}

/// Replicas still on each leaving node, by node (for progress: "replicas left").
pub fn replicas_left(view: &ClusterView, leaving: &[u64]) -> BTreeMap<u64, usize> {
    leaving
        .iter()
        .map(|n| (*n, view.replicas.iter().filter(|r| r.contains(n)).count()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// `n` ACTIVE alive nodes, `vshards` vshards on three consecutive nodes each, each
    /// replica 1 GiB, each disk 100 GiB with `free` GiB free.
    fn view(n: u64, vshards: u32, free: u64) -> ClusterView {
        let mut v = crate::view::testing::striped(n, vshards);
        for l in v.nodes.values_mut().filter_map(|x| x.load.as_mut()) {
            l.disk_total_bytes = 100 * GIB;
            l.disk_free_bytes = free * GIB;
            for x in &mut l.vshards {
                x.bytes = GIB;
            }
        }
        v
    }

    #[test]
    fn three_nodes_at_rf3_refuse_naming_every_vshard_and_the_node_count() {
        let v = view(3, 4, 50);
        let b = check(&v, &[2], &PlacementConfig::default());
        assert!(
            b[0].vshard.is_none() && b[0].reason.contains("only 2 live ACTIVE"),
            "{b:?}"
        );
        let blocked: Vec<u32> = b.iter().filter_map(|x| x.vshard).collect();
        assert_eq!(blocked, vec![0, 1, 2, 3], "{b:?}");
        assert!(
            b[1].to_string()
                .starts_with("vshard 0: 1 replica(s) to move but 0"),
            "{}",
            b[1]
        );
    }

    #[test]
    fn a_fourth_node_makes_room_and_a_down_leaving_node_is_fine() {
        let mut v = view(4, 8, 50);
        assert_eq!(check(&v, &[2], &PlacementConfig::default()), vec![]);
        // The leaving node is down: its replicas are rebuilt from the others.
        let n2 = v.nodes.get_mut(&2).unwrap();
        n2.alive = false;
        n2.load = None;
        assert_eq!(check(&v, &[2], &PlacementConfig::default()), vec![]);
    }

    #[test]
    fn a_down_target_or_a_second_leaving_node_can_leave_too_few() {
        let mut v = view(4, 8, 50);
        v.nodes.get_mut(&4).unwrap().alive = false;
        let b = check(&v, &[2], &PlacementConfig::default());
        assert!(!b.is_empty(), "node 4 is down: only 1,3 remain");
        let v = view(5, 8, 50);
        assert_eq!(check(&v, &[1], &PlacementConfig::default()), vec![]);
        assert_eq!(
            check(&v, &[1, 2], &PlacementConfig::default()),
            vec![],
            "3 of 5 remain: as many as the factor"
        );
        let b = check(&v, &[1, 2, 3], &PlacementConfig::default());
        assert!(b[0].reason.contains("only 2 live ACTIVE"), "{b:?}");
    }

    #[test]
    fn full_disks_on_every_candidate_refuse_with_the_bytes() {
        // 7 GiB free of 100 with max 92.5 % full: no room at all.
        let v = view(4, 8, 7);
        let b = check(&v, &[2], &PlacementConfig::default());
        assert!(!b.is_empty());
        assert!(b.iter().all(|x| x.reason.contains("bytes")), "{b:?}");
    }

    #[test]
    fn unknown_or_retired_nodes_are_refused_by_name() {
        let mut v = view(4, 4, 50);
        v.nodes.get_mut(&3).unwrap().state = NodeState::Decommissioned;
        let b = check(&v, &[3, 9], &PlacementConfig::default());
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(b[0].reason.contains("node 3 is already decommissioned"));
        assert!(b[1].reason.contains("node 9 is not registered"));
    }

    #[test]
    fn replicas_left_counts_per_leaving_node() {
        let v = view(4, 8, 50);
        assert_eq!(replicas_left(&v, &[1]), BTreeMap::from([(1, 6)]));
    }
}
