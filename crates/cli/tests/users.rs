//! Users, roles and tokens against a real node: HTTP (Basic, Bearer, InfluxDB's `Token`
//! and v1 `u`/`p`), Postgres (SCRAM, psql-compatible clients), the admin API, the
//! InfluxDB Python client with a token, and failed logins rate-limited per address.

mod support;

use std::process::Command;

use support::Node;

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Header(String),
}

/// `r` with the credentials `auth` names.
fn authed(r: reqwest::RequestBuilder, auth: &Auth<'_>) -> reqwest::RequestBuilder {
    match auth {
        Auth::None => r,
        Auth::Basic(u, p) => r.basic_auth(u, Some(p)),
        Auth::Header(h) => r.header("authorization", h),
    }
}

async fn sql_as(node: &Node, auth: &Auth<'_>, sql: &str) -> (u16, serde_json::Value) {
    let (status, text) = post(node, "/v1/sql", auth, sql).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn post(node: &Node, path: &str, auth: &Auth<'_>, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(node.url(path))
        .body(body.to_string());
    let r = authed(r, auth).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

use support::pg_connect as pg;

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("{e}"))
}

const ADMIN_PW: &str = "adm1n-Pa55";

async fn secured_node(dir: &std::path::Path) -> Node {
    let pw_file = dir.join("admin-password");
    std::fs::write(&pw_file, format!("{ADMIN_PW}\n")).expect("write password file");
    let data = dir.join("data");
    Node::start(
        &data,
        &[
            "--init-admin-password-file",
            pw_file.to_str().expect("utf8"),
        ],
    )
    .await
}

