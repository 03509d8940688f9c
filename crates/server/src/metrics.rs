//! Prometheus metrics: `GET /metrics` on the HTTP port, in the text exposition format, made
//! by the `metrics` and `metrics-exporter-prometheus` crates (no hand-written exposition).
//!
//! ```text
//!  HTTP writes, SQL over HTTP, Postgres statements
//!      └─▶ NodeMetrics' handles (atomic adds) ─▶ the node's recorder ──┐
//!  GET /metrics                                                         ├─▶ text
//!      └─▶ collect(): Raft groups, catalog, SWIM, disk, TLS, gate       │
//!              ─▶ a recorder made for this scrape ──────────────────────┘
//! ```
//!
//! - **No global recorder.** Several nodes can run in one process (benches, the demo), so
//!   every node has its own recorder, with a `node` label on every series, and registers its
//!   handles on it directly (`metrics::Recorder`), never through the macros' global.
//! - **Bounded labels only**: node, protocol, status class, Raft group (at most vshards + 1),
//!   SWIM state, reason. Never a table name, a user or a tag value.
//! - **Scrape-time values** (Raft groups, cluster health, disk, the security counters kept as
//!   atomics elsewhere) are read at each scrape from what the node already keeps, into a
//!   recorder made for that scrape: a group closed here (its replica moved away) leaves no
//!   stale series behind, and nothing is computed between scrapes.
//! - **Histograms are bounded in memory**: their samples are drained into buckets every
//!   [`UPKEEP_INTERVAL`] even when nobody scrapes ([`NodeMetrics::spawn_upkeep`]).
//!
//! The metrics, their types and labels are listed in docs/operations.md ("Metrics").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use axum::http::StatusCode;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use shoal_consensus::GroupStatus;
use shoal_membership::MemberState;
use shoal_query::{ErrorKind, QueryError, QueryOutput};

/// The content type of the text exposition format `/metrics` answers in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are drained into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of the WAL's batch-size histogram: 1 KiB to 64 MiB.
const WAL_BATCH_BYTES_BUCKETS: [f64; 9] = [
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// How a client reached the node (the `protocol` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /write`.
    InfluxV1,
    /// `POST /api/v2/write`.
    InfluxV2,
    /// `POST /v1/sql`.
    SqlHttp,
    /// The Postgres wire protocol.
    Postgres,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::InfluxV1,
        Protocol::InfluxV2,
        Protocol::SqlHttp,
        Protocol::Postgres,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::InfluxV1 => "influx_v1",
            Protocol::InfluxV2 => "influx_v2",
            Protocol::SqlHttp => "sql_http",
            Protocol::Postgres => "postgres",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::InfluxV1 => 0,
            Protocol::InfluxV2 => 1,
            Protocol::SqlHttp => 2,
            Protocol::Postgres => 3,
        }
    }
}

/// How a request or statement ended, as an HTTP status class (the `status` label); a
/// Postgres error is classed by the HTTP status the same error gets (`http::status_of`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
}

impl StatusClass {
    const ALL: [StatusClass; 3] = [
        StatusClass::Success,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: StatusCode) -> StatusClass {
        if status.is_success() {
            StatusClass::Success
        } else if status.is_client_error() {
            StatusClass::ClientError
        } else {
            StatusClass::ServerError
        }
    }

    /// The class of the status an error is answered with.
    pub fn of_error(e: &QueryError) -> StatusClass {
        StatusClass::of(crate::http::status_of(e.kind))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        match self {
            StatusClass::Success => 0,
            StatusClass::ClientError => 1,
            StatusClass::ServerError => 2,
        }
    }
}

/// The counters of one protocol's writes.
struct IngestHandles {
    /// By [`StatusClass::index`].
    requests: [Counter; 3],
    rows: Counter,
    bytes: Counter,
}

/// The counters and histogram of one protocol's statements.
struct QueryHandles {
    /// By [`StatusClass::index`].
    statements: [Counter; 3],
    duration: Histogram,
}

/// What the scrape-time values are read from; set once the node has recovered.
pub struct Sources {
    pub registry: Arc<shoal_consensus::Registry>,
    pub controller: Arc<shoal_cluster::controller::Controller>,
    pub membership: Arc<shoal_membership::Membership>,
    pub gate: Arc<crate::gate::Gate>,
    /// `certs_dir`: the TLS material whose refused handshakes are counted.
    pub tls: Option<Arc<shoal_transport::tls::Tls>>,
    pub data_dir: PathBuf,
    /// This node's `replication_factor`.
    pub replication_factor: usize,
    /// Circuit breakers towards peers.
    pub peers: Arc<shoal_transport::Peers>,
    /// Clock offsets measured against peers.
    pub clocks: Arc<shoal_membership::clock::ClockOffsets>,
    /// Connections by protocol, and what their limits refused.
    pub connections: Vec<Connections>,
}

