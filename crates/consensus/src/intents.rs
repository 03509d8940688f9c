//! The write-intent log: what makes a write that spans several vshards all-or-nothing across
//! a crash of this node.
//!
//! ```text
//! write of N > 1 parts:  append BEGIN(parts) ─fsync─▶ propose every part ─▶ append DONE(begin)
//! start-up:              every BEGIN without DONE is proposed again, part by part
//! ```
//! Each part carries its request id, so re-proposing a part that was already applied is a
//! no-op on its vshard (the shard state machine remembers recent ids). A write whose BEGIN
//! is durable is therefore eventually applied whole, even if the node died in the middle;
//! a write whose BEGIN is not durable was never proposed. A single-part write needs no
//! intent: one Raft entry is atomic by itself.
//!
//! Records (in a `raftlog` of their own, `intents/` in the data directory):
//! `BEGIN = [1][u32 parts]{[u32 vshard][u64 table id][u8 has id][u64 request id][u64 len][ipc]}`,
//! `DONE = [2][u64 index of the BEGIN]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use shoal_raftlog::{GroupLog, FRAME_HEAD_LEN};

use crate::command::Command;
use crate::Error;

const BEGIN: u8 = 1;
const DONE: u8 = 2;

/// One part of a write: the vshard and its insert command.
pub type Part = (u32, Command);

/// A write that began but did not finish: its intent id and parts.
pub type Unfinished = (u64, Vec<Part>);

/// Resolves once a queued intent is durable.
pub struct Durable(tokio::sync::oneshot::Receiver<Result<(), shoal_raftlog::Error>>);

impl Durable {
    pub async fn wait(self) -> Result<(), Error> {
        self.0
            .await
            .map_err(|_| Error::Internal("intent log writer stopped".into()))??;
        Ok(())
    }
}

pub struct IntentLog {
    log: Arc<GroupLog>,
    state: Mutex<IntentState>,
}

struct IntentState {
    next_index: u64,
    outstanding: BTreeSet<u64>,
    /// Purged up to here (each purge persists a purge point, so they are batched).
    purged: u64,
}

/// Finished intents between two purges of the intent log.
const PURGE_EVERY: u64 = 64;

/// A record with room for the WAL's frame header in front (see `GroupLog::append_framed`).
fn record(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(FRAME_HEAD_LEN + capacity);
    b.put_bytes(0, FRAME_HEAD_LEN);
    b
}

fn encode_begin(parts: &[Part]) -> BytesMut {
    let size: usize = parts
        .iter()
        .map(|(_, c)| match c {
            Command::Insert { ipc, .. } => 29 + ipc.len(),
            Command::Ddl { .. } | Command::Cluster(_) => 0,
        })
        .sum();
    let mut b = record(5 + size);
    b.put_u8(BEGIN);
    b.put_u32_le(parts.len() as u32);
    for (vshard, cmd) in parts {
        if let Command::Insert {
            table_id,
            request_id,
            ipc,
        } = cmd
        {
            b.put_u32_le(*vshard);
            b.put_u64_le(*table_id);
            b.put_u8(u8::from(request_id.is_some()));
            b.put_u64_le(request_id.unwrap_or(0));
            b.put_u64_le(ipc.len() as u64);
            b.put_slice(ipc);
        }
    }
    b
}

fn take<const N: usize>(rec: &Bytes, at: &mut usize) -> Option<[u8; N]> {
    let s = rec.get(*at..*at + N)?;
    *at += N;
    s.try_into().ok()
}

fn decode_begin(rec: &Bytes) -> Option<Vec<Part>> {
    let mut at = 1;
    let n = u32::from_le_bytes(take::<4>(rec, &mut at)?);
    let mut parts = Vec::with_capacity(n.min(4096) as usize);
    for _ in 0..n {
        let vshard = u32::from_le_bytes(take::<4>(rec, &mut at)?);
        let table_id = u64::from_le_bytes(take::<8>(rec, &mut at)?);
        let has = take::<1>(rec, &mut at)?[0] == 1;
        let id = u64::from_le_bytes(take::<8>(rec, &mut at)?);
        let len = usize::try_from(u64::from_le_bytes(take::<8>(rec, &mut at)?)).ok()?;
        if rec.len() < at.checked_add(len)? {
            return None;
        }
        let ipc = rec.slice(at..at + len);
        at += len;
        parts.push((
            vshard,
            Command::Insert {
                table_id,
                request_id: has.then_some(id),
                ipc,
            },
        ));
    }
    Some(parts)
}

impl IntentLog {
    /// Takes over the intents' log (a group of the node's WAL) and returns it with the
    /// writes that began but never finished.
    pub fn open(log: GroupLog) -> Result<(IntentLog, Vec<Unfinished>), Error> {
        let log = Arc::new(log);
        let mut begun: BTreeMap<u64, Vec<Part>> = BTreeMap::new();
        if let (Some(first), Some(last)) = (log.first_index(), log.last_index()) {
            // Bounded by the intent log's size, which purges behind finished writes.
            for (index, rec) in log.read(first, last + 1)? {
                match rec.first() {
                    Some(&BEGIN) => {
                        let parts = decode_begin(&rec).ok_or_else(|| {
                            Error::Internal(format!("intent record {index} is damaged"))
                        })?;
                        begun.insert(index, parts);
                    }
                    Some(&DONE) => {
                        let mut at = 1;
                        if let Some(b) = take::<8>(&rec, &mut at) {
                            begun.remove(&u64::from_le_bytes(b));
                        }
                    }
                    _ => {
                        return Err(Error::Internal(format!(
                            "intent record {index} has an unknown kind"
                        )))
                    }
                }
            }
        }
        let next_index = log.last_index().or(log.purged_upto()).map_or(1, |i| i + 1);
        let outstanding = begun.keys().copied().collect();
        let intents = IntentLog {
            log,
            state: Mutex::new(IntentState {
                next_index,
                outstanding,
                purged: 0,
            }),
        };
        Ok((intents, begun.into_iter().collect()))
    }

