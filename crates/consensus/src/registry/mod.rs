//! The registry of a node's Raft groups: group 0 (catalog) and one group per vshard, each
//! with its own log directory and state. It is the only way the layers above propose
//! commands, and it runs the flush policy (a flush is a vshard snapshot).
//!
//! A node hosts any subset of the vshards: the control plane opens a vshard's group here
//! when group 0's placement names this node ([`Registry::open_vshard`]) and closes it when
//! the placement no longer does ([`Registry::close_vshard`]); a closed replica's files are
//! kept for `replica_gc_grace_ms`, then deleted ([`Registry::collect_removed`]). At start
//! the node opens every vshard group whose directory it has and has not removed.
//!
//! The registry carries out decisions; it does not make them. Which replicas to add or
//! remove, whom to hand leadership to, when to move: that is the `cluster` crate's.
//!
//! Layout under the data directory:
//! ```text
//! groups/g0/log/        group 0's Raft log          groups/g0/state/catalog.json
//! groups/g<v+1>/log/    vshard v's Raft log         groups/g<v+1>/data/  (manifest + parts)
//! groups/g<v+1>/REMOVED this replica was closed for good at this time (unix ms); deleted
//!                       with the directory after the grace period
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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

mod flush;
mod inbound;
mod liveness;
mod membership;
pub use membership::{handoff_target, GroupState, MembershipChange, CAUGHT_UP_SLACK};
mod read;
mod write;

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
    /// Start a new cluster: initialize group 0 and every vshard group with this node as
    /// their only voter (a node that joined waits for the leaders to add it instead).
    pub bootstrap: bool,
    /// Outgoing snapshot bytes per second, all transfers of this node together (0: no
    /// limit).
    pub snapshot_max_bytes_per_sec: u64,
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
    /// Leaders this replica has seen take over (see [`count_leader_changes`]).
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
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

/// A leadership transfer not done after this long is asked again (of a live target).
const TRANSFER_STUCK: Duration = Duration::from_secs(3);

/// How long a group-0 proposal may take, forwarding and commit included.
const META_PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

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
    /// The last log index this replica knows is committed.
    pub commit_index: Option<u64>,
    /// Leaders this replica has seen take over since it was opened.
    pub leader_changes: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Voters, as this replica's Raft membership says.
    pub replicas: Vec<u64>,
    pub learners: Vec<u64>,
    /// While the membership is joint: the old voters (a change is under way, or was left
    /// behind; see `MembershipChange::LeaveJoint`).
    pub joint_from: Option<Vec<u64>>,
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
    /// The vshard groups hosted here, by vshard. Replaced whole (copy on write) when one
    /// is opened or closed, so readers never hold the lock across an await.
    shards: parking_lot::RwLock<Arc<BTreeMap<u32, Arc<ShardGroup>>>>,
    /// Serialises opening and closing groups.
    hosting: tokio::sync::Mutex<()>,
    /// Snapshot transfers this node sends: progress per (group, target) and the rate limit.
    snapshots: Arc<crate::transport::SnapshotSends>,
    /// Whether membership (SWIM) believes a node is alive; unset = assume alive.
    alive: std::sync::OnceLock<Arc<dyn Fn(u64) -> bool + Send + Sync>>,
    /// Whether this node's clock agrees with its peers' within `max_clock_offset_ms`;
    /// unset = assume it does.
    clock_ok: std::sync::OnceLock<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The closed timestamp last sent to each (peer, vshard), so unchanged ones are not
    /// sent again.
    closed_sent: parking_lot::Mutex<BTreeMap<(u64, u32), i64>>,
    /// Leadership transfers asked of groups this node leads: group → (target, when).
    /// openraft's leader stops heartbeats and writes until the target takes over; a target
    /// that died meanwhile never does (see [`Registry::unstick_transfers`]).
    transfers: parking_lot::Mutex<BTreeMap<u32, (u64, std::time::Instant)>>,
    /// Snapshot staging areas being installed (see `inbound::remove_abandoned_transfers`).
    installing: parking_lot::Mutex<std::collections::HashSet<PathBuf>>,
    /// Leaders group 0's replica here has seen take over.
    meta_leader_changes: Arc<std::sync::atomic::AtomicU64>,
    /// Counted as they happen, read by the node's metrics ([`Registry::counts`]).
    counters: Counters,
}

