//! The transport across a receiver restart: every message the sender was told arrived did
//! arrive, exactly once, and the sender gets through again once the receiver is back
//! (the channel reconnects by itself). This is the failure mode where a sender and a
//! receiver that disagree on connection lifetime silently drop messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use shoal_consensus::transport::{RaftMessage, RaftRpc, RaftTransport};
use shoal_transport::rpc::{
    BytesReply, Caller, ChunkStream, FragmentRequest, HelloReply, JoinReply, JoinRequest,
    MetaRequest, PeerHandler, RaftRequest, ServiceLimits, SqlRequest,
};
use shoal_transport::{ClusterTransport, Peers, PeersConfig, RpcServer, ServerLimits};
use tonic::Status;

/// Records every Raft message body it receives (sequence number → times received).
struct Recorder {
    seen: Mutex<BTreeMap<u64, u32>>,
}

#[async_trait::async_trait]
impl PeerHandler for Recorder {
    fn cluster_id(&self) -> String {
        "test-cluster".into()
    }
    async fn hello(&self, _c: Caller) -> Result<HelloReply, Status> {
        Ok(HelloReply::default())
    }
    async fn join(&self, _c: Caller, _r: JoinRequest) -> Result<JoinReply, Status> {
        Err(Status::unimplemented("join"))
    }
    async fn raft(&self, _c: Caller, r: RaftRequest) -> Result<BytesReply, Status> {
        let mut n = [0u8; 8];
        n.copy_from_slice(&r.header[..8]);
        *self.seen.lock().entry(u64::from_le_bytes(n)).or_insert(0) += 1;
        Ok(BytesReply { body: r.header })
    }
    async fn forward_meta(&self, _c: Caller, _r: MetaRequest) -> Result<BytesReply, Status> {
        Err(Status::unimplemented("forward"))
    }
    async fn sql(&self, _c: Caller, _r: SqlRequest) -> Result<BytesReply, Status> {
        Err(Status::unimplemented("sql"))
    }
    async fn fragment(&self, _c: Caller, _r: FragmentRequest) -> Result<ChunkStream, Status> {
        Err(Status::unimplemented("fragment"))
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        service: ServiceLimits {
            max_message_bytes: 1 << 20,
            max_inflight: 16,
            max_inflight_raft: 64,
        },
        max_connections: 16,
        max_streams_per_connection: 64,
        drain_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_across_a_receiver_restart() {
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(BTreeMap::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut server =
        Some(RpcServer::start(listener, recorder.clone(), limits(), None).expect("server"));

    let envelope = Arc::new(RwLock::new(Caller {
        cluster_id: "test-cluster".into(),
        node_id: 1,
        term: 1,
    }));
    let peers = Peers::new(
        PeersConfig {
            max_message_bytes: 1 << 20,
            connect_timeout: Duration::from_millis(500),
            breaker_failures: 3,
            breaker_open: Duration::from_millis(100),
            probe_interval: Duration::from_millis(50),
            forward_timeout: Duration::from_secs(2),
            tls: None,
        },
        envelope,
        move |_| Some(addr.to_string()),
    );
    let prober = peers.spawn_prober();
    let transport = ClusterTransport {
        peers: peers.clone(),
    };

    const SENDERS: u64 = 8;
    const PER_SENDER: u64 = 100;
    const N: u64 = SENDERS * PER_SENDER;
    let transport = Arc::new(transport);
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = vec![];
    for t in 0..SENDERS {
        let transport = transport.clone();
        let failures = failures.clone();
        senders.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..PER_SENDER {
                let seq = t * PER_SENDER + i;
                loop {
                    assert!(Instant::now() < deadline, "stuck at message {seq}");
                    let msg = RaftMessage {
                        group: 0,
                        kind: RaftRpc::Append,
                        header: Bytes::copy_from_slice(&seq.to_le_bytes()),
                        entries: vec![],
                    };
                    match transport
                        .send_raft(2, "", msg, Duration::from_secs(2))
                        .await
                    {
                        Ok(body) => {
                            assert_eq!(&body[..], &seq.to_le_bytes(), "reply matches its request");
                            break;
                        }
                        // Like Raft, retry the same message until it is acknowledged.
                        Err(_) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }
    // Restart the receiver twice on the same port while messages are in flight.
    for round in 1..=2u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (recorder.seen.lock().len() as u64) < round * N / 3 {
            assert!(
                Instant::now() < deadline,
                "no progress before restart {round}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.take().expect("server").shutdown().await;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        server =
            Some(RpcServer::start(listener, recorder.clone(), limits(), None).expect("restart"));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let failures = failures.load(std::sync::atomic::Ordering::Relaxed);
    prober.abort();
    let seen = recorder.seen.lock().clone();
    for s in 0..N {
        assert!(
            seen.contains_key(&s),
            "message {s} was acknowledged but never arrived"
        );
    }
    // A retry after an unacknowledged send may deliver twice (Raft tolerates that); an
    // acknowledged message is never delivered more than that.
    assert!(seen.values().all(|n| *n <= 2), "{seen:?}");
    println!("{N} messages, {failures} failed sends across the restart, all arrived");
    if let Some(s) = server {
        s.shutdown().await;
    }
}
