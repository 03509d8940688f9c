//! The data directory's identity and lock.
//!
//! `LOCK` is held (exclusive `flock`) for the life of the process, so a second process on the
//! same directory exits at once naming the holder's pid. `node.json` records the node's
//! identity and the cluster's fixed parameters; it carries a format version, and a newer
//! one is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

pub const NODE_FILE: &str = "node.json";
pub const NODE_FORMAT_VERSION: u32 = 1;
/// The cluster's gossip key (hex, mode 0600): SWIM datagrams are authenticated with it.
pub const GOSSIP_KEY_FILE: &str = "gossip.key";
/// The gossip key's length.
pub const GOSSIP_KEY_BYTES: usize = 32;

/// A new random gossip key (made once, when a cluster bootstraps).
pub fn new_gossip_key() -> Result<[u8; GOSSIP_KEY_BYTES], String> {
    let mut key = [0u8; GOSSIP_KEY_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| "no randomness for a gossip key".to_string())?;
    Ok(key)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub format_version: u32,
    pub cluster_id: String,
    pub node_id: u64,
    pub vshards: u32,
    // Older versions recorded `hosts_vshards` here; which vshards a node hosts is now
    // group 0's placement, and the groups' directories say what to open at start.
}

impl NodeIdentity {
    /// The identity of the first node of a new cluster.
    pub fn bootstrap(vshards: u32) -> NodeIdentity {
        NodeIdentity {
            format_version: NODE_FORMAT_VERSION,
            cluster_id: new_cluster_id(),
            node_id: 1,
            vshards,
        }
    }
}

/// A locked data directory whose identity may not exist yet (a node about to join).
pub struct Locked {
    path: PathBuf,
    lock: File,
    pub existing: Option<NodeIdentity>,
}

impl Locked {
    /// The gossip key stored here; `None` for a data directory of a cluster bootstrapped
    /// before gossip keys existed.
    pub fn gossip_key(&self) -> Result<Option<[u8; GOSSIP_KEY_BYTES]>, String> {
        let path = self.path.join(GOSSIP_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        parse_key(text.trim())
            .map(Some)
            .ok_or_else(|| format!("{}: not a {GOSSIP_KEY_BYTES}-byte hex key", path.display()))
    }

    /// Stores the gossip key (owner-only, fsynced, replacing any other) before the
    /// identity is recorded, so a node with an identity always has its key.
    pub fn store_gossip_key(&self, key: &[u8; GOSSIP_KEY_BYTES]) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.join(format!("{GOSSIP_KEY_FILE}.tmp"));
        let dst = self.path.join(GOSSIP_KEY_FILE);
        let err = |e: std::io::Error| format!("{}: {e}", dst.display());
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        f.write_all(format!("{hex}\n").as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &dst).map_err(err)?;
        shoal_storage::manifest::sync_dir(&self.path).map_err(|e| e.to_string())
    }

    /// Finishes opening: keeps the stored identity, or records `fresh` for a new directory.
    pub fn into_dir(self, fresh: Option<NodeIdentity>) -> Result<DataDir, String> {
        let (identity, created) = match (self.existing, fresh) {
            (Some(id), _) => (id, false),
            (None, Some(id)) => {
                let bytes = serde_json::to_vec_pretty(&id).map_err(|e| e.to_string())?;
                shoal_storage::manifest::write_atomic(&self.path, NODE_FILE, &bytes)
                    .map_err(|e| e.to_string())?;
                (id, true)
            }
            (None, None) => return Err("internal: a new data directory needs an identity".into()),
        };
        Ok(DataDir {
            path: self.path,
            identity,
            created,
            _lock: self.lock,
        })
    }
}

/// Holds the directory lock until dropped.
pub struct DataDir {
    pub path: PathBuf,
    pub identity: NodeIdentity,
    pub created: bool,
    _lock: File,
}

