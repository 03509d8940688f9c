//! SWIM membership: `foca` (sans-IO) driven by our own task over one UDP socket.
//!
//! foca probes, indirectly probes, suspects and disseminates; this module gives it a clock
//! (a timer heap), a socket and a cluster-id prefix on every datagram (a packet from
//! another cluster, or junk, is dropped before foca parses it), and turns foca's state into
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
    /// Largest datagram (the 8-byte cluster prefix included).
    pub max_packet_bytes: usize,
}

impl SwimConfig {
    fn foca(&self) -> Result<foca::Config, String> {
        let mut c = foca::Config::new_lan(NonZeroU32::new(5).expect("nonzero"));
        c.probe_period = self.probe_interval;
        c.probe_rtt = self.probe_timeout;
        c.suspect_to_down_after = self.suspect_timeout;
        c.max_packet_size = NonZeroUsize::new(self.max_packet_bytes.saturating_sub(8).max(512))
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
}

/// The 8-byte prefix of every datagram of `cluster_id`.
pub fn cluster_tag(cluster_id: &str) -> [u8; 8] {
    shoal_common::hash::partition_hash(cluster_id.as_bytes()).to_be_bytes()
}

impl Membership {
    pub fn start(
        me: NodeIdentity,
        cfg: &SwimConfig,
        cluster_id: &str,
        socket: UdpSocket,
    ) -> Result<Membership, String> {
        let foca_cfg = cfg.foca()?;
        let (view_tx, view) = watch::channel(View::new());
        let (active_tx, active) = watch::channel(false);
        let (cmds, cmd_rx) = mpsc::channel(64);
        let subscribers: Arc<RwLock<Vec<Subscriber>>> = Default::default();
        let task = tokio::spawn(run(
            me.clone(),
            foca_cfg,
            cluster_tag(cluster_id),
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
        })
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

#[allow(clippy::too_many_arguments)]
async fn run(
    me: NodeIdentity,
    cfg: foca::Config,
    tag: [u8; 8],
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
    let mut buf = vec![0u8; max + 8];
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
                let Ok((n, _from)) = r else { continue };
                if n < 8 || buf[..8] != tag {
                    tracing::trace!(bytes = n, "swim: dropped a datagram from another cluster or junk");
                    continue;
                }
                if let Err(e) = foca.handle_data(&buf[8..n], &mut rt) {
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
                    flush(&sock, &tag, &mut rt, &mut timers).await;
                    // Give the datagrams a moment to leave before the socket closes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
        }
        flush(&sock, &tag, &mut rt, &mut timers).await;
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
    tag: &[u8; 8],
    rt: &mut AccumulatingRuntime<NodeIdentity>,
    timers: &mut Timers,
) {
    while let Some((to, data)) = rt.to_send() {
        let mut pkt = Vec::with_capacity(8 + data.len());
        pkt.extend_from_slice(tag);
        pkt.extend_from_slice(&data);
        let _ = sock.send_to(&pkt, to.gossip_addr).await;
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

    async fn node(id: u64, cluster: &str) -> Membership {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let me = NodeIdentity {
            node_id: id,
            gossip_addr: sock.local_addr().expect("addr"),
            generation: 1,
        };
        Membership::start(me, &cfg(), cluster, sock).expect("start")
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
}
