//! openraft's log storage on top of `raftlog` (one group's log in the node's WAL): entries are encoded with [`crate::codec`];
//! the vote and the last purged log id are small durable metadata values of the same log.
//!
//! `append` returns as soon as the records are queued; the log's writer thread completes
//! openraft's `IOFlushed` callback after the group commit's fsync, which is what lets
//! openraft pipeline appends while a write is acknowledged only when durable.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use shoal_raftlog::GroupLog;

use crate::{codec, io_err, Entry, LogId, TypeConfig, Vote};

const META_VOTE: &str = "vote";
const META_PURGED: &str = "purged";

/// A Raft group's log; cheap to clone (readers share the same log).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<GroupLog>,
}

impl LogStore {
    pub fn new(log: Arc<GroupLog>) -> LogStore {
        LogStore { log }
    }

    fn load_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.log.load_meta(key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io_err),
        }
    }

    fn save_json<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        self.log.save_meta(key, &bytes).map_err(io_err)
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        let end = match self.log.last_index() {
            Some(last) => end.min(last.saturating_add(1)),
            None => return Ok(vec![]),
        };
        if start >= end {
            return Ok(vec![]);
        }
        let records = self.log.read(start, end).map_err(io_err)?;
        records
            .iter()
            .map(|(_, rec)| codec::decode(rec).map_err(io_err))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.load_json(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.load_json(META_PURGED)?;
        let last_log_id = match self.log.last_index() {
            Some(last) => {
                let recs = self.log.read(last, last + 1).map_err(io_err)?;
                match recs.first() {
                    Some((_, rec)) => Some(codec::decode_log_id(rec).map_err(io_err)?),
                    None => last_purged_log_id,
                }
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.save_json(META_VOTE, vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<(u64, bytes::BytesMut)> = entries
            .into_iter()
            .map(|e| {
                let headroom = shoal_raftlog::FRAME_HEAD_LEN;
                (e.log_id.index, codec::encode_after(&e, headroom))
            })
            .collect();
        if records.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.log
            .append_framed(
                records,
                Box::new(move |r| callback.io_completed(r.map_err(io_err))),
            )
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.log
            .truncate_after(last_log_id.map(|l| l.index))
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash between the two leaves extra entries, which
        // is harmless, never a gap the state does not know about.
        self.save_json(META_PURGED, &log_id)?;
        self.log.purge_upto(log_id.index).map_err(io_err)
    }
}