/// A counter or gauge read at each scrape.
pub type Reading = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One protocol's connections (`shoal_connections`) and the refusals of each of its limits
/// (`shoal_connections_refused_total`).
pub struct Connections {
    /// `http`, `postgres` or `rpc`.
    pub protocol: &'static str,
    /// Open now (HTTP: requests in flight, as its limit counts them).
    pub open: Reading,
    /// (the config key of the limit, connections or requests it refused).
    pub refused: Vec<(&'static str, Reading)>,
}

/// A node's metrics: its own recorder, the handle that renders it, and the handles the hot
/// paths count with.
pub struct NodeMetrics {
    node_id: u64,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// By [`Protocol::index`].
    ingest: [IngestHandles; 4],
    /// `sql_http` and `postgres` (see [`NodeMetrics::queries`]).
    queries: [QueryHandles; 2],
    /// The WAL's group commits (see [`NodeMetrics::wal_observer`]).
    wal: Arc<WalHandles>,
    /// Requests refused by `http_max_concurrent_requests`, sessions by `pg_max_connections`.
    pub http_refused: Arc<AtomicU64>,
    pub pg_refused: Arc<AtomicU64>,
    sources: OnceLock<Sources>,
}

/// The WAL's histograms, fed by its writer thread.
struct WalHandles {
    fsync: Histogram,
    batch: Histogram,
}

impl shoal_raftlog::LogObserver for WalHandles {
    fn batch_written(&self, bytes: u64) {
        self.batch.record(bytes as f64);
    }

