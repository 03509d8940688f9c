//! Group 0's state machine: the catalog (tables, columns, partition keys, schema version).
//!
//! Every DDL batch is one Raft entry applied atomically: all its operations take effect or
//! none does, and a batch that changed anything moves `schema_version` by exactly one.
//! The whole catalog is small; a snapshot is `catalog.json` written atomically.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::Stream;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::OptionalSend;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use shoal_common::schema::TableSchema;

use crate::command::{ClusterOp, Command, DdlOp, NodeAddrs, NodeState, Response};
use crate::{
    apply_entries, io_err, GroupSnapshot, LogId, SnapshotMeta, StoredMembership, TypeConfig,
};

pub const CATALOG_FILE: &str = "catalog.json";
/// 2: per-vshard placement, moves and cluster settings (version 1 loads: it has none, and
/// every vshard lives on the `hosts_vshards` nodes until the placement is recorded).
pub const CATALOG_FORMAT_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Never reused: vshards store rows by table id, so a dropped and re-created table
    /// never sees the old rows.
    pub id: u64,
    pub schema: TableSchema,
}

/// One node of the cluster as group 0 records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: u64,
    pub addrs: NodeAddrs,
    pub state: NodeState,
    /// The registration token the node joined with (answers a retried join).
    #[serde(default)]
    pub token: u64,
    /// Whether the node holds vshard replicas (decided when it joins: while fewer than
    /// `replication_factor` nodes do).
    #[serde(default)]
    pub hosts_vshards: bool,
    /// When `state` last changed (unix ms; 0: not recorded).
    #[serde(default)]
    pub state_since_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: BTreeMap<String, TableEntry>,
    pub next_table_id: u64,
    pub schema_version: u64,
    /// The node registry (older catalogs have none: the field defaults to empty).
    #[serde(default)]
    pub nodes: BTreeMap<u64, NodeEntry>,
    /// Where each vshard's replicas live (see `topology`); empty before version 2.
    #[serde(default)]
    pub placement: BTreeMap<u32, crate::topology::VshardPlacement>,
    /// Replica moves, under way and recently finished, by id.
    #[serde(default)]
    pub moves: BTreeMap<u64, crate::topology::MoveRecord>,
    #[serde(default)]
    pub next_move_id: u64,
    #[serde(default)]
    pub settings: crate::topology::ClusterSettings,
    /// Users, roles and tokens (see `users`); none: clients are not asked who they are.
    #[serde(default)]
    pub users: crate::users::Users,
}

/// Shared read access to the latest applied catalog. Readers clone the inner `Arc`.
pub type CatalogHandle = Arc<RwLock<Arc<Catalog>>>;

impl Catalog {
    /// Applies `ops` to a copy; returns the new catalog and whether anything changed, or the
    /// first operation's error (and then nothing changes).
    pub fn apply_ddl(&self, ops: &[DdlOp]) -> Result<(Catalog, bool), String> {
        let mut next = self.clone();
        let mut changed = false;
        for op in ops {
            changed |= next.apply_op(op)?;
        }
        if changed {
            next.schema_version += 1;
        }
        Ok((next, changed))
    }

    fn create(&mut self, schema: &TableSchema) {
        let id = self.next_table_id;
        self.next_table_id += 1;
        self.tables.insert(
            schema.name.clone(),
            TableEntry {
                id,
                schema: schema.clone(),
            },
        );
    }

