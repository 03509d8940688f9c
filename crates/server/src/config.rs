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
    /// Postgres wire protocol.
    pub pg_addr: String,
    /// Inter-node RPC (gRPC over HTTP/2). Seeds given to `join` are other nodes' rpc_addr.
    pub rpc_addr: String,
    /// SWIM gossip over UDP.
    pub gossip_addr: String,
    /// Addresses peers and clients should use when they differ from the bound ones (a node
    /// bound to 0.0.0.0 must set them). Empty: the bound address.
    pub advertise_rpc_addr: String,
    pub advertise_gossip_addr: String,
    pub advertise_http_addr: String,
    pub advertise_pg_addr: String,
    /// Seeds to join (other nodes' rpc_addr). Empty and no data: bootstrap a new cluster.
    pub join: Vec<String>,
    /// How long a new node keeps trying its seeds before it exits with an error.
    pub join_timeout_ms: u64,
    /// Voters of the metadata group (group 0), kept odd; further nodes are learners.
    pub max_voters: usize,
    /// A vshard group with no write or strong read for this long stops its Raft heartbeats
    /// (its followers stop campaigning; SWIM watches the leader). 0 = never.
    pub quiesce_after_ms: u64,
    /// How often a node hands one of its vshard leaderships to a replica that leads at
    /// least two fewer (so leaders spread over the replicas). 0 = never.
    pub leader_balance_interval_ms: u64,
    /// How often group 0's leader plans replica placement (record, repair, grow, rebalance), in
    /// milliseconds; membership changes (a join, a DEAD, a LEFT) also wake it.
    pub rebalance_interval_ms: u64,
    /// Replica moves in flight at most, cluster-wide (a node also receives at most one at a
    /// time, so snapshots never pile up on one disk).
    pub rebalance_max_moves: usize,
    /// Balancing moves pause while any node's CPU share (of the whole machine, 0..1) is above
    /// this; replacing lost replicas does not.
    pub rebalance_cpu_threshold: f64,
    /// A node whose data disk is fuller than this share never receives a replica.
    pub rebalance_max_disk_fraction: f64,
    /// After a move of a vshard finishes, balancing leaves that vshard alone this long
    /// (milliseconds), so a replica never ping-pongs.
    pub rebalance_vshard_cooldown_ms: u64,
    /// Snapshot bytes per second this node sends, all transfers together (a replica catching
    /// up, a move's target); 0 = no limit. Parts are read and sent in 4 MiB chunks.
    pub snapshot_max_bytes_per_sec: u64,
    /// A move whose target makes no progress catching up for this long counts a failed attempt
    /// (three fail the move; the planner may choose again), milliseconds.
    pub move_stall_timeout_ms: u64,
    /// A decommission with no replica moved off the leaving node (and no move off it making\nprogress) for this long is reported stalled: logged on group 0's leader and shown in\n`system.nodes.decommission`, naming each stuck vshard and why, milliseconds.
    pub decommission_stall_ms: u64,
    /// A replica no longer placed on this node is closed at once; its files are deleted this
    /// long after (milliseconds).
    pub replica_gc_grace_ms: u64,
    /// How often the control plane looks at registration and at the membership of the groups
    /// this node leads (milliseconds); replicas placed here are followed at twice this.
    pub control_interval_ms: u64,
    /// How often a node samples its load and asks every peer for theirs (and measures clock
    /// offsets), milliseconds.
    pub report_interval_ms: u64,
    /// Replicas of every vshard (fewer while the cluster has fewer usable nodes); the
    /// control plane places them and spreads them over the nodes.
    pub replication_factor: usize,
    /// A node SWIM has reported down (DEAD) for this long has its replicas moved to other
    /// nodes, restoring `replication_factor`. 0 = never.
    pub dead_replica_timeout_ms: u64,
    /// Largest inter-node message (checked before allocating).
    pub rpc_max_message_bytes: usize,
    /// Inter-node connections open at once; the excess is closed at accept.
    pub rpc_max_connections: usize,
    /// Non-Raft RPCs worked on at once; more get RESOURCE_EXHAUSTED (retryable).
    pub rpc_max_inflight: usize,
    /// Raft messages handled at once.
    pub rpc_max_inflight_raft: usize,
    /// Connecting to a peer gives up after this long.
    pub rpc_connect_timeout_ms: u64,
    /// Consecutive transport failures that open a peer's circuit breaker.
    pub breaker_failures: u32,
    /// An open breaker fails calls at once for this long, then lets one trial through.
    pub breaker_open_ms: u64,
    /// How often peers with an open breaker are probed.
    pub prober_interval_ms: u64,
    /// SWIM: probe a random member this often.
    pub swim_probe_interval_ms: u64,
    /// SWIM: a probe unanswered after this long goes indirect.
    pub swim_probe_timeout_ms: u64,
    /// SWIM: a SUSPECT member not refuting within this long is DEAD.
    pub swim_suspect_timeout_ms: u64,
    /// vshards of a new cluster; fixed once the data directory is created.
    pub vshards: u32,
    /// Largest request body accepted, after decompression (413 past it).
    pub max_body_bytes: u64,
    /// Tables the cluster may hold. The catalog lives in every node's memory and is replicated
    /// to every node, so this bounds every node's cost; DDL past it is refused (SQLSTATE 54000,
    /// HTTP 413) before anything is proposed.
    pub max_tables: usize,
    /// Columns one table may have (ts and tags included); past it: SQLSTATE 54011, HTTP 413.
    pub max_columns_per_table: usize,
    /// Tables one request (a line-protocol body, a transaction block) may create. A request over
    /// any of these three limits is refused whole: no table of it is created.
    pub max_new_tables_per_request: usize,
    /// Flush a vshard's hot buffer to Parquet at this size.
    pub flush_hot_bytes: u64,
    /// Flush a vshard's hot buffer when its oldest row is this old.
    pub flush_age_ms: u64,
    /// How often the flush policy runs.
    pub flush_check_interval_ms: u64,
    /// Segment size of the node's WAL (every group's Raft log).
    pub wal_segment_bytes: u64,
    /// Recent WAL entries kept in memory, for the whole node.
    pub wal_cache_bytes: u64,
    /// Once the WAL is larger on disk, the group holding its oldest segment is flushed,
    /// and vshard leaders stop keeping log entries for lagging followers.
    pub wal_max_bytes: u64,
    /// fsync the Raft log before acknowledging (only turn off for throwaway benchmarks).
    pub wal_fsync: bool,
    /// Writes are refused with 507 while free disk space is below this.
    pub min_free_disk_bytes: u64,
    /// Rows per Parquet row group.
    pub parquet_row_group_rows: usize,
    /// Decoded column chunks of flushed parts kept in memory, bytes (0 = off).
    pub column_cache_bytes: u64,
    /// Let the memory allocator back the heap with 2 MiB transparent huge pages. Off: the
    /// kernel then zeroes 4 KiB pages as they are touched, not 2 MiB at a time.
    pub transparent_huge_pages: bool,
    /// Compression of flushed Parquet parts: `lz4`, `zstd` or `none`.
    pub parquet_compression: String,
    /// DataFusion target partitions; 0 = number of cores.
    pub query_target_partitions: usize,
    /// Requests the HTTP server works on at once; more wait in the accept queue.
    pub http_max_concurrent_requests: usize,
    /// Authenticated Postgres-protocol sessions open at once; more get SQLSTATE 53300.
    pub pg_max_connections: usize,
    /// Postgres-protocol connections still in startup or authentication, a pool apart from
    /// the sessions above so idle sockets cannot lock clients out. When it is full the oldest
    /// pending connection is closed (FATAL 53300) to make room.
    pub pg_max_pending_connections: usize,
    /// Time a Postgres connection has from accept to an authenticated session (Postgres:
    /// authentication_timeout, milliseconds); past it the connection is closed.
    pub pg_auth_timeout_ms: u64,
    /// Authentication of Postgres and HTTP clients: `trust` (the default) asks clients who
    /// they are once the cluster has a user (`CREATE USER`, `init_admin_password`) and lets
    /// everyone in before; `scram-sha-256` asks always, even before the first user exists.
    /// Postgres clients authenticate with SCRAM-SHA-256; `md5` is no longer accepted.
    pub pg_auth: String,
    /// Deprecated: users as `name:password` in plain text. At start-up each one missing
    /// from the cluster is created as an admin (stored as a SCRAM verifier, like every
    /// user); then remove them from the file and manage users with SQL.
    pub pg_users: Vec<String>,
    /// The name of the admin user `init_admin_password` creates.
    pub init_admin_user: String,
    /// Creates the cluster's first user, an admin named `init_admin_user`, with this
    /// password, if the cluster has no users yet (otherwise it is ignored). Prefer
    /// `init_admin_password_file` or the `SHOAL_INIT_ADMIN_PASSWORD` environment variable.
    /// Never logged.
    pub init_admin_password: Secret,
    /// A file holding `init_admin_password` (surrounding whitespace ignored); wins.
    pub init_admin_password_file: String,
    /// A directory holding `ca.crt`, `node.crt` and `node.key` (`shoal cert`). Set: HTTP is
    /// HTTPS only, Postgres clients must use TLS (`sslmode=require` or stronger), and
    /// nodes talk to each other over mutual TLS, refusing any peer whose certificate the
    /// CA did not sign. Re-read on SIGHUP. Empty (the default): no TLS anywhere.
    pub certs_dir: String,
    /// Serve on non-loopback addresses without TLS and authentication. Without it a node
    /// that binds any port to a non-loopback address (0.0.0.0, a LAN address) refuses to
    /// start unless `certs_dir` is set (and, bootstrapping a new cluster, a first admin
    /// password is given); with it the node starts and WARNs. Loopback-only nodes (the
    /// quick start, `shoal demo`) need neither.
    pub insecure: bool,
    /// A directory SQL may write files under (`COPY (SELECT …) TO 'out.csv'`, relative
    /// paths taken relative to it). Empty (the default): SQL touches no server files at all.
    /// `CREATE EXTERNAL TABLE` is always refused.
    pub sql_file_dir: String,
    /// Longest time recovery (log replay) may take before the node gives up starting.
    pub startup_timeout_ms: u64,
    /// On shutdown: how long to wait for in-flight requests and the final flush.
    pub drain_timeout_ms: u64,
    /// A drain (SIGTERM, `POST /health/drain`, `shoal node drain`) first makes `/health/ready`
    /// answer 503 and keeps serving this long, so load balancers and clients that poll readiness
    /// stop sending here before connections are refused. Skipped when no other node is registered.
    pub drain_wait_unready_ms: u64,
    /// A drain hands every leadership held here (group 0 and vshards) to caught-up peers for at
    /// most this long; groups still led after it are left to elect when the node leaves.
    pub drain_transfer_timeout_ms: u64,
    /// The bearer token the admin API (`/admin/v1/...`) and `POST /health/drain` require
    /// (`Authorization: Bearer <token>`). Empty with no `admin_token_file`: they answer only to
    /// loopback clients. Never logged.
    pub admin_token: Secret,
    /// A file holding the admin token (surrounding whitespace ignored); wins over `admin_token`.
    pub admin_token_file: String,
    /// Raft heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// The largest clock offset between nodes that bounded-staleness reads allow for; a
    /// node further off than this from most of its peers serves them through the read
    /// index instead.
    pub max_clock_offset_ms: u64,
    /// Raft election timeout range.
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    /// Log filter (`info`, `shoal=debug,info`, …); `RUST_LOG` overrides it.
    pub log: String,
    /// `text` (one human-readable line per event) or `json` (one JSON object per line, every
    /// field a key: for log shippers and searching).
    pub log_format: String,
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
            advertise_rpc_addr: String::new(),
            advertise_gossip_addr: String::new(),
            advertise_http_addr: String::new(),
            advertise_pg_addr: String::new(),
            join: vec![],
            join_timeout_ms: 60_000,
            max_voters: 5,
            replication_factor: 3,
            dead_replica_timeout_ms: 300_000,
            max_clock_offset_ms: 250,
            quiesce_after_ms: 2_000,
            leader_balance_interval_ms: 1_000,
            rebalance_interval_ms: 5_000,
            rebalance_max_moves: 4,
            rebalance_cpu_threshold: 0.8,
            rebalance_max_disk_fraction: 0.925,
            rebalance_vshard_cooldown_ms: 30_000,
            snapshot_max_bytes_per_sec: 32 * MIB,
            move_stall_timeout_ms: 60_000,
            decommission_stall_ms: 120_000,
            replica_gc_grace_ms: 60_000,
            control_interval_ms: 250,
            report_interval_ms: 2_000,
            rpc_max_message_bytes: 64 * MIB as usize,
            rpc_max_connections: 1024,
            rpc_max_inflight: 256,
            rpc_max_inflight_raft: 1024,
            rpc_connect_timeout_ms: 2_000,
            breaker_failures: 3,
            breaker_open_ms: 2_000,
            prober_interval_ms: 500,
            swim_probe_interval_ms: 500,
            swim_probe_timeout_ms: 200,
            swim_suspect_timeout_ms: 1_000,
            vshards: 16,
            max_body_bytes: 64 * MIB,
            max_tables: 10_000,
            max_columns_per_table: 1_024,
            max_new_tables_per_request: 1_000,
            flush_hot_bytes: 128 * MIB,
            flush_age_ms: 60_000,
            flush_check_interval_ms: 500,
            wal_segment_bytes: 64 * MIB,
            wal_cache_bytes: 256 * MIB,
            wal_max_bytes: 1024 * MIB,
            wal_fsync: true,
            min_free_disk_bytes: 64 * MIB,
            parquet_row_group_rows: 256 * 1024,
            column_cache_bytes: shoal_storage::DEFAULT_COLUMN_CACHE_BYTES,
            transparent_huge_pages: false,
            parquet_compression: "lz4".into(),
            query_target_partitions: 0,
            http_max_concurrent_requests: 256,
            pg_max_connections: 256,
            pg_max_pending_connections: 64,
            pg_auth_timeout_ms: 10_000,
            pg_auth: "trust".into(),
            pg_users: vec![],
            init_admin_user: "admin".into(),
            init_admin_password: Secret::default(),
            init_admin_password_file: String::new(),
            certs_dir: String::new(),
            insecure: false,
            sql_file_dir: String::new(),
            startup_timeout_ms: 120_000,
            drain_timeout_ms: 30_000,
            drain_wait_unready_ms: 5_000,
            drain_transfer_timeout_ms: 10_000,
            admin_token: Secret::default(),
            admin_token_file: String::new(),
            raft_heartbeat_ms: 200,
            raft_election_min_ms: 600,
            raft_election_max_ms: 1200,
            log: "info,openraft=warn".into(),
            log_format: "text".into(),
        }
    }
}

