//! `GET /metrics` against a real node: Prometheus text that parses line by line, names and
//! labels as documented, counters that move by exactly what the test did, the endpoint open
//! on a node that requires logins, and a real Prometheus server scraping the node.
//!
//! And `deploy/`: the alerting rules and the example config pass promtool (and the rules'
//! unit tests), every metric the Grafana dashboard and the rules name is exported by a real
//! cluster, and a real Prometheus loaded with the rules sees a killed node's vshards fall
//! below their replication factor and come back.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::load::Writer;
use support::Node;

/// One sample line of the text format.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses Prometheus' text format 0.0.4, failing the test on any line that is neither
/// blank, nor a `# HELP`/`# TYPE` line, nor a valid sample.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name, rest) = (
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
            );
            assert!(
                kind == "HELP" || kind == "TYPE",
                "line {}: not HELP or TYPE: {line:?}",
                i + 1
            );
            assert!(is_name(name), "line {}: bad name: {line:?}", i + 1);
            if kind == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                    "line {}: bad type: {line:?}",
                    i + 1
                );
            }
            continue;
        }
        match sample(line) {
            Ok(s) => out.push(s),
            Err(e) => panic!("line {}: {e}: {line:?}", i + 1),
        }
    }
    out
}

/// `name{label="value",…} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(['{', ' '])
        .ok_or_else(|| "no value".to_string())?;
    let name = &line[..end];
    if !is_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r
                .find('=')
                .ok_or_else(|| "a label without '='".to_string())?;
            let key = &r[..eq];
            if !is_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let quoted = r[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key:?}: value not quoted"))?;
            let mut value = String::new();
            let mut escaped = false;
            let mut close = None;
            for (at, c) in quoted.char_indices() {
                if escaped {
                    match c {
                        'n' => value.push('\n'),
                        '\\' | '"' => value.push(c),
                        _ => return Err(format!("label {key:?}: bad escape \\{c}")),
                    }
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    close = Some(at);
                    break;
                } else {
                    value.push(c);
                }
            }
            let close = close.ok_or_else(|| format!("label {key:?}: unterminated value"))?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key:?} twice"));
            }
            r = &quoted[close + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| "no space before the value".to_string())?;
    let mut fields = rest.split(' ');
    let value: f64 = fields
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|e| format!("bad value: {e}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("more than a value and a timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The value of the first sample named `name` that has every label of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// `GET /metrics` without credentials: 200, the text format's content type, every line
/// valid.
async fn scrape(node: &Node) -> Vec<Sample> {
    let r = node
        .http()
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&r.text().await.expect("metrics body"))
}

