//! The fault-injection harness against real `shoal` processes, one network namespace per
//! node (see docs/testing.md). CI runs a short mix of every nemesis on 3 nodes; the long
//! soak is the same test with more time and nodes:
//!
//! ```text
//! SHOAL_FAULTS_TIME=1800 SHOAL_FAULTS_NODES=5 cargo test --workspace --test faults -- --nocapture
//! ```
//!
//! Knobs (environment): `SHOAL_FAULTS_SEED` (default: from the clock, printed),
//! `SHOAL_FAULTS_TIME` (seconds of faults, default 100), `SHOAL_FAULTS_NODES` (3),
//! `SHOAL_FAULTS` (comma-separated fault kinds, default all), `SHOAL_FAULTS_CLIENTS` (6).
//! Needs root, `ip` and `iptables`; without them it prints why and passes, unless
//! `SHOAL_FAULTS_REQUIRED=1` (set by `.ci/run` as root), where that is a failure.

use std::time::Duration;

use shoal_faults::nemesis::Fault;
use shoal_faults::net::Net;
use shoal_faults::run::{run, Config};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the harness once and fails the test on any violation; prints SKIP when it cannot
/// run here (and need not).
fn scenario(name: &str, seed: u64, faults: Vec<String>, secs: u64, nodes: usize) {
    if !Net::supported_or_skip(name) {
        return;
    }
    // One cluster at a time: two would fight over two cores and time out on their own.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = Config {
        bin: env!("CARGO_BIN_EXE_shoal").into(),
        nodes,
        seed,
        time: Duration::from_secs(secs),
        faults,
        clients: env_or("SHOAL_FAULTS_CLIENTS", 6),
        dir: tmp.path().to_path_buf(),
        vshards: 16,
        keep: Some(std::env::temp_dir().join(format!("shoal-faults-{name}-{seed}"))),
    };
    println!(
        "{name}: seed {seed}; reproduce with:\n  {}",
        cfg.reproduce()
    );
    let outcome = run(&cfg);
    if !matches!(&outcome, Ok(r) if r.ok()) {
        println!("reproduce with:\n  {}", cfg.reproduce());
    }
    match outcome {
        Ok(r) => assert!(r.ok(), "violations: {:#?}", r.violations),
        Err(e) => panic!("the harness could not run: {e}"),
    }
}

/// The CI mix: every nemesis (or `SHOAL_FAULTS`), a seed from the clock unless given.
#[test]
fn faults_short_mix() {
    let seed = env_or(
        "SHOAL_FAULTS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1),
    );
    let faults: Vec<String> = std::env::var("SHOAL_FAULTS")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| Fault::all().iter().map(|s| s.to_string()).collect());
    scenario(
        "mix",
        seed,
        faults,
        env_or("SHOAL_FAULTS_TIME", 100),
        env_or("SHOAL_FAULTS_NODES", 3),
    );
}

/// A wiped disk among kills and partitions: the node comes back empty, joins under a new
/// id and must take over the old identity's replicas (issue 5's "rejoins as a new replica
/// rather than corrupting a group"), while every invariant holds — no acknowledged write
/// lost, linearizable registers, every node holding exactly its placed replicas, every node's
/// data identical.
#[test]
fn faults_wiped_disk() {
    let seed = env_or(
        "SHOAL_FAULTS_WIPE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(1),
    );
    scenario(
        "wipe",
        seed,
        ["wipe", "kill", "halves", "wipe"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        env_or("SHOAL_FAULTS_WIPE_TIME", 40),
        3,
    );
}

/// Replica moves in the middle of other faults, on four nodes (so every vshard has a node
/// without a replica to move to, and rebalancing runs too): moves by hand, kills, a
/// decommission (and the host's replacement by a new node), a partition and an isolated
/// leader, while every invariant holds — no acknowledged write
/// lost, linearizable registers, every node holding exactly what group 0 places on it.
#[test]
fn faults_replica_moves() {
    let seed = env_or(
        "SHOAL_FAULTS_MOVE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(1),
    );
    scenario(
        "moves",
        seed,
        [
            "move",
            "kill",
            "decommission",
            "move",
            "halves",
            "isolate-leader",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env_or("SHOAL_FAULTS_MOVE_TIME", 45),
        4,
    );
}
