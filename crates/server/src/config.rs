//! A node's configuration: one TOML file, overridden by environment variables, overridden by
//! flags (the CLI merges them). Every key is documented in `shoal.example.toml`; an unknown
//! key is an error, not a silent no-op.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where the node keeps its data (Raft logs, Parquet parts, metadata).
    pub data_dir: PathBuf,
    /// HTTP API (SQL, line protocol, health, metrics). Port 0 picks a free port.
    pub http_addr: String,
    /// Postgres wire protocol (not served yet; reserved so configs stay stable).
    pub pg_addr: String,
    /// Inter-node RPC (cluster mode; reserved).
    pub rpc_addr: String,
    /// SWIM gossip over UDP (cluster mode; reserved).
    pub gossip_addr: String,
    /// Seeds to join (cluster mode). Empty: a single-node cluster.
    pub join: Vec<String>,
    /// vshards of a new cluster; fixed once the data directory is created.
    pub vshards: u32,
    /// Largest request body accepted, after decompression (413 past it).
    pub max_body_bytes: u64,
    /// Flush a vshard's hot buffer to Parquet at this size.
    pub flush_hot_bytes: u64,
    /// Flush a vshard's hot buffer when its oldest row is this old.
    pub flush_age_ms: u64,
    /// How often the flush policy runs.
    pub flush_check_interval_ms: u64,
    /// Raft log segment size.
    pub wal_segment_bytes: u64,
    /// Raft log recent-entry cache per group.
    pub wal_cache_bytes: u64,
    /// fsync the Raft log before acknowledging (only turn off for throwaway benchmarks).
    pub wal_fsync: bool,
    /// Writes are refused with 507 while free disk space is below this.
    pub min_free_disk_bytes: u64,
    /// Rows per Parquet row group.
    pub parquet_row_group_rows: usize,
    /// DataFusion target partitions; 0 = number of cores.
    pub query_target_partitions: usize,
    /// Requests the HTTP server works on at once; more wait in the accept queue.
    pub http_max_concurrent_requests: usize,
    /// Postgres-protocol connections open at once; more are refused (SQLSTATE 53300).
    pub pg_max_connections: usize,
    /// Postgres-protocol authentication: `trust`, `scram-sha-256` or `md5`.
    pub pg_auth: String,
    /// Users for `scram-sha-256`/`md5`, each `name:password`.
    pub pg_users: Vec<String>,
    /// Longest time recovery (log replay) may take before the node gives up starting.
    pub startup_timeout_ms: u64,
    /// On shutdown: how long to wait for in-flight requests and the final flush.
    pub drain_timeout_ms: u64,
    /// Raft heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout range.
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    /// Log filter (`info`, `shoal=debug,info`, …); `RUST_LOG` overrides it.
    pub log: String,
}

pub const MIB: u64 = 1024 * 1024;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./shoal-data"),
            http_addr: "127.0.0.1:7480".into(),
            pg_addr: "127.0.0.1:7432".into(),
            rpc_addr: "127.0.0.1:7400".into(),
            gossip_addr: "127.0.0.1:7401".into(),
            join: vec![],
            vshards: 16,
            max_body_bytes: 64 * MIB,
            flush_hot_bytes: 128 * MIB,
            flush_age_ms: 60_000,
            flush_check_interval_ms: 500,
            wal_segment_bytes: 64 * MIB,
            wal_cache_bytes: 64 * MIB,
            wal_fsync: true,
            min_free_disk_bytes: 64 * MIB,
            parquet_row_group_rows: 256 * 1024,
            query_target_partitions: 0,
            http_max_concurrent_requests: 256,
            pg_max_connections: 256,
            pg_auth: "trust".into(),
            pg_users: vec![],
            startup_timeout_ms: 120_000,
            drain_timeout_ms: 30_000,
            raft_heartbeat_ms: 200,
            raft_election_min_ms: 600,
            raft_election_max_ms: 1200,
            log: "info,openraft=warn".into(),
        }
    }
}

impl NodeConfig {
    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that would make the node misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.vshards == 0 || self.vshards > 4096 {
            return Err(format!(
                "vshards must be between 1 and 4096, not {}",
                self.vshards
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if self.raft_election_min_ms >= self.raft_election_max_ms
            || self.raft_heartbeat_ms >= self.raft_election_min_ms
        {
            return Err(
                "need raft_heartbeat_ms < raft_election_min_ms < raft_election_max_ms".into(),
            );
        }
        let method = crate::pgauth::AuthMethod::parse(&self.pg_auth)?;
        let users = crate::pgauth::parse_users(&self.pg_users)?;
        if method != crate::pgauth::AuthMethod::Trust && users.is_empty() {
            return Err(format!(
                "pg_auth = {:?} needs at least one pg_users entry (name:password)",
                self.pg_auth
            ));
        }
        if !self.join.is_empty() {
            return Err(
                "--join: cluster mode is not available in this build yet (single node only)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let err = NodeConfig::from_toml("data_dir = \"x\"\nfluhs_age_ms = 5\n").expect_err("typo");
        assert!(err.contains("fluhs_age_ms"), "{err}");
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../../shoal.example.toml");
        let cfg = NodeConfig::from_toml(text).expect("example parses");
        assert_eq!(
            cfg,
            NodeConfig::default(),
            "shoal.example.toml must show the defaults"
        );
    }
}