/// A value that must never reach a log line: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The longest admin token accepted, bytes.
pub const ADMIN_TOKEN_MAX_BYTES: usize = 4096;

/// A secret from `file` (wins; surrounding whitespace ignored) or `inline`, at most
/// [`ADMIN_TOKEN_MAX_BYTES`]; empty when neither is set.
fn read_secret(inline: &Secret, file: &str, name: &str) -> Result<String, String> {
    let value = if file.is_empty() {
        inline.0.trim().to_string()
    } else {
        let meta = std::fs::metadata(file).map_err(|e| format!("{name}_file {file}: {e}"))?;
        if meta.len() > ADMIN_TOKEN_MAX_BYTES as u64 {
            return Err(format!(
                "{name}_file {file}: larger than {ADMIN_TOKEN_MAX_BYTES} bytes"
            ));
        }
        std::fs::read_to_string(file)
            .map_err(|e| format!("{name}_file {file}: {e}"))?
            .trim()
            .to_string()
    };
    if value.len() > ADMIN_TOKEN_MAX_BYTES {
        return Err(format!("{name}: longer than {ADMIN_TOKEN_MAX_BYTES} bytes"));
    }
    Ok(value)
}

impl NodeConfig {
    /// The admin token from `admin_token_file` (wins) or `admin_token`; `None` when neither
    /// is set (the admin API then answers loopback clients only).
    pub fn admin_token(&self) -> Result<Option<Secret>, String> {
        let token = read_secret(&self.admin_token, &self.admin_token_file, "admin_token")?;
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the admin token may not contain whitespace or control characters".into());
        }
        Ok((!token.is_empty()).then_some(Secret(token)))
    }

    /// The first admin's password from `init_admin_password_file` (wins) or
    /// `init_admin_password`; `None` when neither is set.
    pub fn init_admin_password(&self) -> Result<Option<Secret>, String> {
        let pw = read_secret(
            &self.init_admin_password,
            &self.init_admin_password_file,
            "init_admin_password",
        )?;
        if !pw.is_empty() {
            shoal_consensus::users::check_password(&pw)
                .map_err(|e| format!("init_admin_password: {e}"))?;
            shoal_consensus::users::check_name(&self.init_admin_user)
                .map_err(|e| format!("init_admin_user: {e}"))?;
        }
        Ok((!pw.is_empty()).then_some(Secret(pw)))
    }

    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that would make the node misbehave.
    /// `parquet_compression`, parsed.
    pub fn part_compression(&self) -> Result<shoal_storage::PartCompression, String> {
        shoal_storage::PartCompression::parse(&self.parquet_compression).ok_or_else(|| {
            format!(
                "parquet_compression {:?}: use \"lz4\", \"zstd\" or \"none\"",
                self.parquet_compression
            )
        })
    }

    /// The host peers dial for RPC (the advertised address, else the bound one), which the
    /// node certificate must name; none when it is a wildcard (0.0.0.0, ::).
    pub fn tls_names(&self) -> Vec<&str> {
        let addr = if self.advertise_rpc_addr.is_empty() {
            &self.rpc_addr
        } else {
            &self.advertise_rpc_addr
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => vec![],
            _ if host.is_empty() => vec![],
            _ => vec![host],
        }
    }

    /// The ports bound to a non-loopback address, as `key=addr`.
    pub fn exposed(&self) -> Vec<String> {
        [
            ("http_addr", &self.http_addr),
            ("pg_addr", &self.pg_addr),
            ("rpc_addr", &self.rpc_addr),
            ("gossip_addr", &self.gossip_addr),
        ]
        .into_iter()
        .filter(|(_, a)| !is_loopback(a))
        .map(|(k, a)| format!("{k}={a}"))
        .collect()
    }

    /// Secure by default: whether this node may start as configured, and whether it must
    /// ask every client for credentials even before the cluster has a user. A node
    /// exposed beyond loopback needs `certs_dir` (and, when `bootstrapping` a new cluster,
    /// a first admin), unless `insecure`.
    pub fn security(&self, bootstrapping: bool) -> Result<Security, String> {
        let exposed = self.exposed();
        if exposed.is_empty() {
            return Ok(Security::Loopback);
        }
        if self.insecure {
            return Ok(Security::Insecure { exposed });
        }
        let list = exposed.join(", ");
        if self.certs_dir.is_empty() {
            return Err(format!(
                "this node listens beyond loopback ({list}) without TLS: set certs_dir \
                 (`shoal cert create-ca`, then `shoal cert create-node <its names and \
                 addresses>`), or start with --insecure to serve in plaintext without \
                 authentication (only on a network you trust)"
            ));
        }
        let has_admin = self.init_admin_password()?.is_some() || !self.pg_users.is_empty();
        if bootstrapping && !has_admin {
            return Err(format!(
                "this node bootstraps a new cluster listening beyond loopback ({list}): \
                 give it a first admin with init_admin_password_file (or the \
                 SHOAL_INIT_ADMIN_PASSWORD environment variable), or start with --insecure"
            ));
        }
        Ok(Security::Secure)
    }

    /// `sql_file_dir` as an absolute path, if set; it must be an existing directory.
    pub fn sql_file_dir(&self) -> Result<Option<PathBuf>, String> {
        if self.sql_file_dir.is_empty() {
            return Ok(None);
        }
        let dir = PathBuf::from(&self.sql_file_dir)
            .canonicalize()
            .map_err(|e| format!("{}: {e}", self.sql_file_dir))?;
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        Ok(Some(dir))
    }

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
        self.part_compression()?;
        self.admin_token()?;
        self.init_admin_password()?;
        crate::pgauth::AuthMethod::parse(&self.pg_auth)?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            ));
        }
        crate::pgauth::parse_users(&self.pg_users)?;
        if self.max_voters == 0 || self.max_voters > 9 {
            return Err(format!(
                "max_voters must be between 1 and 9, not {}",
                self.max_voters
            ));
        }
        if self.replication_factor == 0 || self.replication_factor > 7 {
            return Err(format!(
                "replication_factor must be between 1 and 7, not {}",
                self.replication_factor
            ));
        }
        if self.rpc_max_message_bytes < 1024 * 1024 {
            return Err("rpc_max_message_bytes must be at least 1 MiB".into());
        }
        if self.swim_probe_timeout_ms >= self.swim_probe_interval_ms {
            return Err("need swim_probe_timeout_ms < swim_probe_interval_ms".into());
        }
        if self.pg_max_pending_connections == 0 || self.pg_auth_timeout_ms < 100 {
            return Err(
                "pg_max_pending_connections must be at least 1 and pg_auth_timeout_ms at least 100"
                    .into(),
            );
        }
        if self.max_tables == 0
            || self.max_columns_per_table < 2
            || self.max_new_tables_per_request == 0
        {
            return Err("max_tables and max_new_tables_per_request must be at least 1, max_columns_per_table at least 2".into());
        }
        self.sql_file_dir()
            .map_err(|e| format!("sql_file_dir: {e}"))?;
        let fraction = |x: f64| x > 0.0 && x <= 1.0;
        if !fraction(self.rebalance_cpu_threshold) || !fraction(self.rebalance_max_disk_fraction) {
            return Err(
                "rebalance_cpu_threshold and rebalance_max_disk_fraction must be in (0, 1]".into(),
            );
        }
        if self.rebalance_max_moves == 0
            || self.control_interval_ms < 10
            || self.report_interval_ms < 100
            || self.rebalance_interval_ms < 100
        {
            return Err("need rebalance_max_moves >= 1, control_interval_ms >= 10, report_interval_ms >= 100 and rebalance_interval_ms >= 100".into());
        }
        if self.breaker_failures == 0 {
            return Err("breaker_failures must be at least 1".into());
        }
        Ok(())
    }
}

