//! The seam between Raft and the wire. Consensus knows nothing about gRPC: it hands the
//! transport opaque messages (`RaftMessage`) addressed to a node and a group, and the
//! transport hands back the reply's bytes. The receiving side decodes a message with
//! [`crate::Registry::handle_raft`].
//!
//! Encoding (format version 1, carried by the transport's own envelope):
//! - append: `header` = JSON `(vote, prev_log_id, leader_commit)`, `entries` = each entry in
//!   the log's own record format ([`crate::codec`]), so Arrow payloads travel raw;
//! - vote / pre-vote / transfer-leader: `header` = JSON of the request;
//! - snapshot: `header` = JSON `(vote, meta)`, `entries` = `[snapshot bytes]`.
//!
//! Replies are JSON of openraft's response types.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;

use crate::meta_sm::SnapshotData;
use crate::{codec, GroupSnapshot, TypeConfig, Vote};

/// Which Raft RPC a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRpc {
    Append = 1,
    Vote = 2,
    PreVote = 3,
    Snapshot = 4,
    TransferLeader = 5,
    /// Not openraft's: a client insert forwarded to the vshard's leader. `header` = JSON
    /// `{table_id, request_id}`, `entries` = `[Arrow IPC]`; reply = JSON `Response`.
    ClientInsert = 6,
    /// Not openraft's: one piece of a file of a vshard snapshot, staged on the receiver
    /// before the `Snapshot` message that installs them. `header` = JSON [`ChunkHeader`].
    SnapshotChunk = 7,
    /// Not openraft's: "confirm you lead and tell me your read index" (a follower's
    /// linearizable read). Reply = JSON u64.
    ReadIndex = 8,
    /// Not openraft's: the leader of an idle vshard group asks a caught-up follower to
    /// stop campaigning (see `Registry::quiesce_idle`). `header` = JSON `[leader, term,
    /// last index]`; reply = JSON bool (agreed).
    Quiesce = 9,
    /// Not openraft's: a leader's closed timestamps for the vshards it leads that the
    /// receiver replicates, one message per peer. `group` = 0, `header` = JSON
    /// `[[vshard, unix ns, log index], …]`; empty reply.
    Closed = 10,
    /// Not openraft's: the control plane asks the leader of a vshard to hand its
    /// leadership to a replica (leader balancing). `group` = the vshard's group,
    /// `header` = JSON node id; reply = JSON bool (handed over).
    LeaderTransfer = 11,
}

/// Where a snapshot chunk goes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChunkHeader {
    /// Names the staging area of one snapshot transfer.
    pub transfer: String,
    /// A part file, relative to the vshard's data directory.
    pub file: String,
    pub offset: u64,
}

/// Bytes per snapshot chunk (well under `rpc_max_message_bytes`).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

impl RaftRpc {
    pub fn from_u32(v: u32) -> Option<RaftRpc> {
        Some(match v {
            1 => RaftRpc::Append,
            2 => RaftRpc::Vote,
            3 => RaftRpc::PreVote,
            4 => RaftRpc::Snapshot,
            5 => RaftRpc::TransferLeader,
            6 => RaftRpc::ClientInsert,
            7 => RaftRpc::SnapshotChunk,
            8 => RaftRpc::ReadIndex,
            9 => RaftRpc::Quiesce,
            10 => RaftRpc::Closed,
            11 => RaftRpc::LeaderTransfer,
            _ => return None,
        })
    }

    fn rpc_type(self) -> RPCTypes {
        match self {
            RaftRpc::Append => RPCTypes::AppendEntries,
            RaftRpc::Vote | RaftRpc::PreVote => RPCTypes::Vote,
            RaftRpc::Snapshot | RaftRpc::SnapshotChunk => RPCTypes::InstallSnapshot,
            RaftRpc::ClientInsert
            | RaftRpc::ReadIndex
            | RaftRpc::Quiesce
            | RaftRpc::Closed
            | RaftRpc::LeaderTransfer => RPCTypes::AppendEntries,
            RaftRpc::TransferLeader => RPCTypes::TransferLeader,
        }
    }
}

