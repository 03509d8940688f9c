//! The flush policy: a vshard's hot buffer becomes a Parquet part (its Raft snapshot) by size
//! or age, and the WAL is kept under `wal_max_bytes` by asking the group pinning it to flush.

use super::*;

impl Registry {
    /// Asks every vshard with hot data to flush now.
    pub async fn flush_all(&self) {
        for s in self.shards().values() {
            if s.store.stats().hot_rows > 0 {
                let _ = s.raft.trigger().snapshot().await;
            }
        }
    }

    /// Runs the flush policy until the registry is dropped.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.cfg.flush_check_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(reg) = weak.upgrade() else { return };
                // A flush needs room for its Parquet part; until there is some, rows stay
                // hot (they are in the log already).
                if reg.check_disk().is_err() {
                    continue;
                }
                for s in reg.shards().values() {
                    let st = s.store.stats();
                    if st.hot_rows > 0
                        && (st.hot_bytes >= reg.cfg.flush_hot_bytes
                            || st.oldest_hot_age_ms >= reg.cfg.flush_age_ms)
                    {
                        let _ = s.raft.trigger().snapshot().await;
                    }
                }
                reg.unpin_wal().await;
                reg.purge_logs().await;
            }
        })
    }

    /// Purges each vshard's log as far as [`purge_upto`] allows.
    pub(super) async fn purge_logs(&self) {
        let wal_over = self.wal.stats().disk_bytes > self.cfg.wal_max_bytes;
        for (v, s) in self.shards().iter() {
            let m = s.raft.metrics().borrow_watched().clone();
            let leader = m.state == openraft::ServerState::Leader;
            let followers: Vec<Need> = if leader {
                let sending = self.snapshots.sending(group_of_vshard(*v));
                m.replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != self.cfg.node_id && self.is_alive(**id))
                    .map(|(id, matched)| Need {
                        matched: matched.map(|l| l.index),
                        snapshot_sent: sending.iter().find(|(t, _)| t == id).map(|(_, i)| *i),
                    })
                    .collect()
            } else {
                vec![]
            };
            let upto = purge_upto(
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
                &followers,
                wal_over,
            );
            if let Some(upto) = upto {
                let _ = s.raft.trigger().purge_log(upto).await;
            }
        }
    }

    /// Asks the group that holds the WAL's oldest segment to snapshot once the WAL is over
    /// `wal_max_bytes`: a vshard's snapshot is a flush, after which its log is purged. A
    /// group with no new entries since its last snapshot has nothing to purge and is left
    /// alone (a snapshot would not move its purge point).
    pub(super) async fn unpin_wal(&self) {
        let Some(group) = self.wal.pinning_group(self.cfg.wal_max_bytes) else {
            return;
        };
        let r = if group == 0 {
            self.meta.trigger().snapshot().await
        } else if let Some(s) = u32::try_from(group)
            .ok()
            .and_then(|g| g.checked_sub(1))
            .and_then(|v| self.shard(v))
        {
            s.raft.trigger().snapshot().await
        } else {
            return;
        };
        tracing::debug!(
            group,
            ok = r.is_ok(),
            "WAL over wal_max_bytes: asked the group holding its oldest segment to snapshot"
        );
    }
}

/// What a follower needs from its leader's log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Need {
    /// The last index known to match the leader's log.
    pub matched: Option<u64>,
    /// The last index of a snapshot being sent to it: it will need the log after that.
    pub snapshot_sent: Option<u64>,
}

/// How far a vshard replica purges its log: up to its last flush (`snapshot`), except that
/// a leader keeps the entries a live follower still needs — the entries after its match, or
/// after the snapshot being sent to it — so that a follower a few seconds behind catches up
/// from the log rather than by a whole snapshot, and one that received a snapshot is not
/// sent another because the leader flushed meanwhile (under steady writes that repeats for
/// as long as a snapshot takes longer than a flush interval). A follower whose match is
/// already purged needs a snapshot anyway and keeps nothing. Once the WAL is over
/// `wal_max_bytes` (`wal_over`), nothing is kept for anyone. `None`: nothing to purge.
pub(crate) fn purge_upto(
    snapshot: Option<u64>,
    purged: Option<u64>,
    followers: &[Need],
    wal_over: bool,
) -> Option<u64> {
    let mut upto = snapshot?;
    if !wal_over {
        for f in followers {
            let needs_from = match (f.snapshot_sent, f.matched) {
                (Some(s), m) => Some(s.max(m.unwrap_or(0))),
                (None, Some(m)) if purged.is_none_or(|p| m >= p) => Some(m),
                (None, _) => None,
            };
            if let Some(n) = needs_from {
                upto = upto.min(n);
            }
        }
    }
    (purged.is_none_or(|p| upto > p) && upto > 0).then_some(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(matched: Option<u64>, snapshot_sent: Option<u64>) -> Need {
        Need {
            matched,
            snapshot_sent,
        }
    }

    #[test]
    fn a_follower_keeps_what_it_needs_and_nothing_more() {
        // Nothing flushed, or nothing new since the last purge: nothing to do.
        assert_eq!(purge_upto(None, None, &[], false), None);
        assert_eq!(purge_upto(Some(100), Some(100), &[], false), None);
        // No follower (a follower itself, or a single replica): up to the flush.
        assert_eq!(purge_upto(Some(100), Some(40), &[], false), Some(100));
        // A follower at 70 keeps 71.. ; one caught up keeps nothing.
        let f = [need(Some(70), None), need(Some(120), None)];
        assert_eq!(purge_upto(Some(100), Some(40), &f, false), Some(70));
        // Already purged past its match: it needs a snapshot whatever is kept.
        let f = [need(Some(30), None), need(None, None)];
        assert_eq!(purge_upto(Some(100), Some(40), &f, false), Some(100));
        // Being sent the snapshot at 60: it will need 61.. next, even before it matches.
        let f = [need(None, Some(60))];
        assert_eq!(purge_upto(Some(100), Some(40), &f, false), Some(60));
        let f = [need(Some(80), Some(60))];
        assert_eq!(purge_upto(Some(100), Some(40), &f, false), Some(80));
        // Nothing new to purge past what is kept.
        let f = [need(Some(40), None)];
        assert_eq!(purge_upto(Some(100), Some(40), &f, false), None);
        // The WAL over its bound: followers take snapshots instead.
        let f = [need(Some(70), Some(60))];
        assert_eq!(purge_upto(Some(100), Some(40), &f, true), Some(100));
    }
}
