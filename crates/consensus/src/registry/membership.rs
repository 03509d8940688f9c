//! Raft membership of the groups hosted here, as the control plane sees and changes it.
//!
//! [`Registry::group_state`] is a snapshot of one group's Raft state (what the planners in
//! the `cluster` crate plan from); [`Registry::change_membership`] carries out one step they
//! chose, bounded by `MEMBERSHIP_CHANGE_TIMEOUT`. [`handoff_target`] is the one chooser of
//! whom to hand a leadership to, used by every caller (a leaving replica, a full disk,
//! leader balancing, a move whose source leads).

use std::collections::BTreeSet;

use super::*;

/// One group's Raft state as this node sees it: the view the control plane plans from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    pub group: u32,
    pub me: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// The membership is a joint configuration: a change is under way.
    pub joint: bool,
    pub last_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// The log index of the membership in effect.
    pub membership_index: u64,
    /// On the leader: the last index each other member is known to hold (`None`: not
    /// known yet). Empty elsewhere.
    pub matched: BTreeMap<u64, Option<u64>>,
}

/// Entries a member may lag the leader by and still count as caught up (promotion to
/// voter, hand-off of leadership).
pub const CAUGHT_UP_SLACK: u64 = 16;

impl GroupState {
    pub fn leads(&self) -> bool {
        self.leader == Some(self.me)
    }

    pub fn members(&self) -> BTreeSet<u64> {
        self.voters.union(&self.learners).copied().collect()
    }

    /// Whether `node` holds (nearly) everything the leader has; the leader itself does.
    pub fn caught_up(&self, node: u64) -> bool {
        if node == self.me && self.leads() {
            return true;
        }
        self.matched
            .get(&node)
            .copied()
            .flatten()
            .is_some_and(|m| self.last_index.saturating_sub(m) <= CAUGHT_UP_SLACK)
    }
}

/// One change to a group's Raft membership or leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a node as a learner (it catches up by log or snapshot; it never votes).
    AddLearner(u64),
    /// Make exactly these the voters, in one joint-consensus step: a majority of the old
    /// voters and of the new must agree. Voters left out are removed from the group.
    SetVoters(BTreeSet<u64>),
    /// Remove these learners.
    RemoveLearners(BTreeSet<u64>),
    /// Hand leadership to this voter.
    TransferLeader(u64),
    /// Finish a joint configuration left behind: its second step (to the new voters alone)
    /// is never proposed when the change that began it was cut off after its first step
    /// (the leader changed, or the change timed out), and openraft does not finish it
    /// itself, so a group would stay joint (and its planner idle) for good.
    LeaveJoint,
}

/// Whom the leader of `g` should hand leadership to: a voter other than itself that is
/// alive and caught up (within `CAUGHT_UP_SLACK`: the leader stops taking writes once the
/// transfer starts, and the target waits until it holds every entry before it campaigns,
/// so a target that is always a few entries behind under load still works), preferring
/// `prefer`, then the one `load` ranks lowest (fewest leaderships), then the lowest id.
/// `None` if there is none. The one chooser every caller uses.
pub fn handoff_target(
    g: &GroupState,
    prefer: Option<u64>,
    alive: impl Fn(u64) -> bool,
    load: impl Fn(u64) -> usize,
) -> Option<u64> {
    let ok = |n: u64| n != g.me && g.voters.contains(&n) && alive(n) && g.caught_up(n);
    if let Some(p) = prefer.filter(|p| ok(*p)) {
        return Some(p);
    }
    g.voters
        .iter()
        .copied()
        .filter(|n| ok(*n))
        .min_by_key(|n| (load(*n), *n))
}

impl Registry {
    /// Group `group`'s state here (group 0, or vshard `group - 1` if hosted).
    pub fn group_state(&self, group: u32) -> Option<GroupState> {
        let m = match group.checked_sub(1) {
            None => self.meta.metrics().borrow_watched().clone(),
            Some(v) => self.shard(v)?.raft.metrics().borrow_watched().clone(),
        };
        Some(state_of(group, self.cfg.node_id, &m))
    }

    /// The states of every vshard group hosted here, by vshard.
    pub fn vshard_states(&self) -> BTreeMap<u32, GroupState> {
        self.shards()
            .iter()
            .map(|(&v, s)| {
                let m = s.raft.metrics().borrow_watched().clone();
                (v, state_of(group_of_vshard(v), self.cfg.node_id, &m))
            })
            .collect()
    }

