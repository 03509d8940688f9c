//! A full disk: writes fail with 507 before anything reaches the log, reads keep working,
//! and writes succeed again once space returns — without a restart. The data directory is a
//! small tmpfs (needs root to mount; skipped with a printed reason otherwise).

mod support;

use std::process::Command;

use support::Node;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_with_507_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
        .arg(dir.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIP full_disk_refuses_writes_with_507_and_recovers: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let data = dir.path().join("data");
    let node = Node::start(
        &data,
        &["--min-free-disk-bytes", "33554432", "--vshards", "2"],
    )
    .await;
    assert_eq!(node.write("m,symbol=A v=1 1\n").await.0, 204);

    // Fill the file system until less than the 32 MiB reserve is free.
    let ballast = dir.path().join("ballast");
    let free = fs_free(dir.path());
    let fill = free.saturating_sub(16 * 1024 * 1024);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("ballast");

    let (status, text) = node.write("m,symbol=A v=2 2\n").await;
    assert_eq!(status, 507, "{text}");
    assert!(text.contains("min_free_disk_bytes"), "{text}");
    assert_eq!(
        node.count("SELECT count(*) FROM m").await,
        1,
        "reads keep working, nothing half written"
    );

    std::fs::remove_file(&ballast).expect("remove ballast");
    assert_eq!(
        node.write("m,symbol=A v=3 3\n").await.0,
        204,
        "writes resume when space returns"
    );
    assert_eq!(node.count("SELECT count(*) FROM m").await, 2);
}

fn fs_free(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .arg("--output=avail")
        .arg("-B1")
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// A decommission whose only target fills its disk stalls, and says so: the status names
/// each stuck vshard and why, group 0's leader logs it; with space back it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommission_onto_a_full_disk_stalls_visibly_then_finishes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let small = tempfile::tempdir().expect("tmp");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
        .arg(small.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIP a_decommission_onto_a_full_disk_stalls_visibly_then_finishes: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(small.path().to_path_buf());
    let flags = [
        "--decommission-stall-ms",
        "6000",
        "--rebalance-interval-ms",
        "1000",
        "--move-stall-timeout-ms",
        "4000",
        "--report-interval-ms",
        "500",
    ];
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let mut ns = support::cluster_with(
        &dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>(),
        &flags,
    )
    .await;
    support::all_replicated(&ns[0]).await;
    // Node 4 gets nothing by balancing: every vshard of node 3 has to go to it.
    let (s, v) = ns[0]
        .sql("SET CLUSTER SETTING rebalance_paused = true")
        .await;
    assert_eq!(s, 200, "{v}");
    let mut f4 = vec![
        "--join",
        ns[0].rpc_addr.as_str(),
        "--min-free-disk-bytes",
        "33554432",
    ];
    f4.extend_from_slice(&flags);
    let fourth = Node::spawn_pinned(&small.path().join("n4"), &f4);
    fourth.wait_ready().await;
    ns.push(fourth);
    support::eventually("node 4 ACTIVE", || async {
        support::has_lifecycle(&ns[0], 4, "ACTIVE").await
    })
    .await;
    assert_eq!(ns[0].write("s,sym=a v=1i 1\n").await.0, 204);
    let r = reqwest::Client::new()
        .post(ns[1].url("/admin/v1/nodes/3/decommission"))
        .send()
        .await
        .expect("decommission");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let ballast = small.path().join("ballast");
    let fill = fs_free(small.path()).saturating_sub(16 * 1024 * 1024);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("ballast");

    let all: Vec<&Node> = ns.iter().collect();
    let status = support::within(
        "the decommission reported stalled",
        std::time::Duration::from_secs(120),
        &all,
        || async {
            let r = support::rows(
                &ns[0],
                "SELECT decommission FROM system.nodes WHERE node_id = 3",
            )
            .await?;
            let s = r[0][0].as_str()?.to_string();
            s.contains("decommission stalled").then_some(s)
        },
    )
    .await;
    println!("stalled: {status}");
    assert!(
        status.contains("vshard "),
        "the stuck vshards are named: {status}"
    );
    assert!(
        status.contains("node 4's disk is"),
        "the full disk is named: {status}"
    );
    support::eventually("group 0's leader logs the stall", || async {
        ns.iter()
            .any(|n| n.stderr_text().contains("decommission stalled"))
            .then_some(())
    })
    .await;

    std::fs::remove_file(&ballast).expect("remove ballast");
    support::within(
        "node 3 DECOMMISSIONED once space is back",
        std::time::Duration::from_secs(240),
        &all,
        || async { support::has_lifecycle(&ns[0], 3, "DECOMMISSIONED").await },
    )
    .await;
    let p = support::placement(&ns[0]).await.expect("placement");
    assert!(p.iter().all(|r| r == &vec![1, 2, 4]), "{p:?}");
    assert_eq!(ns[3].count("SELECT count(*) FROM s").await, 1);
}