/// A node's metrics move by exactly what it was asked to do: 3 rows written over line
/// protocol, 1 SQL statement; they name themselves `shoal_*` and carry the node's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_node_did() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let me = node.node_id.to_string();
    let before = scrape(&node).await;
    assert!(!before.is_empty());
    for s in &before {
        assert!(ours(&s.name), "{s:?}");
        assert_eq!(s.labels.get("node"), Some(&me), "{s:?}");
    }
    let v1 = [("protocol", "influx_v1")];
    let v1_ok = [("protocol", "influx_v1"), ("status", "2xx")];
    let sql_ok = [("protocol", "sql_http"), ("status", "2xx")];
    let rows = value(&before, "shoal_ingest_rows_total", &v1).expect("ingest rows series");
    let bytes = value(&before, "shoal_ingest_bytes_total", &v1).expect("ingest bytes series");
    let writes = value(&before, "shoal_ingest_requests_total", &v1_ok).expect("requests");
    let queries = value(&before, "shoal_queries_total", &sql_ok).expect("queries series");

    let body = "cpu,host=a usage=1 1\ncpu,host=b usage=2 2\ncpu,host=c usage=3 3\n";
    assert_eq!(node.write(body).await.0, 204);
    assert_eq!(node.count("SELECT count(*) FROM cpu").await, 3);

    let after = scrape(&node).await;
    assert_eq!(
        value(&after, "shoal_ingest_rows_total", &v1),
        Some(rows + 3.0)
    );
    assert_eq!(
        value(&after, "shoal_ingest_bytes_total", &v1),
        Some(bytes + body.len() as f64)
    );
    assert_eq!(
        value(&after, "shoal_ingest_requests_total", &v1_ok),
        Some(writes + 1.0)
    );
    assert_eq!(
        value(&after, "shoal_queries_total", &sql_ok),
        Some(queries + 1.0)
    );
    // A real histogram (buckets, not a summary), holding the statement.
    let sql = [("protocol", "sql_http")];
    let bucket = "shoal_query_duration_seconds_bucket";
    let buckets = after
        .iter()
        .filter(|s| s.name == bucket && s.labels.contains_key("le"));
    assert!(buckets.count() > 2, "{after:?}");
    assert!(value(&after, "shoal_query_duration_seconds_count", &sql) >= Some(1.0));
    assert_eq!(
        value(
            &after,
            "shoal_query_duration_seconds_bucket",
            &[("protocol", "sql_http"), ("le", "+Inf")]
        ),
        value(&after, "shoal_query_duration_seconds_count", &sql)
    );
    for s in &after {
        assert!(ours(&s.name), "{s:?}");
    }
    // The write went through the WAL: at least one group commit, fsynced.
    let fsyncs = |s: &[Sample]| value(s, "shoal_wal_fsync_duration_seconds_count", &[]);
    assert!(fsyncs(&after) > fsyncs(&before), "{after:?}");
    assert!(value(&after, "shoal_wal_append_bytes_count", &[]) >= Some(1.0));

    // A malformed request is rejected whole: each of its lines counts, by reason.
    let rejected = [("protocol", "influx_v1"), ("reason", "bad_input")];
    let bad = "cpu,host=a usage=1 1\ncpu,host=b usage=oops 2\n";
    assert_eq!(node.write(bad).await.0, 400);
    let s = scrape(&node).await;
    assert_eq!(
        value(&s, "shoal_ingest_rejected_rows_total", &rejected),
        Some(2.0)
    );

    // The scrape-time values: this single node leads its groups, every vshard has a leader.
    let n = &node;
    support::eventually(
        "the metrics to show a leader for every vshard",
        || async move {
            let s = scrape(n).await;
            let leads = s
                .iter()
                .filter(|x| x.name == "shoal_raft_is_leader" && x.value == 1.0)
                .count();
            let terms = s.iter().filter(|x| x.name == "shoal_raft_term").count();
            let without = value(&s, "shoal_vshards_without_leader", &[])?;
            let alive = value(&s, "shoal_members", &[("state", "ALIVE")])?;
            (leads >= 1 && terms >= 2 && without == 0.0 && alive == 1.0).then_some(())
        },
    )
    .await;
    let s = scrape(&node).await;
    assert!(value(&s, "shoal_disk_free_bytes", &[]).is_some_and(|b| b > 0.0));
    assert!(value(&s, "shoal_data_bytes", &[]).is_some());
    assert_eq!(
        value(&s, "shoal_tls_refused_handshakes_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "shoal_gossip_dropped_total", &[("reason", "forged")]),
        Some(0.0)
    );
    // Raft: the vshard `cpu` went to has committed and applied its entries.
    let applied: f64 = s
        .iter()
        .filter(|x| x.name == "shoal_raft_applied_index")
        .map(|x| x.value)
        .sum();
    let committed: f64 = s
        .iter()
        .filter(|x| x.name == "shoal_raft_commit_index")
        .map(|x| x.value)
        .sum();
    assert!(committed >= applied && applied > 0.0, "{s:?}");
    assert!(value(&s, "shoal_parquet_parts", &[]).is_some(), "{s:?}");
    assert!(value(&s, "shoal_wal_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(
        value(&s, "shoal_raft_proposals_failed_total", &[]),
        Some(0.0)
    );
    // Connections: nothing in flight (a scrape takes no `http_max_concurrent_requests`
    // slot, only SQL and writes do), none refused.
    assert_eq!(
        value(&s, "shoal_connections", &[("protocol", "http")]),
        Some(0.0)
    );
    let refused = [
        ("protocol", "http"),
        ("limit", "http_max_concurrent_requests"),
    ];
    assert_eq!(
        value(&s, "shoal_connections_refused_total", &refused),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "shoal_connections", &[("protocol", "postgres")]),
        Some(0.0)
    );
    let refused = [("protocol", "postgres"), ("limit", "pg_max_connections")];
    assert_eq!(
        value(&s, "shoal_connections_refused_total", &refused),
        Some(0.0)
    );
    // The standard process metrics.
    assert!(value(&s, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
    assert!(value(&s, "process_open_fds", &[]).is_some_and(|n| n > 0.0));
    assert!(value(&s, "process_cpu_seconds_total", &[]).is_some_and(|c| c > 0.0));
}

/// Shoal's own metrics and the standard process ones.
fn ours(name: &str) -> bool {
    name.starts_with("shoal_") || name.starts_with("process_")
}

/// With users (logins required), `/metrics` still answers without credentials, and a
/// wrong password shows in `shoal_failed_logins_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_login_and_count_failed_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let pw_file = dir.path().join("admin-password");
    std::fs::write(&pw_file, "adm1n-Pa55\n").expect("write password file");
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--init-admin-password-file",
            pw_file.to_str().expect("utf8"),
        ],
    )
    .await;
    let http = [("protocol", "http")];
    let failed = value(&scrape(&node).await, "shoal_failed_logins_total", &http)
        .expect("failed logins series");
    let client = reqwest::Client::new();
    let anonymous = client
        .post(node.url("/v1/sql"))
        .body("SELECT 1")
        .send()
        .await
        .expect("sql");
    assert_eq!(anonymous.status(), 401, "SQL still needs a login");
    let wrong = client
        .post(node.url("/v1/sql"))
        .basic_auth("admin", Some("not-the-password"))
        .body("SELECT 1")
        .send()
        .await
        .expect("sql");
    assert_eq!(wrong.status(), 401);
    let after = scrape(&node).await;
    assert_eq!(
        value(&after, "shoal_failed_logins_total", &http),
        Some(failed + 1.0)
    );
}

