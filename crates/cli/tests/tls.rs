//! TLS on every port against real clients: HTTPS (reqwest, curl, the InfluxDB Python
//! client with a token), Postgres with `sslmode=verify-full` (psql with channel binding,
//! psycopg, asyncpg), a cluster over mutual TLS that refuses a node of another CA, and a
//! SIGHUP reload of new certificates with the cluster still replicating.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{eventually, Node};

const ADMIN_PW: &str = "tls-adm1n-Pa55";

/// `shoal cert <args> --certs-dir dir`; panics with its output on failure.
fn cert(dir: &Path, args: &[&str]) {
    let (ok, out) = support::shoal_cert(dir, args);
    assert!(ok, "shoal cert {args:?}: {out}");
}

/// A CA and a node certificate for 127.0.0.1 and localhost in `dir`.
fn certs(dir: &Path) -> PathBuf {
    cert(dir, &["create-ca"]);
    cert(dir, &["create-node", "127.0.0.1", "localhost"]);
    dir.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        println!("SKIP the {tool} part: {tool} is not installed");
    }
    ok
}

/// The SHA-256 fingerprint of the certificate a TLS server at `addr` presents.
fn served_fingerprint(addr: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.contains("Fingerprint").then_some(text)
}

fn file_fingerprint(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", s(path)])
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// HTTPS and Postgres TLS with every client a user has; plaintext and an untrusted CA are
/// refused with the documented errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_http_and_postgres_with_real_clients() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = certs(&tmp.path().join("certs"));
    let other = certs(&tmp.path().join("other-ca"));
    let ca = dir.join("ca.crt");
    let pw_file = tmp.path().join("pw");
    std::fs::write(&pw_file, ADMIN_PW).expect("pw");
    let node = Node::start(
        &tmp.path().join("data"),
        &[
            "--certs-dir",
            s(&dir),
            "--init-admin-password-file",
            s(&pw_file),
        ],
    )
    .await;
    assert!(node.url("").starts_with("https://"));

    // HTTPS with Basic credentials; the same port refuses plaintext HTTP, and a client
    // that does not trust the cluster CA cannot connect.
    let r = node
        .http()
        .post(node.url("/v1/sql"))
        .basic_auth("admin", Some(ADMIN_PW))
        .body("CREATE USER telegraf IN ROLE writer")
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/sql", node.addr))
        .body("SELECT 1")
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plaintext HTTP answered on an HTTPS port: {plain:?}"
    );
    let untrusted = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(other.join("ca.crt")).expect("ca"))
                .expect("pem"),
        )
        .build()
        .expect("client")
        .get(node.url("/health/live"))
        .send()
        .await;
    assert!(untrusted.is_err(), "another CA's client connected");
    let r = node
        .http()
        .post(node.url("/v1/sql"))
        .basic_auth("admin", Some(ADMIN_PW))
        .body("CREATE TOKEN FOR telegraf")
        .send()
        .await
        .expect("https");
    let v: serde_json::Value = r.json().await.expect("json");
    let token = v["rows"][0][1].as_str().expect("token").to_string();

    // curl, as Telegraf sends it: InfluxDB v2 write with `Authorization: Token`.
    if have("curl") {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Token {token}")])
            .args(["--data-binary", "cpu,host=curl v=1 1700000000000000000"])
            .arg(node.url("/api/v2/write?bucket=b&precision=ns"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "204",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (host, port) = node.pg_addr.rsplit_once(':').expect("host:port");
    if have("psql") {
        let psql = |mode: &str, root: &Path, binding: &str| {
            Command::new("psql")
                .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
                .arg(format!(
                    "host={host} port={port} user=admin dbname=shoal sslmode={mode} \
                     sslrootcert={} channel_binding={binding}",
                    s(root)
                ))
                .env("PGPASSWORD", ADMIN_PW)
                .output()
                .expect("psql")
        };
        // verify-full with SCRAM-SHA-256-PLUS (channel binding to the node certificate).
        let out = psql("verify-full", &ca, "require");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        // Without TLS: refused with the reason.
        let out = psql("disable", &ca, "disable");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("requires TLS"),
            "{err}"
        );
        // A client trusting another CA refuses the node.
        let out = psql("verify-full", &other.join("ca.crt"), "prefer");
        assert!(
            !out.status.success(),
            "verify-full against another CA worked"
        );
    }

    if let Some(python) = support::python_venv() {
        let script = r#"
import asyncio, ssl, sys
import psycopg, asyncpg
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
host, port, pw, ca, url, token = sys.argv[1:]
with psycopg.connect(host=host, port=port, user="admin", password=pw, dbname="shoal",
                     sslmode="verify-full", sslrootcert=ca) as c:
    print("psycopg", c.execute("SELECT 7").fetchone()[0], c.info.pgconn.ssl_in_use)
async def a():
    ctx = ssl.create_default_context(cafile=ca)
    c = await asyncpg.connect(host=host, port=int(port), user="admin", password=pw,
                              database="shoal", ssl=ctx)
    print("asyncpg", await c.fetchval("SELECT 8"))
    await c.close()
asyncio.run(a())
with InfluxDBClient(url=url, token=token, org="o", ssl_ca_cert=ca) as c:
    c.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="cpu,host=py v=2")
print("influx ok")
"#;
        let out = Command::new(&python)
            .args([
                "-c",
                script,
                host,
                port,
                ADMIN_PW,
                s(&ca),
                &node.url(""),
                &token,
            ])
            .output()
            .expect("python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in ["psycopg 7 True", "asyncpg 8", "influx ok"] {
            assert!(stdout.contains(want), "{want:?} missing: {stdout}");
        }
    }
    assert!(
        !node.stderr_text().contains(ADMIN_PW) && !node.stderr_text().contains(&token),
        "a secret reached the log"
    );
}

