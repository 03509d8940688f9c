//! Byte layouts of everything the log writes to disk. Pure encode/decode, no I/O, so
//! the layouts can be tested on their own and read in one place.
//!
//! All integers are little-endian. Version 1 layouts:
//!
//! ```text
//! segment header (16 bytes, at offset 0 of every segment file)
//!   [8]  magic  b"SHOALLOG"
//!   [4]  u32    format version (1)
//!   [4]  u32    reserved, written as 0, ignored on read
//!
//! record (16-byte header + payload, back to back after the segment header)
//!   [4]  u32    payload_len
//!   [4]  u32    crc32 (IEEE, crc32fast) over index bytes ++ payload
//!   [8]  u64    index
//!   [payload_len] payload
//!
//! meta file (one small value per file)
//!   [8]  magic  b"SHOALMET"
//!   [4]  u32    format version (1)
//!   [4]  u32    value_len
//!   [4]  u32    crc32 over value
//!   [value_len] value
//! ```

/// Magic bytes that open every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SHOALLOG";
/// Magic bytes that open every meta file.
pub(crate) const META_MAGIC: &[u8; 8] = b"SHOALMET";
/// The on-disk format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header at the start of every segment file.
pub const SEGMENT_HEADER_LEN: u64 = 16;
/// Length of the frame in front of every record's payload.
pub const RECORD_HEADER_LEN: u64 = 16;
/// Length of the frame in front of a meta value.
pub(crate) const META_HEADER_LEN: usize = 20;

/// What a segment header says about the file it opens.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    /// A version-1 segment.
    Valid,
    /// The first eight bytes are not [`SEGMENT_MAGIC`].
    BadMagic,
    /// Written by a newer build than this one.
    NewerVersion(u32),
    /// Version 0, which no build has ever written.
    BadVersion(u32),
}

pub(crate) fn encode_segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    buf[..8].copy_from_slice(SEGMENT_MAGIC);
    buf[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf
}

pub(crate) fn check_segment_header(buf: &[u8; SEGMENT_HEADER_LEN as usize]) -> SegmentHeader {
    if &buf[..8] != SEGMENT_MAGIC {
        return SegmentHeader::BadMagic;
    }
    match read_u32(buf, 8) {
        FORMAT_VERSION => SegmentHeader::Valid,
        v if v > FORMAT_VERSION => SegmentHeader::NewerVersion(v),
        v => SegmentHeader::BadVersion(v),
    }
}

/// The 16-byte frame in front of a record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub index: u64,
}

impl RecordHeader {
    /// Frames `payload` as the record for `index`. The caller has checked that the
    /// payload length fits in a u32.
    pub fn for_payload(index: u64, payload: &[u8]) -> RecordHeader {
        RecordHeader {
            payload_len: payload.len() as u32,
            crc: record_crc(index, payload),
            index,
        }
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut buf = [0u8; RECORD_HEADER_LEN as usize];
        buf[..4].copy_from_slice(&self.payload_len.to_le_bytes());
        buf[4..8].copy_from_slice(&self.crc.to_le_bytes());
        buf[8..].copy_from_slice(&self.index.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8; RECORD_HEADER_LEN as usize]) -> RecordHeader {
        RecordHeader {
            payload_len: read_u32(buf, 0),
            crc: read_u32(buf, 4),
            index: read_u64(buf, 8),
        }
    }

    /// Whether `payload` is what this header was written for.
    pub fn checks(&self, payload: &[u8]) -> bool {
        payload.len() as u64 == u64::from(self.payload_len)
            && record_crc(self.index, payload) == self.crc
    }

    /// Bytes the whole record occupies on disk.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.payload_len)
    }
}

/// The checksum covers the index too, so a payload that landed at the wrong index
/// (a misdirected write) does not pass.
pub(crate) fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

pub(crate) fn encode_meta(value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(META_HEADER_LEN + value.len());
    buf.extend_from_slice(META_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    buf.extend_from_slice(value);
    buf
}

/// Why a meta file could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetaDecodeError {
    Corrupt(&'static str),
    NewerVersion(u32),
}

pub(crate) fn decode_meta(buf: &[u8]) -> Result<&[u8], MetaDecodeError> {
    if buf.len() < META_HEADER_LEN {
        return Err(MetaDecodeError::Corrupt("shorter than the meta header"));
    }
    if &buf[..8] != META_MAGIC {
        return Err(MetaDecodeError::Corrupt("bad magic"));
    }
    match read_u32(buf, 8) {
        FORMAT_VERSION => {}
        v if v > FORMAT_VERSION => return Err(MetaDecodeError::NewerVersion(v)),
        _ => return Err(MetaDecodeError::Corrupt("bad format version")),
    }
    let len = read_u32(buf, 12) as usize;
    let crc = read_u32(buf, 16);
    let value = &buf[META_HEADER_LEN..];
    if value.len() != len {
        return Err(MetaDecodeError::Corrupt(
            "value length does not match the file",
        ));
    }
    if crc32fast::hash(value) != crc {
        return Err(MetaDecodeError::Corrupt("checksum mismatch"));
    }
    Ok(value)
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_round_trips_and_checks_payload() {
        let header = RecordHeader::for_payload(42, b"hello");
        let decoded = RecordHeader::decode(&header.encode());
        assert_eq!(decoded, header);
        assert_eq!(decoded.record_len(), 16 + 5);
        assert!(decoded.checks(b"hello"));
        assert!(!decoded.checks(b"hellp"));
        assert!(!decoded.checks(b"hell"));
        // Same payload at another index must not pass.
        assert!(!RecordHeader {
            index: 43,
            ..decoded
        }
        .checks(b"hello"));
    }

    #[test]
    fn segment_header_versions() {
        let mut header = encode_segment_header();
        assert_eq!(check_segment_header(&header), SegmentHeader::Valid);
        header[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            check_segment_header(&header),
            SegmentHeader::NewerVersion(2)
        );
        header[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(check_segment_header(&header), SegmentHeader::BadVersion(0));
        header[0] = b'X';
        assert_eq!(check_segment_header(&header), SegmentHeader::BadMagic);
    }

    #[test]
    fn meta_round_trip_and_damage() {
        let encoded = encode_meta(b"vote");
        assert_eq!(decode_meta(&encoded), Ok(&b"vote"[..]));
        let mut flipped = encoded.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_meta(&flipped),
            Err(MetaDecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode_meta(&encoded[..encoded.len() - 1]),
            Err(MetaDecodeError::Corrupt(_))
        ));
        let mut newer = encoded;
        newer[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(decode_meta(&newer), Err(MetaDecodeError::NewerVersion(7)));
    }
}
