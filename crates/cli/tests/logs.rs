//! Logs an operator can search: with `--log-format json` every line is one JSON object, and
//! a request that fails (HTTP or Postgres) writes one line carrying the request id the
//! client was given (`X-Request-Id`; the Postgres error's DETAIL).

mod support;

use support::Node;

/// The node's stderr lines that parse as JSON objects; panics on any line that does not
/// (every line must, in JSON mode).
fn json_lines(node: &Node) -> Vec<serde_json::Value> {
    node.stderr_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}"))
        })
        .collect()
}

/// Waits until the log has a "request failed" line with `request_id` and returns it.
async fn failure_logged(node: &Node, request_id: &str) -> serde_json::Value {
    support::eventually(
        &format!("a log line for request {request_id}"),
        || async move {
            json_lines(node)
                .into_iter()
                .find(|l| l["request_id"] == request_id && l["message"] == "request failed")
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_log_their_request_id_as_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &["--log-format", "json"]).await;

    // A malformed write: 400, with an id the log line carries too.
    let r = node
        .http()
        .post(node.url("/write"))
        .body("cpu,host=a usage=oops 1\n")
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 400);
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let line = failure_logged(&node, &id).await;
    assert_eq!(line["protocol"], "http");
    assert_eq!(line["code"], "400");
    assert_eq!(line["what"], "POST /write");
    assert_eq!(line["level"], "INFO");
    assert!(
        line["error"].as_str().is_some_and(|e| e.contains("oops")),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "{line}");

    // A successful request carries an id too, and writes no failure line.
    let ok = node
        .http()
        .post(node.url("/v1/sql"))
        .header("x-request-id", "my-trace.1")
        .body("SELECT 1")
        .send()
        .await
        .expect("sql");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-request-id"], "my-trace.1");

    // Postgres: the error's DETAIL names the request; the log line has the same id.
    let client = support::pg_connect(&node, "shoal", "").await.expect("pg");
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("unknown table");
    let db = err.as_db_error().expect("a server error");
    let detail = db.detail().unwrap_or_default().to_string();
    let pg_id = detail
        .lines()
        .find_map(|l| l.strip_prefix("request id: "))
        .unwrap_or_else(|| panic!("no request id in DETAIL {detail:?}"))
        .to_string();
    let line = failure_logged(&node, &pg_id).await;
    assert_eq!(line["protocol"], "postgres");
    assert_eq!(line["code"], db.code().code());
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_table")),
        "{line}"
    );
    assert_ne!(pg_id, id);
    // No failure line for the request that worked.
    assert!(
        !json_lines(&node)
            .iter()
            .any(|l| l["request_id"] == "my-trace.1"),
        "a successful request was logged as failed"
    );
    // The ids name the node that answered.
    assert!(
        id.starts_with(&format!("{}-", node.node_id)),
        "{id} for node {}",
        node.node_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_format_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(support::BIN)
        .args(["start", "--data-dir"])
        .arg(dir.path())
        .args(["--http-addr", "127.0.0.1:0", "--log-format", "xml"])
        .output()
        .expect("run shoal");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("log_format must be \"text\" or \"json\""),
        "{stderr}"
    );
}
