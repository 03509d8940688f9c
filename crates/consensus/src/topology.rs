//! Group 0's record of where each vshard's replicas live, the replica moves under way, and
//! the cluster settings the control plane obeys.
//!
//! This is the *intent*: Raft membership of each vshard group follows it (the vshard's
//! leader adds learners, swaps voters; see the `cluster` crate), never the other way round,
//! except that a move's completion is recorded only after the swap committed in the vshard
//! group. Every change is a [`ClusterOp`](crate::ClusterOp) applied deterministically: a
//! refused op changes nothing and answers why.
//!
//! A move's life:
//! ```text
//!  PENDING ──learner added──▶ CATCHING_UP ──caught up──▶ SWAPPING ──joint change committed──▶ COMPLETED
//!     │                           │                         │            (placement: from → to)
//!     └──────────── a step failed `MOVE_MAX_ATTEMPTS` times, or the move was cancelled ──▶ FAILED / CANCELLED
//! ```
//! At most one move per vshard is in flight; finished moves are kept (the newest
//! `MAX_FINISHED_MOVES`) for `system.moves`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta_sm::Catalog;
use crate::NodeState;

/// Where one vshard's replicas live: the nodes that are (or are to become) its voters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VshardPlacement {
    /// Sorted, no duplicates.
    pub replicas: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MoveState {
    /// Recorded; the target is not a learner yet.
    Pending,
    /// The target is a learner, catching up by log or snapshot.
    CatchingUp,
    /// The target caught up; the vshard's leader is swapping it in for the source (handing
    /// leadership over first if the source leads).
    Swapping,
    /// The swap committed; the placement names the target instead of the source.
    Completed,
    /// Gave up after `MOVE_MAX_ATTEMPTS` failed attempts at a step; `last_error` says why.
    Failed,
    /// Cancelled by an operator or because its reason went away.
    Cancelled,
}

impl MoveState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MoveState::Pending => "PENDING",
            MoveState::CatchingUp => "CATCHING_UP",
            MoveState::Swapping => "SWAPPING",
            MoveState::Completed => "COMPLETED",
            MoveState::Failed => "FAILED",
            MoveState::Cancelled => "CANCELLED",
        }
    }

    /// Still under way (holds its vshard).
    pub fn active(&self) -> bool {
        matches!(
            self,
            MoveState::Pending | MoveState::CatchingUp | MoveState::Swapping
        )
    }
}

/// One replica move, as group 0 records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub id: u64,
    pub vshard: u32,
    pub from: u64,
    pub to: u64,
    pub state: MoveState,
    /// Why it was started (`rebalance`, `manual`, `node 3 down for 300 s`, …).
    pub reason: String,
    /// Failed attempts at the current step.
    pub attempts: u32,
    pub last_error: String,
    /// Snapshot bytes the target needs and has received (0/0 when it catches up by log).
    pub bytes_total: u64,
    pub bytes_copied: u64,
    /// Unix ms, as the proposer's clock said.
    pub started_ms: u64,
    pub updated_ms: u64,
}

/// Cluster-wide settings the control plane obeys, changed with `SET CLUSTER SETTING`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// No new automatic moves (rebalancing, replacement); moves under way finish, and
    /// manual moves are still allowed.
    #[serde(default)]
    pub rebalance_paused: bool,
}

impl ClusterSettings {
    /// Every setting with its current value, for `SHOW CLUSTER SETTINGS`.
    pub fn list(&self) -> Vec<(&'static str, String)> {
        vec![("rebalance_paused", self.rebalance_paused.to_string())]
    }

    /// Sets one setting from its text form; the error names the accepted values.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "rebalance_paused" => {
                self.rebalance_paused = match value.to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    other => {
                        return Err(format!(
                            "rebalance_paused must be true or false, not {other:?}"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown cluster setting {other:?} (known: rebalance_paused)"
                ))
            }
        }
        Ok(())
    }
}

/// Failed attempts at one step of a move before it is marked FAILED.
pub const MOVE_MAX_ATTEMPTS: u32 = 3;

/// Finished moves kept for `system.moves` (the oldest are forgotten first).
pub const MAX_FINISHED_MOVES: usize = 1_000;