// ---------------------------------------------------------------------------------------
// A real Prometheus (and promtool), from Debian's `prometheus` package.

/// Serializes the one attempt to install Debian's `prometheus` package, so tests running at
/// the same time do not fight over dpkg's lock.
static PROMETHEUS_INSTALL: OnceLock<()> = OnceLock::new();

/// `bin` (`prometheus` or `promtool`, both in Debian's `prometheus` package) on PATH; as
/// root with apt-get the package is installed first (as `.ci/run` does). `None`, with SKIP
/// printed for `test`, when it is not to be had.
fn prometheus_tool(bin: &'static str, test: &str) -> Option<&'static str> {
    let have = || {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        PROMETHEUS_INSTALL.get_or_init(install_prometheus);
    }
    if have() {
        Some(bin)
    } else {
        println!("SKIP {test}: no {bin} (Debian's prometheus package; .ci/run installs it)");
        None
    }
}

fn install_prometheus() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = Command::new("apt-get").arg("--version").output().is_ok();
    if !(root && apt) {
        return;
    }
    let installed = Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq && apt-get install -y -qq prometheus >/dev/null")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("apt-get could not install prometheus");
    }
}

/// Prometheus' instant-query and alerts endpoints.
const QUERY: &str = "/api/v1/query";
const ALERTS: &str = "/api/v1/alerts";