/// Each role does what it may and gets the documented status for the rest, over HTTP and
/// Postgres; tokens work in every header InfluxDB clients send and stop at DROP TOKEN;
/// nothing secret reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_tokens() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = secured_node(dir.path()).await;
    let admin = Auth::Basic("admin", ADMIN_PW);

    // Anonymous clients are asked who they are.
    let r = reqwest::Client::new()
        .post(node.url("/v1/sql"))
        .body("SELECT 1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    assert_eq!(
        post(&node, "/write?db=x", &Auth::None, "m v=1 1").await.0,
        401
    );
    assert_eq!(
        sql_as(&node, &Auth::Basic("admin", "nope"), "SELECT 1")
            .await
            .0,
        401
    );
    // Health stays open.
    assert_eq!(
        reqwest::get(node.url("/health/ready"))
            .await
            .expect("ready")
            .status()
            .as_u16(),
        200
    );

    for stmt in [
        "CREATE USER rita WITH PASSWORD 'r3ader' IN ROLE reader",
        "CREATE USER walt WITH PASSWORD 'wr1ter'",
        "GRANT writer TO walt",
        "CREATE TABLE t (ts TIMESTAMP, host VARCHAR, v DOUBLE, PRIMARY KEY (host))",
    ] {
        let (s, v) = sql_as(&node, &admin, stmt).await;
        assert_eq!(s, 200, "{stmt}: {v}");
    }
    let (s, v) = sql_as(&node, &admin, "SHOW USERS").await;
    assert_eq!(s, 200, "{v}");
    let listed = v.to_string();
    assert!(
        listed.contains("rita") && listed.contains("reader") && listed.contains("walt"),
        "{listed}"
    );
    assert!(!listed.contains("r3ader"), "{listed}");

    let (s, v) = sql_as(&node, &admin, "CREATE TOKEN FOR walt").await;
    assert_eq!(s, 200, "{v}");
    let token = v["rows"][0][1].as_str().expect("token").to_string();
    let token_id = v["rows"][0][0].as_str().expect("id").to_string();
    assert!(token.starts_with("shoal_"), "{token}");

    // The writer writes with its token in every form clients send it.
    let line = |i: u32| format!("t,host=a v={i} {}", 1_700_000_000_000_000_000u64 + i as u64);
    for (i, (path, auth)) in [
        (
            "/api/v2/write?bucket=b",
            Auth::Header(format!("Token {token}")),
        ),
        ("/write?db=d", Auth::Header(format!("Bearer {token}"))),
        (&*format!("/write?db=d&u=walt&p={token}"), Auth::None),
        ("/write?db=d&u=walt&p=wr1ter", Auth::None),
        ("/write?db=d", Auth::Basic("walt", "wr1ter")),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, body) = post(&node, path, &auth, &line(i as u32)).await;
        assert_eq!(s, 204, "{path}: {body}");
    }
    let walt = Auth::Header(format!("Bearer {token}"));
    let (s, v) = sql_as(&node, &walt, "INSERT INTO t VALUES (now(), 'b', 1.0)").await;
    assert_eq!(s, 200, "{v}");
    // … but runs no DDL and no admin statement.
    for stmt in [
        "CREATE TABLE u (ts TIMESTAMP, v DOUBLE)",
        "CREATE USER x",
        "SET CLUSTER SETTING rebalance_paused = true",
    ] {
        let (s, v) = sql_as(&node, &walt, stmt).await;
        assert_eq!(
            (s, v["sqlstate"].as_str()),
            (403, Some("42501")),
            "{stmt}: {v}"
        );
    }

    // The reader reads and cannot write.
    let rita = Auth::Basic("rita", "r3ader");
    let (s, v) = sql_as(&node, &rita, "SELECT count(*) FROM t").await;
    assert_eq!((s, v["rows"][0][0].as_i64()), (200, Some(6)), "{v}");
    let (s, body) = post(&node, "/write?db=d", &rita, &line(99)).await;
    assert_eq!(s, 403, "{body}");
    // EXPLAIN needs what its statement needs: EXPLAIN ANALYZE runs it.
    let (s, v) = sql_as(&node, &rita, "EXPLAIN SELECT count(*) FROM t").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sql_as(
        &node,
        &rita,
        "EXPLAIN ANALYZE INSERT INTO t VALUES (now(), 'e', 3.0)",
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, body) = post(&node, "/api/v2/write?bucket=b", &rita, &line(99)).await;
    assert!(s == 403 && body.contains("forbidden"), "{s} {body}");

    // Postgres: SCRAM against the stored verifier; the role applies per statement.
    let c = pg(&node, "rita", "r3ader").await.expect("rita over pg");
    assert_eq!(
        c.query("SELECT count(*) FROM t", &[])
            .await
            .expect("select")
            .len(),
        1
    );
    let e = c
        .batch_execute("INSERT INTO t VALUES (now(), 'c', 2.0)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    assert_eq!(
        sqlstate(&pg(&node, "rita", "wrong").await.expect_err("refused")),
        "28P01"
    );
    assert_eq!(
        sqlstate(&pg(&node, "nobody", "x").await.expect_err("refused")),
        "28P01"
    );
    // A revoked role takes effect on the open session.
    let (s, v) = sql_as(&node, &admin, "REVOKE reader FROM rita").await;
    assert_eq!(s, 200, "{v}");
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");

    // The admin API: admin users get in, others do not.
    let nodes = |auth: Auth<'static>| {
        let url = node.url("/admin/v1/nodes");
        async move {
            authed(reqwest::Client::new().get(url), &auth)
                .send()
                .await
                .expect("admin request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(nodes(Auth::Basic("admin", ADMIN_PW)).await, 200);
    assert_eq!(nodes(Auth::Basic("walt", "wr1ter")).await, 403);
    assert_eq!(nodes(Auth::None).await, 401);

    // A dropped token stops working at once.
    let (s, v) = sql_as(&node, &admin, &format!("DROP TOKEN {token_id}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(post(&node, "/write?db=d", &walt, &line(50)).await.0, 401);
    // The last admin stays.
    let (s, v) = sql_as(&node, &admin, "DROP USER admin").await;
    assert!(
        s == 400 && v["error"].as_str().unwrap_or("").contains("last admin"),
        "{s} {v}"
    );

    // Nothing secret in the log: passwords, the token's secret.
    let log = node.stderr_text();
    for secret in [ADMIN_PW, "r3ader", "wr1ter", &token[token.len() - 20..]] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
    assert!(
        log.contains("authentication failed"),
        "failed logins are logged"
    );
}

/// The first user must be an admin, and creating it turns authentication on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_user_turns_authentication_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    let anon = Auth::None;
    // Before there are users, credentials are ignored: InfluxDB clients always send a
    // token, often a made-up one.
    let made_up = Auth::Header("Token my-token".into());
    let (s, body) = post(&node, "/api/v2/write?bucket=b", &made_up, "m v=1 1").await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(
        sql_as(&node, &Auth::Basic("x", "y"), "SELECT 1").await.0,
        200
    );
    let (s, v) = sql_as(
        &node,
        &anon,
        "CREATE USER bob WITH PASSWORD 'x' IN ROLE reader",
    )
    .await;
    assert!(
        s == 400
            && v["error"]
                .as_str()
                .unwrap_or("")
                .contains("must be an admin"),
        "{s} {v}"
    );
    assert_eq!(sql_as(&node, &anon, "SELECT 1").await.0, 200, "still open");
    let (s, v) = sql_as(
        &node,
        &anon,
        "CREATE USER ada WITH PASSWORD 'secret-1' IN ROLE admin",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sql_as(&node, &anon, "SELECT 1").await;
    assert_eq!((s, v["sqlstate"].as_str()), (401, Some("28000")), "{v}");
    // Postgres asks for a password now too.
    assert_eq!(
        sqlstate(&pg(&node, "anyone", "").await.expect_err("refused")),
        "28P01"
    );
    let c = pg(&node, "ada", "secret-1").await.expect("ada");
    // Changing one's own password needs no role; the old one stops working.
    c.batch_execute("ALTER USER ada WITH PASSWORD 'secret-2'")
        .await
        .expect("alter");
    assert!(pg(&node, "ada", "secret-1").await.is_err());
    pg(&node, "ada", "secret-2").await.expect("new password");
}

/// After too many failed logins an address is refused (429 / 28000) even with the right
/// password, for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = secured_node(dir.path()).await;
    for _ in 0..10 {
        assert_eq!(
            sql_as(&node, &Auth::Basic("admin", "guess"), "SELECT 1")
                .await
                .0,
            401
        );
    }
    let r = reqwest::Client::new()
        .post(node.url("/v1/sql"))
        .basic_auth("admin", Some(ADMIN_PW))
        .body("SELECT 1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let e = pg(&node, "admin", ADMIN_PW).await.expect_err("refused");
    assert_eq!(sqlstate(&e), "28000", "{e:?}");
    // Health checks are not logins.
    assert_eq!(
        reqwest::get(node.url("/health/live"))
            .await
            .expect("live")
            .status()
            .as_u16(),
        200
    );
}

/// The InfluxDB v2 Python client writes with a token and gets 401 with a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_python_client_writes_with_a_token() {
    let Some(python) = support::python_venv() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let node = secured_node(dir.path()).await;
    let admin = Auth::Basic("admin", ADMIN_PW);
    for stmt in ["CREATE USER telegraf IN ROLE writer"] {
        let (s, v) = sql_as(&node, &admin, stmt).await;
        assert_eq!(s, 200, "{stmt}: {v}");
    }
    let (s, v) = sql_as(&node, &admin, "CREATE TOKEN FOR telegraf").await;
    assert_eq!(s, 200, "{v}");
    let token = v["rows"][0][1].as_str().expect("token").to_string();
    let script = r#"
import sys
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
url, token = sys.argv[1], sys.argv[2]
with InfluxDBClient(url=url, token=token, org="o") as c:
    w = c.write_api(write_options=SYNCHRONOUS)
    w.write(bucket="b", record=[Point("cpu").tag("host", "h%d" % i).field("v", float(i)) for i in range(50)])
with InfluxDBClient(url=url, token=token + "x", org="o") as c:
    try:
        c.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="cpu,host=z v=1")
        print("WRONG TOKEN ACCEPTED")
    except ApiException as e:
        print("status", e.status)
"#;
    let out = Command::new(&python)
        .args(["-c", script, &node.url(""), &token])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("status 401"), "{stdout}");
    let (s, v) = sql_as(&node, &admin, "SELECT count(*) FROM cpu").await;
    assert_eq!((s, v["rows"][0][0].as_i64()), (200, Some(50)), "{v}");
}

