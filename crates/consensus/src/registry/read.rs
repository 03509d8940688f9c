//! Linearizable and bounded-staleness reads: read barriers through the leader's read index,
//! and closed timestamps (published by leaders, adopted by followers once applied).

use super::*;

impl Registry {
    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    pub(super) async fn leader_read_index(&self, vshard: u32) -> Result<u64, Error> {
        let s = self.shard(vshard).ok_or_else(|| self.not_hosted(vshard))?;
        read_index_of(&s.raft, group_of_vshard(vshard)).await
    }

    /// Makes the next read of this node's replica of `vshard` linearizable: everything
    /// acknowledged before this call is applied here when it returns. The leader confirms
    /// its leadership (read index); a follower asks the leader for that index and waits
    /// until it applied it (a follower read, no data moves).
    pub async fn read_barrier(&self, vshard: u32, timeout: Duration) -> Result<(), Error> {
        let s = self.shard(vshard).ok_or_else(|| self.not_hosted(vshard))?;
        let started = shoal_common::time::now_nanos();
        self.barrier(&s.raft, group_of_vshard(vshard), Some(&s), timeout)
            .await?;
        // Everything acknowledged before the barrier started is applied here now.
        s.closed.lock().offer(started, 0, 0);
        Ok(())
    }

    /// This replica's closed timestamp for `vshard` (unix ns): every write acknowledged
    /// before it is applied here, so a read may be served here as of that time without
    /// asking the leader. Leaders derive it from their lease (the last time a quorum
    /// acknowledged them) and publish it to followers ([`Registry::publish_closed`]); a
    /// strong read's barrier also sets it. `None` until known. Comparing it with this
    /// node's clock assumes the nodes' clocks agree; their offset adds to the staleness.
    pub fn closed_ts(&self, vshard: u32) -> Option<i64> {
        let s = self.shard(vshard)?;
        let m = s.raft.metrics().borrow_watched().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let mut ts = s.closed.lock().current(applied);
        if let Some((t, index)) = self.leader_closed(&m) {
            if index <= applied {
                ts = ts.max(t);
            }
        }
        (ts > 0).then_some(ts)
    }

