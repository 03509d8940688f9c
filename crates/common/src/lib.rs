//! Shared vocabulary of every Shoal crate: identifiers, the partition hash, time helpers
//! and the data model's column kinds. Nothing here does I/O, but for the fuzz harness
//! (`fuzz`), which tests use to read their corpus.
//!
//! Dependencies point one way (see STYLE.md): every other crate may use `common`; `common`
//! uses none of them.

pub mod fuzz;
pub mod hash;
pub mod ids;
pub mod schema;
pub mod time;

pub use hash::{partition_hash, vshard_for_key};
pub use ids::{GroupId, NodeId, META_GROUP};
