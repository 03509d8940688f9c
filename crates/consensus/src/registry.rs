//! The registry of a node's Raft groups: group 0 (catalog) and one group per vshard, each
//! with its own log directory and state. It is the only way the layers above propose
//! commands, and it runs the flush policy (a flush is a vshard snapshot).
//!
//! Layout under the data directory:
//! ```text
//! groups/g0/log/        group 0's Raft log          groups/g0/state/catalog.json
//! groups/g<v+1>/log/    vshard v's Raft log         groups/g<v+1>/data/  (manifest + parts)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Raft, SnapshotPolicy};
use shoal_common::ids::group_of_vshard;
use shoal_raftlog::{LogConfig, SharedWal};
use shoal_storage::shard::ShardStats;
use shoal_storage::{ShardStore, StoreConfig};

use crate::command::{Command, DdlOp, Response};
use crate::intents::{IntentLog, Part};
use crate::log_store::LogStore;
use crate::meta_sm::{CatalogHandle, MetaStateMachine};
use crate::shard_sm::ShardStateMachine;
use crate::transport::{
    decode_inbound, ChunkHeader, GroupNetworkFactory, Inbound, RaftMessage, RaftRpc, RaftTransport,
};
use crate::{Error, TypeConfig};

/// Everything the registry needs to open a node's groups.
#[derive(Clone, Debug)]
pub struct GroupsConfig {
    pub node_id: u64,
    /// Advertised RPC address recorded in Raft membership.
    pub node_addr: String,
    pub data_dir: PathBuf,
    pub vshards: u32,
    pub log: LogConfig,
    pub store: StoreConfig,
    /// Flush a vshard when its hot buffer holds this many bytes.
    pub flush_hot_bytes: u64,
    /// Flush a vshard when its oldest hot row is this old.
    pub flush_age_ms: u64,
    /// Once the node's WAL takes more than this on disk, the group holding its oldest
    /// segment is asked to flush (a vshard) or snapshot (group 0), so the WAL can shrink.
    pub wal_max_bytes: u64,
    /// How often the flush policy looks at the vshards.
    pub flush_check_interval_ms: u64,
    /// Writes are refused (507) while the data directory's file system has less free space.
    pub min_free_disk_bytes: u64,
    pub heartbeat_interval_ms: u64,
    /// The largest clock offset between nodes that bounded-staleness reads allow for:
    /// a closed timestamp (another node's clock) must be this much newer than the bound.
    pub max_clock_offset_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Start a new cluster: initialize group 0 with this node as its only voter (a node
    /// that joined waits for the leader instead).
    pub bootstrap: bool,
    /// Open (and, when new, create) this node's vshard groups at start (`node.json` says
    /// whether it hosts; group 0's registry decides later, see `Registry::start_hosting`).
    pub host_vshards: bool,
}

/// The answer to a group-0 command forwarded to the leader: the response and the log index
/// it was applied at, so the forwarding node can wait until its own copy has it too.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ForwardedWrite {
    pub response: Response,
    pub index: u64,
}

/// How the metadata group looks from this node.
#[derive(Clone, Debug, Default)]
pub struct MetaView {
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// This node knows a leader and has applied everything the leader reported committed.
    pub caught_up: bool,
}

struct ShardGroup {
    raft: Raft<TypeConfig, ShardStateMachine>,
    store: Arc<ShardStore>,
    /// Quiescence of this replica: `QUIET_NONE`, or the leader id it was quiesced under
    /// (`me` when this replica leads and stopped heartbeats; another id when this
    /// follower stopped campaigning).
    quiet: std::sync::atomic::AtomicU64,
    /// Unix ms of the last client write or strong read here (leaders stay awake while busy).
    last_active_ms: std::sync::atomic::AtomicU64,
    /// The last log index when this replica quiesced; any new entry wakes it.
    quiet_index: std::sync::atomic::AtomicU64,
    /// This replica's closed timestamp (see [`Registry::closed_ts`]).
    closed: parking_lot::Mutex<ClosedTs>,
    /// Bounded-staleness reads served here from the closed timestamp (no leader round).
    closed_reads: std::sync::atomic::AtomicU64,
}

/// What a replica knows of its vshard's closed timestamp: a wall-clock time before which
/// every acknowledged write is applied here.
#[derive(Debug, Default)]
struct ClosedTs {
    /// Unix ns; 0 = unknown.
    ts: i64,
    /// The newest offer this replica has not applied far enough for: (unix ns, the log
    /// index that must be applied first).
    pending: Option<(i64, u64)>,
}

impl ClosedTs {
    /// "Every write acknowledged before `ts` is at or below log index `index`."
    fn offer(&mut self, ts: i64, index: u64, applied: u64) {
        if ts <= self.ts {
            return;
        }
        if index <= applied {
            self.ts = ts;
            if self.pending.is_some_and(|(t, _)| t <= ts) {
                self.pending = None;
            }
        } else if self.pending.is_none_or(|(t, _)| t < ts) {
            self.pending = Some((ts, index));
        }
    }

    fn current(&mut self, applied: u64) -> i64 {
        if let Some((t, i)) = self.pending {
            if i <= applied {
                self.ts = self.ts.max(t);
                self.pending = None;
            }
        }
        self.ts
    }
}

