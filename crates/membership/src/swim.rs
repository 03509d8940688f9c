//! SWIM membership: `foca` (sans-IO) driven by our own task over one UDP socket.
//!
//! foca probes, indirectly probes, suspects and disseminates; this module gives it a clock
//! (a timer heap), a socket and a cluster-id prefix on every datagram (a packet from
//! another cluster, or junk, is dropped before foca parses it); with the cluster's gossip
//! key every datagram is also authenticated and replay-checked (`seal`: forgeries and
//! replays are dropped and counted before foca sees them). It turns foca's state into
//! Shoal's member states: ALIVE → SUSPECT → DEAD, and LEFT for a graceful leave (a custom
//! broadcast sent with the leave, since foca reports a leave like a death).
//!
//! Subscribers are synchronous callbacks run on the SWIM task for every transition
//! `(node, old, new)`; they must not block (hand work to a channel).
//!
//! SWIM is advisory: Raft decides who leads and what is committed. Membership feeds
//! routing-hint invalidation, `SHOW NODES` and (later) replica replacement.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PostcardCodec,
    State, Timer,
};
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::seal::{Dropped, Opener, Sealer, HEADER_BYTES, MAC_BYTES};

/// A node as SWIM knows it. `generation` grows with every start, so a restarted node
/// supersedes its previous incarnation.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub gossip_addr: SocketAddr,
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = u64;
    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation + 1,
            ..self.clone()
        })
    }
    fn addr(&self) -> u64 {
        self.node_id
    }
    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.generation, self.gossip_addr) > (other.generation, other.gossip_addr)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberState::Alive => "ALIVE",
            MemberState::Suspect => "SUSPECT",
            MemberState::Dead => "DEAD",
            MemberState::Left => "LEFT",
        }
    }
}

/// One state transition.
#[derive(Clone, Debug)]
pub struct MemberEvent {
    pub node: u64,
    pub identity: NodeIdentity,
    pub old: Option<MemberState>,
    pub new: MemberState,
}

pub type View = HashMap<u64, (NodeIdentity, MemberState)>;
type Subscriber = Box<dyn Fn(&MemberEvent) + Send + Sync>;

/// Timings; every one is a config key.
#[derive(Clone, Debug)]
pub struct SwimConfig {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspect_timeout: Duration,
    /// Largest datagram (header and MAC included: foca gets this less
    /// `seal::HEADER_BYTES + seal::MAC_BYTES`).
    pub max_packet_bytes: usize,
}

impl SwimConfig {
    fn foca(&self) -> Result<foca::Config, String> {
        let mut c = foca::Config::new_lan(NonZeroU32::new(5).expect("nonzero"));
        c.probe_period = self.probe_interval;
        c.probe_rtt = self.probe_timeout;
        c.suspect_to_down_after = self.suspect_timeout;
        let overhead = crate::seal::HEADER_BYTES + crate::seal::MAC_BYTES;
        c.max_packet_size =
            NonZeroUsize::new(self.max_packet_bytes.saturating_sub(overhead).max(512))
                .ok_or("max_packet_bytes too small")?;
        c.remove_down_after = Some(Duration::from_secs(3600));
        // Announce periodically so nodes separated by a partition find each other again.
        if self.probe_timeout >= self.probe_interval {
            return Err("swim_probe_timeout_ms must be below swim_probe_interval_ms".into());
        }
        Ok(c)
    }
}

enum Cmd {
    Announce(NodeIdentity),
    Leave(oneshot::Sender<()>),
}

#[derive(Serialize, Deserialize)]
struct Leave {
    node_id: u64,
    generation: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct LeaveKey(u64, u64);

impl Invalidates for LeaveKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0 && self.1 >= other.1
    }
}

/// node id → the generation that left.
#[derive(Clone, Default)]
struct Leaves(Arc<Mutex<HashMap<u64, u64>>>);

impl BroadcastHandler<NodeIdentity> for Leaves {
    type Key = LeaveKey;
    type Error = postcard::Error;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<LeaveKey>, postcard::Error> {
        let l: Leave = postcard::from_bytes(data)?;
        let mut m = self.0.lock();
        if m.get(&l.node_id).is_some_and(|g| *g >= l.generation) {
            return Ok(None);
        }
        m.insert(l.node_id, l.generation);
        Ok(Some(LeaveKey(l.node_id, l.generation)))
    }
}