/// One Raft message for one group on one node.
#[derive(Clone, Debug)]
pub struct RaftMessage {
    pub group: u32,
    pub kind: RaftRpc,
    pub header: Bytes,
    pub entries: Vec<Bytes>,
}

/// Why a message did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now (down, partitioned, breaker open, group not hosted
    /// there yet): Raft backs off before retrying.
    #[error("node {node} unreachable: {reason}")]
    Unreachable { node: u64, reason: String },
    /// No answer within the deadline.
    #[error("node {node}: no answer within {after:?}")]
    Timeout { node: u64, after: Duration },
    /// The peer answered with an error.
    #[error("node {node}: {reason}")]
    Remote { node: u64, reason: String },
}

/// What consensus needs from the wire.
#[async_trait::async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `msg` to `target` (whose last known RPC address Raft membership records as
    /// `addr_hint`) and waits up to `ttl` for the reply's bytes.
    async fn send_raft(
        &self,
        target: u64,
        addr_hint: &str,
        msg: RaftMessage,
        ttl: Duration,
    ) -> Result<Bytes, TransportError>;

    /// Forwards a group-0 command to `target` (the leader) and returns the JSON of
    /// [`crate::registry::ForwardedWrite`].
    async fn forward_meta(&self, target: u64, command: Bytes) -> Result<Bytes, TransportError>;
}

/// A transport for a node that has no peers: every send fails as unreachable. A group
/// whose only voter is this node never sends anything.
pub struct NoTransport;

#[async_trait::async_trait]
impl RaftTransport for NoTransport {
    async fn send_raft(
        &self,
        target: u64,
        _addr_hint: &str,
        _msg: RaftMessage,
        _ttl: Duration,
    ) -> Result<Bytes, TransportError> {
        Err(TransportError::Unreachable {
            node: target,
            reason: "this node has no transport to peers".into(),
        })
    }

    async fn forward_meta(&self, target: u64, _command: Bytes) -> Result<Bytes, TransportError> {
        Err(TransportError::Unreachable {
            node: target,
            reason: "this node has no transport to peers".into(),
        })
    }
}

/// The network of one group: one instance per (group, target) pair, all sharing the
/// node's transport and so its connections.
#[derive(Clone)]
pub struct GroupNetwork {
    transport: Arc<dyn RaftTransport>,
    group: u32,
    target: u64,
    addr: String,
    from: u64,
    snapshots: Arc<SnapshotSends>,
}

/// Makes [`GroupNetwork`]s for one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub transport: Arc<dyn RaftTransport>,
    pub group: u32,
    pub node_id: u64,
    pub snapshots: Arc<SnapshotSends>,
}

/// The snapshot transfers a node sends: their progress (shown by `system.moves`) and the
/// node-wide rate limit `snapshot_max_bytes_per_sec` they share.
pub struct SnapshotSends {
    /// (group, target) → (bytes sent, bytes in all).
    progress: parking_lot::Mutex<std::collections::BTreeMap<(u32, u64), (u64, u64)>>,
    /// (group, target) → the last log index of the snapshot being sent: the log after it
    /// is what the target needs next (see `flush::purge_upto`).
    sending: parking_lot::Mutex<std::collections::BTreeMap<(u32, u64), u64>>,
    /// (group, target) → (bytes, when) of the last transfer whose files all went over.
    finished: parking_lot::Mutex<std::collections::BTreeMap<(u32, u64), (u64, std::time::Instant)>>,
    limit: RateLimit,
    /// Snapshots installed on their target, and the bytes sent for them (files and
    /// manifest), since the node started.
    sent: std::sync::atomic::AtomicU64,
    sent_bytes: std::sync::atomic::AtomicU64,
}

/// How long [`SnapshotSends::progress`] still shows a transfer whose files all went over.
pub const SNAPSHOT_FINISHED_SHOWN: Duration = Duration::from_secs(10);

