//! SQL behaviour as sqllogictest files (`tests/slt/*.slt`), run against a started node over
//! HTTP. Each file gets a fresh node.

mod support;

use std::path::PathBuf;

use support::Node;

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

/// Statements go to the nodes' SQL endpoints in turn (one node: always the same).
struct HttpDb {
    urls: Vec<String>,
    next: usize,
    http: reqwest::Client,
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(s) if s.is_empty() => "(empty)".into(),
        serde_json::Value::String(s) => s.clone(),
        // Floats to 12 significant decimals: sums over vshards run in any order, so the last
        // bits of an average are not deterministic.
        serde_json::Value::Number(n) if n.is_f64() => {
            let s = format!("{:.12}", n.as_f64().unwrap_or(f64::NAN));
            let s = s.trim_end_matches('0').trim_end_matches('.');
            s.to_string()
        }
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for HttpDb {
    type Error = SqlError;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<Self::ColumnType>, SqlError> {
        let url = &self.urls[self.next % self.urls.len()];
        self.next += 1;
        let r = self
            .http
            .post(url)
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| SqlError(e.to_string()))?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.map_err(|e| SqlError(e.to_string()))?;
        if !status.is_success() {
            return Err(SqlError(format!(
                "{} {}",
                status.as_u16(),
                v["error"].as_str().unwrap_or("")
            )));
        }
        if v.get("command").is_some() {
            return Ok(sqllogictest::DBOutput::StatementComplete(
                v["rows"].as_u64().unwrap_or(0),
            ));
        }
        let types = v["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|col| match col["type"].as_str() {
                        Some("integer") | Some("unsigned") => {
                            sqllogictest::DefaultColumnType::Integer
                        }
                        Some("float") => sqllogictest::DefaultColumnType::FloatingPoint,
                        _ => sqllogictest::DefaultColumnType::Text,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rows = v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|c| c.iter().map(cell).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(sqllogictest::DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "shoal"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = shoal_common::fuzz::repo_root().join("crates/cli/tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("slt dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

/// Runs one file against `nodes`, statements spread over them in turn. `label` lets a
/// file say `skipif cluster` for the few records that describe the topology itself.
async fn run_file(file: &PathBuf, nodes: &[Node], label: Option<&str>) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/v1/sql")).collect();
    let mut runner = sqllogictest::Runner::new(move || {
        let urls = urls.clone();
        async move {
            Ok(HttpDb {
                urls,
                next: 0,
                http: reqwest::Client::new(),
            })
        }
    });
    if let Some(l) = label {
        runner.add_label(l);
    }
    if let Err(e) = runner.run_file_async(file).await {
        let logs: Vec<String> = nodes.iter().map(|n| n.stderr_text()).collect();
        panic!(
            "{}: {e}\nnode logs:\n{}",
            file.display(),
            logs.join("\n----\n")
        );
    }
    eprintln!("ok: {}", file.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass_on_a_single_node() {
    for file in slt_files() {
        let data = tempfile::tempdir().expect("tmp");
        let node = Node::start(data.path(), &[]).await;
        run_file(&file, &[node], None).await;
    }
}

/// The same files against a 3-node cluster with every vshard on three replicas: DDL is
/// forwarded to group 0's leader, writes to each vshard's leader, and reads are strong
/// wherever they land, so the results must be those of one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass_on_a_three_node_cluster() {
    for file in slt_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
        let nodes = support::cluster(&[&dirs[0], &dirs[1], &dirs[2]]).await;
        support::all_replicated(&nodes[0]).await;
        run_file(&file, &nodes, Some("cluster")).await;
    }
}
