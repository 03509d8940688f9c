//! Raft membership of the groups hosted here (to be driven by the control plane).

use super::*;

impl Registry {
    /// On the group-0 leader: makes Raft membership follow the node registry. Every
    /// registered node becomes a learner; a caught-up learner is promoted to voter while
    /// there are fewer than `max_voters`; a caught-up JOINING node becomes ACTIVE.
    /// Idempotent, so a new leader simply carries on where the old one stopped.
    pub async fn reconcile_members(&self, max_voters: usize, rf: usize) -> Result<(), Error> {
        let catalog = self.catalog.read().clone();
        let all: Vec<(u64, String)> = catalog
            .nodes
            .values()
            .filter(|n| n.state != crate::NodeState::Decommissioned)
            .map(|n| (n.id, n.addrs.rpc.clone()))
            .collect();
        let mut first_error = None;
        // Group 0's membership takes effect when appended, its catalog when applied: the
        // registry is as new as the membership only once everything up to it is applied.
        let fresh_meta = {
            let m = self.meta.metrics().borrow_watched().clone();
            let membership_at = m.membership_config.log_id().as_ref().map_or(0, |l| l.index);
            m.last_applied.as_ref().map_or(0, |l| l.index) >= membership_at
        };
        match reconcile_group(
            &self.meta,
            0,
            self.cfg.node_id,
            &all,
            max_voters,
            fresh_meta,
        )
        .await
        {
            Ok(Some(caught_up)) => {
                for n in catalog.nodes.values() {
                    if n.state == crate::NodeState::Joining && caught_up.contains(&n.id) {
                        tracing::info!(node = n.id, "node caught up; ACTIVE");
                        let r = self
                            .propose_meta(Command::Cluster(crate::ClusterOp::SetState {
                                id: n.id,
                                state: crate::NodeState::Active,
                            }))
                            .await;
                        if let Err(e) = r {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        // Every vshard group this node leads takes the vshard hosts as replicas.
        let mut catalog = catalog;
        let hosts_of = |c: &crate::Catalog| -> Vec<(u64, String)> {
            c.vshard_hosts()
                .iter()
                .map(|n| (n.id, n.addrs.rpc.clone()))
                .collect()
        };
        let mut hosts = hosts_of(&catalog);
        let me = self.cfg.node_id;
        let shards = self.shards();
        // A replica of a node no longer hosting is removed only on a catalog confirmed as
        // current with group 0's leader: this node's copy may lag, and removing on an old
        // host list could undo a replacement another leader already made.
        let stale_here = shards.iter().any(|s| {
            let m = s.raft.metrics().borrow_watched().clone();
            m.current_leader == Some(me)
                && m.membership_config
                    .membership()
                    .nodes()
                    .any(|(n, _)| !hosts.iter().any(|(h, _)| h == n))
        });
        let mut may_remove = false;
        if stale_here && self.meta_barrier(Duration::from_secs(2)).await.is_ok() {
            catalog = self.catalog.read().clone();
            hosts = hosts_of(&catalog);
            may_remove = true;
        }
        for (v, s) in shards.iter().enumerate() {
            // A group whose membership is still changing must not be quiesced: membership
            // changes need its timers (replication retries, heartbeats).
            let m = s.raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            let settled = membership.learner_ids().next().is_none()
                && hosts
                    .iter()
                    .all(|(id, _)| membership.nodes().any(|(n, _)| n == id))
                && membership
                    .nodes()
                    .all(|(n, _)| hosts.iter().any(|(h, _)| h == n));
            if !settled {
                s.wake();
            }
            // One group's trouble must not stop the others from being reconciled.
            let r = reconcile_group(
                &s.raft,
                group_of_vshard(v as u32),
                self.cfg.node_id,
                &hosts,
                rf,
                may_remove,
            )
            .await;
            if let Err(e) = r {
                tracing::debug!(vshard = v, error = %e, "reconciling vshard membership; will retry");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Run by the maintenance loop: a node whose disk dropped below `min_free_disk_bytes`
    /// cannot append, so every vshard it leads would stall until space is back. It hands
    /// each of them to a follower that has every entry (a leadership transfer, which
    /// followers grant even while they believe in this leader).
    pub async fn shed_leaders_if_disk_full(&self) {
        if self.check_disk().is_ok() {
            return;
        }
        let me = self.cfg.node_id;
        for (v, s) in self.shards().iter().enumerate() {
            let m = s.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let to = m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, l)| **id != me && l.as_ref().is_some_and(|l| l.index == last))
                    .map(|(id, _)| *id)
                    .next()
            });
            if let Some(to) = to {
                s.wake();
                tracing::warn!(vshard = v, to, "disk full: handing vshard leadership away");
                let _ = s.raft.trigger().transfer_leader(to).await;
            }
        }
    }

    /// Spreads vshard leadership over the replicas: when this node leads at least two
    /// vshards more than some alive, caught-up follower of one of them does (counted over
    /// the groups hosted here), it hands that vshard to the follower. At most one transfer
    /// per call, so the maintenance loop moves leaders gradually; every node only sheds its
    /// own excess, so nodes never fight over a group. Returns the vshard moved, if any.
    pub async fn balance_leaders(&self) -> Option<u32> {
        if self.check_disk().is_err() {
            return None;
        }
        let me = self.cfg.node_id;
        let shards = self.shards();
        let metrics: Vec<_> = shards
            .iter()
            .map(|s| s.raft.metrics().borrow_watched().clone())
            .collect();
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        for m in &metrics {
            if let Some(l) = m.current_leader {
                *led.entry(l).or_default() += 1;
            }
        }
        let mine = led.get(&me).copied().unwrap_or(0);
        for (v, m) in metrics.iter().enumerate() {
            if m.current_leader != Some(me) {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let target = m
                .replication
                .iter()
                .flatten()
                .filter(|(id, matched)| {
                    **id != me
                        && m.membership_config
                            .membership()
                            .voter_ids()
                            .any(|v| v == **id)
                        && matched.as_ref().is_some_and(|l| l.index == last)
                        && self.is_alive(**id)
                })
                .map(|(id, _)| (led.get(id).copied().unwrap_or(0), *id))
                .min();
            let Some((theirs, to)) = target else { continue };
            if mine < theirs + 2 {
                continue;
            }
            let s = &shards[v];
            s.wake();
            tracing::info!(vshard = v, to, mine, theirs, "balancing vshard leadership");
            let _ = s.raft.trigger().transfer_leader(to).await;
            return Some(v as u32);
        }
        None
    }
}

/// On the leader of `raft`: every node of `desired` becomes a learner; caught-up learners
/// are promoted while there are fewer than `max_voters` voters. Returns the caught-up nodes
/// when this node leads, `None` otherwise. Idempotent: a new leader carries on.
pub(super) async fn reconcile_group<SM>(
    raft: &Raft<TypeConfig, SM>,
    group: u32,
    me: u64,
    desired: &[(u64, String)],
    max_voters: usize,
    may_remove: bool,
) -> Result<Option<std::collections::BTreeSet<u64>>, Error>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(me) {
        return Ok(None);
    }
    let membership = m.membership_config.membership().clone();
    let members: std::collections::BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    let last = m.last_log_index.unwrap_or(0);
    let matched = |id: u64| -> Option<u64> {
        if id == me {
            return Some(last);
        }
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
    };
    let caught_up: std::collections::BTreeSet<u64> = members
        .iter()
        .copied()
        .filter(|id| matched(*id).is_some_and(|x| last.saturating_sub(x) <= 16))
        .collect();
    for (id, addr) in desired {
        if members.contains(id) {
            continue;
        }
        tracing::info!(group, node = id, rpc = %addr, "adding a learner");
        let add = raft.add_learner(*id, openraft::impls::BasicNode::new(addr), false);
        membership_change(group, "adding a learner", add).await?;
    }
    let wanted = |id: u64| desired.iter().any(|(d, _)| *d == id);
    // The voters this group should have: the wanted voters it has, plus caught-up wanted
    // learners up to `max_voters`; voters no longer wanted (replaced or retired nodes) go
    // in the same change once the wanted ones are complete. One joint-consensus step
    // (`ReplaceAllVoters`) swaps a dead voter for its replacement: it needs a majority of
    // the old set and of the new one, both of which the live voters have. Promoting the
    // replacement first and removing later would pass through four voters, two of them
    // possibly dead (the harness' wiped-disk scenario hit exactly that, and the group
    // could never commit again).
    let current: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let mut next: std::collections::BTreeSet<u64> =
        current.iter().copied().filter(|v| wanted(*v)).collect();
    for id in membership.learner_ids() {
        if next.len() < max_voters && caught_up.contains(&id) && wanted(id) {
            next.insert(id);
        }
    }
    let stale_voters: Vec<u64> = current.iter().copied().filter(|v| !wanted(*v)).collect();
    // Without `may_remove` the caller's view of who is wanted may be older than this
    // membership, and removing on it could undo a replacement: only promote then.
    let complete = next.len() >= max_voters.min(desired.len());
    if !(may_remove && complete) {
        next.extend(stale_voters.iter().copied());
    }
    if next.contains(&me) && next != current {
        tracing::info!(group, from = ?current, to = ?next, "changing voters");
        let change = raft.change_membership(
            openraft::ChangeMembers::ReplaceAllVoters(next.clone()),
            false,
        );
        membership_change(group, "changing voters", change).await?;
        // The membership changed under us: learners are looked at on the next round.
        return Ok(Some(caught_up));
    }
    if !next.contains(&me) {
        // A leader does not remove itself: it hands the group to a caught-up wanted voter,
        // whose reconciler then removes this replica.
        let to = next.iter().copied().find(|id| caught_up.contains(id));
        if let Some(to) = to {
            tracing::info!(
                group,
                to,
                "handing leadership over before leaving the group"
            );
            let _ = raft.trigger().transfer_leader(to).await;
        }
        return Ok(Some(caught_up));
    }
    if !may_remove {
        return Ok(Some(caught_up));
    }
    // Learners no longer wanted go at once: they never count for a quorum.
    let stale_learners: std::collections::BTreeSet<u64> =
        membership.learner_ids().filter(|id| !wanted(*id)).collect();
    if !stale_learners.is_empty() {
        tracing::info!(group, learners = ?stale_learners, "removing learners of nodes no longer wanted");
        let remove =
            raft.change_membership(openraft::ChangeMembers::RemoveNodes(stale_learners), false);
        membership_change(group, "removing a learner", remove).await?;
    }
    Ok(Some(caught_up))
}

/// One membership change of `group`, given up after `MEMBERSHIP_CHANGE_TIMEOUT` (the
/// reconciler retries on its next round).
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
