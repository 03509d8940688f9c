//! `GET /metrics` against a real node: Prometheus text that parses line by line, names and
//! labels as documented, counters that move by exactly what the test did, the endpoint open
//! on a node that requires logins, and a real Prometheus server scraping the node.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        assert!(s.name.starts_with("shoal_"), "{s:?}");
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
        assert!(s.name.starts_with("shoal_"), "{s:?}");
    }

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

/// `prometheus` on PATH; as root with apt-get it is installed from Debian's packages first
/// (as `.ci/run` does). `None`, with SKIP printed, when it is not to be had.
fn prometheus() -> Option<&'static str> {
    let have = || {
        Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return Some("prometheus");
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = Command::new("apt-get").arg("--version").output().is_ok();
    if root && apt {
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
    if have() {
        Some("prometheus")
    } else {
        println!("SKIP prometheus_scrapes_the_node: no prometheus (.ci/run installs it)");
        None
    }
}

/// What Prometheus' HTTP API answers for `shoal_ingest_rows_total` of line protocol v1 on
/// node `node`, once it has scraped it.
async fn rows_in_prometheus(http: &reqwest::Client, api: &str, node: &str) -> Option<f64> {
    let r = http
        .get(format!("{api}/api/v1/query?query=shoal_ingest_rows_total"))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["data"]["result"].as_array()?.iter().find(|s| {
        s["metric"]["protocol"].as_str() == Some("influx_v1")
            && s["metric"]["node"].as_str() == Some(node)
            && s["metric"]["job"].as_str() == Some("shoal")
    })?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// A real Prometheus scrapes the node every second and its query API returns the rows
/// written: the exposition is what Prometheus itself accepts, not only what our parser does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_node() {
    let Some(bin) = prometheus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let body: String = (1..=5)
        .map(|i| format!("mem,host=h{i} used={i} {i}\n"))
        .collect();
    assert_eq!(node.write(&body).await.0, 204);

    let config = dir.path().join("prometheus.yml");
    let yaml = format!(
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
    std::fs::write(&config, yaml).expect("write prometheus.yml");
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).expect("prometheus log");
    let port = support::free_port();
    let mut child = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");

    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}");
    let me = node.node_id.to_string();
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let got = rows_in_prometheus(&http, &api, &me).await;
        if got == Some(5.0) {
            break;
        }
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("prometheus exited ({status}); its log:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not return the 5 rows written (last answer {got:?}); its log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill().await;
}
