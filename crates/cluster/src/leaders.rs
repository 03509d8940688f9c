//! Spreading vshard leaderships over the nodes: the planner the group-0 leader runs every
//! `leader_balance_interval_ms`. Pure: the leaders each node reported, in; transfers to ask
//! for, out.
//!
//! While the node leading the most vshards leads at least two more than some alive replica
//! of one of its vshards, that vshard's leadership goes to that replica (the one leading
//! fewest). Each node hands away at most one leadership per round and each vshard moves at
//! most once, so counts settle within one of each other without oscillating; vshards with a
//! move under way are left alone (their membership is changing). The current leader carries
//! a transfer out only if the target holds every entry (`handoff_target`). A node that is
//! DRAINING or DECOMMISSIONING leads nothing: its leaderships go first, to the replica
//! leading fewest, and none comes back to it.

use std::collections::{BTreeMap, BTreeSet};

use shoal_consensus::NodeState;

use crate::view::ClusterView;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub vshard: u32,
    pub from: u64,
    pub to: u64,
}

/// Whether a node in this state hands its leaderships away (and takes none).
pub fn sheds_leaderships(state: NodeState) -> bool {
    matches!(state, NodeState::Draining | NodeState::Decommissioning)
}

/// Each vshard's leader as reported, except where `pending` (transfers asked for a moment
/// ago, not yet in the reports) says otherwise.
pub fn leaders(view: &ClusterView, pending: &BTreeMap<u32, u64>) -> Vec<Option<u64>> {
    (0..view.vshards)
        .map(|v| pending.get(&v).copied().or_else(|| view.leader_of(v)))
        .collect()
}

/// Leaderships per node (nodes that report but lead nothing count 0).
pub fn leader_counts(view: &ClusterView, leaders: &[Option<u64>]) -> BTreeMap<u64, usize> {
    let mut counts: BTreeMap<u64, usize> = view
        .nodes
        .values()
        .filter(|n| n.load.is_some())
        .map(|n| (n.id, 0))
        .collect();
    for l in leaders.iter().flatten() {
        *counts.entry(*l).or_default() += 1;
    }
    counts
}