    fn apply_op(&mut self, op: &DdlOp) -> Result<bool, String> {
        match op {
            DdlOp::CreateTable {
                schema,
                if_not_exists,
            } => {
                if self.tables.contains_key(&schema.name) {
                    return if *if_not_exists {
                        Ok(false)
                    } else {
                        Err(format!("table {} already exists", schema.name))
                    };
                }
                self.create(schema);
                Ok(true)
            }
            DdlOp::EnsureTable { schema } => match self.tables.get_mut(&schema.name) {
                None => {
                    self.create(schema);
                    Ok(true)
                }
                Some(t) => t
                    .schema
                    .add_columns(&schema.columns)
                    .map_err(|e| e.to_string()),
            },
            DdlOp::AddColumns {
                table,
                columns,
                if_not_exists,
            } => {
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| format!("table {table} does not exist"))?;
                if !*if_not_exists {
                    if let Some(c) = columns.iter().find(|c| t.schema.column(&c.name).is_some()) {
                        return Err(format!("column {} of table {table} already exists", c.name));
                    }
                }
                t.schema.add_columns(columns).map_err(|e| e.to_string())
            }
            DdlOp::DropTable { name, if_exists } => {
                if self.tables.remove(name).is_some() {
                    Ok(true)
                } else if *if_exists {
                    Ok(false)
                } else {
                    Err(format!("table {name} does not exist"))
                }
            }
        }
    }

    /// Applies a node-registry change in place; returns the node id it concerns.
    pub fn apply_cluster(&mut self, op: &ClusterOp) -> Result<u64, String> {
        match op {
            ClusterOp::AddNode {
                id,
                token,
                addrs,
                state,
                hosts_vshards,
                max_hosts,
            } => {
                if *token != 0 {
                    if let Some(n) = self.nodes.values().find(|n| n.token == *token) {
                        return Ok(n.id);
                    }
                }
                let id = match *id {
                    0 => self.nodes.keys().next_back().map_or(1, |max| max + 1),
                    id => id,
                };
                if let Some(n) = self.nodes.get(&id) {
                    if n.state == NodeState::Decommissioned {
                        return Err(format!("node {id} was decommissioned; it cannot rejoin"));
                    }
                }
                self.nodes.insert(
                    id,
                    NodeEntry {
                        id,
                        addrs: addrs.clone(),
                        state: *state,
                        token: *token,
                        hosts_vshards: *hosts_vshards
                            && max_hosts.is_none_or(|m| self.vshard_hosts().len() < m as usize),
                        state_since_ms: 0,
                    },
                );
                Ok(id)
            }
            ClusterOp::UpdateAddrs {
                id,
                addrs,
                hosts_vshards,
            } => {
                let n = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| format!("node {id} is not registered"))?;
                n.addrs = addrs.clone();
                if let Some(h) = hosts_vshards {
                    n.hosts_vshards = *h;
                }
                Ok(*id)
            }
            ClusterOp::SetState { id, state, now_ms } => {
                let n = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| format!("node {id} is not registered"))?;
                if n.state == NodeState::Decommissioned && *state != NodeState::Decommissioned {
                    return Err(format!("node {id} was decommissioned; that is final"));
                }
                if n.state != *state {
                    n.state_since_ms = *now_ms;
                }
                n.state = *state;
                Ok(*id)
            }
            ClusterOp::ReplaceNode { old, new, retire } => {
                let o = self
                    .nodes
                    .get(old)
                    .ok_or_else(|| format!("node {old} is not registered"))?;
                if o.state == NodeState::Decommissioned {
                    return Err(format!("node {old} is already decommissioned"));
                }
                if let Some(new) = new {
                    let n = self
                        .nodes
                        .get(new)
                        .ok_or_else(|| format!("node {new} is not registered"))?;
                    if *new == *old || n.state == NodeState::Decommissioned || n.hosts_vshards {
                        return Err(format!(
                            "node {new} cannot take node {old}'s replicas (it is {} and {})",
                            n.state.as_str(),
                            if n.hosts_vshards {
                                "already a host"
                            } else {
                                "no host"
                            }
                        ));
                    }
                    if !o.hosts_vshards {
                        return Err(format!("node {old} holds no replicas to hand over"));
                    }
                    if let Some(n) = self.nodes.get_mut(new) {
                        n.hosts_vshards = true;
                    }
                }
                let o = self
                    .nodes
                    .get_mut(old)
                    .ok_or_else(|| format!("node {old} is not registered"))?;
                if new.is_some() {
                    o.hosts_vshards = false;
                }
                if *retire {
                    o.state = NodeState::Decommissioned;
                }
                Ok(*old)
            }
            ClusterOp::InitPlacement { vshards, replicas } => {
                self.init_placement(*vshards, replicas)
            }
            ClusterOp::AddReplicas { vshard, add } => self.add_replicas(*vshard, add),
            ClusterOp::StartMove {
                vshard,
                from,
                to,
                reason,
                now_ms,
            } => self.start_move(*vshard, *from, *to, reason, *now_ms),
            ClusterOp::UpdateMove { id, update, now_ms } => self.update_move(*id, update, *now_ms),
            ClusterOp::SetSetting { name, value } => self.settings.set(name, value).map(|_| 0),
            ClusterOp::User(op) => crate::users::apply(&mut self.users, op).map(|_| 0),
        }
    }

    /// Nodes that hold (or are to hold) vshard replicas, by id.
    pub fn vshard_hosts(&self) -> Vec<&NodeEntry> {
        self.nodes
            .values()
            .filter(|n| n.hosts_vshards && n.state != NodeState::Decommissioned)
            .collect()
    }

    /// Whether rows stored under `table_id` may still be read (the table exists, or was
    /// created after this catalog was applied).
    pub fn table_id_live(&self, table_id: u64) -> bool {
        table_id >= self.next_table_id || self.tables.values().any(|t| t.id == table_id)
    }
}

