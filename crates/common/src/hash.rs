//! The partition hash. It is part of the on-disk format: a row's vshard is
//! `partition_hash(key) % vshard_count`, and rows already stored on a vshard are never
//! re-hashed, so this function must never change for an existing data directory.
//!
//! The function is 64-bit FNV-1a over the UTF-8 bytes of the partition key value
//! (offset basis 0xcbf29ce484222325, prime 0x100000001b3). The table name is not part of
//! the input, so the same symbol's trades and quotes land on the same vshard and can be
//! joined locally.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `key`.
pub fn partition_hash(key: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// A fast 64-bit hash of a request body (XXH3-64, seed 0), for idempotency keys: a
/// retried request must hash to the same key on any node and any version, so this is a
/// fixed, published function, not `std`'s randomized hasher. Not for routing: that is
/// [`partition_hash`], part of the on-disk format.
pub fn body_hash(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// The vshard (0-based) that owns rows whose partition key is `key`.
pub fn vshard_for_key(key: &[u8], vshard_count: u32) -> u32 {
    debug_assert!(vshard_count > 0);
    (partition_hash(key) % u64::from(vshard_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known FNV-1a test vectors: if these change, existing data directories are misrouted.
    #[test]
    fn fnv1a_vectors_are_stable() {
        assert_eq!(partition_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(partition_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// XXH3-64 reference values: a change would make retries across an upgrade look new.
    #[test]
    fn body_hash_vectors_are_stable() {
        assert_eq!(body_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(body_hash(b"a"), 0xe6c6_32b6_1e96_4e1f);
    }

    #[test]
    fn vshard_is_in_range_and_spreads() {
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            let key = format!("SYM{i:04}");
            let v = vshard_for_key(key.as_bytes(), 16);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "poor spread: {seen:?}");
    }
}
