//! `shoal sql` against a running node: one statement as an argument, and the interactive
//! shell reading statements (multi-line, `;`-terminated) from its input until `\q`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_and_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(dir.path(), &[]).await;
    assert_eq!(
        node.write("cpu,host=a usage=0.5 1\ncpu,host=bb usage=0.75 2\n")
            .await
            .0,
        204
    );

    let out = Command::new(support::BIN)
        .args([
            "sql",
            "--host",
            &node.addr,
            "SELECT host, usage FROM cpu ORDER BY ts",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        " host | usage\n------+-------\n a    | 0.5\n bb   | 0.75\n(2 rows)\n"
    );

    let bad = Command::new(support::BIN)
        .args(["sql", "--host", &node.addr, "SELECT * FROM nope"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error (400)"));

    let mut shell = Command::new(support::BIN)
        .args(["sql", "--host", &node.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shell");
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT count(*)\n  FROM cpu;\nSELECT nonsense FROM cpu;\n\\q\n")
        .expect("write");
    let out = shell.wait_with_output().expect("shell output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" 2\n(1 row)"),
        "multi-line statement ran: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nonsense"),
        "errors go to stderr and the shell continues"
    );
}
