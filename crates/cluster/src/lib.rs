//! The control plane: where replicas of each vshard live, and how that changes.
//!
//! Decisions are pure functions from a view of the cluster to steps (no I/O, no clock:
//! the caller passes "now" and "down for"), tested by comparing the steps they emit.
//! Effects are thin: a controller runs named duties on their own intervals and turns steps
//! into group-0 proposals and Raft membership changes.
//!
//! Layering: depends on `consensus` (the group container and group 0's state), `membership`
//! and `transport`; never on query or server.

pub mod placement;
