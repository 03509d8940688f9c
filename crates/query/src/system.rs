//! The `system` schema: the cluster, this node's Raft groups and the catalog as tables,
//! usable with WHERE, JOIN and ORDER BY. Each table is a snapshot taken when a statement is
//! planned. `SHOW NODES`, `SHOW SHARDS`, `SHOW REPLICAS`, `SHOW MOVES` and
//! `SHOW ROUTING FOR '<key>'` read the same data.
//!
//! | table | one row per | from |
//! |---|---|---|
//! | `nodes` | registered node | group 0's registry, SWIM, the nodes' load reports |
//! | `shards` | vshard, cluster-wide | group 0's placement and moves, leaders as reported |
//! | `replicas` | replica on this node | this node's Raft groups and storage |
//! | `moves` | replica move (under way and recent) | group 0 |
//! | `tables`, `columns` | table, column | group 0's catalog |

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::common::Result as DfResult;
use datafusion::datasource::{MemTable, TableProvider};
use shoal_common::hash::vshard_for_key;
use shoal_consensus::Registry;

/// This node's addresses, as `system.nodes` shows them, and where SWIM states come from.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub http_addr: String,
    pub pg_addr: String,
    pub rpc_addr: String,
    pub gossip_addr: String,
    /// A node's SWIM state (`ALIVE`, `SUSPECT`, `DEAD`, `LEFT`).
    pub liveness: Lookup,
    /// This node's circuit breaker towards a node (`closed`, `open`, `half_open`).
    pub breaker: Lookup,
    /// A node's clock minus this node's (ms), as last measured.
    pub clock_offset: LookupI64,
    /// What the control plane knows from the nodes' load reports.
    pub reports: Option<Arc<dyn ClusterReports>>,
}

/// What the nodes report of themselves (the control plane's latest reports).
pub trait ClusterReports: Send + Sync + fmt::Debug {
    /// Vshard `v`'s leader as reported (the highest term wins).
    fn leader_of(&self, v: u32) -> Option<u64>;
    /// Vshard `v`'s bytes as its replicas report them.
    fn vshard_bytes(&self, v: u32) -> Option<u64>;
    /// A node's latest report, if recent.
    fn node(&self, node: u64) -> Option<NodeReport>;
    /// How a DECOMMISSIONING node's decommission is going, in words (replicas and bytes
    /// left, moves in flight, elapsed, estimate, a stall and its reasons).
    fn decommission(&self, _node: u64) -> Option<String> {
        None
    }
}

/// A node's report as `system.nodes` shows it.
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    pub leaderships: u64,
    pub data_bytes: u64,
    pub disk_free_bytes: u64,
    pub cpu: f64,
    pub version: String,
    pub started_ms: u64,
    /// Unix ms when its TLS certificate or CA expires, whichever is sooner (0: no TLS).
    pub cert_expires_ms: u64,
}

/// Looks up a per-node number; `None` = unknown.
#[derive(Clone, Default)]
pub struct LookupI64(pub Option<Arc<dyn Fn(u64) -> Option<i64> + Send + Sync>>);

impl fmt::Debug for LookupI64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupI64")
    }
}

/// Looks up a per-node string; `None` = unknown.
#[derive(Clone, Default)]
pub struct Lookup(pub Option<Arc<dyn Fn(u64) -> Option<&'static str> + Send + Sync>>);

impl Lookup {
    fn get(&self, id: u64) -> Option<String> {
        self.0.as_ref().and_then(|f| f(id)).map(str::to_string)
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Liveness")
    }
}

pub struct SystemSchema {
    registry: Arc<Registry>,
    node: NodeInfo,
}

impl fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemSchema")
    }
}

pub const SYSTEM_TABLES: &[&str] = &["nodes", "shards", "replicas", "moves", "tables", "columns"];

impl SystemSchema {
    pub fn new(registry: Arc<Registry>, node: NodeInfo) -> SystemSchema {
        SystemSchema { registry, node }
    }