    fn fsynced(&self, took: Duration) {
        self.fsync.record(took.as_secs_f64());
    }
}

/// The hot-path metrics: (name, help).
const INGEST_REQUESTS: (&str, &str) = (
    "shoal_ingest_requests_total",
    "Write requests (line protocol) and SQL INSERT statements, by protocol and status class.",
);
const INGEST_ROWS: (&str, &str) = (
    "shoal_ingest_rows_total",
    "Rows acknowledged to writers, by protocol.",
);
const INGEST_BYTES: (&str, &str) = (
    "shoal_ingest_bytes_total",
    "Bytes of write requests received (bodies as sent; INSERT text), by protocol.",
);
const QUERIES: (&str, &str) = (
    "shoal_queries_total",
    "SQL statements run (and requests refused before any ran), by protocol and status class.",
);
const QUERY_DURATION: (&str, &str) = (
    "shoal_query_duration_seconds",
    "Time to run one SQL statement, by protocol.",
);
const INGEST_REJECTED_ROWS: (&str, &str) = (
    "shoal_ingest_rejected_rows_total",
    "Lines of rejected write requests (line protocol rejects a request whole), by protocol and reason; 0 for a body that could not be read.",
);
const WAL_FSYNC: (&str, &str) = (
    "shoal_wal_fsync_duration_seconds",
    "Time of one fdatasync of the WAL's active segment (one per group commit).",
);
const WAL_BATCH: (&str, &str) = (
    "shoal_wal_append_bytes",
    "Bytes written to the WAL per group commit (every append the writer took at once).",
);

/// The scrape-time gauges: (name, help).
const SCRAPE_GAUGES: &[(&str, &str)] = &[
    (
        "shoal_raft_term",
        "Raft term of each group hosted here (group 0: the catalog; v+1: vshard v).",
    ),
    (
        "shoal_raft_is_leader",
        "1 if this node leads the Raft group, else 0.",
    ),
    (
        "shoal_raft_applied_index",
        "Last log index applied to the group's state machine here.",
    ),
    (
        "shoal_raft_last_log_index",
        "Last log index in the group's log here.",
    ),
    (
        "shoal_raft_commit_index",
        "Last log index this replica knows is committed.",
    ),
    (
        "shoal_raft_follower_lag_entries",
        "On a group's leader: log entries each follower is behind the leader's log.",
    ),
    (
        "shoal_closed_timestamp_lag_seconds",
        "How far this replica's closed timestamp trails the wall clock (bounded-staleness reads see data up to it).",
    ),
    (
        "shoal_hot_bytes",
        "Bytes of rows in the vshard's in-memory (not yet flushed) buffer here.",
    ),
    (
        "shoal_parquet_parts",
        "Parquet parts of the vshard here.",
    ),
    (
        "shoal_parquet_bytes",
        "Bytes of the vshard's Parquet parts here.",
    ),
    (
        "shoal_wal_bytes",
        "Bytes of the node's WAL segments on disk (every group's Raft log).",
    ),
    (
        "shoal_breakers",
        "Circuit breakers towards peers, by state (closed: calls go through; open: refused at once; half_open: one probe allowed).",
    ),
    (
        "shoal_clock_offset_seconds",
        "Each peer's clock minus this node's, as last measured (max_clock_offset_ms bounds it).",
    ),
    (
        "shoal_connections",
        "Open connections by protocol (http: requests in flight).",
    ),
    (
        "process_cpu_seconds_total",
        "User and system CPU time of the process in seconds (a gauge only because the exporter's counters are integers; it only grows).",
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory of the process in bytes (every node the process runs).",
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory of the process in bytes.",
    ),
    (
        "process_open_fds",
        "Open file descriptors of the process.",
    ),
    (
        "process_max_fds",
        "The process's limit on open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
    ),
    (
        "shoal_vshards_below_replication_factor",
        "Vshards with fewer replicas on live nodes than the placement grows them to (replication_factor, or fewer while the cluster has fewer ACTIVE nodes), as seen here.",
    ),
    (
        "shoal_vshards_without_leader",
        "Vshards with no known leader, or whose leader is not alive, as seen here.",
    ),
    (
        "shoal_members",
        "Cluster members by SWIM state, as seen here (this node included, ALIVE).",
    ),
    (
        "shoal_nodes",
        "Registered nodes by lifecycle state (JOINING, ACTIVE, DRAINING, DECOMMISSIONING, DECOMMISSIONED), from group 0 as this node has it.",
    ),
    (
        "shoal_moves",
        "Replica moves group 0 records, by state (PENDING, CATCHING_UP, SWAPPING: under way; COMPLETED, FAILED, CANCELLED: finished and still kept).",
    ),
    (
        "shoal_disk_free_bytes",
        "Free bytes on the data directory's file system.",
    ),
    (
        "shoal_disk_total_bytes",
        "Size of the data directory's file system in bytes.",
    ),
    (
        "shoal_data_bytes",
        "Bytes of vshard data hosted here (Parquet parts and hot buffers).",
    ),
];

/// The scrape-time counters (kept as atomics elsewhere): (name, help).
const SCRAPE_COUNTERS: &[(&str, &str)] = &[
    (
        "shoal_tls_refused_handshakes_total",
        "TLS handshakes refused (bad or missing certificate, protocol error, timeout).",
    ),
    (
        "shoal_gossip_dropped_total",
        "SWIM datagrams dropped before parsing, by reason (forged, replayed).",
    ),
    (
        "shoal_failed_logins_total",
        "Failed logins (wrong password, unknown user or token), by protocol.",
    ),
    (
        "shoal_raft_leader_changes_total",
        "Leaders this node's replica of the group has seen take over since it was opened.",
    ),
    (
        "shoal_raft_proposals_failed_total",
        "Proposals (writes, group-0 commands) that failed: no quorum in time, a fatal log error.",
    ),
    (
        "shoal_raft_snapshots_sent_total",
        "Snapshots sent to a replica and installed there.",
    ),
    (
        "shoal_raft_snapshot_sent_bytes_total",
        "Bytes of the snapshots sent (Parquet parts and manifests).",
    ),
    (
        "shoal_raft_snapshots_received_total",
        "Snapshots installed here from a leader.",
    ),
    (
        "shoal_raft_snapshot_received_bytes_total",
        "Bytes of snapshot files received.",
    ),
    (
        "shoal_connections_refused_total",
        "Connections (http: requests) refused by a limit, by protocol and the limit's config key.",
    ),
];

/// A recorder for node `node_id`: every series labelled with it, seconds histograms with
/// [`SECONDS_BUCKETS`].
fn recorder(node_id: u64) -> PrometheusRecorder {
    PrometheusBuilder::new()
        .add_global_label("node", node_id.to_string())
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &SECONDS_BUCKETS)
        .expect("SECONDS_BUCKETS is not empty")
        .set_buckets_for_metric(
            Matcher::Full(WAL_BATCH.0.to_string()),
            &WAL_BATCH_BYTES_BUCKETS,
        )
        .expect("WAL_BATCH_BYTES_BUCKETS is not empty")
        .build_recorder()
}

fn counter(r: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    r.register_counter(&Key::from_parts(name, labels), &METADATA)
}