const QUIET_NONE: u64 = 0;

/// Longest a membership change may hold up the maintenance loop (it is retried).
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a leader's closed-timestamp message to one peer may take.
const CLOSED_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a write keeps looking for its vshard's leader (elections, forwarding).
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);

/// Retry pause: 50 ms doubling to 400 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 << attempt.clamp(1, 4).saturating_sub(1))
}

fn now_ms() -> u64 {
    (shoal_common::time::now_nanos() / 1_000_000) as u64
}

impl ShardGroup {
    fn quiet(&self) -> u64 {
        self.quiet.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Back to normal Raft: heartbeats and elections on.
    fn wake(&self) {
        if self
            .quiet
            .swap(QUIET_NONE, std::sync::atomic::Ordering::AcqRel)
            != QUIET_NONE
        {
            let rc = self.raft.runtime_config();
            rc.tick(true);
            rc.heartbeat(true);
            rc.elect(true);
        }
    }

    /// Stops this replica's timers: no heartbeats, no campaigning, no ticks.
    fn quiesce(&self, leader: u64, index: u64) {
        self.quiet_index
            .store(index, std::sync::atomic::Ordering::Release);
        self.quiet
            .store(leader, std::sync::atomic::Ordering::Release);
        let rc = self.raft.runtime_config();
        rc.heartbeat(false);
        rc.elect(false);
        rc.tick(false);
    }

    fn touch(&self) {
        self.last_active_ms
            .store(now_ms(), std::sync::atomic::Ordering::Release);
        self.wake();
    }
}

/// A group's state as `SHOW SHARDS` reports it.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    pub group: u32,
    pub vshard: Option<u32>,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub replicas: Vec<u64>,
    pub stats: ShardStats,
    /// Idle and quiesced (no heartbeats; followers not campaigning).
    pub quiesced: bool,
    /// This replica's Raft role: `leader`, `follower`, `candidate` or `learner`.
    pub role: &'static str,
    /// On the leader: every other replica's (node id, last log index it holds, entries
    /// behind the leader's log); empty elsewhere.
    pub followers: Vec<(u64, Option<u64>, u64)>,
    /// This replica's closed timestamp (unix ns), see [`Registry::closed_ts`].
    pub closed_ts: Option<i64>,
    /// Bounded-staleness reads this replica served from its closed timestamp.
    pub closed_reads: u64,
}

pub struct Registry {
    cfg: GroupsConfig,
    transport: Arc<dyn RaftTransport>,
    /// The node's write-ahead log: every group's Raft log and the write intents.
    wal: SharedWal,
    intents: Arc<IntentLog>,
    catalog: CatalogHandle,
    meta: Raft<TypeConfig, MetaStateMachine>,
    /// The vshard groups hosted here: all of them or none. Swapped whole when this node
    /// starts or stops hosting ([`Registry::start_hosting`], [`Registry::stop_hosting`]).
    shards: parking_lot::RwLock<Arc<Vec<Arc<ShardGroup>>>>,
    /// Serialises starting and stopping to host.
    hosting: tokio::sync::Mutex<()>,
    /// Whether membership (SWIM) believes a node is alive; unset = assume alive.
    alive: std::sync::OnceLock<Arc<dyn Fn(u64) -> bool + Send + Sync>>,
    /// Whether this node's clock agrees with its peers' within `max_clock_offset_ms`;
    /// unset = assume it does.
    clock_ok: std::sync::OnceLock<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The closed timestamp last sent to each (peer, vshard), so unchanged ones are not
    /// sent again.
    closed_sent: parking_lot::Mutex<BTreeMap<(u64, u32), i64>>,
}

/// The intent log's group id in the node's WAL (Raft groups are 0 and the vshards' 1..).
const INTENTS_WAL_GROUP: u64 = u64::MAX;
/// How long start-up waits for writes a crash interrupted to be finished before the node
/// reports ready anyway (and keeps finishing them in the background).
const FINISH_INTENTS_WAIT: Duration = Duration::from_secs(10);
/// The node's WAL, under the data directory.
const WAL_DIR: &str = "wal";

fn raft_config(
    cfg: &GroupsConfig,
    group: u32,
    policy: SnapshotPolicy,
) -> Result<Arc<openraft::Config>, Error> {
    let c = openraft::Config {
        cluster_name: format!("shoal-g{group}"),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        snapshot_policy: policy,
        // A node that was paused, partitioned or restarted asks before it campaigns, so it
        // cannot inflate its term and depose a healthy leader when it comes back.
        enable_pre_vote: Some(true),
        // A leader killed and restarted inside its followers' lease must not take up its
        // leadership again at once (openraft's default): Shoal persists neither the commit
        // index nor applied rows before a flush, so the restored leader would confirm its
        // leadership with a quorum and answer strong reads from a state that lacks
        // acknowledged writes (the 5-node soak saw it). As a follower it learns the commit
        // index from the next leader before it serves anything.
        enable_leader_restore: Some(false),
        // A flush makes the log below it redundant on this replica.
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("raft config: {e}")))
}