type Swim = Foca<NodeIdentity, PostcardCodec, StdRng, Leaves>;
type Timers = BinaryHeap<Reverse<(Instant, Timer<NodeIdentity>)>>;

/// The running membership of this node.
pub struct Membership {
    pub me: NodeIdentity,
    view: watch::Receiver<View>,
    active: watch::Receiver<bool>,
    cmds: mpsc::Sender<Cmd>,
    subscribers: Arc<RwLock<Vec<Subscriber>>>,
    task: tokio::task::JoinHandle<()>,
    dropped: Arc<DroppedCounts>,
}

/// Datagrams dropped before foca saw them, by reason.
#[derive(Default, Debug)]
pub struct DroppedCounts {
    /// Wrong MAC: not made with this cluster's gossip key.
    pub forged: std::sync::atomic::AtomicU64,
    /// Authentic, but seen before or too old.
    pub replayed: std::sync::atomic::AtomicU64,
}

/// The 8-byte prefix of every datagram of `cluster_id`.
pub fn cluster_tag(cluster_id: &str) -> [u8; 8] {
    shoal_common::hash::partition_hash(cluster_id.as_bytes()).to_be_bytes()
}

impl Membership {
    /// Runs SWIM on `socket`; with `key` (the cluster's gossip key) every datagram is
    /// authenticated (see `seal`).
    pub fn start(
        me: NodeIdentity,
        cfg: &SwimConfig,
        cluster_id: &str,
        key: Option<&[u8; crate::seal::KEY_BYTES]>,
        socket: UdpSocket,
    ) -> Result<Membership, String> {
        let foca_cfg = cfg.foca()?;
        let (view_tx, view) = watch::channel(View::new());
        let (active_tx, active) = watch::channel(false);
        let (cmds, cmd_rx) = mpsc::channel(64);
        let subscribers: Arc<RwLock<Vec<Subscriber>>> = Default::default();
        let tag = cluster_tag(cluster_id);
        let dropped = Arc::new(DroppedCounts::default());
        let task = tokio::spawn(run(
            me.clone(),
            foca_cfg,
            Seals {
                sealer: Sealer::new(tag, key, me.node_id, me.generation),
                opener: Opener::new(tag, key),
                dropped: dropped.clone(),
            },
            socket,
            cmd_rx,
            subscribers.clone(),
            view_tx,
            active_tx,
        ));
        Ok(Membership {
            me,
            view,
            active,
            cmds,
            subscribers,
            task,
            dropped,
        })
    }

    /// Datagrams dropped as forged or replayed so far.
    pub fn dropped(&self) -> &DroppedCounts {
        &self.dropped
    }

    /// Calls `f` on every state transition from now on (on the SWIM task: never block).
    pub fn subscribe(&self, f: impl Fn(&MemberEvent) + Send + Sync + 'static) {
        self.subscribers.write().push(Box::new(f));
    }

    /// Every member this node knows (itself excluded).
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    pub fn state_of(&self, node: u64) -> Option<MemberState> {
        if node == self.me.node_id {
            return Some(MemberState::Alive);
        }
        self.view.borrow().get(&node).map(|(_, s)| *s)
    }

    /// Whether at least one other member knows this node.
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Introduces this node to `peer` (only its node id and gossip address must be right).
    pub async fn announce(&self, peer: NodeIdentity) {
        let _ = self.cmds.send(Cmd::Announce(peer)).await;
    }

