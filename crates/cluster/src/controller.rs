//! The controller: one task per node that runs the control plane's named duties, each on
//! its own interval from the configuration, and wakes the ones that care when membership
//! changes. A duty that is still running when it comes due again is skipped, so a slow one
//! (a membership change waiting for a quorum) never holds up the others.
//!
//! | duty | where | what |
//! |---|---|---|
//! | `register` | every node | this node's registry entry (addresses), group 0's term in the RPC envelope |
//! | `follow_placement` | every node | opens the vshard groups placed here, closes (and later deletes) the ones no longer placed here |
//! | `group0_membership` | group 0's leader | group 0's voters and learners; JOINING → ACTIVE |
//! | `vshard_membership` | each vshard's leader | learners, voter changes, moves driven and recorded |
//! | `placement` | group 0's leader | record placement, repair, grow, rebalance (`placement::plan`) |
//! | `leader_balance` | group 0's leader | spreads vshard leaderships (`leaders::plan_transfers`) |
//! | `reports` | every node | samples this node's load; `Hello` to every peer (clock offsets, loads) |
//! | `introduce` | every node | SWIM announcements to registered nodes it does not see |
//! | `shed` | every node | a draining or leaving node (or one whose disk is full) hands its leaderships away |
//! | `unstick_transfers` | every node | a leadership transfer whose target died is asked of another voter |
//! | `closed_ts`, `quiesce` | every node | closed timestamps out; idle groups quiesced |
//! | `replica_gc` | every node | deletes removed replicas' files after `replica_gc_grace_ms` |
//! | `meta_health` | every node | confirms group 0 answers (a read index); readiness uses it |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use shoal_consensus::registry::{handoff_target, GroupState, MembershipChange};
use shoal_consensus::{
    ClusterOp, Command, MoveState, MoveUpdate, NodeAddrs, NodeState, Registry, Response,
};
use shoal_membership::clock::{ClockOffsets, Sample};
use shoal_membership::{MemberState, Membership, NodeIdentity};
use shoal_transport::{Caller, Peers};
use tokio::time::Instant;

use crate::leaders::{leader_counts, plan_transfers};
use crate::membership::{group0_target, plan, vshard_target, Step, Target};
use crate::placement::{PlacementConfig, PlacementStep};
use crate::reports::{LoadSampler, Reports};
use crate::view::ClusterView;

/// How often each duty runs, and the control plane's other knobs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: u64,
    /// This node started the cluster (it registers itself ACTIVE).
    pub bootstrap: bool,
    pub addrs: NodeAddrs,
    pub vshards: u32,
    pub max_voters: usize,
    pub placement: PlacementConfig,
    /// Registration, membership of groups, following the placement (`control_interval_ms`).
    pub control_interval: Duration,
    /// `rebalance_interval_ms`.
    pub rebalance_interval: Duration,
    /// `leader_balance_interval_ms` (zero: never).
    pub leader_balance_interval: Duration,
    /// `report_interval_ms`: load samples and `Hello` round trips.
    pub report_interval: Duration,
    /// `quiesce_after_ms` (zero: never).
    pub quiesce_after: Duration,
    /// `replica_gc_grace_ms`.
    pub replica_gc_grace: Duration,
    /// A move whose target makes no progress for this long counts a failed attempt
    /// (`move_stall_timeout_ms`).
    pub move_stall_timeout: Duration,
    /// A decommission with no progress this long is reported stalled
    /// (`decommission_stall_ms`).
    pub decommission_stall: Duration,
}

/// Why a decommission did not start.
#[derive(Debug)]
pub enum DecommissionError {
    /// The safety check found it could not finish; every reason.
    Refused(Vec<crate::decommission::Blocker>),
    /// Group 0 could not be read or written now; retry.
    Unavailable(String),
}

/// What the controller acts through.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub membership: Arc<Membership>,
    pub peers: Arc<Peers>,
    pub clocks: Arc<ClockOffsets>,
    pub envelope: Arc<RwLock<Caller>>,
    pub sampler: Arc<LoadSampler>,
}

/// The controller: its shared state and the task running its duties.
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ControllerConfig,
    parts: Parts,
    reports: Reports,
    /// Since when SWIM has reported each node down, as seen here.
    down_since: Mutex<BTreeMap<u64, Instant>>,
    /// When a stalled decommission was last logged, by leaving node (once per
    /// `decommission_stall`).
    stall_logged: Mutex<BTreeMap<u64, Instant>>,
    /// When [`Controller::log_short_for_disk`] last warned.
    short_for_disk_logged: Mutex<Option<Instant>>,
    wake: tokio::sync::Notify,
    /// Unix ms of the last successful read index from group 0's leader.
    meta_ok_ms: AtomicU64,
    /// Per move this node drives: its last progress (matched index or snapshot bytes) and
    /// when it last changed, and when the next attempt after a failure may start.
    moves: Mutex<HashMap<u64, MoveProgress>>,
    /// Leader transfers asked for in the last few seconds (vshard → target, when): they
    /// count at their target until the reports show them.
    pending_transfers: Mutex<BTreeMap<u32, (u64, std::time::Instant)>>,
    /// Set by this node's drain: it leads nothing (whatever group 0 says of its state).
    draining: AtomicBool,
    /// A peer said group 0 records this node DECOMMISSIONED (see `decommissioned`).
    refused: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
