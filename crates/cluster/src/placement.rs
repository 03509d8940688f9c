//! Where replicas should live: the planner the group-0 leader runs every
//! `rebalance_interval_ms` (and whenever membership changes). Pure: a [`ClusterView`] in,
//! the group-0 changes to propose out; no I/O and no clock.
//!
//! In order of priority:
//! 1. **Record the placement** a catalog from before per-vshard placement lacks.
//! 2. **Repair**: a replica on a node that is gone — retired (DECOMMISSIONED), superseded
//!    (a later node registered at its address: a wiped disk that joined again; its
//!    successor is preferred as the target), leaving (DECOMMISSIONING), or down for
//!    `dead_replica_timeout` — moves to another node.
//! 3. **Grow** a vshard with fewer replicas than `min(replication_factor, usable nodes)`
//!    (one fewer if that is even and short of the factor: never two replicas on the way to
//!    three): the missing replicas are added in one change, so the vshard's leader
//!    promotes them together.
//! 4. **Balance**, unless paused (`rebalance_paused`), some node's CPU is above
//!    `rebalance_cpu_threshold`, or fewer usable nodes than `replication_factor` exist (a
//!    forming cluster grows instead): while the most loaded usable node holds at least two
//!    replicas more than the least loaded one, move one from the first to the second. Nodes
//!    are ranked by (replica count, bytes, write rate); the vshard moved is the cheapest the
//!    target lacks (fewest bytes). The spread of at least two is the hysteresis: a balanced
//!    cluster (every node within one of the mean) plans nothing, so moves never ping-pong.
//!
//! Every move respects: one move per vshard at a time (group 0 enforces it too), at most
//! `max_moves` in flight, and targets that are ACTIVE, alive, not superseded and below
//! `max_disk_fraction` full. Balancing moves also keep to one inbound move per node (one
//! snapshot to receive at a time) and a per-vshard cooldown after a move; repairs do not
//! wait for those (a vshard short of a replica is at risk until it is back).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_consensus::NodeState;

use crate::view::ClusterView;

/// The planner's knobs (from the node's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    pub replication_factor: usize,
    /// A replica's node down this long is replaced (0: never).
    pub dead_replica_timeout: Duration,
    /// Moves in flight at most (`rebalance_max_moves`).
    pub max_moves: usize,
    /// Balancing pauses while any node's CPU share is above this (`rebalance_cpu_threshold`).
    pub cpu_threshold: f64,
    /// No node whose disk is fuller than this becomes a target.
    pub max_disk_fraction: f64,
    /// A vshard that finished a move is not moved again by balancing for this long.
    pub vshard_cooldown: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            replication_factor: 3,
            dead_replica_timeout: Duration::from_secs(300),
            max_moves: 4,
            cpu_threshold: 0.8,
            max_disk_fraction: 0.925,
            vshard_cooldown: Duration::from_secs(30),
        }
    }
}

/// One change to propose to group 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementStep {
    InitPlacement {
        replicas: Vec<u64>,
    },
    AddReplicas {
        vshard: u32,
        add: Vec<u64>,
    },
    StartMove {
        vshard: u32,
        from: u64,
        to: u64,
        reason: String,
    },
    /// A superseded node that holds no replica any more is retired (DECOMMISSIONED).
    Retire {
        node: u64,
        why: String,
    },
    /// A move whose target is gone (superseded, retired, leaving, or down for
    /// `MOVE_TARGET_DOWN`) is given up, so its vshard can be planned again.
    CancelMove {
        id: u64,
        why: String,
    },
}

/// A move's target down this long is given up on (before the swap).
pub const MOVE_TARGET_DOWN: Duration = Duration::from_secs(30);

/// Moves and growth the planner must not do now, with the reason (for the log).
struct Budget {
    moves_left: usize,
    /// Nodes already receiving a move.
    inbound: BTreeSet<u64>,
    /// Vshards with a move under way.
    busy: BTreeSet<u32>,
}

