//! How one Raft group's membership gets from what it is to what group 0 wants: a pure
//! planner run on the group's leader, openraft-engine style (state in, steps out).
//!
//! The rules:
//! - Members join as learners first; a learner becomes a voter only once caught up.
//! - Voters change in one joint-consensus step (`SetVoters`), never one at a time: swapping
//!   a dead voter for its replacement needs a majority of the old voters and of the new,
//!   both of which the live ones are. Promoting first and removing later would pass through
//!   four voters, two of them possibly dead.
//! - Growth never passes through an even number of voters on the way: 1 → 3 in one step
//!   once two learners caught up (a joint {1}/{1,2,3} survives the loss of 2 or 3, while
//!   {1,2} survives nothing), 3 → 5 the same way. The full target is always allowed.
//! - Nothing is removed on a view of group 0 that may be stale (`may_remove`).
//! - A leader never removes itself: it hands leadership to a caught-up voter first.
//! - A move advances its record as the group passes each point (see
//!   `shoal_consensus::topology`): the target joins as a learner, catches up, is swapped in
//!   for the source, and the record says so at each step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_consensus::registry::{handoff_target, GroupState, MembershipChange};
use shoal_consensus::{Catalog, MoveState, MoveUpdate, NodeState};

use crate::view::NodeView;

/// What a group's membership should be, from group 0's records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub voters: BTreeSet<u64>,
    /// Members that should be there as learners (catching up, or beyond the voter cap).
    pub learners: BTreeSet<u64>,
    /// Group 0's view is confirmed current: members it does not want may be removed.
    pub may_remove: bool,
    pub mv: Option<MoveTarget>,
}

/// The move under way on a vshard, as its leader drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveTarget {
    pub id: u64,
    pub from: u64,
    pub to: u64,
    pub state: MoveState,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Change(MembershipChange),
    /// Record a move's progress in group 0.
    Record {
        id: u64,
        update: MoveUpdate,
    },
}

/// Vshard `v`'s target: its placement, with the move under way applied as far as it got.
pub fn vshard_target(catalog: &Catalog, v: u32, may_remove: bool) -> Target {
    let mut voters: BTreeSet<u64> = catalog.replicas(v).into_iter().collect();
    let mut learners = BTreeSet::new();
    let mv = catalog.active_move(v).map(|m| MoveTarget {
        id: m.id,
        from: m.from,
        to: m.to,
        state: m.state,
    });
    if let Some(m) = mv {
        if m.state == MoveState::Swapping {
            voters.remove(&m.from);
            voters.insert(m.to);
        } else {
            learners.insert(m.to);
        }
    }
    Target {
        voters,
        learners,
        may_remove,
        mv,
    }
}

/// Group 0's target: every registered node a member; voters up to `max_voters`, kept odd,
/// chosen among ACTIVE nodes that are alive and caught up; a voter down for at least
/// `dead_timeout` is swapped for such a node when there is one (0: never).
pub fn group0_target(
    g: &GroupState,
    nodes: &BTreeMap<u64, NodeView>,
    max_voters: usize,
    dead_timeout: Duration,
    may_remove: bool,
) -> Target {
    // A DECOMMISSIONED node stays a member while it is alive: it learns it is
    // decommissioned (and exits) by applying that entry, which it must still be sent.
    let current = |n: &u64| {
        nodes
            .get(n)
            .is_some_and(|e| e.state != NodeState::Decommissioned || e.alive)
    };
    let wanted: BTreeSet<u64> = nodes.keys().copied().filter(current).collect();
    let usable = |n: u64| {
        nodes
            .get(&n)
            .is_some_and(|e| e.state == NodeState::Active && e.alive)
            && g.caught_up(n)
    };
    let mut voters: BTreeSet<u64> = g.voters.iter().copied().filter(current).collect();
    let mut candidates: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|n| !voters.contains(n) && usable(*n))
        .collect();
    if !dead_timeout.is_zero() {
        for d in voters.clone() {
            let dead = nodes
                .get(&d)
                .and_then(|e| e.down_for)
                .is_some_and(|t| t >= dead_timeout);
            if dead && !candidates.is_empty() {
                voters.remove(&d);
                voters.insert(candidates.remove(0));
            }
        }
    }
    loop {
        let need = if voters.len() % 2 == 1 { 2 } else { 1 };
        if candidates.len() < need || voters.len() + need > max_voters.max(1) {
            break;
        }
        for c in candidates.drain(..need) {
            voters.insert(c);
        }
    }
    if voters.is_empty() {
        voters = g.voters.clone();
    }
    let learners = wanted.difference(&voters).copied().collect();
    Target {
        voters,
        learners,
        may_remove,
        mv: None,
    }
}