/// Every admin password lost: whoever can give one node an admin token (root on that host)
/// sets a new password with `shoal node set-password`; the old one stops working at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_admin_password_is_reset_with_the_admin_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut node = secured_node(dir.path()).await;
    let body = r#"{"password":"guess"}"#;
    // Nobody gets in without an admin's credentials or the token.
    let path = "/admin/v1/users/admin/password";
    assert_eq!(post(&node, path, &Auth::None, body).await.0, 401);
    assert_eq!(
        post(&node, path, &Auth::Basic("admin", "forgotten"), body)
            .await
            .0,
        401
    );
    // The operator gives the node an admin token and restarts it.
    let token = "rec0very-t0ken-9d2f";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    node.set_extra(&["--admin-token-file", token_file.to_str().expect("utf8")]);
    node.restart().await;
    let set_password = |token: &str, user: &str, file: &std::path::Path| {
        Command::new(support::BIN)
            .args(["node", "set-password", user, "--password-file"])
            .arg(file)
            .args(["--host", &node.addr])
            .env("SHOAL_ADMIN_TOKEN", token)
            .output()
            .expect("run shoal node set-password")
    };
    let new_pw = dir.path().join("new-password");
    std::fs::write(&new_pw, "n3w-Adm1n-pw\n").expect("password file");
    let out = set_password("wrong-token", "admin", &new_pw);
    assert!(!out.status.success(), "a wrong token is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(401): unknown or revoked token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = set_password(token, "nobody", &new_pw);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("404"), "{err}");
    let out = set_password(token, "admin", &new_pw);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("password of admin set"));
    // The old password fails, the new one works, on HTTP and Postgres.
    assert_eq!(
        sql_as(&node, &Auth::Basic("admin", ADMIN_PW), "SELECT 1")
            .await
            .0,
        401
    );
    let (s, v) = sql_as(&node, &Auth::Basic("admin", "n3w-Adm1n-pw"), "SELECT 1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        sqlstate(
            &pg(&node, "admin", ADMIN_PW)
                .await
                .expect_err("old password")
        ),
        "28P01"
    );
    pg(&node, "admin", "n3w-Adm1n-pw")
        .await
        .expect("new password");
    // A bad body or an empty password is a 400, and changes nothing.
    let bearer = Auth::Header(format!("Bearer {token}"));
    assert_eq!(post(&node, path, &bearer, "{}").await.0, 400);
    assert_eq!(
        post(&node, path, &bearer, r#"{"password":""}"#).await.0,
        400
    );
    pg(&node, "admin", "n3w-Adm1n-pw").await.expect("unchanged");
    assert!(
        !node.stderr_text().contains("n3w-Adm1n-pw"),
        "the log holds the new password"
    );
}
