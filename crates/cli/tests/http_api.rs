//! The HTTP API against a real node: line protocol v1/v2 (gzip too), SQL formats, bad
//! input answered with specific 4xx while the node keeps serving, idempotent retries.

mod support;

use std::io::Write;

use support::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_and_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &["--max-body-bytes", "4096"]).await;
    let http = reqwest::Client::new();

    // v1 write, then the same body again: a retry adds nothing.
    let body = "trades,symbol=AAPL,side=B price=1.5,size=10i 1704067200000000000\n\
                trades,symbol=MSFT,side=S price=2.5,size=20i 1704067201000000000\n";
    assert_eq!(node.write(body).await.0, 204);
    assert_eq!(node.write(body).await.0, 204);
    assert_eq!(
        node.count("SELECT count(*) FROM trades").await,
        2,
        "a retried body must not duplicate rows"
    );

    // v2 write with gzip and second precision; a new field adds a column.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"trades,symbol=AAPL,side=B price=3.5,size=5i,venue=\"X\" 1704067202\n")
        .expect("gzip");
    let r = http
        .post(node.url("/api/v2/write?bucket=b&org=o&precision=s"))
        .header("Content-Encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .await
        .expect("v2");
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    let (status, v) = node
        .sql("SELECT venue, ts FROM trades WHERE venue IS NOT NULL")
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["rows"][0][0], "X");
    assert_eq!(
        v["rows"][0][1], "2024-01-01T00:00:02Z",
        "precision=s scales to nanoseconds"
    );

    // An Idempotency-Key makes different bodies one request.
    for price in ["7.0", "8.0"] {
        let r = http
            .post(node.url("/write?db=test"))
            .header("Idempotency-Key", "order-42")
            .body(format!(
                "trades,symbol=IBM price={price} 1704067203000000000\n"
            ))
            .send()
            .await
            .expect("write");
        assert_eq!(r.status(), 204);
    }
    assert_eq!(
        node.count("SELECT count(*) FROM trades WHERE symbol = 'IBM'")
            .await,
        1
    );

    // Malformed line: 400 naming the line; the whole request is rejected, so the valid first
    // line and the new measurement on it are not written.
    let (status, text) = node
        .write("fresh,host=a v=1 1\ntrades,symbol=AAPL price= 2\n")
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 2"), "{text}");
    let (status, v) = node.sql("SELECT count(*) FROM fresh").await;
    assert_eq!(
        status, 400,
        "a rejected request must not create tables: {v}"
    );

    // Type conflict against the stored schema: 400 naming line, field and both types.
    let (status, text) = node
        .write("trades,symbol=AAPL price=1 5\ntrades,symbol=AAPL price=\"high\" 6\n")
        .await;
    assert_eq!(status, 400);
    assert!(
        text.contains("line 2")
            && text.contains("price")
            && text.contains("string")
            && text.contains("float"),
        "{text}"
    );

    // Oversized body: 413.
    let big = format!("trades,symbol=AAPL price=1 {}\n", "9".repeat(5000));
    assert_eq!(node.write(&big).await.0, 413);

    // Bad SQL and unknown tables: 400 with the engine's message.
    let (status, v) = node.sql("SELEC 1").await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = node.sql("SELECT * FROM no_such_table").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("no_such_table"),
        "{v}"
    );
    let (status, _) = node
        .sql("CREATE TABLE trades (ts TIMESTAMP, v DOUBLE)")
        .await;
    assert_eq!(status, 409, "duplicate table");

    // Unknown precision and format.
    let r = http
        .post(node.url("/write?precision=fortnights"))
        .body("m v=1 1\n")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);
    let r = http
        .post(node.url("/v1/sql?format=xml"))
        .body("SELECT 1")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);

    // After all of that the node still serves, and nothing was half-written.
    assert_eq!(node.count("SELECT count(*) FROM trades").await, 4);

    // Other formats.
    let csv = http
        .post(node.url("/v1/sql?format=csv"))
        .body("SELECT symbol FROM trades ORDER BY ts LIMIT 1")
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.text().await.expect("text"), "symbol\nAAPL\n");
    let jl = http
        .post(node.url("/v1/sql?format=jsonl"))
        .header("Content-Type", "application/json")
        .body(r#"{"sql": "SELECT symbol, size FROM trades ORDER BY ts LIMIT 1"}"#)
        .send()
        .await
        .expect("jsonl");
    assert_eq!(
        jl.text().await.expect("text"),
        "{\"symbol\":\"AAPL\",\"size\":10}\n"
    );
    let arrow = http
        .post(node.url("/v1/sql?format=arrow"))
        .body("SELECT 1 AS one")
        .send()
        .await
        .expect("arrow");
    assert_eq!(
        arrow.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    assert!(arrow.bytes().await.expect("bytes").len() > 100);

    // Liveness.
    assert_eq!(
        http.get(node.url("/health/live"))
            .send()
            .await
            .expect("live")
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let out = std::process::Command::new(support::BIN)
        .args([
            "start",
            "--http-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another Shoal process"), "{err}");
    // The first node is unaffected.
    assert_eq!(node.sql("SELECT 1").await.0, 200);
}

/// `transparent_huge_pages` reaches the kernel: off by default, on when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_follow_the_setting() {
    let thp = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(dir.path(), &[]).await;
    if thp(node.pid()).is_none() {
        eprintln!("SKIP: this kernel does not report THP_enabled");
        return;
    }
    assert_eq!(thp(node.pid()).as_deref(), Some("0"), "off by default");
    node.set_extra(&["--transparent-huge-pages", "true"]);
    node.restart_graceful().await;
    assert_eq!(thp(node.pid()).as_deref(), Some("1"), "on when asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("shoal.toml");
    std::fs::write(&cfg, "flush_age = 5\n").expect("write");
    let out = std::process::Command::new(support::BIN)
        .arg("start")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flush_age"), "{err}");
}

/// A point written again (same table, tags and ts) replaces the earlier one, whether the
/// earlier version is still hot or already flushed to Parquet, and a filter on a value never
/// exposes the replaced version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_points_last_write_wins() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(dir.path(), &[]).await;
    let t0 = 1_704_067_200_000_000_000i64;
    // Repeats inside one request: the last line wins.
    let body = format!(
        "q,sym=A,venue=X px=1 {t0}\nq,sym=A,venue=X px=2 {t0}\nq,sym=A px=9 {t0}\nq,sym=B,venue=X px=3 {t0}\n"
    );
    assert_eq!(node.write(&body).await.0, 204);
    // A graceful stop flushes the hot buffer, so the first versions now live in Parquet.
    node.restart_graceful().await;
    assert!(
        parquet_files(dir.path()) > 0,
        "the stop should have flushed"
    );
    assert_eq!(
        node.write(&format!("q,sym=A,venue=X px=10 {t0}\n")).await.0,
        204
    );
    let (status, v) = node
        .sql("SELECT sym, venue, px FROM q ORDER BY sym, venue NULLS FIRST")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["rows"],
        serde_json::json!([["A", null, 9.0], ["A", "X", 10.0], ["B", "X", 3.0]]),
        "a missing tag is a series of its own; the newest px of A/X wins"
    );
    let (_, v) = node.sql("SELECT count(*) FROM q WHERE px < 5").await;
    assert_eq!(
        v["rows"],
        serde_json::json!([[1]]),
        "only B/X matches; the replaced A/X px=2 must stay hidden"
    );
    // Both versions hot: the newer still wins, then survives another flush.
    assert_eq!(
        node.write(&format!("q,sym=B,venue=X px=4 {t0}\n")).await.0,
        204
    );
    assert_eq!(
        node.write(&format!("q,sym=B,venue=X px=5 {t0}\n")).await.0,
        204
    );
    let q = "SELECT px FROM q WHERE sym = 'B'";
    assert_eq!(node.sql(q).await.1["rows"], serde_json::json!([[5.0]]));
    node.restart_graceful().await;
    assert_eq!(node.sql(q).await.1["rows"], serde_json::json!([[5.0]]));
    assert_eq!(node.count("SELECT count(*) FROM q").await, 3);
}