    /// Leaves gracefully: peers mark this node LEFT (not DEAD). Waits at most `timeout`.
    pub async fn leave(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This node's sealing and opening of datagrams, and what it dropped.
struct Seals {
    sealer: Sealer,
    opener: Opener,
    dropped: Arc<DroppedCounts>,
}

impl Seals {
    /// The payload of a received datagram, or `None` (counted, and logged the first time
    /// and every 100th, with the sender's address).
    fn open<'a>(&mut self, pkt: &'a [u8], from: SocketAddr) -> Option<&'a [u8]> {
        use std::sync::atomic::Ordering::Relaxed;
        let why = match self.opener.open(pkt) {
            Ok(p) => return Some(p),
            Err(Dropped::Junk) => {
                tracing::trace!(
                    bytes = pkt.len(),
                    "swim: dropped a datagram from another cluster or junk"
                );
                return None;
            }
            Err(d) => d,
        };
        let (counter, what) = match why {
            Dropped::Forged => (
                &self.dropped.forged,
                "forged (not made with the cluster's gossip key)",
            ),
            _ => (&self.dropped.replayed, "replayed"),
        };
        let n = counter.fetch_add(1, Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(%from, total = n + 1, "swim: dropped a {what} datagram");
        }
        None
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    me: NodeIdentity,
    cfg: foca::Config,
    mut seals: Seals,
    sock: UdpSocket,
    mut cmds: mpsc::Receiver<Cmd>,
    subscribers: Arc<RwLock<Vec<Subscriber>>>,
    view_tx: watch::Sender<View>,
    active_tx: watch::Sender<bool>,
) {
    let leaves = Leaves::default();
    let max = cfg.max_packet_size.get();
    let mut foca: Swim =
        Foca::with_custom_broadcast(me, cfg, rand::make_rng(), PostcardCodec, leaves.clone());
    let mut rt = AccumulatingRuntime::new();
    let mut timers = Timers::new();
    let mut buf = vec![0u8; max + HEADER_BYTES + MAC_BYTES];
    let mut known = View::new();
    // foca starts its probe cycle on the first join; kick the periodic timers now.
    if let Err(e) = foca.gossip(&mut rt) {
        tracing::debug!(error = %e, "swim: initial gossip");
    }
    loop {
        let deadline = timers
            .peek()
            .map(|Reverse((at, _))| *at)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(payload) = seals.open(&buf[..n], from) else { continue };
                if let Err(e) = foca.handle_data(payload, &mut rt) {
                    tracing::trace!(error = %e, "swim: dropped packet");
                }
            }
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                while timers.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    let Some(Reverse((_, t))) = timers.pop() else { break };
                    if let Err(e) = foca.handle_timer(t, &mut rt) {
                        tracing::debug!(error = %e, "swim: timer");
                    }
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Announce(peer)) => {
                    if let Err(e) = foca.announce(peer, &mut rt) {
                        tracing::debug!(error = %e, "swim: announce");
                    }
                }
                Some(Cmd::Leave(done)) => {
                    let id = foca.identity().clone();
                    if let Ok(msg) = postcard::to_allocvec(&Leave { node_id: id.node_id, generation: id.generation }) {
                        let _ = foca.add_broadcast(&msg);
                    }
                    let _ = foca.leave_cluster(&mut rt);
                    flush(&sock, &mut seals.sealer, &mut rt, &mut timers).await;
                    // Give the datagrams a moment to leave before the socket closes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
        }
        flush(&sock, &mut seals.sealer, &mut rt, &mut timers).await;
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::Active => {
                    let _ = active_tx.send(true);
                }
                OwnedNotification::Idle | OwnedNotification::Defunct => {
                    let _ = active_tx.send(false);
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        generation = id.generation,
                        "swim: this node was declared down; rejoined with a new generation"
                    );
                }
                _ => {}
            }
        }
        if diff(&foca, &leaves, &mut known, &subscribers) {
            view_tx.send_replace(known.clone());
        }
    }
}

async fn flush(
    sock: &UdpSocket,
    sealer: &mut Sealer,
    rt: &mut AccumulatingRuntime<NodeIdentity>,
    timers: &mut Timers,
) {
    while let Some((to, data)) = rt.to_send() {
        let _ = sock.send_to(&sealer.seal(&data), to.gossip_addr).await;
    }
    let now = Instant::now();
    while let Some((after, t)) = rt.to_schedule() {
        timers.push(Reverse((now + after, t)));
    }
}

