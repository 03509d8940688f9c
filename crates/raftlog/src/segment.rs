//! Segment files: naming, creation, positional reads, and the recovery scan.
//!
//! A segment is `<seq:020>.seg`, a header then records back to back (see `format`).
//! Sequence numbers only grow and are never reused, so a (seq, offset) pair names one
//! record for as long as the file exists.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, IoContext};
use crate::format::{encode_segment_header, RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

#[cfg(not(unix))]
compile_error!("shoal-raftlog supports Unix only (positional reads, unlinking open files)");

const SEGMENT_SUFFIX: &str = ".seg";
/// Read buffer of the sequential recovery scan.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// Window the torn-tail check reads at a time while looking for a later record.
const RESYNC_WINDOW_BYTES: u64 = 1024 * 1024;

pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment sequence numbers present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub(crate) fn open_segment(path: &Path) -> Result<File, Error> {
    // Append mode: every write lands at the current end, also right after a truncation.
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .ctx(|| format!("open segment {}", path.display()))
}

/// Creates a new segment with its header. With `fsync`, the header and the directory
/// entry are durable on return. Returns the file and the number of fsyncs done.
pub(crate) fn create_segment(dir: &Path, seq: u64, fsync: bool) -> Result<(File, u64), Error> {
    let path = dir.join(segment_file_name(seq));
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .ctx(|| format!("create segment {}", path.display()))?;
    file.write_all(&encode_segment_header())
        .ctx(|| format!("write header of {}", path.display()))?;
    if !fsync {
        return Ok((file, 0));
    }
    file.sync_data()
        .ctx(|| format!("fsync {}", path.display()))?;
    sync_dir(dir)?;
    Ok((file, 2))
}

/// Makes creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Whether every byte of the file is zero (a file whose size reached the disk but
/// whose data did not).
pub(crate) fn is_all_zero(file: &File) -> io::Result<bool> {
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// The records of one segment as the recovery scan found them.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Length of the segment up to the end of its last whole record.
    pub valid_len: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Set when the segment ends in a partial or damaged record that nothing valid
    /// follows: a write cut short by a crash. The caller cuts it off.
    pub torn: Option<TornRecord>,
}

#[derive(Debug)]
pub(crate) struct TornRecord {
    pub offset: u64,
    pub reason: String,
}

/// Reads every record of a segment whose header was already checked, verifying
/// lengths, checksums and index contiguity, and hands each record to `on_record`.
///
/// `expected` is the index the first record must have (`None`: any). A damaged record
/// is a torn tail only in the last segment and only when no valid record follows it;
/// anything else is returned as `Error::Corrupt`.
pub(crate) fn scan_segment(
    file: &File,
    path: &Path,
    is_last: bool,
    expected: Option<u64>,
    max_record_bytes: u64,
    mut on_record: impl FnMut(u64, u64, Bytes),
) -> Result<SegmentScan, Error> {
    let file_len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    reader
        .seek(SeekFrom::Start(SEGMENT_HEADER_LEN))
        .ctx(|| format!("seek in {}", path.display()))?;
    let mut scan = SegmentScan {
        valid_len: SEGMENT_HEADER_LEN,
        first: None,
        last: None,
        torn: None,
    };
    let mut expected = expected;
    let read_err = |offset: u64| move || format!("read {} at offset {offset}", path.display());
    loop {
        let offset = scan.valid_len;
        let remaining = file_len.saturating_sub(offset);
        if remaining == 0 {
            return Ok(scan);
        }
        let damage = if remaining < RECORD_HEADER_LEN {
            format!("partial record header ({remaining} bytes)")
        } else {
            let mut head = [0u8; RECORD_HEADER_LEN as usize];
            reader.read_exact(&mut head).ctx(read_err(offset))?;
            let header = RecordHeader::decode(&head);
            let payload_len = u64::from(header.payload_len);
            if payload_len > max_record_bytes {
                format!("record length {payload_len} exceeds max_record_bytes {max_record_bytes}")
            } else if header.record_len() > remaining {
                format!(
                    "record of {} bytes extends {} bytes past the end of the file",
                    header.record_len(),
                    header.record_len() - remaining
                )
            } else {
                // Bounded by max_record_bytes and by the file length, checked above.
                let mut payload = vec![0u8; payload_len as usize];
                reader.read_exact(&mut payload).ctx(read_err(offset))?;
                if header.checks(&payload) {
                    if let Some(want) = expected.filter(|&want| want != header.index) {
                        // A whole record with a valid checksum at the wrong index is not
                        // a torn write: something rewrote the log.
                        return Err(Error::Corrupt {
                            file: path.to_path_buf(),
                            offset,
                            reason: format!(
                                "record has index {} where index {want} was expected",
                                header.index
                            ),
                        });
                    }
                    on_record(header.index, offset, Bytes::from(payload));
                    scan.first.get_or_insert(header.index);
                    scan.last = Some(header.index);
                    expected = Some(header.index.saturating_add(1));
                    scan.valid_len += header.record_len();
                    continue;
                }
                format!(
                    "checksum mismatch in record claiming index {}",
                    header.index
                )
            }
        };
        return damaged_record(
            file,
            path,
            is_last,
            expected,
            max_record_bytes,
            offset,
            damage,
        )
        .map(|torn| SegmentScan {
            torn: Some(torn),
            ..scan
        });
    }
}

/// Decides whether damage at `offset` is a torn tail (returned) or corruption (error).
fn damaged_record(
    file: &File,
    path: &Path,
    is_last: bool,
    expected: Option<u64>,
    max_record_bytes: u64,
    offset: u64,
    damage: String,
) -> Result<TornRecord, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if !is_last {
        return Err(corrupt(format!(
            "{damage}, in a segment that is not the last one"
        )));
    }
    let later = find_later_record(file, path, offset + 1, expected, max_record_bytes)?;
    if let Some((later_offset, later_index)) = later {
        return Err(corrupt(format!(
            "{damage}; a valid record (index {later_index}) follows at offset \
             {later_offset}, so this is not a torn tail"
        )));
    }
    Ok(TornRecord {
        offset,
        reason: damage,
    })
}

