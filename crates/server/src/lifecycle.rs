//! A node's drain: what SIGTERM, `POST /health/drain` and `shoal node drain` run.
//!
//! 1. **Unready**: `/health/ready` answers 503 at once and group 0 records the node
//!    DRAINING (so no leadership or replica move is sent its way); it keeps serving for
//!    `drain_wait_unready_ms`, so balancers and clients that poll readiness go elsewhere
//!    before anything is refused.
//! 2. On the way out only: **stop accepting** HTTP and Postgres connections.
//! 3. **Hand off**: every leadership held here (group 0 and vshards) goes to a caught-up
//!    peer, for at most `drain_transfer_timeout_ms`.
//! 4. On the way out only (in `run`): in-flight requests finish (up to
//!    `drain_timeout_ms`), every vshard is flushed, the node announces LEFT (peers elect at
//!    once for anything it still led) and the process exits 0.
//!
//! A drain that does not exit leaves the node up, unready and leading nothing until
//! `shoal node undrain` or a restart (a restarted node makes itself ACTIVE again).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use shoal_cluster::controller::Controller;
use shoal_consensus::{NodeState, Registry};

use crate::http::AppState;

/// Longest a drain waits for group 0 to record this node DRAINING (it drains anyway).
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// The drain's knobs.
#[derive(Clone, Copy, Debug)]
pub struct DrainConfig {
    pub wait_unready: Duration,
    pub transfer_timeout: Duration,
}

/// What a drain did, phase by phase (the admin API's answer and the log line).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrainReport {
    pub node_id: u64,
    /// Whether group 0 recorded the node DRAINING (it drains locally either way).
    pub recorded: bool,
    pub unready_wait_ms: u64,
    pub handoff_ms: u64,
    /// Groups (0 = group 0, v + 1 = vshard v) still led here when the hand-off gave up.
    pub still_leading: Vec<u32>,
}

/// The node's lifecycle: its drain state and the parts a drain drives (set once
/// recovery finished).
pub struct Lifecycle {
    pub node_id: u64,
    cfg: DrainConfig,
    http: Arc<AppState>,
    parts: OnceLock<(Arc<Registry>, Arc<Controller>)>,
    /// One drain or undrain at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Lifecycle {
    pub fn new(node_id: u64, cfg: DrainConfig, http: Arc<AppState>) -> Lifecycle {
        Lifecycle {
            node_id,
            cfg,
            http,
            parts: OnceLock::new(),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Called once recovery finished.
    pub fn set_parts(&self, registry: Arc<Registry>, controller: Arc<Controller>) {
        let _ = self.parts.set((registry, controller));
    }

    pub fn draining(&self) -> bool {
        self.http.draining.load(Ordering::Acquire)
    }

    /// Phase 1: unready now, DRAINING in group 0, then keep serving for
    /// `drain_wait_unready_ms` (skipped when no other node is registered).
    pub async fn begin(&self, report: &mut DrainReport) {
        report.node_id = self.node_id;
        self.http.draining.store(true, Ordering::Release);
        let Some((registry, controller)) = self.parts.get() else {
            return;
        };
        controller.set_draining(true);
        let recorded = tokio::time::timeout(
            RECORD_TIMEOUT,
            controller.set_node_state(self.node_id, NodeState::Draining),
        )
        .await;
        report.recorded = matches!(recorded, Ok(Ok(())));
        if let Ok(Err(e)) = &recorded {
            tracing::warn!(error = %e, "group 0 did not record the drain; draining anyway");
        } else if recorded.is_err() {
            tracing::warn!("group 0 did not answer in time; draining anyway");
        }
        let peers = registry
            .catalog()
            .read()
            .nodes
            .values()
            .any(|n| n.id != self.node_id && n.state != NodeState::Decommissioned);
        let t = Instant::now();
        if peers && !self.cfg.wait_unready.is_zero() {
            tracing::info!(
                drain_wait_unready_ms = self.cfg.wait_unready.as_millis() as u64,
                "draining: unready, still serving while clients move away"
            );
            tokio::time::sleep(self.cfg.wait_unready).await;
        }
        report.unready_wait_ms = t.elapsed().as_millis() as u64;
    }

    /// Phase 3: every leadership held here to a caught-up peer.
    pub async fn hand_off(&self, report: &mut DrainReport) {
        let Some((_, controller)) = self.parts.get() else {
            return;
        };
        let t = Instant::now();
        report.still_leading = controller
            .hand_off_leaderships(self.cfg.transfer_timeout)
            .await;
        report.handoff_ms = t.elapsed().as_millis() as u64;
        if report.still_leading.is_empty() {
            tracing::info!(
                handoff_ms = report.handoff_ms,
                "draining: leads nothing now"
            );
        } else {
            tracing::warn!(
                groups = ?report.still_leading,
                drain_transfer_timeout_ms = self.cfg.transfer_timeout.as_millis() as u64,
                "draining: these groups found no caught-up peer to lead them"
            );
        }
    }

    /// A drain that keeps the node up (`POST /health/drain`, `shoal node drain`). Draining
    /// a node that is already draining hands off anything it leads again.
    pub async fn drain(&self) -> DrainReport {
        let _one = self.busy.lock().await;
        let mut report = DrainReport::default();
        if self.draining() {
            report.node_id = self.node_id;
            report.recorded = true;
        } else {
            self.begin(&mut report).await;
        }
        self.hand_off(&mut report).await;
        report
    }

    /// Ends a drain that kept the node up: ACTIVE in group 0, then ready again.
    pub async fn undrain(&self) -> Result<(), String> {
        let _one = self.busy.lock().await;
        let Some((_, controller)) = self.parts.get() else {
            return Err("the node is still recovering".into());
        };
        tokio::time::timeout(
            RECORD_TIMEOUT,
            controller.set_node_state(self.node_id, NodeState::Active),
        )
        .await
        .map_err(|_| "group 0 did not answer in time; try again".to_string())??;
        controller.set_draining(false);
        self.http.draining.store(false, Ordering::Release);
        tracing::info!("undrained: ACTIVE and ready again");
        Ok(())
    }
}