/// Opens (or creates) vshard `v`'s group on this node, uninitialized when new: only the
/// node that bootstraps the cluster initializes vshard groups.
async fn open_shard(
    cfg: &GroupsConfig,
    wal: &SharedWal,
    v: u32,
    catalog: &CatalogHandle,
    transport: Arc<dyn RaftTransport>,
) -> Result<ShardGroup, Error> {
    let group = group_of_vshard(v);
    let dir = cfg.data_dir.join("groups").join(format!("g{group}"));
    let (store, raft_state) = ShardStore::open(&dir.join("data"), cfg.store.clone())?;
    let sm = ShardStateMachine::new(store.clone(), raft_state, catalog.clone())
        .map_err(|e| Error::Internal(format!("vshard {v} state: {e}")))?;
    let log = LogStore::new(open_log(wal, group.into(), &dir.join("log"))?);
    let net = GroupNetworkFactory {
        transport,
        group,
        node_id: cfg.node_id,
    };
    let raft = Raft::new(
        cfg.node_id,
        raft_config(cfg, group, SnapshotPolicy::Never)?,
        net,
        log,
        sm,
    )
    .await
    .map_err(|e| Error::Internal(format!("starting vshard {v}: {e}")))?;
    Ok(ShardGroup {
        raft,
        store,
        quiet: std::sync::atomic::AtomicU64::new(QUIET_NONE),
        last_active_ms: std::sync::atomic::AtomicU64::new(now_ms()),
        quiet_index: std::sync::atomic::AtomicU64::new(0),
        closed: Default::default(),
        closed_reads: Default::default(),
    })
}

fn open_log(
    wal: &SharedWal,
    group: u64,
    dir: &Path,
) -> Result<Arc<shoal_raftlog::GroupLog>, Error> {
    Ok(Arc::new(wal.group(group, dir)?))
}

