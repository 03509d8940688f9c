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

/// "; node N's disk is P % full" when a node reports its disk over 90 % full (the likely
/// reason a move to it makes no progress), else nothing.
fn disk_note(view: &ClusterView, n: u64) -> String {
    match view.nodes.get(&n).and_then(|x| x.load.as_ref()) {
        Some(l) if l.disk_used_fraction() > 0.9 => format!(
            "; node {n}'s disk is {:.1} % full ({} bytes free)",
            l.disk_used_fraction() * 100.0,
            l.disk_free_bytes
        ),
        _ => String::new(),
    }
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

/// How a DECOMMISSIONING node's decommission is going (`system.nodes.decommission`,
/// `shoal node status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub node: u64,
    /// Replicas group 0 still places on it.
    pub replicas_left: usize,
    /// Their bytes, as the replicas report them.
    pub bytes_left: u64,
    /// Moves off it under way.
    pub moves_in_flight: usize,
    /// Moves off it finished since it started leaving.
    pub moved: usize,
    pub elapsed_ms: u64,
    /// At the pace so far (`None` before the first replica moved).
    pub estimate_ms: Option<u64>,
    /// No replica moved, and no move off it made progress, for `stall_ms`.
    pub stalled_ms: Option<u64>,
    /// While stalled: each vshard still on it and why it is not moving.
    pub stuck: Vec<Blocker>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} replica(s) left ({} bytes), {} moving, {} moved, elapsed {} s",
            self.replicas_left,
            self.bytes_left,
            self.moves_in_flight,
            self.moved,
            self.elapsed_ms / 1000
        )?;
        if let Some(e) = self.estimate_ms {
            write!(f, ", about {} s left", e / 1000)?;
        }
        if let Some(s) = self.stalled_ms {
            write!(f, "; decommission stalled for {} s: ", s / 1000)?;
            // Vshards stuck for the same reason are named together.
            let mut groups: Vec<(Vec<u32>, &str)> = vec![];
            for b in &self.stuck {
                match (groups.last_mut(), b.vshard) {
                    (Some((vs, r)), Some(v)) if *r == b.reason && !vs.is_empty() => vs.push(v),
                    _ => groups.push((b.vshard.into_iter().collect(), &b.reason)),
                }
            }
            let parts: Vec<String> = groups
                .iter()
                .map(|(vs, r)| match vs.len() {
                    0 => r.to_string(),
                    1 => format!("vshard {}: {r}", vs[0]),
                    _ => format!(
                        "vshards {}: {r}",
                        vs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                    ),
                })
                .collect();
            f.write_str(&parts.join("; "))?;
        }
        Ok(())
    }
}

