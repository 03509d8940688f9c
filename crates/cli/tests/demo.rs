//! `shoal demo`: a 3-node cluster in one command, with sample data, stopped cleanly.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn demo_starts_a_cluster_with_data_and_stops_cleanly() {
    let mut child = Command::new(support::BIN)
        .args(["demo", "--nodes", "3", "--rows", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("demo not ready: {lines:?}"));
        let done = line == "shoal demo: ready";
        lines.push(line);
        if done {
            break;
        }
    }
    let urls: Vec<String> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("node "))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("http=")))
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 3, "{lines:?}");
    let data = lines
        .iter()
        .find_map(|l| l.split("data in ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .expect("data dir printed");
    assert!(data.exists());
    let client = reqwest::Client::new();
    let sql = |url: &str, q: &str| {
        client
            .post(format!("{url}/v1/sql"))
            .body(q.to_string())
            .send()
    };
    let v: serde_json::Value = sql(&urls[2], "SHOW NODES")
        .await
        .expect("show nodes")
        .json()
        .await
        .expect("json");
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(3), "{v}");
    let v: serde_json::Value = sql(&urls[0], "SELECT count(*) FROM trades")
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    assert_eq!(v["rows"][0][0].as_i64(), Some(3000), "{v}");

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(status.success(), "demo exit: {status}");
    assert!(!data.exists(), "temporary data removed on exit");
}
