//! Fault injectors and the seeded plan that schedules them. A plan is a list of steps:
//! inject one fault, hold it, heal it, then leave the cluster alone for a quiet spell.
//! The seed fixes the plan (which faults, in what order, for how long) and every random
//! choice made while applying it; which node is "the leader" depends on the run.

use std::time::Duration;

use crate::rng::Rng;

/// Whose leader a leader-targeted fault goes after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The metadata group (group 0).
    Meta,
    /// A vshard's group.
    Vshard(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Random majority / minority halves.
    Halves,
    /// One random node cut off from every other node.
    IsolateOne,
    /// The leader of a group cut off from every other node.
    IsolateLeader(Target),
    /// Two sides that cannot see each other but both see a middle node.
    Bridge,
    /// One direction between two nodes dropped, the other delivered.
    Asymmetric,
    /// One node drops a share of the packets from its peers.
    Loss,
    /// One node's packets to its peers held 50–300 ms (±25 %), through an NFQUEUE.
    Delay,
    /// One node's packets to its peers held 0–80 ms at random, so they overtake each other.
    Reorder,
    /// One node sends 10–40 % of its packets to its peers twice (iptables TEE).
    Duplicate,
    /// kill -9 a random node; restarted at heal.
    Kill,
    /// kill -9 a group's leader; restarted at heal.
    KillLeader(Target),
    /// SIGSTOP a random node; SIGCONT at heal (it wakes believing whatever it believed).
    Pause,
    /// SIGSTOP a group's leader; SIGCONT at heal.
    PauseLeader(Target),
    /// SIGTERM and start again, one random node.
    Restart,
    /// Every node restarted, one after the other, each waited for.
    RollingRestart,
    /// One node's disk (its own tmpfs) filled to the last byte; freed at heal.
    DiskFull,
    /// kill -9 a random node and delete its data directory; at heal it starts again with
    /// no data and joins under a new id (and must take over the old identity's replicas).
    Wipe,
    /// A random node restarted with its wall clock 1–3 s behind (or ahead), then cut off
    /// from one peer that does not lead group 0: the closed timestamps of the vshards that
    /// peer leads stop moving on it while its skewed clock calls them fresh. Healed:
    /// network back, restarted unskewed.
    ClockSkew,
    /// One replica of a random vshard moved by hand (`ALTER VSHARD … MOVE REPLICA`) to a
    /// node that holds none of it; the move runs on through the faults that follow.
    Move,
    /// A random node drained through another node's admin API (unready, leading nothing,
    /// still up); undrained at heal.
    Drain,
    /// A random node decommissioned through another node's admin API (its replicas move
    /// off, it is DECOMMISSIONED and exits), then replaced at heal: its data directory
    /// wiped and the host joined again as a new node, so the cluster keeps its size. One
    /// that does not finish in time is recommissioned.
    Decommission,
}

impl Fault {
    /// Every fault kind, for a plan that uses them all (leader targets chosen per step).
    pub fn all() -> Vec<&'static str> {
        vec![
            "halves",
            "isolate",
            "isolate-leader",
            "bridge",
            "asymmetric",
            "loss",
            "delay",
            "reorder",
            "duplicate",
            "kill",
            "kill-leader",
            "pause",
            "pause-leader",
            "restart",
            "rolling-restart",
            "clock-skew",
            "move",
            "drain",
            "decommission",
        ]
    }

    /// A kind by name with random leader targets.
    fn of(name: &str, rng: &mut Rng, vshards: u32) -> Option<Fault> {
        let target = |rng: &mut Rng| {
            if rng.below(3) == 0 {
                Target::Meta
            } else {
                Target::Vshard(rng.below(u64::from(vshards)) as u32)
            }
        };
        Some(match name {
            "halves" => Fault::Halves,
            "isolate" => Fault::IsolateOne,
            "isolate-leader" => Fault::IsolateLeader(target(rng)),
            "bridge" => Fault::Bridge,
            "asymmetric" => Fault::Asymmetric,
            "loss" => Fault::Loss,
            "delay" => Fault::Delay,
            "reorder" => Fault::Reorder,
            "duplicate" => Fault::Duplicate,
            "kill" => Fault::Kill,
            "kill-leader" => Fault::KillLeader(target(rng)),
            "pause" => Fault::Pause,
            "pause-leader" => Fault::PauseLeader(target(rng)),
            "restart" => Fault::Restart,
            "rolling-restart" => Fault::RollingRestart,
            "disk-full" => Fault::DiskFull,
            "wipe" => Fault::Wipe,
            "clock-skew" => Fault::ClockSkew,
            "move" => Fault::Move,
            "drain" => Fault::Drain,
            "decommission" => Fault::Decommission,
            _ => return None,
        })
    }

    /// Whether the fault lives in the network (healed by flushing rules).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Fault::Halves
                | Fault::IsolateOne
                | Fault::IsolateLeader(_)
                | Fault::Bridge
                | Fault::Asymmetric
                | Fault::Loss
                | Fault::Delay
                | Fault::Reorder
                | Fault::Duplicate
        )
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
    pub quiet: Duration,
}

/// A plan filling `total` with steps drawn from `kinds`; every kind appears once before
/// any repeats (so a short run still covers the list), in a seeded order.
pub fn plan(
    seed: u64,
    kinds: &[String],
    total: Duration,
    vshards: u32,
) -> Result<Vec<Step>, String> {
    for k in kinds {
        let mut probe = Rng::new(0);
        if Fault::of(k, &mut probe, vshards).is_none() {
            return Err(format!(
                "unknown fault {k:?}; known: {}",
                Fault::all().join(", ")
            ));
        }
    }
    let mut rng = Rng::new(seed);
    let mut steps = vec![];
    let mut used = Duration::ZERO;
    let mut bag: Vec<String> = vec![];
    while used < total && !kinds.is_empty() {
        if bag.is_empty() {
            bag = kinds.to_vec();
            rng.shuffle(&mut bag);
        }
        let name = bag.pop().unwrap_or_default();
        let fault = Fault::of(&name, &mut rng, vshards).ok_or("unknown fault")?;
        let hold = Duration::from_millis(rng.range(2_000, 5_000));
        let quiet = Duration::from_millis(rng.range(3_000, 5_000));
        used += hold + quiet;
        steps.push(Step { fault, hold, quiet });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_and_cover_every_kind() {
        let kinds: Vec<String> = Fault::all().iter().map(|s| s.to_string()).collect();
        let a = plan(42, &kinds, Duration::from_secs(600), 16).expect("plan");
        let b = plan(42, &kinds, Duration::from_secs(600), 16).expect("plan");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let first: Vec<String> = a[..kinds.len()]
            .iter()
            .map(|s| format!("{:?}", s.fault))
            .collect();
        for k in ["Halves", "Bridge", "Kill", "RollingRestart", "PauseLeader"] {
            assert!(
                first.iter().any(|f| f.starts_with(k)),
                "{k} missing: {first:?}"
            );
        }
        assert!(plan(1, &["nope".into()], Duration::from_secs(10), 16).is_err());
    }
}