impl SnapshotSends {
    pub fn new(max_bytes_per_sec: u64) -> SnapshotSends {
        SnapshotSends {
            progress: Default::default(),
            sending: Default::default(),
            finished: Default::default(),
            limit: RateLimit::new(max_bytes_per_sec),
            sent: Default::default(),
            sent_bytes: Default::default(),
        }
    }

    /// (snapshots, bytes) sent and installed on their targets since the node started.
    pub fn sent(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.sent.load(Relaxed), self.sent_bytes.load(Relaxed))
    }

    /// (group, target, bytes sent, bytes in all) of every transfer under way, and of those
    /// that finished within [`SNAPSHOT_FINISHED_SHOWN`] (as all sent).
    pub fn progress(&self) -> Vec<(u32, u64, u64, u64)> {
        let mut finished = self.finished.lock();
        finished.retain(|_, (_, at)| at.elapsed() < SNAPSHOT_FINISHED_SHOWN);
        let progress = self.progress.lock();
        let done = finished
            .iter()
            .filter(|(k, _)| !progress.contains_key(k))
            .map(|(&(g, t), &(bytes, _))| (g, t, bytes, bytes));
        progress
            .iter()
            .map(|(&(g, t), &(sent, total))| (g, t, sent, total))
            .chain(done)
            .collect()
    }

    /// (target, snapshot index) of every snapshot of `group` being sent.
    pub fn sending(&self, group: u32) -> Vec<(u64, u64)> {
        self.sending
            .lock()
            .range((group, 0)..=(group, u64::MAX))
            .map(|(&(_, t), &i)| (t, i))
            .collect()
    }
}

/// Removes a transfer's entry from one of [`SnapshotSends`]' maps when the transfer ends,
/// however it ends.
struct Forget<'a, V> {
    map: &'a parking_lot::Mutex<std::collections::BTreeMap<(u32, u64), V>>,
    key: (u32, u64),
}

impl<V> Drop for Forget<'_, V> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

