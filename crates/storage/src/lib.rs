//! A vshard replica's data, with no networking: the Arrow hot buffer, Parquet parts
//! partitioned by day, and the manifest that ties them to the Raft log.
//!
//! ```text
//!  committed Raft entry (Arrow IPC) ──apply──▶ hot buffer (RecordBatches per table)
//!                                                   │ flush (by size/age = Raft snapshot)
//!                                                   ▼
//!                     tables/t<id>/d<day>-p<n>.parquet  +  manifest.json (applied index)
//! ```
//!
//! Invariants:
//! - A row is visible to a scan either in the hot buffer or in a part, never both and never
//!   neither: a flush swaps frozen hot batches for the parts it wrote under one lock.
//! - The manifest is written (temp file, fsync, rename, fsync dir) only after every part it
//!   names is fsynced, so a crash leaves either the old or the new manifest, both valid.
//!   Parts not named by the manifest are garbage from an interrupted flush and are removed
//!   on open.
//! - The manifest records the opaque Raft state (last applied log id, membership) that the
//!   consensus layer hands in; recovery is manifest + parts, then the log tail is replayed.

pub mod arrow_schema;
pub mod dedup;
pub mod ipc;
pub mod manifest;
pub mod read;
pub mod shard;

pub use manifest::{Manifest, PartMeta};
pub use read::{ColumnCache, ColumnCacheStats, SharedColumnCache, DEFAULT_COLUMN_CACHE_BYTES};
pub use shard::{FlushJob, HotBatch, PartCompression, ScanSnapshot, ShardStore, StoreConfig};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("manifest {path}: {reason}")]
    BadManifest { path: String, reason: String },
    #[error(
        "{path} has format version {found}, this build reads up to {supported}: upgrade Shoal"
    )]
    UnsupportedVersion {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("no space left on device while {context}")]
    DiskFull { context: String },
}

impl Error {
    /// Wraps an I/O error with what was being done; ENOSPC becomes `DiskFull` so the write
    /// path can answer 507.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        if source.raw_os_error() == Some(28) || source.kind() == std::io::ErrorKind::StorageFull {
            return Error::DiskFull { context };
        }
        Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
