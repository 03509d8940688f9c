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
            }
        })
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