/// What `catalog.json` holds.
#[derive(Serialize, Deserialize)]
struct PersistedCatalog {
    format_version: u32,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    catalog: Catalog,
}

/// A group's snapshot as handed between state machine and network: the state's bytes, and
/// for a vshard the directory holding the Parquet parts the manifest names.
#[derive(Clone, Debug)]
pub struct SnapshotData {
    pub meta: Vec<u8>,
    pub dir: Option<PathBuf>,
}

pub struct MetaStateMachine {
    dir: PathBuf,
    catalog: CatalogHandle,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl MetaStateMachine {
    /// Opens group 0's state in `dir` (creating it), loading the last snapshot if any.
    pub fn open(dir: &Path) -> io::Result<MetaStateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut sm = MetaStateMachine {
            dir: dir.to_path_buf(),
            catalog: Arc::new(RwLock::new(Arc::new(Catalog::default()))),
            applied: None,
            membership: StoredMembership::default(),
        };
        match std::fs::read(dir.join(CATALOG_FILE)) {
            Ok(bytes) => sm.load(&bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(sm)
    }

    pub fn catalog(&self) -> CatalogHandle {
        self.catalog.clone()
    }

    fn load(&mut self, bytes: &[u8]) -> io::Result<()> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(io_err)?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if found > u64::from(CATALOG_FORMAT_VERSION) {
            return Err(io_err(format!(
                "{CATALOG_FILE} has format version {found}, this build reads up to {CATALOG_FORMAT_VERSION}: upgrade Shoal"
            )));
        }
        let p: PersistedCatalog = serde_json::from_value(value).map_err(io_err)?;
        self.applied = p.last_applied;
        self.membership = p.last_membership;
        *self.catalog.write() = Arc::new(p.catalog);
        Ok(())
    }

    fn persisted_bytes(&self) -> io::Result<Vec<u8>> {
        let p = PersistedCatalog {
            format_version: CATALOG_FORMAT_VERSION,
            last_applied: self.applied,
            last_membership: self.membership.clone(),
            catalog: (**self.catalog.read()).clone(),
        };
        serde_json::to_vec(&p).map_err(io_err)
    }

    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
        }
    }
}

