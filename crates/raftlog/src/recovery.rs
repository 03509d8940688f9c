//! Opening a log directory: scan every segment, cut a torn tail, finish an interrupted
//! purge, and rebuild the in-memory index and tail cache.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LogConfig;
use crate::error::{Error, IoContext};
use crate::format::{
    check_segment_header, encode_segment_header, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use crate::index::{Loc, LogIndex};
use crate::segment::{
    is_all_zero, list_segments, open_segment, read_exact_at, remove_segment, scan_segment,
    segment_file_name, sync_dir, truncate_segment,
};

/// What one segment file holds, as the shared state tracks it.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes up to the end of the last whole record.
    pub len: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// What open found and repaired; see [`crate::RaftLog::recovery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments_scanned: usize,
    pub records_found: u64,
    /// The damaged tail cut off the last segment, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Segments deleted because a purge was persisted but the crash came before the
    /// files were removed.
    pub purged_segments_removed: usize,
}

/// A torn tail cut during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Offset the file was cut at: the end of the last whole record.
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: String,
}

pub(crate) struct Recovered {
    pub segments: BTreeMap<u64, SegmentMeta>,
    pub index: LogIndex,
    pub next_seq: u64,
    /// Highest index on disk (including purged ones still in a segment).
    pub disk_last: Option<u64>,
    pub report: RecoveryReport,
}

pub(crate) fn recover(
    dir: &Path,
    cfg: &LogConfig,
    purged: Option<u64>,
) -> Result<Recovered, Error> {
    let seqs = list_segments(dir)?;
    let mut segments = BTreeMap::new();
    let mut index = LogIndex::new(cfg.cache_max_bytes);
    let mut report = RecoveryReport::default();
    let mut expected = None;
    let mut disk_last = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = dir.join(segment_file_name(seq));
        let file = open_segment(&path)?;
        if let Some(torn) = check_header(&file, &path, is_last, cfg.fsync)? {
            report.torn_tail = Some(torn);
        }
        let scan = scan_segment(
            &file,
            &path,
            is_last,
            expected,
            cfg.max_record_bytes,
            |idx, offset, payload| {
                report.records_found += 1;
                if purged.is_some_and(|p| idx <= p) {
                    return;
                }
                let loc = Loc {
                    seq,
                    offset,
                    len: payload.len() as u32,
                };
                index.push_durable(idx, loc, Some(payload));
            },
        )?;
        if let Some(torn) = &scan.torn {
            let file_len = file
                .metadata()
                .ctx(|| format!("stat {}", path.display()))?
                .len();
            let bytes_cut = file_len - torn.offset;
            tracing::warn!(
                file = %path.display(),
                offset = torn.offset,
                bytes_cut,
                reason = %torn.reason,
                "raft log: cutting torn tail left by a crash; entries after offset were never acknowledged"
            );
            truncate_segment(&file, &path, torn.offset, cfg.fsync)?;
            report.torn_tail = Some(TornTail {
                file: path.clone(),
                offset: torn.offset,
                bytes_cut,
                reason: torn.reason.clone(),
            });
        }
        if scan.last.is_some() {
            expected = scan.last.map(|l| l.saturating_add(1));
            disk_last = scan.last;
        }
        report.segments_scanned += 1;
        segments.insert(
            seq,
            SegmentMeta {
                path,
                file: Arc::new(file),
                len: scan.valid_len,
                first: scan.first,
                last: scan.last,
            },
        );
    }
    if let Some(upto) = purged {
        report.purged_segments_removed = finish_purge(dir, &mut segments, upto, cfg.fsync)?;
        if disk_last.is_some_and(|l| l <= upto) {
            disk_last = None;
        }
    }
    Ok(Recovered {
        segments,
        index,
        next_seq: seqs.last().map_or(1, |s| s + 1),
        disk_last,
        report,
    })
}

/// Checks a segment's header. The last segment may have been created just before a
/// crash with its header missing or unwritten (all zeros); it gets a fresh header and
/// the repair is reported as a torn tail. Anywhere else a bad header is corruption.
fn check_header(
    file: &File,
    path: &Path,
    is_last: bool,
    fsync: bool,
) -> Result<Option<TornTail>, Error> {
    let file_len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let corrupt = |reason: &str| Error::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        reason: reason.to_string(),
    };
    let damage = if file_len < SEGMENT_HEADER_LEN {
        "segment shorter than its header"
    } else {
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        read_exact_at(file, &mut header, 0).ctx(|| format!("read header of {}", path.display()))?;
        match check_segment_header(&header) {
            SegmentHeader::Valid => return Ok(None),
            SegmentHeader::NewerVersion(found) => {
                return Err(Error::UnsupportedVersion {
                    file: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            SegmentHeader::BadVersion(v) => {
                return Err(corrupt(&format!("segment header has invalid version {v}")))
            }
            SegmentHeader::BadMagic => {
                let zeros = is_all_zero(file).ctx(|| format!("read {}", path.display()))?;
                if !zeros {
                    return Err(corrupt("segment header has bad magic"));
                }
                "segment file is all zeros"
            }
        }
    };
    if !is_last {
        return Err(corrupt(&format!(
            "{damage}, in a segment that is not the last one"
        )));
    }
    tracing::warn!(
        file = %path.display(),
        bytes_cut = file_len,
        reason = damage,
        "raft log: rewriting the header of a segment created just before a crash"
    );
    file.set_len(0)
        .ctx(|| format!("truncate {}", path.display()))?;
    let mut writer = file;
    writer
        .write_all(&encode_segment_header())
        .ctx(|| format!("rewrite header of {}", path.display()))?;
    if fsync {
        file.sync_data()
            .ctx(|| format!("fsync {}", path.display()))?;
    }
    Ok(Some(TornTail {
        file: path.to_path_buf(),
        offset: 0,
        bytes_cut: file_len,
        reason: damage.to_string(),
    }))
}

/// Deletes segments that lie entirely at or below the persisted purge point: a crash
/// came between persisting the purge point and removing the files.
fn finish_purge(
    dir: &Path,
    segments: &mut BTreeMap<u64, SegmentMeta>,
    upto: u64,
    fsync: bool,
) -> Result<usize, Error> {
    let last_seq = segments.keys().next_back().copied();
    let doomed: Vec<u64> = segments
        .iter()
        .filter(|(&seq, seg)| match seg.last {
            Some(last) => last <= upto,
            None => Some(seq) != last_seq,
        })
        .map(|(&seq, _)| seq)
        .collect();
    for seq in &doomed {
        if let Some(seg) = segments.remove(seq) {
            remove_segment(&seg.path)?;
        }
    }
    if !doomed.is_empty() && fsync {
        sync_dir(dir)?;
    }
    Ok(doomed.len())
}
