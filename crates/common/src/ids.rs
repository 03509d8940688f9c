//! Identifiers shared across crates.

/// A node's id: assigned once, persisted in the data directory.
pub type NodeId = u64;

/// A Raft group's id. Group 0 is the metadata group; vshard `v` is group `v + 1`.
pub type GroupId = u32;

/// The metadata group (catalog, nodes, placement).
pub const META_GROUP: GroupId = 0;

/// The Raft group that replicates vshard `vshard`.
pub fn group_of_vshard(vshard: u32) -> GroupId {
    vshard + 1
}

/// The vshard replicated by `group`, or `None` for the metadata group.
pub fn vshard_of_group(group: GroupId) -> Option<u32> {
    group.checked_sub(1)
}