    /// Whether a read of `vshard` that may be `max_staleness` old can be served by this
    /// replica as it is (its closed timestamp is recent enough); counts the ones that can.
    ///
    /// The closed timestamp may come from the leader's clock, so the bound is narrowed by
    /// `max_clock_offset_ms` (a bound no wider than that always takes the read index), and
    /// a node whose clock disagrees with most of its peers' serves none from here.
    pub fn can_read_stale(&self, vshard: u32, max_staleness: Duration) -> bool {
        let max_offset = Duration::from_millis(self.cfg.max_clock_offset_ms);
        let Some(allowed) = max_staleness.checked_sub(max_offset) else {
            return false;
        };
        if self.clock_ok.get().is_some_and(|ok| !ok()) {
            return false;
        }
        let oldest = shoal_common::time::now_nanos()
            .saturating_sub(i64::try_from(allowed.as_nanos()).unwrap_or(i64::MAX));
        let ok = self
            .closed_ts(vshard)
            .is_some_and(|closed| closed >= oldest);
        if let (true, Some(s)) = (ok, self.shard(vshard)) {
            s.closed_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    /// On a leader: (the last time a quorum acknowledged it, its last log index). Every
    /// write acknowledged before that time is at or below that index: a leader elected
    /// later needed a vote from a node that acknowledged this one after it.
    pub(super) fn leader_closed(
        &self,
        m: &openraft::RaftMetrics<TypeConfig>,
    ) -> Option<(i64, u64)> {
        use openraft::Instant as _;
        if m.current_leader != Some(self.cfg.node_id) {
            return None;
        }
        let age = m.last_quorum_acked.as_ref()?.elapsed();
        let ts = shoal_common::time::now_nanos().saturating_sub(age.as_nanos() as i64);
        Some((ts, m.last_log_index.unwrap_or(0)))
    }

    /// Run by the maintenance loop: sends each peer, in one message, the closed timestamps
    /// of the vshards this node leads and the peer replicates — only those that moved since
    /// the last message (an idle, quiesced cluster sends nothing).
    pub async fn publish_closed(&self) {
        let me = self.cfg.node_id;
        let mut per_peer: BTreeMap<u64, Vec<(u32, i64, u64)>> = BTreeMap::new();
        for (&v, s) in self.shards().iter() {
            let m = s.raft.metrics().borrow_watched().clone();
            let Some((ts, index)) = self.leader_closed(&m) else {
                continue;
            };
            for (peer, _) in m.membership_config.membership().nodes() {
                if *peer != me {
                    per_peer.entry(*peer).or_default().push((v, ts, index));
                }
            }
        }
        {
            let mut sent = self.closed_sent.lock();
            for (peer, list) in per_peer.iter_mut() {
                list.retain(|(v, ts, _)| {
                    let last = sent.entry((*peer, *v)).or_default();
                    let fresh = *ts > *last;
                    *last = (*last).max(*ts);
                    fresh
                });
            }
        }
        let sends = per_peer
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(peer, list)| {
                let msg = RaftMessage {
                    group: 0,
                    kind: RaftRpc::Closed,
                    header: serde_json::to_vec(&list).unwrap_or_default().into(),
                    entries: vec![],
                };
                self.transport.send_raft(peer, "", msg, CLOSED_SEND_TIMEOUT)
            });
        for r in futures::future::join_all(sends).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "closed timestamps not delivered");
            }
        }
    }

    pub(super) fn handle_closed(&self, msg: &RaftMessage) -> Result<(), Error> {
        let list: Vec<(u32, i64, u64)> = serde_json::from_slice(&msg.header)
            .map_err(|e| Error::Rejected(format!("bad closed timestamps: {e}")))?;
        for (v, ts, index) in list {
            if let Some(s) = self.shard(v) {
                let applied = s
                    .raft
                    .metrics()
                    .borrow_watched()
                    .last_applied
                    .map_or(0, |l| l.index);
                s.closed.lock().offer(ts, index, applied);
            }
        }
        Ok(())
    }

    /// The same for the catalog: when it returns, every DDL acknowledged anywhere before
    /// the call is applied to this node's catalog (a strong read planned after it sees a
    /// table created a moment ago through another node).
    pub async fn meta_barrier(&self, timeout: Duration) -> Result<(), Error> {
        self.barrier(&self.meta, 0, None, timeout).await
    }

    /// Read index from `group`'s leader (here, or over RPC), then wait until this replica
    /// applied it.
    pub(super) async fn barrier<SM>(
        &self,
        raft: &Raft<TypeConfig, SM>,
        group: u32,
        shard: Option<&ShardGroup>,
        timeout: Duration,
    ) -> Result<(), Error>
    where
        SM: openraft::storage::RaftStateMachine<
            TypeConfig,
            SnapshotData = crate::meta_sm::SnapshotData,
        >,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        let mut attempt = 0u32;
        while tokio::time::Instant::now() < deadline {
            attempt += 1;
            let index = match read_index_of(raft, group).await {
                Ok(i) => i,
                Err(Error::NotLeader {
                    hint: Some(leader), ..
                }) if leader != self.cfg.node_id => {
                    let msg = RaftMessage {
                        group,
                        kind: RaftRpc::ReadIndex,
                        header: bytes::Bytes::new(),
                        entries: vec![],
                    };
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.transport.send_raft(leader, "", msg, left).await {
                        Ok(body) => serde_json::from_slice::<u64>(&body)
                            .map_err(|e| Error::Internal(format!("bad read index: {e}")))?,
                        Err(e) => {
                            last = Some(Error::Unavailable {
                                group,
                                reason: format!("read index from leader {leader}: {e}"),
                            });
                            if let Some(s) = shard {
                                self.leader_unreachable(s, leader).await;
                            }
                            tokio::time::sleep(backoff(attempt)).await;
                            continue;
                        }
                    }
                }
                Err(e @ Error::NotLeader { .. }) => {
                    last = Some(e);
                    let _ = raft
                        .wait(Some(backoff(attempt) * 4))
                        .metrics(|m| m.current_leader.is_some(), "leader")
                        .await;
                    continue;
                }
                // This replica leads but could not confirm it with a quorum (just restarted
                // as leader, a lapsed lease, a partition): like a write, wait and ask again
                // until the deadline rather than fail a read a new term will serve.
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return raft
                .wait(Some(left))
                .applied_index_at_least(Some(index), "read index applied")
                .await
                .map(|_| ())
                .map_err(|e| Error::Unavailable {
                    group,
                    reason: format!("catching up to read index {index}: {e}"),
                });
        }
        Err(last.unwrap_or(Error::Unavailable {
            group,
            reason: "no leader for a linearizable read".into(),
        }))
    }
}

/// On the leader: confirms leadership with a quorum and returns the index a linearizable
/// read must wait for; elsewhere `NotLeader` with the leader hint.
pub(super) async fn read_index_of<SM>(raft: &Raft<TypeConfig, SM>, group: u32) -> Result<u64, Error>
where
    SM: openraft::storage::RaftStateMachine<
        TypeConfig,
        SnapshotData = crate::meta_sm::SnapshotData,
    >,
{
    match raft
        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
        .await
    {
        Ok(r) => Ok(r.log_id().index),
        Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f))) => {
            Err(Error::NotLeader {
                group,
                hint: f.leader_id,
            })
        }
        Err(e) => Err(Error::Unavailable {
            group,
            reason: e.to_string(),
        }),
    }
}