/// 100 rows of `m` with keys `from..from + 100`.
async fn write_rows(n: &Node, from: usize) -> (u16, String) {
    let body: String = (from..from + 100)
        .map(|i| {
            format!(
                "m,k=k{i} v={i} {}\n",
                1_700_000_000_000_000_000u64 + i as u64
            )
        })
        .collect();
    n.write(&body).await
}

/// Three nodes over mutual TLS replicate; a node whose certificate another CA signed
/// cannot join (and the cluster logs the refused handshake); new certificates load on
/// SIGHUP and the cluster keeps replicating over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_refuses_another_ca_and_reloads_on_sighup() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = certs(&tmp.path().join("certs"));
    let flags = ["--certs-dir", s(&dir)];
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let ns = support::cluster_with(&refs, &flags).await;
    let all: Vec<&Node> = ns.iter().collect();
    support::eventually_in("every vshard on three nodes", &all, || async {
        let p = support::placement(&ns[0]).await?;
        p.iter().all(|r| r.len() == 3).then_some(())
    })
    .await;
    assert_eq!(write_rows(&ns[0], 0).await.0, 204);
    support::eventually_in("rows on the third node", &all, || async {
        let (st, v) = ns[2].try_sql("SELECT count(*) FROM m").await?;
        (st == 200 && v["rows"][0][0].as_i64() == Some(100)).then_some(())
    })
    .await;
    // Every node holds the cluster's gossip key, owner-only: made by the first, handed
    // to the others over mutual TLS when they joined.
    let keys: Vec<String> = dirs
        .iter()
        .map(|d| {
            use std::os::unix::fs::PermissionsExt;
            let f = d.join("gossip.key");
            let mode = std::fs::metadata(&f)
                .expect("gossip.key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", f.display());
            std::fs::read_to_string(&f).expect("read key")
        })
        .collect();
    assert_eq!(keys[0].trim().len(), 64);
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "the nodes' gossip keys differ"
    );
    // Every node reports when its certificate expires (a year from now).
    eventually("every node reported its certificate expiry", || async {
        let (st, v) = ns[0]
            .try_sql("SELECT count(*) FROM system.nodes WHERE cert_expires_at > now() + INTERVAL '300 days'")
            .await?;
        (st == 200 && v["rows"][0][0].as_i64() == Some(3)).then_some(())
    })
    .await;

    // The admin API passes a drain of another node on over HTTPS, checking that node's
    // certificate against the cluster CA.
    let ca = dir.join("ca.crt");
    for action in ["drain", "undrain"] {
        let out = Command::new(support::BIN)
            .args(["node", action, &ns[2].node_id.to_string()])
            .args(["--host", &ns[0].addr, "--ca-cert", s(&ca)])
            .output()
            .expect("run shoal node");
        assert!(
            out.status.success(),
            "{action} through another node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    support::eventually_in("node 3 ready again", &all, || async {
        let r = ns[2]
            .http()
            .get(ns[2].url("/health/ready"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // A node with another CA's certificate: its join handshake is refused.
    let rogue_certs = certs(&tmp.path().join("rogue-ca"));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(support::BIN)
            .args(["start", "--data-dir"])
            .arg(tmp.path().join("rogue"))
            .args(["--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
            .args(["--rpc-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"])
            .args(["--join", &ns[0].rpc_addr, "--join-timeout-ms", "5000"])
            .args(["--certs-dir", s(&rogue_certs)])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the rogue node gave up in time")
    .expect("run rogue node");
    assert!(!out.status.success(), "a node of another CA joined");
    eventually("the seed logged the refused handshake", || async {
        ns[0]
            .stderr_text()
            .contains("rpc (mutual TLS): refused a TLS handshake")
            .then_some(())
    })
    .await;
    let (_, v) = ns[0].sql("SELECT count(*) FROM system.nodes").await;
    assert_eq!(
        v["rows"][0][0].as_i64(),
        Some(3),
        "the rogue registered: {v}"
    );

    // A user's client certificate, signed by the same CA, cannot act as a node: the RPC
    // port refuses it, and a node will not start with it as its own.
    cert(&dir, &["create-client", "ada"]);
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -cert {} -key {} -CAfile {} </dev/null",
            ns[1].rpc_addr,
            s(&dir.join("client.ada.crt")),
            s(&dir.join("client.ada.key")),
            s(&dir.join("ca.crt"))
        ))
        .output();
    eventually("the RPC port refused the client certificate", || async {
        ns[1]
            .stderr_text()
            .contains("not a node certificate")
            .then_some(())
    })
    .await;
    let as_node = tmp.path().join("client-as-node");
    std::fs::create_dir_all(&as_node).expect("mkdir");
    std::fs::copy(dir.join("ca.crt"), as_node.join("ca.crt")).expect("ca");
    std::fs::copy(dir.join("client.ada.crt"), as_node.join("node.crt")).expect("crt");
    std::fs::copy(dir.join("client.ada.key"), as_node.join("node.key")).expect("key");
    let out = support::start_command(&tmp.path().join("x"), &["--certs-dir", s(&as_node)])
        .output()
        .expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("serverAuth"), "{err}");

    // New node certificates from the same CA, loaded with SIGHUP.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(dir.join(f), fresh.join(f)).expect("copy ca");
    }
    cert(&fresh, &["create-node", "127.0.0.1", "localhost"]);
    let before = served_fingerprint(&ns[0].addr);
    let new = file_fingerprint(&fresh.join("node.crt"));
    assert_ne!(before.as_deref(), Some(new.as_str()));
    // Key first, then certificate, each by rename: a reload sees old or new pairs.
    for f in ["node.key", "node.crt"] {
        std::fs::copy(fresh.join(f), dir.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(dir.join(format!("{f}.new")), dir.join(f)).expect("rename");
    }
    for n in &ns {
        let _ = Command::new("kill")
            .args(["-HUP", &n.pid().to_string()])
            .status();
    }
    for n in &ns {
        eventually("the node serves its new certificate", || async {
            (served_fingerprint(&n.addr).as_deref() == Some(new.as_str())).then_some(())
        })
        .await;
        assert!(n.stderr_text().contains("reloaded the TLS certificates"));
    }
    // The cluster keeps working: a write through another node replicates everywhere.
    assert_eq!(write_rows(&ns[1], 100).await.0, 204);
    for n in &ns {
        eventually("rows replicated after the reload", || async {
            let (st, v) = n.try_sql("SELECT count(*) FROM m").await?;
            (st == 200 && v["rows"][0][0].as_i64() == Some(200)).then_some(())
        })
        .await;
    }
}