fn parquet_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            n += parquet_files(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

/// Session settings as query parameters, and SQLSTATEs in HTTP error bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_settings_as_parameters() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let post = |q: &'static str, sql: &'static str| {
        http.post(node.url(&format!("/v1/sql?{q}")))
            .body(sql)
            .send()
    };
    let r = post(
        "statement_timeout=1ms",
        "SELECT count(*) FROM generate_series(1, 2000000000) a CROSS JOIN generate_series(1, 10) b",
    )
    .await
    .expect("sql");
    assert_eq!(r.status(), 408);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["sqlstate"], "57014", "{v}");
    let r = post("read_consistency=sometimes", "SELECT 1")
        .await
        .expect("sql");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["sqlstate"], "22023", "{v}");
    let r = post("read_consistency=eventual", "SHOW read_consistency")
        .await
        .expect("sql");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["rows"][0][0], "eventual", "{v}");
    // One request may hold a whole transaction block.
    let (status, v) = node
        .sql("BEGIN; CREATE TABLE x1 (ts TIMESTAMP, v DOUBLE); CREATE TABLE x2 (ts TIMESTAMP, v DOUBLE); COMMIT; SHOW TABLES")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"], serde_json::json!([["x1"], ["x2"]]));
}

/// A statement sent again verbatim runs a kept plan (`shoal_query::plancache`): it must
/// still see rows written since, columns a write added, a table dropped and created again,
/// and a clock that moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_queries_see_what_changed_since_they_were_planned() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let t0 = 1_704_067_200_000_000_000i64;
    assert_eq!(node.write(&format!("m,k=a v=1 {t0}\n")).await.0, 204);
    let count = "SELECT count(*), sum(v) FROM m WHERE k = 'a'";
    assert_eq!(
        node.sql(count).await.1["rows"],
        serde_json::json!([[1, 1.0]])
    );
    assert_eq!(
        node.sql(count).await.1["rows"],
        serde_json::json!([[1, 1.0]])
    );
    assert_eq!(node.write(&format!("m,k=a v=2 {}\n", t0 + 1)).await.0, 204);
    assert_eq!(
        node.sql(count).await.1["rows"],
        serde_json::json!([[2, 3.0]]),
        "new rows"
    );

    let star = "SELECT * FROM m ORDER BY ts";
    let (_, v) = node.sql(star).await;
    assert_eq!(v["columns"].as_array().map(Vec::len), Some(3), "{v}");
    // A new field is a new column: the schema version moves and the plan with it.
    assert_eq!(
        node.write(&format!("m,k=a v=3,w=7i {}\n", t0 + 2)).await.0,
        204
    );
    let (_, v) = node.sql(star).await;
    let names: Vec<&str> = v["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names.len(), 4, "{v}");
    let w = names.iter().position(|n| *n == "w").expect("column w");
    assert_eq!(v["rows"][2][w], serde_json::json!(7), "{v}");

    assert_eq!(node.sql("DROP TABLE m").await.0, 200);
    let (status, v) = node.sql(count).await;
    assert_eq!(status, 400, "a dropped table is gone: {v}");
    assert_eq!(node.write(&format!("m,k=a v=5 {t0}\n")).await.0, 204);
    assert_eq!(
        node.sql(count).await.1["rows"],
        serde_json::json!([[1, 5.0]]),
        "the new table's rows only"
    );

    // now() is folded into a constant when planned: such plans are never kept.
    let now = "SELECT CAST(now() AS BIGINT)";
    let first = node.sql(now).await.1["rows"][0][0].clone();
    let second = node.sql(now).await.1["rows"][0][0].clone();
    assert!(first.is_i64() && second.is_i64(), "{first} {second}");
    assert_ne!(first, second, "the clock moved between two requests");
}

