//! What each node reports of its load (CPU, disk, bytes and write rate per vshard, which
//! vshards it leads), sampled locally and carried to the others in `Hello` answers; and the
//! latest report of every peer, as the planners read them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use shoal_consensus::Registry;

use crate::view::{NodeLoad, VshardLoad};

/// A report older than this is ignored (the node is treated as unreported).
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(10);

/// Linux's clock ticks per second for `/proc/self/stat` CPU times (fixed at 100 on every
/// platform Shoal builds for).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Samples this node's load; keeps the previous sample to turn counters into rates.
pub struct LoadSampler {
    data_dir: PathBuf,
    version: String,
    started_ms: u64,
    last: Mutex<Option<Previous>>,
    /// The latest sample, served to peers.
    current: RwLock<Arc<NodeLoad>>,
    /// When the node's certificate expires (unix ms; 0: no TLS), kept by the server.
    cert_expires_ms: Arc<std::sync::atomic::AtomicU64>,
}

struct Previous {
    at: Instant,
    cpu_ticks: u64,
    rows: BTreeMap<u32, u64>,
}

impl LoadSampler {
    pub fn new(data_dir: PathBuf, version: String) -> LoadSampler {
        LoadSampler {
            data_dir,
            version,
            started_ms: (shoal_common::time::now_nanos() / 1_000_000) as u64,
            last: Mutex::new(None),
            current: RwLock::new(Arc::new(NodeLoad::default())),
            cert_expires_ms: Default::default(),
        }
    }

    /// Reports the certificate expiry the server keeps in `ms` (see `NodeLoad`).
    pub fn with_cert_expiry(mut self, ms: Arc<std::sync::atomic::AtomicU64>) -> LoadSampler {
        self.cert_expires_ms = ms;
        self
    }

    /// The latest sample.
    pub fn current(&self) -> Arc<NodeLoad> {
        self.current.read().clone()
    }

    /// Takes a new sample from the registry and the operating system.
    pub fn sample(&self, registry: &Registry) -> Arc<NodeLoad> {
        let now = Instant::now();
        let cpu_ticks = process_cpu_ticks().unwrap_or(0);
        let mut last = self.last.lock();
        let elapsed = last
            .as_ref()
            .map(|p| now.duration_since(p.at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let cpu = match (&*last, elapsed) {
            (Some(p), Some(secs)) => {
                (cpu_ticks.saturating_sub(p.cpu_ticks) as f64 / CLOCK_TICKS_PER_SEC / secs / cores)
                    .clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        let leads: BTreeMap<u32, u64> = registry
            .vshard_states()
            .into_iter()
            .filter(|(_, g)| g.leads())
            .map(|(v, g)| (v, g.term))
            .collect();
        let mut rows = BTreeMap::new();
        let mut vshards = vec![];
        let mut data_bytes = 0;
        for st in registry
            .status()
            .into_iter()
            .filter_map(|s| s.vshard.map(|v| (v, s)))
        {
            let (v, s) = st;
            let bytes = s.stats.part_bytes + s.stats.hot_bytes;
            data_bytes += bytes;
            rows.insert(v, s.stats.rows_inserted);
            let before = last.as_ref().and_then(|p| p.rows.get(&v)).copied();
            let rows_per_sec = match (before, elapsed) {
                (Some(b), Some(secs)) => s.stats.rows_inserted.saturating_sub(b) as f64 / secs,
                _ => 0.0,
            };
            vshards.push(VshardLoad {
                vshard: v,
                bytes,
                rows_per_sec,
                leader_term: leads.get(&v).copied(),
            });
        }
        let (disk_free_bytes, disk_total_bytes) = (
            fs4::available_space(&self.data_dir).unwrap_or(0),
            fs4::total_space(&self.data_dir).unwrap_or(0),
        );
        *last = Some(Previous {
            at: now,
            cpu_ticks,
            rows,
        });
        let load = Arc::new(NodeLoad {
            cpu,
            disk_total_bytes,
            disk_free_bytes,
            data_bytes,
            vshards,
            version: self.version.clone(),
            started_ms: self.started_ms,
            cert_expires_ms: self
                .cert_expires_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        });
        *self.current.write() = load.clone();
        load
    }
}

/// utime + stime of this process, in clock ticks.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The latest report of every peer (and of this node).
#[derive(Default)]
pub struct Reports {
    by_node: RwLock<BTreeMap<u64, (NodeLoad, Instant)>>,
}

impl Reports {
    pub fn record(&self, node: u64, load: NodeLoad) {
        self.by_node.write().insert(node, (load, Instant::now()));
    }

    /// `node`'s report if it is recent enough to plan from.
    pub fn get(&self, node: u64) -> Option<NodeLoad> {
        self.by_node
            .read()
            .get(&node)
            .filter(|(_, at)| at.elapsed() <= REPORT_MAX_AGE)
            .map(|(l, _)| l.clone())
    }

    pub fn forget(&self, node: u64) {
        self.by_node.write().remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_parse_from_proc() {
        assert!(process_cpu_ticks().is_some());
    }
}
