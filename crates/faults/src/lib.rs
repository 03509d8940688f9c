//! Shoal's fault-injection harness: real `shoal` processes, one network namespace per
//! node, seeded nemeses (partitions, kills, pauses, packet loss, restarts), client
//! workloads that record a history, and checkers for what must hold through it all (no
//! acknowledged write lost or duplicated, linearizable strong reads, one leader per
//! term, stable terms when healthy, every node converging). See docs/testing.md.

pub mod check;
pub mod client;
pub mod history;
pub mod hosts;
pub mod nemesis;
pub mod net;
pub mod netem;
pub mod rng;
pub mod run;
