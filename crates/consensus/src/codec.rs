//! The on-disk encoding of a Raft entry in the log. Format version 1:
//!
//! ```text
//! [u8 version=1][u8 kind][u64 term][u64 leader node][u64 index][body]
//!   kind 0 blank:       no body
//!   kind 1 membership:  JSON of the membership
//!   kind 2 insert:      [u64 table id][u8 has id][u64 request id][Arrow IPC bytes]
//!   kind 3 ddl:         JSON of the DDL ops
//!   kind 4 cluster:     JSON of the node-registry op
//! ```
//! Inserts carry their Arrow payload raw (no JSON), and decoding slices it out of the record
//! without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;

use crate::command::Command;
use crate::{Entry, LogId, TypeConfig};

pub const ENTRY_FORMAT_VERSION: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("entry record too short ({0} bytes)")]
    Short(usize),
    #[error("entry format version {0} is newer than this build reads ({ENTRY_FORMAT_VERSION}): upgrade Shoal")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("bad JSON body: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

/// (term, leader node) of a log id.
pub fn log_id_parts(id: &LogId) -> (u64, u64) {
    (id.leader_id.term, id.leader_id.node_id)
}

pub fn encode(entry: &Entry) -> Bytes {
    encode_after(entry, 0).freeze()
}

/// Bytes of an insert's body before its Arrow payload: table id, has-id flag, request id.
const INSERT_HEAD: usize = 8 + 1 + 8;

/// Encodes `entry` after `headroom` free bytes (for a frame header the log writes there,
/// so that the entry is not copied again). An insert's buffer starts a few bytes early so
/// that its Arrow payload is 8-byte aligned: the shard decodes it in place then, instead of
/// copying every column buffer to realign it.
pub fn encode_after(entry: &Entry, headroom: usize) -> BytesMut {
    let (term, node) = log_id_parts(&entry.log_id);
    let body = match &entry.payload {
        EntryPayload::Normal(Command::Insert { ipc, .. }) => INSERT_HEAD + ipc.len(),
        _ => 64,
    };
    let pad = (8 - (headroom + HEADER + INSERT_HEAD) % 8) % 8;
    let mut buf = BytesMut::with_capacity(pad + headroom + HEADER + body);
    buf.put_bytes(0, pad + headroom);
    buf.advance(pad);
    buf.put_u8(ENTRY_FORMAT_VERSION);
    let kind = match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Membership(_) => 1,
        EntryPayload::Normal(Command::Insert { .. }) => 2,
        EntryPayload::Normal(Command::Ddl { .. }) => 3,
        EntryPayload::Normal(Command::Cluster(_)) => 4,
    };
    buf.put_u8(kind);
    buf.put_u64_le(term);
    buf.put_u64_le(node);
    buf.put_u64_le(entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Membership(m) => buf.put_slice(&serde_json::to_vec(m).unwrap_or_default()),
        EntryPayload::Normal(Command::Insert {
            table_id,
            request_id,
            ipc,
        }) => {
            buf.put_u64_le(*table_id);
            buf.put_u8(u8::from(request_id.is_some()));
            buf.put_u64_le(request_id.unwrap_or(0));
            buf.put_slice(ipc);
        }
        EntryPayload::Normal(Command::Ddl { ops }) => {
            buf.put_slice(&serde_json::to_vec(ops).unwrap_or_default())
        }
        EntryPayload::Normal(Command::Cluster(op)) => {
            buf.put_slice(&serde_json::to_vec(op).unwrap_or_default())
        }
    }
    buf
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub fn decode(record: &Bytes) -> Result<Entry, CodecError> {
    if record.len() < HEADER {
        return Err(CodecError::Short(record.len()));
    }
    if record[0] != ENTRY_FORMAT_VERSION {
        return Err(CodecError::Version(record[0]));
    }
    let kind = record[1];
    let id = log_id(u64_at(record, 2), u64_at(record, 10), u64_at(record, 18));
    let body = record.slice(HEADER..);
    let payload: EntryPayload<Command, u64, openraft::impls::BasicNode> = match kind {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Membership(serde_json::from_slice(&body)?),
        2 => {
            if body.len() < INSERT_HEAD {
                return Err(CodecError::Short(record.len()));
            }
            let request_id = (body[8] == 1).then(|| u64_at(&body, 9));
            EntryPayload::Normal(Command::Insert {
                table_id: u64_at(&body, 0),
                request_id,
                ipc: body.slice(INSERT_HEAD..),
            })
        }
        3 => EntryPayload::Normal(Command::Ddl {
            ops: serde_json::from_slice(&body)?,
        }),
        4 => EntryPayload::Normal(Command::Cluster(serde_json::from_slice(&body)?)),
        k => return Err(CodecError::Kind(k)),
    };
    Ok(<Entry as RaftEntry>::new(id, payload))
}

/// Reads only the log id of an encoded entry.
pub fn decode_log_id(record: &[u8]) -> Result<LogId, CodecError> {
    if record.len() < HEADER {
        return Err(CodecError::Short(record.len()));
    }
    Ok(log_id(
        u64_at(record, 2),
        u64_at(record, 10),
        u64_at(record, 18),
    ))
}

#[allow(dead_code)]
fn _assert_config(_: TypeConfig) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_round_trips_without_copy() {
        let e = <Entry as RaftEntry>::new(
            log_id(3, 1, 42),
            EntryPayload::Normal(Command::Insert {
                table_id: 9,
                request_id: Some(77),
                ipc: Bytes::from_static(b"arrow"),
            }),
        );
        let rec = encode(&e);
        let back = decode(&rec).expect("decode");
        assert_eq!(back.log_id, e.log_id);
        assert_eq!(back.payload, e.payload);
        assert_eq!(decode_log_id(&rec).expect("id"), e.log_id);
    }

    #[test]
    fn insert_payload_is_aligned_after_any_headroom() {
        let e = <Entry as RaftEntry>::new(
            log_id(3, 1, 42),
            EntryPayload::Normal(Command::Insert {
                table_id: 9,
                request_id: None,
                ipc: Bytes::from(vec![7u8; 100]),
            }),
        );
        for headroom in [0, 1, shoal_raftlog::FRAME_HEAD_LEN, 24] {
            let buf = encode_after(&e, headroom);
            assert!(buf[..headroom].iter().all(|&b| b == 0));
            let rec = buf.freeze().slice(headroom..);
            let back = decode(&rec).expect("decode");
            assert_eq!(back.payload, e.payload, "headroom {headroom}");
            let EntryPayload::Normal(Command::Insert { ipc, .. }) = back.payload else {
                unreachable!()
            };
            // Allocations are at least 8-aligned, and the pad is counted from the start.
            assert_eq!(ipc.as_ptr() as usize % 8, 0, "headroom {headroom}");
        }
    }

    #[test]
    fn newer_version_is_refused() {
        let mut rec = encode(&<Entry as RaftEntry>::new(
            log_id(1, 1, 1),
            EntryPayload::Blank,
        ))
        .to_vec();
        rec[0] = 9;
        assert!(matches!(
            decode(&Bytes::from(rec)),
            Err(CodecError::Version(9))
        ));
    }
}
