//! Which nodes may talk to each other: the inter-node protocol version.
//!
//! Every node speaks protocol versions `MIN_PROTOCOL..=PROTOCOL` and says which it speaks
//! (and its release) in `Join` and `Hello`. A node joins, or rejoins with its data, only a
//! cluster whose seeds speak its own `PROTOCOL`; otherwise it exits naming both versions.
//! Nodes from before versioning send nothing (0), which means protocol 1.
//!
//! Mixing rule: releases with the same `PROTOCOL` may run side by side (a rolling upgrade
//! is one node at a time). A release that raises `PROTOCOL` keeps `MIN_PROTOCOL` at the
//! previous one for a release, so a cluster can be upgraded through it node by node.

/// How every refusal's message starts (callers match on it).
pub const MISMATCH: &str = "protocol version mismatch";

/// The protocol this release speaks and announces.
pub const PROTOCOL: u32 = 1;
/// The oldest protocol this release still serves.
pub const MIN_PROTOCOL: u32 = 1;
/// This release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// The protocol this process announces: [`PROTOCOL`], unless a test overrides it with
/// `SHOAL_TEST_PROTOCOL_VERSION` (to exercise the refusal).
pub fn announced() -> u32 {
    static V: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("SHOAL_TEST_PROTOCOL_VERSION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PROTOCOL)
    })
}

/// The range this process serves: `MIN_PROTOCOL..=announced()`, or just the announced
/// version when a test moved it outside.
fn served() -> (u32, u32) {
    let a = announced();
    if a == PROTOCOL {
        (MIN_PROTOCOL, PROTOCOL)
    } else {
        (a, a)
    }
}

/// Why a peer announcing `protocol` (0 = before versioning = 1) and `release` cannot talk
/// to a node serving `min..=max` as `mine`, if it cannot. Pure.
pub fn mismatch(min: u32, max: u32, mine: &str, protocol: u32, release: &str) -> Option<String> {
    let theirs = protocol.max(1);
    if (min..=max).contains(&theirs) {
        return None;
    }
    let release = if release.is_empty() {
        "unknown"
    } else {
        release
    };
    let serves = if min == max {
        format!("protocol {max}")
    } else {
        format!("protocols {min} to {max}")
    };
    Some(format!(
        "{MISMATCH}: the peer speaks protocol {theirs} (Shoal {release}), this node speaks {serves} (Shoal {mine}); mix only releases with the same protocol (docs/operations.md, rolling upgrade)"
    ))
}

/// [`mismatch`] against this process.
pub fn refuse(protocol: u32, release: &str) -> Option<String> {
    let (min, max) = served();
    mismatch(min, max, RELEASE, protocol, release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_served_range_are_refused_naming_both() {
        assert_eq!(mismatch(1, 1, "0.1.0", 1, "0.1.0"), None);
        assert_eq!(mismatch(1, 1, "0.1.0", 0, ""), None, "unversioned = 1");
        assert_eq!(
            mismatch(1, 2, "0.2.0", 1, "0.1.0"),
            None,
            "one back is served"
        );
        let why = mismatch(1, 1, "0.1.0", 2, "0.2.0").expect("refused");
        assert!(
            why.contains("protocol 2 (Shoal 0.2.0)") && why.contains("protocol 1 (Shoal 0.1.0)"),
            "{why}"
        );
        let why = mismatch(2, 3, "0.3.0", 1, "0.1.0").expect("refused");
        assert!(why.contains("protocols 2 to 3"), "{why}");
    }
}
