//! `shoal bench` against a real node: every generated row lands exactly once, and both
//! benches write the JSON they promise. (Speed itself is never asserted.)

mod support;

use std::process::Command;

use support::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_then_query() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let ingest_json = dir.path().join("ingest.json");
    let out = Command::new(support::BIN)
        .args(["bench", "ingest", "--host", &node.addr, "--rows", "20000"])
        .args([
            "--symbols",
            "50",
            "--writers",
            "2",
            "--batch",
            "1000",
            "--json",
        ])
        .arg(&ingest_json)
        .output()
        .expect("run bench ingest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rows/s"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ingest_json).expect("json")).expect("parse");
    assert_eq!(v["rows"], 20000);
    assert!(v["batch_ms"]["p99"].as_f64().is_some(), "{v}");
    assert_eq!(node.count("SELECT count(*) FROM trades").await, 20000);
    assert_eq!(
        node.count("SELECT count(DISTINCT symbol) FROM trades")
            .await,
        50
    );

    let query_json = dir.path().join("query.json");
    let out = Command::new(support::BIN)
        .args([
            "bench", "query", "--host", &node.addr, "--runs", "1", "--json",
        ])
        .arg(&query_json)
        .output()
        .expect("run bench query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&query_json).expect("json")).expect("parse");
    let names: Vec<&str> = v["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| q["query"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Q1", "Q2", "Q3", "Q4", "Q5"]);
}

/// `--security both` loads fresh nodes twice — plainly, then over HTTPS with a token — and
/// prints the ratio; the secure run really was secure (the JSON says so).
#[test]
fn bench_ingest_plain_and_secure() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("ingest.json");
    let out = Command::new(support::BIN)
        .args([
            "bench",
            "ingest",
            "--start-nodes",
            "1",
            "--security",
            "both",
        ])
        .args([
            "--rows",
            "20000",
            "--symbols",
            "20",
            "--batch",
            "1000",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run bench ingest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ingest: 20000 rows").count(), 2, "{stdout}");
    assert!(stdout.contains("over HTTPS with a token"), "{stdout}");
    assert!(stdout.contains("secure / plain: "), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    assert_eq!(
        (v["scheme"].as_str(), v["authenticated"].as_bool()),
        (Some("https"), Some(true))
    );
    let bad = Command::new(support::BIN)
        .args(["bench", "ingest", "--security", "secure"])
        .output()
        .expect("run bench ingest");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--security needs --start-nodes"));
}