/// The next steps for group `g` (only its leader plans; a joint config is first finished,
/// once committed). `alive` says whether SWIM sees a node alive, `leaderships` how many groups
/// a node leads (for choosing whom to hand leadership to).
pub fn plan(
    g: &GroupState,
    t: &Target,
    alive: impl Fn(u64) -> bool,
    leaderships: impl Fn(u64) -> usize,
) -> Vec<Step> {
    if !g.leads() {
        return vec![];
    }
    if g.joint {
        // A joint config whose second step nobody will propose (see `LeaveJoint`); one
        // not yet committed may still be finished by the change under way.
        return if g.membership_index <= g.committed {
            vec![Step::Change(MembershipChange::LeaveJoint)]
        } else {
            vec![]
        };
    }
    let members = g.members();
    let missing: Vec<u64> = t
        .voters
        .union(&t.learners)
        .copied()
        .filter(|n| !members.contains(n))
        .collect();
    if !missing.is_empty() {
        return missing
            .into_iter()
            .map(|n| Step::Change(MembershipChange::AddLearner(n)))
            .collect();
    }
    if let Some(m) = t.mv {
        let record = |state| {
            vec![Step::Record {
                id: m.id,
                update: MoveUpdate::Advance(state),
            }]
        };
        match m.state {
            MoveState::Pending => return record(MoveState::CatchingUp),
            MoveState::CatchingUp if g.caught_up(m.to) => return record(MoveState::Swapping),
            MoveState::CatchingUp => return vec![],
            MoveState::Swapping if g.voters == t.voters => return record(MoveState::Completed),
            _ => {}
        }
    }
    if g.voters != t.voters {
        let next: BTreeSet<u64> = g
            .voters
            .intersection(&t.voters)
            .copied()
            .chain(
                g.learners
                    .intersection(&t.voters)
                    .copied()
                    .filter(|l| g.caught_up(*l)),
            )
            .collect();
        let removing = g.voters.difference(&t.voters).next().is_some();
        if next == t.voters {
            if removing && !t.may_remove {
                return vec![];
            }
            if !t.voters.contains(&g.me) {
                // Hand the group to a voter that stays; the new leader makes the change.
                let stays = GroupState {
                    voters: g.voters.intersection(&t.voters).copied().collect(),
                    ..g.clone()
                };
                return handoff_target(&stays, None, &alive, &leaderships)
                    .map(|to| vec![Step::Change(MembershipChange::TransferLeader(to))])
                    .unwrap_or_default();
            }
            // The joint step needs a majority of the old voters and of the new: do not
            // propose one that cannot commit (it would only time out).
            let up = |set: &BTreeSet<u64>| {
                set.iter().filter(|n| **n == g.me || alive(**n)).count() * 2 > set.len()
            };
            if !up(&g.voters) || !up(&t.voters) {
                return vec![];
            }
            return vec![Step::Change(MembershipChange::SetVoters(t.voters.clone()))];
        }
        if !removing && next.len() > g.voters.len() && next.len() % 2 == 1 {
            return vec![Step::Change(MembershipChange::SetVoters(next))];
        }
        return vec![];
    }
    if t.may_remove {
        let stale: BTreeSet<u64> = g
            .learners
            .iter()
            .copied()
            .filter(|l| !t.voters.contains(l) && !t.learners.contains(l))
            .collect();
        if !stale.is_empty() {
            return vec![Step::Change(MembershipChange::RemoveLearners(stale))];
        }
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    /// Node 1 leads; `caught` members hold everything, the others are far behind.
    fn group(voters: &[u64], learners: &[u64], caught: &[u64]) -> GroupState {
        let matched = voters
            .iter()
            .chain(learners)
            .filter(|n| **n != 1)
            .map(|n| (*n, Some(if caught.contains(n) { 100 } else { 3 })))
            .collect();
        GroupState {
            group: 1,
            me: 1,
            leader: Some(1),
            voters: set(voters),
            learners: set(learners),
            last_index: 100,
            matched,
            ..Default::default()
        }
    }

    fn target(voters: &[u64], learners: &[u64]) -> Target {
        Target {
            voters: set(voters),
            learners: set(learners),
            may_remove: true,
            mv: None,
        }
    }

    fn steps(g: &GroupState, t: &Target) -> Vec<Step> {
        plan(g, t, |_| true, |_| 0)
    }

    fn change(c: MembershipChange) -> Vec<Step> {
        vec![Step::Change(c)]
    }

    #[test]
    fn growth_goes_one_to_three_in_one_step_once_two_learners_caught_up() {
        let t = target(&[1, 2, 3], &[]);
        assert_eq!(
            steps(&group(&[1], &[], &[]), &t),
            vec![
                Step::Change(MembershipChange::AddLearner(2)),
                Step::Change(MembershipChange::AddLearner(3))
            ]
        );
        // One caught up: {1,2} would survive nothing; wait.
        assert_eq!(steps(&group(&[1], &[2, 3], &[2]), &t), vec![]);
        assert_eq!(
            steps(&group(&[1], &[2, 3], &[2, 3]), &t),
            change(MembershipChange::SetVoters(set(&[1, 2, 3])))
        );
        // 1 → 3 on the way to 5, while two of four learners are caught up.
        let t5 = target(&[1, 2, 3, 4, 5], &[]);
        assert_eq!(
            steps(&group(&[1], &[2, 3, 4, 5], &[2, 4]), &t5),
            change(MembershipChange::SetVoters(set(&[1, 2, 4])))
        );
        // Two voters wanted (RF 2 in a two-node cluster): the full target is fine.
        assert_eq!(
            steps(&group(&[1], &[2], &[2]), &target(&[1, 2], &[])),
            change(MembershipChange::SetVoters(set(&[1, 2])))
        );
    }

    #[test]
    fn a_dead_voter_is_swapped_out_in_one_joint_step() {
        let g = group(&[1, 2, 3], &[4], &[2, 4]);
        let t = target(&[1, 2, 4], &[]);
        assert_eq!(
            plan(&g, &t, |n| n != 3, |_| 0),
            change(MembershipChange::SetVoters(set(&[1, 2, 4])))
        );
        // Not on a stale view of group 0, and not when no majority of either side lives.
        let stale = Target {
            may_remove: false,
            ..t.clone()
        };
        assert_eq!(plan(&g, &stale, |n| n != 3, |_| 0), vec![]);
        assert_eq!(plan(&g, &t, |n| n == 4, |_| 0), vec![]);
    }

    #[test]
    fn a_leader_that_leaves_hands_over_first_and_stale_learners_go() {
        let g = group(&[1, 2, 3], &[4], &[2, 3, 4]);
        let t = target(&[2, 3, 4], &[]);
        assert_eq!(
            plan(&g, &t, |_| true, |n| if n == 2 { 3 } else { 1 }),
            change(MembershipChange::TransferLeader(3))
        );
        let g = group(&[1, 2, 3], &[4, 5], &[2, 3]);
        assert_eq!(
            steps(&g, &target(&[1, 2, 3], &[5])),
            change(MembershipChange::RemoveLearners(set(&[4])))
        );
        // Only the leader plans. A joint change not yet committed is left to finish; a
        // committed one is finished here (nothing else would propose its second step).
        let mut follower = group(&[1, 2, 3], &[], &[]);
        follower.leader = Some(2);
        assert_eq!(steps(&follower, &target(&[1, 2, 4], &[])), vec![]);
        let mut joint = group(&[1, 2, 3], &[], &[]);
        joint.joint = true;
        joint.membership_index = 90;
        joint.committed = 89;
        assert_eq!(steps(&joint, &target(&[1, 2, 4], &[])), vec![]);
        joint.committed = 90;
        assert_eq!(
            steps(&joint, &target(&[1, 2, 4], &[])),
            change(MembershipChange::LeaveJoint)
        );
    }

    #[test]
    fn a_move_is_driven_and_recorded_step_by_step() {
        let mv = |state| MoveTarget {
            id: 7,
            from: 3,
            to: 4,
            state,
        };
        let record = |s| {
            vec![Step::Record {
                id: 7,
                update: MoveUpdate::Advance(s),
            }]
        };
        let pending = Target {
            mv: Some(mv(MoveState::Pending)),
            ..target(&[1, 2, 3], &[4])
        };
        assert_eq!(
            steps(&group(&[1, 2, 3], &[], &[2, 3]), &pending),
            change(MembershipChange::AddLearner(4))
        );
        assert_eq!(
            steps(&group(&[1, 2, 3], &[4], &[2, 3]), &pending),
            record(MoveState::CatchingUp)
        );
        let catching = Target {
            mv: Some(mv(MoveState::CatchingUp)),
            ..pending.clone()
        };
        assert_eq!(steps(&group(&[1, 2, 3], &[4], &[2, 3]), &catching), vec![]);
        assert_eq!(
            steps(&group(&[1, 2, 3], &[4], &[2, 3, 4]), &catching),
            record(MoveState::Swapping)
        );
        let swapping = Target {
            mv: Some(mv(MoveState::Swapping)),
            ..target(&[1, 2, 4], &[])
        };
        assert_eq!(
            steps(&group(&[1, 2, 3], &[4], &[2, 3, 4]), &swapping),
            change(MembershipChange::SetVoters(set(&[1, 2, 4])))
        );
        assert_eq!(
            steps(&group(&[1, 2, 4], &[], &[2, 4]), &swapping),
            record(MoveState::Completed)
        );
        // The source leads: it hands over to a voter that stays (never to the learner).
        let mut g = group(&[1, 2, 3], &[4], &[2, 3, 4]);
        g.me = 3;
        g.leader = Some(3);
        g.matched = [(1, Some(100)), (2, Some(100)), (4, Some(100))].into();
        let moving_3_to_4 = Target {
            mv: Some(mv(MoveState::Swapping)),
            ..target(&[1, 2, 4], &[])
        };
        assert_eq!(
            steps(&g, &moving_3_to_4),
            change(MembershipChange::TransferLeader(1))
        );
    }

    #[test]
    fn vshard_targets_follow_the_move() {
        use shoal_consensus::{ClusterOp, NodeAddrs};
        let mut c = Catalog::default();
        for token in 1..=4 {
            c.apply_cluster(&ClusterOp::AddNode {
                id: 0,
                token,
                addrs: NodeAddrs::default(),
                state: NodeState::Active,
                hosts_vshards: token <= 3,
                max_hosts: None,
            })
            .expect("node");
        }
        assert_eq!(vshard_target(&c, 0, true), target(&[1, 2, 3], &[]));
        let id = c
            .apply_cluster(&ClusterOp::StartMove {
                vshard: 0,
                from: 2,
                to: 4,
                reason: "t".into(),
                now_ms: 0,
            })
            .expect("move");
        let t = vshard_target(&c, 0, true);
        assert_eq!((t.voters, t.learners), (set(&[1, 2, 3]), set(&[4])));
        for s in [MoveState::CatchingUp, MoveState::Swapping] {
            c.apply_cluster(&ClusterOp::UpdateMove {
                id,
                update: MoveUpdate::Advance(s),
                now_ms: 0,
            })
            .expect("advance");
        }
        let t = vshard_target(&c, 0, true);
        assert_eq!((t.voters, t.learners), (set(&[1, 3, 4]), set(&[])));
    }

    fn node(id: u64, state: NodeState, alive: bool, down_s: Option<u64>) -> (u64, NodeView) {
        (
            id,
            NodeView {
                id,
                state,
                rpc_addr: format!("n{id}"),
                alive,
                down_for: down_s.map(Duration::from_secs),
                load: None,
                state_since_ms: 0,
            },
        )
    }

    #[test]
    fn group0_voters_stay_odd_and_replace_the_long_dead() {
        let t = Duration::from_secs(60);
        let active = |ids: &[u64]| -> BTreeMap<u64, NodeView> {
            ids.iter()
                .map(|i| node(*i, NodeState::Active, true, None))
                .collect()
        };
        // Four nodes: three voters, one learner.
        let g = group(&[1], &[2, 3, 4], &[2, 3, 4]);
        let tg = group0_target(&g, &active(&[1, 2, 3, 4]), 5, t, true);
        assert_eq!((tg.voters, tg.learners), (set(&[1, 2, 3]), set(&[4])));
        // Two nodes: one voter (two would survive nothing either way, and need both).
        let g = group(&[1], &[2], &[2]);
        assert_eq!(
            group0_target(&g, &active(&[1, 2]), 5, t, true).voters,
            set(&[1])
        );
        // A joining (not yet ACTIVE) node is not promoted.
        let mut nodes = active(&[1, 2]);
        nodes.extend([node(3, NodeState::Joining, true, None)]);
        let g = group(&[1], &[2, 3], &[2, 3]);
        assert_eq!(group0_target(&g, &nodes, 5, t, true).voters, set(&[1]));
        // Voter 3 dead for long, learner 4 caught up: swapped; decommissioned 2 dropped
        // once it is gone (its process exits when it applies its DECOMMISSIONED).
        let mut nodes = active(&[1, 4]);
        nodes.extend([
            node(3, NodeState::Active, false, Some(120)),
            node(2, NodeState::Decommissioned, false, Some(1)),
        ]);
        let g = group(&[1, 2, 3], &[4], &[2, 4]);
        let tg = group0_target(&g, &nodes, 5, t, true);
        assert_eq!((tg.voters, tg.learners), (set(&[1, 4]), set(&[3])));
        nodes.extend([node(2, NodeState::Decommissioned, true, None)]);
        let tg = group0_target(&g, &nodes, 5, t, true);
        assert!(tg.voters.contains(&2), "still alive: still sent the log");
    }
}
