//! Clock offsets to peers, measured with `Hello` round trips, and whether this node's clock
//! can be trusted for bounded-staleness reads.
//!
//! A closed timestamp comes from the leader's clock and is compared with the reading
//! node's clock, so an offset between the two adds to the staleness. Shoal assumes the
//! nodes' clocks agree within `max_clock_offset_ms` (bounded reads subtract it from their
//! bound), and checks it: a sample is `offset = peer_wall - (sent + received) / 2`, known to
//! within half the round trip. When more than half of the peers measured recently are
//! certainly further off than the maximum, this node's clock is *unhealthy* and its
//! bounded-staleness reads go through the leaders' read index instead (they stay correct,
//! at the cost of a round trip) — CockroachDB stops such a node; Shoal keeps serving.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

/// Samples older than this are not used.
pub const SAMPLE_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Peer clock minus ours, nanoseconds.
    pub offset_ns: i64,
    /// The round trip the sample was taken in (its uncertainty is half of it).
    pub rtt_ns: i64,
}

impl Sample {
    /// The sample from a round trip sent at `sent_ns` and answered at `received_ns` (our
    /// clock) by a peer whose clock read `peer_ns`.
    pub fn from_round_trip(sent_ns: i64, peer_ns: i64, received_ns: i64) -> Sample {
        let rtt_ns = received_ns.saturating_sub(sent_ns).max(0);
        let mid = sent_ns.saturating_add(rtt_ns / 2);
        Sample {
            offset_ns: peer_ns.saturating_sub(mid),
            rtt_ns,
        }
    }

    /// Whether the peer's clock is off by more than `max_ns` whatever the true delay was.
    pub fn certainly_beyond(&self, max_ns: i64) -> bool {
        self.offset_ns.abs().saturating_sub(self.rtt_ns / 2) > max_ns
    }
}

/// Whether this node's clock is usable, from its recent samples. With no peers there is
/// nothing to disagree with; with peers but no sample yet it is not known to be usable.
pub fn healthy(samples: &[Sample], has_peers: bool, max_ns: i64) -> bool {
    if !has_peers {
        return true;
    }
    if samples.is_empty() {
        return false;
    }
    let far = samples
        .iter()
        .filter(|s| s.certainly_beyond(max_ns))
        .count();
    far * 2 <= samples.len()
}

/// The latest sample per peer.
pub struct ClockOffsets {
    max_offset: Duration,
    samples: RwLock<BTreeMap<u64, (Sample, Instant)>>,
    /// The last verdict, to log only when it changes.
    last_healthy: RwLock<Option<bool>>,
}

impl ClockOffsets {
    pub fn new(max_offset: Duration) -> ClockOffsets {
        ClockOffsets {
            max_offset,
            samples: Default::default(),
            last_healthy: Default::default(),
        }
    }

    pub fn record(&self, node: u64, sample: Sample) {
        self.samples.write().insert(node, (sample, Instant::now()));
    }

    /// Forgets a peer (it left the cluster).
    pub fn forget(&self, node: u64) {
        self.samples.write().remove(&node);
    }

    /// The peer's offset from this node's clock (ms), if measured recently.
    pub fn offset_ms(&self, node: u64) -> Option<i64> {
        self.samples
            .read()
            .get(&node)
            .filter(|(_, at)| at.elapsed() < SAMPLE_TTL)
            .map(|(s, _)| s.offset_ns / 1_000_000)
    }

    fn max_ns(&self) -> i64 {
        i64::try_from(self.max_offset.as_nanos()).unwrap_or(i64::MAX)
    }

    /// Whether this node's clock may be trusted (see the module docs); logs a change.
    pub fn healthy(&self, has_peers: bool) -> bool {
        let recent: Vec<Sample> = self
            .samples
            .read()
            .values()
            .filter(|(_, at)| at.elapsed() < SAMPLE_TTL)
            .map(|(s, _)| *s)
            .collect();
        let ok = healthy(&recent, has_peers, self.max_ns());
        let mut last = self.last_healthy.write();
        if *last != Some(ok) && has_peers && !recent.is_empty() {
            let mut offsets: Vec<i64> = recent.iter().map(|s| s.offset_ns / 1_000_000).collect();
            offsets.sort_unstable();
            if ok {
                tracing::info!(peer_offsets_ms = ?offsets, "clock agrees with the peers again");
            } else {
                tracing::error!(
                    peer_offsets_ms = ?offsets,
                    max_clock_offset_ms = self.max_offset.as_millis() as u64,
                    "this node's clock is off from most of its peers by more than \
                     max_clock_offset_ms; bounded-staleness reads here use the leaders' \
                     read index until it is fixed (check NTP)"
                );
            }
            *last = Some(ok);
        }
        ok
    }

    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn a_sample_is_the_offset_at_the_middle_of_the_round_trip() {
        // Sent at 1000 ms, answered at 1010 ms; the peer read 3005 ms: 2 s ahead.
        let s = Sample::from_round_trip(1000 * MS, 3005 * MS, 1010 * MS);
        assert_eq!(
            s,
            Sample {
                offset_ns: 2000 * MS,
                rtt_ns: 10 * MS
            }
        );
        assert!(s.certainly_beyond(500 * MS));
        // Within the uncertainty of a slow round trip, nothing is certain.
        let slow = Sample::from_round_trip(0, 700 * MS, 800 * MS);
        assert_eq!(slow.offset_ns, 300 * MS);
        assert!(!slow.certainly_beyond(0));
        // Behind counts the same as ahead.
        assert!(Sample::from_round_trip(0, -900 * MS, 2 * MS).certainly_beyond(500 * MS));
    }

    #[test]
    fn a_clock_is_unhealthy_only_when_most_peers_disagree() {
        let near = Sample {
            offset_ns: 3 * MS,
            rtt_ns: MS,
        };
        let far = Sample {
            offset_ns: -2000 * MS,
            rtt_ns: MS,
        };
        let max = 250 * MS;
        assert!(
            healthy(&[], false, max),
            "a single node has nobody to disagree with"
        );
        assert!(!healthy(&[], true, max), "peers but no sample yet: unknown");
        // The skewed node sees both peers far off; each of them sees one of two.
        assert!(!healthy(&[far, far], true, max));
        assert!(healthy(&[near, far], true, max));
        assert!(healthy(&[near, near, far], true, max));
        assert!(!healthy(&[near, far, far], true, max));
    }
}
