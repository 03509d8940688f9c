//! What the planners see: the cluster as group 0 records it, plus what each node reports of
//! its load and what SWIM says of its liveness. Plain data, built by the controller; the
//! planners never look anywhere else.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_consensus::{Catalog, ClusterSettings, MoveRecord, NodeState};

/// A node's report of its own load, carried in its `Hello` answer (JSON, so fields can be
/// added without breaking older nodes). Unknown fields default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeLoad {
    /// Share of the machine's CPU this process used over the last interval (0..=1).
    pub cpu: f64,
    /// The data directory's file system.
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    /// Bytes of vshard data hosted here (Parquet parts and hot buffers).
    pub data_bytes: u64,
    /// Per hosted vshard: its bytes here, rows written per second, and, when this node
    /// leads it, the term.
    pub vshards: Vec<VshardLoad>,
    /// Shoal's version and the wire protocol version it speaks.
    pub version: String,
    /// Unix ms when the process started.
    pub started_ms: u64,
    /// Unix ms when the node's TLS certificate or its CA expires, whichever is sooner
    /// (0: no TLS).
    pub cert_expires_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VshardLoad {
    pub vshard: u32,
    pub bytes: u64,
    pub rows_per_sec: f64,
    /// `Some(term)` when the reporting node leads the vshard.
    pub leader_term: Option<u64>,
}

impl NodeLoad {
    /// Used share of the data directory's disk (0 when unknown).
    pub fn disk_used_fraction(&self) -> f64 {
        if self.disk_total_bytes == 0 {
            return 0.0;
        }
        1.0 - self.disk_free_bytes as f64 / self.disk_total_bytes as f64
    }
}

/// One registered node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: u64,
    pub state: NodeState,
    pub rpc_addr: String,
    /// SWIM says ALIVE.
    pub alive: bool,
    /// How long SWIM has reported it DEAD or LEFT (or does not know it), if it does.
    pub down_for: Option<Duration>,
    /// Its latest report, if a recent one arrived.
    pub load: Option<NodeLoad>,
    /// When its lifecycle state last changed (unix ms; 0: not recorded).
    pub state_since_ms: u64,
}

/// The cluster as the group-0 leader sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub vshards: u32,
    pub nodes: BTreeMap<u64, NodeView>,
    /// Group 0 has a placement for every vshard (older catalogs do not).
    pub placement_recorded: bool,
    /// Per vshard: the nodes holding its replicas.
    pub replicas: Vec<Vec<u64>>,
    /// Moves under way and recently finished.
    pub moves: Vec<MoveRecord>,
    pub settings: ClusterSettings,
    /// Unix ms now, as the caller's clock says (for cooldowns against move times).
    pub now_ms: u64,
}

impl ClusterView {
    /// Builds the view from group 0's catalog and what the caller knows of each node.
    pub fn new(
        catalog: &Catalog,
        vshards: u32,
        now_ms: u64,
        live: impl Fn(u64) -> (bool, Option<Duration>),
        load: impl Fn(u64) -> Option<NodeLoad>,
    ) -> ClusterView {
        let nodes = catalog
            .nodes
            .values()
            .map(|n| {
                let (alive, down_for) = live(n.id);
                (
                    n.id,
                    NodeView {
                        id: n.id,
                        state: n.state,
                        rpc_addr: n.addrs.rpc.clone(),
                        alive,
                        down_for,
                        load: load(n.id),
                        state_since_ms: n.state_since_ms,
                    },
                )
            })
            .collect();
        ClusterView {
            vshards,
            nodes,
            placement_recorded: (0..vshards).all(|v| catalog.placement.contains_key(&v)),
            replicas: (0..vshards).map(|v| catalog.replicas(v)).collect(),
            moves: catalog.moves.values().cloned().collect(),
            settings: catalog.settings.clone(),
            now_ms,
        }
    }

    /// The move under way on vshard `v`.
    pub fn active_move(&self, v: u32) -> Option<&MoveRecord> {
        self.moves
            .iter()
            .find(|m| m.vshard == v && m.state.active())
    }

    /// The node registered later at `n`'s RPC address, if any: `n`'s identity is gone
    /// (an address is one process; typically a wiped disk that joined again).
    pub fn successor(&self, n: u64) -> Option<u64> {
        let old = self.nodes.get(&n)?;
        if old.rpc_addr.is_empty() {
            return None;
        }
        self.nodes
            .values()
            .filter(|o| o.state != NodeState::Decommissioned)
            .find(|o| o.id > n && o.rpc_addr == old.rpc_addr)
            .map(|o| o.id)
    }

    /// Bytes of vshard `v` as its replicas report them (the largest report; 0 unknown).
    pub fn vshard_bytes(&self, v: u32) -> u64 {
        self.vshard_loads(v).map(|l| l.bytes).max().unwrap_or(0)
    }

    /// Rows per second written to vshard `v` (the largest report).
    pub fn vshard_rate(&self, v: u32) -> f64 {
        self.vshard_loads(v)
            .map(|l| l.rows_per_sec)
            .fold(0.0, f64::max)
    }

    fn vshard_loads(&self, v: u32) -> impl Iterator<Item = &VshardLoad> {
        self.nodes
            .values()
            .filter_map(|n| n.load.as_ref())
            .flat_map(|l| l.vshards.iter())
            .filter(move |l| l.vshard == v)
    }

    /// Vshard `v`'s leader as reported (the report with the highest term wins).
    pub fn leader_of(&self, v: u32) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| {
                n.load
                    .as_ref()?
                    .vshards
                    .iter()
                    .find(|l| l.vshard == v)?
                    .leader_term
                    .map(|t| (t, n.id))
            })
            .max()
            .map(|(_, id)| id)
    }
}

/// Views for the planners' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// An ACTIVE, alive node at `10.0.0.<id>:7400` with no report.
    pub fn active_node(id: u64) -> NodeView {
        NodeView {
            id,
            state: NodeState::Active,
            rpc_addr: format!("10.0.0.{id}:7400"),
            alive: true,
            down_for: None,
            load: None,
            state_since_ms: 0,
        }
    }

    /// `vshards` vshards over nodes 1..=n, each on three consecutive nodes; every node
    /// ACTIVE, alive and reporting each vshard it holds (no bytes, no leadership).
    pub fn striped(n: u64, vshards: u32) -> ClusterView {
        let replicas: Vec<Vec<u64>> = (0..vshards)
            .map(|v| {
                let mut r: Vec<u64> = (0..3).map(|k| 1 + (u64::from(v) + k) % n).collect();
                r.sort_unstable();
                r.dedup();
                r
            })
            .collect();
        let nodes = (1..=n)
            .map(|id| {
                let vshards = (0..vshards)
                    .filter(|v| replicas[*v as usize].contains(&id))
                    .map(|vshard| VshardLoad {
                        vshard,
                        ..Default::default()
                    })
                    .collect();
                let node = NodeView {
                    load: Some(NodeLoad {
                        vshards,
                        ..Default::default()
                    }),
                    ..active_node(id)
                };
                (id, node)
            })
            .collect();
        ClusterView {
            vshards,
            nodes,
            placement_recorded: true,
            replicas,
            ..Default::default()
        }
    }
}
