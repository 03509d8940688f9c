//! Small durable values kept beside the segments: the caller's metadata (vote,
//! committed log id, ...) and the log's own purge point.
//!
//! A value is replaced atomically: write `<name>.tmp`, fsync it, rename over `<name>`,
//! fsync the directory. A crash leaves either the old or the new value, never a mix;
//! a leftover `.tmp` is deleted on open.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, IoContext};
use crate::format::{decode_meta, encode_meta, MetaDecodeError, FORMAT_VERSION};
use crate::segment::sync_dir;

/// Largest value `save_meta` accepts. Meta values are a vote or a log id; anything
/// bigger belongs in the log.
pub const MAX_META_VALUE_BYTES: usize = 1024 * 1024;
/// Longest key `save_meta` accepts.
pub const MAX_META_KEY_LEN: usize = 64;

/// File holding the log's purge point (a u64). Not a valid user key's file name.
pub(crate) const PURGED_FILE: &str = "PURGED";
const USER_META_PREFIX: &str = "meta.";
const TEMP_SUFFIX: &str = ".tmp";

/// File name for a user key; keys are restricted so they cannot escape the directory.
pub(crate) fn user_meta_file(key: &str) -> Result<String, Error> {
    let invalid = |reason| {
        Err(Error::InvalidMetaKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > MAX_META_KEY_LEN {
        return invalid("must be 1 to 64 bytes long");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return invalid("may contain only ASCII letters, digits, '_' and '-'");
    }
    Ok(format!("{USER_META_PREFIX}{key}"))
}

/// A few blocks kept allocated in every log directory and given back when a metadata
/// write finds the disk full. A Raft replica must be able to persist its vote even on a
/// full disk (openraft stops a group for good when it cannot), and replacing the vote
/// file is net-neutral after the first time (the rename frees the old file's block).
pub(crate) const RESERVE_FILE: &str = "RESERVE";
const RESERVE_BYTES: usize = 64 * 1024;

/// Makes sure the reserve exists; best effort (on a full disk it waits for space).
pub(crate) fn ensure_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let made = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; RESERVE_BYTES])?;
        f.sync_all()
    });
    if made.is_err() {
        let _ = fs::remove_file(&path);
    }
}

/// Gives the reserve back to the filesystem; whether there was one.
pub(crate) fn release_reserve(dir: &Path) -> bool {
    fs::remove_file(dir.join(RESERVE_FILE)).is_ok()
}

/// Durably replaces the value stored in `dir/name`. Returns the number of fsyncs done.
pub(crate) fn write_meta_file(
    dir: &Path,
    name: &str,
    value: &[u8],
    fsync: bool,
) -> Result<u64, Error> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    file.write_all(&encode_meta(value))
        .ctx(|| format!("write {}", tmp.display()))?;
    let mut fsyncs = 0;
    if fsync {
        file.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        fsyncs += 1;
    }
    drop(file);
    fs::rename(&tmp, &path).ctx(|| format!("rename {} into place", tmp.display()))?;
    if fsync {
        sync_dir(dir)?;
        fsyncs += 1;
    }
    Ok(fsyncs)
}

