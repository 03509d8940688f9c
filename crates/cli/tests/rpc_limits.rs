//! The inter-node RPC server's bounds, against a real node: connection cap, message-size
//! cap checked before allocating, in-flight budget, and a shutdown that lets in-flight
//! work finish.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_transport::rpc::{channel, Caller, PeerClient};
use support::Node;

const DEADLINE: Duration = Duration::from_secs(60);

/// A client carrying the node's own cluster id (as a peer would).
async fn client(n: &Node) -> PeerClient {
    let env = Arc::new(parking_lot::RwLock::new(Caller::default()));
    let ch = channel(&n.rpc_addr, Duration::from_secs(2), None).expect("channel");
    let mut c = PeerClient::new(ch, 64 << 20, env.clone());
    let hello = c.hello(Duration::from_secs(5)).await.expect("hello");
    env.write().cluster_id = hello.cluster_id;
    c
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_connection_flood_is_capped_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::start(tmp.path(), &["--rpc-max-connections", "32"]).await;
    // 2,000 sockets, held open at once.
    let mut held = Vec::with_capacity(2000);
    for _ in 0..2000 {
        if let Ok(s) = std::net::TcpStream::connect(&node.rpc_addr) {
            held.push(s);
        }
    }
    assert!(held.len() > 32, "could not open the flood ({})", held.len());
    // The node still serves its clients…
    let (s, v) = node.sql("SELECT 1").await;
    assert_eq!(s, 200, "{v}");
    // …and said why it closed the excess.
    let deadline = Instant::now() + DEADLINE;
    while !node.stderr_text().contains("rpc_max_connections reached") {
        assert!(
            Instant::now() < deadline,
            "no log line: {}",
            node.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With every slot taken by the flood, a new peer cannot get in.
    let env = Arc::new(parking_lot::RwLock::new(Caller::default()));
    let mut blocked = PeerClient::new(
        channel(&node.rpc_addr, Duration::from_secs(2), None).expect("channel"),
        1 << 20,
        env,
    );
    assert!(blocked.hello(Duration::from_secs(2)).await.is_err());
    // Once the flood is gone, peers get in again.
    drop(held);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let env = Arc::new(parking_lot::RwLock::new(Caller::default()));
        let mut c = PeerClient::new(
            channel(&node.rpc_addr, Duration::from_secs(2), None).expect("channel"),
            1 << 20,
            env,
        );
        if c.hello(Duration::from_secs(2)).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "rpc never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_message_claiming_a_gigabyte_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::start(tmp.path(), &["--rpc-max-message-bytes", "1048576"]).await;
    let before = rss_kib(node.pid());
    let tcp = tokio::net::TcpStream::connect(&node.rpc_addr)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/shoal.peer.v1.Peer/Hello", node.rpc_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send");
    // gRPC frame header: not compressed, length 1 GiB; then a little of the "body".
    let mut frame = vec![0u8, 0x40, 0, 0, 0];
    frame.extend_from_slice(&[7u8; 16 * 1024]);
    send.send_data(Bytes::from(frame), false).expect("data");
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("answered in time")
        .expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut status = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status.is_none() {
        while let Some(chunk) = body.data().await {
            let _ = chunk;
        }
        let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
        status = trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    // 11 = OUT_OF_RANGE, 8 = RESOURCE_EXHAUSTED.
    let status = status.expect("a grpc-status");
    assert!(status == "11" || status == "8", "grpc-status {status}");
    let after = rss_kib(node.pid());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving peers.
    let mut c = client_ok(&node).await;
    c.hello(Duration::from_secs(5)).await.expect("hello after");
}

async fn client_ok(n: &Node) -> PeerClient {
    client(n).await
}

/// A statement that keeps a core busy for a while in a debug build.
const LONG_SQL: &str =
    "SELECT sum(a.value * b.value) FROM range(3000) a CROSS JOIN range(150000) b";

#[tokio::test]
async fn the_inflight_budget_refuses_the_excess_and_shutdown_lets_inflight_work_finish() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(tmp.path(), &["--rpc-max-inflight", "1"]).await;
    let long = client(&node).await;
    let mut quick = client(&node).await;
    let started = Instant::now();
    let spawn_long = |mut c: PeerClient| {
        tokio::spawn(async move { c.sql(LONG_SQL.into(), Duration::from_secs(300)).await })
    };
    let mut long_call = spawn_long(long.clone());
    // While the long statement holds the only slot, other work is refused at once. (If
    // the quick one got the slot first, the long one was the refused one: send it again.)
    let refused = loop {
        match quick.sql("SELECT 1".into(), Duration::from_secs(10)).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            Err(s) => panic!("unexpected error {s:?}"),
            Ok(_) => {
                if long_call.is_finished() {
                    match long_call.await.expect("join") {
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            long_call = spawn_long(long.clone());
                        }
                        other => panic!(
                            "the long statement ended before the budget was seen full: {other:?}"
                        ),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(
        refused.message().contains("rpc_max_inflight"),
        "{refused:?}"
    );
    // Shut the node down with the long statement in flight: it completes.
    assert!(!long_call.is_finished(), "long statement ended too early");
    node.terminate();
    let r = long_call.await.expect("join");
    let status = node.wait_exit().await;
    assert!(status.success(), "graceful stop: {status}");
    let reply = r.expect("the in-flight statement completed during shutdown");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert!(body["rows"][0][0].is_number(), "{body}");
    println!("long statement took {:?}", started.elapsed());
}

/// Raft traffic names the node it is meant for; a node refuses another id's messages (a
/// new identity at an address an old one had must never answer for that one's log or
/// votes), and the refusal says so.
#[tokio::test]
async fn raft_traffic_for_another_node_id_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::start(tmp.path(), &[]).await;
    let mut c = client(&node).await;
    let msg = |to_node| shoal_transport::rpc::RaftRequest {
        group: 0,
        // An unknown kind: the handler refuses it with INVALID_ARGUMENT if it gets that far.
        kind: u32::MAX,
        header: Bytes::new(),
        entries: vec![],
        to_node,
    };
    let e = c
        .raft(msg(node.node_id + 7), Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("wrong node"), "{e:?}");
    // Addressed to this node (or to nobody in particular), the message gets through to
    // the handler.
    for to in [node.node_id, 0] {
        let e = c
            .raft(msg(to), Duration::from_secs(5))
            .await
            .expect_err("unknown kind");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    let (s, v) = node.sql("SELECT 1").await;
    assert_eq!(s, 200, "{v}");
}