/// A Prometheus server started by this test, its TSDB and log under a test directory;
/// killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    api: String,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `bin` with `config` (YAML, written to `dir/prometheus.yml`).
    fn start(bin: &str, dir: &Path, config: &str) -> Prometheus {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("prometheus log");
        let port = support::free_port();
        let child = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}"),
            log_path,
            http: reqwest::Client::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The JSON answer of `GET path?params`, `None` while Prometheus does not answer.
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .query(params)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Asks `path?params` until `check` accepts the answer; fails the test after
    /// [`support::DEADLINE`] naming `what`, with Prometheus' last answer and its log, or at
    /// once if Prometheus exited.
    async fn until<T>(
        &mut self,
        what: &str,
        path: &str,
        params: &[(&str, &str)],
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + support::DEADLINE;
        loop {
            let answer = self.get(path, params).await;
            if let Some(v) = answer.as_ref().and_then(&mut check) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; Prometheus last answered {path} {params:?} with {}; its log:\n{}",
                answer.as_ref().map_or_else(|| "nothing".to_string(), Value::to_string),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// An instant query's samples by the value of their label `label` (`None` unless the query
/// succeeded and every sample has that label).
fn by_label(answer: &Value, label: &str) -> Option<BTreeMap<String, f64>> {
    if answer["status"].as_str() != Some("success") {
        return None;
    }
    answer["data"]["result"]
        .as_array()?
        .iter()
        .map(|s| {
            let key = s["metric"][label].as_str()?.to_string();
            Some((key, s["value"][1].as_str()?.parse::<f64>().ok()?))
        })
        .collect()
}

/// The value of an instant query that answers one sample (an aggregate without `by`).
fn single_value(answer: &Value) -> Option<f64> {
    answer["data"]["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// A real Prometheus scrapes the node every second and its query API returns the rows
/// written: the exposition is what Prometheus itself accepts, not only what our parser does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_node() {
    let Some(bin) = prometheus_tool("prometheus", "prometheus_scrapes_the_node") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let body: String = (1..=5)
        .map(|i| format!("mem,host=h{i} used={i} {i}\n"))
        .collect();
    assert_eq!(node.write(&body).await.0, 204);

    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: shoal
    static_configs:
      - targets: ["{}"]
"#,
        node.addr
    );
    let mut prom = Prometheus::start(bin, dir.path(), &config);
    let me = node.node_id.to_string();
    let query = [("query", "shoal_ingest_rows_total")];
    prom.until(
        "Prometheus to return the 5 rows written",
        QUERY,
        &query,
        |a| {
            let series = a["data"]["result"].as_array()?.iter().find(|s| {
                s["metric"]["protocol"].as_str() == Some("influx_v1")
                    && s["metric"]["node"].as_str() == Some(me.as_str())
                    && s["metric"]["job"].as_str() == Some("shoal")
            })?;
            let rows: f64 = series["value"][1].as_str()?.parse().ok()?;
            (rows == 5.0).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// deploy/: the alerting rules and the Grafana dashboard.

/// A file under `deploy/` of this checkout (found at run time, see `repo_root`).
fn deploy(path: &str) -> PathBuf {
    shoal_common::fuzz::repo_root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The checked-in alerting rules (YAML).
fn alert_rules() -> String {
    read(&deploy("prometheus/shoal-alerts.yml"))
}

/// The checked-in Grafana dashboard, parsed.
fn dashboard() -> Value {
    let path = deploy("grafana/shoal-dashboard.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel of a dashboard, those nested in (collapsed) rows included.
fn dashboard_panels(d: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The PromQL of every panel's queries.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    dashboard_panels(d)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The dashboard's query with its Grafana variables replaced, as Prometheus would get it.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$node", ".*")
}

/// The metric the dashboard's `node` variable takes its values from.
const NODE_VARIABLE_METRIC: &str = "shoal_raft_term";

/// Panels the dashboard must have, by title: the questions an operator asks first.
const DASHBOARD_PANELS: &[&str] = &[
    "Vshards without leader / under-replicated, by node",
    "SWIM members by state",
    "Ingest rows/s by node and protocol",
    "Ingest requests/s by status",
    "Queries/s by protocol and status",
    "Query latency p50 / p95 / p99",
    "Raft leaders per node",
    "Follower replication lag (entries)",
    "Leader changes (5m)",
    "Disk free fraction",
    "WAL fsync p99",
    "Resident memory",
    "CPU",
];

/// The dashboard's shape: its data source and `node` variables, the panels of
/// [`DASHBOARD_PANELS`], unique panel ids, and a query in every panel, on the data source
/// chosen in the variable.
fn check_dashboard(d: &Value) {
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"].as_str() == Some(name));
    let ds = var("DS_PROMETHEUS").expect("a DS_PROMETHEUS variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let node = var("node").expect("a node variable");
    assert_eq!(node["type"], "query");
    assert_eq!(
        node["definition"].as_str(),
        Some(format!("label_values({NODE_VARIABLE_METRIC}, node)").as_str())
    );

    let panels = dashboard_panels(d);
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?}: no id"));
        assert!(ids.insert(id), "panel {title:?}: id {id} used twice");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?}"
        );
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "panel {title:?}: a query in every panel: {p}"
        );
    }
    for title in DASHBOARD_PANELS {
        assert!(
            panels.iter().any(|p| p["title"].as_str() == Some(*title)),
            "the dashboard has no panel {title:?}"
        );
    }
}

/// The `expr:` of every rule in a Prometheus rule file: a plain or quoted scalar on the
/// key's line, or a `|`/`>` block below it. (No YAML parser among the dependencies; the
/// count is checked against promtool's.)
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = vec![];
    for (i, line) in lines.iter().enumerate() {
        let key = line.trim_start();
        let key = key.strip_prefix("- ").unwrap_or(key);
        let Some(value) = key.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" ").trim().to_string());
        } else if let Some(q) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            out.push(q.replace("''", "'"));
        } else if let Some(q) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            out.push(q.replace("\\\"", "\"").replace("\\\\", "\\"));
        } else {
            // A plain scalar ends where a comment starts.
            out.push(value.split(" #").next().unwrap_or(value).trim().to_string());
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// PromQL words that are never metric names: aggregations (which may come before
/// `by (…)` rather than `(`), binary operators, modifiers and literals. Functions are
/// told by the `(` after them.
const PROMQL_KEYWORDS: &str = "sum min max avg group stddev stdvar count count_values \
    bottomk topk quantile limitk limit_ratio and or unless atan2 bool offset inf nan";

/// PromQL words whose `(…)` after them lists label names.
const LABEL_LIST_KEYWORDS: &str = "by without on ignoring group_left group_right";

/// The metric names a PromQL expression reads: its identifiers but functions, keywords,
/// label names (in `{…}`, or listed after `by`, `without`, `on`, …), numbers and durations,
/// strings, Grafana variables (`$node`) and `up` (Prometheus' own). A histogram's series
/// keep their `_bucket`/`_sum`/`_count` suffix, as in the exposition.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = past_string(&chars, i);
        } else if c == '{' {
            i = past_group(&chars, i, '}');
        } else if c == '[' {
            i = past_group(&chars, i, ']');
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            // A number, a duration or a Grafana variable.
            i += 1;
            while i < chars.len() && (word_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let keyword = word.to_ascii_lowercase();
            let next = i + chars[i..].iter().take_while(|c| c.is_whitespace()).count();
            let call = chars.get(next) == Some(&'(');
            let is = |words: &str| words.split_whitespace().any(|w| w == keyword);
            if is(LABEL_LIST_KEYWORDS) {
                if call {
                    i = past_group(&chars, next, ')');
                }
            } else if !call && !is(PROMQL_KEYWORDS) && word != "up" {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the `close` that ends the group opened at `chars[open]`, strings
/// inside it skipped whole.
fn past_group(chars: &[char], open: usize, close: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = past_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index just past the string literal whose opening quote is `chars[start]`.
fn past_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The name extraction the next tests rely on: what it keeps and what it drops.
#[test]
fn promql_metric_names_skip_functions_labels_and_variables() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{node=~"$node", le!="0.5"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(names("max by (node) (abs(b)) > 0.25"), ["b"]);
    assert_eq!(
        names("c / on (node) group_left (state) d offset 5m"),
        ["c", "d"]
    );
    assert_eq!(
        names(r#"time() - e{job="x"} and up{job="shoal"} == 0"#),
        ["e"]
    );
    assert_eq!(
        names("count(f) by (node) unless SUM without (peer) (g)"),
        ["f", "g"]
    );
    assert_eq!(
        names(r#"h{a="}{"} * on(x) group_left i + sum(j)"#),
        ["h", "i", "j"]
    );
    let rules = "- alert: A\n  expr: k > 0 # a comment\n- alert: B\n  expr: |\n    sum(l)\n      > 1\n  for: 1m\n";
    assert_eq!(rule_exprs(rules), ["k > 0", "sum(l) > 1"]);
}

/// The alerting rules and the example config are what Prometheus accepts, the rules do what
/// their unit tests (`shoal-alerts.test.yml`) say, and every dashboard query parses.
#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = prometheus_tool("promtool", "alert_rules_pass_promtool") else {
        return;
    };
    let run = |dir: &Path, args: &[&str]| -> String {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run promtool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "promtool {} (in {}) failed:\n{text}",
            args.join(" "),
            dir.display()
        );
        text
    };
    let dir = deploy("prometheus");
    let checked = run(dir.as_path(), &["check", "rules", "shoal-alerts.yml"]);
    let rules = rule_exprs(&alert_rules()).len();
    assert!(
        checked.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool and this test count the rules differently ({rules} here):\n{checked}"
    );
    run(dir.as_path(), &["check", "config", "prometheus.yml"]);
    run(dir.as_path(), &["test", "rules", "shoal-alerts.test.yml"]);

    // The dashboard's queries, as recording rules: promtool parses each.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let quoted = serde_json::to_string(&without_grafana_variables(expr)).expect("json");
        yaml += &format!("      - record: dashboard_query_{i}\n        expr: {quoted}\n");
    }
    std::fs::write(tmp.path().join("dashboard.yml"), yaml).expect("write dashboard.yml");
    run(tmp.path(), &["check", "rules", "dashboard.yml"]);
}

/// Every metric the dashboard and the alerting rules name is exported by a node of a real
/// 3-node cluster that has been written to and queried through every node: a renamed or
/// missing metric shows here, not as an empty panel or an alert that can never fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_metrics_that_exist() {
    let d = dashboard();
    check_dashboard(&d);
    let rules = alert_rules();
    let alert_exprs = rule_exprs(&rules);
    assert_eq!(
        alert_exprs.len(),
        rules.matches("- alert:").count(),
        "one expr per alert: {alert_exprs:?}"
    );
    let mut wanted: BTreeSet<String> = dashboard_exprs(&d)
        .iter()
        .chain(&alert_exprs)
        .flat_map(|e| metric_names(e.as_str()))
        .collect();
    wanted.insert(NODE_VARIABLE_METRIC.to_string());
    for name in [
        "shoal_vshards_without_leader",
        "shoal_wal_fsync_duration_seconds_bucket",
        "process_cpu_seconds_total",
    ] {
        assert!(wanted.contains(name), "{name} not found in {wanted:?}");
    }

    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let c = support::cluster(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>()).await;
    for (i, n) in c.iter().enumerate() {
        let body: String = (0..3)
            .map(|j| format!("cpu,host=n{i} usage={j} {}\n", 1 + 10 * i + j))
            .collect();
        let (status, text) = n.write(&body).await;
        assert_eq!(status, 204, "write through node {}: {text}", n.node_id);
        let (status, v) = n.sql("SELECT count(*) FROM cpu").await;
        assert_eq!(status, 200, "query through node {}: {v}", n.node_id);
    }
    // Some series need a moment: clock offsets are measured every 2 s, histogram samples
    // reach their buckets at the next upkeep.
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let mut exported = BTreeSet::new();
        for n in &c {
            exported.extend(scrape(n).await.into_iter().map(|s| s.name));
        }
        let missing: Vec<&String> = wanted.difference(&exported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or the alerting rules name metrics no node exports: {missing:?}\n\
             exported: {exported:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes Prometheus' file-based target list: the HTTP address of every node of `nodes`.
fn write_targets(path: &Path, nodes: &[Node]) {
    let addrs: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let json = serde_json::json!([{ "targets": addrs }]).to_string();
    // Replaced by a rename, so Prometheus never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).expect("write targets");
    std::fs::rename(&tmp, path).expect("rename targets");
}

/// A real Prometheus, with the checked-in alerting rules, watches a 3-node cluster through a
/// node's kill -9 and restart: it sees the rows being written; once a node is killed, the
/// survivors' `shoal_vshards_below_replication_factor` above 0 and the alerts ShoalNodeDown
/// and ShoalVshardsUnderReplicated pending; with the node back (same data directory,
/// scraped at its new HTTP address), every node at 0 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_killed_node_under_replicate() {
    let Some(bin) = prometheus_tool(
        "prometheus",
        "prometheus_sees_a_killed_node_under_replicate",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let mut c = support::cluster(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>()).await;
    let ids: Vec<String> = c.iter().map(|n| n.node_id.to_string()).collect();

    // Targets in a file, so the restarted node (on a new HTTP port) is scraped too.
    let targets = tmp.path().join("targets.json");
    write_targets(&targets, &c);
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{}"]
scrape_configs:
  - job_name: shoal
    file_sd_configs:
      - files: ["{}"]
        refresh_interval: 1s
"#,
        deploy("prometheus/shoal-alerts.yml").display(),
        targets.display()
    );
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir(&prom_dir).expect("mkdir prometheus");
    let mut prom = Prometheus::start(bin, &prom_dir, &config);

    // Only samples of the last 3 s count: a node is in the answer while it is scraped, not
    // for as long as Prometheus would look back to its last sample (up to 5 min).
    let below = [(
        "query",
        "max by (node) (max_over_time(shoal_vshards_below_replication_factor[3s]))",
    )];
    let all_at_zero = |a: &Value| {
        let by_node = by_label(a, "node")?;
        ids.iter()
            .all(|id| by_node.get(id) == Some(&0.0))
            .then_some(())
    };
    prom.until(
        "every node scraped and seeing every vshard at its replication factor",
        QUERY,
        &below,
        all_at_zero,
    )
    .await;

    let urls = Arc::new(Mutex::new(c.iter().map(|n| n.url("")).collect::<Vec<_>>()));
    let writer = Writer::start(urls.clone());
    let rate = [("query", "sum(rate(shoal_ingest_rows_total[15s]))")];
    prom.until("a rate of rows written above 0", QUERY, &rate, |a| {
        (single_value(a)? > 0.0).then_some(())
    })
    .await;

    let victim_url = c[2].url("");
    let victim_addr = c[2].addr.clone();
    urls.lock().expect("urls").retain(|u| *u != victim_url);
    c[2].kill9();
    let survivors = &ids[..2];
    prom.until(
        "a survivor to report vshards below their replication factor",
        QUERY,
        &below,
        |a| {
            let by_node = by_label(a, "node")?;
            survivors
                .iter()
                .any(|id| by_node.get(id).is_some_and(|v| *v > 0.0))
                .then_some(())
        },
    )
    .await;
    prom.until(
        "ShoalNodeDown for the killed node and ShoalVshardsUnderReplicated pending or firing",
        ALERTS,
        &[],
        |a| {
            let alerts = a["data"]["alerts"].as_array()?;
            let active = |name: &str, label: &str, value: &str| {
                alerts.iter().any(|x| {
                    x["labels"]["alertname"].as_str() == Some(name)
                        && x["labels"][label].as_str() == Some(value)
                        && matches!(x["state"].as_str(), Some("pending" | "firing"))
                })
            };
            (active("ShoalNodeDown", "instance", victim_addr.as_str())
                && survivors
                    .iter()
                    .any(|id| active("ShoalVshardsUnderReplicated", "node", id.as_str())))
            .then_some(())
        },
    )
    .await;

    c[2].restart().await;
    write_targets(&targets, &c);
    urls.lock().expect("urls").push(c[2].url(""));
    prom.until(
        "every node, the restarted one at its new address, back at 0 vshards below their replication factor",
        QUERY,
        &below,
        all_at_zero,
    )
    .await;
    let written = writer.finish().await;
    assert!(written > 0, "the writer wrote nothing");
}
