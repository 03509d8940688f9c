//! openraft glue: the type configuration every Shoal Raft group shares, the log store on
//! top of `raftlog`, the two state machines (group 0's catalog and a vshard's rows) and the
//! registry that runs every group of a node.
//!
//! ```text
//!   write path ──propose──▶ Raft group (openraft) ──append──▶ LogStore ──▶ raftlog (fsync)
//!                                 │ committed
//!                                 ▼ apply
//!             MetaStateMachine (catalog)   |   ShardStateMachine ──▶ storage::ShardStore
//! ```

pub mod codec;
pub mod command;
pub mod intents;
pub mod log_store;
pub mod meta_sm;
pub mod registry;
pub mod shard_sm;
pub mod topology;
pub mod transport;
pub mod users;

pub use command::{ClusterOp, Command, DdlOp, NodeAddrs, NodeState, Response};
pub use meta_sm::{Catalog, CatalogHandle, NodeEntry, TableEntry};
pub use registry::{GroupStatus, GroupsConfig, RaftCounts, Registry};
pub use topology::{ClusterSettings, MoveRecord, MoveState, MoveUpdate, VshardPlacement};

openraft::declare_raft_types!(
    /// The type configuration of every Shoal Raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
);

pub type LogId = openraft::LogId<
    <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed,
>;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type StoredMembership = openraft::StoredMembership<
    <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed,
    u64,
    openraft::impls::BasicNode,
>;
pub type SnapshotMeta = openraft::SnapshotMeta<
    <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed,
    u64,
    openraft::impls::BasicNode,
>;

/// Errors a caller of the consensus layer sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead the group; retry at the hinted leader.
    #[error("group {group}: not the leader (leader hint: {hint:?})")]
    NotLeader { group: u32, hint: Option<u64> },
    /// This node holds no replica of the vshard (it joined after `replication_factor`
    /// nodes held them); reads of rows must go to a node that does.
    #[error("node {node} holds no replica of vshard {vshard}; send row reads to a node that does{}", host.as_ref().map(|h| format!(" (e.g. http {h})")).unwrap_or_default())]
    NotHosted {
        vshard: u32,
        node: u64,
        host: Option<String>,
    },
    /// The group cannot make progress now (no quorum, shutting down); retryable.
    #[error("group {group} unavailable: {reason}")]
    Unavailable { group: u32, reason: String },
    /// A DDL batch was refused by the catalog (bad input).
    #[error("{0}")]
    Rejected(String),
    /// The disk is full; nothing was proposed.
    #[error("insufficient storage: {0}")]
    DiskFull(String),
    #[error("storage: {0}")]
    Storage(#[from] shoal_storage::Error),
    #[error("raft log: {0}")]
    Log(#[from] shoal_raftlog::Error),
    /// A bug or broken invariant.
    #[error("internal: {0}")]
    Internal(String),
}

/// Applies committed entries for either state machine: membership entries update
/// `membership`, normal entries go to `on_command`; every entry moves `applied` and answers
/// its client (if one waits on this node).
pub(crate) async fn apply_entries<Strm>(
    mut entries: Strm,
    applied: &mut Option<LogId>,
    membership: &mut StoredMembership,
    mut on_command: impl FnMut(&Command) -> Response,
) -> Result<(), std::io::Error>
where
    Strm: futures::Stream<
            Item = Result<openraft::storage::EntryResponder<TypeConfig>, std::io::Error>,
        > + Unpin
        + openraft::OptionalSend,
{
    use futures::StreamExt;
    while let Some(item) = entries.next().await {
        let (entry, responder) = item?;
        let response = match &entry.payload {
            openraft::EntryPayload::Blank => Response::Ok,
            openraft::EntryPayload::Membership(m) => {
                *membership = StoredMembership::new(Some(entry.log_id), m.clone());
                Response::Ok
            }
            openraft::EntryPayload::Normal(cmd) => on_command(cmd),
        };
        *applied = Some(entry.log_id);
        if let Some(r) = responder {
            r.send(response);
        }
    }
    Ok(())
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A group's snapshot: openraft's metadata plus Shoal's snapshot data.
pub type GroupSnapshot = openraft::storage::Snapshot<
    <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed,
    u64,
    openraft::impls::BasicNode,
    meta_sm::SnapshotData,
>;
