//! The manifest: which Parquet parts hold a vshard replica's flushed rows, up to which Raft
//! log index, plus the consensus layer's opaque state at that index.
//!
//! Format (JSON, `manifest.json`): `{"format_version":1, "raft_state":…, "tables":{"<table
//! id>":[part…]}, "next_part_id":n}`. A manifest with a newer `format_version` is refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// One immutable Parquet file of one table, holding rows of a single UTC day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    /// Path relative to the shard directory.
    pub file: String,
    pub day: i64,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts: i64,
    pub max_ts: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Owned by the consensus layer (applied log id, membership, recent request ids).
    pub raft_state: serde_json::Value,
    /// Parts per table id.
    pub tables: BTreeMap<u64, Vec<PartMeta>>,
    pub next_part_id: u64,
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            ..Default::default()
        }
    }

    /// Reads `dir/manifest.json`, or `None` when the shard has never flushed.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::BadManifest {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found > MANIFEST_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.display().to_string(),
                found,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        let manifest = serde_json::from_value(value).map_err(|e| Error::BadManifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(manifest))
    }

    /// Writes the manifest atomically: temp file, fsync, rename over the old one, fsync dir.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::BadManifest {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(dir, MANIFEST_FILE, &bytes)
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let ctx = |what: &str| format!("{what} {}", dst.display());
    let mut f = File::create(&tmp).map_err(|e| Error::io(ctx("creating"), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(|e| Error::io(ctx("renaming"), e))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}
