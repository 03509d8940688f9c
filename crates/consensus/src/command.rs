//! What a Raft entry carries (`Command`) and what applying it answers (`Response`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_common::schema::{ColumnDef, TableSchema};

/// The application payload of a Raft entry. Group 0 applies `Ddl`; vshard groups apply
/// `Insert`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Rows of one table for one vshard: an Arrow IPC stream.
    Insert {
        table_id: u64,
        /// Idempotency key: an entry whose id was applied recently is skipped, so a client
        /// retry of an acknowledged request never duplicates rows.
        request_id: Option<u64>,
        ipc: Bytes,
    },
    /// A batch of DDL operations applied atomically: all or none.
    Ddl { ops: Vec<DdlOp> },
    /// A change to the cluster's node registry (group 0 only).
    Cluster(ClusterOp),
}

/// The addresses a node advertises to its peers and clients.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub rpc: String,
    pub gossip: String,
    pub http: String,
    pub pg: String,
}

/// Where a node is in its life in the cluster. Only group 0 changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Registered; group 0 is catching it up (a learner).
    Joining,
    /// Caught up; a voter of group 0 (or a learner once the voter cap is reached).
    Active,
    Draining,
    Decommissioning,
    Decommissioned,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Joining => "JOINING",
            NodeState::Active => "ACTIVE",
            NodeState::Draining => "DRAINING",
            NodeState::Decommissioning => "DECOMMISSIONING",
            NodeState::Decommissioned => "DECOMMISSIONED",
        }
    }
}

/// One change to the node registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClusterOp {
    /// Registers a node. `id == 0` asks group 0 to assign the next id; `token` makes a
    /// retried registration (same token) answer the id it got the first time.
    AddNode {
        id: u64,
        token: u64,
        addrs: NodeAddrs,
        state: NodeState,
        /// Whether the node asks to hold vshard replicas.
        #[serde(default)]
        hosts_vshards: bool,
        /// Grant `hosts_vshards` only while fewer nodes hold replicas than this, decided
        /// when the command is applied (joins racing each other cannot all get it).
        #[serde(default)]
        max_hosts: Option<u32>,
    },
    /// A known node restarted with (possibly) new addresses.
    UpdateAddrs {
        id: u64,
        addrs: NodeAddrs,
        #[serde(default)]
        hosts_vshards: Option<bool>,
    },
    SetState {
        id: u64,
        state: NodeState,
        /// When it was asked (unix ms; 0 from older nodes): recorded as the node's
        /// `state_since_ms` when its state changes (a decommission's elapsed time).
        #[serde(default)]
        now_ms: u64,
    },
    /// `old` gives up its vshard replicas to `new` (see `placement`); with `retire`, `old`
    /// is also DECOMMISSIONED (its identity is gone for good). Refused unless `new` is a
    /// registered, current node that hosts nothing yet.
    ReplaceNode {
        old: u64,
        new: Option<u64>,
        retire: bool,
    },
    /// Records the placement of every vshard `0..vshards` not placed yet as `replicas`
    /// (a new cluster, or a catalog from before per-vshard placement).
    InitPlacement { vshards: u32, replicas: Vec<u64> },
    /// Adds replicas to a vshard (growing it towards the replication factor).
    AddReplicas { vshard: u32, add: Vec<u64> },
    /// Starts moving a replica of `vshard` from `from` to `to`; answers the move's id.
    StartMove {
        vshard: u32,
        from: u64,
        to: u64,
        reason: String,
        now_ms: u64,
    },
    /// Moves a move along (see `topology`).
    UpdateMove {
        id: u64,
        update: crate::topology::MoveUpdate,
        now_ms: u64,
    },
    /// Sets a cluster setting (`SET CLUSTER SETTING name = value`).
    SetSetting { name: String, value: String },
    /// Changes the users, roles or tokens (see `users`).
    User(crate::users::UserOp),
}

/// One catalog change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DdlOp {
    CreateTable {
        schema: TableSchema,
        if_not_exists: bool,
    },
    /// Creates the table or adds the missing columns (implicit creation by ingest).
    EnsureTable {
        schema: TableSchema,
    },
    AddColumns {
        table: String,
        columns: Vec<ColumnDef>,
        if_not_exists: bool,
    },
    DropTable {
        name: String,
        if_exists: bool,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Insert { table_id, ipc, .. } => {
                write!(f, "insert(table {table_id}, {} bytes)", ipc.len())
            }
            Command::Ddl { ops } => write!(f, "ddl({} ops)", ops.len()),
            Command::Cluster(op) => write!(f, "cluster({op:?})"),
        }
    }
}

/// The result of applying one entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    /// The insert's request id was applied before; nothing was added.
    Duplicate,
    /// A DDL batch committed; the schema version is now this.
    Ddl { schema_version: u64, changed: bool },
    /// A node registration committed; this is the node's id.
    Node { id: u64 },
    /// A move was recorded under this id.
    Move { id: u64 },
    /// The entry was refused deterministically (every replica refuses it the same way).
    Rejected(String),
}