/// A token bucket over bytes: `take(n)` waits until `n` bytes fit in the rate. Holds at
/// most one second's worth, so an idle limiter does not let a burst through.
pub struct RateLimit {
    bytes_per_sec: u64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimit {
    /// `bytes_per_sec` 0: no limit.
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec,
            state: tokio::sync::Mutex::new((bytes_per_sec as f64, tokio::time::Instant::now())),
        }
    }

    pub async fn take(&self, n: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        // One holder at a time: the bucket is shared by every transfer of the node.
        let mut st = self.state.lock().await;
        let now = tokio::time::Instant::now();
        let (tokens, last) = *st;
        let mut tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        tokens -= n as f64;
        if tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-tokens / rate)).await;
        }
        *st = (tokens, now);
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: u64, node: &openraft::impls::BasicNode) -> GroupNetwork {
        GroupNetwork {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.addr.clone(),
            from: self.node_id,
            snapshots: self.snapshots.clone(),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

impl GroupNetwork {
    async fn call<R: serde::de::DeserializeOwned>(
        &self,
        kind: RaftRpc,
        header: Bytes,
        entries: Vec<Bytes>,
        option: &RPCOption,
    ) -> Result<R, RPCError<TypeConfig>> {
        let msg = RaftMessage {
            group: self.group,
            kind,
            header,
            entries,
        };
        let ttl = option.hard_ttl();
        match self
            .transport
            .send_raft(self.target, &self.addr, msg, ttl)
            .await
        {
            Ok(body) => {
                serde_json::from_slice(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))
            }
            Err(TransportError::Timeout { .. }) => Err(RPCError::Timeout(Timeout {
                action: kind.rpc_type(),
                id: self.from,
                target: self.target,
                timeout: ttl,
            })),
            Err(e @ TransportError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::Remote { .. }) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

/// Jittered exponential backoff for an unreachable peer: 50 ms doubling to 2 s, each
/// step scaled by a pseudo-random factor in [0.5, 1.5) so that many groups retrying the
/// same dead peer do not retry in lockstep.
fn jittered_backoff(seed: u64) -> openraft::network::Backoff {
    let mut state = seed | 1;
    let mut base = Duration::from_millis(50);
    openraft::network::Backoff::new(std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let factor = 0.5 + (state % 1000) as f64 / 1000.0;
        let d = base.mul_f64(factor);
        base = (base * 2).min(Duration::from_secs(2));
        Some(d)
    }))
}

impl GroupNetwork {
    /// Sends every part file a vshard manifest names to the staging area `transfer` on the
    /// target, `SNAPSHOT_CHUNK_BYTES` at a time read from disk (never a whole part in
    /// memory), at the node's snapshot rate limit, recording progress.
    async fn ship_files(
        &self,
        dir: &std::path::Path,
        manifest: &[u8],
        transfer: &str,
        option: &RPCOption,
    ) -> Result<u64, RPCError<TypeConfig>> {
        use tokio::io::AsyncReadExt;
        let net = |e: &dyn std::fmt::Display| RPCError::Network(NetworkError::from_string(e));
        let manifest: shoal_storage::manifest::Manifest =
            serde_json::from_slice(manifest).map_err(|e| net(&e))?;
        let files: Vec<(String, u64)> = manifest
            .tables
            .values()
            .flat_map(|parts| parts.iter().map(|p| (p.file.clone(), p.bytes)))
            .collect();
        let total: u64 = files.iter().map(|(_, b)| *b).sum();
        let key = (self.group, self.target);
        let mut sent = 0u64;
        self.snapshots.progress.lock().insert(key, (0, total));
        let _done = Forget {
            map: &self.snapshots.progress,
            key,
        };
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        for (file, _) in files {
            let mut f = tokio::fs::File::open(dir.join(&file))
                .await
                .map_err(|e| net(&e))?;
            let mut offset = 0u64;
            loop {
                // Fill the chunk (a read may return less than asked).
                let mut len = 0;
                while len < buf.len() {
                    let n = f.read(&mut buf[len..]).await.map_err(|e| net(&e))?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                }
                if len == 0 && offset > 0 {
                    break;
                }
                self.snapshots.limit.take(len as u64).await;
                let header = json(&ChunkHeader {
                    transfer: transfer.to_string(),
                    file: file.clone(),
                    offset,
                });
                let chunk = Bytes::copy_from_slice(&buf[..len]);
                self.call::<serde_json::Value>(RaftRpc::SnapshotChunk, header, vec![chunk], option)
                    .await?;
                offset += len as u64;
                sent += len as u64;
                self.snapshots
                    .progress
                    .lock()
                    .insert(key, (sent, total.max(sent)));
                if len < buf.len() {
                    break;
                }
            }
        }
        Ok(sent)
    }
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = SnapshotData;

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        let seed = (u64::from(self.group) << 32) ^ self.target ^ (self.from << 16);
        Some(jittered_backoff(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let header = json(&(&rpc.vote, &rpc.prev_log_id, &rpc.leader_commit));
        let entries = rpc.entries.iter().map(codec::encode).collect();
        self.call(RaftRpc::Append, header, entries, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::Vote, json(&rpc), vec![], &option).await
    }

    /// Pre-vote must really ask the peer: openraft's default grants blindly, which lets a
    /// partitioned node that rejoins disrupt a healthy leader.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::PreVote, json(&rpc), vec![], &option)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::TransferLeader, json(&req), vec![], &option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: GroupSnapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::pin!(cancel);
        let key = (self.group, self.target);
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        self.snapshots.sending.lock().insert(key, index);
        let _sending = Forget {
            map: &self.snapshots.sending,
            key,
        };
        let transfer = match &snapshot.snapshot.dir {
            Some(dir) => {
                // A vshard snapshot: the Parquet parts its manifest names, sent in chunks
                // and staged on the receiver, then the manifest that installs them.
                let t = format!(
                    "{}-{}-{}",
                    self.from,
                    snapshot.meta.last_log_id.map_or(0, |l| l.index),
                    shoal_common::time::now_nanos()
                );
                let shipped = tokio::select! {
                    r = self.ship_files(dir, &snapshot.snapshot.meta, &t, &option) => r,
                    closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                };
                let bytes = shipped.map_err(|e| match e {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::from_string(other)),
                })?;
                // Shown for a while after it ends, so that a transfer shorter than the
                // controller's look at it is still recorded in `system.moves`.
                self.snapshots
                    .finished
                    .lock()
                    .insert(key, (bytes, std::time::Instant::now()));
                Some((t, bytes))
            }
            None => None,
        };
        let (transfer, files_bytes) = match transfer {
            Some((t, bytes)) => (Some(t), bytes),
            None => (None, 0),
        };
        let header = json(&(&vote, &snapshot.meta, &transfer));
        let body = Bytes::from(snapshot.snapshot.meta);
        let bytes = files_bytes + body.len() as u64;
        let send = self.call::<SnapshotResponse<TypeConfig>>(
            RaftRpc::Snapshot,
            header,
            vec![body],
            &option,
        );
        let installed = tokio::select! {
            r = send => r.map_err(|e| match e {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::from_string(other)),
            }),
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
        };
        if installed.is_ok() {
            use std::sync::atomic::Ordering::Relaxed;
            self.snapshots.sent.fetch_add(1, Relaxed);
            self.snapshots.sent_bytes.fetch_add(bytes, Relaxed);
        }
        installed
    }
}