impl NodeMetrics {
    pub fn new(node_id: u64) -> NodeMetrics {
        let r = recorder(node_id);
        for (name, help) in [INGEST_REQUESTS, INGEST_ROWS, INGEST_BYTES, QUERIES] {
            r.describe_counter(KeyName::from_const_str(name), None, help.into());
        }
        r.describe_counter(
            KeyName::from_const_str(INGEST_REJECTED_ROWS.0),
            None,
            INGEST_REJECTED_ROWS.1.into(),
        );
        for (name, help) in [QUERY_DURATION, WAL_FSYNC, WAL_BATCH] {
            r.describe_histogram(KeyName::from_const_str(name), None, help.into());
        }
        let wal = Arc::new(WalHandles {
            fsync: r.register_histogram(&Key::from_name(WAL_FSYNC.0), &METADATA),
            batch: r.register_histogram(&Key::from_name(WAL_BATCH.0), &METADATA),
        });
        let ingest = Protocol::ALL.map(|p| {
            let protocol = || Label::new("protocol", p.as_str());
            IngestHandles {
                requests: StatusClass::ALL.map(|s| {
                    counter(
                        &r,
                        INGEST_REQUESTS.0,
                        vec![protocol(), Label::new("status", s.as_str())],
                    )
                }),
                rows: counter(&r, INGEST_ROWS.0, vec![protocol()]),
                bytes: counter(&r, INGEST_BYTES.0, vec![protocol()]),
            }
        });
        let queries = [Protocol::SqlHttp, Protocol::Postgres].map(|p| {
            let protocol = || Label::new("protocol", p.as_str());
            QueryHandles {
                statements: StatusClass::ALL.map(|s| {
                    counter(
                        &r,
                        QUERIES.0,
                        vec![protocol(), Label::new("status", s.as_str())],
                    )
                }),
                duration: r.register_histogram(
                    &Key::from_parts(QUERY_DURATION.0, vec![protocol()]),
                    &METADATA,
                ),
            }
        });
        NodeMetrics {
            node_id,
            handle: r.handle(),
            recorder: r,
            ingest,
            queries,
            wal,
            http_refused: Default::default(),
            pg_refused: Default::default(),
            sources: OnceLock::new(),
        }
    }

    /// What the node's WAL reports its group commits to.
    pub fn wal_observer(&self) -> Arc<dyn shoal_raftlog::LogObserver> {
        self.wal.clone()
    }

    /// A write request was rejected whole with `kind`; its body held `lines` lines.
    pub fn rejected(&self, p: Protocol, kind: ErrorKind, lines: u64) {
        let labels = vec![
            Label::new("protocol", p.as_str()),
            Label::new("reason", reason(kind)),
        ];
        counter(&self.recorder, INGEST_REJECTED_ROWS.0, labels).increment(lines);
    }

    /// The node's recorder, for metrics registered elsewhere later.
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// Called once the node has recovered: from then on scrapes include the scrape-time
    /// values.
    pub fn set_sources(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    /// Drains histogram samples every [`UPKEEP_INTERVAL`] (abort the task at shutdown).
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }

    fn queries(&self, p: Protocol) -> Option<&QueryHandles> {
        match p {
            Protocol::SqlHttp => Some(&self.queries[0]),
            Protocol::Postgres => Some(&self.queries[1]),
            Protocol::InfluxV1 | Protocol::InfluxV2 => None,
        }
    }

    /// One write request (or INSERT statement) ended: `bytes` received, `rows` acknowledged.
    pub fn ingest(&self, p: Protocol, status: StatusClass, bytes: u64, rows: u64) {
        let h = &self.ingest[p.index()];
        h.requests[status.index()].increment(1);
        h.bytes.increment(bytes);
        if rows > 0 {
            h.rows.increment(rows);
        }
    }

    /// One SQL statement ran for `took` and ended with `result`. An INSERT also counts as a
    /// write (a failed one is recognised by its first word).
    pub fn statement(
        &self,
        p: Protocol,
        sql: &str,
        took: Duration,
        result: Result<&QueryOutput, &QueryError>,
    ) {
        let status = match result {
            Ok(_) => StatusClass::Success,
            Err(e) => StatusClass::of_error(e),
        };
        if let Some(q) = self.queries(p) {
            q.statements[status.index()].increment(1);
            q.duration.record(took.as_secs_f64());
        }
        match result {
            Ok(QueryOutput::Command { tag, rows }) if tag.as_str() == "INSERT" => {
                self.ingest(p, status, sql.len() as u64, *rows);
            }
            Err(_) if is_insert(sql) => self.ingest(p, status, sql.len() as u64, 0),
            _ => {}
        }
    }