/// What to propose now. Deterministic: the same view always gives the same steps.
pub fn plan(view: &ClusterView, cfg: &PlacementConfig) -> Vec<PlacementStep> {
    if !view.placement_recorded {
        let replicas = view.replicas.first().cloned().unwrap_or_default();
        return if replicas.is_empty() {
            vec![]
        } else {
            vec![PlacementStep::InitPlacement { replicas }]
        };
    }
    let mut out = vec![];
    // Moves to a target that is gone are given up first; their vshards are free again.
    let mut cancelled = BTreeSet::new();
    for m in view.moves.iter().filter(|m| m.state.active()) {
        if m.state == shoal_consensus::MoveState::Swapping {
            continue;
        }
        if let Some(why) = target_gone(view, m.to) {
            cancelled.insert(m.id);
            out.push(PlacementStep::CancelMove { id: m.id, why });
        }
    }
    let active: Vec<_> = view
        .moves
        .iter()
        .filter(|m| m.state.active() && !cancelled.contains(&m.id))
        .collect();
    let mut budget = Budget {
        moves_left: cfg.max_moves.saturating_sub(active.len()),
        inbound: active.iter().map(|m| m.to).collect(),
        busy: active.iter().map(|m| m.vshard).collect(),
    };
    // Replica counts as they will be once the moves under way finish.
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for v in 0..view.vshards {
        for n in projected(view, v, &cancelled) {
            *counts.entry(n).or_default() += 1;
        }
    }
    repair(view, cfg, &mut budget, &mut counts, &mut out);
    grow(view, cfg, &mut budget, &mut counts, &mut out);
    retire(view, &mut out);
    let cpu_busy = view
        .nodes
        .values()
        .filter_map(|n| n.load.as_ref())
        .any(|l| l.cpu > cfg.cpu_threshold);
    if !view.settings.rebalance_paused && !cpu_busy {
        balance(view, cfg, &mut budget, &mut counts, &mut out);
    }
    out
}

/// Why a move's target can no longer take its replica, if it cannot.
fn target_gone(view: &ClusterView, to: u64) -> Option<String> {
    let Some(n) = view.nodes.get(&to) else {
        return Some(format!("node {to} is not registered"));
    };
    if matches!(
        n.state,
        NodeState::Decommissioned | NodeState::Decommissioning
    ) {
        return Some(format!("target node {to} is {}", n.state.as_str()));
    }
    if let Some(s) = view.successor(to) {
        return Some(format!(
            "target node {to} is gone (node {s} registered at its address)"
        ));
    }
    n.down_for
        .filter(|d| *d >= MOVE_TARGET_DOWN)
        .map(|d| format!("target node {to} down for {} s", d.as_secs()))
}

/// Vshard `v`'s replicas once its move under way (if any, and not being cancelled)
/// finishes.
fn projected(view: &ClusterView, v: u32, cancelled: &BTreeSet<u64>) -> Vec<u64> {
    let mut r = view.replicas[v as usize].clone();
    if let Some(m) = view.active_move(v).filter(|m| !cancelled.contains(&m.id)) {
        r.retain(|n| *n != m.from);
        if !r.contains(&m.to) {
            r.push(m.to);
        }
    }
    r
}

/// Why node `n`'s replicas must go, if they must.
fn must_leave(view: &ClusterView, cfg: &PlacementConfig, n: u64) -> Option<String> {
    let Some(node) = view.nodes.get(&n) else {
        return Some(format!("node {n} is not registered"));
    };
    match node.state {
        NodeState::Decommissioned => return Some(format!("node {n} is decommissioned")),
        NodeState::Decommissioning => return Some(format!("node {n} is being decommissioned")),
        _ => {}
    }
    if let Some(s) = view.successor(n) {
        return Some(format!(
            "node {s} registered at node {n}'s address (node {n}'s data is gone)"
        ));
    }
    if !cfg.dead_replica_timeout.is_zero() {
        if let Some(d) = node.down_for.filter(|d| *d >= cfg.dead_replica_timeout) {
            return Some(format!(
                "node {n} down for {} s (dead_replica_timeout_ms = {})",
                d.as_secs(),
                cfg.dead_replica_timeout.as_millis()
            ));
        }
    }
    None
}