/// Looks for any valid record starting at or after `from`, byte by byte. A crash can
/// only damage the end of what was being written; a valid record after the damage
/// means the damage is in the middle of the log. Candidates must carry an index that
/// could follow the damaged one, which keeps this cheap on garbage.
fn find_later_record(
    file: &File,
    path: &Path,
    from: u64,
    expected: Option<u64>,
    max_record_bytes: u64,
) -> Result<Option<(u64, u64)>, Error> {
    let file_len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let plausible = |index: u64| match expected {
        Some(lo) => index >= lo && index - lo <= file_len / RECORD_HEADER_LEN + 1,
        None => true,
    };
    let mut window_start = from;
    let mut buf = Vec::new();
    while window_start + RECORD_HEADER_LEN <= file_len {
        // Candidate positions in this window, plus room for the last one's header.
        let positions = RESYNC_WINDOW_BYTES.min(file_len - RECORD_HEADER_LEN - window_start + 1);
        let buf_len = (positions + RECORD_HEADER_LEN - 1) as usize;
        buf.resize(buf_len, 0);
        read_exact_at(file, &mut buf, window_start)
            .ctx(|| format!("read {} at offset {window_start}", path.display()))?;
        for i in 0..positions as usize {
            let pos = window_start + i as u64;
            let mut head = [0u8; RECORD_HEADER_LEN as usize];
            head.copy_from_slice(&buf[i..i + RECORD_HEADER_LEN as usize]);
            let header = RecordHeader::decode(&head);
            if u64::from(header.payload_len) > max_record_bytes
                || pos + header.record_len() > file_len
                || !plausible(header.index)
            {
                continue;
            }
            let payload_start = i + RECORD_HEADER_LEN as usize;
            let payload_end = payload_start + header.payload_len as usize;
            let valid = if payload_end <= buf.len() {
                header.checks(&buf[payload_start..payload_end])
            } else {
                let mut payload = vec![0u8; header.payload_len as usize];
                read_exact_at(file, &mut payload, pos + RECORD_HEADER_LEN)
                    .ctx(|| format!("read {} at offset {pos}", path.display()))?;
                header.checks(&payload)
            };
            if valid {
                return Ok(Some((pos, header.index)));
            }
        }
        window_start += positions;
    }
    Ok(None)
}

/// Cuts a segment at `len` and makes the cut durable.
pub(crate) fn truncate_segment(
    file: &File,
    path: &Path,
    len: u64,
    fsync: bool,
) -> Result<u64, Error> {
    file.set_len(len)
        .ctx(|| format!("truncate {} to {len} bytes", path.display()))?;
    if !fsync {
        return Ok(0);
    }
    file.sync_data()
        .ctx(|| format!("fsync {}", path.display()))?;
    Ok(1)
}

/// Removes a segment file; one that is already gone counts as removed.
pub(crate) fn remove_segment(path: &PathBuf) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).ctx(|| format!("remove segment {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name("00000000000000000007.seg"), Some(7));
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.seg.tmp"),
            None
        );
    }
}
