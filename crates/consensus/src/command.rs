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
    /// The entry was refused deterministically (every replica refuses it the same way).
    Rejected(String),
}
