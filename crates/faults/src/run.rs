//! One harness run: namespaces, a cluster of real `shoal` processes, client workloads
//! recording a history, a seeded fault plan, then the checks. A failing run keeps every
//! node's data directory and log, the history (JSONL) and a plain-text timeline, and
//! prints the one command that reproduces it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::check::{check_register, check_set, Outcome as Lin};
use crate::client::{Client, Outcome};
use crate::history::{write_jsonl, OpF, OpKind, Recorder};
use crate::hosts::{Host, RPC_PORT};
use crate::nemesis::{plan, Fault, Target};
use crate::net::Net;
use crate::rng::Rng;

/// How long a node may take to become ready after a start or a heal.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// Search bound for the linearizability checker, per key.
const MAX_LIN_STATES: u64 = 2_000_000;
/// Register keys rotate every this long, so one key's history stays small enough to check.
const KEY_EPOCH: Duration = Duration::from_secs(10);
/// Keys written concurrently per epoch.
const KEYS_PER_EPOCH: u64 = 3;
/// Size of each node's own tmpfs data directory when the plan fills disks.
const DISK_MIB: u64 = 384;
/// How long the cluster may take to settle (every vshard quiesced) after the faults.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// The quiet window at the end in which no group's term may move.
const STABLE_WINDOW: Duration = Duration::from_secs(10);

/// Longest the checks wait for rebalancing to finish before the stable-terms window.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

