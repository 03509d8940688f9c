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
            let snapshot = matches!(&inbound, Inbound::Snapshot(..));
            let r = handle_inbound(&self.meta, group, inbound).await;
            if snapshot && r.is_ok() {
                self.counters
                    .snapshots_received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return r;
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
            Inbound::Snapshot(_, snap, Some(t)) => {
                let dir = self.staging(group, t)?;
                staged_whole(&dir, &snap.snapshot.meta)?;
                Some(Installing::new(self, dir))
            }
            _ => None,
        };
        let inbound = match (inbound, &staged) {
            (Inbound::Snapshot(vote, mut snap, _), Some(staged)) => {
                snap.snapshot.dir = Some(staged.dir.clone());
                Inbound::Snapshot(vote, snap, None)
            }
            (other, _) => other,
        };
        let snapshot = matches!(&inbound, Inbound::Snapshot(..));
        let r = handle_inbound(&s.raft, group, inbound).await;
        if snapshot && r.is_ok() {
            self.counters
                .snapshots_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if wake_after {
            s.wake();
        }
        drop(staged);
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
            .join(INCOMING_DIR)
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
        let staging = self.staging(msg.group, &h.transfer)?;
        if !staging.exists() {
            self.remove_abandoned_transfers(&staging);
        }
        let path = staging.join(rel);
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
        let bytes: usize = msg.entries.iter().map(|e| e.len()).sum();
        self.counters
            .snapshot_bytes_received
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(bytes::Bytes::from_static(b"null"))
    }
}

impl Registry {
    /// Removes the staging areas of `starting`'s group that no transfer will finish: the
    /// earlier transfers of the same sender (a sender ships one snapshot per group and
    /// target at a time, so a new one means it gave the old one up: a timeout, a lost
    /// leadership, a newer snapshot), and any other idle for
    /// [`SNAPSHOT_STAGING_ABANDONED_MS`]. Never one being installed.
    fn remove_abandoned_transfers(&self, starting: &Path) {
        let (Some(incoming), Some(name)) = (starting.parent(), starting.file_name()) else {
            return;
        };
        let sender = name.to_string_lossy();
        let sender = sender.split('-').next().unwrap_or_default().to_string();
        let Ok(entries) = std::fs::read_dir(incoming) else {
            return;
        };
        let installing = self.installing.lock().clone();
        for e in entries.flatten() {
            let path = e.path();
            if installing.contains(&path) {
                continue;
            }
            let same_sender = e
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .is_some_and(|s| s == sender);
            let idle_ms = newest_mtime(&path)
                .and_then(|t| t.elapsed().ok())
                .map_or(u128::MAX, |d| d.as_millis());
            if same_sender || idle_ms >= u128::from(SNAPSHOT_STAGING_ABANDONED_MS) {
                tracing::info!(dir = %path.display(), "removing an abandoned snapshot transfer");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// How long a staged snapshot transfer from a sender that has not started another may sit
/// unwritten before it counts as abandoned (chunks of a live transfer arrive within
/// `SNAPSHOT_RPC_TIMEOUT_MS` of each other).
pub const SNAPSHOT_STAGING_ABANDONED_MS: u64 = 10 * 60 * 1000;

/// The latest modification time of anything under `path`.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let own = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Ok(rd) = std::fs::read_dir(path) else {
        return own;
    };
    rd.flatten()
        .filter_map(|e| newest_mtime(&e.path()))
        .chain(own)
        .max()
}

/// A staging area being installed: kept from cleanup meanwhile, removed afterwards (what
/// the install did not take is of no further use).
struct Installing<'a> {
    registry: &'a Registry,
    dir: PathBuf,
}

impl<'a> Installing<'a> {
    fn new(registry: &'a Registry, dir: PathBuf) -> Installing<'a> {
        registry.installing.lock().insert(dir.clone());
        Installing { registry, dir }
    }
}

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.registry.installing.lock().remove(&self.dir);
    }
}

/// Refuses a snapshot whose staged files are not all there at their full size (a transfer
/// cut short, or one whose staging area was removed), so the sender starts again instead
/// of the state machine failing half-way through an install.
fn staged_whole(dir: &Path, manifest: &[u8]) -> Result<(), Error> {
    let manifest: shoal_storage::manifest::Manifest = serde_json::from_slice(manifest)
        .map_err(|e| Error::Rejected(format!("bad snapshot manifest: {e}")))?;
    for p in manifest.tables.values().flatten() {
        let len = std::fs::metadata(dir.join(&p.file)).map(|m| m.len()).ok();
        if len != Some(p.bytes) {
            return Err(Error::Rejected(format!(
                "snapshot transfer {} is incomplete: {} has {len:?} of {} bytes",
                dir.display(),
                p.file,
                p.bytes
            )));
        }
    }
    Ok(())
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