/// A decoded inbound message, ready for a group's `Raft` handle.
pub(crate) enum Inbound {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// The snapshot, and the staging area of its files (vshards).
    Snapshot(Vote, GroupSnapshot, Option<String>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

/// Decodes an inbound Raft message as the receiving node would, dropping the result: the
/// RPC fuzz target's way in (no panic on any bytes, only errors).
pub fn check_inbound(msg: &RaftMessage) -> Result<(), String> {
    decode_inbound(msg).map(|_| ())
}

pub(crate) fn decode_inbound(msg: &RaftMessage) -> Result<Inbound, String> {
    let bad = |e: &dyn std::fmt::Display| format!("bad {:?} message: {e}", msg.kind);
    Ok(match msg.kind {
        RaftRpc::Append => {
            let (vote, prev_log_id, leader_commit) =
                serde_json::from_slice(&msg.header).map_err(|e| bad(&e))?;
            let entries = msg
                .entries
                .iter()
                .map(codec::decode)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            Inbound::Append(AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            })
        }
        RaftRpc::Vote => Inbound::Vote(serde_json::from_slice(&msg.header).map_err(|e| bad(&e))?),
        RaftRpc::PreVote => {
            Inbound::PreVote(serde_json::from_slice(&msg.header).map_err(|e| bad(&e))?)
        }
        RaftRpc::TransferLeader => {
            Inbound::TransferLeader(serde_json::from_slice(&msg.header).map_err(|e| bad(&e))?)
        }
        RaftRpc::Snapshot => {
            let (vote, meta, transfer): (Vote, _, Option<String>) =
                serde_json::from_slice(&msg.header).map_err(|e| bad(&e))?;
            let data = msg.entries.first().cloned().unwrap_or_default();
            Inbound::Snapshot(
                vote,
                GroupSnapshot {
                    meta,
                    snapshot: SnapshotData {
                        meta: data.to_vec(),
                        dir: None,
                    },
                },
                transfer,
            )
        }
        RaftRpc::ClientInsert
        | RaftRpc::SnapshotChunk
        | RaftRpc::ReadIndex
        | RaftRpc::Quiesce
        | RaftRpc::Closed
        | RaftRpc::LeaderTransfer => {
            return Err(format!("{:?} is not a Raft protocol message", msg.kind))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let a: Vec<Duration> = jittered_backoff(7).take(12).collect();
        let b: Vec<Duration> = jittered_backoff(8).take(12).collect();
        assert!(a[0] >= Duration::from_millis(25) && a[0] < Duration::from_millis(75));
        assert!(a.iter().all(|d| *d < Duration::from_secs(3)), "{a:?}");
        assert!(a[11] >= Duration::from_secs(1), "reaches the cap: {a:?}");
        assert_ne!(a, b, "different groups retry at different times");
    }
}