/// Waits (up to `SETTLE_LIMIT`) until no move is under way and replicas and vshard
/// leaderships are spread within one per node.
async fn settle(client: &Client, report: &mut Report) {
    let started = Instant::now();
    let spread = |rows: &[serde_json::Value], col: usize, split: bool| {
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for r in rows {
            let ids: Vec<u64> = if split {
                r[col]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|x| x.parse().ok())
                    .collect()
            } else {
                r[col].as_u64().into_iter().collect()
            };
            for id in ids {
                *count.entry(id).or_default() += 1;
            }
        }
        (count.values().max().copied().unwrap_or(0)) - (count.values().min().copied().unwrap_or(0))
    };
    loop {
        let shards = client
            .rows(
                1,
                "SELECT replicas, leader, moving FROM system.shards",
                "strong",
            )
            .await
            .unwrap_or_default();
        let moving = shards.iter().any(|r| !r[2].is_null());
        let settled = !shards.is_empty()
            && !moving
            && spread(&shards, 0, true) <= 1
            && spread(&shards, 1, false) <= 1;
        if settled {
            report.say(format!(
                "placement and leaderships settled {} ms after the faults",
                started.elapsed().as_millis()
            ));
            return;
        }
        if started.elapsed() >= SETTLE_LIMIT {
            report.say(format!(
                "placement or leaderships still moving {} s after the faults",
                SETTLE_LIMIT.as_secs()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
/// The bound of the staleness workload's reads (`bounded_staleness:500ms`).
const STALE_BOUND: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct Config {
    /// The `shoal` binary.
    pub bin: PathBuf,
    pub nodes: usize,
    pub seed: u64,
    /// How long faults are injected (set-up and checks come on top).
    pub time: Duration,
    /// Fault kinds to draw from (names as in [`Fault::all`]).
    pub faults: Vec<String>,
    /// Concurrent client processes.
    pub clients: usize,
    /// Where the run keeps its files.
    pub dir: PathBuf,
    /// Vshards of the cluster (the default unless the nodes are started otherwise).
    pub vshards: u32,
    /// Where a failing run's files are copied (while the nodes' disks are still mounted).
    pub keep: Option<PathBuf>,
}

impl Config {
    /// The command line that reruns this configuration.
    pub fn reproduce(&self) -> String {
        format!(
            "sudo -E env SHOAL_FAULTS_SEED={} SHOAL_FAULTS_TIME={} SHOAL_FAULTS_NODES={} SHOAL_FAULTS={} \
             cargo test --workspace --test faults -- --nocapture",
            self.seed,
            self.time.as_secs(),
            self.nodes,
            self.faults.join(",")
        )
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub lines: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    fn say(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }

    fn violation(&mut self, v: String) {
        println!("VIOLATION: {v}");
        self.lines.push(format!("VIOLATION: {v}"));
        self.violations.push(v);
    }
}

/// Fault events with their time on the history's clock, for the timeline.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<(u64, String)>>>);

impl Timeline {
    fn note(&self, rec: &Recorder, what: String) {
        let t = rec.elapsed_ns();
        println!("[{:>8.3}s] {what}", t as f64 / 1e9);
        if let Ok(mut v) = self.0.lock() {
            v.push((t, what));
        }
    }

    fn events(&self) -> Vec<(u64, String)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Runs the whole thing; `Err` only when the harness itself could not run.
pub fn run(cfg: &Config) -> Result<Report, String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
    let steps = plan(cfg.seed, &cfg.faults, cfg.time, cfg.vshards)?;
    let net = Arc::new(Net::create(cfg.nodes)?);
    let hub = net.hub();
    let entered = Arc::new(AtomicBool::new(true));
    let flag = entered.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            if Net::enter_hub(&hub).is_err() {
                flag.store(false, Ordering::SeqCst);
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    // Spawned, not run by `block_on` itself: `block_on` polls on the calling thread, which
    // is not in the hub namespace.
    let task = rt.spawn(run_in_hub(cfg.clone(), net.clone(), steps, entered));
    let result = rt
        .block_on(task)
        .unwrap_or_else(|e| Err(format!("harness task failed: {e}")));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run_in_hub(
    cfg: Config,
    net: Arc<Net>,
    steps: Vec<crate::nemesis::Step>,
    entered: Arc<AtomicBool>,
) -> Result<Report, String> {
    let mut report = Report::default();
    let rec = Arc::new(Recorder::new());
    let timeline = Timeline::default();
    let seed_addr = format!("{}:{RPC_PORT}", net.ip(1));
    let disks = cfg.faults.iter().any(|f| f == "disk-full");
    let mut hosts: Vec<Host> = (1..=cfg.nodes)
        .map(|i| {
            let join = (i > 1).then(|| seed_addr.clone());
            let h = Host::new(&net, i, &cfg.dir, &cfg.bin, join);
            if disks {
                h.with_disk(DISK_MIB)
            } else {
                h
            }
        })
        .collect();
    // Declared after `hosts`, so dropped before them: the copy sees mounted data dirs.
    let mut evidence = KeepOnFailure {
        from: cfg.dir.clone(),
        to: cfg.keep.clone(),
    };
    let client = Client::new(hosts.iter().map(Host::http).collect());
    // The probe runs on a runtime thread: it proves the threads are in the hub namespace.
    tokio::spawn(async {}).await.map_err(|e| e.to_string())?;
    if !entered.load(Ordering::SeqCst) {
        return Err("could not enter the hub namespace".into());
    }

    // A cluster: node 1 first, the others joining through it.
    hosts[0].start()?;
    wait_ready(&client, &mut hosts[0]).await?;
    for h in hosts.iter_mut().skip(1) {
        h.start()?;
    }
    for h in hosts.iter_mut().skip(1) {
        wait_ready(&client, h).await?;
    }
    for ddl in [
        "CREATE TABLE faults_set (ts TIMESTAMP, v BIGINT)",
        "CREATE TABLE faults_reg (ts TIMESTAMP, k VARCHAR, v BIGINT, PRIMARY KEY (k))",
    ] {
        client.sql(1, ddl, "strong").await?;
    }
    let rf = cfg.nodes.min(3);
    poll("every vshard fully replicated", READY_DEADLINE, || async {
        let rows = client
            .rows(1, "SELECT replicas FROM system.shards", "eventual")
            .await
            .ok()?;
        let placed = rows
            .iter()
            .all(|r| r[0].as_str().is_some_and(|s| s.split(',').count() == rf));
        // And the Raft voters are there on every host, not only the placement (node 1
        // holds every vshard until rebalancing spreads them). `voters` is the union of
        // both sides while a change is joint, and a leader shows a change as soon as it
        // appends it, so a joint config must be over on every host that holds a replica:
        // a wipe of node 1 while a group is still joint from {1} leaves that group
        // without a quorum for good (the harness once started its faults 55 ms early).
        let mut promoted = true;
        for h in 1..=cfg.nodes {
            let rows = client
                .rows(
                    h,
                    "SELECT voters, joint_from FROM system.replicas",
                    "eventual",
                )
                .await
                .ok()?;
            promoted &= rows.iter().all(|r| {
                r[0].as_str().is_some_and(|s| s.split(',').count() == rf) && r[1].is_null()
            });
        }
        (placed && promoted).then_some(())
    })
    .await?;
    let mut ids: BTreeMap<u64, usize> = hosts.iter().map(|h| (h.node_id, h.index)).collect();
    timeline.note(
        &rec,
        format!(
            "cluster up: node ids {:?} (host → id)",
            hosts
                .iter()
                .map(|h| (h.index, h.node_id))
                .collect::<Vec<_>>()
        ),
    );

    // Clients and the leader observer run until the fault phase ends.
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicI64::new(1));
    let mut tasks = vec![];
    for p in 0..cfg.clients {
        tasks.push(tokio::spawn(client_loop(
            p as u64,
            cfg.seed ^ (p as u64 + 1).wrapping_mul(0x9E37),
            cfg.nodes,
            client.clone(),
            rec.clone(),
            stop.clone(),
            next_value.clone(),
        )));
    }
    let leaders = Arc::new(Mutex::new(LeaderLog::default()));
    let observer = tokio::spawn(observe_leaders(
        client.clone(),
        cfg.nodes,
        leaders.clone(),
        stop.clone(),
    ));

    // The nemesis.
    let mut rng = Rng::new(cfg.seed ^ 0xFA_17);
    let end = Instant::now() + cfg.time;
    let mut heals = vec![];
    for step in steps {
        if Instant::now() >= end {
            break;
        }
        // A wiped host came back under a new id.
        for h in hosts.iter_mut() {
            if h.read_node_id().is_some() {
                ids.retain(|_, i| *i != h.index);
                ids.insert(h.node_id, h.index);
            }
        }
        let undo = apply(
            &step.fault,
            &mut hosts,
            &net,
            &client,
            &ids,
            &mut rng,
            &rec,
            &timeline,
        )
        .await;
        tokio::time::sleep(step.hold).await;
        heal(undo, &mut hosts, &net, &client, &rec, &timeline).await?;
        heals.push(rec.elapsed_ns());
        crashed(&mut hosts, &mut report);
        tokio::time::sleep(step.quiet).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let _ = observer.await;
    timeline.note(&rec, "faults over; clients stopped".into());

    // Everyone back, then the checks.
    for h in hosts.iter_mut() {
        if !h.running() {
            h.start()?;
        }
        if h.paused() {
            h.resume();
        }
    }
    for h in hosts.iter_mut() {
        wait_ready(&client, h).await?;
    }
    crashed(&mut hosts, &mut report);
    let ops = rec.ops();
    check_all(&cfg, &client, &ops, &leaders, &heals, &mut report).await;
    std::fs::write(
        cfg.dir.join("timeline.txt"),
        render_timeline(&timeline.events(), &ops),
    )
    .map_err(|e| e.to_string())?;
    write_jsonl(&cfg.dir.join("history.jsonl"), &ops).map_err(|e| e.to_string())?;
    std::fs::write(cfg.dir.join("report.txt"), report.lines.join("\n"))
        .map_err(|e| e.to_string())?;
    if report.ok() {
        evidence.to = None;
    }
    Ok(report)
}

/// Copies a run's directory somewhere safe when dropped armed (any early return is a
/// failure too).
struct KeepOnFailure {
    from: PathBuf,
    to: Option<PathBuf>,
}

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if let Some(to) = &self.to {
            match keep(&self.from, to) {
                Ok(()) => println!(
                    "the run's data dirs, logs, history.jsonl and timeline.txt are in {}",
                    to.display()
                ),
                Err(e) => println!("could not keep the run's files in {}: {e}", to.display()),
            }
        }
    }
}

/// Polls `f` every 200 ms until it gives `Some` or `deadline` passes.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= until {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(client: &Client, h: &mut Host) -> Result<(), String> {
    let i = h.index;
    poll(&format!("node {i} ready"), READY_DEADLINE, || async {
        client.ready(i).await.then_some(())
    })
    .await?;
    if h.read_node_id().is_none() {
        return Err(format!("node {i} printed no node id"));
    }
    Ok(())
}

/// A node that exited without being told to is a finding.
fn crashed(hosts: &mut [Host], report: &mut Report) {
    for h in hosts.iter_mut().filter(|h| !h.leaving) {
        if let Some(st) = h.exited() {
            report.violation(format!(
                "node {} (host {}) exited on its own: {st}; see {}",
                h.node_id,
                h.index,
                h.log.display()
            ));
        }
    }
}

/// One client process: set adds, register writes and strong register reads through
/// random nodes. After an unknown outcome it continues as a new process id, as Jepsen
/// does: the old one may still have an operation in flight.
async fn client_loop(
    p: u64,
    seed: u64,
    nodes: usize,
    client: Client,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicI64>,
) {
    let mut rng = Rng::new(seed);
    let mut process = p;
    while !stop.load(Ordering::SeqCst) {
        let h = rng.range(1, nodes as u64) as usize;
        let epoch = rec.elapsed_ns() / KEY_EPOCH.as_nanos() as u64;
        let key = format!("k{}", epoch * KEYS_PER_EPOCH + rng.below(KEYS_PER_EPOCH));
        let v = next_value.fetch_add(1, Ordering::SeqCst);
        let (f, key, value) = match rng.below(5) {
            0 | 1 => (OpF::Add, "set".to_string(), Some(v)),
            2 => (OpF::Write, key, Some(v)),
            3 => (OpF::Read, key, None),
            _ => (OpF::StaleRead, key, None),
        };
        rec.invoke(process, f, &key, value, Some(h as u64));
        let outcome = match f {
            OpF::Add => {
                let body = format!("faults_set v={v}i {}", 1_700_000_000_000_000_000i64 + v);
                client.write(h, body, &format!("s{v}")).await
            }
            OpF::Write => {
                let body = format!("faults_reg,k={key} v={v}i 1000000000");
                client.write(h, body, &format!("r{v}")).await
            }
            OpF::Read | OpF::StaleRead => {
                let sql = format!("SELECT v FROM faults_reg WHERE k = '{key}'");
                let consistency = match f {
                    OpF::StaleRead => format!("bounded_staleness:{}ms", STALE_BOUND.as_millis()),
                    _ => "strong".to_string(),
                };
                match client.rows(h, &sql, &consistency).await {
                    Ok(rows) => Outcome::Ok(rows.first().and_then(|r| r[0].as_i64())),
                    // A read that failed changed nothing.
                    Err(e) => Outcome::Fail(e),
                }
            }
        };
        match outcome {
            Outcome::Ok(read) => {
                let value = if matches!(f, OpF::Read | OpF::StaleRead) {
                    read
                } else {
                    value
                };
                rec.complete(process, OpKind::Ok, f, &key, value, None);
            }
            Outcome::Fail(e) => rec.complete(process, OpKind::Fail, f, &key, value, Some(e)),
            Outcome::Info(e) => {
                rec.complete(process, OpKind::Info, f, &key, value, Some(e));
                process += 1_000;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(5, 30))).await;
    }
}

/// A node's view of a group's leadership that went backwards: (node, group, (term,
/// leader) before, after).
type Backwards = (u64, u64, (u64, u64), (u64, u64));

/// What the nodes reported of each group's leadership over the run.
///
/// Shoal runs openraft's `leader_id_adv` mode (docs/architecture.md, "Decisions"): a
/// leadership is identified by (term, node id), totally ordered, and two candidates may
/// both win one term in turn (the later one's id is greater, and the first can no longer
/// commit). What the mode guarantees, and what is checked: each node's own view of each
/// group's leadership never goes backwards in that order (its vote is persisted and only
/// grows). Several leaders in one term are counted, not flagged.
#[derive(Default)]
struct LeaderLog {
    seen: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// The last (term, leader) each node reported for each group, by (node id, group).
    last: BTreeMap<(u64, u64), (u64, u64)>,
    /// Views that went backwards.
    backwards: Vec<Backwards>,
    samples: u64,
}

/// Polls every node's view of group 0 and of every vshard's leader and term; two
/// different leaders for one (group, term) would break Raft's election safety.
async fn observe_leaders(
    client: Client,
    nodes: usize,
    log: Arc<Mutex<LeaderLog>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        for h in 1..=nodes {
            let me = self_id(&client, h).await;
            let views = leader_views(&client, h).await;
            if let Ok(mut l) = log.lock() {
                l.samples += 1;
                for (g, term, leader) in views {
                    l.seen.entry((g, term)).or_default().insert(leader);
                    let Some(me) = me else { continue };
                    if let Some(before) = l.last.insert((me, g), (term, leader)) {
                        if (term, leader) < before {
                            l.backwards.push((me, g, before, (term, leader)));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node id host `h` answers as (it changes when a wiped host joins again).
async fn self_id(client: &Client, h: usize) -> Option<u64> {
    let rows = client
        .rows(
            h,
            "SELECT node_id FROM system.nodes WHERE is_self",
            "eventual",
        )
        .await
        .ok()?;
    rows.first()?[0].as_u64()
}

/// (group, term, leader) as host `h` sees them right now; empty when it does not answer.
async fn leader_views(client: &Client, h: usize) -> Vec<(u64, u64, u64)> {
    let mut out = vec![];
    if let Ok(rows) = client
        .rows(
            h,
            "SELECT raft_group, term, leader FROM system.replicas WHERE leader IS NOT NULL",
            "eventual",
        )
        .await
    {
        for r in rows {
            if let (Some(g), Some(t), Some(l)) = (r[0].as_u64(), r[1].as_u64(), r[2].as_u64()) {
                out.push((g, t, l));
            }
        }
    }
    if let Ok(rows) = client
        .rows(
            h,
            "SELECT group0_term, node_id FROM system.nodes WHERE group0_role = 'leader'",
            "eventual",
        )
        .await
    {
        for r in rows {
            if let (Some(t), Some(l)) = (r[0].as_u64(), r[1].as_u64()) {
                out.push((0, t, l));
            }
        }
    }
    out
}

/// The host leading `target`, as the first answering node sees it.
async fn leader_of(
    client: &Client,
    nodes: usize,
    ids: &BTreeMap<u64, usize>,
    target: Target,
) -> Option<usize> {
    let group = match target {
        Target::Meta => 0,
        Target::Vshard(v) => u64::from(v) + 1,
    };
    for h in 1..=nodes {
        let views = leader_views(client, h).await;
        if let Some((_, _, l)) = views.iter().find(|(g, _, _)| *g == group) {
            return ids.get(l).copied();
        }
    }
    None
}

/// What heal must undo.
#[derive(Default)]
struct Undo {
    network: bool,
    killed: Vec<usize>,
    paused: Vec<usize>,
    filled: Vec<usize>,
    skewed: Vec<usize>,
    /// Drained (node id, host): undrained at heal.
    drained: Vec<(u64, usize)>,
    /// Being decommissioned (node id, host): replaced at heal once DECOMMISSIONED.
    decommissioned: Vec<(u64, usize)>,
    /// Stopped (releasing what they hold) after the network rules are gone.
    delayers: Vec<crate::netem::Delayer>,
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    fault: &Fault,
    hosts: &mut [Host],
    net: &Net,
    client: &Client,
    ids: &BTreeMap<u64, usize>,
    rng: &mut Rng,
    rec: &Recorder,
    timeline: &Timeline,
) -> Undo {
    let n = hosts.len();
    let mut all: Vec<usize> = (1..=n).collect();
    rng.shuffle(&mut all);
    let random = all[0];
    let leader = |t: Target| async move { leader_of(client, n, ids, t).await.unwrap_or(random) };
    let mut undo = Undo {
        network: fault.is_network(),
        ..Undo::default()
    };
    let isolate =
        |x: usize| -> Vec<Vec<usize>> { vec![vec![x], (1..=n).filter(|y| *y != x).collect()] };
    // The node a targeted fault hits: a group's leader, else a random node.
    let victim = match *fault {
        Fault::IsolateLeader(t) | Fault::KillLeader(t) | Fault::PauseLeader(t) => leader(t).await,
        _ => random,
    };
    let result: Result<String, String> = match *fault {
        Fault::Halves => {
            let (a, b) = all.split_at(n / 2);
            net.partition(&[a.to_vec(), b.to_vec()])
                .map(|_| format!("partition {a:?} | {b:?}"))
        }
        Fault::IsolateOne => net
            .partition(&isolate(random))
            .map(|_| format!("isolate host {random}")),
        Fault::IsolateLeader(t) => net
            .partition(&isolate(victim))
            .map(|_| format!("isolate host {victim} (leader of {t:?})")),
        Fault::Bridge => {
            // all[0] is the bridge; the rest split in two sides that each see it.
            let rest = &all[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            net.partition(&[a.to_vec(), b.to_vec()])
                .map(|_| format!("bridge: {a:?} | {b:?}, both see host {}", all[0]))
        }
        Fault::Asymmetric => {
            let (from, to) = (all[0], all[1 % n]);
            net.drop_from(to, from)
                .map(|_| format!("asymmetric: host {to} drops everything from host {from}"))
        }
        Fault::Loss => {
            let pct = rng.range(10, 40) as u32;
            net.loss(random, pct)
                .map(|_| format!("loss: host {random} drops {pct}% from peers"))
        }
        Fault::Delay | Fault::Reorder => {
            let (delay, jitter) = if matches!(fault, Fault::Delay) {
                let d = rng.range(50, 300);
                (d, d / 2)
            } else {
                (0, rng.range(20, 80))
            };
            let seed = rng.next_u64();
            let lo = delay.saturating_sub(jitter / 2);
            net.delay(
                random,
                Duration::from_millis(lo),
                Duration::from_millis(jitter),
                seed,
            )
            .map(|d| {
                undo.delayers.push(d);
                format!(
                    "{fault:?}: host {random}'s packets to its peers held {lo}–{} ms",
                    lo + jitter
                )
            })
        }
        Fault::Duplicate => {
            let pct = rng.range(10, 40) as u32;
            net.duplicate(random, pct).map(|_| {
                format!("duplicate: host {random} sends {pct}% of its packets to peers twice")
            })
        }
        Fault::Kill | Fault::KillLeader(_) => {
            hosts[victim - 1].kill9();
            undo.killed.push(victim);
            Ok(format!("kill -9 host {victim} ({fault:?})"))
        }
        Fault::Pause | Fault::PauseLeader(_) => {
            hosts[victim - 1].pause();
            undo.paused.push(victim);
            Ok(format!("SIGSTOP host {victim} ({fault:?})"))
        }
        Fault::Restart => {
            timeline.note(rec, format!("restart host {random}"));
            hosts[random - 1].stop(Duration::from_secs(15));
            let r = hosts[random - 1].start();
            r.map(|_| format!("host {random} started again"))
        }
        Fault::Wipe => {
            // Every wipe of a run hits the same host. Wiping a second host while the first
            // one's replicas are still being rebuilt loses two of three replicas of some
            // vshard for good: a quorum loss no RF=3 system survives, outside the failure
            // model (seen with seed 353378: a second host wiped 3.5 s after the first one
            // rejoined, while its replacement replicas were still learners).
            let random = hosts.iter().find(|h| h.wiped).map_or(random, |h| h.index);
            hosts[random - 1].kill9();
            undo.killed.push(random);
            let seeds = hosts
                .iter()
                .filter(|h| h.index != random)
                .map(Host::rpc_addr)
                .collect::<Vec<_>>()
                .join(",");
            hosts[random - 1]
                .wipe(seeds)
                .map(|_| format!("kill -9 host {random} and wipe its data directory"))
        }
        Fault::ClockSkew => {
            let ms = rng.range(1_000, 3_000) as i64 * if rng.below(4) == 0 { 1 } else { -1 };
            let h = &mut hosts[random - 1];
            h.kill9();
            h.skew_ms = Some(ms);
            undo.skewed.push(random);
            let started = h.start();
            let ready = match started {
                Ok(()) => wait_ready(client, h).await,
                Err(e) => Err(e),
            };
            // Its offsets to the peers measured (every 2 s), then cut it off.
            let measured = poll("clock offsets measured", READY_DEADLINE, || async {
                let r = client
                    .rows(
                        random,
                        "SELECT count(*) FROM system.nodes WHERE NOT is_self AND clock_offset_ms IS NOT NULL",
                        "eventual",
                    )
                    .await
                    .ok()?;
                (r.first()?[0].as_u64()? as usize + 1 >= n).then_some(())
            });
            // Then it loses one peer that does not lead group 0: it still passes the
            // catalog barrier every bounded read takes, but the vshards that peer leads
            // stop sending it closed timestamps — fresh ones, to its skewed clock.
            match ready {
                Ok(()) => match measured.await {
                    Ok(()) => {
                        let g = leader(Target::Meta).await;
                        let cut = (1..=n).find(|h| *h != random && *h != g).unwrap_or(g);
                        undo.network = true;
                        net.partition(&[vec![random], vec![cut]]).map(|_| {
                            format!(
                                "host {random} restarted with its clock {ms:+} ms off, then cut off from host {cut} (group 0's leader: host {g})"
                            )
                        })
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        Fault::Move => {
            // A vshard, one of its replicas, and a node without one, through a random node.
            let v = rng.below(16) as u32;
            let placed = client
                .rows(
                    random,
                    &format!("SELECT replicas FROM system.shards WHERE vshard = {v}"),
                    "eventual",
                )
                .await;
            let replicas: Vec<u64> = placed
                .ok()
                .and_then(|r| r.first().and_then(|r| r[0].as_str().map(str::to_string)))
                .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            let free: Vec<u64> = ids
                .keys()
                .copied()
                .filter(|id| !replicas.contains(id))
                .collect();
            match (replicas.first(), free.first()) {
                (Some(_), Some(_)) => {
                    let from = replicas[rng.below(replicas.len() as u64) as usize];
                    let to = free[rng.below(free.len() as u64) as usize];
                    let sql = format!("ALTER VSHARD {v} MOVE REPLICA FROM {from} TO {to}");
                    match client.sql(random, &sql, "strong").await {
                        Ok(_) => Ok(format!("{sql} (through host {random})")),
                        // Refused (a move under way, the target down): not a harness error.
                        Err(e) => Ok(format!("{sql} refused: {e}")),
                    }
                }
                _ => Ok(format!(
                    "no move for vshard {v}: every node holds a replica (or none answered)"
                )),
            }
        }
        Fault::Drain => {
            // Through another node: the admin API passes it on.
            let via = all.iter().copied().find(|h| *h != random).unwrap_or(random);
            let id = hosts[random - 1].node_id;
            match client.admin(via, &format!("nodes/{id}/drain")).await {
                Ok(v) => {
                    undo.drained.push((id, random));
                    Ok(format!(
                        "drain host {random} (node {id}) through host {via}: handed off in {} ms, still leading {}",
                        v["handoff_ms"], v["still_leading"]
                    ))
                }
                // Refused or cut off by an earlier fault: not a harness error.
                Err(e) => Ok(format!(
                    "drain host {random} through host {via} failed: {e}"
                )),
            }
        }
        Fault::Decommission => {
            // Never a host a wipe hit (its replacement replicas may still be rebuilding).
            let random = all
                .iter()
                .copied()
                .find(|h| !hosts[h - 1].wiped)
                .unwrap_or(random);
            let via = all.iter().copied().find(|h| *h != random).unwrap_or(random);
            let id = hosts[random - 1].node_id;
            match client.admin(via, &format!("nodes/{id}/decommission")).await {
                Ok(_) => {
                    hosts[random - 1].leaving = true;
                    undo.decommissioned.push((id, random));
                    Ok(format!(
                        "decommission host {random} (node {id}) through host {via}"
                    ))
                }
                // Refused (it could not finish now) or cut off: not a harness error.
                Err(e) => Ok(format!(
                    "decommission of host {random} (node {id}) through host {via} not started: {e}"
                )),
            }
        }
        Fault::DiskFull => {
            let r = hosts[random - 1].fill_disk();
            undo.filled.push(random);
            r.map(|b| format!("disk full on host {random} ({} MiB filler)", b >> 20))
        }
        Fault::RollingRestart => {
            let mut r = Ok("rolling restart done".to_string());
            for x in 1..=n {
                timeline.note(rec, format!("rolling restart: host {x}"));
                hosts[x - 1].stop(Duration::from_secs(15));
                if let Err(e) = hosts[x - 1].start() {
                    r = Err(e);
                    break;
                }
                if let Err(e) = wait_ready(client, &mut hosts[x - 1]).await {
                    r = Err(e);
                    break;
                }
            }
            r
        }
    };
    match result {
        Ok(what) => timeline.note(rec, what),
        Err(e) => timeline.note(rec, format!("fault {fault:?} could not be applied: {e}")),
    }
    undo
}

/// How long heal waits for a decommission to finish before cancelling it.
const DECOMMISSION_WAIT: Duration = Duration::from_secs(180);

/// Waits (bounded) for host `x` (node `id`) to finish its decommission and exit, then
/// replaces it: data directory wiped, joined again as a new node. One that does not finish
/// in time is recommissioned (and noted, with its progress).
async fn replace_decommissioned(
    id: u64,
    x: usize,
    hosts: &mut [Host],
    client: &Client,
    rec: &Recorder,
    timeline: &Timeline,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let via = (1..=hosts.len()).find(|h| *h != x).unwrap_or(x);
    let mut decommissioned = false;
    while started.elapsed() < DECOMMISSION_WAIT {
        let h = &mut hosts[x - 1];
        // It exits by itself once it applies its DECOMMISSIONED; one that is not running
        // (it was down already) is asked about.
        if h.exited().is_some() {
            decommissioned = true;
            break;
        }
        if !h.running() {
            let state = client
                .rows(
                    via,
                    &format!("SELECT lifecycle FROM system.nodes WHERE node_id = {id}"),
                    "eventual",
                )
                .await
                .ok()
                .and_then(|r| r.first().and_then(|r| r[0].as_str().map(str::to_string)));
            if state.as_deref() == Some("DECOMMISSIONED") {
                decommissioned = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let h = &mut hosts[x - 1];
    h.leaving = false;
    if !decommissioned {
        let r = client.admin(via, &format!("nodes/{id}/recommission")).await;
        let progress = client
            .rows(
                via,
                &format!("SELECT decommission FROM system.nodes WHERE node_id = {id}"),
                "eventual",
            )
            .await
            .ok()
            .and_then(|r| r.first().map(|r| r[0].to_string()))
            .unwrap_or_default();
        timeline.note(
            rec,
            format!(
                "decommission of host {x} (node {id}) did not finish in {} s ({progress}); recommission: {}",
                DECOMMISSION_WAIT.as_secs(),
                match r {
                    Ok(_) => "done".to_string(),
                    Err(e) => e,
                }
            ),
        );
        return Ok(());
    }
    h.kill9();
    let seeds = hosts
        .iter()
        .filter(|o| o.index != x)
        .map(Host::rpc_addr)
        .collect::<Vec<_>>()
        .join(",");
    let h = &mut hosts[x - 1];
    h.wipe(seeds)?;
    h.start()?;
    timeline.note(
        rec,
        format!(
            "host {x} (node {id}) DECOMMISSIONED after {} ms; replaced: wiped and joined again as a new node",
            started.elapsed().as_millis()
        ),
    );
    Ok(())
}

async fn heal(
    undo: Undo,
    hosts: &mut [Host],
    net: &Net,
    client: &Client,
    rec: &Recorder,
    timeline: &Timeline,
) -> Result<(), String> {
    if undo.network {
        net.heal()?;
        drop(undo.delayers);
        timeline.note(rec, "heal network".into());
    }
    for x in undo.killed {
        hosts[x - 1].start()?;
        timeline.note(rec, format!("restart killed host {x}"));
    }
    for x in undo.paused {
        hosts[x - 1].resume();
        timeline.note(rec, format!("SIGCONT host {x}"));
    }
    for x in undo.filled {
        hosts[x - 1].free_disk();
        timeline.note(rec, format!("disk space back on host {x}"));
    }
    for (id, x) in undo.drained {
        // A host restarted meanwhile is ACTIVE again already; one cut off is retried.
        let mut last = String::new();
        for _ in 0..10 {
            match client.admin(x, &format!("nodes/{id}/undrain")).await {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        timeline.note(
            rec,
            if last.is_empty() {
                format!("undrain host {x}")
            } else {
                format!("undrain host {x} failed: {last}")
            },
        );
    }
    for (id, x) in undo.decommissioned {
        replace_decommissioned(id, x, hosts, client, rec, timeline).await?;
    }
    for x in undo.skewed {
        let h = &mut hosts[x - 1];
        h.kill9();
        h.skew_ms = None;
        h.start()?;
        timeline.note(rec, format!("host {x} restarted with a true clock"));
    }
    Ok(())
}

async fn check_all(
    cfg: &Config,
    client: &Client,
    ops: &[crate::history::Op],
    leaders: &Mutex<LeaderLog>,
    heals: &[u64],
    report: &mut Report,
) {
    let count = |f: OpF, k: OpKind| ops.iter().filter(|o| o.f == f && o.kind == k).count();
    report.say(format!(
        "operations: set add ok/fail/info {}/{}/{}, register write ok/fail/info {}/{}/{}, strong read ok/fail {}/{}",
        count(OpF::Add, OpKind::Ok),
        count(OpF::Add, OpKind::Fail),
        count(OpF::Add, OpKind::Info),
        count(OpF::Write, OpKind::Ok),
        count(OpF::Write, OpKind::Fail),
        count(OpF::Write, OpKind::Info),
        count(OpF::Read, OpKind::Ok),
        count(OpF::Read, OpKind::Fail),
    ));

    // Set: every node, strong read.
    let mut contents: Vec<(usize, Vec<i64>)> = vec![];
    for h in 1..=cfg.nodes {
        let read = poll(
            &format!("a strong read of the set on host {h}"),
            READY_DEADLINE,
            || async {
                client
                    .rows(h, "SELECT v FROM faults_set ORDER BY v", "strong")
                    .await
                    .ok()
            },
        )
        .await;
        match read {
            Ok(rows) => {
                let vals: Vec<i64> = rows.iter().filter_map(|r| r[0].as_i64()).collect();
                let s = check_set(ops, &vals);
                report.say(format!(
                    "set on host {h}: {} rows; acknowledged {}, lost {}, duplicated {}, unexpected {}, unknown-but-present {}",
                    vals.len(), s.acknowledged, s.lost.len(), s.duplicated.len(), s.unexpected.len(), s.recovered_unknown
                ));
                if !s.valid {
                    report.violation(format!(
                        "set on host {h}: lost {:?} duplicated {:?} unexpected {:?}",
                        first(&s.lost),
                        first(&s.duplicated),
                        first(&s.unexpected)
                    ));
                }
                contents.push((h, vals));
            }
            Err(e) => report.violation(e),
        }
    }
    if let Some((h0, c0)) = contents.first() {
        for (h, c) in &contents[1..] {
            if c != c0 {
                report.violation(format!(
                    "hosts {h0} and {h} disagree on the set: {} vs {} rows",
                    c0.len(),
                    c.len()
                ));
            }
        }
    }

    // Register: linearizability.
    let lin = check_register(ops, MAX_LIN_STATES);
    report.say(format!(
        "register: {} keys, {} operations, {} states explored: {:?}",
        lin.keys, lin.ops, lin.states_explored, lin.outcome
    ));
    match lin.outcome {
        Lin::Linearizable => {}
        Lin::NotLinearizable(why) => report.violation(format!("register not linearizable: {why}")),
        Lin::Unknown(why) => report.say(format!("register check inconclusive: {why}")),
    }

    // Staleness: bounded_staleness reads within their bound, monotonic per client and node.
    let (stale_reads, stale_bad) =
        crate::check::check_staleness(ops, STALE_BOUND.as_nanos() as u64);
    report.say(format!(
        "staleness: {stale_reads} bounded_staleness:{}ms reads, {} too stale or backwards",
        STALE_BOUND.as_millis(),
        stale_bad.len()
    ));
    for b in stale_bad.into_iter().take(10) {
        report.violation(format!("staleness: {b}"));
    }

    // Election safety as observed (leader_id_adv: see `LeaderLog`).
    if let Ok(l) = leaders.lock() {
        let terms = l.seen.len();
        let shared = l.seen.values().filter(|w| w.len() > 1).count();
        report.say(format!(
            "leaders: {} samples, {terms} (group, term) pairs observed, {shared} with more than one leader in turn (legal in leader_id_adv)",
            l.samples
        ));
        for (node, g, before, after) in l.backwards.iter().take(10) {
            report.violation(format!(
                "node {node}'s view of group {g}'s leadership went backwards: (term, leader) {before:?} -> {after:?}"
            ));
        }
    }

    // Terms stay put once nothing is wrong: from the moment no move is under way, every
    // node reports every replica it holds quiesced, and leaderships are spread (the
    // cluster settled after the last heal; at most SETTLE_DEADLINE).
    let settled = poll(
        "every node settled (no moves, all replicas quiesced, leaders spread)",
        SETTLE_DEADLINE,
        || async {
            let moving = client
                .rows(
                    1,
                    "SELECT count(*) FROM system.moves WHERE state IN ('PENDING', 'CATCHING_UP', 'SWAPPING')",
                    "strong",
                )
                .await
                .ok()?;
            if moving.first().and_then(|r| r[0].as_i64()) != Some(0) {
                return None;
            }
            for h in 1..=cfg.nodes {
                let r = client
                    .rows(
                        h,
                        "SELECT count(*) FROM system.replicas WHERE NOT quiesced",
                        "eventual",
                    )
                    .await
                    .ok()?;
                if r.first().and_then(|r| r[0].as_i64()) != Some(0) {
                    return None;
                }
            }
            let led = client
                .rows(
                    1,
                    "SELECT leaderships FROM system.nodes WHERE lifecycle = 'ACTIVE' AND replicas > 0",
                    "eventual",
                )
                .await
                .ok()?;
            let counts: Vec<i64> = led.iter().filter_map(|r| r[0].as_i64()).collect();
            (!counts.is_empty() && counts.iter().max()? - counts.iter().min()? <= 1).then_some(())
        },
    )
    .await;
    if let Err(e) = settled {
        report.say(format!("not settled: {e}; checking term stability anyway"));
        // What is still moving, as each node sees it.
        for h in 1..=cfg.nodes {
            let awake = client
                .rows(
                    h,
                    "SELECT vshard, leader, role, followers FROM system.replicas WHERE NOT quiesced",
                    "eventual",
                )
                .await;
            let moves = client
                .rows(
                    h,
                    "SELECT move_id, vshard, from_node, to_node, state, last_error FROM system.moves WHERE state IN ('PENDING', 'CATCHING_UP', 'SWAPPING')",
                    "eventual",
                )
                .await;
            let led = client
                .rows(
                    h,
                    "SELECT node_id, replicas, leaderships FROM system.nodes ORDER BY node_id",
                    "eventual",
                )
                .await;
            report.say(format!(
                "  host {h}: not quiesced {}; moves under way {}; replicas and leaderships {}",
                awake.map_or_else(|e| e, |r| serde_json::Value::from(r).to_string()),
                moves.map_or_else(|e| e, |r| serde_json::Value::from(r).to_string()),
                led.map_or_else(|e| e, |r| serde_json::Value::from(r).to_string())
            ));
        }
    }
    // Placement: every vshard has min(nodes, 3) replicas, and every node holds exactly the
    // replicas group 0 places on it (however joins raced, moves ran and nodes died). A
    // node closes a replica moved away within a second or so: polled, not read once.
    let rf = cfg.nodes.min(3);
    let mut mismatch = vec![];
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        mismatch.clear();
        let placed = client
            .rows(1, "SELECT vshard, replicas FROM system.shards", "strong")
            .await
            .unwrap_or_default();
        let mut on: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for r in &placed {
            let (Some(v), Some(list)) = (r[0].as_u64(), r[1].as_str()) else {
                continue;
            };
            let ids: Vec<u64> = list.split(',').filter_map(|x| x.parse().ok()).collect();
            if ids.len() != rf {
                mismatch.push(format!(
                    "vshard {v} has replicas {list}, expected {rf} of them"
                ));
            }
            for id in ids {
                on.entry(id).or_default().insert(v);
            }
        }
        if placed.is_empty() {
            mismatch.push("no placement could be read".into());
        }
        for h in 1..=cfg.nodes {
            let Some(me) = self_id(client, h).await else {
                continue;
            };
            let held: BTreeSet<u64> = client
                .rows(h, "SELECT vshard FROM system.replicas", "eventual")
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r[0].as_u64())
                .collect();
            let want = on.get(&me).cloned().unwrap_or_default();
            if held != want {
                mismatch.push(format!(
                    "node {me} (host {h}) holds replicas of {held:?}, group 0 places {want:?} on it"
                ));
            }
        }
        if mismatch.is_empty() || Instant::now() >= until {
            report.say(format!(
                "{} nodes hold vshard replicas per group 0",
                on.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for m in mismatch {
        report.violation(m);
    }
    // A node that joined during the run (a replacement after a decommission) is still
    // being given replicas and leaderships: terms move while that lasts, by design.
    settle(client, report).await;
    // A node that joined as a replacement (the decommission nemesis) still receives its
    // share of replicas and leaderships for a while after the faults, which moves terms by
    // design: then the window may be retried until `SETTLE_LIMIT`; otherwise it must hold
    // the first time.
    let replaced = cfg.faults.iter().any(|f| f == "decommission");
    let windows = if replaced {
        (SETTLE_LIMIT.as_secs() / STABLE_WINDOW.as_secs()).max(1)
    } else {
        1
    };
    let mut tries = 0;
    let (before, after) = loop {
        tries += 1;
        let before = all_terms(client, cfg.nodes).await;
        tokio::time::sleep(STABLE_WINDOW).await;
        let after = all_terms(client, cfg.nodes).await;
        if before == after || tries >= windows {
            break (before, after);
        }
    };
    if tries > 1 {
        report.say(format!(
            "terms checked over {tries} windows (a replacement node was still being filled)"
        ));
    }
    if before != after {
        report.violation(format!(
            "terms moved in a healthy {STABLE_WINDOW:?} window: {before:?} -> {after:?}"
        ));
    } else {
        report.say(format!(
            "terms stable over {STABLE_WINDOW:?} after the faults"
        ));
    }

    // Availability: from each heal to the first acknowledged write and strong read.
    let mut writes = vec![];
    let mut reads = vec![];
    for &t in heals {
        let first_ok = |f: OpF| {
            ops.iter()
                .filter(|o| o.kind == OpKind::Ok && o.f == f && o.time_ns >= t)
                .map(|o| o.time_ns - t)
                .min()
        };
        writes.extend(first_ok(OpF::Add));
        reads.extend(first_ok(OpF::Read));
    }
    report.say(format!(
        "after heal: first acknowledged write {}; first strong read {}",
        distribution(&mut writes),
        distribution(&mut reads)
    ));
}

fn first(v: &[i64]) -> Vec<i64> {
    v.iter().take(10).copied().collect()
}

fn distribution(ns: &mut [u64]) -> String {
    if ns.is_empty() {
        return "n/a".into();
    }
    ns.sort_unstable();
    let ms = |x: u64| x as f64 / 1e6;
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms (n={})",
        ms(ns[0]),
        ms(ns[ns.len() / 2]),
        ms(ns[ns.len() - 1]),
        ns.len()
    )
}

/// Every host's (group, term) list, for the stability check.
async fn all_terms(client: &Client, nodes: usize) -> Vec<Vec<(u64, u64, u64)>> {
    let mut out = vec![];
    for h in 1..=nodes {
        let mut v = leader_views(client, h).await;
        v.sort_unstable();
        out.push(v);
    }
    out
}

/// Faults and client operations in time order, one line each.
fn render_timeline(events: &[(u64, String)], ops: &[crate::history::Op]) -> String {
    let mut lines: Vec<(u64, String)> = events
        .iter()
        .map(|(t, e)| (*t, format!("NEMESIS {e}")))
        .collect();
    for o in ops {
        lines.push((
            o.time_ns,
            format!(
                "p{} {:?} {:?} {} {:?}{}{}",
                o.process,
                o.kind,
                o.f,
                o.key,
                o.value,
                o.node.map(|n| format!(" via host {n}")).unwrap_or_default(),
                o.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    lines
        .iter()
        .map(|(t, l)| format!("{:>10.3}s {l}\n", *t as f64 / 1e9))
        .collect()
}

/// Keeps `dir` (a failing run's evidence) by copying it out of a temporary location.
pub fn keep(dir: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            keep(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}