    /// A SQL request refused before any statement ran (still recovering, too many
    /// requests, a malformed body).
    pub fn refused(&self, p: Protocol, status: StatusClass) {
        if let Some(q) = self.queries(p) {
            q.statements[status.index()].increment(1);
        }
    }

    /// Every metric in the text exposition format: the hot-path ones, then the scrape-time
    /// ones (once the node has recovered).
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        if let Some(sources) = self.sources.get() {
            out.push_str(&self.collect(sources));
        }
        out
    }

    /// The scrape-time values, rendered from a recorder made for this scrape.
    fn collect(&self, src: &Sources) -> String {
        let r = recorder(self.node_id);
        for &(name, help) in SCRAPE_GAUGES {
            r.describe_gauge(KeyName::from_const_str(name), None, help.into());
        }
        for &(name, help) in SCRAPE_COUNTERS {
            r.describe_counter(KeyName::from_const_str(name), None, help.into());
        }
        let status = src.registry.status();
        raft_groups(&r, &status);
        raft_counts(&r, src);
        cluster(&r, src, &status);
        disk(&r, src, &status);
        security(&r, src);
        peers(&r, src);
        connections(&r, src);
        process(&r);
        r.handle().render()
    }
}

fn gauge(r: &PrometheusRecorder, name: &'static str, labels: Vec<Label>, value: f64) {
    r.register_gauge(&Key::from_parts(name, labels), &METADATA)
        .set(value);
}

/// This node's Raft groups: group 0 and every vshard replica hosted here.
fn raft_groups(r: &PrometheusRecorder, status: &[GroupStatus]) {
    for g in status {
        let group = || vec![Label::new("group", g.group.to_string())];
        let leads = if g.role == "leader" { 1.0 } else { 0.0 };
        gauge(r, "shoal_raft_term", group(), g.term as f64);
        gauge(r, "shoal_raft_is_leader", group(), leads);
        let applied = g.applied_index.unwrap_or(0) as f64;
        gauge(r, "shoal_raft_applied_index", group(), applied);
        let last = g.last_log_index.unwrap_or(0) as f64;
        gauge(r, "shoal_raft_last_log_index", group(), last);
        let committed = g.commit_index.unwrap_or(0) as f64;
        gauge(r, "shoal_raft_commit_index", group(), committed);
        counter(r, "shoal_raft_leader_changes_total", group()).absolute(g.leader_changes);
        for &(follower, _, behind) in &g.followers {
            let mut labels = group();
            labels.push(Label::new("follower", follower.to_string()));
            gauge(r, "shoal_raft_follower_lag_entries", labels, behind as f64);
        }
        if g.vshard.is_none() {
            continue;
        }
        if let Some(closed) = g.closed_ts {
            let lag = (shoal_common::time::now_nanos() - closed).max(0) as f64 / 1e9;
            gauge(r, "shoal_closed_timestamp_lag_seconds", group(), lag);
        }
        gauge(r, "shoal_hot_bytes", group(), g.stats.hot_bytes as f64);
        gauge(r, "shoal_parquet_parts", group(), g.stats.parts as f64);
        gauge(r, "shoal_parquet_bytes", group(), g.stats.part_bytes as f64);
    }
}

/// Raft events counted since the node started (every group together).
fn raft_counts(r: &PrometheusRecorder, src: &Sources) {
    let c = src.registry.counts();
    for (name, n) in [
        ("shoal_raft_proposals_failed_total", c.proposals_failed),
        ("shoal_raft_snapshots_sent_total", c.snapshots_sent),
        (
            "shoal_raft_snapshot_sent_bytes_total",
            c.snapshot_bytes_sent,
        ),
        ("shoal_raft_snapshots_received_total", c.snapshots_received),
        (
            "shoal_raft_snapshot_received_bytes_total",
            c.snapshot_bytes_received,
        ),
    ] {
        counter(r, name, vec![]).absolute(n);
    }
}

/// Breakers towards peers by state, and the peers' clock offsets.
fn peers(r: &PrometheusRecorder, src: &Sources) {
    use shoal_transport::peers::BreakerState;
    let breakers = src.peers.breakers();
    for state in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        let n = breakers.iter().filter(|(_, b)| *b == state).count();
        let labels = vec![Label::new("state", state.as_str())];
        gauge(r, "shoal_breakers", labels, n as f64);
    }
    let me = src.registry.node_id();
    let nodes: Vec<u64> = src
        .registry
        .catalog()
        .read()
        .nodes
        .keys()
        .copied()
        .collect();
    for id in nodes.into_iter().filter(|id| *id != me) {
        if let Some(ms) = src.clocks.offset_ms(id) {
            let labels = vec![Label::new("peer", id.to_string())];
            gauge(r, "shoal_clock_offset_seconds", labels, ms as f64 / 1e3);
        }
    }
}

