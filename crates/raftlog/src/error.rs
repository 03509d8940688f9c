//! The crate's one error type.
//!
//! Who is at fault: `NonContiguous`, `RecordTooLarge`, `NoFrameRoom`, `InvalidMetaKey` and
//! `InvalidConfig` are caller bugs or bad input. `Io`, `Corrupt`, `UnsupportedVersion`
//! and `Failed` mean the disk cannot be trusted: the node must stop loudly rather than
//! carry on (openraft treats a storage error as fatal). `Closed` and `Locked` are
//! lifecycle errors.

use std::io;
use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("raft log I/O error while trying to {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("raft log corrupt: {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error(
        "{} has raft log format version {found}, but this build reads versions up to \
         {supported}; it was written by a newer shoal: upgrade this node",
        file.display()
    )]
    UnsupportedVersion {
        file: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("raft log append is not contiguous: expected index {expected}, got {got}")]
    NonContiguous { expected: u64, got: u64 },

    #[error("raft log record of {bytes} bytes is larger than max_record_bytes = {max}")]
    RecordTooLarge { bytes: u64, max: u64 },

    #[error("raft log record of {len} bytes has no room for its {needed}-byte frame header")]
    NoFrameRoom { len: u64, needed: u64 },

    #[error("raft log is closed")]
    Closed,

    /// A write, fsync or file operation failed earlier. After a failed fsync the page
    /// cache may no longer match the disk, so the log refuses all further use; reopening
    /// it re-reads the disk and recovers.
    #[error("raft log refuses use after an earlier storage failure: {reason}")]
    Failed { reason: String },

    #[error("invalid raft log meta key {key:?}: {reason}")]
    InvalidMetaKey { key: String, reason: &'static str },

    #[error("invalid raft log config: {reason}")]
    InvalidConfig { reason: String },

    #[error("raft log directory {} is already open (locked by another handle or process)", dir.display())]
    Locked { dir: PathBuf },
}

impl Error {
    /// The disk (or the filesystem's quota) is full: retryable once space is back.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

impl Error {
    /// An equivalent error for another waiter on the same failed batch (`io::Error` is
    /// not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corrupt {
                file,
                offset,
                reason,
            } => Error::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::UnsupportedVersion {
                file,
                found,
                supported,
            } => Error::UnsupportedVersion {
                file: file.clone(),
                found: *found,
                supported: *supported,
            },
            Error::NonContiguous { expected, got } => Error::NonContiguous {
                expected: *expected,
                got: *got,
            },
            Error::RecordTooLarge { bytes, max } => Error::RecordTooLarge {
                bytes: *bytes,
                max: *max,
            },
            Error::NoFrameRoom { len, needed } => Error::NoFrameRoom {
                len: *len,
                needed: *needed,
            },
            Error::Closed => Error::Closed,
            Error::Failed { reason } => Error::Failed {
                reason: reason.clone(),
            },
            Error::InvalidMetaKey { key, reason } => Error::InvalidMetaKey {
                key: key.clone(),
                reason,
            },
            Error::InvalidConfig { reason } => Error::InvalidConfig {
                reason: reason.clone(),
            },
            Error::Locked { dir } => Error::Locked { dir: dir.clone() },
        }
    }
}

/// Attaches what the log was doing to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