fn diff(
    foca: &Swim,
    leaves: &Leaves,
    known: &mut View,
    subscribers: &RwLock<Vec<Subscriber>>,
) -> bool {
    let left = leaves.0.lock().clone();
    let mut changed = false;
    let mut seen = HashSet::new();
    for m in foca.iter_membership_state() {
        let id = m.id();
        seen.insert(id.node_id);
        let state = match m.state() {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Down if left.get(&id.node_id).is_some_and(|g| *g >= id.generation) => {
                MemberState::Left
            }
            State::Down => MemberState::Dead,
        };
        let old = known.get(&id.node_id).cloned();
        if old.as_ref().map(|(i, s)| (i, *s)) != Some((id, state)) {
            known.insert(id.node_id, (id.clone(), state));
            changed = true;
            let old_state = old.map(|(_, s)| s);
            if old_state != Some(state) {
                tracing::info!(node = id.node_id, from = ?old_state, to = ?state, "membership");
                let ev = MemberEvent {
                    node: id.node_id,
                    identity: id.clone(),
                    old: old_state,
                    new: state,
                };
                for s in subscribers.read().iter() {
                    s(&ev);
                }
            }
        }
    }
    let before = known.len();
    known.retain(|k, _| seen.contains(k));
    changed || known.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SwimConfig {
        SwimConfig {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(80),
            suspect_timeout: Duration::from_millis(600),
            max_packet_bytes: 1400,
        }
    }

    const KEY: [u8; crate::seal::KEY_BYTES] = [42; crate::seal::KEY_BYTES];

    async fn node(id: u64, cluster: &str) -> Membership {
        keyed(id, cluster, Some(&KEY)).await
    }

    async fn keyed(
        id: u64,
        cluster: &str,
        key: Option<&[u8; crate::seal::KEY_BYTES]>,
    ) -> Membership {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let me = NodeIdentity {
            node_id: id,
            gossip_addr: sock.local_addr().expect("addr"),
            generation: 1,
        };
        Membership::start(me, &cfg(), cluster, key, sock).expect("start")
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn members_find_each_other_and_see_death_and_leave() {
        let a = node(1, "c").await;
        let b = node(2, "c").await;
        let c = node(3, "c").await;
        let events = Arc::new(Mutex::new(
            Vec::<(u64, Option<MemberState>, MemberState)>::new(),
        ));
        let sink = events.clone();
        a.subscribe(move |e| sink.lock().push((e.node, e.old, e.new)));
        b.announce(a.me.clone()).await;
        c.announce(a.me.clone()).await;
        until("everyone alive", || {
            [&a, &b, &c].iter().all(|m| {
                m.view()
                    .values()
                    .filter(|(_, s)| *s == MemberState::Alive)
                    .count()
                    == 2
            })
        })
        .await;
        // A graceful leave is LEFT, not DEAD.
        c.leave(Duration::from_secs(2)).await;
        until("c LEFT on a", || a.state_of(3) == Some(MemberState::Left)).await;
        // A vanished node goes SUSPECT then DEAD.
        drop(b);
        until("b DEAD on a", || a.state_of(2) == Some(MemberState::Dead)).await;
        let ev = events.lock().clone();
        assert!(
            ev.contains(&(2, Some(MemberState::Alive), MemberState::Suspect)),
            "{ev:?}"
        );
        assert!(
            ev.iter().any(|e| e.0 == 2 && e.2 == MemberState::Dead),
            "{ev:?}"
        );
        assert!(
            ev.iter().any(|e| e.0 == 3 && e.2 == MemberState::Left),
            "{ev:?}"
        );
    }

    #[tokio::test]
    async fn datagrams_of_another_cluster_are_ignored() {
        let a = node(1, "one").await;
        let b = node(2, "two").await;
        b.announce(a.me.clone()).await;
        a.announce(b.me.clone()).await;
        // Give them many probe periods; neither may ever list the other.
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            assert!(a.view().is_empty() && b.view().is_empty());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A host with the cluster id but not the key (a node with another key, and raw
    /// datagrams with the right tag) changes nobody's membership; its datagrams are
    /// counted as forged. Replays of real datagrams are counted as replayed.
    #[tokio::test]
    async fn forged_and_replayed_datagrams_change_nothing() {
        let a = node(1, "c").await;
        let b = node(2, "c").await;
        let rogue = keyed(3, "c", Some(&[9; crate::seal::KEY_BYTES])).await;
        b.announce(a.me.clone()).await;
        rogue.announce(a.me.clone()).await;
        rogue.announce(b.me.clone()).await;
        until("a and b see each other", || {
            a.state_of(2) == Some(MemberState::Alive) && b.state_of(1) == Some(MemberState::Alive)
        })
        .await;
        // Raw datagrams: the right tag, junk after it.
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut junk = cluster_tag("c").to_vec();
        junk.extend_from_slice(&[0u8; 80]);
        for _ in 0..10 {
            raw.send_to(&junk, a.me.gossip_addr).expect("send");
        }
        // A replay of a real datagram: seal one the way node 2 would, send it twice.
        let mut sealer = Sealer::new(cluster_tag("c"), Some(&KEY), 2, 1);
        let real = sealer.seal(b"not even foca");
        raw.send_to(&real, a.me.gossip_addr).expect("send");
        raw.send_to(&real, a.me.gossip_addr).expect("send");
        use std::sync::atomic::Ordering::Relaxed;
        until("the forgeries counted", || {
            a.dropped().forged.load(Relaxed) >= 11
        })
        .await;
        // Node 2's own generation-1 sequence numbers are far past 1 by now: a replay.
        until("the replay counted", || {
            a.dropped().replayed.load(Relaxed) >= 1
        })
        .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            assert_eq!(a.state_of(3), None, "the rogue reached a");
            assert_eq!(b.state_of(3), None, "the rogue reached b");
            assert!(rogue.view().is_empty(), "the rogue learned the cluster");
            assert_eq!(a.state_of(2), Some(MemberState::Alive));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Without a key (a cluster from before gossip keys) SWIM still works, tagged only.
    #[tokio::test]
    async fn clusters_without_a_key_still_gossip() {
        let a = keyed(1, "c", None).await;
        let b = keyed(2, "c", None).await;
        b.announce(a.me.clone()).await;
        until("a sees b", || a.state_of(2) == Some(MemberState::Alive)).await;
    }

    /// Fuzz target: SWIM datagrams as the socket delivers them. The opener (with and
    /// without a key) and then foca's decoder see every input; nothing may panic.
    /// Seeds are real datagrams of an announce exchange. Corpus in
    /// `fuzz/corpus/swim_datagrams`.
    #[test]
    fn fuzz_swim_datagrams() {
        use std::cell::RefCell;
        let me = |id: u64| NodeIdentity {
            node_id: id,
            gossip_addr: format!("127.0.0.1:{}", 7000 + id).parse().expect("addr"),
            generation: 1,
        };
        let foca = |id: u64| -> Swim {
            Foca::with_custom_broadcast(
                me(id),
                cfg().foca().expect("cfg"),
                rand::make_rng(),
                PostcardCodec,
                Leaves::default(),
            )
        };
        // Seeds: what node 2 sends node 1 when it announces, sealed both ways.
        let mut a = foca(2);
        let mut rt = AccumulatingRuntime::new();
        a.announce(me(1), &mut rt).expect("announce");
        let mut seeds = vec![];
        let tag = cluster_tag("c");
        while let Some((_, data)) = rt.to_send() {
            seeds.push(Sealer::new(tag, None, 2, 1).seal(&data));
            seeds.push(Sealer::new(tag, Some(&KEY), 2, 1).seal(&data));
        }
        assert!(!seeds.is_empty(), "no announce datagram to seed with");
        let b = RefCell::new(foca(1));
        let open = RefCell::new(Opener::new(tag, None));
        let keyed = RefCell::new(Opener::new(tag, Some(&KEY)));
        shoal_common::fuzz::run("swim_datagrams", seeds, |input| {
            let mut rt = AccumulatingRuntime::new();
            if let Ok(p) = keyed.borrow_mut().open(input) {
                let _ = b.borrow_mut().handle_data(p, &mut rt);
            }
            if let Ok(p) = open.borrow_mut().open(input) {
                let _ = b.borrow_mut().handle_data(p, &mut rt);
            }
        });
    }
}
