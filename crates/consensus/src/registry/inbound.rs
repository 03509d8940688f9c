//! Raft messages from peers: decoded and handed to the group's Raft, snapshot chunks staged
//! on disk, and the Shoal-specific kinds (forwarded inserts, read index, quiesce, closed
//! timestamps).

use super::read::read_index_of;
use super::*;

impl Registry {
    /// Handles a Raft message from a peer and returns the reply's bytes.
    pub async fn handle_raft(&self, msg: RaftMessage) -> Result<bytes::Bytes, Error> {
        let group = msg.group;
        match msg.kind {
            RaftRpc::ClientInsert => return self.handle_forwarded_insert(&msg).await,
            RaftRpc::SnapshotChunk => return self.stage_chunk(&msg),
            RaftRpc::Quiesce => {
                let agreed = self.handle_quiesce(&msg);
                return Ok(serde_json::to_vec(&agreed).unwrap_or_default().into());
            }
            RaftRpc::LeaderTransfer => {
                let to: u64 = serde_json::from_slice(&msg.header)
                    .map_err(|e| Error::Rejected(format!("bad leader transfer: {e}")))?;
                let v = group
                    .checked_sub(1)
                    .ok_or_else(|| Error::Rejected("leader transfers are for vshards".into()))?;
                let done = self.transfer_vshard_leader(v, to).await;
                return Ok(serde_json::to_vec(&done).unwrap_or_default().into());
            }
            RaftRpc::Closed => {
                self.handle_closed(&msg)?;
                return Ok(bytes::Bytes::new());
            }
            RaftRpc::ReadIndex => {
                let index = match group.checked_sub(1) {
                    Some(v) => self.leader_read_index(v).await?,
                    None => read_index_of(&self.meta, 0).await?,
                };
                return Ok(serde_json::to_vec(&index).unwrap_or_default().into());
            }
            _ => {}
        }
        let inbound = decode_inbound(&msg).map_err(Error::Rejected)?;
        // A replica whose disk is (nearly) full takes no more log entries or snapshots: a
        // write error would fail its log for good, while a refused append is only a slow
        // follower that the leader retries, and catches up once space is back.
        let grows = matches!(&inbound, Inbound::Append(a) if !a.entries.is_empty())
            || matches!(&inbound, Inbound::Snapshot(..));
        if grows {
            self.check_disk()?;
        }
        if group == 0 {
            return handle_inbound(&self.meta, group, inbound).await;
        }
        let s = self.shard(group - 1).ok_or_else(|| Error::Unavailable {
            group,
            reason: format!("node {} does not host group {group}", self.cfg.node_id),
        })?;
        if let Some(reply) = self.guard_quiesced_vote(group, &s, &inbound) {
            return Ok(reply);
        }
        // A quiesced follower wakes on anything but a plain heartbeat from its leader —
        // after Raft handled the message, which refreshed its leader contact (waking first
        // lets a stale election timer fire and depose a healthy leader).
        let wake_after = s.quiet() != QUIET_NONE
            && !matches!(&inbound, Inbound::Append(a) if a.entries.is_empty() && a.vote.leader_id().node_id == s.quiet());
        let staged = match &inbound {
            Inbound::Snapshot(_, _, Some(t)) => Some(self.staging(group, t)?),
            _ => None,
        };
        let inbound = match (inbound, &staged) {
            (Inbound::Snapshot(vote, mut snap, _), Some(dir)) => {
                snap.snapshot.dir = Some(dir.clone());
                Inbound::Snapshot(vote, snap, None)
            }
            (other, _) => other,
        };
        let r = handle_inbound(&s.raft, group, inbound).await;
        if wake_after {
            s.wake();
        }
        if let Some(dir) = staged {
            let _ = std::fs::remove_dir_all(dir);
        }
        r
    }

    /// The staging directory of snapshot transfer `transfer` for `group`.
    pub(super) fn staging(&self, group: u32, transfer: &str) -> Result<PathBuf, Error> {
        if transfer.is_empty()
            || !transfer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::Rejected(format!(
                "bad snapshot transfer name {transfer:?}"
            )));
        }
        Ok(self
            .cfg
            .data_dir
            .join("groups")
            .join(format!("g{group}"))
            .join("incoming")
            .join(transfer))
    }

    /// Writes one snapshot chunk into its staging area.
    pub(super) fn stage_chunk(&self, msg: &RaftMessage) -> Result<bytes::Bytes, Error> {
        use std::io::{Seek, SeekFrom, Write};
        let h: ChunkHeader = serde_json::from_slice(&msg.header)
            .map_err(|e| Error::Rejected(format!("bad snapshot chunk: {e}")))?;
        let rel = Path::new(&h.file);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Rejected(format!(
                "bad snapshot file name {:?}",
                h.file
            )));
        }
        let path = self.staging(msg.group, &h.transfer)?.join(rel);
        let io = |e: std::io::Error| Error::Internal(format!("staging {}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        f.seek(SeekFrom::Start(h.offset)).map_err(io)?;
        for e in &msg.entries {
            f.write_all(e).map_err(io)?;
        }
        f.sync_data().map_err(io)?;
        Ok(bytes::Bytes::from_static(b"null"))
    }
}

pub(super) async fn handle_inbound<SM>(
    raft: &Raft<TypeConfig, SM>,
    group: u32,
    msg: Inbound,
) -> Result<bytes::Bytes, Error>
where
    SM: openraft::storage::RaftStateMachine<
        TypeConfig,
        SnapshotData = crate::meta_sm::SnapshotData,
    >,
{
    pub(super) fn enc<T: serde::Serialize>(v: &T) -> bytes::Bytes {
        serde_json::to_vec(v).unwrap_or_default().into()
    }
    let fail = |e: &dyn std::fmt::Display| Error::Unavailable {
        group,
        reason: e.to_string(),
    };
    match msg {
        Inbound::Append(r) => raft
            .append_entries(r)
            .await
            .map(|x| enc(&x))
            .map_err(|e| fail(&e)),
        Inbound::Vote(r) => raft.vote(r).await.map(|x| enc(&x)).map_err(|e| fail(&e)),
        Inbound::PreVote(r) => raft
            .pre_vote(r)
            .await
            .map(|x| enc(&x))
            .map_err(|e| fail(&e)),
        Inbound::Snapshot(vote, snap, _) => raft
            .install_full_snapshot(vote, snap)
            .await
            .map(|x| enc(&x))
            .map_err(|e| fail(&e)),
        Inbound::TransferLeader(r) => raft
            .handle_transfer_leader(r)
            .await
            .map(|x| enc(&x))
            .map_err(|e| fail(&e)),
    }
}
