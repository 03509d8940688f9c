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