/// Open connections and refusals by limit, per protocol.
fn connections(r: &PrometheusRecorder, src: &Sources) {
    for c in &src.connections {
        let protocol = || Label::new("protocol", c.protocol);
        gauge(r, "shoal_connections", vec![protocol()], (c.open)() as f64);
        for (limit, refused) in &c.refused {
            let labels = vec![protocol(), Label::new("limit", *limit)];
            counter(r, "shoal_connections_refused_total", labels).absolute(refused());
        }
    }
}

/// The standard process metrics, from `/proc/self` (Linux; elsewhere none are shown).
fn process(r: &PrometheusRecorder) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    gauge(r, "process_cpu_seconds_total", vec![], p.cpu_seconds);
    gauge(
        r,
        "process_resident_memory_bytes",
        vec![],
        p.resident_bytes as f64,
    );
    gauge(
        r,
        "process_virtual_memory_bytes",
        vec![],
        p.virtual_bytes as f64,
    );
    gauge(r, "process_open_fds", vec![], p.open_fds as f64);
    if let Some(max) = p.max_fds {
        gauge(r, "process_max_fds", vec![], max as f64);
    }
    gauge(
        r,
        "process_start_time_seconds",
        vec![],
        p.start_time_seconds,
    );
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on every Linux
/// architecture Shoal builds for).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about the process.
#[derive(Debug, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        ProcessStats::parse(&stat, &status, &boot, &limits, open_fds)
    }

    /// From the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and
    /// `/proc/self/limits`.
    fn parse(
        stat: &str,
        status: &str,
        boot: &str,
        limits: &str,
        open_fds: u64,
    ) -> Option<ProcessStats> {
        // The command name (field 2) is in parentheses and may hold spaces: fields are
        // counted from after its closing parenthesis, where field 3 starts.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let cpu_ticks = field(14)? + field(15)?;
        let start_ticks = field(22)?;
        let virtual_bytes = field(23)?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse().ok()
        };
        let boot_time: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse().ok());
        Some(ProcessStats {
            cpu_seconds: cpu_ticks as f64 / USER_HZ,
            resident_bytes: kib("VmRSS:")? * 1024,
            virtual_bytes,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + start_ticks as f64 / USER_HZ,
        })
    }
}

/// The `reason` label of a rejected write.
fn reason(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadInput => "bad_input",
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::DiskFull => "disk_full",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::Timeout => "timeout",
        ErrorKind::TxAborted => "tx_aborted",
        ErrorKind::NotSupported => "not_supported",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::Internal => "internal",
    }
}

/// The cluster as this node sees it: group 0's placement, each vshard's leader as
/// `system.shards` finds it (this node's replica, else the nodes' load reports, the highest
/// term winning), and SWIM for who is alive.
fn cluster(r: &PrometheusRecorder, src: &Sources, status: &[GroupStatus]) {
    let me = src.registry.node_id();
    let membership = &src.membership;
    let reachable = |n: u64| n == me || membership.state_of(n) == Some(MemberState::Alive);
    let catalog = src.registry.catalog().read().clone();
    let local: HashMap<u32, Option<u64>> = status
        .iter()
        .filter_map(|g| g.vshard.map(|v| (v, g.leader)))
        .collect();
    // Vshard → (term, node) of the leader the reports name.
    let mut reported: HashMap<u32, (u64, u64)> = HashMap::new();
    for &id in catalog.nodes.keys() {
        let Some(load) = src.controller.load_of(id) else {
            continue;
        };
        for l in &load.vshards {
            if let Some(term) = l.leader_term {
                let best = reported.entry(l.vshard).or_insert((term, id));
                if (term, id) > *best {
                    *best = (term, id);
                }
            }
        }
    }
    let leader = |v: u32| {
        local
            .get(&v)
            .copied()
            .flatten()
            .or_else(|| reported.get(&v).map(|(_, id)| *id))
    };
    let vshards = src.registry.vshards();
    let without_leader = (0..vshards)
        .filter(|v| leader(*v).is_none_or(|l| !reachable(l)))
        .count();
    // Below what the placement grows each vshard to with the cluster's ACTIVE nodes, dead
    // or alive (a single node, or two, is not an alert; a replica on a dead node is, until
    // the node comes back or its replicas are moved elsewhere).
    let usable = catalog
        .nodes
        .values()
        .filter(|n| n.state == shoal_consensus::NodeState::Active)
        .count();
    let wanted = shoal_cluster::placement::replicas_wanted(src.replication_factor, usable);
    let below_rf = (0..vshards)
        .filter(|v| {
            let live = catalog
                .replicas(*v)
                .into_iter()
                .filter(|n| reachable(*n))
                .count();
            live < wanted
        })
        .count();
    gauge(
        r,
        "shoal_vshards_without_leader",
        vec![],
        without_leader as f64,
    );
    gauge(
        r,
        "shoal_vshards_below_replication_factor",
        vec![],
        below_rf as f64,
    );
    // Group 0's records: nodes by lifecycle state, replica moves by state.
    use shoal_consensus::{MoveState, NodeState};
    for state in [
        NodeState::Joining,
        NodeState::Active,
        NodeState::Draining,
        NodeState::Decommissioning,
        NodeState::Decommissioned,
    ] {
        let n = catalog.nodes.values().filter(|x| x.state == state).count();
        let labels = vec![Label::new("state", state.as_str())];
        gauge(r, "shoal_nodes", labels, n as f64);
    }
    for state in [
        MoveState::Pending,
        MoveState::CatchingUp,
        MoveState::Swapping,
        MoveState::Completed,
        MoveState::Failed,
        MoveState::Cancelled,
    ] {
        let n = catalog.moves.values().filter(|m| m.state == state).count();
        let labels = vec![Label::new("state", state.as_str())];
        gauge(r, "shoal_moves", labels, n as f64);
    }
    let view = membership.view();
    for state in [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ] {
        let mut n = view.values().filter(|m| m.1 == state).count();
        if state == MemberState::Alive {
            // The view leaves this node out.
            n += 1;
        }
        let labels = vec![Label::new("state", state.as_str())];
        gauge(r, "shoal_members", labels, n as f64);
    }
}