/// Whether `n` may take a replica.
fn usable_target(view: &ClusterView, cfg: &PlacementConfig, n: u64) -> bool {
    let Some(node) = view.nodes.get(&n) else {
        return false;
    };
    node.state == NodeState::Active
        && node.alive
        && view.successor(n).is_none()
        && node
            .load
            .as_ref()
            .is_none_or(|l| l.disk_used_fraction() <= cfg.max_disk_fraction)
}

/// A node's rank for placement: fewer replicas first, then fewer bytes, then a lower write
/// rate, then the lower id.
fn rank(view: &ClusterView, counts: &BTreeMap<u64, usize>, n: u64) -> (usize, u64, u64, u64) {
    let load = view.nodes.get(&n).and_then(|x| x.load.as_ref());
    (
        counts.get(&n).copied().unwrap_or(0),
        load.map_or(0, |l| l.data_bytes),
        load.map_or(0, |l| {
            l.vshards.iter().map(|v| v.rows_per_sec).sum::<f64>() as u64
        }),
        n,
    )
}

/// The best target for a replica of `v` (not already holding one), optionally preferring
/// `prefer`, and within the inbound limit.
fn best_target(
    view: &ClusterView,
    cfg: &PlacementConfig,
    budget: &Budget,
    counts: &BTreeMap<u64, usize>,
    holders: &[u64],
    prefer: Option<u64>,
) -> Option<u64> {
    let ok = |n: u64| {
        !holders.contains(&n) && usable_target(view, cfg, n) && !budget.inbound.contains(&n)
    };
    if let Some(p) = prefer.filter(|p| ok(*p)) {
        return Some(p);
    }
    view.nodes
        .keys()
        .copied()
        .filter(|n| ok(*n))
        .min_by_key(|n| rank(view, counts, *n))
}

fn repair(
    view: &ClusterView,
    cfg: &PlacementConfig,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    out: &mut Vec<PlacementStep>,
) {
    for v in 0..view.vshards {
        if budget.moves_left == 0 {
            return;
        }
        if budget.busy.contains(&v) {
            continue;
        }
        let holders = view.replicas[v as usize].clone();
        for from in &holders {
            let Some(why) = must_leave(view, cfg, *from) else {
                continue;
            };
            let prefer = view.successor(*from);
            // Restoring lost replicas outranks the one-inbound-move rule (still within
            // `max_moves`): a vshard short of a replica is at risk until it is back.
            let unlimited = Budget {
                moves_left: budget.moves_left,
                inbound: BTreeSet::new(),
                busy: BTreeSet::new(),
            };
            if let Some(to) = best_target(view, cfg, &unlimited, counts, &holders, prefer) {
                take(budget, counts, v, *from, to);
                out.push(PlacementStep::StartMove {
                    vshard: v,
                    from: *from,
                    to,
                    reason: why,
                });
            }
            break;
        }
    }
}

fn take(budget: &mut Budget, counts: &mut BTreeMap<u64, usize>, v: u32, from: u64, to: u64) {
    budget.moves_left -= 1;
    budget.inbound.insert(to);
    budget.busy.insert(v);
    if let Some(c) = counts.get_mut(&from) {
        *c = c.saturating_sub(1);
    }
    *counts.entry(to).or_default() += 1;
}

fn grow(
    view: &ClusterView,
    cfg: &PlacementConfig,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    out: &mut Vec<PlacementStep>,
) {
    let usable = view
        .nodes
        .keys()
        .filter(|n| usable_target(view, cfg, **n))
        .count();
    let want = replicas_wanted(cfg.replication_factor, usable);
    for v in 0..view.vshards {
        if budget.busy.contains(&v) {
            continue;
        }
        let mut holders = view.replicas[v as usize].clone();
        if holders.len() >= want {
            continue;
        }
        let mut add = vec![];
        while holders.len() < want {
            // Growth is not a move: it ignores the inbound limit (a new replica of an empty
            // vshard costs little, and RF comes first).
            let free = Budget {
                moves_left: 0,
                inbound: BTreeSet::new(),
                busy: BTreeSet::new(),
            };
            let Some(n) = best_target(view, cfg, &free, counts, &holders, None) else {
                break;
            };
            holders.push(n);
            add.push(n);
            *counts.entry(n).or_default() += 1;
        }
        if !add.is_empty() {
            budget.busy.insert(v);
            out.push(PlacementStep::AddReplicas { vshard: v, add });
        }
    }
}

