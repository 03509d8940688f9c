//! SQL over Shoal: a DataFusion session whose catalog is group 0's, whose tables scan one
//! partition per vshard, plus the DDL and write paths that go through Raft.
//!
//! ```text
//!  SQL text ─▶ parse ─┬─ CREATE/DROP TABLE ──▶ group 0 (DDL batch)
//!                     ├─ INSERT ──▶ DataFusion plan ─▶ Writer ─▶ vshard groups
//!                     └─ query  ──▶ DataFusion plan ─▶ ShardScanExec (one partition per vshard)
//!                                       │                 └─ local replica: hot buffer + Parquet parts
//!                                       └─ ShardFragmentExec: vshards not hosted here run on a
//!                                          replica elsewhere (scan + filter + partial aggregate)
//! ```

pub mod access;
pub mod ddl;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod fastagg;
pub mod guard;
pub mod pgcompat;
pub mod plancache;
pub mod provider;
pub mod session;
pub mod system;
pub mod write;

pub use access::Principal;
pub use distributed::{FragmentRunner, RemoteError};
pub use engine::{EnginePolicy, QueryEngine, QueryOptions, QueryOutput, ReadConsistency};
pub use error::{ErrorKind, QueryError};
pub use guard::{CatalogLimits, FileAccess};
pub use plancache::PlanCacheStats;
pub use session::{split_statements, Session, TxStatus};
pub use system::{Lookup, LookupI64, NodeInfo};
pub use write::{WriteOutcome, Writer};
