//! Fuzz target: RPC request bodies as a node receives them from the network. Every
//! request type decodes (prost) without a panic, and a decoded Raft request goes on to
//! the Raft message decoder (`consensus::transport::check_inbound`), which must answer
//! with an error, never a panic. Seeds are real encoded requests.

use bytes::Bytes;
use prost::Message;
use shoal_consensus::transport::{check_inbound, RaftMessage, RaftRpc};
use shoal_transport::rpc::{FragmentRequest, JoinRequest, MetaRequest, RaftRequest, SqlRequest};

fn target(input: &[u8]) {
    let _ = JoinRequest::decode(input);
    let _ = MetaRequest::decode(input);
    let _ = SqlRequest::decode(input);
    let _ = FragmentRequest::decode(input);
    if let Ok(r) = RaftRequest::decode(input) {
        if let Some(kind) = RaftRpc::from_u32(r.kind) {
            let _ = check_inbound(&RaftMessage {
                group: r.group,
                kind,
                header: r.header,
                entries: r.entries,
            });
        }
    }
}

fn raft(kind: RaftRpc, header: &str, entries: &[Vec<u8>]) -> Vec<u8> {
    RaftRequest {
        group: 3,
        kind: kind as u32,
        header: Bytes::from(header.to_string()),
        entries: entries.iter().map(|e| Bytes::from(e.clone())).collect(),
        to_node: 2,
    }
    .encode_to_vec()
}

/// A log entry as `consensus::codec` writes it: version, kind, term, node, index, body.
fn entry(kind: u8, index: u64, body: &[u8]) -> Vec<u8> {
    let mut e = vec![shoal_consensus::codec::ENTRY_FORMAT_VERSION, kind];
    for x in [2u64, 1, index] {
        e.extend_from_slice(&x.to_le_bytes());
    }
    e.extend_from_slice(body);
    e
}

fn seeds() -> Vec<Vec<u8>> {
    let vote =
        r#"{"vote":{"leader_id":{"term":2,"node_id":1},"committed":false},"last_log_id":null}"#;
    let append = r#"[{"leader_id":{"term":2,"node_id":1},"committed":true},null,null]"#;
    let mut insert = 9u64.to_le_bytes().to_vec();
    insert.push(1);
    insert.extend_from_slice(&77u64.to_le_bytes());
    insert.extend_from_slice(b"ARROW1\0\0");
    vec![
        raft(RaftRpc::Vote, vote, &[]),
        raft(RaftRpc::PreVote, vote, &[]),
        raft(
            RaftRpc::Append,
            append,
            &[entry(0, 1, b""), entry(2, 2, &insert), entry(3, 3, b"[]")],
        ),
        raft(RaftRpc::TransferLeader, "{}", &[]),
        JoinRequest {
            token: 7,
            rpc_addr: "10.0.0.1:7400".into(),
            gossip_addr: "10.0.0.1:7401".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        SqlRequest::default().encode_to_vec(),
    ]
}

/// The seeds reach the decoders' inner layers (a seed the decoder refuses would leave the
/// mutations exploring only the first error path).
#[test]
fn the_raft_seeds_decode() {
    for s in seeds().iter().take(3) {
        let r = RaftRequest::decode(s.as_slice()).expect("prost");
        let kind = RaftRpc::from_u32(r.kind).expect("kind");
        let m = RaftMessage {
            group: r.group,
            kind,
            header: r.header,
            entries: r.entries,
        };
        assert_eq!(check_inbound(&m), Ok(()), "{kind:?}");
    }
}

#[test]
fn fuzz_rpc_requests() {
    shoal_common::fuzz::run("rpc_requests", seeds(), target);
}