/// A change to a move, proposed by whoever drives it (the vshard's leader).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MoveUpdate {
    /// The next state (only forward: PENDING → CATCHING_UP → SWAPPING → COMPLETED).
    Advance(MoveState),
    /// A step failed: counts an attempt; the move FAILS after `MOVE_MAX_ATTEMPTS`.
    Attempt { error: String },
    /// Snapshot progress.
    Progress { bytes_copied: u64, bytes_total: u64 },
    /// Gives up (an operator, or the planner when the move's reason went away).
    Cancel { why: String },
}

impl Catalog {
    /// The nodes vshard `v`'s replicas live on (its intended voters), sorted.
    ///
    /// Catalogs written before per-vshard placement have none recorded: every vshard then
    /// lives on the nodes that host vshards (`hosts_vshards`), as it did then; the control
    /// plane records that as the placement once (`InitPlacement`).
    pub fn replicas(&self, v: u32) -> Vec<u64> {
        match self.placement.get(&v) {
            Some(p) => p.replicas.clone(),
            None => self.vshard_hosts().iter().map(|n| n.id).collect(),
        }
    }

    /// The move of vshard `v` under way, if any.
    pub fn active_move(&self, v: u32) -> Option<&MoveRecord> {
        self.moves
            .values()
            .find(|m| m.vshard == v && m.state.active())
    }

    /// Every move under way.
    pub fn active_moves(&self) -> impl Iterator<Item = &MoveRecord> {
        self.moves.values().filter(|m| m.state.active())
    }

    /// Whether node `n` should hold a replica of `v` now: it is a replica, or the target of
    /// the move under way.
    pub fn wants_replica(&self, v: u32, n: u64) -> bool {
        self.replicas(v).contains(&n) || self.active_move(v).is_some_and(|m| m.to == n)
    }

    /// Records the placement of every vshard in `0..vshards` not recorded yet as `replicas`.
    pub(crate) fn init_placement(&mut self, vshards: u32, replicas: &[u64]) -> Result<u64, String> {
        if replicas.is_empty() {
            return Err("a placement needs at least one replica".into());
        }
        self.check_nodes_usable(replicas)?;
        let mut sorted = replicas.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for v in 0..vshards {
            self.placement.entry(v).or_insert_with(|| VshardPlacement {
                replicas: sorted.clone(),
            });
        }
        Ok(0)
    }

    /// Adds replicas to vshard `v` (growing towards the replication factor; the vshard's
    /// leader promotes them all in one step once they caught up).
    pub(crate) fn add_replicas(&mut self, v: u32, add: &[u64]) -> Result<u64, String> {
        if self.active_move(v).is_some() {
            return Err(format!("vshard {v} has a move under way"));
        }
        self.check_nodes_usable(add)?;
        let mut replicas = self.replicas(v);
        for n in add {
            if replicas.contains(n) {
                return Err(format!("node {n} already holds a replica of vshard {v}"));
            }
            replicas.push(*n);
        }
        replicas.sort_unstable();
        self.placement.insert(v, VshardPlacement { replicas });
        Ok(u64::from(v))
    }