/// How exposed a node is, and so what it demands (see [`NodeConfig::security`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Every port on loopback: TLS optional, trust until the first user.
    Loopback,
    /// Exposed with TLS: every client authenticates, even before the first user.
    Secure,
    /// Exposed without TLS or authentication, as asked (`insecure`): these ports.
    Insecure { exposed: Vec<String> },
}

/// Whether `addr` (`host:port`) binds only loopback: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(a) = addr.parse::<std::net::SocketAddr>() {
        return a.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_nodes_need_tls_and_a_first_admin_unless_insecure() {
        let mut cfg = NodeConfig::default();
        assert_eq!(
            cfg.security(true),
            Ok(Security::Loopback),
            "defaults are loopback"
        );
        cfg.http_addr = "localhost:7480".into();
        cfg.rpc_addr = "[::1]:7400".into();
        assert_eq!(cfg.security(true), Ok(Security::Loopback));
        cfg.pg_addr = "0.0.0.0:5432".into();
        let e = cfg.security(false).unwrap_err();
        assert!(
            e.contains("pg_addr=0.0.0.0:5432") && e.contains("certs_dir"),
            "{e}"
        );
        cfg.certs_dir = "/etc/shoal/certs".into();
        assert_eq!(
            cfg.security(false),
            Ok(Security::Secure),
            "joining or restarting"
        );
        let e = cfg.security(true).unwrap_err();
        assert!(e.contains("init_admin_password_file"), "{e}");
        cfg.init_admin_password = Secret("s3cret-pw".into());
        assert_eq!(cfg.security(true), Ok(Security::Secure));
        cfg.certs_dir.clear();
        cfg.insecure = true;
        assert_eq!(
            cfg.security(true),
            Ok(Security::Insecure {
                exposed: vec!["pg_addr=0.0.0.0:5432".into()]
            })
        );
        assert!(!is_loopback("10.0.0.1:1") && !is_loopback("db.example:1"));
        assert!(is_loopback("127.0.0.2:1"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = NodeConfig::from_toml("data_dir = \"x\"\nfluhs_age_ms = 5\n").expect_err("typo");
        assert!(err.contains("fluhs_age_ms"), "{err}");
    }

    #[test]
    fn parquet_compression_names_a_codec() {
        let mut cfg = NodeConfig::default();
        assert_eq!(
            cfg.part_compression(),
            Ok(shoal_storage::PartCompression::Lz4)
        );
        cfg.parquet_compression = "zstd".into();
        assert!(cfg.validate().is_ok());
        cfg.parquet_compression = "gzip".into();
        let err = cfg.validate().expect_err("unknown codec");
        assert!(err.contains("parquet_compression \"gzip\""), "{err}");
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