/// A gossip key from its hex form (as stored and as sent in a join answer).
pub fn parse_key(hex: &str) -> Option<[u8; GOSSIP_KEY_BYTES]> {
    let bytes = hex.as_bytes();
    if bytes.len() != GOSSIP_KEY_BYTES * 2 {
        return None;
    }
    let mut key = [0u8; GOSSIP_KEY_BYTES];
    for (i, pair) in bytes.chunks(2).enumerate() {
        key[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(key)
}

fn new_cluster_id() -> String {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&shoal_common::time::now_nanos().to_le_bytes());
    bytes.extend_from_slice(&std::process::id().to_le_bytes());
    let a = shoal_common::hash::partition_hash(&bytes);
    bytes.push(1);
    let b = shoal_common::hash::partition_hash(&bytes);
    format!("{a:016x}{b:016x}")
}

/// The last process generation this data directory used (see [`DataDir::next_generation`]).
pub const GENERATION_FILE: &str = "generation";

impl DataDir {
    /// This start's generation: `now_micros`, or one more than the last start's if the
    /// clock reads earlier than that (stepped back by NTP, a restored VM). Stored before it
    /// is used. Peers order a node's incarnations by it (SWIM identities, and gossip's
    /// replay windows, which drop datagrams of an older generation), so it must only grow.
    pub fn next_generation(&self, now_micros: u64) -> Result<u64, String> {
        let last = std::fs::read_to_string(self.path.join(GENERATION_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let next = now_micros.max(last + 1);
        shoal_storage::manifest::write_atomic(
            &self.path,
            GENERATION_FILE,
            format!("{next}\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        Ok(next)
    }

    /// Locks and opens `path` (creating it with a fresh single-node identity when new).
    pub fn open(path: &Path, vshards: u32) -> Result<DataDir, String> {
        let locked = DataDir::lock(path, vshards)?;
        let fresh = locked
            .existing
            .is_none()
            .then(|| NodeIdentity::bootstrap(vshards));
        locked.into_dir(fresh)
    }

    /// Locks `path` (creating the directory) and reads its identity if it has one.
    pub fn lock(path: &Path, vshards: u32) -> Result<Locked, String> {
        std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create data directory {}: {e}", path.display()))?;
        let lock_path = path.join("LOCK");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        match FileExt::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                return Err(format!(
                    "data directory {} is in use by another Shoal process (pid {}); stop it or choose another --data-dir",
                    path.display(),
                    holder.trim()
                ));
            }
        }
        let _ = lock.set_len(0);
        let _ = lock.seek(SeekFrom::Start(0));
        let _ = write!(lock, "{}", std::process::id());
        let _ = lock.sync_all();

        let node_path = path.join(NODE_FILE);
        let existing = match std::fs::read(&node_path) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{} is damaged: {e}", node_path.display()))?;
                let found = v
                    .get("format_version")
                    .and_then(|x| x.as_u64())
                    .unwrap_or(0);
                if found > u64::from(NODE_FORMAT_VERSION) {
                    return Err(format!(
                        "{} has format version {found}, this build reads up to {NODE_FORMAT_VERSION}: upgrade Shoal",
                        node_path.display()
                    ));
                }
                let id: NodeIdentity = serde_json::from_value(v)
                    .map_err(|e| format!("{} is damaged: {e}", node_path.display()))?;
                if id.vshards != vshards {
                    tracing::warn!(
                        configured = vshards,
                        stored = id.vshards,
                        "the vshard count is fixed when a data directory is created; using the stored value"
                    );
                }
                Some(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", node_path.display())),
        };
        Ok(Locked {
            path: path.to_path_buf(),
            lock,
            existing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = DataDir::open(dir.path(), 4).expect("first");
        assert!(first.created);
        let err = DataDir::open(dir.path(), 4)
            .err()
            .expect("second open must fail");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        let again = DataDir::open(dir.path(), 8).expect("reopen");
        assert!(!again.created);
        assert_eq!(again.identity.vshards, 4, "stored vshard count wins");
    }

    #[test]
    fn newer_identity_format_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(NODE_FILE), br#"{"format_version": 7}"#).expect("write");
        let err = DataDir::open(dir.path(), 4).err().expect("refused");
        assert!(err.contains("format version 7"), "{err}");
    }

    #[test]
    fn generations_only_grow_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = DataDir::open(dir.path(), 4).expect("open");
        assert_eq!(d.next_generation(1_000).expect("gen"), 1_000);
        assert_eq!(d.next_generation(5_000).expect("gen"), 5_000);
        assert_eq!(
            d.next_generation(10).expect("gen"),
            5_001,
            "clock stepped back"
        );
    }

    #[test]
    fn the_gossip_key_is_stored_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let locked = DataDir::lock(dir.path(), 4).expect("lock");
        assert_eq!(locked.gossip_key().expect("read"), None);
        let key = new_gossip_key().expect("key");
        locked.store_gossip_key(&key).expect("store");
        assert_eq!(locked.gossip_key().expect("read"), Some(key));
        let mode = std::fs::metadata(dir.path().join(GOSSIP_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        std::fs::write(dir.path().join(GOSSIP_KEY_FILE), "zz").expect("write");
        assert!(locked.gossip_key().is_err(), "a damaged key is an error");
    }
}