impl Registry {
    /// Opens (or creates) every group this node hosts and waits until each vshard it hosts
    /// has replayed its log. Group 0 may still be without a quorum when this returns (see
    /// [`Registry::meta_view`]).
    pub async fn open(
        cfg: GroupsConfig,
        transport: Arc<dyn RaftTransport>,
        ready_timeout: Duration,
    ) -> Result<Arc<Registry>, Error> {
        let groups = cfg.data_dir.join("groups");
        let g0 = groups.join("g0");
        let meta_sm = MetaStateMachine::open(&g0.join("state"))
            .map_err(|e| Error::Internal(format!("group 0 state: {e}")))?;
        let catalog = meta_sm.catalog();
        let wal = SharedWal::open(&cfg.data_dir.join(WAL_DIR), cfg.log.clone())?;
        let meta_log = LogStore::new(open_log(&wal, 0, &g0.join("log"))?);
        let net = |group: u32| GroupNetworkFactory {
            transport: transport.clone(),
            group,
            node_id: cfg.node_id,
        };
        let meta = Raft::new(
            cfg.node_id,
            raft_config(&cfg, 0, SnapshotPolicy::LogsSinceLast(1000))?,
            net(0),
            meta_log,
            meta_sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("starting group 0: {e}")))?;
        let mut shards = Vec::new();
        if cfg.host_vshards {
            for v in 0..cfg.vshards {
                shards.push(Arc::new(
                    open_shard(&cfg, &wal, v, &catalog, transport.clone()).await?,
                ));
            }
        }
        let (intents, pending) =
            IntentLog::open(wal.group(INTENTS_WAL_GROUP, &cfg.data_dir.join("intents"))?)?;
        let reg = Arc::new(Registry {
            cfg,
            wal,
            transport,
            intents: Arc::new(intents),
            catalog,
            meta,
            shards: parking_lot::RwLock::new(Arc::new(shards)),
            hosting: tokio::sync::Mutex::new(()),
            alive: std::sync::OnceLock::new(),
            clock_ok: std::sync::OnceLock::new(),
            closed_sent: Default::default(),
        });
        reg.bootstrap_and_wait(ready_timeout).await?;
        // Finish writes that were under way when the node stopped: all of each, or none.
        // The node is not ready until they are (so no read after a restart sees half a
        // write), unless that takes longer than `FINISH_INTENTS_WAIT`: in a cluster the
        // parts may need other nodes, and the task then keeps retrying in the background.
        if !pending.is_empty() {
            let r = reg.clone();
            let finishing = tokio::spawn(async move { r.finish_intents(pending).await });
            let wait = FINISH_INTENTS_WAIT.min(ready_timeout);
            if tokio::time::timeout(wait, finishing).await.is_err() {
                tracing::warn!(
                    timeout_ms = wait.as_millis() as u64,
                    "writes interrupted by the last stop are not finished yet; finishing them in the background"
                );
            }
        }
        Ok(reg)
    }

    async fn finish_intents(&self, pending: Vec<(u64, Vec<Part>)>) {
        for (index, parts) in pending {
            tracing::info!(
                intent = index,
                parts = parts.len(),
                "finishing a write interrupted by a crash"
            );
            let mut delay = Duration::from_millis(200);
            loop {
                let results = self.propose_parts(parts.clone()).await;
                match results.into_iter().find(|r| r.is_err()) {
                    None => {
                        if let Err(e) = self.intents.done(index) {
                            tracing::warn!(intent = index, error = %e, "could not record a finished write");
                        }
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(intent = index, error = %e, "interrupted write not finished yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                    Some(Ok(_)) => unreachable!(),
                }
            }
        }
    }

    async fn bootstrap_and_wait(&self, timeout: Duration) -> Result<(), Error> {
        let members: BTreeMap<u64, openraft::impls::BasicNode> = [(
            self.cfg.node_id,
            openraft::impls::BasicNode::new(&self.cfg.node_addr),
        )]
        .into();
        let node = self.cfg.node_id;
        let fatal = |g: u32, e: &dyn std::fmt::Display| Error::Internal(format!("group {g}: {e}"));
        if self.cfg.bootstrap && !self.meta.is_initialized().await.map_err(|e| fatal(0, &e))? {
            self.meta
                .initialize(members.clone())
                .await
                .map_err(|e| fatal(0, &e))?;
        }
        for (v, s) in self.shards().iter().enumerate() {
            // Only the node that starts the cluster creates vshard groups; a node that
            // joined waits for their leaders to add it (initializing here would make a
            // second, conflicting group).
            if self.cfg.bootstrap
                && !s
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| fatal(v as u32 + 1, &e))?
            {
                s.raft
                    .initialize(members.clone())
                    .await
                    .map_err(|e| fatal(v as u32 + 1, &e))?;
            }
        }
        let unavailable = |g: u32, e: &dyn std::fmt::Display| Error::Unavailable {
            group: g,
            reason: e.to_string(),
        };
        for (v, s) in self.shards().iter().enumerate() {
            let g = v as u32 + 1;
            let m = s.raft.metrics().borrow_watched().clone();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            if voters != [node] {
                // A replicated group: its leader (maybe elsewhere) brings this copy up to
                // date; nothing to wait for here.
                continue;
            }
            s.raft
                .wait(Some(timeout))
                .current_leader(node, "vshard leader")
                .await
                .map_err(|e| unavailable(g, &e))?;
            // Everything committed before a restart must be applied before the node serves.
            let m = s.raft.metrics().borrow_watched().clone();
            if let Some(last) = m.last_log_index {
                s.raft
                    .wait(Some(timeout))
                    .applied_index_at_least(Some(last), "replay log tail")
                    .await
                    .map_err(|e| unavailable(g, &e))?;
            }
        }
        Ok(())
    }

    /// Group 0 as this node sees it now.
    pub fn meta_view(&self) -> MetaView {
        let m = self.meta.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let applied = m.last_applied.as_ref().map(|l| l.index);
        let committed = m.cluster_committed.as_ref().map(|l| l.index);
        MetaView {
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            caught_up: m.current_leader.is_some() && applied.is_some() && applied >= committed,
        }
    }

    /// Waits until group 0 has a leader and this node has applied what it committed.
    pub async fn wait_meta_caught_up(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.meta.metrics();
        loop {
            if self.meta_view().caught_up {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable {
                    group: 0,
                    reason: format!("group 0 has no leader or is not caught up after {timeout:?}"),
                });
            }
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

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
        let s = self
            .shard(group as usize - 1)
            .ok_or_else(|| Error::Unavailable {
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

    /// Tells the registry how to ask whether this node's clock is within
    /// `max_clock_offset_ms` of its peers' (no: bounded reads take the read index).
    pub fn set_clock_check(&self, ok: Arc<dyn Fn() -> bool + Send + Sync>) {
        let _ = self.clock_ok.set(ok);
    }

    /// Tells the registry how to ask membership whether a node is alive (SWIM ALIVE).
    pub fn set_liveness(&self, alive: Arc<dyn Fn(u64) -> bool + Send + Sync>) {
        let _ = self.alive.set(alive);
    }

    fn is_alive(&self, node: u64) -> bool {
        self.alive.get().is_none_or(|f| f(node))
    }

    /// A quiesced group has no heartbeats, so Raft's leader lease has long expired on every
    /// replica and any (pre-)vote would be granted — one node that failed a single RPC to
    /// its leader could move the group's leadership (the fault harness saw exactly that
    /// after a healed partition). While the group is quiesced under a leader that SWIM
    /// says is alive, its replicas refuse votes instead, as a live lease would; the leader
    /// itself refuses and wakes up, so its heartbeats reach the candidate again. A leader
    /// that is really gone turns SUSPECT within about a second and then votes go through.
    fn guard_quiesced_vote(
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
    async fn leader_unreachable(&self, s: &ShardGroup, leader: u64) {
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
                for s in reg.shards().iter() {
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
    fn handle_quiesce(&self, msg: &RaftMessage) -> bool {
        let Ok((leader, term, index)) = serde_json::from_slice::<(u64, u64, u64)>(&msg.header)
        else {
            return false;
        };
        let Some(s) = msg
            .group
            .checked_sub(1)
            .and_then(|v| self.shard(v as usize))
        else {
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
        for (v, s) in self.shards().iter().enumerate() {
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
            let group = group_of_vshard(v as u32);
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

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    async fn leader_read_index(&self, vshard: u32) -> Result<u64, Error> {
        let s = self
            .shard(vshard as usize)
            .ok_or_else(|| self.not_hosted(vshard))?;
        read_index_of(&s.raft, group_of_vshard(vshard)).await
    }

    /// Makes the next read of this node's replica of `vshard` linearizable: everything
    /// acknowledged before this call is applied here when it returns. The leader confirms
    /// its leadership (read index); a follower asks the leader for that index and waits
    /// until it applied it (a follower read, no data moves).
    pub async fn read_barrier(&self, vshard: u32, timeout: Duration) -> Result<(), Error> {
        let s = self
            .shard(vshard as usize)
            .ok_or_else(|| self.not_hosted(vshard))?;
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
        let s = self.shard(vshard as usize)?;
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
        if let (true, Some(s)) = (ok, self.shard(vshard as usize)) {
            s.closed_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    /// On a leader: (the last time a quorum acknowledged it, its last log index). Every
    /// write acknowledged before that time is at or below that index: a leader elected
    /// later needed a vote from a node that acknowledged this one after it.
    fn leader_closed(&self, m: &openraft::RaftMetrics<TypeConfig>) -> Option<(i64, u64)> {
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
        for (v, s) in self.shards().iter().enumerate() {
            let m = s.raft.metrics().borrow_watched().clone();
            let Some((ts, index)) = self.leader_closed(&m) else {
                continue;
            };
            for (peer, _) in m.membership_config.membership().nodes() {
                if *peer != me {
                    per_peer
                        .entry(*peer)
                        .or_default()
                        .push((v as u32, ts, index));
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

    fn handle_closed(&self, msg: &RaftMessage) -> Result<(), Error> {
        let list: Vec<(u32, i64, u64)> = serde_json::from_slice(&msg.header)
            .map_err(|e| Error::Rejected(format!("bad closed timestamps: {e}")))?;
        for (v, ts, index) in list {
            if let Some(s) = self.shard(v as usize) {
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
    async fn barrier<SM>(
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
                Err(e) => return Err(e),
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

    /// The staging directory of snapshot transfer `transfer` for `group`.
    fn staging(&self, group: u32, transfer: &str) -> Result<PathBuf, Error> {
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
    fn stage_chunk(&self, msg: &RaftMessage) -> Result<bytes::Bytes, Error> {
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

    /// Proposes an insert forwarded by another node; only answers if this node leads.
    async fn handle_forwarded_insert(&self, msg: &RaftMessage) -> Result<bytes::Bytes, Error> {
        #[derive(serde::Deserialize)]
        struct H {
            table_id: u64,
            request_id: Option<u64>,
        }
        let h: H = serde_json::from_slice(&msg.header)
            .map_err(|e| Error::Rejected(format!("bad forwarded insert: {e}")))?;
        let vshard = msg
            .group
            .checked_sub(1)
            .ok_or_else(|| Error::Rejected("inserts go to vshard groups".into()))?;
        let cmd = Command::Insert {
            table_id: h.table_id,
            request_id: h.request_id,
            ipc: msg.entries.first().cloned().unwrap_or_default(),
        };
        let r = self.insert(vshard, cmd).await?;
        Ok(serde_json::to_vec(&r).unwrap_or_default().into())
    }

    /// Proposes a group-0 command; a follower forwards it to the leader (once, or again
    /// after the leader changed) and then waits until its own copy applied it, so the caller
    /// reads its own write.
    pub async fn propose_meta(&self, cmd: Command) -> Result<Response, Error> {
        const ATTEMPTS: usize = 5;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let hint = match map_write(0, self.meta.client_write(cmd.clone()).await) {
                Err(Error::NotLeader { hint, .. }) => hint,
                other => return other,
            };
            let Some(leader) = hint.filter(|l| *l != self.cfg.node_id) else {
                // No leader known yet (an election is under way): wait for one.
                last = Some(Error::Unavailable {
                    group: 0,
                    reason: "group 0 has no leader".into(),
                });
                let _ = self
                    .meta
                    .wait(Some(Duration::from_millis(200 << attempt.min(4))))
                    .metrics(|m| m.current_leader.is_some(), "group 0 leader")
                    .await;
                continue;
            };
            let body = serde_json::to_vec(&cmd).map_err(|e| Error::Internal(e.to_string()))?;
            match self.transport.forward_meta(leader, body.into()).await {
                Ok(reply) => {
                    let fw: ForwardedWrite = serde_json::from_slice(&reply)
                        .map_err(|e| Error::Internal(format!("bad forwarded reply: {e}")))?;
                    let _ = self
                        .meta
                        .wait(Some(Duration::from_secs(5)))
                        .applied_index_at_least(Some(fw.index), "forwarded write applied")
                        .await;
                    return Ok(fw.response);
                }
                Err(e) => {
                    last = Some(Error::Unavailable {
                        group: 0,
                        reason: format!("forwarding to leader {leader}: {e}"),
                    });
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                }
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            group: 0,
            reason: "no leader".into(),
        }))
    }

    /// Applies a group-0 command forwarded by a follower; only the leader answers.
    pub async fn handle_forwarded_meta(&self, body: &[u8]) -> Result<bytes::Bytes, Error> {
        let cmd: Command = serde_json::from_slice(body)
            .map_err(|e| Error::Rejected(format!("bad forwarded command: {e}")))?;
        if matches!(cmd, Command::Insert { .. }) {
            return Err(Error::Rejected("inserts are not group-0 commands".into()));
        }
        if matches!(cmd, Command::Ddl { .. }) {
            self.check_disk()?;
        }
        let r = self.meta.client_write(cmd).await;
        let (response, index) = match r {
            Ok(resp) => (resp.data, resp.log_id.index),
            Err(e) => return map_write(0, Err(e)).map(|_| bytes::Bytes::new()),
        };
        let fw = ForwardedWrite { response, index };
        Ok(serde_json::to_vec(&fw).unwrap_or_default().into())
    }

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

    pub fn catalog(&self) -> CatalogHandle {
        self.catalog.clone()
    }

    pub fn vshards(&self) -> u32 {
        self.cfg.vshards
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// Whether this node hosts the vshard groups.
    pub fn hosts_vshards(&self) -> bool {
        !self.shards().is_empty()
    }

    /// The error for touching vshard `vshard` here when this node does not host it.
    pub fn not_hosted(&self, vshard: u32) -> Error {
        let catalog = self.catalog.read().clone();
        Error::NotHosted {
            vshard,
            node: self.cfg.node_id,
            host: catalog.vshard_hosts().first().map(|n| n.addrs.http.clone()),
        }
    }

    /// The nodes to read vshard `vshard` from when this node has no replica of it: every
    /// node holding one, those SWIM says are alive first, starting at a different node per
    /// vshard so that reads spread over the replicas.
    pub fn read_hosts(&self, vshard: u32) -> Vec<u64> {
        let mut hosts: Vec<u64> = self
            .catalog
            .read()
            .vshard_hosts()
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != self.cfg.node_id)
            .collect();
        if hosts.is_empty() {
            return hosts;
        }
        let start = vshard as usize % hosts.len();
        hosts.rotate_left(start);
        let (mut alive, down): (Vec<u64>, Vec<u64>) =
            hosts.into_iter().partition(|n| self.is_alive(*n));
        alive.extend(down);
        alive
    }

    /// The vshard groups hosted here now (empty on a node without replicas).
    fn shards(&self) -> Arc<Vec<Arc<ShardGroup>>> {
        self.shards.read().clone()
    }

    fn shard(&self, v: usize) -> Option<Arc<ShardGroup>> {
        self.shards.read().get(v).cloned()
    }

    /// Starts hosting every vshard here (group 0 made this node a host): opens or creates
    /// the groups, which then wait for their leaders to add this node as a learner and
    /// catch it up. Idempotent.
    pub async fn start_hosting(&self) -> Result<(), Error> {
        let _one = self.hosting.lock().await;
        if !self.shards().is_empty() {
            return Ok(());
        }
        let mut shards = Vec::with_capacity(self.cfg.vshards as usize);
        for v in 0..self.cfg.vshards {
            let s = open_shard(
                &self.cfg,
                &self.wal,
                v,
                &self.catalog,
                self.transport.clone(),
            )
            .await;
            match s {
                Ok(s) => shards.push(Arc::new(s)),
                Err(e) => {
                    for s in shards {
                        let _ = s.raft.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        *self.shards.write() = Arc::new(shards);
        tracing::info!(vshards = self.cfg.vshards, "now hosting vshard replicas");
        Ok(())
    }

    /// Stops hosting (group 0 handed this node's replicas to another node): first hands
    /// every leadership held here to a caught-up voter, then shuts the groups down. The
    /// data stays on disk: its Raft state is intact, so were this node made a host again
    /// it would rejoin as the member it was. Reads here then go to the new replicas.
    pub async fn stop_hosting(&self) {
        let _one = self.hosting.lock().await;
        let me = self.cfg.node_id;
        for s in self.shards().iter() {
            let m = s.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let to = m.replication.iter().flatten().find_map(|(id, matched)| {
                (*id != me
                    && m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == *id)
                    && matched.as_ref().is_some_and(|l| l.index == last))
                .then_some(*id)
            });
            if let Some(to) = to {
                s.wake();
                let _ = s.raft.trigger().transfer_leader(to).await;
            }
        }
        let old = std::mem::take(&mut *self.shards.write());
        for s in old.iter() {
            let _ = s.raft.shutdown().await;
        }
        if !old.is_empty() {
            tracing::warn!(
                vshards = old.len(),
                "stopped hosting vshard replicas (they were handed to another node); \
                 their data stays in this node's data directory"
            );
        }
    }

    pub fn store(&self, vshard: u32) -> Option<Arc<ShardStore>> {
        self.shard(vshard as usize).map(|s| s.store.clone())
    }

    /// Refuses with `DiskFull` while free space is below the configured reserve, so that a
    /// full disk never reaches the Raft log (where a failed append stops the group).
    pub fn check_disk(&self) -> Result<(), Error> {
        match fs4::available_space(&self.cfg.data_dir) {
            Ok(free) if free < self.cfg.min_free_disk_bytes => Err(Error::DiskFull(format!(
                "{} bytes free in {}, writes need at least {} (min_free_disk_bytes)",
                free,
                self.cfg.data_dir.display(),
                self.cfg.min_free_disk_bytes
            ))),
            _ => Ok(()),
        }
    }

    /// Proposes a DDL batch to group 0 (through the leader) and waits for it to apply here.
    pub async fn propose_ddl(&self, ops: Vec<DdlOp>) -> Result<Response, Error> {
        self.check_disk()?;
        self.propose_meta(Command::Ddl { ops }).await
    }

    /// Proposes an insert to a vshard's group and waits until it is committed and applied
    /// by a quorum of its replicas. A follower forwards it to the group's leader (again if
    /// the leader moved meanwhile).
    pub async fn insert(&self, vshard: u32, cmd: Command) -> Result<Response, Error> {
        let group = group_of_vshard(vshard);
        let mut last = None;
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        let mut attempt = 0u32;
        while tokio::time::Instant::now() < deadline {
            attempt += 1;
            let hint = match self.insert_local(vshard, cmd.clone()).await {
                Err(Error::NotLeader { hint, .. }) => hint,
                // No replica here: hand it to a node that has one (it forwards on to the
                // leader).
                Err(Error::NotHosted { .. }) => {
                    let catalog = self.catalog.read().clone();
                    let hosts = catalog.vshard_hosts();
                    if hosts.is_empty() {
                        return Err(self.not_hosted(vshard));
                    }
                    let pick = hosts[(vshard as usize + attempt as usize) % hosts.len()].id;
                    Some(pick)
                }
                other => return other,
            };
            let Some(leader) = hint.filter(|l| *l != self.cfg.node_id) else {
                last = Some(Error::Unavailable {
                    group,
                    reason: "no leader (an election is under way)".into(),
                });
                if let Some(s) = self.shard(vshard as usize) {
                    let _ = s
                        .raft
                        .wait(Some(backoff(attempt) * 4))
                        .metrics(|m| m.current_leader.is_some(), "vshard leader")
                        .await;
                } else {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                continue;
            };
            let Command::Insert {
                table_id,
                request_id,
                ipc,
            } = &cmd
            else {
                return Err(Error::Rejected("only inserts go to vshard groups".into()));
            };
            let header = serde_json::json!({"table_id": table_id, "request_id": request_id});
            let msg = RaftMessage {
                group,
                kind: RaftRpc::ClientInsert,
                header: serde_json::to_vec(&header).unwrap_or_default().into(),
                entries: vec![ipc.clone()],
            };
            match self
                .transport
                .send_raft(leader, "", msg, Duration::from_secs(30))
                .await
            {
                Ok(body) => {
                    return serde_json::from_slice(&body)
                        .map_err(|e| Error::Internal(format!("bad forwarded reply: {e}")))
                }
                Err(e) => {
                    last = Some(Error::Unavailable {
                        group,
                        reason: format!("forwarding to leader {leader}: {e}"),
                    });
                    if let Some(s) = self.shard(vshard as usize) {
                        self.leader_unreachable(&s, leader).await;
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            group,
            reason: "no leader".into(),
        }))
    }

    /// Proposes an insert to this node's replica of the group (fails with `NotLeader`
    /// unless it leads).
    async fn insert_local(&self, vshard: u32, cmd: Command) -> Result<Response, Error> {
        if vshard >= self.cfg.vshards {
            return Err(Error::Internal(format!("vshard {vshard} out of range")));
        }
        let s = self
            .shard(vshard as usize)
            .ok_or_else(|| self.not_hosted(vshard))?;
        s.touch();
        self.check_disk()?;
        let r = s.raft.client_write(cmd).await;
        map_write(group_of_vshard(vshard), r)
    }

    /// Proposes the parts of one write (one insert per vshard) and waits for all of them.
    /// With more than one part, a durable intent first makes the write all-or-nothing across
    /// a crash of this node (see [`crate::intents`]).
    pub async fn insert_many(&self, parts: Vec<Part>) -> Vec<Result<Response, Error>> {
        if parts.len() <= 1 {
            return self.propose_parts(parts).await;
        }
        let unavailable = |parts: &[Part], e: Error| {
            parts
                .iter()
                .map(|_| {
                    Err(Error::Unavailable {
                        group: 0,
                        reason: e.to_string(),
                    })
                })
                .collect()
        };
        let (intent, durable) = match self.intents.begin(&parts).await {
            Ok(begun) => begun,
            Err(e) => return unavailable(&parts, e),
        };
        // A part only this node votes on commits once it is durable in this node's WAL,
        // queued after the intent, so the intent is durable by then too. A part that other
        // nodes can commit must wait for the intent's fsync first.
        if !self.votes_alone(parts.iter().map(|(v, _)| *v)) {
            if let Err(e) = durable.wait().await {
                return unavailable(&parts, e);
            }
        }
        let results = self.propose_parts(parts).await;
        // A part that failed for a retryable reason stays intended: the next start finishes it.
        let settled = results.iter().all(Result::is_ok);
        if settled {
            if let Err(e) = self.intents.done(intent) {
                tracing::warn!(intent, error = %e, "could not record a finished write; it will be re-proposed (harmlessly) at start-up");
            }
        }
        results
    }

    /// Whether this node is the only voter of every one of `vshards`' groups, so that an
    /// entry proposed now commits only once this node's WAL is durable past it.
    ///
    /// A voter added later changes nothing: that membership change is appended after the
    /// intent and must commit under a configuration that needs this node's WAL, before any
    /// configuration that does not can take effect. The Raft metrics alone could be stale
    /// (a change appended before the intent but not yet reported), so the applied node
    /// registry must also hold no other node: a vshard voter is only ever added for a
    /// registered node, by the group-0 leader (this node, while it is the only one) after
    /// it applied that node's registration.
    fn votes_alone(&self, mut vshards: impl Iterator<Item = u32>) -> bool {
        let me = self.cfg.node_id;
        if self.catalog.read().nodes.keys().any(|&id| id != me) {
            return false;
        }
        vshards.all(|v| {
            self.shard(v as usize).is_some_and(|s| {
                let metrics = s.raft.metrics();
                let m = metrics.borrow_watched();
                m.membership_config.membership().voter_ids().eq([me])
            })
        })
    }

    async fn propose_parts(&self, parts: Vec<Part>) -> Vec<Result<Response, Error>> {
        futures::future::join_all(parts.into_iter().map(|(v, cmd)| self.insert(v, cmd))).await
    }

    /// Asks every vshard with hot data to flush now.
    pub async fn flush_all(&self) {
        for s in self.shards().iter() {
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
                for s in reg.shards().iter() {
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
    async fn unpin_wal(&self) {
        let Some(group) = self.wal.pinning_group(self.cfg.wal_max_bytes) else {
            return;
        };
        let r = if group == 0 {
            self.meta.trigger().snapshot().await
        } else if let Some(s) = u32::try_from(group)
            .ok()
            .and_then(|g| g.checked_sub(1))
            .and_then(|v| self.shard(v as usize))
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

    pub fn status(&self) -> Vec<GroupStatus> {
        let mut out = vec![];
        let m = self.meta.metrics().borrow_watched().clone();
        out.push(status_of(0, None, &m, ShardStats::default()));
        for (v, s) in self.shards().iter().enumerate() {
            let m = s.raft.metrics().borrow_watched().clone();
            let mut st = status_of(v as u32 + 1, Some(v as u32), &m, s.store.stats());
            st.quiesced = s.quiet() != QUIET_NONE;
            st.closed_ts = self.closed_ts(v as u32);
            st.closed_reads = s.closed_reads.load(std::sync::atomic::Ordering::Relaxed);
            out.push(st);
        }
        out
    }

    /// Flushes every vshard (so the next start replays little), then stops every group.
    pub async fn shutdown(&self, flush_timeout: Duration) {
        self.flush_all().await;
        let deadline = tokio::time::Instant::now() + flush_timeout;
        for s in self.shards().iter() {
            while s.store.stats().hot_rows > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for s in self.shards().iter() {
            let _ = s.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

/// On the leader of `raft`: every node of `desired` becomes a learner; caught-up learners
/// are promoted while there are fewer than `max_voters` voters. Returns the caught-up nodes
/// when this node leads, `None` otherwise. Idempotent: a new leader carries on.
async fn reconcile_group<SM>(
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
async fn membership_change(
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

/// On the leader: confirms leadership with a quorum and returns the index a linearizable
/// read must wait for; elsewhere `NotLeader` with the leader hint.
async fn read_index_of<SM>(raft: &Raft<TypeConfig, SM>, group: u32) -> Result<u64, Error>
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

async fn handle_inbound<SM>(
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
    fn enc<T: serde::Serialize>(v: &T) -> bytes::Bytes {
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

fn status_of(
    group: u32,
    vshard: Option<u32>,
    m: &openraft::RaftMetrics<TypeConfig>,
    stats: ShardStats,
) -> GroupStatus {
    GroupStatus {
        group,
        vshard,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.as_ref().map(|l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        replicas: m.membership_config.membership().voter_ids().collect(),
        stats,
        quiesced: false,
        closed_ts: None,
        closed_reads: 0,
        followers: m
            .replication
            .as_ref()
            .map(|r| {
                let last = m.last_log_index.unwrap_or(0);
                r.iter()
                    .filter(|(id, _)| Some(**id) != m.current_leader)
                    .map(|(id, l)| {
                        let matched = l.as_ref().map(|l| l.index);
                        (*id, matched, last.saturating_sub(matched.unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        role: match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            _ => "follower",
        },
    }
}

fn map_write(
    group: u32,
    r: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    >,
) -> Result<Response, Error> {
    match r {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Error::NotLeader {
            group,
            hint: f.leader_id,
        }),
        Err(RaftError::APIError(e)) => Err(Error::Unavailable {
            group,
            reason: e.to_string(),
        }),
        Err(RaftError::Fatal(e)) => Err(Error::Unavailable {
            group,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn restarted_leaders_do_not_restore_their_leadership_and_pre_vote_is_on() {
        let cfg = GroupsConfig {
            node_id: 1,
            node_addr: String::new(),
            data_dir: PathBuf::new(),
            vshards: 1,
            log: LogConfig::default(),
            store: StoreConfig::default(),
            flush_hot_bytes: 1,
            flush_age_ms: 1,
            wal_max_bytes: 1,
            flush_check_interval_ms: 1,
            min_free_disk_bytes: 0,
            heartbeat_interval_ms: 100,
            max_clock_offset_ms: 250,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            bootstrap: false,
            host_vshards: false,
        };
        for policy in [SnapshotPolicy::Never, SnapshotPolicy::LogsSinceLast(10)] {
            let c = raft_config(&cfg, 1, policy).expect("config");
            assert_eq!(c.enable_leader_restore, Some(false));
            assert_eq!(c.enable_pre_vote, Some(true));
        }
    }
}
