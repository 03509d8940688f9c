//! Tunables of one log, each a bound with its unit in its name.

use crate::error::Error;
use crate::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

const MIB: u64 = 1024 * 1024;

/// Default for [`LogConfig::max_pending_appends`].
pub const DEFAULT_MAX_PENDING_APPENDS: usize = 4096;

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment file is closed and a new one started once the next record would take
    /// it past this size. A single record larger than this gets a segment of its own.
    pub segment_max_bytes: u64,
    /// Payload bytes of recent entries kept in memory so followers and the state machine
    /// read the tail without disk I/O. Older entries are read with `pread`. Entries not
    /// yet fsynced are always held in memory and may take the cache past this bound, by
    /// at most the writer queue's bound plus one batch being written.
    pub cache_max_bytes: u64,
    /// A record larger than this is refused on append and treated as corruption on
    /// read. Must fit in the u32 length field.
    pub max_record_bytes: u64,
    /// Whether to fsync at all. `false` only for tests and benchmarks: nothing is
    /// durable then.
    pub fsync: bool,
    /// Bound on append / truncate / purge requests queued for the writer thread.
    /// `append` blocks (back-pressure) while the queue is full.
    pub max_pending_appends: usize,
    /// Bound on payload bytes queued for the writer thread. `append` blocks while
    /// admitting its records would exceed it, except into an empty queue, so a single
    /// record up to `max_record_bytes` always gets through.
    pub max_pending_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_max_bytes: 64 * MIB,
            cache_max_bytes: 64 * MIB,
            max_record_bytes: 256 * MIB,
            fsync: true,
            max_pending_appends: DEFAULT_MAX_PENDING_APPENDS,
            max_pending_bytes: 256 * MIB,
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        if self.segment_max_bytes < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return invalid(format!(
                "segment_max_bytes = {} is smaller than a segment header plus one record header ({})",
                self.segment_max_bytes,
                SEGMENT_HEADER_LEN + RECORD_HEADER_LEN
            ));
        }
        if self.max_record_bytes > u64::from(u32::MAX) {
            return invalid(format!(
                "max_record_bytes = {} does not fit the record's u32 length field",
                self.max_record_bytes
            ));
        }
        if self.max_pending_appends == 0 {
            return invalid("max_pending_appends must be at least 1".to_string());
        }
        Ok(())
    }
}
