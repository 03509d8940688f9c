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
use shoal_raftlog::{LogConfig, RaftLog};
use shoal_storage::shard::ShardStats;
use shoal_storage::{ShardStore, StoreConfig};

use crate::command::{Command, DdlOp, Response};
use crate::intents::{IntentLog, Part};
use crate::log_store::LogStore;
use crate::meta_sm::{CatalogHandle, MetaStateMachine};
use crate::network::NoNetwork;
use crate::shard_sm::ShardStateMachine;
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
    /// How often the flush policy looks at the vshards.
    pub flush_check_interval_ms: u64,
    /// Writes are refused (507) while the data directory's file system has less free space.
    pub min_free_disk_bytes: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

struct ShardGroup {
    raft: Raft<TypeConfig, ShardStateMachine>,
    store: Arc<ShardStore>,
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
}

pub struct Registry {
    cfg: GroupsConfig,
    intents: Arc<IntentLog>,
    catalog: CatalogHandle,
    meta: Raft<TypeConfig, MetaStateMachine>,
    shards: Vec<ShardGroup>,
}

/// Segment size of the write-intent log: small, so finished intents are purged soon.
const INTENT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

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
        // A flush makes the log below it redundant on this replica.
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("raft config: {e}")))
}

fn open_log(dir: &Path, cfg: &LogConfig) -> Result<Arc<RaftLog>, Error> {
    Ok(Arc::new(RaftLog::open(dir, cfg.clone())?))
}

impl Registry {
    /// Opens (or creates) every group and waits until this node leads each of them.
    pub async fn open(cfg: GroupsConfig, ready_timeout: Duration) -> Result<Arc<Registry>, Error> {
        let groups = cfg.data_dir.join("groups");
        let g0 = groups.join("g0");
        let meta_sm = MetaStateMachine::open(&g0.join("state"))
            .map_err(|e| Error::Internal(format!("group 0 state: {e}")))?;
        let catalog = meta_sm.catalog();
        let meta_log = LogStore::new(open_log(&g0.join("log"), &cfg.log)?);
        let meta = Raft::new(
            cfg.node_id,
            raft_config(&cfg, 0, SnapshotPolicy::LogsSinceLast(1000))?,
            NoNetwork,
            meta_log,
            meta_sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("starting group 0: {e}")))?;
        let mut shards = Vec::with_capacity(cfg.vshards as usize);
        for v in 0..cfg.vshards {
            let group = group_of_vshard(v);
            let dir = groups.join(format!("g{group}"));
            let (store, raft_state) = ShardStore::open(&dir.join("data"), cfg.store.clone())?;
            let sm = ShardStateMachine::new(store.clone(), raft_state, catalog.clone())
                .map_err(|e| Error::Internal(format!("vshard {v} state: {e}")))?;
            let log = LogStore::new(open_log(&dir.join("log"), &cfg.log)?);
            let raft = Raft::new(
                cfg.node_id,
                raft_config(&cfg, group, SnapshotPolicy::Never)?,
                NoNetwork,
                log,
                sm,
            )
            .await
            .map_err(|e| Error::Internal(format!("starting vshard {v}: {e}")))?;
            shards.push(ShardGroup { raft, store });
        }
        let intent_cfg = LogConfig {
            segment_max_bytes: INTENT_SEGMENT_BYTES,
            ..cfg.log.clone()
        };
        let (intents, pending) = IntentLog::open(&cfg.data_dir.join("intents"), intent_cfg)?;
        let reg = Arc::new(Registry {
            cfg,
            intents: Arc::new(intents),
            catalog,
            meta,
            shards,
        });
        reg.bootstrap_and_wait(ready_timeout).await?;
        // Finish writes that were under way when the node stopped: all of each, or none.
        for (index, parts) in pending {
            tracing::info!(
                intent = index,
                parts = parts.len(),
                "finishing a write interrupted by a crash"
            );
            let results = reg.propose_parts(parts).await;
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                return Err(Error::Unavailable {
                    group: 0,
                    reason: format!("finishing interrupted write {index}: {e}"),
                });
            }
            reg.intents.done(index)?;
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
        if !self.meta.is_initialized().await.map_err(|e| fatal(0, &e))? {
            self.meta
                .initialize(members.clone())
                .await
                .map_err(|e| fatal(0, &e))?;
        }
        for (v, s) in self.shards.iter().enumerate() {
            if !s
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
        self.meta
            .wait(Some(timeout))
            .current_leader(node, "group 0 leader")
            .await
            .map_err(|e| unavailable(0, &e))?;
        for (v, s) in self.shards.iter().enumerate() {
            let g = v as u32 + 1;
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

    pub fn catalog(&self) -> CatalogHandle {
        self.catalog.clone()
    }

    pub fn vshards(&self) -> u32 {
        self.cfg.vshards
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    pub fn store(&self, vshard: u32) -> Option<&Arc<ShardStore>> {
        self.shards.get(vshard as usize).map(|s| &s.store)
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

    /// Proposes a DDL batch to group 0 and waits for it to apply.
    pub async fn propose_ddl(&self, ops: Vec<DdlOp>) -> Result<Response, Error> {
        self.check_disk()?;
        let r = self.meta.client_write(Command::Ddl { ops }).await;
        map_write(0, r)
    }

    /// Proposes an insert to a vshard's group and waits until it is committed and applied.
    pub async fn insert(&self, vshard: u32, cmd: Command) -> Result<Response, Error> {
        let s = self
            .shards
            .get(vshard as usize)
            .ok_or_else(|| Error::Internal(format!("vshard {vshard} out of range")))?;
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
        let intent = match self.intents.begin(&parts).await {
            Ok(i) => i,
            Err(e) => {
                return parts
                    .iter()
                    .map(|_| {
                        Err(Error::Unavailable {
                            group: 0,
                            reason: e.to_string(),
                        })
                    })
                    .collect()
            }
        };
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

    async fn propose_parts(&self, parts: Vec<Part>) -> Vec<Result<Response, Error>> {
        futures::future::join_all(parts.into_iter().map(|(v, cmd)| self.insert(v, cmd))).await
    }

    /// Asks every vshard with hot data to flush now.
    pub async fn flush_all(&self) {
        for s in &self.shards {
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
                for s in &reg.shards {
                    let st = s.store.stats();
                    if st.hot_rows > 0
                        && (st.hot_bytes >= reg.cfg.flush_hot_bytes
                            || st.oldest_hot_age_ms >= reg.cfg.flush_age_ms)
                    {
                        let _ = s.raft.trigger().snapshot().await;
                    }
                }
            }
        })
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        let mut out = vec![];
        let m = self.meta.metrics().borrow_watched().clone();
        out.push(status_of(0, None, &m, ShardStats::default()));
        for (v, s) in self.shards.iter().enumerate() {
            let m = s.raft.metrics().borrow_watched().clone();
            out.push(status_of(v as u32 + 1, Some(v as u32), &m, s.store.stats()));
        }
        out
    }

    /// Flushes every vshard (so the next start replays little), then stops every group.
    pub async fn shutdown(&self, flush_timeout: Duration) {
        self.flush_all().await;
        let deadline = tokio::time::Instant::now() + flush_timeout;
        for s in &self.shards {
            while s.store.stats().hot_rows > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for s in &self.shards {
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
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        replicas: m.membership_config.membership().voter_ids().collect(),
        stats,
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