/// How many replicas each vshard grows to with `usable` nodes to hold them:
/// `replication_factor`, or fewer when nodes are short. Short of nodes, it stops at an odd
/// count: two replicas survive no more than one and need both (a vshard at {1,2} when node
/// 2 dies is stuck for good, while {1} → {1,2,3} in one step survives either loss). An
/// even replication factor asked for is kept.
pub fn replicas_wanted(replication_factor: usize, usable: usize) -> usize {
    let want = replication_factor.min(usable).max(1);
    if want < replication_factor && want.is_multiple_of(2) {
        want - 1
    } else {
        want
    }
}

/// Why some vshard stays below the replication factor because of full disks, if it does:
/// names the ACTIVE, alive nodes refused as targets only because their disk is fuller than
/// `max_disk_fraction` (the operator's fix is space there, or a higher fraction). `None`
/// when every vshard has its replicas or no node is refused for its disk.
pub fn short_for_disk(view: &ClusterView, cfg: &PlacementConfig) -> Option<String> {
    let short = (0..view.vshards)
        .filter(|v| view.replicas[*v as usize].len() < cfg.replication_factor)
        .count();
    if short == 0 || !view.placement_recorded {
        return None;
    }
    let full: Vec<String> = view
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active && n.alive && view.successor(n.id).is_none())
        .filter_map(|n| {
            let l = n.load.as_ref()?;
            (l.disk_used_fraction() > cfg.max_disk_fraction).then(|| {
                format!(
                    "node {} ({:.1} % full)",
                    n.id,
                    l.disk_used_fraction() * 100.0
                )
            })
        })
        .collect();
    if full.is_empty() {
        return None;
    }
    Some(format!(
        "{short} of {} vshards below replication factor {}; no replica is placed on {}: \
         disk fuller than rebalance_max_disk_fraction = {}",
        view.vshards,
        cfg.replication_factor,
        full.join(", "),
        cfg.max_disk_fraction
    ))
}

/// Retires (DECOMMISSIONED) a node that holds nothing any more and is leaving: superseded
/// by a new identity at its address, or being decommissioned.
fn retire(view: &ClusterView, out: &mut Vec<PlacementStep>) {
    for n in view.nodes.values() {
        if n.state == NodeState::Decommissioned {
            continue;
        }
        let why = match view.successor(n.id) {
            Some(s) => format!(
                "node {s} registered at its address {} (a new identity: its data is gone)",
                n.rpc_addr
            ),
            None if n.state == NodeState::Decommissioning => {
                "its decommission finished: every replica moved off".to_string()
            }
            None => continue,
        };
        let holds = (0..view.vshards).any(|v| {
            view.replicas[v as usize].contains(&n.id)
                || view
                    .active_move(v)
                    .is_some_and(|m| m.from == n.id || m.to == n.id)
        });
        if !holds {
            out.push(PlacementStep::Retire { node: n.id, why });
        }
    }
}