/// The data directory's file system and the vshard data hosted here.
fn disk(r: &PrometheusRecorder, src: &Sources, status: &[GroupStatus]) {
    if let Ok(free) = fs4::available_space(&src.data_dir) {
        gauge(r, "shoal_disk_free_bytes", vec![], free as f64);
    }
    if let Ok(size) = fs4::total_space(&src.data_dir) {
        gauge(r, "shoal_disk_total_bytes", vec![], size as f64);
    }
    let data: u64 = status
        .iter()
        .filter(|g| g.vshard.is_some())
        .map(|g| g.stats.part_bytes + g.stats.hot_bytes)
        .sum();
    gauge(r, "shoal_data_bytes", vec![], data as f64);
    let wal = src.registry.wal().stats().disk_bytes;
    gauge(r, "shoal_wal_bytes", vec![], wal as f64);
}

/// Security counters, kept as atomics where they happen.
fn security(r: &PrometheusRecorder, src: &Sources) {
    let refused = src
        .tls
        .as_ref()
        .map_or(0, |t| t.refused_handshakes.load(Ordering::Relaxed));
    counter(r, "shoal_tls_refused_handshakes_total", vec![]).absolute(refused);
    let dropped = src.membership.dropped();
    for (reason, n) in [
        ("forged", dropped.forged.load(Ordering::Relaxed)),
        ("replayed", dropped.replayed.load(Ordering::Relaxed)),
    ] {
        let labels = vec![Label::new("reason", reason)];
        counter(r, "shoal_gossip_dropped_total", labels).absolute(n);
    }
    for (protocol, n) in src.gate.failed_logins() {
        let labels = vec![Label::new("protocol", protocol)];
        counter(r, "shoal_failed_logins_total", labels).absolute(n);
    }
}

