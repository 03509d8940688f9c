//! The control plane: where replicas of each vshard live, and how that changes.
//!
//! Decisions are pure functions from a view of the cluster to steps (no I/O, no clock:
//! the caller passes "now" and "down for"), tested by comparing the steps they emit:
//!
//! | planner | runs on | decides |
//! |---|---|---|
//! | [`placement::plan`] | group 0's leader | record placement, repair, grow, rebalance (moves) |
//! | [`membership::plan`] | each group's leader | learners, voter changes, move progress |
//! | [`leaders::plan_transfers`] | group 0's leader | which vshard leaderships to hand over |
//! | [`decommission::check`] | before a decommission starts | whether it could finish, and every reason not |
//!
//! Effects are thin: the controller runs named duties on their own intervals and turns
//! steps into group-0 proposals, Raft membership changes and transfer requests.
//!
//! Layering: depends on `consensus` (the group container and group 0's state), `membership`
//! and `transport`; never on query or server.

pub mod controller;
pub mod decommission;
pub mod leaders;
pub mod membership;
pub mod placement;
pub mod reports;
pub mod view;