    /// Carries out one membership change of `group` (this node must lead it), waiting at
    /// most `MEMBERSHIP_CHANGE_TIMEOUT` for it to commit; the control plane retries.
    pub async fn change_membership(
        &self,
        group: u32,
        change: MembershipChange,
    ) -> Result<(), Error> {
        match group.checked_sub(1) {
            None => self.change_on(&self.meta, 0, change).await,
            Some(v) => {
                let s = self.shard(v).ok_or_else(|| self.not_hosted(v))?;
                // A group whose membership changes must be awake: the change needs its
                // timers (replication retries, heartbeats).
                s.wake();
                self.change_on(&s.raft, group, change).await
            }
        }
    }

    /// Carries out `change`; a leader whose lease lapsed while its group was quiet (no
    /// heartbeats) refuses it until a heartbeat round renews the lease, so that refusal is
    /// retried (after asking for a heartbeat) until `MEMBERSHIP_CHANGE_TIMEOUT`.
    async fn change_on<SM>(
        &self,
        raft: &Raft<TypeConfig, SM>,
        group: u32,
        change: MembershipChange,
    ) -> Result<(), Error>
    where
        SM: openraft::storage::RaftStateMachine<TypeConfig>,
    {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_CHANGE_TIMEOUT;
        loop {
            let r = self.change_once(raft, group, change.clone()).await;
            let lease_lapsed = matches!(r, Err(Error::NotLeader { hint: None, .. }))
                && raft.metrics().borrow_watched().current_leader == Some(self.cfg.node_id);
            if !lease_lapsed || tokio::time::Instant::now() >= deadline {
                return r;
            }
            let _ = raft.trigger().heartbeat().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn change_once<SM>(
        &self,
        raft: &Raft<TypeConfig, SM>,
        group: u32,
        change: MembershipChange,
    ) -> Result<(), Error>
    where
        SM: openraft::storage::RaftStateMachine<TypeConfig>,
    {
        match change {
            MembershipChange::AddLearner(n) => {
                let addr = self.rpc_addr_of(n);
                tracing::info!(group, node = n, rpc = %addr, "adding a learner");
                let add = raft.add_learner(n, openraft::impls::BasicNode::new(&addr), false);
                membership_change(group, "adding a learner", add).await
            }
            MembershipChange::SetVoters(voters) => {
                let m = raft.metrics().borrow_watched().clone();
                let from: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
                tracing::info!(group, ?from, to = ?voters, "changing voters (one joint step)");
                let change = raft
                    .change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), false);
                membership_change(group, "changing voters", change).await
            }
            MembershipChange::RemoveLearners(learners) => {
                tracing::info!(group, ?learners, "removing learners");
                let change =
                    raft.change_membership(openraft::ChangeMembers::RemoveNodes(learners), false);
                membership_change(group, "removing learners", change).await
            }
            MembershipChange::LeaveJoint => {
                let m = raft.metrics().borrow_watched().clone();
                let configs = m.membership_config.membership().get_joint_config().clone();
                tracing::warn!(group, ?configs, "finishing a joint membership left behind");
                // An empty change applies to the joint's last config: openraft bridges
                // [old, new] to new, a uniform config, in one entry.
                let change = raft.change_membership(
                    openraft::ChangeMembers::AddVoterIds(BTreeSet::new()),
                    false,
                );
                membership_change(group, "finishing a joint membership", change).await
            }
            MembershipChange::TransferLeader(to) => {
                tracing::info!(group, to, "handing leadership over");
                self.transfers
                    .lock()
                    .insert(group, (to, std::time::Instant::now()));
                raft.trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| Error::Unavailable {
                        group,
                        reason: format!("transferring leadership to {to}: {e}"),
                    })
            }
        }
    }

    /// Transfers this node asked for that did not happen: while a transfer is pending,
    /// openraft's leader sends no heartbeats and takes no writes, and a target that died
    /// meanwhile never takes over. After `TRANSFER_STUCK` the transfer is asked again of a
    /// caught-up voter that is alive (the first choice if it still is), which replaces the
    /// pending one. Returns how many were re-asked.
    pub async fn unstick_transfers(&self, alive: impl Fn(u64) -> bool) -> usize {
        let stuck: Vec<(u32, u64)> = {
            let mut t = self.transfers.lock();
            let me = self.cfg.node_id;
            let mut stuck = vec![];
            t.retain(|group, (to, at)| {
                let leads = self
                    .group_state(*group)
                    .is_some_and(|g| g.leader == Some(me));
                if !leads {
                    return false;
                }
                if at.elapsed() >= TRANSFER_STUCK {
                    stuck.push((*group, *to));
                }
                true
            });
            stuck
        };
        let mut n = 0;
        for (group, to) in stuck {
            let Some(g) = self.group_state(group) else {
                continue;
            };
            let next = handoff_target(&g, Some(to).filter(|t| alive(*t)), &alive, |_| 0);
            let Some(next) = next else {
                continue;
            };
            tracing::warn!(
                group,
                stuck_on = to,
                next,
                "a leadership transfer did not happen; asking again"
            );
            if self
                .change_membership(group, MembershipChange::TransferLeader(next))
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Whether a leadership transfer of `group` asked here is still pending (asked less
    /// than `TRANSFER_STUCK` ago and this node still leads).
    pub fn transfer_pending(&self, group: u32) -> bool {
        self.transfers
            .lock()
            .get(&group)
            .is_some_and(|(_, at)| at.elapsed() < TRANSFER_STUCK)
            && self
                .group_state(group)
                .is_some_and(|g| g.leader == Some(self.cfg.node_id))
    }

    /// A node's RPC address from group 0's registry (what Raft membership records).
    fn rpc_addr_of(&self, node: u64) -> String {
        self.catalog
            .read()
            .nodes
            .get(&node)
            .map(|n| n.addrs.rpc.clone())
            .unwrap_or_default()
    }

    /// Hands leadership of vshard `v` to `to` if this node leads it and `to` is a voter
    /// holding every entry (asked by the control plane's leader balancing); answers
    /// whether it did.
    pub async fn transfer_vshard_leader(&self, v: u32, to: u64) -> bool {
        let Some(g) = self.group_state(group_of_vshard(v)) else {
            return false;
        };
        if !g.leads() || handoff_target(&g, Some(to), |_| true, |_| 0) != Some(to) {
            return false;
        }
        self.change_membership(g.group, MembershipChange::TransferLeader(to))
            .await
            .is_ok()
    }
}

impl Registry {
    /// Asks `node` (the leader of vshard `v`, as reported) to hand its leadership to `to`;
    /// answers whether it did.
    pub async fn ask_leader_transfer(&self, node: u64, v: u32, to: u64) -> Result<bool, Error> {
        let msg = RaftMessage {
            group: group_of_vshard(v),
            kind: RaftRpc::LeaderTransfer,
            header: serde_json::to_vec(&to).unwrap_or_default().into(),
            entries: vec![],
        };
        let body = self
            .transport
            .send_raft(node, "", msg, Duration::from_secs(5))
            .await
            .map_err(|e| Error::Unavailable {
                group: group_of_vshard(v),
                reason: e.to_string(),
            })?;
        Ok(serde_json::from_slice(&body).unwrap_or(false))
    }
}

fn state_of(group: u32, me: u64, m: &openraft::RaftMetrics<TypeConfig>) -> GroupState {
    let membership = m.membership_config.membership();
    GroupState {
        group,
        me,
        leader: m.current_leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        joint: membership.get_joint_config().len() > 1,
        last_index: m.last_log_index.unwrap_or(0),
        committed: m.local_committed.as_ref().map_or(0, |l| l.index),
        applied: m.last_applied.as_ref().map_or(0, |l| l.index),
        membership_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
        matched: m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// One membership change of `group`, given up after `MEMBERSHIP_CHANGE_TIMEOUT` (the
/// control plane retries).
pub(super) async fn membership_change(
    group: u32,
    what: &str,
    change: impl std::future::Future<
        Output = Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >,
    >,
) -> Result<(), Error> {
    let r = tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, change)
        .await
        .map_err(|_| Error::Unavailable {
            group,
            reason: format!("{what} timed out"),
        })?;
    map_write(group, r).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(me: u64, voters: &[u64], matched: &[(u64, Option<u64>)]) -> GroupState {
        GroupState {
            group: 1,
            me,
            leader: Some(me),
            voters: voters.iter().copied().collect(),
            last_index: 100,
            matched: matched.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn handoff_picks_an_alive_caught_up_voter() {
        let g = state(
            1,
            &[1, 2, 3],
            &[(1, Some(100)), (2, Some(60)), (3, Some(95))],
        );
        assert_eq!(handoff_target(&g, None, |_| true, |_| 0), Some(3));
        // Preferred when eligible, else the least loaded, else the lowest id.
        assert_eq!(handoff_target(&g, Some(2), |_| true, |_| 0), Some(3));
        let g = state(1, &[1, 2, 3], &[(2, Some(100)), (3, Some(100))]);
        assert_eq!(handoff_target(&g, Some(3), |_| true, |_| 0), Some(3));
        assert_eq!(
            handoff_target(&g, None, |_| true, |n| if n == 2 { 5 } else { 1 }),
            Some(3)
        );
        assert_eq!(handoff_target(&g, None, |n| n != 2, |_| 0), Some(3));
        // A learner never; nobody caught up: none.
        let mut g = state(1, &[1, 2], &[(2, Some(50)), (4, Some(100))]);
        g.learners.insert(4);
        assert_eq!(handoff_target(&g, None, |_| true, |_| 0), None);
    }
}