fn balance(
    view: &ClusterView,
    cfg: &PlacementConfig,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    out: &mut Vec<PlacementStep>,
) {
    let usable: Vec<u64> = view
        .nodes
        .keys()
        .copied()
        .filter(|n| usable_target(view, cfg, *n))
        .collect();
    // Fewer usable nodes than the replication factor: the cluster is forming (or short of
    // nodes), and every vshard is about to grow onto the next node anyway; moving single
    // replicas around now would only be undone.
    if usable.len() < 2 || usable.len() < cfg.replication_factor {
        return;
    }
    let cooling = |v: u32| {
        view.moves.iter().any(|m| {
            m.vshard == v
                && !m.state.active()
                && view.now_ms.saturating_sub(m.updated_ms) < cfg.vshard_cooldown.as_millis() as u64
        })
    };
    let mut exhausted: BTreeSet<u64> = BTreeSet::new();
    while budget.moves_left > 0 {
        let Some(src) = usable
            .iter()
            .copied()
            .filter(|n| !exhausted.contains(n))
            .max_by_key(|n| rank(view, counts, *n))
        else {
            return;
        };
        let mut targets: Vec<u64> = usable
            .iter()
            .copied()
            .filter(|n| *n != src && !budget.inbound.contains(n))
            .collect();
        targets.sort_by_key(|n| rank(view, counts, *n));
        let src_count = counts.get(&src).copied().unwrap_or(0);
        let mut planned = false;
        for dst in targets {
            if src_count < counts.get(&dst).copied().unwrap_or(0) + 2 {
                break;
            }
            let candidate = (0..view.vshards)
                .filter(|v| {
                    !budget.busy.contains(v)
                        && !cooling(*v)
                        && view.replicas[*v as usize].contains(&src)
                        && !view.replicas[*v as usize].contains(&dst)
                })
                .min_by_key(|v| (view.vshard_bytes(*v), *v));
            if let Some(v) = candidate {
                take(budget, counts, v, src, dst);
                out.push(PlacementStep::StartMove {
                    vshard: v,
                    from: src,
                    to: dst,
                    reason: format!(
                        "rebalance: node {src} holds {src_count} replicas, node {dst} {}",
                        counts.get(&dst).copied().unwrap_or(1) - 1
                    ),
                });
                planned = true;
                break;
            }
        }
        if !planned {
            exhausted.insert(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{NodeLoad, NodeView};
    use shoal_consensus::{MoveRecord, MoveState};

    fn node(id: u64) -> (u64, NodeView) {
        (id, crate::view::testing::active_node(id))
    }

    /// `vshards` vshards on nodes 1..=3, and `extra` more nodes holding nothing.
    fn cluster(vshards: u32, extra: u64) -> ClusterView {
        ClusterView {
            vshards,
            nodes: (1..=3 + extra).map(node).collect(),
            placement_recorded: true,
            replicas: (0..vshards).map(|_| vec![1, 2, 3]).collect(),
            moves: vec![],
            settings: Default::default(),
            now_ms: 1_000_000,
        }
    }

    fn cfg() -> PlacementConfig {
        PlacementConfig {
            max_moves: 100,
            ..PlacementConfig::default()
        }
    }

    /// Applies the planned steps as if every move completed at once.
    fn apply(view: &mut ClusterView, steps: &[PlacementStep]) {
        for s in steps {
            match s {
                PlacementStep::StartMove {
                    vshard, from, to, ..
                } => {
                    let r = &mut view.replicas[*vshard as usize];
                    r.retain(|n| n != from);
                    r.push(*to);
                    r.sort_unstable();
                }
                PlacementStep::AddReplicas { vshard, add } => {
                    view.replicas[*vshard as usize].extend(add);
                    view.replicas[*vshard as usize].sort_unstable();
                }
                PlacementStep::InitPlacement { .. }
                | PlacementStep::Retire { .. }
                | PlacementStep::CancelMove { .. } => {}
            }
        }
    }

    fn counts(view: &ClusterView) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = view.nodes.keys().map(|n| (*n, 0)).collect();
        for r in &view.replicas {
            for n in r {
                *c.entry(*n).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        assert_eq!(plan(&cluster(16, 0), &cfg()), vec![]);
        // 16 × 3 over 5 nodes as 10/10/10/9/9: within one of the mean.
        let mut v = cluster(16, 2);
        for (i, r) in v.replicas.iter_mut().enumerate() {
            let i = i as u64;
            *r = vec![1 + i % 5, 1 + (i + 1) % 5, 1 + (i + 2) % 5];
            r.sort_unstable();
        }
        let c = counts(&v);
        assert!(c.values().all(|n| *n == 9 || *n == 10), "{c:?}");
        assert_eq!(plan(&v, &cfg()), vec![]);
    }

    #[test]
    fn new_nodes_draw_replicas_until_every_node_is_within_one_of_the_mean() {
        for (vshards, extra) in [(16u32, 2u64), (64, 2), (16, 1), (64, 5)] {
            let mut v = cluster(vshards, extra);
            let mut rounds = 0;
            loop {
                let steps = plan(&v, &cfg());
                if steps.is_empty() {
                    break;
                }
                // One inbound move per node per round.
                let targets: Vec<u64> = steps
                    .iter()
                    .filter_map(|s| match s {
                        PlacementStep::StartMove { to, .. } => Some(*to),
                        _ => None,
                    })
                    .collect();
                let unique: BTreeSet<u64> = targets.iter().copied().collect();
                assert_eq!(unique.len(), targets.len(), "{steps:?}");
                apply(&mut v, &steps);
                rounds += 1;
                assert!(rounds < 1000, "does not converge");
            }
            let c = counts(&v);
            let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(
                max - min <= 1,
                "{vshards} vshards, {} nodes: {c:?}",
                3 + extra
            );
            assert!(
                v.replicas
                    .iter()
                    .all(|r| r.len() == 3 && r.iter().collect::<BTreeSet<_>>().len() == 3),
                "every vshard keeps three distinct replicas"
            );
        }
    }

    #[test]
    fn the_plan_is_deterministic() {
        let v = cluster(64, 2);
        assert_eq!(plan(&v, &cfg()), plan(&v.clone(), &cfg()));
    }

    #[test]
    fn dead_full_busy_or_joining_nodes_are_never_targets() {
        let mut v = cluster(16, 3);
        v.nodes.get_mut(&4).unwrap().alive = false;
        v.nodes.get_mut(&5).unwrap().load = Some(NodeLoad {
            disk_total_bytes: 1000,
            disk_free_bytes: 50,
            ..Default::default()
        });
        v.nodes.get_mut(&6).unwrap().state = NodeState::Joining;
        assert_eq!(plan(&v, &cfg()), vec![], "no usable target");
        v.nodes.get_mut(&5).unwrap().load = None;
        let steps = plan(&v, &cfg());
        assert_eq!(steps.len(), 1, "one inbound move per node: {steps:?}");
        assert!(matches!(steps[0], PlacementStep::StartMove { to: 5, .. }));
    }

    #[test]
    fn full_disks_that_keep_vshards_short_are_named() {
        // One replica each (a cluster that just formed); nodes 2 and 3 are 96 % full.
        let mut v = cluster(4, 0);
        for r in &mut v.replicas {
            *r = vec![1];
        }
        assert_eq!(short_for_disk(&v, &cfg()), None, "short, but no full disk");
        for n in [2, 3] {
            v.nodes.get_mut(&n).unwrap().load = Some(NodeLoad {
                disk_total_bytes: 1000,
                disk_free_bytes: 40,
                ..Default::default()
            });
        }
        assert_eq!(plan(&v, &cfg()), vec![], "nowhere to grow");
        let why = short_for_disk(&v, &cfg()).expect("a reason");
        assert!(
            why.contains("4 of 4 vshards below replication factor 3")
                && why.contains("node 2 (96.0 % full), node 3 (96.0 % full)"),
            "{why}"
        );
        let roomy = PlacementConfig {
            max_disk_fraction: 0.99,
            ..cfg()
        };
        assert_eq!(short_for_disk(&v, &roomy), None);
        assert!(
            !plan(&v, &roomy).is_empty(),
            "a higher fraction lets it grow"
        );
        // Fully replicated: nothing to say even with full disks.
        for r in &mut v.replicas {
            *r = vec![1, 2, 3];
        }
        assert_eq!(short_for_disk(&v, &cfg()), None);
    }

    #[test]
    fn a_replica_on_a_dead_node_moves_after_the_timeout_only() {
        let mut v = cluster(4, 1);
        let c = PlacementConfig {
            dead_replica_timeout: Duration::from_secs(60),
            ..cfg()
        };
        let n2 = v.nodes.get_mut(&2).unwrap();
        n2.alive = false;
        n2.down_for = Some(Duration::from_secs(30));
        // Only balancing (to node 4) before the timeout: never from the dead node.
        for s in plan(&v, &c) {
            if let PlacementStep::StartMove { from, .. } = s {
                assert_ne!(from, 2);
            }
        }
        v.nodes.get_mut(&2).unwrap().down_for = Some(Duration::from_secs(61));
        let steps = plan(&v, &c);
        let PlacementStep::StartMove {
            vshard: 0,
            from: 2,
            to: 4,
            reason,
        } = &steps[0]
        else {
            panic!("{steps:?}");
        };
        assert!(reason.contains("down for 61 s"), "{reason}");
        // Repairs go ahead together (within max_moves), all from the dead node.
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert!(steps
            .iter()
            .all(|s| matches!(s, PlacementStep::StartMove { from: 2, to: 4, .. })));
        let two = plan(
            &v,
            &PlacementConfig {
                max_moves: 2,
                ..c.clone()
            },
        );
        assert_eq!(two.len(), 2, "{two:?}");
    }

    #[test]
    fn a_decommissioning_node_is_emptied_then_retired_even_when_down() {
        // 8 vshards on 1,2,3; node 4 spare. Node 2 leaves (and is down: its replicas are
        // rebuilt from the others, and a down leaving node is no reason to wait).
        let mut v = cluster(8, 1);
        let n2 = v.nodes.get_mut(&2).expect("n2");
        n2.state = NodeState::Decommissioning;
        n2.alive = false;
        n2.down_for = Some(Duration::from_secs(600));
        let steps = plan(&v, &cfg());
        assert_eq!(steps.len(), 8, "{steps:?}");
        assert!(steps
            .iter()
            .all(|s| matches!(s, PlacementStep::StartMove { from: 2, to: 4, .. })));
        assert!(!steps
            .iter()
            .any(|s| matches!(s, PlacementStep::Retire { .. })));
        apply(&mut v, &steps);
        let steps = plan(&v, &cfg());
        assert!(
            steps.iter().any(|s| matches!(
                s,
                PlacementStep::Retire { node: 2, why } if why.contains("decommission finished")
            )),
            "{steps:?}"
        );
        // Nothing else moves onto or off the retiring node.
        assert!(!steps.iter().any(|s| matches!(
            s,
            PlacementStep::StartMove { from: 2, .. } | PlacementStep::StartMove { to: 2, .. }
        )));
    }

    #[test]
    fn a_wiped_node_gets_its_old_replicas_back_and_the_old_identity_retires() {
        // Node 3's disk was wiped; it joined again as node 5 at the same address.
        let mut v = cluster(2, 2);
        let mut n5 = v.nodes[&5].clone();
        n5.rpc_addr = v.nodes[&3].rpc_addr.clone();
        v.nodes.insert(5, n5);
        let steps = plan(&v, &cfg());
        assert!(
            matches!(
                steps[0],
                PlacementStep::StartMove {
                    vshard: 0,
                    from: 3,
                    to: 5,
                    ..
                }
            ),
            "the successor is preferred: {steps:?}"
        );
        assert!(steps
            .iter()
            .all(|s| matches!(s, PlacementStep::StartMove { from: 3, .. })));
        apply(&mut v, &steps);
        let steps = plan(&v, &cfg());
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, PlacementStep::Retire { node: 3, .. })),
            "{steps:?}"
        );
    }

    #[test]
    fn moves_never_take_a_vshard_below_its_replicas_and_respect_the_limits() {
        let mut v = cluster(16, 2);
        // A move under way: its vshard is left alone, its target receives nothing more.
        v.moves.push(MoveRecord {
            id: 1,
            vshard: 0,
            from: 1,
            to: 4,
            state: MoveState::CatchingUp,
            reason: String::new(),
            attempts: 0,
            last_error: String::new(),
            bytes_total: 0,
            bytes_copied: 0,
            started_ms: 0,
            updated_ms: 0,
        });
        let steps = plan(
            &v,
            &PlacementConfig {
                max_moves: 3,
                ..cfg()
            },
        );
        assert_eq!(
            steps.len(),
            1,
            "inbound limit: only node 5 can take one: {steps:?}"
        );
        for s in &steps {
            let PlacementStep::StartMove {
                vshard, from, to, ..
            } = s
            else {
                panic!("{s:?}");
            };
            assert_ne!(*vshard, 0);
            assert_ne!(*to, 4);
            assert_ne!(from, to);
        }
        // Paused: nothing. CPU busy: nothing.
        v.settings.rebalance_paused = true;
        assert_eq!(plan(&v, &cfg()), vec![]);
        v.settings.rebalance_paused = false;
        v.nodes.get_mut(&1).unwrap().load = Some(NodeLoad {
            cpu: 0.95,
            ..Default::default()
        });
        assert_eq!(plan(&v, &cfg()), vec![]);
    }

    #[test]
    fn a_move_to_a_gone_target_is_cancelled_and_its_vshard_freed() {
        let mut v = cluster(4, 2);
        let record = |id, to, state| MoveRecord {
            id,
            vshard: id as u32,
            from: 1,
            to,
            state,
            reason: String::new(),
            attempts: 0,
            last_error: String::new(),
            bytes_total: 0,
            bytes_copied: 0,
            started_ms: 0,
            updated_ms: 0,
        };
        v.moves = vec![
            record(0, 4, MoveState::CatchingUp),
            record(1, 5, MoveState::Pending),
            record(2, 5, MoveState::Swapping),
        ];
        // Node 4 down for long, node 5 fine.
        let n4 = v.nodes.get_mut(&4).unwrap();
        n4.alive = false;
        n4.down_for = Some(Duration::from_secs(40));
        let steps = plan(&v, &cfg());
        assert!(
            matches!(&steps[0], PlacementStep::CancelMove { id: 0, why } if why.contains("down for 40 s")),
            "{steps:?}"
        );
        assert!(
            steps
                .iter()
                .all(|s| !matches!(s, PlacementStep::CancelMove { id: 1 | 2, .. })),
            "a live target's move stays; a swapping move is never cancelled: {steps:?}"
        );
        // Its vshard is free again: with node 1 gone for good too, it is repaired at once
        // (to a usable node) in the same plan.
        let n1 = v.nodes.get_mut(&1).unwrap();
        n1.alive = false;
        n1.down_for = Some(Duration::from_secs(400));
        let steps = plan(&v, &cfg());
        assert!(
            steps.iter().any(
                |s| matches!(s, PlacementStep::StartMove { vshard: 0, from: 1, to, .. } if *to != 4)
            ),
            "{steps:?}"
        );
    }

    #[test]
    fn growth_adds_every_missing_replica_at_once_and_placement_is_recorded_first() {
        let mut v = cluster(2, 0);
        v.replicas = vec![vec![1], vec![1]];
        v.placement_recorded = false;
        assert_eq!(
            plan(&v, &cfg()),
            vec![PlacementStep::InitPlacement { replicas: vec![1] }]
        );
        v.placement_recorded = true;
        assert_eq!(
            plan(&v, &cfg()),
            vec![
                PlacementStep::AddReplicas {
                    vshard: 0,
                    add: vec![2, 3]
                },
                PlacementStep::AddReplicas {
                    vshard: 1,
                    add: vec![2, 3]
                }
            ]
        );
        // With two nodes only, nothing grows: {1,2} would survive nothing and wedge if
        // either died before a third node arrived. With RF 2 asked for, two it is.
        v.nodes.remove(&3);
        assert!(plan(&v, &cfg())
            .iter()
            .all(|s| !matches!(s, PlacementStep::AddReplicas { .. })));
        let rf2 = PlacementConfig {
            replication_factor: 2,
            ..cfg()
        };
        assert!(matches!(
            &plan(&v, &rf2)[0],
            PlacementStep::AddReplicas { add, .. } if add == &vec![2]
        ));
    }
}