    fn batch(&self, name: &str) -> Option<RecordBatch> {
        match name {
            "nodes" => Some(self.nodes()),
            "shards" => Some(self.shards()),
            "replicas" => Some(self.replicas()),
            "moves" => Some(self.moves()),
            "tables" => Some(self.tables()),
            "columns" => Some(self.columns()),
            _ => None,
        }
    }

    /// One row per registered node (group 0's registry), with its lifecycle state, its
    /// SWIM state as this node sees it, and its role in group 0.
    fn nodes(&self) -> RecordBatch {
        let me = self.registry.node_id();
        let view = self.registry.meta_view();
        let catalog = self.registry.catalog().read().clone();
        let mut rows: Vec<shoal_consensus::NodeEntry> = catalog.nodes.values().cloned().collect();
        if !rows.iter().any(|n| n.id == me) {
            // Not registered yet (joining): still show this node.
            rows.push(shoal_consensus::NodeEntry {
                id: me,
                addrs: shoal_consensus::NodeAddrs {
                    rpc: self.node.rpc_addr.clone(),
                    gossip: self.node.gossip_addr.clone(),
                    http: self.node.http_addr.clone(),
                    pg: self.node.pg_addr.clone(),
                },
                state: shoal_consensus::NodeState::Joining,
                token: 0,
                hosts_vshards: false,
                state_since_ms: 0,
            });
            rows.sort_by_key(|n| n.id);
        }
        let role = |id: u64| -> &'static str {
            if view.leader == Some(id) {
                "leader"
            } else if view.voters.contains(&id) {
                "voter"
            } else if view.learners.contains(&id) {
                "learner"
            } else {
                "none"
            }
        };
        let swim = |id: u64| -> Option<String> {
            if id == me {
                return Some("ALIVE".into());
            }
            self.node.liveness.get(id)
        };
        let replica_counts = catalog.replica_counts(self.registry.vshards());
        let report = |id: u64| self.node.reports.as_ref().and_then(|r| r.node(id));
        build(vec![
            ("node_id", u64s(rows.iter().map(|n| Some(n.id)).collect())),
            (
                "http_addr",
                strs(rows.iter().map(|n| Some(n.addrs.http.clone())).collect()),
            ),
            (
                "pg_addr",
                strs(rows.iter().map(|n| Some(n.addrs.pg.clone())).collect()),
            ),
            (
                "rpc_addr",
                strs(rows.iter().map(|n| Some(n.addrs.rpc.clone())).collect()),
            ),
            (
                "gossip_addr",
                strs(rows.iter().map(|n| Some(n.addrs.gossip.clone())).collect()),
            ),
            (
                "lifecycle",
                strs(rows.iter().map(|n| Some(n.state.as_str().into())).collect()),
            ),
            ("state", strs(rows.iter().map(|n| swim(n.id)).collect())),
            (
                "group0_role",
                strs(rows.iter().map(|n| Some(role(n.id).into())).collect()),
            ),
            // This node's view of group 0's term (the same in every row).
            (
                "group0_term",
                u64s(rows.iter().map(|_| Some(view.term)).collect()),
            ),
            (
                "breaker",
                strs(
                    rows.iter()
                        .map(|n| {
                            if n.id == me {
                                None
                            } else {
                                self.node.breaker.get(n.id)
                            }
                        })
                        .collect(),
                ),
            ),
            (
                "clock_offset_ms",
                Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|n| {
                            if n.id == me {
                                Some(0)
                            } else {
                                self.node.clock_offset.0.as_ref().and_then(|f| f(n.id))
                            }
                        })
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "is_self",
                Arc::new(BooleanArray::from(
                    rows.iter().map(|n| n.id == me).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            // Replicas group 0 places on the node now.
            (
                "replicas",
                u64s(
                    rows.iter()
                        .map(|n| Some(*replica_counts.get(&n.id).unwrap_or(&0) as u64))
                        .collect(),
                ),
            ),
            (
                "leaderships",
                u64s(
                    rows.iter()
                        .map(|n| report(n.id).map(|r| r.leaderships))
                        .collect(),
                ),
            ),
            (
                "data_bytes",
                u64s(
                    rows.iter()
                        .map(|n| report(n.id).map(|r| r.data_bytes))
                        .collect(),
                ),
            ),
            (
                "disk_free_bytes",
                u64s(
                    rows.iter()
                        .map(|n| report(n.id).map(|r| r.disk_free_bytes))
                        .collect(),
                ),
            ),
            (
                "cpu",
                Arc::new(datafusion::arrow::array::Float64Array::from(
                    rows.iter()
                        .map(|n| report(n.id).map(|r| r.cpu))
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "version",
                strs(
                    rows.iter()
                        .map(|n| report(n.id).map(|r| r.version))
                        .collect(),
                ),
            ),
            (
                "uptime_s",
                u64s(
                    rows.iter()
                        .map(|n| {
                            report(n.id)
                                .filter(|r| r.started_ms > 0)
                                .map(|r| now_ms().saturating_sub(r.started_ms) / 1000)
                        })
                        .collect(),
                ),
            ),
            // When `lifecycle` last changed (NULL: not recorded).
            (
                "lifecycle_since",
                Arc::new(
                    datafusion::arrow::array::TimestampMillisecondArray::from(
                        rows.iter()
                            .map(|n| (n.state_since_ms > 0).then_some(n.state_since_ms as i64))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            // When the node's TLS certificate (or its CA, if sooner) expires; NULL
            // without TLS or before the node reported.
            (
                "cert_expires_at",
                Arc::new(
                    datafusion::arrow::array::TimestampMillisecondArray::from(
                        rows.iter()
                            .map(|n| {
                                report(n.id)
                                    .filter(|r| r.cert_expires_ms > 0)
                                    .map(|r| r.cert_expires_ms as i64)
                            })
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            (
                "decommission",
                strs(
                    rows.iter()
                        .map(|n| {
                            self.node
                                .reports
                                .as_ref()
                                .and_then(|r| r.decommission(n.id))
                        })
                        .collect(),
                ),
            ),
        ])
    }

    /// One row per vshard, cluster-wide: where group 0 places its replicas, its move under
    /// way, and its leader and size as the replicas report them.
    fn shards(&self) -> RecordBatch {
        let catalog = self.registry.catalog().read().clone();
        let local = self.registry.status();
        let vshards: Vec<u32> = (0..self.registry.vshards()).collect();
        let here = |v: u32| local.iter().find(|g| g.vshard == Some(v));
        let leader = |v: u32| {
            here(v)
                .and_then(|g| g.leader)
                .or_else(|| self.node.reports.as_ref().and_then(|r| r.leader_of(v)))
        };
        let moving = |v: u32| {
            catalog
                .active_move(v)
                .map(|m| format!("{}: {} -> {} {}", m.id, m.from, m.to, m.state.as_str()))
        };
        build(vec![
            (
                "vshard",
                u64s(vshards.iter().map(|v| Some(u64::from(*v))).collect()),
            ),
            (
                "raft_group",
                u64s(vshards.iter().map(|v| Some(u64::from(*v) + 1)).collect()),
            ),
            (
                "replicas",
                strs(
                    vshards
                        .iter()
                        .map(|v| Some(list(&catalog.replicas(*v))))
                        .collect(),
                ),
            ),
            ("leader", u64s(vshards.iter().map(|v| leader(*v)).collect())),
            ("moving", strs(vshards.iter().map(|v| moving(*v)).collect())),
            (
                "hosted_here",
                Arc::new(BooleanArray::from(
                    vshards
                        .iter()
                        .map(|v| here(*v).is_some())
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "bytes",
                u64s(
                    vshards
                        .iter()
                        .map(|v| self.node.reports.as_ref().and_then(|r| r.vshard_bytes(*v)))
                        .collect(),
                ),
            ),
        ])
    }

    /// Replica moves, under way and recently finished (group 0 keeps the last 1,000).
    fn moves(&self) -> RecordBatch {
        let catalog = self.registry.catalog().read().clone();
        let m: Vec<_> = catalog.moves.values().collect();
        let ts = |ms: Vec<Option<u64>>| -> ArrayRef {
            Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from(
                    ms.into_iter()
                        .map(|x| x.map(|v| v as i64))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            )
        };
        build(vec![
            ("move_id", u64s(m.iter().map(|m| Some(m.id)).collect())),
            (
                "vshard",
                u64s(m.iter().map(|m| Some(u64::from(m.vshard))).collect()),
            ),
            ("from_node", u64s(m.iter().map(|m| Some(m.from)).collect())),
            ("to_node", u64s(m.iter().map(|m| Some(m.to)).collect())),
            (
                "state",
                strs(
                    m.iter()
                        .map(|m| Some(m.state.as_str().to_string()))
                        .collect(),
                ),
            ),
            (
                "reason",
                strs(m.iter().map(|m| Some(m.reason.clone())).collect()),
            ),
            (
                "attempts",
                u64s(m.iter().map(|m| Some(u64::from(m.attempts))).collect()),
            ),
            (
                "last_error",
                strs(
                    m.iter()
                        .map(|m| (!m.last_error.is_empty()).then(|| m.last_error.clone()))
                        .collect(),
                ),
            ),
            (
                "bytes_copied",
                u64s(m.iter().map(|m| Some(m.bytes_copied)).collect()),
            ),
            (
                "bytes_total",
                u64s(m.iter().map(|m| Some(m.bytes_total)).collect()),
            ),
            (
                "started",
                ts(m.iter().map(|m| Some(m.started_ms)).collect()),
            ),
            (
                "updated",
                ts(m.iter().map(|m| Some(m.updated_ms)).collect()),
            ),
        ])
    }

    /// One row per vshard replica hosted on this node: its Raft state and storage.
    fn replicas(&self) -> RecordBatch {
        let groups: Vec<_> = self
            .registry
            .status()
            .into_iter()
            .filter(|g| g.vshard.is_some())
            .collect();
        build(vec![
            (
                "vshard",
                u64s(groups.iter().map(|g| g.vshard.map(u64::from)).collect()),
            ),
            (
                "raft_group",
                u64s(groups.iter().map(|g| Some(u64::from(g.group))).collect()),
            ),
            ("leader", u64s(groups.iter().map(|g| g.leader).collect())),
            (
                "voters",
                strs(groups.iter().map(|g| Some(list(&g.replicas))).collect()),
            ),
            (
                "learners",
                strs(groups.iter().map(|g| Some(list(&g.learners))).collect()),
            ),
            (
                "joint_from",
                strs(
                    groups
                        .iter()
                        .map(|g| g.joint_from.as_deref().map(list))
                        .collect(),
                ),
            ),
            ("term", u64s(groups.iter().map(|g| Some(g.term)).collect())),
            (
                "role",
                strs(groups.iter().map(|g| Some(g.role.to_string())).collect()),
            ),
            // Where this node leads: each follower as `node:matched_index(+behind)`.
            (
                "followers",
                strs(
                    groups
                        .iter()
                        .map(|g| {
                            (!g.followers.is_empty()).then(|| {
                                g.followers
                                    .iter()
                                    .map(|(id, m, behind)| match m {
                                        Some(m) => format!("{id}:{m}(+{behind})"),
                                        None => format!("{id}:-"),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                        })
                        .collect(),
                ),
            ),
            (
                "quiesced",
                Arc::new(BooleanArray::from(
                    groups.iter().map(|g| g.quiesced).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "applied_index",
                u64s(groups.iter().map(|g| g.applied_index).collect()),
            ),
            (
                "last_log_index",
                u64s(groups.iter().map(|g| g.last_log_index).collect()),
            ),
            (
                "snapshot_index",
                u64s(groups.iter().map(|g| g.snapshot_index).collect()),
            ),
            // Every write acknowledged before `closed_ts` is applied on this replica, which
            // is `closed_lag_ms` behind this node's clock (NULL until known).
            (
                "closed_ts",
                Arc::new(
                    datafusion::arrow::array::TimestampNanosecondArray::from(
                        groups.iter().map(|g| g.closed_ts).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            (
                "closed_lag_ms",
                u64s(
                    groups
                        .iter()
                        .map(|g| {
                            g.closed_ts.map(|t| {
                                (shoal_common::time::now_nanos().saturating_sub(t) / 1_000_000)
                                    .max(0) as u64
                            })
                        })
                        .collect(),
                ),
            ),
            (
                "closed_reads",
                u64s(groups.iter().map(|g| Some(g.closed_reads)).collect()),
            ),
            (
                "hot_rows",
                u64s(groups.iter().map(|g| Some(g.stats.hot_rows)).collect()),
            ),
            (
                "hot_bytes",
                u64s(groups.iter().map(|g| Some(g.stats.hot_bytes)).collect()),
            ),
            (
                "parquet_files",
                u64s(groups.iter().map(|g| Some(g.stats.parts)).collect()),
            ),
            (
                "parquet_bytes",
                u64s(groups.iter().map(|g| Some(g.stats.part_bytes)).collect()),
            ),
            (
                "parquet_rows",
                u64s(groups.iter().map(|g| Some(g.stats.part_rows)).collect()),
            ),
        ])
    }

    fn tables(&self) -> RecordBatch {
        let catalog = self.registry.catalog().read().clone();
        let t: Vec<_> = catalog.tables.values().collect();
        build(vec![
            (
                "table_name",
                strs(t.iter().map(|e| Some(e.schema.name.clone())).collect()),
            ),
            ("table_id", u64s(t.iter().map(|e| Some(e.id)).collect())),
            (
                "partition_key",
                strs(t.iter().map(|e| e.schema.partition_key.clone()).collect()),
            ),
            (
                "columns",
                u64s(
                    t.iter()
                        .map(|e| Some(e.schema.columns.len() as u64))
                        .collect(),
                ),
            ),
            (
                "schema_version",
                u64s(t.iter().map(|_| Some(catalog.schema_version)).collect()),
            ),
        ])
    }

    fn columns(&self) -> RecordBatch {
        let catalog = self.registry.catalog().read().clone();
        let mut table = vec![];
        let mut column = vec![];
        let mut ctype = vec![];
        let mut ordinal = vec![];
        let mut is_pk = vec![];
        for e in catalog.tables.values() {
            for (i, c) in e.schema.columns.iter().enumerate() {
                table.push(Some(e.schema.name.clone()));
                column.push(Some(c.name.clone()));
                ctype.push(Some(c.column_type.name().to_string()));
                ordinal.push(Some(i as u64 + 1));
                is_pk.push(Some(
                    e.schema.partition_key.as_deref() == Some(c.name.as_str()),
                ));
            }
        }
        build(vec![
            ("table_name", strs(table)),
            ("column_name", strs(column)),
            ("column_type", strs(ctype)),
            ("ordinal_position", u64s(ordinal)),
            (
                "is_partition_key",
                Arc::new(BooleanArray::from(is_pk)) as ArrayRef,
            ),
        ])
    }

    /// A node's SWIM state as this node sees it.
    pub(crate) fn liveness(&self, node: u64) -> Option<String> {
        self.node.liveness.get(node)
    }

    /// `SHOW ROUTING FOR '<key>'`: where rows with this partition-key value live.
    pub fn routing(&self, key: &str) -> RecordBatch {
        let v = vshard_for_key(key.as_bytes(), self.registry.vshards());
        let leader = self
            .registry
            .status()
            .into_iter()
            .find(|g| g.vshard == Some(v))
            .and_then(|g| g.leader)
            .or_else(|| self.node.reports.as_ref().and_then(|r| r.leader_of(v)));
        let replicas = list(&self.registry.catalog().read().replicas(v));
        build(vec![
            ("partition_key_value", strs(vec![Some(key.to_string())])),
            ("vshard", u64s(vec![Some(u64::from(v))])),
            ("leader", u64s(vec![leader])),
            ("replicas", strs(vec![Some(replicas)])),
        ])
    }
}

/// Node ids as `1,2,3`.
fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn now_ms() -> u64 {
    (shoal_common::time::now_nanos() / 1_000_000) as u64
}

fn u64s(v: Vec<Option<u64>>) -> ArrayRef {
    Arc::new(UInt64Array::from(v))
}

fn strs(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn build(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, cols.into_iter().map(|(_, a)| a).collect())
        .expect("columns of equal length")
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SYSTEM_TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(batch) = self.batch(name) else {
            return Ok(None);
        };
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        SYSTEM_TABLES.contains(&name)
    }
}