/// Reads the value stored in `dir/name`, `None` if there is none.
pub(crate) fn read_meta_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, Error> {
    let path = dir.join(name);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("open {}", path.display())),
    };
    let len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let limit = (MAX_META_VALUE_BYTES + crate::format::META_HEADER_LEN) as u64;
    if len > limit {
        return Err(Error::Corrupt {
            file: path,
            offset: 0,
            reason: format!("meta file is {len} bytes, more than the {limit} any value needs"),
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut file, &mut buf).ctx(|| format!("read {}", path.display()))?;
    match decode_meta(&buf) {
        Ok(value) => Ok(Some(value.to_vec())),
        Err(MetaDecodeError::Corrupt(reason)) => Err(Error::Corrupt {
            file: path,
            offset: 0,
            reason: format!("meta file: {reason}"),
        }),
        Err(MetaDecodeError::NewerVersion(found)) => Err(Error::UnsupportedVersion {
            file: path,
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

/// A log's directory of small values: locked while open, with the caller's keys (`meta.*`),
/// the purge point and the disk-full reserve. Shared by [`crate::RaftLog`] and
/// [`crate::GroupLog`].
pub(crate) struct MetaDir {
    dir: PathBuf,
    fsync: bool,
    /// Serializes writers of the same file's temp file.
    lock: Mutex<()>,
    fsyncs: AtomicU64,
    /// Held for the life of the handle; dropping it releases the directory lock.
    _lock: File,
}

impl MetaDir {
    /// Creates `dir` if needed, locks it, removes temp files a crash left and makes sure the
    /// reserve exists.
    pub fn open(dir: &Path, fsync: bool) -> Result<MetaDir, Error> {
        fs::create_dir_all(dir).ctx(|| format!("create log directory {}", dir.display()))?;
        let lock = crate::lock_dir(dir)?;
        remove_stale_temp_files(dir)?;
        ensure_reserve(dir);
        Ok(MetaDir {
            dir: dir.to_path_buf(),
            fsync,
            lock: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// fsyncs done by writes through this handle.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Replaces file `name` with `value`, durably; on a full disk the reserve is given up
    /// for it (a Raft replica must be able to persist its vote).
    pub fn write(&self, name: &str, value: &[u8]) -> Result<(), Error> {
        let _one = self.lock.lock();
        let dir = &self.dir;
        let fsyncs = match write_meta_file(dir, name, value, self.fsync) {
            Err(e) if e.is_storage_full() && release_reserve(dir) => {
                tracing::warn!(dir = %dir.display(), name, "disk full: used the reserved space to save raft metadata");
                write_meta_file(dir, name, value, self.fsync)?
            }
            other => other?,
        };
        ensure_reserve(dir);
        self.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        Ok(())
    }

    /// Stores a caller's value under `key`.
    pub fn save_user(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let name = user_meta_file(key)?;
        if value.len() > MAX_META_VALUE_BYTES {
            return Err(Error::RecordTooLarge {
                bytes: value.len() as u64,
                max: MAX_META_VALUE_BYTES as u64,
            });
        }
        self.write(&name, value)
    }

    /// The caller's value under `key`, `None` if there is none.
    pub fn load_user(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let name = user_meta_file(key)?;
        let _one = self.lock.lock();
        read_meta_file(&self.dir, &name)
    }
}

/// Reads the persisted purge point.
pub(crate) fn read_purge_point(dir: &Path) -> Result<Option<u64>, Error> {
    let Some(value) = read_meta_file(dir, PURGED_FILE)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| Error::Corrupt {
        file: dir.join(PURGED_FILE),
        offset: 0,
        reason: format!("purge point is {} bytes, expected 8", value.len()),
    })?;
    Ok(Some(u64::from_le_bytes(bytes)))
}

/// Deletes temp files a crash left behind mid-replace; the old value is still whole.
pub(crate) fn remove_stale_temp_files(dir: &Path) -> Result<(), Error> {
    let entries = fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(TEMP_SUFFIX)) {
            let path = entry.path();
            fs::remove_file(&path).ctx(|| format!("remove stale {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_directory() {
        assert_eq!(user_meta_file("vote").unwrap(), "meta.vote");
        assert!(user_meta_file("../x").is_err());
        assert!(user_meta_file("a/b").is_err());
        assert!(user_meta_file("").is_err());
        assert!(user_meta_file(&"k".repeat(65)).is_err());
    }

    #[test]
    fn corrupt_meta_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_meta_file(dir.path(), "meta.vote", b"term=3", false).unwrap();
        let path = dir.path().join("meta.vote");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            read_meta_file(dir.path(), "meta.vote"),
            Err(Error::Corrupt { .. })
        ));
    }
}