/// At most `max` transfers to ask for now. `pending`: transfers asked for recently whose
/// effect the reports may not show yet (without it, a stale report would count a moved
/// leadership twice and the plan would overshoot).
pub fn plan_transfers(
    view: &ClusterView,
    pending: &BTreeMap<u32, u64>,
    max: usize,
) -> Vec<Transfer> {
    let leaders = leaders(view, pending);
    let mut counts = leader_counts(view, &leaders);
    let usable = |n: u64| {
        view.nodes
            .get(&n)
            .is_some_and(|x| x.alive && x.load.is_some() && x.state == NodeState::Active)
    };
    let mut out = vec![];
    let mut done_src: BTreeSet<u64> = BTreeSet::new();
    let mut done_v: BTreeSet<u32> = BTreeSet::new();
    // Leaderships on a node that is draining or leaving go first, whatever the counts.
    for v in 0..view.vshards {
        if out.len() >= max {
            return out;
        }
        let Some(src) = leaders[v as usize] else {
            continue;
        };
        if !view
            .nodes
            .get(&src)
            .is_some_and(|n| sheds_leaderships(n.state))
            || view.active_move(v).is_some()
        {
            continue;
        }
        let to = view.replicas[v as usize]
            .iter()
            .copied()
            .filter(|n| *n != src && usable(*n))
            .min_by_key(|n| (counts.get(n).copied().unwrap_or(0), *n));
        if let Some(to) = to {
            *counts.entry(src).or_default() -= 1;
            *counts.entry(to).or_default() += 1;
            done_v.insert(v);
            out.push(Transfer {
                vshard: v,
                from: src,
                to,
            });
        }
    }
    while out.len() < max {
        let Some(src) = counts
            .iter()
            .filter(|(n, _)| !done_src.contains(n))
            .max_by_key(|(n, c)| (**c, **n))
            .map(|(n, _)| *n)
        else {
            break;
        };
        let mine = counts[&src];
        let best = (0..view.vshards)
            .filter(|v| leaders[*v as usize] == Some(src) && !done_v.contains(v))
            .filter(|v| view.active_move(*v).is_none())
            .filter_map(|v| {
                view.replicas[v as usize]
                    .iter()
                    .copied()
                    .filter(|n| *n != src && usable(*n))
                    .map(|n| (counts.get(&n).copied().unwrap_or(0), n))
                    .min()
                    .map(|(c, n)| (c, n, v))
            })
            .filter(|(c, _, _)| mine >= c + 2)
            .min();
        done_src.insert(src);
        if let Some((_, to, v)) = best {
            *counts.entry(src).or_default() -= 1;
            *counts.entry(to).or_default() += 1;
            done_v.insert(v);
            out.push(Transfer {
                vshard: v,
                from: src,
                to,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vshards` vshards on nodes 1..=n (three consecutive replicas each), led as `lead`.
    fn view(n: u64, vshards: u32, lead: impl Fn(u32) -> u64) -> ClusterView {
        let mut v = crate::view::testing::striped(n, vshards);
        for node in v.nodes.values_mut() {
            let id = node.id;
            for x in node.load.iter_mut().flat_map(|l| l.vshards.iter_mut()) {
                x.leader_term = (lead(x.vshard) == id).then_some(5);
            }
        }
        v
    }

    /// Applies transfers to the reported leaders.
    fn apply(v: &mut ClusterView, ts: &[Transfer]) {
        for t in ts {
            for n in v.nodes.values_mut() {
                if let Some(l) = n.load.as_mut() {
                    for x in l.vshards.iter_mut().filter(|x| x.vshard == t.vshard) {
                        x.leader_term = (n.id == t.to).then_some(6);
                    }
                }
            }
        }
    }

    #[test]
    fn leaderships_settle_within_one_of_the_mean_and_then_stay() {
        for (nodes, vshards) in [(3u64, 16u32), (5, 16), (5, 64), (4, 7)] {
            // Everything led by the replica with the lowest id (as after a bootstrap).
            let mut v = view(nodes, vshards, |_| 0);
            for vs in 0..vshards {
                let first = v.replicas[vs as usize][0];
                apply(
                    &mut v,
                    &[Transfer {
                        vshard: vs,
                        from: 0,
                        to: first,
                    }],
                );
            }
            for round in 0.. {
                let ts = plan_transfers(&v, &BTreeMap::new(), 16);
                if ts.is_empty() {
                    break;
                }
                apply(&mut v, &ts);
                assert!(round < 200, "does not settle");
            }
            let c = leader_counts(&v, &leaders(&v, &BTreeMap::new()));
            let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(max - min <= 1, "{nodes} nodes, {vshards} vshards: {c:?}");
            assert_eq!(
                plan_transfers(&v, &BTreeMap::new(), 16),
                vec![],
                "settled means nothing more"
            );
        }
    }

    #[test]
    fn dead_nodes_and_vshards_with_moves_are_left_alone() {
        let mut v = view(3, 6, |_| 1);
        v.nodes.get_mut(&2).unwrap().alive = false;
        v.nodes.get_mut(&3).unwrap().alive = false;
        assert_eq!(plan_transfers(&v, &BTreeMap::new(), 16), vec![]);
        v.nodes.get_mut(&3).unwrap().alive = true;
        let ts = plan_transfers(&v, &BTreeMap::new(), 16);
        assert_eq!(ts.len(), 1, "one per source per round: {ts:?}");
        assert_eq!(ts[0].to, 3);
        // A transfer asked for but not yet reported counts at its target: no overshoot.
        let pending: BTreeMap<u32, u64> = [(ts[0].vshard, 3)].into();
        let again = plan_transfers(&v, &pending, 16);
        assert!(again.iter().all(|t| t.vshard != ts[0].vshard), "{again:?}");
        assert_eq!(
            leader_counts(&v, &leaders(&v, &pending)).get(&3),
            Some(&1),
            "the pending transfer counts"
        );
    }

    #[test]
    fn a_draining_node_hands_every_leadership_away_and_gets_none_back() {
        let mut v = view(3, 16, |vs| 1 + u64::from(vs) % 3);
        v.nodes.get_mut(&2).expect("node 2").state = NodeState::Draining;
        for _ in 0..10 {
            let ts = plan_transfers(&v, &BTreeMap::new(), 16);
            assert!(
                ts.iter().all(|t| t.to != 2),
                "nothing goes to the drained node: {ts:?}"
            );
            apply(&mut v, &ts);
        }
        let c = leader_counts(&v, &leaders(&v, &BTreeMap::new()));
        assert_eq!(c.get(&2), Some(&0), "{c:?}");
        assert!(c[&1].abs_diff(c[&3]) <= 1, "the rest stay balanced: {c:?}");
        // Undrained, it gets its share back.
        v.nodes.get_mut(&2).expect("node 2").state = NodeState::Active;
        for _ in 0..20 {
            let ts = plan_transfers(&v, &BTreeMap::new(), 16);
            apply(&mut v, &ts);
        }
        let c = leader_counts(&v, &leaders(&v, &BTreeMap::new()));
        assert!(c[&2] >= 4, "{c:?}");
    }
}