    /// Queues `rec` in the WAL; the receiver hears once it is durable.
    fn append(&self, rec: BytesMut) -> Result<(u64, Durable), Error> {
        let mut st = self.state.lock();
        let index = st.next_index;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.log.append_framed(
            vec![(index, rec)],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        st.next_index += 1;
        Ok((index, Durable(rx)))
    }

    /// Queues the intent to write `parts` in the WAL, ahead of anything appended after this
    /// returns; returns its id for [`IntentLog::done`] and a handle that tells when it is
    /// durable.
    ///
    /// A part whose Raft entry can only commit once it is durable in this node's WAL (its
    /// group has this node as its only voter) needs no wait: the WAL keeps a prefix of what
    /// was queued across a crash, so a durable part implies a durable intent. A part that
    /// another node can commit must wait for [`Durable::wait`] before it is proposed.
    pub async fn begin(self: &Arc<Self>, parts: &[Part]) -> Result<(u64, Durable), Error> {
        let rec = encode_begin(parts);
        // Blocks while the WAL's queue is full, as a Raft append does: that is the
        // back-pressure on writers.
        let (index, durable) = self.append(rec)?;
        self.state.lock().outstanding.insert(index);
        Ok((index, durable))
    }

    /// Records that every part of intent `index` was applied (or refused for good).
    pub fn done(&self, index: u64) -> Result<(), Error> {
        let mut rec = record(9);
        rec.put_u8(DONE);
        rec.put_u64_le(index);
        // Durable with the writer's next fsync (within milliseconds): long before a
        // vshard's request-id window could forget the parts.
        self.append(rec)?;
        let purge_to = {
            let mut st = self.state.lock();
            st.outstanding.remove(&index);
            let to = match st.outstanding.first() {
                Some(&oldest) => oldest.saturating_sub(1),
                None => st.next_index.saturating_sub(1),
            };
            if to < st.purged + PURGE_EVERY {
                return Ok(());
            }
            st.purged = to;
            to
        };
        self.log.purge_upto(purge_to)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(v: u32, id: u64) -> Part {
        (
            v,
            Command::Insert {
                table_id: 3,
                request_id: Some(id),
                ipc: Bytes::from(vec![v as u8; 10]),
            },
        )
    }

    #[tokio::test]
    async fn unfinished_intents_are_returned_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let open = || {
            let wal = shoal_raftlog::SharedWal::open(
                &dir.path().join("wal"),
                shoal_raftlog::LogConfig::default(),
            )
            .expect("wal");
            IntentLog::open(wal.group(1, &dir.path().join("intents")).expect("group"))
                .expect("open")
        };
        {
            let (log, pending) = open();
            assert!(pending.is_empty());
            let log = Arc::new(log);
            let (a, durable) = log
                .begin(&[part(1, 10), part(2, 11)])
                .await
                .expect("begin a");
            durable.wait().await.expect("durable a");
            let (_b, durable) = log
                .begin(&[part(3, 12), part(4, 13)])
                .await
                .expect("begin b");
            durable.wait().await.expect("durable b");
            log.done(a).expect("done a");
            log.log.flush().expect("flush");
        }
        let (_log, pending) = open();
        assert_eq!(pending.len(), 1, "only the unfinished write");
        assert_eq!(pending[0].1, vec![part(3, 12), part(4, 13)]);
    }

    /// What lets a write whose parts all commit in this node's WAL skip the wait for its
    /// intent: anything appended after the intent, in any group, is durable only with it.
    #[tokio::test]
    async fn an_intent_is_durable_once_anything_queued_after_it_is() {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = shoal_raftlog::SharedWal::open(
            &dir.path().join("wal"),
            shoal_raftlog::LogConfig::default(),
        )
        .expect("wal");
        let shard = wal.group(7, &dir.path().join("g7")).expect("group 7");
        {
            let (log, _) =
                IntentLog::open(wal.group(1, &dir.path().join("intents")).expect("group"))
                    .expect("open");
            let log = Arc::new(log);
            // Not waited for: the part's own append, queued after it, is.
            let (_index, _durable) = log.begin(&[part(7, 20), part(8, 21)]).await.expect("begin");
            shard
                .append_blocking(vec![(1, Bytes::from_static(b"part entry"))])
                .expect("part");
        }
        drop(shard);
        drop(wal);
        let wal = shoal_raftlog::SharedWal::open(
            &dir.path().join("wal"),
            shoal_raftlog::LogConfig::default(),
        )
        .expect("reopen wal");
        let (_log, pending) =
            IntentLog::open(wal.group(1, &dir.path().join("intents")).expect("group"))
                .expect("reopen");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1, vec![part(7, 20), part(8, 21)]);
    }
}
