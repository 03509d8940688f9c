//! openraft's own storage test suite, run against Shoal's log store (on `raftlog`) with each
//! of the two state machines.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use parking_lot::RwLock;
use shoal_consensus::log_store::LogStore;
use shoal_consensus::meta_sm::{Catalog, MetaStateMachine};
use shoal_consensus::shard_sm::ShardStateMachine;
use shoal_consensus::TypeConfig;
use shoal_raftlog::{LogConfig, SharedWal};
use shoal_storage::{ShardStore, StoreConfig};

struct ShardBuilder;
struct MetaBuilder;

fn log_store(dir: &std::path::Path) -> LogStore {
    let wal = SharedWal::open(
        &dir.join("wal"),
        LogConfig {
            segment_max_bytes: 4096,
            ..LogConfig::default()
        },
    )
    .expect("open wal");
    // Another group shares the WAL, so the suite's log is interleaved with foreign records.
    let other = wal.group(9, &dir.join("other")).expect("other group");
    other
        .append_blocking(vec![(1, bytes::Bytes::from_static(b"x"))])
        .expect("other append");
    LogStore::new(Arc::new(
        wal.group(1, &dir.join("log")).expect("open group"),
    ))
}

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, tempfile::TempDir> for ShardBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state) =
            ShardStore::open(&dir.path().join("data"), StoreConfig::default()).expect("store");
        let catalog = Arc::new(RwLock::new(Arc::new(Catalog::default())));
        let sm = ShardStateMachine::new(store, state, catalog).expect("sm");
        Ok((log_store(dir.path()), sm).map_with(dir))
    }
}

impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine, tempfile::TempDir> for MetaBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, MetaStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = MetaStateMachine::open(&dir.path().join("state")).expect("sm");
        Ok((log_store(dir.path()), sm).map_with(dir))
    }
}

trait WithGuard<A, B> {
    fn map_with(self, g: tempfile::TempDir) -> (tempfile::TempDir, A, B);
}

impl<A, B> WithGuard<A, B> for (A, B) {
    fn map_with(self, g: tempfile::TempDir) -> (tempfile::TempDir, A, B) {
        (g, self.0, self.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_with_shard_state_machine() {
    Suite::test_all(ShardBuilder)
        .await
        .expect("openraft storage suite (vshard state machine)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_with_meta_state_machine() {
    Suite::test_all(MetaBuilder)
        .await
        .expect("openraft storage suite (group 0 state machine)");
}