/// Raft events counted on this node since it started.
#[derive(Default)]
struct Counters {
    proposals_failed: std::sync::atomic::AtomicU64,
    snapshots_received: std::sync::atomic::AtomicU64,
    snapshot_bytes_received: std::sync::atomic::AtomicU64,
}

/// Raft events on this node since it started (every group together), for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftCounts {
    /// Proposals (writes, membership changes) that failed other than by reaching a
    /// follower: no quorum, a fatal log error, a change refused.
    pub proposals_failed: u64,
    /// Snapshots this node sent to a replica, and the bytes of their files and manifests.
    pub snapshots_sent: u64,
    pub snapshot_bytes_sent: u64,
    /// Snapshots installed here from a leader, and the bytes of the chunks staged for them.
    pub snapshots_received: u64,
    pub snapshot_bytes_received: u64,
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
        // Group 0: a snapshot makes the log below it redundant. Vshards purge by
        // `flush::purge_upto` instead (openraft's own purge would be after every flush,
        // which sends a follower a few seconds behind a whole snapshot).
        max_in_snapshot_log_to_keep: if group == 0 { 0 } else { u64::MAX },
        purge_batch_size: 1,
        install_snapshot_timeout: SNAPSHOT_RPC_TIMEOUT_MS,
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
    snapshots: &Arc<crate::transport::SnapshotSends>,
) -> Result<ShardGroup, Error> {
    let group = group_of_vshard(v);
    let dir = group_dir(cfg, v);
    // No snapshot transfer outlives the process that received it: its sender gave up.
    let _ = std::fs::remove_dir_all(dir.join(INCOMING_DIR));
    let (store, raft_state) = ShardStore::open(&dir.join("data"), cfg.store.clone())?;
    let sm = ShardStateMachine::new(store.clone(), raft_state, catalog.clone())
        .map_err(|e| Error::Internal(format!("vshard {v} state: {e}")))?;
    let log = LogStore::new(open_log(wal, group.into(), &dir.join("log"))?);
    let net = GroupNetworkFactory {
        transport,
        group,
        node_id: cfg.node_id,
        snapshots: snapshots.clone(),
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
        leader_changes: count_leader_changes(&raft),
        raft,
        store,
        quiet: std::sync::atomic::AtomicU64::new(QUIET_NONE),
        last_active_ms: std::sync::atomic::AtomicU64::new(now_ms()),
        quiet_index: std::sync::atomic::AtomicU64::new(0),
        closed: Default::default(),
        closed_reads: Default::default(),
    })
}

/// Vshard `v`'s directory.
fn group_dir(cfg: &GroupsConfig, v: u32) -> PathBuf {
    cfg.data_dir
        .join("groups")
        .join(format!("g{}", group_of_vshard(v)))
}

/// Under a group's directory: the staging areas of snapshot transfers being received.
pub(crate) const INCOMING_DIR: &str = "incoming";

/// How long one snapshot RPC (a chunk, or the final install) may take before the sender
/// gives the transfer up and starts again. openraft's 200 ms default is shorter than one
/// fsynced 4 MiB chunk on a busy disk, which made large transfers restart for ever.
pub const SNAPSHOT_RPC_TIMEOUT_MS: u64 = 10_000;

/// Marks a replica closed for good (see the module documentation).
const REMOVED_FILE: &str = "REMOVED";

/// The vshards whose groups have a directory here that was not removed.
fn vshards_on_disk(cfg: &GroupsConfig) -> Vec<u32> {
    (0..cfg.vshards)
        .filter(|v| {
            let dir = group_dir(cfg, *v);
            dir.join("log").is_dir() && !dir.join(REMOVED_FILE).exists()
        })
        .collect()
}

