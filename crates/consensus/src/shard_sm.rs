//! A vshard group's state machine: applied inserts land in the shard's hot buffer; a Raft
//! snapshot *is* a flush (hot buffer → Parquet parts + manifest), after which openraft purges
//! the log below the snapshot's index. Recovery is therefore manifest + parts, then the log
//! tail replayed by openraft.
//!
//! Idempotency: the state machine remembers the request ids of the last
//! `RECENT_REQUESTS_MAX` inserts (persisted in the manifest). An insert whose id is among
//! them is acknowledged as `Duplicate` and adds nothing, on every replica alike.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use futures::Stream;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};
use shoal_storage::{FlushJob, Manifest, ShardStore};

use crate::command::{Command, Response};
use crate::meta_sm::{CatalogHandle, SnapshotData};
use crate::{
    apply_entries, io_err, GroupSnapshot, LogId, SnapshotMeta, StoredMembership, TypeConfig,
};

/// How many recent insert request ids a vshard remembers for deduplication.
pub const RECENT_REQUESTS_MAX: usize = 65_536;

/// The consensus state stored in a shard's manifest at each flush.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ShardRaftState {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    recent_requests: Vec<u64>,
}

#[derive(Default)]
struct RecentRequests {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl RecentRequests {
    fn from_vec(ids: Vec<u64>) -> RecentRequests {
        let mut r = RecentRequests::default();
        for id in ids {
            r.insert(id);
        }
        r
    }

    fn insert(&mut self, id: u64) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_REQUESTS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

pub struct ShardStateMachine {
    store: Arc<ShardStore>,
    catalog: CatalogHandle,
    applied: Option<LogId>,
    membership: StoredMembership,
    recent: RecentRequests,
}

impl ShardStateMachine {
    /// Wraps an opened store; `raft_state` is what its manifest recorded.
    pub fn new(
        store: Arc<ShardStore>,
        raft_state: Option<serde_json::Value>,
        catalog: CatalogHandle,
    ) -> io::Result<ShardStateMachine> {
        let state: ShardRaftState = match raft_state {
            Some(v) if !v.is_null() => serde_json::from_value(v).map_err(io_err)?,
            _ => ShardRaftState::default(),
        };
        Ok(ShardStateMachine {
            store,
            catalog,
            applied: state.last_applied,
            membership: state.last_membership,
            recent: RecentRequests::from_vec(state.recent_requests),
        })
    }

    fn raft_state(&self) -> ShardRaftState {
        ShardRaftState {
            last_applied: self.applied,
            last_membership: self.membership.clone(),
            recent_requests: self.recent.order.iter().copied().collect(),
        }
    }
}

/// Applies one insert unless its request id was applied recently.
fn apply_insert(
    store: &ShardStore,
    recent: &mut RecentRequests,
    table_id: u64,
    request_id: Option<u64>,
    ipc: &bytes::Bytes,
) -> Response {
    if let Some(id) = request_id {
        if recent.set.contains(&id) {
            return Response::Duplicate;
        }
    }
    match shoal_storage::ipc::decode_batches(ipc) {
        Ok(batches) => {
            for b in batches {
                // Deterministic like decoding: every replica fails the same batch the same way.
                if let Err(e) = store.insert(table_id, b) {
                    return Response::Rejected(format!("unapplicable insert payload: {e}"));
                }
            }
            if let Some(id) = request_id {
                recent.insert(id);
            }
            Response::Ok
        }
        // Deterministic: every replica decodes the same bytes the same way.
        Err(e) => Response::Rejected(format!("undecodable insert payload: {e}")),
    }
}

fn snapshot_from_manifest(
    store: &ShardStore,
    manifest: &Manifest,
) -> io::Result<Option<GroupSnapshot>> {
    if manifest.raft_state.is_null() {
        return Ok(None);
    }
    let state: ShardRaftState =
        serde_json::from_value(manifest.raft_state.clone()).map_err(io_err)?;
    let meta = SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.last_membership,
    };
    let bytes = serde_json::to_vec(manifest).map_err(io_err)?;
    Ok(Some(GroupSnapshot {
        meta,
        snapshot: SnapshotData {
            meta: bytes,
            dir: Some(store.dir().to_path_buf()),
        },
    }))
}

pub struct ShardSnapshotBuilder {
    store: Arc<ShardStore>,
    job: Option<FlushJob>,
    state: ShardRaftState,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<GroupSnapshot, io::Error> {
        let job = self
            .job
            .take()
            .ok_or_else(|| io_err("snapshot builder used twice"))?;
        let store = self.store.clone();
        let state = serde_json::to_value(&self.state).map_err(io_err)?;
        // Parquet encoding is CPU work and the file writes block: keep them off the runtime.
        let manifest = tokio::task::spawn_blocking(move || job.commit(&store, state))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        snapshot_from_manifest(&self.store, &manifest)?
            .ok_or_else(|| io_err("flush wrote no raft state"))
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (store, recent) = (&self.store, &mut self.recent);
        apply_entries(
            entries,
            &mut self.applied,
            &mut self.membership,
            |cmd| match cmd {
                Command::Insert {
                    table_id,
                    request_id,
                    ipc,
                } => apply_insert(store, recent, *table_id, *request_id, ipc),
                Command::Ddl { .. } | Command::Cluster(_) => {
                    Response::Rejected("metadata command sent to a vshard group".into())
                }
            },
        )
        .await
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        let catalog = self.catalog.read().clone();
        self.store.retain_tables(|id| catalog.table_id_live(id));
        let job = self.store.begin_flush()?;
        Some(ShardSnapshotBuilder {
            store: self.store.clone(),
            job: Some(job),
            state: self.raft_state(),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let job = self.store.begin_flush();
        ShardSnapshotBuilder {
            store: self.store.clone(),
            job,
            state: self.raft_state(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let manifest: Manifest = serde_json::from_slice(&snapshot.meta).map_err(io_err)?;
        let src = snapshot
            .dir
            .ok_or_else(|| io_err("vshard snapshot without a data directory"))?;
        self.store.install_from(&src, &manifest).map_err(io_err)?;
        let state: ShardRaftState = serde_json::from_value(manifest.raft_state).map_err(io_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.recent = RecentRequests::from_vec(state.recent_requests);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<GroupSnapshot>, io::Error> {
        snapshot_from_manifest(&self.store, &self.store.manifest())
    }
}
