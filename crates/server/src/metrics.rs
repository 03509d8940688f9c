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
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use axum::http::StatusCode;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use shoal_consensus::GroupStatus;
use shoal_membership::MemberState;
use shoal_query::{QueryError, QueryOutput};

/// The content type of the text exposition format `/metrics` answers in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are drained into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
    sources: OnceLock<Sources>,
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
        "shoal_vshards_below_replication_factor",
        "Vshards with fewer replicas on live nodes than the placement grows them to (replication_factor, or fewer while ACTIVE nodes are short), as seen here.",
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
];

/// A recorder for node `node_id`: every series labelled with it, seconds histograms with
/// [`SECONDS_BUCKETS`].
fn recorder(node_id: u64) -> PrometheusRecorder {
    PrometheusBuilder::new()
        .add_global_label("node", node_id.to_string())
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &SECONDS_BUCKETS)
        .expect("SECONDS_BUCKETS is not empty")
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
        r.describe_histogram(
            KeyName::from_const_str(QUERY_DURATION.0),
            None,
            QUERY_DURATION.1.into(),
        );
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
            sources: OnceLock::new(),
        }
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
        cluster(&r, src, &status);
        disk(&r, src, &status);
        security(&r, src);
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
    // Below what the placement grows each vshard to with the ACTIVE nodes alive now (a
    // single node, or two, is not an alert; a dead replica holder is).
    let usable = catalog
        .nodes
        .values()
        .filter(|n| n.state == shoal_consensus::NodeState::Active && reachable(n.id))
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
