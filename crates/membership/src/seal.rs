//! Authenticated SWIM datagrams. Pure: bytes in, bytes or a reason out; no socket, no clock.
//!
//! With the cluster's gossip key (32 random bytes made at bootstrap, handed to every node
//! that joins in its join answer, which travels over mutual TLS when the cluster uses TLS),
//! every datagram is
//!
//! ```text
//!   cluster tag (8) | sender node id (8) | sender generation (8) | sequence (8) | foca payload | HMAC-SHA-256 (first 16 bytes)
//! ```
//!
//! The MAC covers everything before it, so a datagram from a host without the key (a
//! forgery, even with the right cluster tag) is dropped before foca parses it. Replays are
//! dropped too: each sender numbers its datagrams (per process start, `generation`), and
//! the receiver keeps, per sender, the newest generation and a window of the last
//! [`REPLAY_WINDOW`] sequence numbers (IPsec's anti-replay window): a datagram older than
//! the window, already seen, or from an older generation is a replay. UDP may reorder
//! within the window.
//!
//! Without a key (a cluster bootstrapped before gossip keys existed) a datagram is the
//! cluster tag and the payload, as before: tagged, not authenticated.

use std::collections::HashMap;

use ring::hmac;

/// The gossip key's length.
pub const KEY_BYTES: usize = 32;
/// The truncated MAC's length (128 bits).
pub const MAC_BYTES: usize = 16;
/// Tag, node id, generation, sequence.
pub const HEADER_BYTES: usize = 32;
/// Sequence numbers behind the newest one still accepted once.
pub const REPLAY_WINDOW: u64 = 64;
/// Senders whose replay windows are kept (only senders with the key get one).
pub const SENDERS_MAX: usize = 4096;

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Too short, or another cluster's tag.
    Junk,
    /// The MAC does not match: not made with this cluster's key.
    Forged,
    /// Authentic but seen before, or too old.
    Replayed,
}

/// Seals this node's datagrams.
pub struct Sealer {
    tag: [u8; 8],
    key: Option<hmac::Key>,
    node: u64,
    generation: u64,
    /// The next sequence number, one counter for every destination. (Not one per
    /// destination: several identities can share an address — a wiped node's old ids and
    /// its new one — and their counters would interleave in the one window the process
    /// there keeps for this sender, dropping live traffic as replays.)
    next: u64,
}

impl Sealer {
    pub fn new(tag: [u8; 8], key: Option<&[u8; KEY_BYTES]>, node: u64, generation: u64) -> Sealer {
        Sealer {
            tag,
            key: key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)),
            node,
            generation,
            next: 1,
        }
    }

    /// The datagram carrying `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let Some(key) = &self.key else {
            let mut pkt = Vec::with_capacity(8 + payload.len());
            pkt.extend_from_slice(&self.tag);
            pkt.extend_from_slice(payload);
            return pkt;
        };
        let seq = self.next;
        self.next += 1;
        let mut pkt = Vec::with_capacity(HEADER_BYTES + payload.len() + MAC_BYTES);
        pkt.extend_from_slice(&self.tag);
        pkt.extend_from_slice(&self.node.to_be_bytes());
        pkt.extend_from_slice(&self.generation.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(payload);
        let mac = hmac::sign(key, &pkt);
        pkt.extend_from_slice(&mac.as_ref()[..MAC_BYTES]);
        pkt
    }
}

/// A sender's replay window.
#[derive(Clone, Copy, Debug)]
struct Window {
    generation: u64,
    top: u64,
    /// Bit i: sequence `top - i` seen.
    seen: u64,
}

