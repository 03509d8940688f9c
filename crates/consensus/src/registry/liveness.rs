//! Keeping quiet groups quiet and failing over fast: quiescence of idle vshard groups, the
//! vote guard that stands in for a quiesced group's lease, and elections on SWIM suspicion.

use super::*;

impl Registry {
    /// A quiesced group has no heartbeats, so Raft's leader lease has long expired on every
    /// replica and any (pre-)vote would be granted — one node that failed a single RPC to
    /// its leader could move the group's leadership (the fault harness saw exactly that
    /// after a healed partition). While the group is quiesced under a leader that SWIM
    /// says is alive, its replicas refuse votes instead, as a live lease would; the leader
    /// itself refuses and wakes up, so its heartbeats reach the candidate again. A leader
    /// that is really gone turns SUSPECT within about a second and then votes go through.
    pub(super) fn guard_quiesced_vote(
        &self,
        group: u32,
        s: &ShardGroup,
        inbound: &Inbound,
    ) -> Option<bytes::Bytes> {
        let (Inbound::Vote(req) | Inbound::PreVote(req)) = inbound else {
            return None;
        };
        let leader = s.quiet();
        let candidate = req.vote.leader_id().node_id;
        if leader == QUIET_NONE || candidate == leader || req.leadership_transfer {
            return None;
        }
        if leader == self.cfg.node_id {
            s.touch();
        } else if !self.is_alive(leader) {
            return None;
        }
        let m = s.raft.metrics().borrow_watched().clone();
        tracing::debug!(
            group,
            candidate,
            leader,
            "refused a vote: the group is quiesced under a live leader"
        );
        let reply = openraft::raft::VoteResponse::<TypeConfig>::new(m.vote, m.last_applied, false);
        Some(serde_json::to_vec(&reply).unwrap_or_default().into())
    }

    /// This replica could not reach its leader: wake it (it may be quiesced, so not
    /// campaigning) and ask for a pre-vote election. If the leader is fine for the others,
    /// they refuse and nothing changes.
    pub(super) async fn leader_unreachable(&self, s: &ShardGroup, leader: u64) {
        if s.raft.metrics().borrow_watched().current_leader == Some(leader) {
            s.wake();
            let _ = s.raft.trigger().elect(true).await;
        }
    }

    /// SWIM says `node` is SUSPECT or DEAD: for every group it leads here, ask for an
    /// election (pre-vote first, so a false suspicion disturbs nothing) every ~300 ms until
    /// another leader is known or 5 s passed. Peers refuse while the dead leader's lease
    /// runs; the first try after it expires wins, instead of waiting out another random
    /// election timeout. Followers are staggered by node id so they do not split votes.
    pub fn on_member_down(self: &Arc<Self>, node: u64) {
        if node == self.cfg.node_id {
            return;
        }
        let reg = self.clone();
        tokio::spawn(async move {
            let stagger = Duration::from_millis((reg.cfg.node_id * 131 % 7) * 40);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            tokio::time::sleep(stagger).await;
            loop {
                let mut pending = 0;
                let groups = std::iter::once(&reg.meta.metrics())
                    .map(|m| m.borrow_watched().current_leader)
                    .collect::<Vec<_>>();
                if groups[0] == Some(node) {
                    pending += 1;
                    let _ = reg.meta.trigger().elect(true).await;
                }
                for s in reg.shards().values() {
                    if s.raft.metrics().borrow_watched().current_leader == Some(node) {
                        s.wake();
                        pending += 1;
                        let _ = s.raft.trigger().elect(true).await;
                    }
                }
                if pending == 0 || tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }

    /// A follower's answer to `Quiesce`: agree (and stop campaigning) only if the sender
    /// is this replica's leader at the same term and this replica has applied everything.
    pub(super) fn handle_quiesce(&self, msg: &RaftMessage) -> bool {
        let Ok((leader, term, index)) = serde_json::from_slice::<(u64, u64, u64)>(&msg.header)
        else {
            return false;
        };
        let Some(s) = msg.group.checked_sub(1).and_then(|v| self.shard(v)) else {
            return false;
        };
        let m = s.raft.metrics().borrow_watched().clone();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        if m.current_leader != Some(leader)
            || m.current_term != term
            || m.last_log_index != Some(index)
            || applied < index
        {
            return false;
        }
        s.quiesce(leader, index);
        true
    }

    /// Quiescence of idle vshard groups, run by the maintenance loop. A leader whose group
    /// had no write or strong read for `idle_after` and whose followers have everything
    /// asks each follower to stop campaigning; when all agree it stops heartbeats. Any
    /// write, strong read, leader change or SWIM suspicion of the leader wakes the group.
    /// An idle cluster then sends no per-group Raft traffic at all; SWIM (one probe per
    /// node per interval) watches the leaders instead.
    pub async fn quiesce_idle(&self, idle_after: Duration) {
        let me = self.cfg.node_id;
        for (&v, s) in self.shards().iter() {
            let m = s.raft.metrics().borrow_watched().clone();
            let q = s.quiet();
            // A replica quiesced under a leader that is gone, or that got new entries
            // (a membership change, a new term), wakes up.
            if q != QUIET_NONE
                && (m.current_leader != Some(q)
                    || m.last_log_index.unwrap_or(0)
                        != s.quiet_index.load(std::sync::atomic::Ordering::Acquire))
            {
                s.wake();
                continue;
            }
            if q != QUIET_NONE || m.current_leader != Some(me) {
                continue;
            }
            let idle = now_ms()
                .saturating_sub(s.last_active_ms.load(std::sync::atomic::Ordering::Acquire));
            if idle < idle_after.as_millis() as u64 {
                continue;
            }
            if m.membership_config
                .membership()
                .learner_ids()
                .next()
                .is_some()
            {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let followers: Vec<u64> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != me)
                .collect();
            let caught_up = followers.iter().all(|id| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .is_some_and(|l| l.index == last)
            });
            let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
            if !caught_up || committed != last {
                continue;
            }
            let group = group_of_vshard(v);
            let header: bytes::Bytes = serde_json::to_vec(&(me, m.current_term, last))
                .unwrap_or_default()
                .into();
            let asks = followers.iter().map(|f| {
                let msg = RaftMessage {
                    group,
                    kind: RaftRpc::Quiesce,
                    header: header.clone(),
                    entries: vec![],
                };
                self.transport
                    .send_raft(*f, "", msg, Duration::from_secs(2))
            });
            let agreed = futures::future::join_all(asks).await.into_iter().all(|r| {
                r.ok()
                    .and_then(|b| serde_json::from_slice::<bool>(&b).ok())
                    .unwrap_or(false)
            });
            // Quiesce only if nothing happened meanwhile.
            let idle_still = s.last_active_ms.load(std::sync::atomic::Ordering::Acquire)
                + idle_after.as_millis() as u64
                <= now_ms();
            if agreed && idle_still {
                s.quiesce(me, last);
                tracing::debug!(vshard = v, "quiesced");
            }
        }
    }
}
