//! `shoal` processes, one per node namespace, with their data directory and log file.
//! Process faults (kill -9, SIGSTOP/SIGCONT, graceful restart) act on the real process.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::Net;

/// Ports every node uses on its own address (each namespace has its own port space).
pub const HTTP_PORT: u16 = 8080;
pub const PG_PORT: u16 = 5432;
pub const RPC_PORT: u16 = 7000;
pub const GOSSIP_PORT: u16 = 7001;

pub struct Host {
    /// 1-based index: node namespace `n<i>`, address `.i`.
    pub index: usize,
    pub ns: String,
    pub ip: std::net::Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Raft node id once known (from the listening line).
    pub node_id: u64,
    child: Option<Child>,
    paused: bool,
    bin: PathBuf,
    join: Option<String>,
    /// A tmpfs of this many MiB is mounted on the data directory (disk-full faults).
    disk_mib: Option<u64>,
    mounted: bool,
    /// The next start runs with its wall clock this far off (`SHOAL_TEST_CLOCK_SKEW_MS`).
    pub skew_ms: Option<i64>,
    /// Its data directory was wiped during this run (see the wipe nemesis).
    pub wiped: bool,
    /// Being decommissioned: its process exits by itself once DECOMMISSIONED (not a crash).
    pub leaving: bool,
}

impl Host {
    pub fn new(net: &Net, index: usize, dir: &Path, bin: &Path, join: Option<String>) -> Host {
        Host {
            index,
            ns: net.node_ns(index),
            ip: net.ip(index),
            data_dir: dir.join(format!("n{index}")),
            log: dir.join(format!("n{index}.log")),
            node_id: 0,
            child: None,
            paused: false,
            bin: bin.to_path_buf(),
            join,
            disk_mib: None,
            mounted: false,
            skew_ms: None,
            wiped: false,
            leaving: false,
        }
    }

    /// Gives the node a data directory of its own `mib`-MiB tmpfs, so one node's disk can
    /// be filled without touching anyone else's.
    pub fn with_disk(mut self, mib: u64) -> Host {
        self.disk_mib = Some(mib);
        self
    }

    fn filler(&self) -> PathBuf {
        self.data_dir.join("disk-full-filler")
    }

    /// Fills the node's disk to the last byte (the data directory must be its tmpfs).
    pub fn fill_disk(&self) -> Result<u64, String> {
        use std::io::Write;
        if !self.mounted {
            return Err("no disk of its own (tmpfs) to fill".into());
        }
        let mut f = std::fs::File::create(self.filler()).map_err(|e| e.to_string())?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        let _ = f.sync_all();
        Ok(written)
    }

    /// Gives the space back.
    pub fn free_disk(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    pub fn http(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip)
    }

    /// Deletes everything in the (stopped) node's data directory, as a lost or replaced
    /// disk would, and makes the next start join through `seeds` (a node with no data and
    /// no seeds would bootstrap a cluster of its own).
    pub fn wipe(&mut self, seeds: String) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!(
                "host {} is running; kill it before wiping",
                self.index
            ));
        }
        // The directory itself may be a tmpfs mount point: empty it, keep it.
        let entries = std::fs::read_dir(&self.data_dir).map_err(|e| e.to_string())?;
        for e in entries.flatten() {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| format!("wiping {}: {e}", p.display()))?;
        }
        self.join = Some(seeds);
        self.wiped = true;
        Ok(())
    }

    pub fn rpc_addr(&self) -> String {
        format!("{}:{RPC_PORT}", self.ip)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Starts the process (appending to its log). A node that has a `node.json` restarts
    /// as itself; a fresh one joins through `join`.
    pub fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|e| e.to_string())?;
        if let (Some(mib), false) = (self.disk_mib, self.mounted) {
            let size = format!("size={mib}m");
            let dir = self.data_dir.to_string_lossy().to_string();
            crate::net::sh("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", &dir])?;
            self.mounted = true;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let ip = self.ip.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(format!("{ip}:{HTTP_PORT}"))
            .arg("--pg-addr")
            .arg(format!("{ip}:{PG_PORT}"))
            .arg("--rpc-addr")
            .arg(format!("{ip}:{RPC_PORT}"))
            .arg("--gossip-addr")
            .arg(format!("{ip}:{GOSSIP_PORT}"))
            // Each node has its own address in its own namespace: beyond loopback, so
            // plaintext and trust need saying (the harness tests consensus, not TLS).
            .arg("--insecure");
        if let Some(seed) = &self.join {
            cmd.arg("--join").arg(seed);
        }
        if let Some(ms) = self.skew_ms {
            cmd.env("SHOAL_TEST_CLOCK_SKEW_MS", ms.to_string());
        }
        if self.disk_mib.is_none() {
            // Without a disk of its own the node shares the build machine's, often fuller
            // than the 92.5 % past which no replica is placed there: the cluster would
            // never replicate (CI run of bdcab2d). Only a really full disk stops it here.
            cmd.env("SHOAL_REBALANCE_MAX_DISK_FRACTION", "0.995");
        }
        let child = cmd
            .env("SHOAL_LOG", "info,openraft=warn")
            // The harness reaches the admin API from outside the node's namespace.
            .env("SHOAL_ADMIN_TOKEN", crate::client::ADMIN_TOKEN)
            // A drain waits this long unready; the harness's clients do not poll readiness.
            .env("SHOAL_DRAIN_WAIT_UNREADY_MS", "1000")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawn shoal in {}: {e}", self.ns))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The node id from the last listening line in the log, once printed.
    pub fn read_node_id(&mut self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let id = text
            .lines()
            .rev()
            .find(|l| l.starts_with("shoal: listening"))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("node_id="))?
            .parse()
            .ok()?;
        self.node_id = id;
        Some(id)
    }

    fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if self.paused {
            self.signal(Signal::SIGCONT);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: std::time::Duration) {
        if self.paused {
            self.signal(Signal::SIGCONT);
            self.paused = false;
        }
        self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        if let Some(c) = &mut self.child {
            while std::time::Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill9();
    }

    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = self.child.is_some();
    }

    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// Whether the process died on its own (a crash is a finding, not a fault we injected).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
        if self.mounted {
            let dir = self.data_dir.to_string_lossy().to_string();
            let _ = crate::net::sh("umount", &["-l", &dir]);
        }
    }
}
