//! The Postgres wire protocol against a real node, with real clients: tokio-postgres
//! (extended protocol, binary results, typed parameters), psql (simple protocol) and
//! psycopg 3 when Python has it.

mod support;

use std::process::Command;

use support::Node;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

async fn connect(node: &Node) -> tokio_postgres::Client {
    let (host, port) = node.pg_addr.rsplit_once(':').expect("host:port");
    let conf = format!("host={host} port={port} user=shoal dbname=shoal");
    let (client, conn) = tokio_postgres::connect(&conf, NoTls)
        .await
        .expect("connect over pgwire");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The single value a `SHOW …` answers.
async fn show(c: &tokio_postgres::Client, what: &str) -> String {
    let msgs = c.simple_query(&format!("SHOW {what}")).await.expect("show");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_parameters_and_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let body = "trades,symbol=AAPL,side=B price=1.5,size=10i,ok=true 1704067200000000000\n\
                trades,symbol=MSFT,side=S price=2.5,size=20i,ok=false 1704067201000000000\n";
    assert_eq!(node.write(body).await.0, 204);
    let c = connect(&node).await;

    // Extended protocol: typed parameters in, binary-encoded typed values out.
    let rows = c
        .query(
            "SELECT ts, symbol, price, size, ok FROM trades WHERE symbol = $1 AND size > $2",
            &[&"AAPL", &5i64],
        )
        .await
        .expect("parameterised query");
    assert_eq!(rows.len(), 1);
    let ts: chrono::NaiveDateTime = rows[0].get(0);
    assert_eq!(ts.and_utc().timestamp(), 1_704_067_200);
    assert_eq!(rows[0].get::<_, String>(1), "AAPL");
    assert_eq!(rows[0].get::<_, f64>(2), 1.5);
    assert_eq!(rows[0].get::<_, i64>(3), 10);
    assert!(rows[0].get::<_, bool>(4));
    let stmt = c
        .prepare("SELECT count(*) AS n FROM trades WHERE price < $1")
        .await
        .expect("prepare");
    assert_eq!(stmt.params(), &[tokio_postgres::types::Type::FLOAT8]);
    assert_eq!(
        stmt.columns()[0].type_(),
        &tokio_postgres::types::Type::INT8
    );
    let n: i64 = c.query_one(&stmt, &[&2.0f64]).await.expect("run").get(0);
    assert_eq!(n, 1);
    let n: i64 = c.query_one(&stmt, &[&10.0f64]).await.expect("rerun").get(0);
    assert_eq!(n, 2, "a prepared statement runs again with new parameters");

    // INSERT through the wire reports its row count.
    let inserted = c
        .execute(
            "INSERT INTO trades (ts, symbol, price) VALUES ('2024-01-01T00:00:05Z', 'IBM', 3.0)",
            &[],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 1);

    // Errors carry SQLSTATEs and leave the connection usable.
    let cases = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM nope", "42P01"),
        ("SELECT nope FROM trades", "42703"),
        ("CREATE TABLE trades (ts TIMESTAMP, v DOUBLE)", "42P07"),
        ("SET read_consistency = 'sometimes'", "22023"),
        ("ALTER TABLE trades RENAME TO t2", "0A000"),
        ("SHOW no_such_setting", "42704"),
    ];
    for (sql, want) in cases {
        let e = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&e), want, "{sql}: {e:?}");
    }
    let e = c
        .batch_execute("SET read_consistency = 'sometimes'")
        .await
        .expect_err("bad");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("bounded_staleness:<duration>"), "{msg}");
    assert_eq!(
        c.query("SELECT 1", &[]).await.expect("still serving").len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_settings_and_transactional_ddl() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let c = connect(&node).await;

    assert_eq!(show(&c, "read_consistency").await, "strong");
    c.batch_execute("SET read_consistency = 'bounded_staleness:5s'")
        .await
        .expect("set");
    assert_eq!(
        show(&c, "read_consistency").await,
        "bounded_staleness:5000ms"
    );
    // The level reaches the per-vshard scan (where replication will pick the replica).
    c.batch_execute("CREATE TABLE rc (ts TIMESTAMP, v DOUBLE)")
        .await
        .expect("create");
    let plan: String = c
        .simple_query("EXPLAIN SELECT * FROM rc")
        .await
        .expect("explain")
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(
        plan.contains("consistency=bounded_staleness:5000ms"),
        "{plan}"
    );
    let other = connect(&node).await;
    assert_eq!(
        show(&other, "read_consistency").await,
        "strong",
        "settings are per session"
    );

    // A committed block is one schema version; DDL errors poison the block until ROLLBACK.
    let v0: u64 = show(&c, "SCHEMA VERSION").await.parse().expect("version");
    c.batch_execute(
        "BEGIN; CREATE TABLE a (ts TIMESTAMP, v DOUBLE); CREATE TABLE b (ts TIMESTAMP, w DOUBLE); COMMIT",
    )
    .await
    .expect("block");
    let v1: u64 = show(&c, "SCHEMA VERSION").await.parse().expect("version");
    assert_eq!(v1, v0 + 1, "one committed block, one schema version");
    c.batch_execute("BEGIN; CREATE TABLE c (ts TIMESTAMP, v DOUBLE)")
        .await
        .expect("open block");
    let e = c
        .batch_execute("CREATE TABLE a (ts TIMESTAMP, v DOUBLE)")
        .await
        .expect_err("duplicate");
    assert_eq!(code(&e), "42P07");
    let e = c
        .batch_execute("SELECT 1")
        .await
        .expect_err("aborted block");
    assert_eq!(code(&e), SqlState::IN_FAILED_SQL_TRANSACTION.code());
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let e = c
        .batch_execute("SELECT * FROM c")
        .await
        .expect_err("rolled back");
    assert_eq!(code(&e), "42P01", "a rolled-back block creates nothing");
    assert_eq!(
        show(&c, "SCHEMA VERSION").await.parse::<u64>().expect("v"),
        v1
    );

    // Introspection: SHOW forms and the system tables behind them.
    let rows = c.simple_query("SHOW NODES").await.expect("nodes");
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count(),
        1
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM system.replicas WHERE leader = 1", &[])
        .await
        .expect("shards")
        .get(0);
    assert_eq!(n, 16, "one leader per vshard on a single node");
    assert_eq!(show(&c, "ROUTING FOR 'AAPL'").await, "AAPL");
    let cols: Vec<String> = c
        .query(
            "SELECT c.column_name FROM system.tables t JOIN system.columns c \
             ON t.table_name = c.table_name WHERE t.table_name = 'a' ORDER BY c.ordinal_position",
            &[],
        )
        .await
        .expect("join")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, vec!["ts", "v"]);

    // ALTER TABLE ADD COLUMN, then the column is queryable.
    c.batch_execute("ALTER TABLE a ADD COLUMN note VARCHAR")
        .await
        .expect("alter");
    c.query("SELECT note FROM a", &[])
        .await
        .expect("new column");

    // statement_timeout cancels a long statement with 57014.
    c.batch_execute("SET statement_timeout = 1")
        .await
        .expect("set timeout");
    let e = c
        .batch_execute(
            "SELECT count(*) FROM generate_series(1, 2000000000) a CROSS JOIN generate_series(1, 10) b",
        )
        .await
        .expect_err("timed out");
    assert_eq!(code(&e), "57014", "{e:?}");
    c.batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");
    assert_eq!(show(&c, "statement_timeout").await, "0");
}