struct MoveProgress {
    mark: (u64, u64),
    since: Instant,
    retry_at: Instant,
    reported_bytes: u64,
    reported_at: Option<Instant>,
    /// The snapshot send last seen: (bytes sent, bytes in all).
    seen: Option<(u64, u64)>,
}

impl MoveProgress {
    fn new(mark: (u64, u64), now: Instant) -> MoveProgress {
        MoveProgress {
            mark,
            since: now,
            retry_at: now,
            reported_bytes: 0,
            reported_at: None,
            seen: None,
        }
    }
}

type DutyFn = fn(Arc<Inner>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

struct Duty {
    name: &'static str,
    every: Duration,
    /// Woken early by membership changes.
    wakeable: bool,
    run: DutyFn,
    running: Arc<AtomicBool>,
    next: Instant,
}

macro_rules! duty {
    ($name:literal, $every:expr, $wakeable:expr, $f:ident) => {
        Duty {
            name: $name,
            every: $every,
            wakeable: $wakeable,
            run: |i| Box::pin(async move { i.$f().await }),
            running: Arc::new(AtomicBool::new(false)),
            next: Instant::now(),
        }
    };
}

/// The longest one run of a duty may take before it is cancelled: every step it awaits is
/// bounded well below this (a membership change 5 s, a group-0 proposal 10 s, a read
/// barrier 2 s), so hitting it means a hang, which must not stop the duty for good.
const DUTY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often, at most, the leader warns that full disks keep vshards under-replicated.
const SHORT_FOR_DISK_LOG_EVERY: Duration = Duration::from_secs(60);

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

fn now_ms() -> u64 {
    (shoal_common::time::now_nanos() / 1_000_000) as u64
}

impl Controller {
    pub fn new(cfg: ControllerConfig, parts: Parts) -> Controller {
        Controller {
            inner: Arc::new(Inner {
                cfg,
                parts,
                reports: Reports::default(),
                down_since: Default::default(),
                stall_logged: Default::default(),
                short_for_disk_logged: Default::default(),
                wake: tokio::sync::Notify::new(),
                meta_ok_ms: AtomicU64::new(0),
                moves: Default::default(),
                pending_transfers: Default::default(),
                draining: AtomicBool::new(false),
                refused: AtomicBool::new(false),
            }),
        }
    }

    /// Runs every duty until the returned handle is aborted.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        let c = &inner.cfg;
        let control = c.control_interval.max(Duration::from_millis(10));
        let mut duties = vec![
            duty!("register", control, false, register),
            duty!("follow_placement", control * 2, true, follow_placement),
            duty!("group0_membership", control, true, group0_membership),
            duty!("vshard_membership", control, true, vshard_membership),
            duty!(
                "placement",
                c.rebalance_interval.max(control),
                true,
                placement
            ),
            duty!("reports", c.report_interval.max(control), false, reports),
            duty!(
                "introduce",
                c.report_interval.max(control),
                false,
                introduce
            ),
            duty!("shed", Duration::from_secs(1), false, shed),
            duty!("unstick_transfers", Duration::from_secs(1), false, unstick),
            duty!("closed_ts", control, false, closed_ts),
            duty!("replica_gc", Duration::from_secs(10), false, replica_gc),
            duty!("meta_health", Duration::from_secs(1), false, meta_health),
        ];
        if !c.leader_balance_interval.is_zero() {
            duties.push(duty!(
                "leader_balance",
                c.leader_balance_interval,
                false,
                leader_balance
            ));
        }
        if !c.quiesce_after.is_zero() {
            duties.push(duty!("quiesce", control, false, quiesce));
        }
        tokio::spawn(async move {
            loop {
                let next = duties
                    .iter()
                    .map(|d| d.next)
                    .min()
                    .unwrap_or_else(Instant::now);
                let woken = tokio::select! {
                    _ = tokio::time::sleep_until(next) => false,
                    _ = inner.wake.notified() => true,
                };
                let now = Instant::now();
                for d in duties.iter_mut() {
                    let due = d.next <= now || (woken && d.wakeable);
                    if !due || d.running.load(Ordering::Acquire) {
                        continue;
                    }
                    // While moves are under way the placement is looked at every second, so
                    // the next move starts soon after one finishes.
                    let every = if d.name == "placement" && inner.moves_under_way() {
                        d.every.min(Duration::from_secs(1))
                    } else {
                        d.every
                    };
                    d.next = now + every;
                    d.running.store(true, Ordering::Release);
                    let running = d.running.clone();
                    let fut = (d.run)(inner.clone());
                    let name = d.name;
                    tokio::spawn(async move {
                        let started = Instant::now();
                        // A duty that panicked or hung would otherwise never run again
                        // (its `running` flag stays set): contain both, loudly.
                        let run = std::panic::AssertUnwindSafe(fut).catch_unwind();
                        match tokio::time::timeout(DUTY_TIMEOUT, run).await {
                            Ok(Ok(())) => {}
                            Ok(Err(panic)) => tracing::error!(
                                duty = name,
                                panic = panic_text(&panic),
                                "a control-plane duty panicked; it runs again at its next turn"
                            ),
                            Err(_) => tracing::error!(
                                duty = name,
                                limit_s = DUTY_TIMEOUT.as_secs(),
                                "a control-plane duty hung and was cancelled (DUTY_TIMEOUT)"
                            ),
                        }
                        if started.elapsed() > Duration::from_secs(10) {
                            tracing::warn!(
                                duty = name,
                                ms = started.elapsed().as_millis() as u64,
                                "slow control-plane duty"
                            );
                        }
                        running.store(false, Ordering::Release);
                    });
                }
            }
        })
    }

    /// Runs the duties that follow membership as soon as possible (a join, a DEAD, a
    /// LEFT).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// This node's latest load report (for `Hello`).
    pub fn local_load(&self) -> Arc<crate::view::NodeLoad> {
        self.inner.parts.sampler.current()
    }

    /// The latest report of `node`, if recent.
    pub fn load_of(&self, node: u64) -> Option<crate::view::NodeLoad> {
        self.inner.reports.get(node)
    }

    /// Vshard `v`'s leader as the nodes report it.
    pub fn reported_leader(&self, v: u32) -> Option<u64> {
        self.inner.view().leader_of(v)
    }

    /// Vshard `v`'s bytes as its replicas report them.
    pub fn reported_vshard_bytes(&self, v: u32) -> Option<u64> {
        let b = self.inner.view().vshard_bytes(v);
        (b > 0).then_some(b)
    }

    /// Marks this node draining (it hands every leadership away and takes none back) or
    /// not. Group 0's record of its state is the caller's to propose.
    pub fn set_draining(&self, on: bool) {
        self.inner.draining.store(on, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Hands every leadership held here (group 0 and vshards) to caught-up peers that may
    /// lead, asking again until none is left or `limit` passes; answers the groups still
    /// led (empty when all went).
    pub async fn hand_off_leaderships(&self, limit: Duration) -> Vec<u32> {
        let deadline = Instant::now() + limit;
        loop {
            let led = self.inner.shed_leaderships(true, "draining").await;
            if led.is_empty() || Instant::now() >= deadline {
                return led;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts decommissioning `ids` (idempotent for nodes already leaving): the safety
    /// check first, on a view of group 0 confirmed current, counting every node already
    /// leaving as gone too; refused with every blocker, or each marked DECOMMISSIONING.
    /// The rest is the control plane's: the leaving nodes hand their leaderships away,
    /// placement moves their replicas off, and each is DECOMMISSIONED once it holds none.
    pub async fn decommission(&self, ids: &[u64]) -> Result<(), DecommissionError> {
        let inner = &self.inner;
        inner
            .registry()
            .meta_barrier(Duration::from_secs(5))
            .await
            .map_err(|e| {
                DecommissionError::Unavailable(format!("group 0 could not confirm its state: {e}"))
            })?;
        let view = inner.view();
        let state = |id: u64| view.nodes.get(&id).map(|n| n.state);
        let fresh: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| state(*id) != Some(NodeState::Decommissioning))
            .collect();
        let leaving: Vec<u64> = view
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Decommissioning)
            .map(|n| n.id)
            .chain(fresh.iter().copied())
            .collect();
        let blockers = crate::decommission::check(&view, &leaving, &inner.cfg.placement);
        if !blockers.is_empty() {
            return Err(DecommissionError::Refused(blockers));
        }
        for id in fresh {
            self.set_node_state(id, NodeState::Decommissioning)
                .await
                .map_err(DecommissionError::Unavailable)?;
            tracing::info!(node = id, "decommission started: DECOMMISSIONING");
        }
        inner.wake.notify_one();
        Ok(())
    }

    /// Cancels node `id`'s decommission while it is still in progress (ACTIVE again; what
    /// already moved off stays moved until balancing brings replicas back).
    pub async fn recommission(&self, id: u64) -> Result<(), String> {
        let reg = self.inner.registry();
        reg.meta_barrier(Duration::from_secs(5))
            .await
            .map_err(|e| format!("group 0 could not confirm its state: {e}"))?;
        let state = reg.catalog().read().nodes.get(&id).map(|n| n.state);
        match state {
            None => Err(format!("node {id} is not registered")),
            Some(NodeState::Decommissioning) => {
                self.set_node_state(id, NodeState::Active).await?;
                tracing::info!(node = id, "decommission cancelled: ACTIVE again");
                Ok(())
            }
            Some(NodeState::Decommissioned) => Err(format!(
                "node {id} is already DECOMMISSIONED, which is final: wipe its data directory and join it as a new node"
            )),
            Some(s) => Err(format!(
                "node {id} is {}, not DECOMMISSIONING: there is nothing to cancel",
                s.as_str()
            )),
        }
    }

    /// Whether this node is DECOMMISSIONED: group 0 as applied here says so, or a peer
    /// did (a node that was down when it was decommissioned never applies that entry: it
    /// is no longer a member of group 0).
    pub fn decommissioned(&self) -> bool {
        self.inner.refused.load(Ordering::Acquire)
            || self
                .inner
                .registry()
                .catalog()
                .read()
                .nodes
                .get(&self.inner.me())
                .is_some_and(|n| n.state == NodeState::Decommissioned)
    }

    /// How node `node`'s decommission is going, as this node sees the cluster (`None`
    /// unless it is DECOMMISSIONING).
    pub fn decommission_progress(&self, node: u64) -> Option<crate::decommission::Progress> {
        let i = &self.inner;
        crate::decommission::progress(
            &i.view(),
            node,
            i.cfg.decommission_stall.as_millis() as u64,
            &i.cfg.placement,
        )
    }

    /// Proposes a node lifecycle change to group 0 (DRAINING ↔ ACTIVE); answers group 0's
    /// refusal as an error.
    pub async fn set_node_state(&self, id: u64, state: NodeState) -> Result<(), String> {
        match self
            .inner
            .registry()
            .propose_meta(Command::Cluster(ClusterOp::SetState {
                id,
                state,
                now_ms: now_ms(),
            }))
            .await
        {
            Ok(Response::Rejected(why)) => Err(why),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// How long ago group 0's leader last confirmed a read index to this node.
    pub fn meta_confirmed_ago(&self) -> Option<Duration> {
        match self.inner.meta_ok_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }
}

impl Inner {
    fn registry(&self) -> &Registry {
        &self.parts.registry
    }

    fn me(&self) -> u64 {
        self.cfg.node_id
    }

    /// Moves are under way, or one finished in the last 10 s (more may follow).
    fn moves_under_way(&self) -> bool {
        let now = now_ms();
        self.registry()
            .catalog()
            .read()
            .moves
            .values()
            .any(|m| m.state.active() || now.saturating_sub(m.updated_ms) < 10_000)
    }

    fn alive(&self, n: u64) -> bool {
        n == self.me() || self.parts.membership.state_of(n) == Some(MemberState::Alive)
    }

    fn leads_group0(&self) -> bool {
        let v = self.registry().meta_view();
        v.leader == Some(self.me())
    }

    /// How long SWIM has reported `n` down (DEAD, LEFT or unknown), as seen here.
    fn down_for(&self, n: u64) -> Option<Duration> {
        self.down_since.lock().get(&n).map(|t| t.elapsed())
    }

    async fn propose(&self, op: ClusterOp, what: &str) -> Option<Response> {
        match self.registry().propose_meta(Command::Cluster(op)).await {
            Ok(Response::Rejected(why)) => {
                tracing::info!(what, why = %why, "group 0 refused a control-plane change");
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(what, error = %e, "control-plane change not proposed; will retry");
                None
            }
        }
    }

    /// This node's registry entry: added when missing, addresses kept current.
    async fn register(self: Arc<Self>) {
        let view = self.registry().meta_view();
        self.parts.envelope.write().term = view.term;
        if !view.caught_up {
            return;
        }
        let me = self.me();
        let entry = self.registry().catalog().read().nodes.get(&me).cloned();
        // Group 0 says DRAINING only while this process drains (a drain is always asked
        // of the draining process itself, which sets its flag before recording it). So
        // DRAINING with the flag down is a drain of an earlier life of this node — a
        // restart ends a drain — and is undone. Checked every round, not once after start:
        // the earlier life's DRAINING may commit after this process started (seen in the
        // soak, seed 20261208: a SIGTERM drain's record committed after the restart had
        // already looked, and the node stayed DRAINING and unready for good).
        if let Some(n) = entry.as_ref().filter(|n| n.state == NodeState::Draining) {
            if !self.draining.load(Ordering::Acquire)
                && self
                    .propose(
                        ClusterOp::SetState {
                            id: n.id,
                            state: NodeState::Active,
                            now_ms: now_ms(),
                        },
                        "ending a drain of an earlier life of this node",
                    )
                    .await
                    .is_some()
            {
                tracing::info!("restarted after a drain: ACTIVE again");
            }
        }
        let op = match &entry {
            None => ClusterOp::AddNode {
                id: me,
                token: 0,
                addrs: self.cfg.addrs.clone(),
                state: if self.cfg.bootstrap {
                    NodeState::Active
                } else {
                    NodeState::Joining
                },
                hosts_vshards: self.cfg.bootstrap,
                max_hosts: None,
            },
            Some(n) if n.addrs != self.cfg.addrs => ClusterOp::UpdateAddrs {
                id: me,
                addrs: self.cfg.addrs.clone(),
                hosts_vshards: None,
            },
            Some(_) => return,
        };
        self.propose(op, "registering this node").await;
    }

    /// Opens the vshard groups group 0 places here and closes the ones it no longer does.
    /// Closing needs a view of group 0 confirmed current: a stale one could close a replica
    /// a later move placed here again.
    async fn follow_placement(self: Arc<Self>) {
        let me = self.me();
        let reg = self.registry();
        if !reg.meta_view().caught_up {
            return;
        }
        let catalog = reg.catalog().read().clone();
        if catalog
            .nodes
            .get(&me)
            .is_none_or(|n| n.state == NodeState::Decommissioned)
        {
            return;
        }
        let hosted: BTreeSet<u32> = reg.hosted().into_iter().collect();
        for v in 0..self.cfg.vshards {
            if catalog.wants_replica(v, me) && !hosted.contains(&v) {
                if let Err(e) = reg.open_vshard(v).await {
                    tracing::warn!(vshard = v, error = %e, "opening a replica placed here; will retry");
                }
            }
        }
        let leaving: Vec<u32> = hosted
            .iter()
            .copied()
            .filter(|v| !catalog.wants_replica(*v, me))
            .collect();
        if leaving.is_empty() || reg.meta_barrier(Duration::from_secs(2)).await.is_err() {
            return;
        }
        let catalog = reg.catalog().read().clone();
        let counts = self.leaderships();
        for v in leaving {
            if catalog.wants_replica(v, me) {
                continue;
            }
            let Some(g) = reg.group_state(shoal_common::ids::group_of_vshard(v)) else {
                continue;
            };
            if g.leads() && g.voters.len() > 1 {
                // Hand the group over first; close on a later round.
                if let Some(to) = handoff_target(
                    &g,
                    None,
                    |n| self.alive(n),
                    |n| counts.get(&n).copied().unwrap_or(0),
                ) {
                    let _ = reg
                        .change_membership(g.group, MembershipChange::TransferLeader(to))
                        .await;
                }
                continue;
            }
            if let Err(e) = reg.close_vshard(v, true).await {
                tracing::warn!(vshard = v, error = %e, "closing a replica no longer placed here");
            }
        }
    }

    /// Leaderships per node as reported, for choosing whom to hand leadership to.
    fn leaderships(&self) -> BTreeMap<u64, usize> {
        let view = self.view();
        leader_counts(&view, &crate::leaders::leaders(&view, &BTreeMap::new()))
    }

    fn view(&self) -> ClusterView {
        let catalog = self.registry().catalog().read().clone();
        ClusterView::new(
            &catalog,
            self.cfg.vshards,
            now_ms(),
            |n| (self.alive(n), self.down_for(n)),
            |n| {
                if n == self.me() {
                    Some((*self.parts.sampler.current()).clone())
                } else {
                    self.reports.get(n)
                }
            },
        )
    }

    /// On group 0's leader: its voters and learners follow the registry; caught-up JOINING
    /// nodes become ACTIVE.
    async fn group0_membership(self: Arc<Self>) {
        let reg = self.registry();
        let Some(g) = reg.group_state(0) else { return };
        if !g.leads() {
            return;
        }
        let view = self.view();
        // Group 0's membership takes effect when appended, its catalog when applied: the
        // registry is as new as the membership only once everything up to it is applied.
        let fresh = g.applied >= g.membership_index;
        let target = group0_target(
            &g,
            &view.nodes,
            self.cfg.max_voters,
            self.cfg.placement.dead_replica_timeout,
            fresh,
        );
        let catalog = reg.catalog().read().clone();
        for n in catalog.nodes.values() {
            if n.state == NodeState::Joining && g.members().contains(&n.id) && g.caught_up(n.id) {
                tracing::info!(node = n.id, "node caught up with group 0; ACTIVE");
                self.propose(
                    ClusterOp::SetState {
                        id: n.id,
                        state: NodeState::Active,
                        now_ms: now_ms(),
                    },
                    "activating a caught-up node",
                )
                .await;
            }
        }
        let counts = self.leaderships();
        let steps = plan(
            &g,
            &target,
            |n| self.alive(n),
            |n| counts.get(&n).copied().unwrap_or(0),
        );
        self.execute(&g, None, steps).await;
    }

    /// On each vshard's leader here: membership follows the placement and the move under
    /// way is driven.
    async fn vshard_membership(self: Arc<Self>) {
        let reg = self.registry();
        if !reg.meta_view().caught_up {
            return;
        }
        let led: Vec<(u32, GroupState)> = reg
            .vshard_states()
            .into_iter()
            .filter(|(_, g)| g.leads())
            .collect();
        if led.is_empty() {
            return;
        }
        let counts = self.leaderships();
        let alive = |n: u64| self.alive(n);
        let load = |n: u64| counts.get(&n).copied().unwrap_or(0);
        let mut catalog = reg.catalog().read().clone();
        // Plan on this node's copy of group 0 first; only if some group would remove a
        // member is that copy confirmed current (one read index), then planned again.
        let needs_fresh = led.iter().any(|(v, g)| {
            plan(g, &vshard_target(&catalog, *v, false), alive, load)
                != plan(g, &vshard_target(&catalog, *v, true), alive, load)
        });
        let fresh = needs_fresh && reg.meta_barrier(Duration::from_secs(2)).await.is_ok();
        if fresh {
            catalog = reg.catalog().read().clone();
        }
        let work = led.into_iter().map(|(v, g)| {
            let target = vshard_target(&catalog, v, fresh);
            let steps = plan(&g, &target, alive, load);
            let this = self.clone();
            async move {
                this.watch_move(&g, &target).await;
                this.execute(&g, target.mv.map(|m| m.id), steps).await;
            }
        });
        futures::future::join_all(work).await;
    }

    /// Carries out the first of `steps` for group `g`; a failure counts against the move
    /// under way (if any), which backs off before its next attempt.
    async fn execute(&self, g: &GroupState, mv: Option<u64>, steps: Vec<Step>) {
        let Some(step) = steps.into_iter().next() else {
            return;
        };
        if let Some(id) = mv {
            let p = self.moves.lock().get(&id).copied();
            if p.is_some_and(|p| Instant::now() < p.retry_at) {
                return;
            }
        }
        let r = match step {
            Step::Change(change) => {
                let what = format!("{change:?}");
                match self.registry().change_membership(g.group, change).await {
                    // Leadership moved on: the new leader carries on; not the move's fault.
                    Err(shoal_consensus::Error::NotLeader { .. }) => Ok(()),
                    r => r.map_err(|e| format!("{what}: {e}")),
                }
            }
            Step::Record { id, update } => {
                let state = match &update {
                    MoveUpdate::Advance(s) => s.as_str(),
                    _ => "",
                };
                let r = self
                    .propose(
                        ClusterOp::UpdateMove {
                            id,
                            update,
                            now_ms: now_ms(),
                        },
                        "recording a move's progress",
                    )
                    .await;
                if r.is_some() {
                    tracing::info!(
                        move_id = id,
                        group = g.group,
                        state,
                        "replica move advanced"
                    );
                }
                Ok(())
            }
        };
        if let (Err(error), Some(id)) = (r, mv) {
            self.failed_attempt(id, error).await;
        }
    }

    /// Counts a failed attempt at the current step of move `id` (FAILED after three) and
    /// backs off: 2 s, 4 s, 8 s.
    async fn failed_attempt(&self, id: u64, error: String) {
        tracing::warn!(move_id = id, error = %error, "a replica move step failed; will retry");
        let attempts = self
            .registry()
            .catalog()
            .read()
            .moves
            .get(&id)
            .map_or(0, |m| m.attempts);
        {
            let mut moves = self.moves.lock();
            let now = Instant::now();
            let p = moves.entry(id).or_insert(MoveProgress::new((0, 0), now));
            p.retry_at = now + Duration::from_secs(2u64 << attempts.min(4));
        }
        self.propose(
            ClusterOp::UpdateMove {
                id,
                update: MoveUpdate::Attempt { error },
                now_ms: now_ms(),
            },
            "recording a failed move step",
        )
        .await;
    }

    /// While a move's target catches up: records snapshot progress now and then, and
    /// counts a failed attempt when it made no progress for `move_stall_timeout`.
    async fn watch_move(&self, g: &GroupState, t: &Target) {
        let Some(m) =
            t.mv.filter(|m| matches!(m.state, MoveState::CatchingUp | MoveState::Swapping))
        else {
            return;
        };
        let sent = self
            .registry()
            .snapshot_sends()
            .into_iter()
            .find(|(group, to, _, _)| *group == g.group && *to == m.to)
            .map(|(_, _, sent, total)| (sent, total));
        // Progress: the target's log while catching up; while swapping, only leaving the
        // state counts (a swap takes a hand-off and one joint change, seconds at most).
        let matched = match m.state {
            MoveState::CatchingUp => g.matched.get(&m.to).copied().flatten().unwrap_or(0),
            _ => 0,
        };
        let mark = (matched, sent.map_or(0, |s| s.0));
        let now = Instant::now();
        let (stalled, report) = {
            let mut moves = self.moves.lock();
            let p = moves.entry(m.id).or_insert(MoveProgress::new(mark, now));
            if p.mark != mark {
                p.mark = mark;
                p.since = now;
            }
            let stalled = now.duration_since(p.since) >= self.cfg.move_stall_timeout;
            if stalled {
                p.since = now;
            }
            // Progress is recorded at the start, at most every 2 s, and once more when the
            // send finished (it is gone from the list then).
            let current = match (sent, p.seen) {
                (Some(s), _) => Some(s),
                (None, Some((_, total))) => Some((total, total)),
                (None, None) => None,
            };
            p.seen = sent;
            let due = p
                .reported_at
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(2))
                || sent.is_none();
            let report = current.filter(|(b, _)| *b != p.reported_bytes && due);
            if let Some((b, _)) = report {
                p.reported_bytes = b;
                p.reported_at = Some(now);
            }
            (stalled, report)
        };
        if let Some((bytes_copied, bytes_total)) = report {
            self.propose(
                ClusterOp::UpdateMove {
                    id: m.id,
                    update: MoveUpdate::Progress {
                        bytes_copied,
                        bytes_total,
                    },
                    now_ms: now_ms(),
                },
                "recording snapshot progress",
            )
            .await;
        }
        if stalled {
            self.failed_attempt(
                m.id,
                format!(
                    "no progress {} for {} s (move_stall_timeout_ms)",
                    match m.state {
                        MoveState::CatchingUp => format!("catching node {} up", m.to),
                        _ => "swapping the replicas".to_string(),
                    },
                    self.cfg.move_stall_timeout.as_secs()
                ),
            )
            .await;
        }
    }

    /// On group 0's leader: proposes what the placement planner asks for.
    async fn placement(self: Arc<Self>) {
        if !self.leads_group0() {
            self.down_since.lock().clear();
            return;
        }
        self.update_down_since();
        let view = self.view();
        self.log_stalled_decommissions(&view);
        self.log_short_for_disk(&view);
        for step in crate::placement::plan(&view, &self.cfg.placement) {
            let (op, what) = match step.clone() {
                PlacementStep::InitPlacement { replicas } => (
                    ClusterOp::InitPlacement {
                        vshards: self.cfg.vshards,
                        replicas,
                    },
                    "recording the placement",
                ),
                PlacementStep::AddReplicas { vshard, add } => {
                    (ClusterOp::AddReplicas { vshard, add }, "adding replicas")
                }
                PlacementStep::StartMove {
                    vshard,
                    from,
                    to,
                    reason,
                } => (
                    ClusterOp::StartMove {
                        vshard,
                        from,
                        to,
                        reason,
                        now_ms: now_ms(),
                    },
                    "starting a replica move",
                ),
                PlacementStep::Retire { node, .. } => (
                    ClusterOp::SetState {
                        id: node,
                        state: NodeState::Decommissioned,
                        now_ms: now_ms(),
                    },
                    "retiring a node that holds nothing any more",
                ),
                PlacementStep::CancelMove { id, why } => (
                    ClusterOp::UpdateMove {
                        id,
                        update: MoveUpdate::Cancel { why },
                        now_ms: now_ms(),
                    },
                    "cancelling a move whose target is gone",
                ),
            };
            if let Some(r) = self.propose(op, what).await {
                match (&step, r) {
                    (
                        PlacementStep::StartMove {
                            vshard,
                            from,
                            to,
                            reason,
                        },
                        Response::Move { id },
                    ) => {
                        tracing::info!(move_id = id, vshard, from, to, reason = %reason, "replica move started")
                    }
                    _ => tracing::info!(step = ?step, "placement changed"),
                }
            }
        }
    }

    /// On group 0's leader: a decommission without progress for `decommission_stall` is
    /// logged (again every `decommission_stall` while it stays stalled), naming each
    /// vshard still on the leaving node and why it is not moving.
    /// WARNs, at most once per [`SHORT_FOR_DISK_LOG_EVERY`], when full disks keep vshards
    /// below the replication factor (the planner otherwise just places nothing).
    fn log_short_for_disk(&self, view: &ClusterView) {
        let Some(why) = crate::placement::short_for_disk(view, &self.cfg.placement) else {
            return;
        };
        let mut last = self.short_for_disk_logged.lock();
        if last.is_some_and(|t| t.elapsed() < SHORT_FOR_DISK_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!("{why}");
    }

    fn log_stalled_decommissions(&self, view: &ClusterView) {
        let stall = self.cfg.decommission_stall;
        let mut logged = self.stall_logged.lock();
        logged.retain(|n, _| {
            view.nodes
                .get(n)
                .is_some_and(|x| x.state == NodeState::Decommissioning)
        });
        for n in view.nodes.values() {
            let Some(p) = crate::decommission::progress(
                view,
                n.id,
                stall.as_millis() as u64,
                &self.cfg.placement,
            ) else {
                continue;
            };
            if p.stalled_ms.is_none() || logged.get(&n.id).is_some_and(|t| t.elapsed() < stall) {
                continue;
            }
            logged.insert(n.id, Instant::now());
            tracing::warn!(node = n.id, progress = %p, "decommission stalled");
        }
    }

    /// Notes since when SWIM has reported each registered node down.
    fn update_down_since(&self) {
        let ids: Vec<u64> = self
            .registry()
            .catalog()
            .read()
            .nodes
            .keys()
            .copied()
            .filter(|n| *n != self.me())
            .collect();
        let now = Instant::now();
        let mut down = self.down_since.lock();
        let mut next = BTreeMap::new();
        for id in ids {
            let is_down = matches!(
                self.parts.membership.state_of(id),
                None | Some(MemberState::Dead | MemberState::Left)
            );
            if is_down {
                next.insert(id, down.get(&id).copied().unwrap_or(now));
            }
        }
        *down = next;
    }

    /// On group 0's leader: asks over-loaded leaders to hand vshards to replicas that
    /// lead fewer.
    async fn leader_balance(self: Arc<Self>) {
        if !self.leads_group0() {
            return;
        }
        let view = self.view();
        let pending: BTreeMap<u32, u64> = {
            let mut p = self.pending_transfers.lock();
            // Long enough for a transfer to happen and show in the next reports.
            let keep = self.cfg.report_interval * 2 + Duration::from_secs(1);
            p.retain(|_, (_, at)| at.elapsed() < keep);
            p.iter().map(|(v, (to, _))| (*v, *to)).collect()
        };
        let transfers = plan_transfers(&view, &pending, self.cfg.vshards as usize);
        for t in transfers {
            let r = if t.from == self.me() {
                Ok(self.registry().transfer_vshard_leader(t.vshard, t.to).await)
            } else {
                self.registry()
                    .ask_leader_transfer(t.from, t.vshard, t.to)
                    .await
            };
            match r {
                Ok(true) => {
                    self.pending_transfers
                        .lock()
                        .insert(t.vshard, (t.to, std::time::Instant::now()));
                    tracing::info!(
                        vshard = t.vshard,
                        from = t.from,
                        to = t.to,
                        "balancing vshard leadership"
                    )
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(vshard = t.vshard, error = %e, "leader transfer not asked")
                }
            }
        }
    }

    /// Samples this node's load, then `Hello` to every registered peer: clock offsets and
    /// their load reports.
    async fn reports(self: Arc<Self>) {
        let me = self.me();
        let local = self.parts.sampler.sample(self.registry());
        self.reports.record(me, (*local).clone());
        let nodes = self.registry().catalog().read().nodes.clone();
        let peers = &self.parts.peers;
        let probes = nodes
            .values()
            .filter(|n| n.id != me && n.state != NodeState::Decommissioned)
            .map(|n| async move {
                let sent = shoal_common::time::now_nanos();
                let r = peers
                    .call(n.id, &n.addrs.rpc, |mut c| async move {
                        c.hello(Duration::from_secs(1)).await
                    })
                    .await;
                let received = shoal_common::time::now_nanos();
                (n.id, r.map(|h| (h, sent, received)))
            });
        for (id, r) in futures::future::join_all(probes).await {
            let Ok((h, sent, received)) = r else { continue };
            if h.wall_ns != 0 {
                self.parts
                    .clocks
                    .record(id, Sample::from_round_trip(sent, h.wall_ns, received));
            }
            if let Ok(load) = serde_json::from_slice(&h.load) {
                self.reports.record(id, load);
            }
            if h.caller_decommissioned && !self.refused.swap(true, Ordering::AcqRel) {
                tracing::error!(by = id, "the cluster says this node is decommissioned");
            }
        }
        for n in nodes
            .values()
            .filter(|n| n.state == NodeState::Decommissioned)
        {
            self.parts.clocks.forget(n.id);
            self.reports.forget(n.id);
        }
        let has_peers = nodes
            .values()
            .any(|n| n.id != me && n.state != NodeState::Decommissioned);
        self.parts.clocks.healthy(has_peers);
    }

    /// SWIM announcements to registered nodes it does not see alive (a fresh start, a
    /// healed partition, a node back from the dead).
    async fn introduce(self: Arc<Self>) {
        let nodes = self.registry().catalog().read().nodes.clone();
        for n in nodes.values() {
            if n.id == self.me() || n.state == NodeState::Decommissioned {
                continue;
            }
            if matches!(
                self.parts.membership.state_of(n.id),
                Some(MemberState::Alive | MemberState::Suspect)
            ) {
                continue;
            }
            if let Ok(addr) = n.addrs.gossip.parse() {
                self.parts
                    .membership
                    .announce(NodeIdentity {
                        node_id: n.id,
                        gossip_addr: addr,
                        generation: 0,
                    })
                    .await;
            }
        }
    }

    /// Whether this node must lead nothing: it is draining (here, or DRAINING or
    /// DECOMMISSIONING in group 0).
    fn sheds(&self) -> bool {
        self.draining.load(Ordering::Acquire)
            || self
                .registry()
                .catalog()
                .read()
                .nodes
                .get(&self.me())
                .is_some_and(|n| crate::leaders::sheds_leaderships(n.state))
    }

    /// A draining or leaving node hands every leadership away (group 0's too); a node whose
    /// disk dropped below `min_free_disk_bytes` cannot append, so it hands its vshards to
    /// followers holding every entry.
    async fn shed(self: Arc<Self>) {
        if self.sheds() {
            self.shed_leaderships(true, "draining").await;
        } else if self.registry().check_disk().is_err() {
            self.shed_leaderships(false, "disk full").await;
        }
    }

    /// Asks each group led here (vshards, and group 0 if `group0`) to hand leadership to a
    /// caught-up voter that may lead (alive, ACTIVE), skipping groups with a transfer
    /// already pending. Answers the groups still led here.
    async fn shed_leaderships(&self, group0: bool, why: &str) -> Vec<u32> {
        let reg = self.registry();
        let counts = self.leaderships();
        let may_lead = |n: u64| {
            self.alive(n)
                && reg
                    .catalog()
                    .read()
                    .nodes
                    .get(&n)
                    .is_some_and(|e| e.state == NodeState::Active)
        };
        let mut groups: Vec<GroupState> = reg.vshard_states().into_values().collect();
        if group0 {
            groups.extend(reg.group_state(0));
        }
        let mut led = vec![];
        for g in groups.into_iter().filter(|g| g.leads()) {
            led.push(g.group);
            if reg.transfer_pending(g.group) {
                continue;
            }
            let Some(to) =
                handoff_target(&g, None, may_lead, |n| counts.get(&n).copied().unwrap_or(0))
            else {
                continue;
            };
            tracing::info!(group = g.group, to, why, "handing leadership away");
            let _ = reg
                .change_membership(g.group, MembershipChange::TransferLeader(to))
                .await;
        }
        led
    }

    /// Leadership transfers stuck on a target that died meanwhile are asked again.
    async fn unstick(self: Arc<Self>) {
        self.registry().unstick_transfers(|n| self.alive(n)).await;
    }

    async fn closed_ts(self: Arc<Self>) {
        self.registry().publish_closed().await;
    }

    async fn quiesce(self: Arc<Self>) {
        self.registry().quiesce_idle(self.cfg.quiesce_after).await;
    }

    async fn replica_gc(self: Arc<Self>) {
        let reg = self.parts.registry.clone();
        let grace = self.cfg.replica_gc_grace;
        let _ = tokio::task::spawn_blocking(move || reg.collect_removed(grace)).await;
    }

    async fn meta_health(self: Arc<Self>) {
        if self
            .registry()
            .meta_barrier(Duration::from_secs(1))
            .await
            .is_ok()
        {
            self.meta_ok_ms.store(now_ms(), Ordering::Release);
        }
    }
}