/// The progress of `node`'s decommission (`None` unless it is DECOMMISSIONING). Progress
/// is a move off it finishing or reporting (a snapshot's bytes, a step); a failed attempt
/// is not. Stalled after `stall_ms` without any, with each remaining vshard's reason:
/// its move's state and last error, or why no move can start (the safety check's
/// reasons), or that it waits for a move slot.
pub fn progress(
    view: &ClusterView,
    node: u64,
    stall_ms: u64,
    cfg: &PlacementConfig,
) -> Option<Progress> {
    let n = view.nodes.get(&node)?;
    if n.state != NodeState::Decommissioning {
        return None;
    }
    let since = n.state_since_ms;
    let on: Vec<u32> = (0..view.vshards)
        .filter(|v| view.replicas[*v as usize].contains(&node))
        .collect();
    let off: Vec<_> = view
        .moves
        .iter()
        .filter(|m| m.from == node && m.started_ms >= since)
        .collect();
    let moved = off
        .iter()
        .filter(|m| m.state == shoal_consensus::MoveState::Completed)
        .count();
    let in_flight = off.iter().filter(|m| m.state.active()).count();
    let last = off
        .iter()
        .filter(|m| m.state == shoal_consensus::MoveState::Completed || m.attempts == 0)
        .map(|m| m.updated_ms)
        .chain([since])
        .max()
        .unwrap_or(since);
    let elapsed_ms = view.now_ms.saturating_sub(since);
    let quiet = view.now_ms.saturating_sub(last);
    let stalled = (!on.is_empty() && quiet >= stall_ms && since > 0).then_some(quiet);
    let stuck = if stalled.is_some() {
        let why = check(view, &[node], cfg);
        on.iter()
            .map(|v| match view.active_move(*v) {
                Some(m) if m.from == node => blocker(
                    Some(*v),
                    format!(
                        "move {} to node {} is {} after {} failed attempt(s){}{}",
                        m.id,
                        m.to,
                        m.state.as_str(),
                        m.attempts,
                        if m.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(" (last error: {})", m.last_error)
                        },
                        disk_note(view, m.to)
                    ),
                ),
                _ => why
                    .iter()
                    .find(|b| b.vshard == Some(*v))
                    .or_else(|| why.iter().find(|b| b.vshard.is_none()))
                    .cloned()
                    .unwrap_or_else(|| {
                        blocker(
                            Some(*v),
                            "no move started yet (the planner starts at most rebalance_max_moves at a time, every rebalance_interval_ms)"
                                .into(),
                        )
                    }),
            })
            .collect()
    } else {
        vec![]
    };
    Some(Progress {
        node,
        replicas_left: on.len(),
        bytes_left: on.iter().map(|v| vshard_bytes(view, *v)).sum(),
        moves_in_flight: in_flight,
        moved,
        elapsed_ms,
        estimate_ms: (moved > 0 && elapsed_ms > 0)
            .then(|| elapsed_ms / moved as u64 * on.len() as u64),
        stalled_ms: stalled,
        stuck: stuck
            .into_iter()
            .map(|mut b| {
                if b.vshard.is_none() {
                    b.reason = format!("(all) {}", b.reason);
                }
                b
            })
            .collect(),
    })
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
    fn progress_counts_estimates_and_names_what_is_stuck() {
        use shoal_consensus::{MoveRecord, MoveState};
        let cfg = PlacementConfig::default();
        let mut v = view(4, 8, 50);
        assert_eq!(progress(&v, 1, 60_000, &cfg), None, "not leaving");
        let n1 = v.nodes.get_mut(&1).unwrap();
        n1.state = NodeState::Decommissioning;
        n1.state_since_ms = 1_000;
        v.now_ms = 31_000;
        let mv = |id, vshard, state, attempts, updated_ms| MoveRecord {
            id,
            vshard,
            from: 1,
            to: 4,
            state,
            reason: "t".into(),
            attempts,
            last_error: if attempts > 0 {
                "boom".into()
            } else {
                String::new()
            },
            bytes_total: 0,
            bytes_copied: 0,
            started_ms: 2_000,
            updated_ms,
        };
        // Vshard 0 moved off at 11 s; vshard 2's move is catching up.
        v.replicas[0] = vec![2, 3, 4];
        v.moves = vec![
            mv(1, 0, MoveState::Completed, 0, 11_000),
            mv(2, 2, MoveState::CatchingUp, 0, 30_000),
        ];
        let p = progress(&v, 1, 60_000, &cfg).unwrap();
        assert_eq!(
            (p.replicas_left, p.moves_in_flight, p.moved, p.elapsed_ms),
            (5, 1, 1, 30_000)
        );
        assert_eq!(p.bytes_left, 5 * GIB);
        assert_eq!(p.estimate_ms, Some(150_000), "30 s per replica, 5 left");
        assert_eq!(p.stalled_ms, None);
        // 90 s on, vshard 2's move failed twice since: stalled, each vshard named.
        v.now_ms = 121_000;
        v.moves[1] = mv(2, 2, MoveState::CatchingUp, 2, 100_000);
        let p = progress(&v, 1, 60_000, &cfg).unwrap();
        assert_eq!(p.stalled_ms, Some(110_000), "the last progress was at 11 s");
        assert_eq!(p.stuck.len(), 5);
        assert!(
            p.stuck[0].to_string().starts_with("vshard 2: move 2 to node 4 is CATCHING_UP after 2 failed attempt(s) (last error: boom)"),
            "{}",
            p.stuck[0]
        );
        assert!(
            p.stuck[1].reason.contains("no move started yet"),
            "{}",
            p.stuck[1]
        );
        assert!(
            p.to_string().contains("decommission stalled for 110 s"),
            "{p}"
        );
        assert!(
            p.to_string()
                .contains("vshards 3, 4, 6, 7: no move started yet"),
            "the same reason is said once: {p}"
        );
        // A target with a nearly full disk is named as the likely reason.
        let l = v.nodes.get_mut(&4).unwrap().load.as_mut().unwrap();
        l.disk_free_bytes = GIB;
        let p = progress(&v, 1, 60_000, &cfg).unwrap();
        assert!(
            p.stuck[0].reason.contains("node 4's disk is 99.0 % full"),
            "{}",
            p.stuck[0]
        );
    }

    #[test]
    fn replicas_left_counts_per_leaving_node() {
        let v = view(4, 8, 50);
        assert_eq!(replicas_left(&v, &[1]), BTreeMap::from([(1, 6)]));
    }
}