impl Window {
    /// Records `(generation, seq)`; false when it is a replay.
    fn admit(&mut self, generation: u64, seq: u64) -> bool {
        if generation < self.generation {
            return false;
        }
        if generation > self.generation {
            *self = Window {
                generation,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= REPLAY_WINDOW || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// Checks the datagrams this node receives.
pub struct Opener {
    tag: [u8; 8],
    key: Option<hmac::Key>,
    windows: HashMap<u64, Window>,
}

impl Opener {
    pub fn new(tag: [u8; 8], key: Option<&[u8; KEY_BYTES]>) -> Opener {
        Opener {
            tag,
            key: key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)),
            windows: HashMap::new(),
        }
    }

    /// The foca payload of `pkt`, or why it was dropped.
    pub fn open<'a>(&mut self, pkt: &'a [u8]) -> Result<&'a [u8], Dropped> {
        if pkt.len() < 8 || pkt[..8] != self.tag {
            return Err(Dropped::Junk);
        }
        let Some(key) = &self.key else {
            return Ok(&pkt[8..]);
        };
        if pkt.len() < HEADER_BYTES + MAC_BYTES {
            return Err(Dropped::Junk);
        }
        let (body, mac) = pkt.split_at(pkt.len() - MAC_BYTES);
        let want = hmac::sign(key, body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &want.as_ref()[..MAC_BYTES],
            mac,
        )) {
            return Err(Dropped::Forged);
        }
        let word = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (node, generation, seq) = (word(8), word(16), word(24));
        if !self.windows.contains_key(&node) && self.windows.len() >= SENDERS_MAX {
            // Only key holders get here; drop one window rather than grow without bound.
            if let Some(k) = self.windows.keys().next().copied() {
                self.windows.remove(&k);
            }
        }
        let w = self.windows.entry(node).or_insert(Window {
            generation,
            top: 0,
            seen: 0,
        });
        if !w.admit(generation, seq) {
            return Err(Dropped::Replayed);
        }
        Ok(&body[HEADER_BYTES..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: [u8; 8] = *b"clusterA";
    const KEY: [u8; KEY_BYTES] = [7; KEY_BYTES];

    #[test]
    fn sealed_datagrams_open_once_with_the_key_only() {
        let mut s = Sealer::new(TAG, Some(&KEY), 3, 100);
        let mut o = Opener::new(TAG, Some(&KEY));
        let p1 = s.seal(b"ping");
        assert_eq!(o.open(&p1), Ok(&b"ping"[..]));
        assert_eq!(o.open(&p1), Err(Dropped::Replayed), "a replay");
        // Another key, the right tag: forged.
        let mut rogue = Sealer::new(TAG, Some(&[8; KEY_BYTES]), 3, 100);
        assert_eq!(o.open(&rogue.seal(b"x")), Err(Dropped::Forged));
        // A flipped payload bit: forged.
        let mut p2 = s.seal(b"ack");
        p2[HEADER_BYTES] ^= 1;
        assert_eq!(o.open(&p2), Err(Dropped::Forged));
        // Unsealed (no key) against a keyed receiver: forged or junk, never accepted.
        let mut plain = Sealer::new(TAG, None, 3, 100);
        assert!(o.open(&plain.seal(&[0u8; 64])).is_err());
        // Another cluster's tag.
        let mut other = Sealer::new(*b"clusterB", Some(&KEY), 3, 100);
        assert_eq!(o.open(&other.seal(b"x")), Err(Dropped::Junk));
        assert_eq!(o.open(b"short"), Err(Dropped::Junk));
    }

    #[test]
    fn reordering_within_the_window_is_fine_and_old_generations_are_replays() {
        let mut s = Sealer::new(TAG, Some(&KEY), 1, 100);
        let mut o = Opener::new(TAG, Some(&KEY));
        let pkts: Vec<Vec<u8>> = (0..100).map(|i| s.seal(&[i as u8])).collect();
        assert!(o.open(&pkts[10]).is_ok());
        assert!(o.open(&pkts[3]).is_ok(), "reordered, inside the window");
        assert!(o.open(&pkts[3]).is_err(), "but only once");
        assert!(o.open(&pkts[99]).is_ok());
        assert_eq!(
            o.open(&pkts[20]),
            Err(Dropped::Replayed),
            "behind the window"
        );
        assert!(o.open(&pkts[98]).is_ok());
        // A restart (newer generation) starts a new window; the old process's datagrams
        // are replays from then on.
        let mut restarted = Sealer::new(TAG, Some(&KEY), 1, 200);
        assert!(o.open(&restarted.seal(b"hi")).is_ok());
        assert_eq!(o.open(&pkts[97]), Err(Dropped::Replayed));
    }

    #[test]
    fn without_a_key_datagrams_are_tagged_only() {
        let mut s = Sealer::new(TAG, None, 1, 1);
        let mut o = Opener::new(TAG, None);
        let p = s.seal(b"payload");
        assert_eq!(&p[..8], &TAG);
        assert_eq!(o.open(&p), Ok(&b"payload"[..]));
        assert_eq!(
            o.open(&p),
            Ok(&b"payload"[..]),
            "no replay check without a key"
        );
    }
}