/// Whether a statement is an INSERT, by its first word (for one that failed, whose result
/// does not say).
fn is_insert(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` exactly as rendered (labels in order: `node`
    /// first, then the series' own).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn hot_path_counts_render_with_the_node_label() {
        let m = NodeMetrics::new(7);
        let before = m.render();
        // Every series exists before anything happened, at zero.
        assert_eq!(
            value(
                &before,
                "shoal_ingest_rows_total{node=\"7\",protocol=\"influx_v1\"}"
            ),
            Some(0.0),
            "{before}"
        );
        m.ingest(Protocol::InfluxV1, StatusClass::Success, 100, 3);
        m.ingest(Protocol::InfluxV1, StatusClass::ClientError, 50, 0);
        let insert = QueryOutput::Command {
            tag: "INSERT".into(),
            rows: 2,
        };
        m.statement(
            Protocol::SqlHttp,
            "INSERT INTO t VALUES (1), (2)",
            Duration::from_millis(3),
            Ok(&insert),
        );
        let bad = QueryError::bad_input("no such table");
        m.statement(
            Protocol::Postgres,
            "  insert into nope values (1)",
            Duration::from_millis(1),
            Err(&bad),
        );
        m.refused(Protocol::SqlHttp, StatusClass::ServerError);
        let text = m.render();
        let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
        assert_eq!(
            v("shoal_ingest_rows_total{node=\"7\",protocol=\"influx_v1\"}"),
            3.0
        );
        assert_eq!(
            v("shoal_ingest_bytes_total{node=\"7\",protocol=\"influx_v1\"}"),
            150.0
        );
        assert_eq!(
            v("shoal_ingest_requests_total{node=\"7\",protocol=\"influx_v1\",status=\"4xx\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_ingest_rows_total{node=\"7\",protocol=\"sql_http\"}"),
            2.0
        );
        assert_eq!(
            v("shoal_ingest_requests_total{node=\"7\",protocol=\"postgres\",status=\"4xx\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_queries_total{node=\"7\",protocol=\"sql_http\",status=\"2xx\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_queries_total{node=\"7\",protocol=\"sql_http\",status=\"5xx\"}"),
            1.0
        );
        // A real histogram: 3 ms falls in the 5 ms bucket, not the 2.5 ms one.
        assert_eq!(
            v("shoal_query_duration_seconds_bucket{node=\"7\",protocol=\"sql_http\",le=\"0.0025\"}"),
            0.0
        );
        assert_eq!(
            v("shoal_query_duration_seconds_bucket{node=\"7\",protocol=\"sql_http\",le=\"0.005\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_query_duration_seconds_count{node=\"7\",protocol=\"sql_http\"}"),
            1.0
        );
        assert!(
            text.contains("# TYPE shoal_query_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# HELP shoal_ingest_rows_total "), "{text}");
    }

    #[test]
    fn process_stats_parse_proc_files() {
        // A command name with spaces and parentheses, as Linux prints it.
        let stat = "4242 (shoal (node) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    12 0 360000 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let status = "Name:\tshoal\nVmPeak:\t 999 kB\nVmRSS:\t    5120 kB\nThreads:\t12\n";
        let boot = "cpu  1 2 3\nbtime 1765000000\nprocesses 10\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            65536                65536                files\n";
        let p = ProcessStats::parse(stat, status, boot, limits, 17).expect("parses");
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.25,
                resident_bytes: 5120 * 1024,
                virtual_bytes: 987654321,
                open_fds: 17,
                max_fds: Some(65536),
                start_time_seconds: 1765000000.0 + 3600.0,
            }
        );
        assert_eq!(
            ProcessStats::parse("garbage", status, boot, limits, 1),
            None
        );
        // And this process's own files parse.
        let me = ProcessStats::read().expect("/proc/self");
        assert!(me.resident_bytes > 0 && me.open_fds > 0, "{me:?}");
    }

    #[test]
    fn wal_and_rejections_are_recorded() {
        let m = NodeMetrics::new(3);
        let wal = m.wal_observer();
        wal.fsynced(Duration::from_millis(2));
        wal.batch_written(5000);
        m.rejected(Protocol::InfluxV2, ErrorKind::BadInput, 12);
        let text = m.render();
        let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
        assert_eq!(v("shoal_wal_fsync_duration_seconds_count{node=\"3\"}"), 1.0);
        assert_eq!(
            v("shoal_wal_fsync_duration_seconds_bucket{node=\"3\",le=\"0.001\"}"),
            0.0
        );
        assert_eq!(
            v("shoal_wal_fsync_duration_seconds_bucket{node=\"3\",le=\"0.0025\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_wal_append_bytes_bucket{node=\"3\",le=\"4096\"}"),
            0.0
        );
        assert_eq!(
            v("shoal_wal_append_bytes_bucket{node=\"3\",le=\"16384\"}"),
            1.0
        );
        assert_eq!(
            v("shoal_ingest_rejected_rows_total{node=\"3\",protocol=\"influx_v2\",reason=\"bad_input\"}"),
            12.0
        );
    }

    #[test]
    fn statements_are_classed_like_http_answers() {
        assert_eq!(
            StatusClass::of(StatusCode::NO_CONTENT),
            StatusClass::Success
        );
        assert_eq!(
            StatusClass::of(StatusCode::TOO_MANY_REQUESTS),
            StatusClass::ClientError
        );
        assert_eq!(
            StatusClass::of(StatusCode::INSUFFICIENT_STORAGE),
            StatusClass::ServerError
        );
        assert!(is_insert(" INSERT INTO t VALUES (1)"));
        assert!(is_insert("insert into t values (1)"));
        assert!(!is_insert("SELECT 1"));
        assert!(!is_insert("ins"));
    }
}