/// psql over the simple protocol: a query, an error with its SQLSTATE, and the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_client() {
    if Command::new("psql").arg("--version").output().is_err() {
        println!("SKIP psql_client: psql not installed (.ci/run installs postgresql-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    assert_eq!(node.write("cpu,host=a usage=0.5 1\n").await.0, 204);
    let (host, port) = node.pg_addr.rsplit_once(':').expect("host:port");
    let psql = |sql: &str| {
        Command::new("psql")
            .args([
                "-h", host, "-p", port, "-U", "shoal", "-d", "shoal", "-X", "-A", "-t",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql")
    };
    let out = psql("SELECT host, usage FROM cpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a|0.5");
    // The catalog queries psql sends for its meta-commands.
    let out = psql("\\dt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l == "public|cpu|table|postgres"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "system|shards|table|postgres"),
        "{text}"
    );
    let out = psql("\\d cpu");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usage|double precision"), "{text}");
    assert!(
        text.contains("ts|timestamp without time zone||not null"),
        "{text}"
    );
    for meta in ["\\l", "\\dn"] {
        let out = psql(meta);
        assert!(
            out.status.success(),
            "{meta}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = psql("SELECT * FROM missing");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("42P01"), "{err}");
}

/// psycopg 3 and asyncpg from a virtualenv: parameterised inserts and selects, prepared
/// statements, binary results, timestamps with time zones and NULLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients() {
    let Some(python) = support::python_venv() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    assert_eq!(
        node.write("trades,symbol=AAPL price=1.5,size=10i 1704067200000000000\n")
            .await
            .0,
        204
    );
    let script = r#"
import sys, asyncio, datetime, psycopg, asyncpg
UTC = datetime.timezone.utc
host, port = sys.argv[1].rsplit(":", 1)
with psycopg.connect(host=host, port=int(port), user="shoal", dbname="shoal", autocommit=True) as conn:
    row = conn.execute("SELECT ts, symbol, price, size FROM trades WHERE symbol = %s", ("AAPL",)).fetchone()
    assert row == (datetime.datetime(2024, 1, 1), "AAPL", 1.5, 10), row
    # Parameterised, prepared insert of a tz-aware timestamp and a NULL.
    t = datetime.datetime(2024, 1, 1, 0, 0, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    conn.execute("INSERT INTO trades (ts, symbol, price, size) VALUES (%s, %s, %s, %s)",
                 (t, "MSFT", 2.5, None), prepare=True)
    row = conn.execute("SELECT ts, size FROM trades WHERE symbol = %s", ("MSFT",), prepare=True).fetchone()
    assert row == (datetime.datetime(2023, 12, 31, 22, 0, 1), None), row
    tz = conn.execute("SELECT ts AT TIME ZONE 'UTC' FROM trades WHERE symbol = 'MSFT'").fetchone()[0]
    assert tz == t, (tz, t)
    assert conn.execute("SHOW read_consistency").fetchone() == ("strong",)
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT price, size FROM trades WHERE symbol = %s", ("MSFT",))
        assert cur.fetchall() == [(2.5, None)]
    try:
        conn.execute("SELECT * FROM nope")
        raise SystemExit("expected an error")
    except psycopg.errors.UndefinedTable:
        pass

async def run():
    c = await asyncpg.connect(host=host, port=int(port), user="shoal", database="shoal")
    rows = await c.fetch("SELECT symbol, price FROM trades WHERE size > $1", 5)
    assert [tuple(r) for r in rows] == [("AAPL", 1.5)], rows
    st = await c.prepare("SELECT count(*) FROM trades WHERE price < $1")
    assert await st.fetchval(2.0) == 1
    assert await st.fetchval(3.0) == 2
    await c.execute("INSERT INTO trades (ts, symbol, price) VALUES ($1, $2, $3)",
                    datetime.datetime(2024, 1, 1, 0, 0, 2), "IBM", 3.5)
    assert await c.fetchval("SELECT price FROM trades WHERE symbol = $1", "IBM") == 3.5
    await c.close()
asyncio.run(run())
print("ok")
"#;
    let out = Command::new(&python)
        .args(["-c", script, &node.pg_addr])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication() {
    // pg_users (deprecated) become admins in group 0; passwords are SCRAM verifiers.
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(
        dir.path(),
        &[
            "--pg-auth",
            "scram-sha-256",
            "--pg-users",
            "alice:s3cret,bob:hunter2",
        ],
    )
    .await;
    let c = support::pg_connect(&node, "alice", "s3cret")
        .await
        .expect("alice");
    assert_eq!(c.query("SELECT 1", &[]).await.expect("query").len(), 1);
    for (user, pw) in [("alice", "wrong"), ("mallory", "s3cret")] {
        let Err(e) = support::pg_connect(&node, user, pw).await else {
            panic!("{user}: a wrong password was accepted");
        };
        assert_eq!(code(&e), "28P01", "{user}: {e:?}");
    }
    // The client can hear 28P01 before the node's log line reaches the test's reader.
    support::eventually("the failures to be logged", || async {
        let log = node.stderr_text();
        (log.contains("authentication failed") && log.contains("mallory")).then_some(())
    })
    .await;
    assert!(
        !node.stderr_text().contains("s3cret"),
        "a password reached the log"
    );
    // The authenticated session is unaffected by the failures.
    assert_eq!(c.query("SELECT 2", &[]).await.expect("query").len(), 1);
    // md5 needs the password in a form Shoal no longer keeps: refused at start.
    let out = support::start_command(dir.path(), &["--pg-auth", "md5"])
        .output()
        .expect("run shoal");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("md5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_excess_with_53300() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &["--pg-max-connections", "2"]).await;
    let a = connect(&node).await;
    let b = connect(&node).await;
    let Err(e) = support::pg_connect(&node, "shoal", "").await else {
        panic!("a third connection was accepted past pg_max_connections = 2");
    };
    assert_eq!(code(&e), "53300", "{e:?}");
    assert_eq!(
        a.query("SELECT 1", &[])
            .await
            .expect("a still served")
            .len(),
        1
    );
    drop(b);
    // The freed slot is reusable once the server sees the close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match support::pg_connect(&node, "shoal", "").await {
            Ok(c) => {
                assert_eq!(c.query("SELECT 1", &[]).await.expect("served").len(), 1);
                break;
            }
            Err(e) => {
                assert_eq!(code(&e), "53300", "{e:?}");
                assert!(std::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The catalog queries Grafana's PostgreSQL data source sends to list tables and columns
/// (copied from its query builder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_catalog_queries() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    assert_eq!(node.write("trades,symbol=A price=1 1\n").await.0, 204);
    let c = connect(&node).await;
    let schema_constraint = r#"quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#;
    let tables = format!(
        "select quote_ident(table_name) as \"table\" from information_schema.tables
    where quote_ident(table_schema) not in ('information_schema', 'pg_catalog',
        '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal',
        '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental')
      and table_type = 'BASE TABLE' and {schema_constraint}"
    );
    let rows: Vec<String> = c
        .query(tables.as_str(), &[])
        .await
        .expect("table list")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec!["trades"]);
    let columns = format!(
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE quote_ident(table_name) = 'trades' AND {schema_constraint}"
    );
    let cols: Vec<String> = c
        .query(columns.as_str(), &[])
        .await
        .expect("column list")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, vec!["ts", "symbol", "price"]);
}

/// A transaction block is all-or-nothing across a crash: an open block at kill -9 leaves
/// nothing; a committed one survives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_blocks_are_atomic_across_kill9() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = Node::start(dir.path(), &[]).await;
    let c = connect(&node).await;
    c.batch_execute(
        "BEGIN; CREATE TABLE done1 (ts TIMESTAMP, v DOUBLE); CREATE TABLE done2 (ts TIMESTAMP, v DOUBLE); COMMIT",
    )
    .await
    .expect("committed block");
    c.batch_execute(
        "BEGIN; CREATE TABLE open1 (ts TIMESTAMP, v DOUBLE); CREATE TABLE open2 (ts TIMESTAMP, v DOUBLE)",
    )
    .await
    .expect("open block");
    node.kill9();
    node.restart().await;
    let c = connect(&node).await;
    for t in ["done1", "done2"] {
        c.query(format!("SELECT * FROM {t}").as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{t} was committed: {e:?}"));
    }
    for t in ["open1", "open2"] {
        let e = c
            .query(format!("SELECT * FROM {t}").as_str(), &[])
            .await
            .expect_err(t);
        assert_eq!(code(&e), "42P01", "{t} was never committed");
    }
}

/// Garbage on the Postgres port: each connection is refused or closed, and the node keeps
/// serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_on_the_pg_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let huge_len = {
        let mut v = 0x7fff_fff0u32.to_be_bytes().to_vec();
        v.extend_from_slice(&196_608u32.to_be_bytes());
        v
    };
    let bad_version = {
        let mut v = 8u32.to_be_bytes().to_vec();
        v.extend_from_slice(&0x0009_0000u32.to_be_bytes());
        v
    };
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("startup packet claiming ~2 GiB", huge_len),
        ("unknown protocol version 9.0", bad_version),
    ];
    for (what, bytes) in cases {
        let mut s = tokio::net::TcpStream::connect(&node.pg_addr)
            .await
            .expect("connect");
        s.write_all(&bytes).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut got = vec![];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let got =
            outcome.unwrap_or_else(|_| panic!("{what}: the server neither answered nor closed"));
        assert!(
            got.is_empty() || got[0] == b'E',
            "{what}: expected an ErrorResponse or a close, got {:?}",
            &got[..got.len().min(32)]
        );
        let c = connect(&node).await;
        assert_eq!(
            c.query("SELECT 1", &[]).await.expect("serving").len(),
            1,
            "after {what}"
        );
    }
}