pub struct MetaSnapshotBuilder {
    dir: PathBuf,
    bytes: Vec<u8>,
    meta: SnapshotMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<GroupSnapshot, io::Error> {
        shoal_storage::manifest::write_atomic(&self.dir, CATALOG_FILE, &self.bytes)
            .map_err(io_err)?;
        Ok(GroupSnapshot {
            meta: self.meta.clone(),
            snapshot: SnapshotData {
                meta: self.bytes.clone(),
                dir: None,
            },
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let catalog = &self.catalog;
        apply_entries(
            entries,
            &mut self.applied,
            &mut self.membership,
            |cmd| match cmd {
                Command::Ddl { ops } => {
                    let current = catalog.read().clone();
                    match current.apply_ddl(ops) {
                        Ok((next, changed)) => {
                            let schema_version = next.schema_version;
                            *catalog.write() = Arc::new(next);
                            Response::Ddl {
                                schema_version,
                                changed,
                            }
                        }
                        Err(msg) => Response::Rejected(msg),
                    }
                }
                Command::Cluster(op) => {
                    let mut next = (**catalog.read()).clone();
                    match next.apply_cluster(op) {
                        Ok(id) => {
                            *catalog.write() = Arc::new(next);
                            match op {
                                ClusterOp::StartMove { .. } => Response::Move { id },
                                _ => Response::Node { id },
                            }
                        }
                        Err(msg) => Response::Rejected(msg),
                    }
                }
                Command::Insert { .. } => {
                    Response::Rejected("insert sent to the metadata group".into())
                }
            },
        )
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaSnapshotBuilder {
            dir: self.dir.clone(),
            bytes: self.persisted_bytes().unwrap_or_default(),
            meta: self.meta(),
        }
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        self.load(&snapshot.meta)?;
        shoal_storage::manifest::write_atomic(&self.dir, CATALOG_FILE, &snapshot.meta)
            .map_err(io_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<GroupSnapshot>, io::Error> {
        let bytes = match std::fs::read(self.dir.join(CATALOG_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let p: PersistedCatalog = serde_json::from_slice(&bytes).map_err(io_err)?;
        let meta = SnapshotMeta {
            last_log_id: p.last_applied,
            last_membership: p.last_membership,
        };
        Ok(Some(GroupSnapshot {
            meta,
            snapshot: SnapshotData {
                meta: bytes,
                dir: None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::schema::{ColumnDef, ColumnType};

    fn schema(name: &str, cols: &[(&str, ColumnType)]) -> TableSchema {
        let cols = cols
            .iter()
            .map(|(n, t)| ColumnDef {
                name: (*n).into(),
                column_type: *t,
            })
            .collect();
        TableSchema::new(name, cols, None).expect("schema")
    }

    #[test]
    fn ddl_batches_are_atomic_and_bump_version_once() {
        let c = Catalog::default();
        let ops = vec![
            DdlOp::CreateTable {
                schema: schema("a", &[("v", ColumnType::Float)]),
                if_not_exists: false,
            },
            DdlOp::CreateTable {
                schema: schema("b", &[("v", ColumnType::Float)]),
                if_not_exists: false,
            },
        ];
        let (c, changed) = c.apply_ddl(&ops).expect("ddl");
        assert!(changed);
        assert_eq!(c.schema_version, 1);
        assert_eq!(c.tables.len(), 2);
        // Second batch fails on its last op: nothing of it applies.
        let ops = vec![
            DdlOp::CreateTable {
                schema: schema("c", &[("v", ColumnType::Float)]),
                if_not_exists: false,
            },
            DdlOp::CreateTable {
                schema: schema("a", &[("v", ColumnType::Float)]),
                if_not_exists: false,
            },
        ];
        assert_eq!(
            c.apply_ddl(&ops).expect_err("dup"),
            "table a already exists"
        );
    }

    #[test]
    fn dropped_table_ids_are_not_reused() {
        let c = Catalog::default();
        let create = vec![DdlOp::CreateTable {
            schema: schema("a", &[]),
            if_not_exists: false,
        }];
        let (c, _) = c.apply_ddl(&create).expect("create");
        let first = c.tables["a"].id;
        let (c, _) = c
            .apply_ddl(&[DdlOp::DropTable {
                name: "a".into(),
                if_exists: false,
            }])
            .expect("drop");
        assert!(!c.table_id_live(first));
        let (c, _) = c.apply_ddl(&create).expect("recreate");
        assert_ne!(c.tables["a"].id, first);
        assert_eq!(c.schema_version, 3);
    }

    #[test]
    fn ensure_table_reports_type_conflicts() {
        let (c, _) = Catalog::default()
            .apply_ddl(&[DdlOp::EnsureTable {
                schema: schema("m", &[("v", ColumnType::Float)]),
            }])
            .expect("ensure");
        let err = c
            .apply_ddl(&[DdlOp::EnsureTable {
                schema: schema("m", &[("v", ColumnType::String)]),
            }])
            .expect_err("conflict");
        assert_eq!(err, "table m: column v is float, not string");
    }

    #[test]
    fn racing_joins_cannot_all_become_vshard_hosts() {
        // Five joins proposed before any applied, each believing hosts were still short.
        let mut c = Catalog::default();
        let mut hosts = vec![];
        for token in 1..=5u64 {
            let id = c
                .apply_cluster(&ClusterOp::AddNode {
                    id: 0,
                    token,
                    addrs: NodeAddrs::default(),
                    state: NodeState::Joining,
                    hosts_vshards: true,
                    max_hosts: Some(3),
                })
                .expect("added");
            hosts.push((id, c.nodes[&id].hosts_vshards));
        }
        assert_eq!(
            hosts,
            vec![(1, true), (2, true), (3, true), (4, false), (5, false)]
        );
        // A retried join (same token) keeps its first answer.
        let again = c
            .apply_cluster(&ClusterOp::AddNode {
                id: 0,
                token: 2,
                addrs: NodeAddrs::default(),
                state: NodeState::Joining,
                hosts_vshards: true,
                max_hosts: Some(3),
            })
            .expect("retried");
        assert_eq!(again, 2);
        assert_eq!(c.vshard_hosts().len(), 3);
    }

    #[test]
    fn replacing_a_host_moves_its_replicas_once_and_refuses_bad_takers() {
        let mut c = Catalog::default();
        for token in 1..=5u64 {
            c.apply_cluster(&ClusterOp::AddNode {
                id: 0,
                token,
                addrs: NodeAddrs::default(),
                state: NodeState::Active,
                hosts_vshards: true,
                max_hosts: Some(3),
            })
            .expect("added");
        }
        let replace = |old, new, retire| ClusterOp::ReplaceNode { old, new, retire };
        // A taker that already hosts, itself, or an unknown node: refused, nothing changes.
        for bad in [
            replace(2, Some(3), false),
            replace(2, Some(2), false),
            replace(2, Some(9), false),
        ] {
            let before = c.clone();
            assert!(c.apply_cluster(&bad).is_err(), "{bad:?}");
            assert_eq!(c, before);
        }
        // A non-host has nothing to hand over.
        assert!(c.apply_cluster(&replace(4, Some(5), false)).is_err());
        c.apply_cluster(&replace(2, Some(4), false))
            .expect("replaced");
        let hosts: Vec<u64> = c.vshard_hosts().iter().map(|n| n.id).collect();
        assert_eq!(hosts, vec![1, 3, 4]);
        assert_eq!(c.nodes[&2].state, NodeState::Active, "not retired");
        // Retiring: the old identity is decommissioned and can never rejoin.
        c.apply_cluster(&replace(3, Some(5), true))
            .expect("retired");
        let hosts: Vec<u64> = c.vshard_hosts().iter().map(|n| n.id).collect();
        assert_eq!(hosts, vec![1, 4, 5]);
        assert_eq!(c.nodes[&3].state, NodeState::Decommissioned);
        assert!(c.apply_cluster(&replace(3, None, true)).is_err());
        assert!(c
            .apply_cluster(&ClusterOp::AddNode {
                id: 3,
                token: 0,
                addrs: NodeAddrs::default(),
                state: NodeState::Joining,
                hosts_vshards: false,
                max_hosts: None,
            })
            .is_err());
    }
}