    fn check_nodes_usable(&self, nodes: &[u64]) -> Result<(), String> {
        for n in nodes {
            match self.nodes.get(n) {
                None => return Err(format!("node {n} is not registered")),
                Some(e) if e.state == NodeState::Decommissioned => {
                    return Err(format!("node {n} is decommissioned"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Starts moving vshard `v`'s replica from `from` to `to`; returns the move's id.
    pub(crate) fn start_move(
        &mut self,
        v: u32,
        from: u64,
        to: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<u64, String> {
        if let Some(m) = self.active_move(v) {
            return Err(format!(
                "vshard {v} already has move {} under way ({} → {}, {})",
                m.id,
                m.from,
                m.to,
                m.state.as_str()
            ));
        }
        let replicas = self.replicas(v);
        if !replicas.contains(&from) {
            return Err(format!("node {from} holds no replica of vshard {v}"));
        }
        if replicas.contains(&to) {
            return Err(format!("node {to} already holds a replica of vshard {v}"));
        }
        match self.nodes.get(&to) {
            None => return Err(format!("node {to} is not registered")),
            Some(n) if n.state != NodeState::Active => {
                return Err(format!(
                    "node {to} is {}; only an ACTIVE node can take a replica",
                    n.state.as_str()
                ))
            }
            Some(_) => {}
        }
        let id = self.next_move_id.max(1);
        self.next_move_id = id + 1;
        self.moves.insert(
            id,
            MoveRecord {
                id,
                vshard: v,
                from,
                to,
                state: MoveState::Pending,
                reason: reason.to_string(),
                attempts: 0,
                last_error: String::new(),
                bytes_total: 0,
                bytes_copied: 0,
                started_ms: now_ms,
                updated_ms: now_ms,
            },
        );
        self.forget_old_moves();
        Ok(id)
    }

    /// Applies a change to move `id`.
    pub(crate) fn update_move(
        &mut self,
        id: u64,
        update: &MoveUpdate,
        now_ms: u64,
    ) -> Result<u64, String> {
        let m = self
            .moves
            .get(&id)
            .ok_or_else(|| format!("move {id} is not recorded"))?;
        if !m.state.active() {
            return Err(format!("move {id} is already {}", m.state.as_str()));
        }
        let (v, from, to, state) = (m.vshard, m.from, m.to, m.state);
        let mut next = m.clone();
        next.updated_ms = now_ms;
        match update {
            MoveUpdate::Advance(s) => {
                if *s <= state || !s.active() && *s != MoveState::Completed {
                    return Err(format!(
                        "move {id} cannot go from {} to {}",
                        state.as_str(),
                        s.as_str()
                    ));
                }
                next.state = *s;
                next.attempts = 0;
                if *s == MoveState::Completed {
                    let mut replicas: Vec<u64> = self
                        .replicas(v)
                        .into_iter()
                        .filter(|n| *n != from)
                        .collect();
                    if !replicas.contains(&to) {
                        replicas.push(to);
                    }
                    replicas.sort_unstable();
                    self.placement.insert(v, VshardPlacement { replicas });
                }
            }
            MoveUpdate::Attempt { error } => {
                next.attempts += 1;
                next.last_error = error.clone();
                if next.attempts >= MOVE_MAX_ATTEMPTS {
                    next.state = MoveState::Failed;
                }
            }
            MoveUpdate::Progress {
                bytes_copied,
                bytes_total,
            } => {
                next.bytes_copied = *bytes_copied;
                next.bytes_total = *bytes_total;
            }
            MoveUpdate::Cancel { why } => {
                if state == MoveState::Swapping {
                    // The joint change may already be under way; only its driver knows.
                    return Err(format!(
                        "move {id} is swapping its replica in; it cannot be cancelled now"
                    ));
                }
                next.state = MoveState::Cancelled;
                next.last_error = why.clone();
            }
        }
        self.moves.insert(id, next);
        self.forget_old_moves();
        Ok(id)
    }

    fn forget_old_moves(&mut self) {
        let finished: Vec<u64> = self
            .moves
            .values()
            .filter(|m| !m.state.active())
            .map(|m| m.id)
            .collect();
        if finished.len() > MAX_FINISHED_MOVES {
            for id in &finished[..finished.len() - MAX_FINISHED_MOVES] {
                self.moves.remove(id);
            }
        }
    }

    /// Replica and leadership counts per node as the placement says (leaderships are not
    /// recorded in group 0; callers add them from reports).
    pub fn replica_counts(&self, vshards: u32) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for v in 0..vshards {
            for n in self.replicas(v) {
                *counts.entry(n).or_default() += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterOp, NodeAddrs};

    fn cluster(nodes: u64) -> Catalog {
        let mut c = Catalog::default();
        for token in 1..=nodes {
            c.apply_cluster(&ClusterOp::AddNode {
                id: 0,
                token,
                addrs: NodeAddrs::default(),
                state: NodeState::Active,
                hosts_vshards: token <= 3,
                max_hosts: Some(3),
            })
            .expect("added");
        }
        c
    }

    #[test]
    fn legacy_hosts_become_the_placement_once() {
        let mut c = cluster(4);
        assert_eq!(c.replicas(7), vec![1, 2, 3], "falls back to hosts_vshards");
        c.apply_cluster(&ClusterOp::InitPlacement {
            vshards: 16,
            replicas: vec![3, 1, 2],
        })
        .expect("init");
        assert_eq!(c.placement.len(), 16);
        assert_eq!(c.replicas(15), vec![1, 2, 3]);
        // A second init changes nothing already placed.
        c.apply_cluster(&ClusterOp::InitPlacement {
            vshards: 16,
            replicas: vec![4],
        })
        .expect("init again");
        assert_eq!(c.replicas(0), vec![1, 2, 3]);
    }

    #[test]
    fn a_move_runs_forward_only_and_completes_into_the_placement() {
        let mut c = cluster(4);
        c.apply_cluster(&ClusterOp::InitPlacement {
            vshards: 2,
            replicas: vec![1, 2, 3],
        })
        .expect("init");
        let start = |c: &mut Catalog, from, to| {
            c.apply_cluster(&ClusterOp::StartMove {
                vshard: 1,
                from,
                to,
                reason: "test".into(),
                now_ms: 5,
            })
        };
        // Refusals: not a replica, already a replica, unknown target.
        assert!(start(&mut c, 4, 1).is_err());
        assert!(start(&mut c, 1, 2).is_err());
        assert!(start(&mut c, 1, 9).is_err());
        let id = start(&mut c, 3, 4).expect("started");
        assert!(start(&mut c, 1, 4).is_err(), "one move per vshard");
        assert!(c.wants_replica(1, 4) && c.wants_replica(1, 3));
        let upd = |c: &mut Catalog, u: MoveUpdate| {
            c.apply_cluster(&ClusterOp::UpdateMove {
                id,
                update: u,
                now_ms: 9,
            })
        };
        assert!(upd(&mut c, MoveUpdate::Advance(MoveState::Pending)).is_err());
        upd(&mut c, MoveUpdate::Advance(MoveState::CatchingUp)).expect("catching up");
        assert!(
            upd(&mut c, MoveUpdate::Advance(MoveState::Pending)).is_err(),
            "no way back"
        );
        upd(&mut c, MoveUpdate::Advance(MoveState::Swapping)).expect("swapping");
        assert!(upd(&mut c, MoveUpdate::Cancel { why: "x".into() }).is_err());
        assert_eq!(
            c.replicas(1),
            vec![1, 2, 3],
            "not before the swap committed"
        );
        upd(&mut c, MoveUpdate::Advance(MoveState::Completed)).expect("done");
        assert_eq!(c.replicas(1), vec![1, 2, 4]);
        assert_eq!(c.replicas(0), vec![1, 2, 3]);
        assert!(!c.wants_replica(1, 3));
        assert!(upd(&mut c, MoveUpdate::Advance(MoveState::Completed)).is_err());
    }

    #[test]
    fn a_move_fails_after_three_failed_attempts_and_frees_its_vshard() {
        let mut c = cluster(4);
        let id = c
            .apply_cluster(&ClusterOp::StartMove {
                vshard: 0,
                from: 1,
                to: 4,
                reason: "test".into(),
                now_ms: 1,
            })
            .expect("started");
        for i in 0..MOVE_MAX_ATTEMPTS {
            assert_eq!(c.moves[&id].state, MoveState::Pending, "attempt {i}");
            c.apply_cluster(&ClusterOp::UpdateMove {
                id,
                update: MoveUpdate::Attempt {
                    error: format!("boom {i}"),
                },
                now_ms: 2,
            })
            .expect("attempt");
        }
        assert_eq!(c.moves[&id].state, MoveState::Failed);
        assert_eq!(c.moves[&id].last_error, "boom 2");
        assert!(c.active_move(0).is_none());
        assert_eq!(c.replicas(0), vec![1, 2, 3]);
    }

    #[test]
    fn settings_parse_and_refuse_unknown_names() {
        let mut s = ClusterSettings::default();
        s.set("rebalance_paused", "on").expect("on");
        assert!(s.rebalance_paused);
        assert!(s.set("rebalance_paused", "maybe").is_err());
        assert!(s
            .set("rebalanse_paused", "true")
            .unwrap_err()
            .contains("unknown"));
    }
}