/// Counts the leaders a replica sees take over: each time Raft names a leader other than
/// the last one it named. Watches the server metrics, which change only with the vote,
/// role, leader or membership (not with every append); the task ends with the group.
fn count_leader_changes<SM>(raft: &Raft<TypeConfig, SM>) -> Arc<std::sync::atomic::AtomicU64>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut rx = raft.server_metrics();
    let counted = changes.clone();
    tokio::spawn(async move {
        let mut last = rx.borrow_watched().current_leader;
        while rx.changed().await.is_ok() {
            let now = rx.borrow_watched().current_leader;
            if now.is_some() && now != last {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                last = now;
            }
        }
    });
    changes
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
        let snapshots = Arc::new(crate::transport::SnapshotSends::new(
            cfg.snapshot_max_bytes_per_sec,
        ));
        let net = |group: u32| GroupNetworkFactory {
            transport: transport.clone(),
            group,
            node_id: cfg.node_id,
            snapshots: snapshots.clone(),
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
        // The first node of a new cluster creates every vshard group; any other start
        // opens the ones this node has (the control plane opens and closes them later).
        let hosted = if cfg.bootstrap {
            (0..cfg.vshards).collect()
        } else {
            vshards_on_disk(&cfg)
        };
        let mut shards = BTreeMap::new();
        for v in hosted {
            let s = open_shard(&cfg, &wal, v, &catalog, transport.clone(), &snapshots).await?;
            shards.insert(v, Arc::new(s));
        }
        let (intents, pending) =
            IntentLog::open(wal.group(INTENTS_WAL_GROUP, &cfg.data_dir.join("intents"))?)?;
        let meta_leader_changes = count_leader_changes(&meta);
        let reg = Arc::new(Registry {
            cfg,
            wal,
            transport,
            intents: Arc::new(intents),
            catalog,
            meta,
            shards: parking_lot::RwLock::new(Arc::new(shards)),
            hosting: tokio::sync::Mutex::new(()),
            snapshots,
            alive: std::sync::OnceLock::new(),
            clock_ok: std::sync::OnceLock::new(),
            closed_sent: Default::default(),
            transfers: Default::default(),
            installing: Default::default(),
            meta_leader_changes,
            counters: Counters::default(),
        });
        // WAL records of groups not opened (closed for good, or deleted) pin nothing: a
        // group opened again later starts with a reset.
        reg.wal.forget_recovered();
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
        for (&v, s) in self.shards().iter() {
            // Only the node that starts the cluster creates vshard groups; a node that
            // joined waits for their leaders to add it (initializing here would make a
            // second, conflicting group).
            if self.cfg.bootstrap
                && !s
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| fatal(v + 1, &e))?
            {
                s.raft
                    .initialize(members.clone())
                    .await
                    .map_err(|e| fatal(v + 1, &e))?;
            }
        }
        let unavailable = |g: u32, e: &dyn std::fmt::Display| Error::Unavailable {
            group: g,
            reason: e.to_string(),
        };
        for (&v, s) in self.shards().iter() {
            let g = v + 1;
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

    pub fn catalog(&self) -> CatalogHandle {
        self.catalog.clone()
    }

    pub fn vshards(&self) -> u32 {
        self.cfg.vshards
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// The vshards hosted here (a replica, or a learner catching up).
    pub fn hosted(&self) -> Vec<u32> {
        self.shards().keys().copied().collect()
    }

    /// The error for touching vshard `vshard` here when this node holds no replica of it.
    pub fn not_hosted(&self, vshard: u32) -> Error {
        let catalog = self.catalog.read().clone();
        let host = catalog
            .replicas(vshard)
            .into_iter()
            .find(|n| *n != self.cfg.node_id)
            .and_then(|n| catalog.nodes.get(&n))
            .map(|n| n.addrs.http.clone());
        Error::NotHosted {
            vshard,
            node: self.cfg.node_id,
            host,
        }
    }

    /// The nodes to read vshard `vshard` from when this node has no replica of it: its
    /// replicas as group 0 places them, those SWIM says are alive first, starting at a
    /// different one per vshard so that reads spread over the replicas.
    pub fn read_hosts(&self, vshard: u32) -> Vec<u64> {
        let mut hosts: Vec<u64> = self
            .catalog
            .read()
            .replicas(vshard)
            .into_iter()
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

    /// The vshard groups hosted here now.
    fn shards(&self) -> Arc<BTreeMap<u32, Arc<ShardGroup>>> {
        self.shards.read().clone()
    }

    fn shard(&self, v: u32) -> Option<Arc<ShardGroup>> {
        self.shards.read().get(&v).cloned()
    }

    /// Opens vshard `v`'s group here (the placement names this node): an existing
    /// replica carries on; a new one starts empty and uninitialized, and waits for the
    /// group's leader to add it as a learner and catch it up. Idempotent.
    pub async fn open_vshard(&self, v: u32) -> Result<(), Error> {
        if v >= self.cfg.vshards {
            return Err(Error::Internal(format!("vshard {v} out of range")));
        }
        let _one = self.hosting.lock().await;
        if self.shard(v).is_some() {
            return Ok(());
        }
        let dir = group_dir(&self.cfg, v);
        if dir.join(REMOVED_FILE).exists() {
            // Closed for good earlier: its state is from an old membership. Start afresh
            // (the WAL resets the group's entries when the directory is new).
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::Internal(format!("removing {}: {e}", dir.display())))?;
        }
        let s = open_shard(
            &self.cfg,
            &self.wal,
            v,
            &self.catalog,
            self.transport.clone(),
            &self.snapshots,
        )
        .await?;
        let mut next = (*self.shards()).clone();
        next.insert(v, Arc::new(s));
        *self.shards.write() = Arc::new(next);
        tracing::info!(vshard = v, "opened a replica of the vshard here");
        Ok(())
    }

    /// Closes vshard `v`'s group here. With `remove`, the replica is gone for good (the
    /// placement no longer names this node): its directory is marked and deleted after
    /// the grace period, and its WAL records no longer pin the WAL. The caller hands any
    /// leadership away first. Idempotent.
    pub async fn close_vshard(&self, v: u32, remove: bool) -> Result<(), Error> {
        let _one = self.hosting.lock().await;
        let Some(s) = self.shard(v) else {
            return Ok(());
        };
        let mut next = (*self.shards()).clone();
        next.remove(&v);
        *self.shards.write() = Arc::new(next);
        s.wake();
        let _ = s.raft.shutdown().await;
        drop(s);
        if remove {
            let dir = group_dir(&self.cfg, v);
            let stamp = now_ms().to_string();
            shoal_storage::manifest::write_atomic(&dir, REMOVED_FILE, stamp.as_bytes())
                .map_err(|e| Error::Internal(format!("marking {} removed: {e}", dir.display())))?;
            self.wal.forget_group(u64::from(group_of_vshard(v)));
            tracing::info!(
                vshard = v,
                "closed this node's replica of the vshard (no longer placed here); its files go after the grace period"
            );
        }
        Ok(())
    }

    /// Deletes the directories of replicas closed for good at least `grace` ago; returns
    /// how many went. A replica opened again meanwhile is left alone.
    pub fn collect_removed(&self, grace: Duration) -> usize {
        let mut n = 0;
        for v in 0..self.cfg.vshards {
            if self.shard(v).is_some() {
                continue;
            }
            let dir = group_dir(&self.cfg, v);
            let Ok(stamp) = std::fs::read_to_string(dir.join(REMOVED_FILE)) else {
                continue;
            };
            let at: u64 = stamp.trim().parse().unwrap_or(0);
            if now_ms().saturating_sub(at) < grace.as_millis() as u64 {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    n += 1;
                    tracing::info!(vshard = v, dir = %dir.display(), "deleted the files of a removed replica");
                }
                Err(e) => {
                    tracing::warn!(vshard = v, error = %e, "deleting a removed replica's files")
                }
            }
        }
        n
    }

    /// The snapshot sends under way from this node: (group, target, bytes sent, bytes
    /// in all).
    pub fn snapshot_sends(&self) -> Vec<(u32, u64, u64, u64)> {
        self.snapshots.progress()
    }

    /// This node's replica of `vshard` for reading, if it holds one the placement counts
    /// (a learner still catching up, or a replica being removed, is not read).
    pub fn store(&self, vshard: u32) -> Option<Arc<ShardStore>> {
        let s = self.shard(vshard)?;
        self.catalog
            .read()
            .replicas(vshard)
            .contains(&self.cfg.node_id)
            .then(|| s.store.clone())
    }

    /// This node's replica of `vshard` as it is, whatever the placement says.
    pub fn hosted_store(&self, vshard: u32) -> Option<Arc<ShardStore>> {
        self.shard(vshard).map(|s| s.store.clone())
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

    pub fn status(&self) -> Vec<GroupStatus> {
        let mut out = vec![];
        let m = self.meta.metrics().borrow_watched().clone();
        let mut meta = status_of(0, None, &m, ShardStats::default());
        meta.leader_changes = self.meta_leader_changes.load(Ordering::Relaxed);
        out.push(meta);
        for (&v, s) in self.shards().iter() {
            let m = s.raft.metrics().borrow_watched().clone();
            let mut st = status_of(v + 1, Some(v), &m, s.store.stats());
            st.leader_changes = s.leader_changes.load(Ordering::Relaxed);
            st.quiesced = s.quiet() != QUIET_NONE;
            st.closed_ts = self.closed_ts(v);
            st.closed_reads = s.closed_reads.load(std::sync::atomic::Ordering::Relaxed);
            out.push(st);
        }
        out
    }

    /// Raft events counted on this node since it started.
    pub fn counts(&self) -> RaftCounts {
        let c = &self.counters;
        let (snapshots_sent, snapshot_bytes_sent) = self.snapshots.sent();
        RaftCounts {
            proposals_failed: c.proposals_failed.load(Ordering::Relaxed),
            snapshots_sent,
            snapshot_bytes_sent,
            snapshots_received: c.snapshots_received.load(Ordering::Relaxed),
            snapshot_bytes_received: c.snapshot_bytes_received.load(Ordering::Relaxed),
        }
    }

    /// The node's write-ahead log (every group's Raft log), for its size and metrics.
    pub fn wal(&self) -> &SharedWal {
        &self.wal
    }

    /// Counts `e` as a failed proposal and returns it.
    pub(crate) fn proposal_failed(&self, e: Error) -> Error {
        self.counters
            .proposals_failed
            .fetch_add(1, Ordering::Relaxed);
        e
    }

    /// `map_write`, counting a failed proposal.
    pub(crate) fn written(
        &self,
        group: u32,
        r: Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >,
    ) -> Result<Response, Error> {
        match map_write(group, r) {
            Err(e @ Error::Unavailable { .. }) => Err(self.proposal_failed(e)),
            r => r,
        }
    }

    /// Flushes every vshard (so the next start replays little), then stops every group.
    pub async fn shutdown(&self, flush_timeout: Duration) {
        self.flush_all().await;
        let deadline = tokio::time::Instant::now() + flush_timeout;
        for s in self.shards().values() {
            while s.store.stats().hot_rows > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for s in self.shards().values() {
            let _ = s.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
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
        commit_index: m.local_committed.as_ref().map(|l| l.index),
        leader_changes: 0,
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        replicas: m.membership_config.membership().voter_ids().collect(),
        learners: m.membership_config.membership().learner_ids().collect(),
        joint_from: {
            let configs = m.membership_config.membership().get_joint_config();
            (configs.len() > 1).then(|| configs[0].iter().copied().collect())
        },
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
            snapshot_max_bytes_per_sec: 0,
        };
        for policy in [SnapshotPolicy::Never, SnapshotPolicy::LogsSinceLast(10)] {
            let c = raft_config(&cfg, 1, policy).expect("config");
            assert_eq!(
                c.max_in_snapshot_log_to_keep,
                u64::MAX,
                "vshards purge by hand"
            );
            assert_eq!(c.enable_leader_restore, Some(false));
            assert_eq!(c.enable_pre_vote, Some(true));
        }
    }
}