/// Line protocol's tags travel dictionary-encoded from the parser to storage; rows written
/// over SQL carry plain strings. Both kinds, split over many vshards, merged in the hot
/// buffer and flushed, must read back as the same rows, with missing tags null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_read_back_the_same_through_every_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(dir.path(), &[]).await;
    let t0 = 1_704_067_200_000_000_000i64;
    let mut per_symbol = std::collections::BTreeMap::<String, i64>::new();
    let mut no_side = 0;
    let mut row = 0i64;
    // More requests than a hot-buffer merge takes (64 batches), each touching most vshards.
    for _ in 0..80 {
        let mut body = String::new();
        for _ in 0..100 {
            let sym = format!("S{}", (row * 7) % 53);
            *per_symbol.entry(sym.clone()).or_default() += 1;
            if row % 5 == 0 {
                no_side += 1;
                body += &format!("tt,symbol={sym} price={row} {}\n", t0 + row);
            } else {
                let side = if row % 2 == 0 { "B" } else { "S" };
                body += &format!("tt,symbol={sym},side={side} price={row} {}\n", t0 + row);
            }
            row += 1;
        }
        let (status, text) = node.write(&body).await;
        assert_eq!(status, 204, "{text}");
    }
    let (status, v) = node
        .sql(&format!(
            "INSERT INTO tt (ts, symbol, side, price) VALUES ({}, 'S1', 'B', -1.0)",
            t0 + row
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    *per_symbol.entry("S1".into()).or_default() += 1;
    let expected: Vec<serde_json::Value> = per_symbol
        .iter()
        .map(|(s, n)| serde_json::json!([s, n]))
        .collect();
    for stage in ["hot", "flushed"] {
        let (status, v) = node
            .sql("SELECT symbol, count(*) FROM tt GROUP BY symbol ORDER BY symbol")
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["rows"], serde_json::json!(expected), "{stage}");
        assert_eq!(
            node.count("SELECT count(*) FROM tt WHERE side IS NULL")
                .await,
            no_side,
            "{stage}"
        );
        let (_, v) = node
            .sql("SELECT symbol, side, price FROM tt WHERE price = 7 OR price < 0 ORDER BY price")
            .await;
        assert_eq!(
            v["rows"],
            serde_json::json!([["S1", "B", -1.0], ["S49", "S", 7.0]]),
            "{stage}"
        );
        node.restart_graceful().await;
    }
    assert!(
        parquet_files(dir.path()) > 0,
        "the stops should have flushed"
    );
}
